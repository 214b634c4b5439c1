//! The fused margin softmax cross-entropy: forward and backward over a `B×C` cosine matrix,
//! touching it three times in all (one read forward; one read and one write backward).
//!
//! Row `r` with label `y`: `z_j = s·c_j + s·m_nt` (j ≠ y), `z_y` from [`LogitMap::target`];
//! `lse_r = log Σ_j exp z_j` (shifted by the row's exact maximum); `L_r = lse_r − z_y`.
//! Backward: `∂L_r/∂c_j = s·p_j` (j ≠ y) and `(p_y − 1)·dz_y/dc` at the target, with
//! `p_j = exp(z_j − lse_r)` recomputed from the cosines rather than stored.

use super::{for_row_blocks, lane_max, lane_sum, parallel, simd};
use crate::Element;
use crate::loss::LogitMap;
use rayon::prelude::*;

/// The row without its target column, as two slices.
#[inline]
fn others<F>(row: &[F], y: usize) -> [&[F]; 2] {
    [&row[..y], &row[y + 1..]]
}

/// Writes `lse[r]` and the per-sample loss `loss[r] = lse[r] − z_y` for every row.
pub(crate) fn margin_xent<F: Element>(
    cos: &[F],
    cols: usize,
    labels: &[usize],
    map: &LogitMap<F>,
    lse: &mut [F],
    loss: &mut [F],
) {
    let row_forward = |(r, (lse, loss)): (usize, (&mut F, &mut F))| {
        simd(
            #[inline(always)]
            || {
                let row = &cos[r * cols..(r + 1) * cols];
                let y = labels[r];
                let (z_y, _) = map.target(row[y]);
                let [before, after] = others(row, y);
                let c_max = lane_max(before).max(lane_max(after));
                let z_max = if cols > 1 {
                    map.nontarget(c_max).max(z_y)
                } else {
                    z_y
                };
                // Σ_{j≠y} exp(s·c_j + s·m_nt − z_max), with the constant folded into one shift
                let shift = z_max - map.nontarget_shift;
                let term = |c: F| (map.scale * c - shift).exp();
                let sum_others = lane_sum(before, term) + lane_sum(after, term);
                *lse = z_max + (sum_others + (z_y - z_max).exp()).ln();
                *loss = *lse - z_y;
            },
        )
    };
    let rows = lse.iter_mut().zip(loss.iter_mut()).enumerate();
    if !parallel(cos.len()) {
        rows.for_each(row_forward);
    } else {
        lse.par_iter_mut()
            .zip(loss.par_iter_mut())
            .enumerate()
            .for_each(row_forward);
    }
}

/// `dcos[r, j] (+)= coef[r] · ∂L_r/∂c_rj` for every row; overwrites when `overwrite`
/// (a fresh gradient buffer), accumulates otherwise.
#[allow(clippy::too_many_arguments)]
pub(crate) fn margin_xent_grad<F: Element>(
    cos: &[F],
    cols: usize,
    labels: &[usize],
    map: &LogitMap<F>,
    lse: &[F],
    coef: &[F],
    dcos: &mut [F],
    overwrite: bool,
) {
    for_row_blocks(
        dcos,
        cols,
        #[inline(always)]
        |r0, block| {
            for (i, d_row) in block.chunks_mut(cols).enumerate() {
                let r = r0 + i;
                let row = &cos[r * cols..(r + 1) * cols];
                let y = labels[r];
                let k = coef[r];
                // non-target: k·s·exp(s·c_j − (lse − s·m_nt))
                let (factor, shift) = (k * map.scale, lse[r] - map.nontarget_shift);
                let (d_before, d_rest) = d_row.split_at_mut(y);
                let (d_target, d_after) = d_rest.split_at_mut(1);
                for (d, c) in [(d_before, &row[..y]), (d_after, &row[y + 1..])] {
                    if overwrite {
                        for (d, &c) in d.iter_mut().zip(c) {
                            *d = factor * (map.scale * c - shift).exp();
                        }
                    } else {
                        for (d, &c) in d.iter_mut().zip(c) {
                            *d += factor * (map.scale * c - shift).exp();
                        }
                    }
                }
                let (z_y, slope) = map.target(row[y]);
                let d_y = k * ((z_y - lse[r]).exp() - F::ONE) * slope;
                if overwrite {
                    d_target[0] = d_y;
                } else {
                    d_target[0] += d_y;
                }
            }
        },
    );
}
