//! Every loss of the family built from primitive ops only: the reference the fused op is
//! tested against (values to 1e-10, gradients to 1e-8 in f64), and a readable statement of
//! each formula. Slower by design: it materialises every intermediate `B×C` matrix.

use super::sphereface2::check_sphereface2;
use super::subcenter::{argmax_in_group, class_dims};
use super::{CLAMP, MarginLoss, Reduction, SphereFace2, check_batch, check_subcenters};
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

/// [`max_over_subcenters`](super::max_over_subcenters), composed from primitives: a constant
/// one-hot mask `M` of each group's winner (first of equal maxima), then a sum over each
/// class's `k` columns:
///
/// ```text
/// c_ij = Σ_a M_{i, jK+a} · c_{i, jK+a}          (reshape [B·C, K], sum along 1, reshape [B, C])
/// ```
///
/// # Errors
/// [`Error::InvalidSetting`] when `k` is 0.
///
/// # Panics
/// When `cos` is not rank 2 or its width is not a multiple of `k`.
#[track_caller]
pub fn max_over_subcenters_composed<F: Element>(
    cos: Var<'_, F>,
    k: usize,
) -> Result<Var<'_, F>, Error> {
    check_subcenters(k)?;
    let (rows, classes) = class_dims(&cos.shape(), k, "max_over_subcenters_composed");
    let values = cos.to_tensor();
    let mut mask = Tensor::zeros(&[rows, classes * k]);
    for (group, m) in values.data().chunks(k).zip(mask.data_mut().chunks_mut(k)) {
        m[argmax_in_group(group)] = F::ONE;
    }
    let picked = cos * cos.graph().constant(mask);
    Ok(picked
        .reshape(&[rows * classes, k])
        .sum_dim(1)
        .reshape(&[rows, classes]))
}

/// [`sphereface2_loss`](super::sphereface2_loss), composed from primitives:
///
/// ```text
/// t       = one-hot(labels), σ_ij = 1 − 2 t_ij     (constants: −1 at the target, +1 elsewhere)
/// g       = 2((clamp(c) + 1)/2)^t − 1
/// u       = r·g + r·m·σ + b                       (b broadcast down a column of ones)
/// L_i     = Σ_j ω_ij softplus(σ_ij u_ij),   ω = λ/r at the target, (1 − λ)/r elsewhere
/// softplus(v) = relu(v) + log(1 + exp(−|v|))
/// ```
///
/// # Errors
/// As [`sphereface2_loss`](super::sphereface2_loss).
///
/// # Panics
/// When `cos` is not rank 2 or `bias` has not exactly one element.
#[track_caller]
pub fn sphereface2_loss_composed<'g, F: Element>(
    cos: Var<'g, F>,
    bias: Var<'g, F>,
    labels: &Labels,
    loss: &SphereFace2,
    reduction: Reduction,
    weights: Option<&[f64]>,
) -> Result<Var<'g, F>, Error> {
    let (batch, row_weight) =
        check_sphereface2(cos, bias, labels, loss, weights, "sphereface2_composed")?;
    let classes = cos.shape()[1];
    let g = cos.graph();
    let f = F::from_f64;
    let values = cos.to_tensor();
    let by_element = |value: &dyn Fn(usize, f64) -> f64| {
        g.constant(Tensor::from_fn(&[batch, classes], |i| {
            f(value(i, values.data()[i].to_f64()))
        }))
    };
    let is_target = |i: usize| labels.values()[i / classes] == i % classes;
    let sign = by_element(&|i, _| if is_target(i) { -1.0 } else { 1.0 });
    let (r, lambda) = (loss.scale, loss.lambda);
    let weight = by_element(&|i, _| {
        if is_target(i) {
            lambda / r
        } else {
            (1.0 - lambda) / r
        }
    });
    let inside = by_element(&|_, c| if c.abs() <= 1.0 { 1.0 } else { 0.0 });
    let clamp_values = by_element(&|_, c| {
        if c.abs() <= 1.0 {
            0.0
        } else {
            c.clamp(-1.0, 1.0)
        }
    });
    let clamped = cos * inside + clamp_values;
    let similarity = ((clamped + f(1.0)) * f(0.5)).powf(f(loss.t)) * f(2.0) - f(1.0);
    let column_of_bias = g
        .constant(Tensor::from_fn(&[batch, 1], |_| F::ONE))
        .matmul(bias.reshape(&[1, 1]));
    let u = similarity * f(r) + sign * f(r * loss.margin) + column_of_bias;
    let v = u * sign;
    let softplus = v.relu() + ((-v.abs()).exp() + f(1.0)).log();
    let per_sample = (softplus * weight).sum_dim(1);
    let w = Tensor::from_vec(row_weight.iter().map(|&w| f(w)).collect(), &[batch, 1])?;
    let weighted = per_sample * g.constant(w);
    Ok(match reduction {
        Reduction::Mean => weighted.mean(),
        Reduction::Sum => weighted.sum(),
        Reduction::None => weighted.reshape(&[batch]),
    })
}
