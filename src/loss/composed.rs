//! Every loss of the family built from primitive ops only: the reference the fused op is
//! tested against (values to 1e-10, gradients to 1e-8 in f64), and a readable statement of
//! each formula. Slower by design: it materialises every intermediate `B×C` matrix.

use super::adaface::{ADAFACE_EPS, check_adaface};
use super::curricularface::check_curricularface;
use super::elasticface::check_elasticface;
use super::magface::check_magface;
use super::sphereface2::check_sphereface2;
use super::subcenter::{argmax_in_group, class_dims};
use super::{
    AdaFace, AdaFaceNorms, ArcFallback, CLAMP, CurricularFace, CurricularFaceState, ElasticFace,
    ElasticKind, MagFace, MarginLoss, Reduction, SphereFace2, check_batch, check_subcenters,
};
use crate::{Element, Error, Graph, Labels, Tensor, Var};

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
    let g = cos.graph();
    let f = F::from_f64;
    let (target, others) = target_masks(g, labels, batch, cos.shape()[1]);
    let psi = psi_composed(cos, loss);
    let s = loss.scale;
    let z_target = (psi - f(loss.cosine_margin)) * f(s / loss.target_divisor);
    let z_others = cos * f(s) + f(s * loss.nontarget_margin);
    let z = target * z_target + others * z_others;
    let per_sample = -z.log_softmax().pick(labels);
    Ok(weighted(per_sample, &row_weight, reduction))
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
    Ok(weighted(per_sample, &row_weight, reduction))
}

/// `ψ(c)` of `loss` for every cosine: `cos(m1·arccos(clamp(c)) + m2)`, with the fallback
/// selected by constant masks; `c` itself when the loss is not angular.
fn psi_composed<'g, F: Element>(cos: Var<'g, F>, loss: &MarginLoss) -> Var<'g, F> {
    if !loss.is_angular() {
        return cos;
    }
    let f = F::from_f64;
    let limit = 1.0 - CLAMP;
    let clamped = clamp_by_masks(cos, -limit, limit);
    let arc = (clamped.acos() * f(loss.angular_multiplier) + f(loss.angular_margin)).cos();
    match loss.fallback_rule() {
        None => arc,
        Some((th, shift)) => {
            let falls = constant_like(clamped, |_, c| if c <= th { 1.0 } else { 0.0 });
            let stays = constant_like(clamped, |_, c| if c > th { 1.0 } else { 0.0 });
            arc * stays + (clamped - f(shift)) * falls
        }
    }
}

/// The per-sample losses `L` (`[B, 1]`) weighted by `row_weight` and reduced.
fn weighted<'g, F: Element>(
    per_sample: Var<'g, F>,
    row_weight: &[f64],
    reduction: Reduction,
) -> Var<'g, F> {
    let batch = row_weight.len();
    let w = Tensor::from_fn(&[batch, 1], |r| F::from_f64(row_weight[r]));
    let weighted = per_sample * per_sample.graph().constant(w);
    match reduction {
        Reduction::Mean => weighted.mean(),
        Reduction::Sum => weighted.sum(),
        Reduction::None => weighted.reshape(&[batch]),
    }
}

/// A constant shaped as `x` holding `f(i, x_i)` for each element (flat index, value).
fn constant_like<'g, F: Element>(x: Var<'g, F>, f: impl Fn(usize, f64) -> f64) -> Var<'g, F> {
    let values = x.to_tensor();
    x.graph().constant(Tensor::from_fn(values.shape(), |i| {
        F::from_f64(f(i, values.data()[i].to_f64()))
    }))
}

/// `clamp(x, lo, hi)` from constant masks: `x` where it lies in `[lo, hi]`, the bound (a
/// constant, slope 0) elsewhere.
fn clamp_by_masks<F: Element>(x: Var<'_, F>, lo: f64, hi: f64) -> Var<'_, F> {
    let inside = constant_like(x, |_, v| if (lo..=hi).contains(&v) { 1.0 } else { 0.0 });
    let bound = constant_like(x, |_, v| {
        if (lo..=hi).contains(&v) {
            0.0
        } else {
            v.clamp(lo, hi)
        }
    });
    x * inside + bound
}

/// The one-hot mask of the labels `t` and its complement `1 − t`, as `[B, C]` constants.
fn target_masks<'g, F: Element>(
    g: &'g Graph<F>,
    labels: &Labels,
    batch: usize,
    classes: usize,
) -> (Var<'g, F>, Var<'g, F>) {
    let mask = |target: bool| {
        g.constant(Tensor::from_fn(&[batch, classes], |i| {
            let is_target = labels.values()[i / classes] == i % classes;
            if is_target == target { F::ONE } else { F::ZERO }
        }))
    };
    (mask(true), mask(false))
}

/// A `[B, 1]` constant of `f(r)` for each row.
fn column<F: Element>(g: &Graph<F>, batch: usize, f: impl Fn(usize) -> f64) -> Var<'_, F> {
    g.constant(Tensor::from_fn(&[batch, 1], |r| F::from_f64(f(r))))
}

/// [`adaface_loss`](super::adaface_loss), composed from primitives, with `ẑ_i` (from the
/// detached norms) as constants:
///
/// ```text
/// t   = one-hot(labels)
/// φ   = clip(arccos(clamp(c, −1 + ε, 1 − ε)) − t ⊙ m·ẑ, ε, π − ε)
/// z   = t ⊙ s(cos φ − m(1 + ẑ)) + (1 − t) ⊙ s·c
/// L_i = −log_softmax(z)_{i, y_i}
/// ```
///
/// # Errors
/// As [`adaface_loss`](super::adaface_loss).
///
/// # Panics
/// As [`adaface_loss`](super::adaface_loss).
#[track_caller]
pub fn adaface_loss_composed<'g, F: Element>(
    cos: Var<'g, F>,
    norms: Var<'g, F>,
    labels: &Labels,
    loss: &AdaFace,
    stats: &AdaFaceNorms,
    reduction: Reduction,
    weights: Option<&[f64]>,
) -> Result<Var<'g, F>, Error> {
    let (batch, row_weight, scalers) =
        check_adaface(cos, norms, labels, loss, stats, weights, "adaface_composed")?;
    let g = cos.graph();
    let (target, others) = target_masks(g, labels, batch, cos.shape()[1]);
    let (s, m, eps) = (loss.scale, loss.margin, ADAFACE_EPS);
    let theta = clamp_by_masks(cos, -1.0 + eps, 1.0 - eps).acos();
    let angle = theta - target * column(g, batch, |r| m * scalers[r]);
    let clipped = clamp_by_masks(angle, eps, std::f64::consts::PI - eps);
    let additive = column(g, batch, |r| m * (1.0 + scalers[r]));
    let z =
        target * ((clipped.cos() - additive) * F::from_f64(s)) + others * (cos * F::from_f64(s));
    let per_sample = -z.log_softmax().pick(labels);
    Ok(weighted(per_sample, &row_weight, reduction))
}

/// [`magface_loss`](super::magface_loss), composed from primitives, the norms `a` a variable:
///
/// ```text
/// â   = clamp(a, l_a, u_a),   m = l_m + (u_m − l_m)(â − l_a)/(u_a − l_a)      ([B, 1])
/// ψ   = cos(arccos(clamp(c)) + t ⊙ m)       (or the fallback, by constant masks)
/// z   = t ⊙ s·ψ + (1 − t) ⊙ s·c
/// L_i = −log_softmax(z)_{i, y_i} + λ_g (â/u_a² + â^{−1})
/// ```
///
/// The fallbacks use `sin m = cos(π/2 − m)` (there is no `sin` op).
///
/// # Errors
/// As [`magface_loss`](super::magface_loss).
///
/// # Panics
/// As [`magface_loss`](super::magface_loss).
#[track_caller]
pub fn magface_loss_composed<'g, F: Element>(
    cos: Var<'g, F>,
    norms: Var<'g, F>,
    labels: &Labels,
    loss: &MagFace,
    reduction: Reduction,
    weights: Option<&[f64]>,
) -> Result<Var<'g, F>, Error> {
    let (batch, row_weight, a_values) =
        check_magface(cos, norms, labels, loss, weights, "magface_composed")?;
    let g = cos.graph();
    let f = F::from_f64;
    let (target, others) = target_masks(g, labels, batch, cos.shape()[1]);
    let (la, ua, lm, um) = (
        loss.lower_norm,
        loss.upper_norm,
        loss.lower_margin,
        loss.upper_margin,
    );
    let a = clamp_by_masks(norms.reshape(&[batch, 1]), la, ua);
    let m = (a - f(la)) * f((um - lm) / (ua - la)) + f(lm);
    let limit = 1.0 - CLAMP;
    let clamped = clamp_by_masks(cos, -limit, limit);
    let arc = (clamped.acos() + target * m).cos();
    let half_pi = std::f64::consts::FRAC_PI_2;
    let psi = match loss.fallback {
        ArcFallback::None => arc,
        ArcFallback::EasyMargin => {
            let falls = constant_like(clamped, |_, c| if c <= 0.0 { 1.0 } else { 0.0 });
            let stays = constant_like(clamped, |_, c| if c > 0.0 { 1.0 } else { 0.0 });
            arc * stays + clamped * falls
        }
        ArcFallback::Threshold => {
            // the row's threshold cos(π − m) from the margins' values
            let classes = cos.shape()[1];
            let threshold = |i: usize| {
                let (m, _) = loss.margin(a_values[i / classes]);
                (std::f64::consts::PI - m).cos()
            };
            let falls = constant_like(clamped, |i, c| if c <= threshold(i) { 1.0 } else { 0.0 });
            let stays = constant_like(clamped, |i, c| if c > threshold(i) { 1.0 } else { 0.0 });
            // mm = m·sin m
            let mm = m * (m * f(-1.0) + f(half_pi)).cos();
            arc * stays + (clamped - target * mm) * falls
        }
    };
    let s = f(loss.scale);
    let z = target * (psi * s) + others * (cos * s);
    let regulariser = (a * f(1.0 / (ua * ua)) + a.powf(f(-1.0))) * f(loss.lambda_g);
    let per_sample = -z.log_softmax().pick(labels) + regulariser;
    Ok(weighted(per_sample, &row_weight, reduction))
}

/// [`curricularface_loss`](super::curricularface_loss), composed from primitives, with `t`
/// and the hard negatives' mask `H` (from the values: `c_ij > τ_i`, j ≠ y_i) as constants:
///
/// ```text
/// z   = t ⊙ s·ψ(c) + (1 − t − H) ⊙ s·c + H ⊙ s·c ⊙ (c + t)      ψ: ArcFace with threshold
/// L_i = −log_softmax(z)_{i, y_i}
/// ```
///
/// # Errors
/// As [`curricularface_loss`](super::curricularface_loss).
///
/// # Panics
/// When `cos` is not rank 2.
#[track_caller]
pub fn curricularface_loss_composed<'g, F: Element>(
    cos: Var<'g, F>,
    labels: &Labels,
    loss: &CurricularFace,
    state: &CurricularFaceState,
    reduction: Reduction,
    weights: Option<&[f64]>,
) -> Result<Var<'g, F>, Error> {
    let (batch, row_weight) =
        check_curricularface(cos, labels, loss, state, weights, "curricularface_composed")?;
    let g = cos.graph();
    let f = F::from_f64;
    let classes = cos.shape()[1];
    let (target, others) = target_masks(g, labels, batch, classes);
    let values = cos.to_tensor();
    let thresholds: Vec<f64> = (0..batch)
        .map(|r| {
            let c = values.data()[r * classes + labels.values()[r]].to_f64();
            loss.hardness_threshold(c)
        })
        .collect();
    let is_hard = |i: usize, c: f64| {
        labels.values()[i / classes] != i % classes && c > thresholds[i / classes]
    };
    let hard = constant_like(cos, |i, c| if is_hard(i, c) { 1.0 } else { 0.0 });
    let easy = others - hard;
    let arcface = MarginLoss::arcface(loss.scale, loss.margin, ArcFallback::Threshold)?;
    let s = f(loss.scale);
    let z = target * (psi_composed(cos, &arcface) * s)
        + easy * (cos * s)
        + hard * (cos * (cos + f(state.t)) * s);
    let per_sample = -z.log_softmax().pick(labels);
    Ok(weighted(per_sample, &row_weight, reduction))
}

/// [`elasticface_loss`](super::elasticface_loss), composed from primitives, with the margins
/// `m_i` as a `[B, 1]` constant:
///
/// ```text
/// Arc: ψ = cos(arccos(clamp(c)) + t ⊙ m)        Cos: ψ = c − t ⊙ m
/// z   = t ⊙ s·ψ + (1 − t) ⊙ s·c
/// L_i = −log_softmax(z)_{i, y_i}
/// ```
///
/// # Errors
/// As [`elasticface_loss`](super::elasticface_loss).
///
/// # Panics
/// When `cos` is not rank 2.
#[track_caller]
pub fn elasticface_loss_composed<'g, F: Element>(
    cos: Var<'g, F>,
    labels: &Labels,
    loss: &ElasticFace,
    margins: &[f64],
    reduction: Reduction,
    weights: Option<&[f64]>,
) -> Result<Var<'g, F>, Error> {
    let (batch, row_weight) =
        check_elasticface(cos, labels, loss, margins, weights, "elasticface_composed")?;
    let g = cos.graph();
    let (target, others) = target_masks(g, labels, batch, cos.shape()[1]);
    let margin = target * column(g, batch, |r| margins[r]);
    let psi = match loss.kind {
        ElasticKind::Arc => {
            let limit = 1.0 - CLAMP;
            (clamp_by_masks(cos, -limit, limit).acos() + margin).cos()
        }
        ElasticKind::Cos => cos - margin,
    };
    let s = F::from_f64(loss.scale);
    let z = target * (psi * s) + others * (cos * s);
    let per_sample = -z.log_softmax().pick(labels);
    Ok(weighted(per_sample, &row_weight, reduction))
}
