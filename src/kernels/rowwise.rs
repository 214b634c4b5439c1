//! Fused row- and column-wise kernels: log-softmax and L2 normalisation, with their backwards.

use super::{
    COL_BLOCK, SharedOut, for_col_blocks, for_row_blocks, lane_max, lane_sum, simd, store_grad,
};
use crate::Element;

/// `y[r] = x[r] − max(x[r]) − ln Σ_c exp(x[r, c] − max(x[r]))`: a stable log-softmax per row.
pub fn log_softmax_rows<F: Element>(x: &[F], cols: usize, y: &mut [F]) {
    for_row_blocks(
        y,
        cols,
        #[inline(always)]
        |r0, block| {
            for (i, y_row) in block.chunks_mut(cols).enumerate() {
                let x_row = &x[(r0 + i) * cols..(r0 + i + 1) * cols];
                let max = lane_max(x_row);
                let sum = lane_sum(x_row, |v| (v - max).exp());
                let shift = max + sum.ln();
                for (y, &v) in y_row.iter_mut().zip(x_row) {
                    *y = v - shift;
                }
            }
        },
    );
}

/// `dx[r] += g[r] − softmax(x[r]) · Σ_c g[r, c]`, with `softmax = exp(y)`.
pub fn log_softmax_rows_grad<F: Element>(g: &[F], y: &[F], cols: usize, dx: &mut [F]) {
    for_row_blocks(
        dx,
        cols,
        #[inline(always)]
        |r0, block| {
            for (i, dx_row) in block.chunks_mut(cols).enumerate() {
                let span = (r0 + i) * cols..(r0 + i + 1) * cols;
                let (g_row, y_row) = (&g[span.clone()], &y[span]);
                let g_sum = lane_sum(g_row, |v| v);
                for ((d, &g), &y) in dx_row.iter_mut().zip(g_row).zip(y_row) {
                    *d += g - y.exp() * g_sum;
                }
            }
        },
    );
}

/// `y[r] = x[r] / max(‖x[r]‖, eps)`; writes each row's raw norm `‖x[r]‖` into `norms`.
pub fn normalize_rows<F: Element>(x: &[F], cols: usize, eps: F, y: &mut [F], norms: &mut [F]) {
    simd(
        #[inline(always)]
        || {
            for (r, n) in norms.iter_mut().enumerate() {
                *n = lane_sum(&x[r * cols..(r + 1) * cols], |v| v * v).sqrt();
            }
        },
    );
    let norms = &*norms;
    for_row_blocks(
        y,
        cols,
        #[inline(always)]
        |r0, block| {
            for (i, y_row) in block.chunks_mut(cols).enumerate() {
                let r = r0 + i;
                let inv = F::ONE / norms[r].max(eps);
                for (y, &v) in y_row.iter_mut().zip(&x[r * cols..(r + 1) * cols]) {
                    *y = v * inv;
                }
            }
        },
    );
}

/// The backward of [`normalize_rows`]: `dx[r] (+)= (g[r] − y[r]⟨g[r], y[r]⟩) / ‖x[r]‖`, or
/// `g[r] / eps` where the norm was floored (there `y = x / eps` is linear in `x`); overwrites
/// `dx` when `overwrite`, adds to it otherwise.
pub fn normalize_rows_grad<F: Element>(
    g: &[F],
    y: &[F],
    norms: &[F],
    cols: usize,
    eps: F,
    dx: &mut [F],
    overwrite: bool,
) {
    for_row_blocks(
        dx,
        cols,
        #[inline(always)]
        |r0, block| {
            for (i, dx_row) in block.chunks_mut(cols).enumerate() {
                let r = r0 + i;
                let span = r * cols..(r + 1) * cols;
                let (g_row, y_row) = (&g[span.clone()], &y[span]);
                // floored: dx = g / eps, written as the general case with ⟨g, y⟩ taken as 0
                let (inv, dot) = if norms[r] < eps {
                    (F::ONE / eps, F::ZERO)
                } else {
                    let dot = g_row
                        .iter()
                        .zip(y_row)
                        .fold(F::ZERO, |s, (&g, &y)| s + g * y);
                    (F::ONE / norms[r], dot)
                };
                for ((d, &g), &y) in dx_row.iter_mut().zip(g_row).zip(y_row) {
                    store_grad(d, (g - y * dot) * inv, overwrite);
                }
            }
        },
    );
}

/// `y[:, c] = x[:, c] / max(‖x[:, c]‖, eps)` for the `rows×cols` matrix `x`; writes each
/// column's raw norm into `norms`. Block by block of columns: the block is read for its norms,
/// then again (from cache) to scale it.
pub fn normalize_cols<F: Element>(x: &[F], cols: usize, eps: F, y: &mut [F], norms: &mut [F]) {
    if cols == 0 {
        return;
    }
    let out = SharedOut(y.as_mut_ptr());
    for_col_blocks(
        norms,
        x.len(),
        #[inline(always)]
        |c0, norms| {
            let span = c0..c0 + norms.len();
            norms.fill(F::ZERO);
            for x_row in x.chunks(cols) {
                for (n, &v) in norms.iter_mut().zip(&x_row[span.clone()]) {
                    *n += v * v;
                }
            }
            let mut inv = [F::ZERO; COL_BLOCK];
            for (inv, n) in inv.iter_mut().zip(norms.iter_mut()) {
                *n = n.sqrt();
                *inv = F::ONE / n.max(eps);
            }
            for (r, x_row) in x.chunks(cols).enumerate() {
                // SAFETY: inside `y`; blocks cover disjoint columns, so no other task writes here
                let y_row = unsafe { out.slice(r * cols + span.start, span.len()) };
                for ((y, &x), &inv) in y_row.iter_mut().zip(&x_row[span.clone()]).zip(&inv) {
                    *y = x * inv;
                }
            }
        },
    );
}

/// The backward of [`normalize_cols`], column by column as [`normalize_rows_grad`] is row by
/// row, in the same blocks of columns; overwrites `dx` when `overwrite`, adds to it otherwise.
pub fn normalize_cols_grad<F: Element>(
    g: &[F],
    y: &[F],
    norms: &[F],
    cols: usize,
    eps: F,
    dx: &mut [F],
    overwrite: bool,
) {
    if cols == 0 {
        return;
    }
    let out = SharedOut(dx.as_mut_ptr());
    let mut dots = vec![F::ZERO; cols];
    for_col_blocks(
        &mut dots,
        g.len(),
        #[inline(always)]
        |c0, dots| {
            let span = c0..c0 + dots.len();
            let rows = || g.chunks(cols).zip(y.chunks(cols));
            for (g_row, y_row) in rows() {
                for ((dot, &g), &y) in dots
                    .iter_mut()
                    .zip(&g_row[span.clone()])
                    .zip(&y_row[span.clone()])
                {
                    *dot += g * y;
                }
            }
            // per column, dx = g·inv − y·along with inv = 1/‖x‖ and along = ⟨g, y⟩/‖x‖; where
            // the norm was floored, inv = 1/eps and along = 0 (no branch in the loop below)
            let (mut inv, mut along) = ([F::ZERO; COL_BLOCK], [F::ZERO; COL_BLOCK]);
            for (((inv, along), &n), &dot) in inv
                .iter_mut()
                .zip(along.iter_mut())
                .zip(&norms[span.clone()])
                .zip(dots.iter())
            {
                *inv = F::ONE / n.max(eps);
                *along = if n < eps { F::ZERO } else { dot * *inv };
            }
            for (r, (g_row, y_row)) in rows().enumerate() {
                // SAFETY: inside `dx`; blocks cover disjoint columns
                let dx_row = unsafe { out.slice(r * cols + span.start, span.len()) };
                let terms = g_row[span.clone()].iter().zip(&y_row[span.clone()]);
                let coefficients = inv.iter().zip(&along);
                for (d, ((&g, &y), (&inv, &along))) in
                    dx_row.iter_mut().zip(terms.zip(coefficients))
                {
                    store_grad(d, g * inv - y * along, overwrite);
                }
            }
        },
    );
}
