//! The fused margin softmax cross-entropy: forward and backward over a `B×C` cosine matrix,
//! touching it three times in all (one read forward; one read and one write backward), joined
//! to the tape as a [`CustomOp`].
//!
//! Row `r` with label `y`: `z_j = s·c_j + s·m_nt` (j ≠ y), `z_y` from [`LogitMap::target`];
//! `lse_r = log Σ_j exp z_j` (shifted by the row's exact maximum); `L_r = lse_r − z_y`.
//! Backward: `∂L_r/∂c_j = s·p_j` (j ≠ y) and `(p_y − 1)·dz_y/dc` at the target, with
//! `p_j = exp(z_j − lse_r)` recomputed from the cosines rather than stored.

use super::{LogitMap, Reduction, reduce_rows, row_coefficients};
use crate::kernels::{for_row_blocks, lane_max, lane_sum, parallel, simd};
use crate::{CustomOp, Element, InputGrad, Tensor, Var};
use rayon::prelude::*;

/// The recorded op: what its backward needs besides the cosines.
struct MarginXent<F> {
    labels: Vec<usize>,
    map: LogitMap<F>,
    /// Each row's log-sum-exp.
    lse: Vec<F>,
    /// Each row's weight, already divided by B for the mean.
    row_weight: Vec<F>,
    reduction: Reduction,
}

/// Records `Σ_r w_r·L_r` (or the vector of `w_r·L_r`) over the `[B, C]` cosines `cos`; the
/// caller has checked the batch.
pub(super) fn margin_xent<'g, F: Element>(
    cos: Var<'g, F>,
    labels: &[usize],
    map: LogitMap<F>,
    row_weight: Vec<F>,
    reduction: Reduction,
) -> Var<'g, F> {
    let x = cos.value();
    let (rows, cols) = x.matrix_dims().expect("checked by the caller");
    let (mut lse, mut losses) = (vec![F::ZERO; rows], vec![F::ZERO; rows]);
    forward(x.data(), cols, labels, &map, &mut lse, &mut losses);
    let out = reduce_rows(&losses, &row_weight, reduction);
    let op = MarginXent {
        labels: labels.to_vec(),
        map,
        lse,
        row_weight,
        reduction,
    };
    cos.graph().custom(op, &[cos], out)
}

impl<F: Element> CustomOp<F> for MarginXent<F> {
    fn name(&self) -> &'static str {
        "margin loss"
    }

    /// `∂L_r/∂c_j = s·p_j` (j ≠ y), `(p_y − 1)·dz_y/dc` at the target; each row scaled by the
    /// output's gradient and the row's weight.
    fn backward(
        &self,
        inputs: &[&Tensor<F>],
        _output: &Tensor<F>,
        g: &[F],
        grads: &mut [Option<InputGrad<'_, F>>],
    ) {
        let Some(dcos) = &mut grads[0] else { return };
        let cos = inputs[0];
        let coef = row_coefficients(g, &self.row_weight, self.reduction);
        let fresh = dcos.is_fresh();
        backward(
            cos.data(),
            cos.shape()[1],
            &self.labels,
            &self.map,
            &self.lse,
            &coef,
            dcos.data(),
            fresh,
        );
    }
}

/// The row without its target column, as two slices.
#[inline]
fn others<F>(row: &[F], y: usize) -> [&[F]; 2] {
    [&row[..y], &row[y + 1..]]
}

/// Writes `lse[r]` and the per-sample loss `loss[r] = lse[r] − z_y` for every row.
fn forward<F: Element>(
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
fn backward<F: Element>(
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
