//! Every loss of the family built from primitive ops only: the reference the fused op is
//! tested against (values to 1e-10, gradients to 1e-8 in f64), and a readable statement of
//! each formula. Slower by design: it materialises every intermediate `B×C` matrix.

use super::{CLAMP, MarginLoss, Reduction, check_batch};
use crate::{Element, Error, Labels, Tensor, Var};

/// [`margin_cross_entropy_with`](super::margin_cross_entropy_with), composed from primitives:
///
/// ```text
/// t      = one-hot(labels)                       (a constant)
/// ψ      = cos(m1·arccos(clamp(c)) + m2)          (or c itself when not angular)
/// z      = t ⊙ (ψ − m3)·(s/M) + (1 − t) ⊙ (s·c + s·m_nt)
/// L_i    = −log_softmax(z)_{i, y_i}
/// ```
///
/// Clamping and the fallbacks select values with constant masks computed from `c`, which
/// gives the same piecewise gradient as the fused op.
///
/// # Errors
/// As [`margin_cross_entropy_with`](super::margin_cross_entropy_with).
///
/// # Panics
/// When `cos` is not rank 2.
#[track_caller]
pub fn margin_cross_entropy_composed<'g, F: Element>(
    cos: Var<'g, F>,
    labels: &Labels,
    loss: &MarginLoss,
    reduction: Reduction,
    weights: Option<&[f64]>,
) -> Result<Var<'g, F>, Error> {
    let (batch, row_weight) =
        check_batch(cos, labels, loss, weights, "margin_cross_entropy_composed")?;
    let classes = cos.shape()[1];
    let g = cos.graph();
    let f = F::from_f64;
    let c_values = cos.to_tensor();
    let mask = |pick: &dyn Fn(usize, F) -> bool| {
        g.constant(Tensor::from_fn(&[batch, classes], |i| {
            if pick(i, c_values.data()[i]) {
                F::ONE
            } else {
                F::ZERO
            }
        }))
    };
    let is_target = |i: usize| labels.values()[i / classes] == i % classes;
    let target = mask(&|i, _| is_target(i));
    let others = mask(&|i, _| !is_target(i));

    let psi = if loss.is_angular() {
        let limit = 1.0 - CLAMP;
        let inside = mask(&|_, c| c.to_f64().abs() < limit);
        let clamp_values = g.constant(Tensor::from_fn(&[batch, classes], |i| {
            f(c_values.data()[i].to_f64().clamp(-limit, limit))
        }));
        let outside = mask(&|_, c| c.to_f64().abs() >= limit);
        let clamped = cos * inside + clamp_values * outside;
        let arc = (clamped.acos() * f(loss.angular_multiplier) + f(loss.angular_margin)).cos();
        match loss.fallback_rule() {
            None => arc,
            Some((th, shift)) => {
                let falls = mask(&|_, c| c.to_f64().clamp(-limit, limit) <= th);
                let stays = mask(&|_, c| c.to_f64().clamp(-limit, limit) > th);
                arc * stays + (clamped - f(shift)) * falls
            }
        }
    } else {
        cos
    };
    let s = loss.scale;
    let z_target = (psi - f(loss.cosine_margin)) * f(s / loss.target_divisor);
    let z_others = cos * f(s) + f(s * loss.nontarget_margin);
    let z = target * z_target + others * z_others;
    let per_sample = -z.log_softmax().pick(labels);
    let w = Tensor::from_vec(row_weight.iter().map(|&w| f(w)).collect(), &[batch, 1])?;
    let weighted = per_sample * g.constant(w);
    Ok(match reduction {
        Reduction::Mean => weighted.mean(),
        Reduction::Sum => weighted.sum(),
        Reduction::None => weighted.reshape(&[batch]),
    })
}
