//! Elementwise kernels: one map, one broadcasting binary, and their accumulating backwards.
//!
//! Broadcasting follows [`Broadcast`]: the right operand is either the same shape as the left,
//! a row vector repeated down the rows, or a column vector repeated across the columns.

use super::for_row_blocks;
use crate::Element;

/// How the right operand of a binary op is laid over the left one, an `R×C` matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Broadcast {
    /// Same shape: element by element.
    Same,
    /// A row vector (`[C]` or `[1, C]`) repeated down the rows, as a bias is.
    Row,
    /// A column vector (`[R, 1]`) repeated across the columns, as a per-row scale is.
    Col,
}

impl Broadcast {
    /// How `rhs` lays over `lhs`, or `None` when the shapes do not fit any of the three ways.
    pub fn between(lhs: &[usize], rhs: &[usize]) -> Option<Broadcast> {
        if lhs == rhs {
            return Some(Broadcast::Same);
        }
        match *lhs {
            [_, c] if rhs == [c] || rhs == [1, c] => Some(Broadcast::Row),
            [r, _] if rhs == [r, 1] => Some(Broadcast::Col),
            _ => None,
        }
    }
}

/// The right operand's value for each element of row `r`, as a row-length slice or one value.
enum RhsRow<'a, F> {
    Slice(&'a [F]),
    Value(F),
}

#[inline]
fn rhs_row<F: Element>(b: &[F], bcast: Broadcast, r: usize, cols: usize) -> RhsRow<'_, F> {
    match bcast {
        Broadcast::Same => RhsRow::Slice(&b[r * cols..(r + 1) * cols]),
        Broadcast::Row => RhsRow::Slice(b),
        Broadcast::Col => RhsRow::Value(b[r]),
    }
}

/// `out[i] = f(x[i])`.
pub fn map<F: Element>(x: &[F], out: &mut [F], f: impl Fn(F) -> F + Sync + Send) {
    debug_assert_eq!(x.len(), out.len());
    for_row_blocks(
        out,
        1,
        #[inline(always)]
        |start, block| {
            let x = &x[start..start + block.len()];
            block.iter_mut().zip(x).for_each(|(o, &x)| *o = f(x));
        },
    );
}

/// `dx[i] += g[i] · df(x[i], y[i])`: the backward of [`map`], where `y = f(x)`.
pub fn map_grad<F: Element>(
    g: &[F],
    x: &[F],
    y: &[F],
    dx: &mut [F],
    df: impl Fn(F, F) -> F + Sync + Send,
) {
    for_row_blocks(
        dx,
        1,
        #[inline(always)]
        |start, block| {
            for (i, d) in block.iter_mut().enumerate() {
                let j = start + i;
                *d += g[j] * df(x[j], y[j]);
            }
        },
    );
}

/// `out = f(a, b)` elementwise, `a` and `out` being `rows×cols`, `b` broadcast per `bcast`.
pub fn binary<F: Element>(
    a: &[F],
    b: &[F],
    bcast: Broadcast,
    cols: usize,
    out: &mut [F],
    f: impl Fn(F, F) -> F + Sync + Send,
) {
    for_row_blocks(
        out,
        cols,
        #[inline(always)]
        |r0, block| {
            for (i, out_row) in block.chunks_mut(cols).enumerate() {
                let r = r0 + i;
                let a_row = &a[r * cols..(r + 1) * cols];
                match rhs_row(b, bcast, r, cols) {
                    RhsRow::Slice(b_row) => {
                        for ((o, &a), &b) in out_row.iter_mut().zip(a_row).zip(b_row) {
                            *o = f(a, b);
                        }
                    }
                    RhsRow::Value(b) => {
                        for (o, &a) in out_row.iter_mut().zip(a_row) {
                            *o = f(a, b);
                        }
                    }
                }
            }
        },
    );
}

/// `d[i] += g[i] · partial(a[i], b̃[i], y[i])` over the full `rows×cols` shape, where `b̃` is
/// `b` broadcast per `bcast` and `y = f(a, b̃)`. For the right operand of a broadcast op the
/// caller then sums `d` over the broadcast dimension.
#[allow(clippy::too_many_arguments)]
pub fn binary_grad<F: Element>(
    g: &[F],
    a: &[F],
    b: &[F],
    y: &[F],
    bcast: Broadcast,
    cols: usize,
    d: &mut [F],
    partial: impl Fn(F, F, F) -> F + Sync + Send,
) {
    for_row_blocks(
        d,
        cols,
        #[inline(always)]
        |r0, block| {
            for (i, d_row) in block.chunks_mut(cols).enumerate() {
                let r = r0 + i;
                let span = r * cols..(r + 1) * cols;
                let (g_row, a_row, y_row) = (&g[span.clone()], &a[span.clone()], &y[span]);
                let rows = d_row.iter_mut().zip(g_row).zip(a_row).zip(y_row);
                match rhs_row(b, bcast, r, cols) {
                    RhsRow::Slice(b_row) => {
                        for ((((d, &g), &a), &y), &b) in rows.zip(b_row) {
                            *d += g * partial(a, b, y);
                        }
                    }
                    RhsRow::Value(b) => {
                        for (((d, &g), &a), &y) in rows {
                            *d += g * partial(a, b, y);
                        }
                    }
                }
            }
        },
    );
}

/// `d[i] += scale · b̃[i]`: adds `b`, broadcast per `bcast`, to the `rows×cols` buffer `d`.
pub fn add_broadcast_acc<F: Element>(
    b: &[F],
    bcast: Broadcast,
    cols: usize,
    scale: F,
    d: &mut [F],
) {
    for_row_blocks(
        d,
        cols,
        #[inline(always)]
        |r0, block| {
            for (i, d_row) in block.chunks_mut(cols).enumerate() {
                match rhs_row(b, bcast, r0 + i, cols) {
                    RhsRow::Slice(s) => d_row.iter_mut().zip(s).for_each(|(d, &v)| *d += scale * v),
                    RhsRow::Value(v) => d_row.iter_mut().for_each(|d| *d += scale * v),
                }
            }
        },
    );
}

/// The backward of `y = max(x + b, 0)` (`b` a row vector): with `z = g` where `y > 0` and 0
/// elsewhere, `dx += z` and `db += Σ_rows z`, in one pass (rows in order, so the sums are the
/// same whatever the threads).
pub fn add_relu_grad<F: Element>(
    g: &[F],
    y: &[F],
    cols: usize,
    mut dx: Option<&mut [F]>,
    mut db: Option<&mut [F]>,
) {
    super::simd(
        #[inline(always)]
        || {
            for (r, (g_row, y_row)) in g.chunks(cols).zip(y.chunks(cols)).enumerate() {
                let mask = |(&g, &y): (&F, &F)| if y > F::ZERO { g } else { F::ZERO };
                if let Some(dx) = dx.as_deref_mut() {
                    let dx_row = &mut dx[r * cols..(r + 1) * cols];
                    for (d, z) in dx_row.iter_mut().zip(g_row.iter().zip(y_row).map(mask)) {
                        *d += z;
                    }
                }
                if let Some(db) = db.as_deref_mut() {
                    for (d, z) in db.iter_mut().zip(g_row.iter().zip(y_row).map(mask)) {
                        *d += z;
                    }
                }
            }
        },
    );
}
