//! The fused softmax cross-entropy of margin losses: forward and backward over a `B×C` cosine
//! matrix, touching it three times in all (one read forward; one read and one write backward),
//! joined to the tape as a [`CustomOp`].
//!
//! Row `r` with label `y`: the target logit `z_y` and its slope `dz_y/dc` come precomputed per
//! row ([`Target`]); every other logit is `z_j = o_r(c_j)` for the row's non-target map
//! ([`Others`]: `s·c + s·m_nt` for the margin family, CurricularFace's re-weighting of hard
//! negatives); `lse_r = log Σ_j exp z_j` (shifted by the row's exact maximum) and
//! `L_r = lse_r − z_y + e_r`, with `e_r` an optional per-row term (MagFace's regulariser).
//! Backward: `∂L_r/∂c_j = o_r′(c_j)·p_j` (j ≠ y) and `(p_y − 1)·dz_y/dc` at the target, with
//! `p_j = exp(z_j − lse_r)` recomputed from the cosines rather than stored. When the loss also
//! depends on each row's feature norm `a_r` (MagFace), `∂L_r/∂a_r = (p_y − 1)·∂z_y/∂a + ∂e_r/∂a`.

use super::{LogitMap, Reduction, reduce_rows, row_coefficients};
use crate::kernels::{for_row_blocks, lane_max, lane_sum, parallel, simd};
use crate::{CustomOp, Element, InputGrad, Tensor, Var};
use rayon::prelude::*;

/// One row's target logit and its derivatives.
#[derive(Clone, Copy, Debug)]
pub(super) struct Target<F> {
    /// `z_y`.
    pub logit: F,
    /// `∂z_y/∂c_y`.
    pub slope: F,
}

/// The non-target logits of each row, `z_j = o_r(c_j)`.
pub(super) trait Others<F: Element>: Send + Sync + 'static {
    /// `max_j o_r(c_j)` over `cs` (−∞ for none).
    fn max(&self, r: usize, cs: &[F]) -> F;
    /// `Σ_j exp(o_r(c_j) − shift)` over `cs`.
    fn sum_exp(&self, r: usize, cs: &[F], shift: F) -> F;
    /// `d_j (+)= k·o_r′(c_j)·exp(o_r(c_j) − lse)` for every `c_j` of `cs`; overwrites when
    /// `overwrite`.
    fn grad(&self, r: usize, cs: &[F], lse: F, k: F, d: &mut [F], overwrite: bool);
}

/// `o(c) = s·c + shift` for every row: the margin family's non-target logits.
#[derive(Clone, Copy, Debug)]
pub(super) struct Linear<F> {
    /// `s`.
    pub scale: F,
    /// `s·m_nt`.
    pub shift: F,
}

impl<F: Element> Others<F> for Linear<F> {
    #[inline(always)]
    fn max(&self, _: usize, cs: &[F]) -> F {
        self.scale * lane_max(cs) + self.shift
    }

    #[inline(always)]
    fn sum_exp(&self, _: usize, cs: &[F], shift: F) -> F {
        // exp(s·c + s·m_nt − shift), with the constant folded into one shift
        let shift = shift - self.shift;
        lane_sum(cs, |c| (self.scale * c - shift).exp())
    }

    #[inline(always)]
    fn grad(&self, _: usize, cs: &[F], lse: F, k: F, d: &mut [F], overwrite: bool) {
        let (factor, shift) = (k * self.scale, lse - self.shift);
        // two loops: the compiler keeps a branch on `overwrite` inside the loop otherwise
        if overwrite {
            for (d, &c) in d.iter_mut().zip(cs) {
                *d = factor * (self.scale * c - shift).exp();
            }
        } else {
            for (d, &c) in d.iter_mut().zip(cs) {
                *d += factor * (self.scale * c - shift).exp();
            }
        }
    }
}

/// The terms a row's feature norm adds (MagFace): recorded with the norms as a second input.
pub(super) struct NormTerms<'g, F: Element> {
    /// The norms `a_r`, `B` elements.
    pub norms: Var<'g, F>,
    /// `∂z_y/∂a_r` of each row.
    pub target_slope: Vec<F>,
    /// `e_r`, added to each row's loss.
    pub extra: Vec<F>,
    /// `∂e_r/∂a_r`.
    pub extra_slope: Vec<F>,
}

/// The recorded op: what its backward needs besides the cosines.
struct SoftmaxRows<F, O> {
    name: &'static str,
    labels: Vec<usize>,
    targets: Vec<Target<F>>,
    others: O,
    /// Each row's log-sum-exp.
    lse: Vec<F>,
    /// Each row's weight, already divided by B for the mean.
    row_weight: Vec<F>,
    reduction: Reduction,
    /// `(∂z_y/∂a_r, ∂e_r/∂a_r)` of each row, when the norms are an input.
    norm_slopes: Option<Vec<(F, F)>>,
}

/// Records the margin family's fused loss: the targets from `map`, the others linear.
pub(super) fn margin_xent<'g, F: Element>(
    cos: Var<'g, F>,
    labels: &[usize],
    map: LogitMap<F>,
    row_weight: Vec<F>,
    reduction: Reduction,
) -> Var<'g, F> {
    let targets = {
        let x = cos.value();
        let cols = x.shape()[1];
        labels
            .iter()
            .enumerate()
            .map(|(r, &y)| {
                let (logit, slope) = map.target(x.data()[r * cols + y]);
                Target { logit, slope }
            })
            .collect()
    };
    let others = Linear {
        scale: map.scale,
        shift: map.nontarget_shift,
    };
    let rows = Rows {
        name: "margin loss",
        labels,
        targets,
        others,
    };
    softmax_rows(cos, rows, None, row_weight, reduction)
}

/// A fused softmax loss's rows: their labels, target logits and non-target map.
pub(super) struct Rows<'a, F, O> {
    /// The op's name in profiles.
    pub name: &'static str,
    /// Each row's label.
    pub labels: &'a [usize],
    /// Each row's target logit and slope.
    pub targets: Vec<Target<F>>,
    /// The non-target logits.
    pub others: O,
}

/// Records `Σ_r w_r·L_r` (or the vector of `w_r·L_r`) over the `[B, C]` cosines `cos`, with
/// `L_r = lse_r − z_y (+ e_r)`; the caller has checked the batch.
pub(super) fn softmax_rows<'g, F: Element, O: Others<F>>(
    cos: Var<'g, F>,
    rows: Rows<'_, F, O>,
    norm: Option<NormTerms<'g, F>>,
    row_weight: Vec<F>,
    reduction: Reduction,
) -> Var<'g, F> {
    let x = cos.value();
    let (batch, cols) = x.matrix_dims().expect("checked by the caller");
    let (mut lse, mut losses) = (vec![F::ZERO; batch], vec![F::ZERO; batch]);
    forward(x.data(), cols, &rows, &mut lse, &mut losses);
    drop(x);
    let (inputs, norm_slopes) = match norm {
        None => (vec![cos], None),
        Some(n) => {
            for (loss, &e) in losses.iter_mut().zip(&n.extra) {
                *loss += e;
            }
            let slopes = n.target_slope.into_iter().zip(n.extra_slope).collect();
            (vec![cos, n.norms], Some(slopes))
        }
    };
    let out = reduce_rows(&losses, &row_weight, reduction);
    let op = SoftmaxRows {
        name: rows.name,
        labels: rows.labels.to_vec(),
        targets: rows.targets,
        others: rows.others,
        lse,
        row_weight,
        reduction,
        norm_slopes,
    };
    cos.graph().custom(op, &inputs, out)
}

impl<F: Element, O: Others<F>> CustomOp<F> for SoftmaxRows<F, O> {
    fn name(&self) -> &'static str {
        self.name
    }

    /// `∂L_r/∂c_j = o′(c_j)·p_j` (j ≠ y), `(p_y − 1)·dz_y/dc` at the target and
    /// `(p_y − 1)·∂z_y/∂a + ∂e/∂a` for the norm; each row scaled by the output's gradient and
    /// the row's weight.
    fn backward(
        &self,
        inputs: &[&Tensor<F>],
        _output: &Tensor<F>,
        g: &[F],
        grads: &mut [Option<InputGrad<'_, F>>],
    ) {
        let coef = row_coefficients(g, &self.row_weight, self.reduction);
        if let Some(dcos) = &mut grads[0] {
            let fresh = dcos.is_fresh();
            backward(inputs[0], self, &coef, dcos.data(), fresh);
        }
        if let (Some(slopes), Some(Some(dnorm))) = (&self.norm_slopes, grads.get_mut(1)) {
            for (r, (&(dz_da, de_da), target)) in slopes.iter().zip(&self.targets).enumerate() {
                let p_y = (target.logit - self.lse[r]).exp();
                dnorm.store(r, coef[r] * ((p_y - F::ONE) * dz_da + de_da));
            }
        }
    }
}

/// The row without its target column, as two slices.
#[inline]
fn others<F>(row: &[F], y: usize) -> [&[F]; 2] {
    [&row[..y], &row[y + 1..]]
}

/// Writes `lse[r]` and the per-sample loss `loss[r] = lse[r] − z_y` for every row.
fn forward<F: Element, O: Others<F>>(
    cos: &[F],
    cols: usize,
    rows: &Rows<'_, F, O>,
    lse: &mut [F],
    loss: &mut [F],
) {
    let row_forward = |(r, (lse, loss)): (usize, (&mut F, &mut F))| {
        simd(
            #[inline(always)]
            || {
                let row = &cos[r * cols..(r + 1) * cols];
                let z_y = rows.targets[r].logit;
                let [before, after] = others(row, rows.labels[r]);
                let o = &rows.others;
                let z_max = o.max(r, before).max(o.max(r, after)).max(z_y);
                let sum_others = o.sum_exp(r, before, z_max) + o.sum_exp(r, after, z_max);
                *lse = z_max + (sum_others + (z_y - z_max).exp()).ln();
                *loss = *lse - z_y;
            },
        )
    };
    let pairs = lse.iter_mut().zip(loss.iter_mut()).enumerate();
    if !parallel(cos.len()) {
        pairs.for_each(row_forward);
    } else {
        lse.par_iter_mut()
            .zip(loss.par_iter_mut())
            .enumerate()
            .for_each(row_forward);
    }
}

/// `dcos[r, j] (+)= coef[r] · ∂L_r/∂c_rj` for every row; overwrites when `overwrite`
/// (a fresh gradient buffer), accumulates otherwise.
fn backward<F: Element, O: Others<F>>(
    cos: &Tensor<F>,
    op: &SoftmaxRows<F, O>,
    coef: &[F],
    dcos: &mut [F],
    overwrite: bool,
) {
    let (cos, cols) = (cos.data(), cos.shape()[1]);
    for_row_blocks(
        dcos,
        cols,
        #[inline(always)]
        |r0, block| {
            for (i, d_row) in block.chunks_mut(cols).enumerate() {
                let r = r0 + i;
                let row = &cos[r * cols..(r + 1) * cols];
                let (y, k, lse) = (op.labels[r], coef[r], op.lse[r]);
                let (d_before, d_rest) = d_row.split_at_mut(y);
                let (d_target, d_after) = d_rest.split_at_mut(1);
                op.others.grad(r, &row[..y], lse, k, d_before, overwrite);
                op.others.grad(r, &row[y + 1..], lse, k, d_after, overwrite);
                let target = op.targets[r];
                let d_y = k * ((target.logit - lse).exp() - F::ONE) * target.slope;
                if overwrite {
                    d_target[0] = d_y;
                } else {
                    d_target[0] += d_y;
                }
            }
        },
    );
}
