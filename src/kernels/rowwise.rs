//! Fused row- and column-wise kernels: log-softmax and L2 normalisation, with their backwards.

use super::{for_row_blocks, lane_max, lane_sum, simd};
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

/// The backward of [`normalize_rows`]: `dx[r] += (g[r] − y[r]⟨g[r], y[r]⟩) / ‖x[r]‖`, or
/// `g[r] / eps` where the norm was floored (there `y = x / eps` is linear in `x`).
pub fn normalize_rows_grad<F: Element>(
    g: &[F],
    y: &[F],
    norms: &[F],
    cols: usize,
    eps: F,
    dx: &mut [F],
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
                if norms[r] < eps {
                    let inv = F::ONE / eps;
                    dx_row
                        .iter_mut()
                        .zip(g_row)
                        .for_each(|(d, &g)| *d += g * inv);
                    continue;
                }
                let dot = g_row
                    .iter()
                    .zip(y_row)
                    .fold(F::ZERO, |s, (&g, &y)| s + g * y);
                let inv = F::ONE / norms[r];
                for ((d, &g), &y) in dx_row.iter_mut().zip(g_row).zip(y_row) {
                    *d += (g - y * dot) * inv;
                }
            }
        },
    );
}

/// `y[:, c] = x[:, c] / max(‖x[:, c]‖, eps)` for the `rows×cols` matrix `x`; writes each
/// column's raw norm into `norms`.
pub fn normalize_cols<F: Element>(x: &[F], cols: usize, eps: F, y: &mut [F], norms: &mut [F]) {
    norms.fill(F::ZERO);
    for x_row in x.chunks(cols) {
        norms.iter_mut().zip(x_row).for_each(|(n, &v)| *n += v * v);
    }
    let inv: Vec<F> = norms
        .iter_mut()
        .map(|n| {
            *n = n.sqrt();
            F::ONE / n.max(eps)
        })
        .collect();
    for_row_blocks(
        y,
        cols,
        #[inline(always)]
        |r0, block| {
            for (i, y_row) in block.chunks_mut(cols).enumerate() {
                let x_row = &x[(r0 + i) * cols..(r0 + i + 1) * cols];
                for ((y, &x), &inv) in y_row.iter_mut().zip(x_row).zip(&inv) {
                    *y = x * inv;
                }
            }
        },
    );
}

/// The backward of [`normalize_cols`], column by column as [`normalize_rows_grad`] is row by row.
pub fn normalize_cols_grad<F: Element>(
    g: &[F],
    y: &[F],
    norms: &[F],
    cols: usize,
    eps: F,
    dx: &mut [F],
) {
    let mut dots = vec![F::ZERO; cols];
    simd(
        #[inline(always)]
        || {
            for (g_row, y_row) in g.chunks(cols).zip(y.chunks(cols)) {
                for ((dot, &g), &y) in dots.iter_mut().zip(g_row).zip(y_row) {
                    *dot += g * y;
                }
            }
        },
    );
    // per column, dx = g·inv − y·along with inv = 1/‖x‖ and along = ⟨g, y⟩/‖x‖; where the norm
    // was floored, inv = 1/eps and along = 0 (no branch in the loop, so it vectorises)
    let inv: Vec<F> = norms.iter().map(|&n| F::ONE / n.max(eps)).collect();
    let along: Vec<F> = norms
        .iter()
        .zip(dots.iter().zip(&inv))
        .map(|(&n, (&dot, &inv))| if n < eps { F::ZERO } else { dot * inv })
        .collect();
    for_row_blocks(
        dx,
        cols,
        #[inline(always)]
        |r0, block| {
            for (i, dx_row) in block.chunks_mut(cols).enumerate() {
                let span = (r0 + i) * cols..(r0 + i + 1) * cols;
                let (g_row, y_row) = (&g[span.clone()], &y[span]);
                let coefficients = inv.iter().zip(&along);
                for (((d, &g), &y), (&inv, &along)) in
                    dx_row.iter_mut().zip(g_row).zip(y_row).zip(coefficients)
                {
                    *d += g * inv - y * along;
                }
            }
        },
    );
}
