//! Losses: softmax cross-entropy and the margin-softmax family (NormFace, AM-Softmax / CosFace,
//! Enhanced AM-Softmax, ArcFace, combined margins), as one fused op with a closed-form backward.
//!
//! [`margin_cross_entropy`] takes a `[B, C]` matrix of cosines (or, for [`MarginLoss::softmax`],
//! raw logits) and the labels. Every loss is also built from primitive ops in [`composed`], so
//! that the tests can hold the fused op against it and both against finite differences.
//!
//! Beyond the softmax family: [`max_over_subcenters`] reduces `K` sub-centres per class to one
//! cosine in front of any of these losses (sub-center ArcFace), with [`dominant_subcenters`]
//! and [`far_from_dominant`] to find noisy samples; [`sphereface2_loss`] is SphereFace2's
//! per-class binary loss with a learned bias and no softmax.
//!
//! Margins that adapt to the sample, each fused on the same kernel as the family:
//! [`adaface_loss`] (the feature norm, detached, against running statistics
//! [`AdaFaceNorms`]), [`magface_loss`] (the norm sets the margin and is regularised; its
//! gradient reaches the norm), [`curricularface_loss`] (hard negatives re-weighted by the `t` of
//! [`CurricularFaceState`]) and [`elasticface_loss`] (a margin per sample drawn by
//! [`ElasticFace::draw_margins`]). The state carried between batches is a small serialisable
//! struct with an explicit `update`, called before the batch's loss.

mod adaface;
mod bf16_centres;
mod blocked;
pub mod composed;
mod curricularface;
mod elasticface;
mod extended;
mod fused;
mod magface;
mod margin;
mod sphereface2;
mod subcenter;

pub use adaface::{ADAFACE_EPS, ADAFACE_NORM_RANGE, AdaFace, AdaFaceNorms, adaface_loss};
pub use bf16_centres::Bf16Centres;
pub(crate) use blocked::FeatureGrad;
pub use blocked::{BlockLoss, BlockedHead, ClassSample, HEAD_NORM_EPS, ShardExchange};
pub use curricularface::{CurricularFace, CurricularFaceState, curricularface_loss};
pub use elasticface::{ElasticFace, ElasticKind, elasticface_loss};
pub use extended::ExtendedLoss;
pub use magface::{MagFace, magface_loss};
pub use margin::{ArcFallback, ExtraSettings, HeadLoss, LossKind, LossSettings, MarginLoss};
use margin::{CLAMP, LogitMap};
pub use sphereface2::{SphereFace2, sphereface2_loss};
pub use subcenter::{
    check_subcenters, chosen_subcenters, dominant_subcenters, far_from_dominant,
    max_over_subcenters,
};

use crate::{Element, Error, Labels, Tensor, Var};
use serde::{Deserialize, Serialize};

/// How per-sample losses `w_i·L_i` are combined.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Reduction {
    /// `(1/B) Σ_i w_i·L_i`, a scalar (the default).
    #[default]
    Mean,
    /// `Σ_i w_i·L_i`, a scalar.
    Sum,
    /// The vector `[w_i·L_i]`, shape `[B]`.
    None,
}

/// The mean margin cross-entropy of a batch: see [`margin_cross_entropy_with`].
///
/// # Errors
/// As [`margin_cross_entropy_with`].
#[track_caller]
pub fn margin_cross_entropy<'g, F: Element>(
    cos: Var<'g, F>,
    labels: &Labels,
    loss: &MarginLoss,
) -> Result<Var<'g, F>, Error> {
    margin_cross_entropy_with(cos, labels, loss, Reduction::Mean, None)
}

/// Plain softmax cross-entropy on raw logits, `−(1/B) Σ_i log softmax(z_i)_{y_i}`.
///
/// # Errors
/// As [`margin_cross_entropy_with`].
#[track_caller]
pub fn softmax_cross_entropy<'g, F: Element>(
    logits: Var<'g, F>,
    labels: &Labels,
) -> Result<Var<'g, F>, Error> {
    margin_cross_entropy(logits, labels, &MarginLoss::softmax())
}

/// The margin cross-entropy `L_i = −log softmax(z_i)_{y_i}` over the logits that `loss` builds
/// from the cosines `cos` (`[B, C]`), weighted by `weights` (default 1) and reduced.
///
/// # Errors
/// - [`Error::InvalidSetting`] when a setting of `loss` is out of its range, or a weight is
///   negative or not finite;
/// - [`Error::EmptyBatch`] when `B = 0`;
/// - [`Error::DataLength`] when there are not `B` labels (or weights);
/// - [`Error::LabelOutOfRange`] when a label is not below `C`.
///
/// # Panics
/// When `cos` is not a rank-2 tensor (a mistake in composing ops).
#[track_caller]
pub fn margin_cross_entropy_with<'g, F: Element>(
    cos: Var<'g, F>,
    labels: &Labels,
    loss: &MarginLoss,
    reduction: Reduction,
    weights: Option<&[f64]>,
) -> Result<Var<'g, F>, Error> {
    let (batch, row_weight) = check_batch(cos, labels, loss, weights, "margin_cross_entropy")?;
    Ok(fused::margin_xent(
        cos,
        labels.values(),
        loss.logit_map(),
        reduced_row_weights(batch, row_weight, reduction),
        reduction,
    ))
}

/// Each row's weight as the fused kernels apply it: divided by `B` for the mean.
pub(crate) fn reduced_row_weights<F: Element>(
    batch: usize,
    row_weight: Vec<f64>,
    reduction: Reduction,
) -> Vec<F> {
    let divisor = if reduction == Reduction::Mean {
        batch as f64
    } else {
        1.0
    };
    row_weight
        .into_iter()
        .map(|w| F::from_f64(w / divisor))
        .collect()
}

/// The output of a fused loss from its per-sample losses `L_r` and reduced row weights `w_r`:
/// `Σ_r w_r·L_r`, or the vector of `w_r·L_r` for [`Reduction::None`].
pub(crate) fn reduce_rows<F: Element>(
    losses: &[F],
    row_weight: &[F],
    reduction: Reduction,
) -> Tensor<F> {
    let weighted = losses.iter().zip(row_weight).map(|(&l, &w)| l * w);
    match reduction {
        Reduction::Mean | Reduction::Sum => Tensor::scalar(weighted.sum()),
        Reduction::None => Tensor::from_vec(weighted.collect(), &[losses.len()]).expect("B values"),
    }
}

/// Each row's factor in a fused backward: the output's gradient `g` times the row's weight.
pub(crate) fn row_coefficients<F: Element>(
    g: &[F],
    row_weight: &[F],
    reduction: Reduction,
) -> Vec<F> {
    match reduction {
        Reduction::None => g.iter().zip(row_weight).map(|(&g, &w)| g * w).collect(),
        Reduction::Mean | Reduction::Sum => row_weight.iter().map(|&w| g[0] * w).collect(),
    }
}

/// Checks a batch of cosines against the labels, weights and loss settings; returns the batch
/// size and each row's weight. Panics (at the caller's line) when `cos` is not `[B, C]`.
#[track_caller]
pub(crate) fn check_batch<F: Element>(
    cos: Var<'_, F>,
    labels: &Labels,
    loss: &MarginLoss,
    weights: Option<&[f64]>,
    op: &str,
) -> Result<(usize, Vec<f64>), Error> {
    check_rows(cos, labels, || loss.validate(), weights, op)
}

/// [`check_batch`] for any loss: `validate` checks its settings (after the shape, before the
/// batch).
#[track_caller]
pub(crate) fn check_rows<F: Element>(
    cos: Var<'_, F>,
    labels: &Labels,
    validate: impl FnOnce() -> Result<(), Error>,
    weights: Option<&[f64]>,
    op: &str,
) -> Result<(usize, Vec<f64>), Error> {
    let shape = cos.shape();
    let [batch, classes] = shape[..] else {
        panic!("{op}: expected [B, C] cosines, found shape {shape:?}")
    };
    validate()?;
    if batch == 0 {
        return Err(Error::EmptyBatch);
    }
    if labels.len() != batch {
        return Err(Error::DataLength {
            shape: vec![batch],
            expected: batch,
            found: labels.len(),
        });
    }
    labels.check_within(classes)?;
    let row_weight = match weights {
        None => vec![1.0; batch],
        Some(w) if w.len() != batch => {
            return Err(Error::DataLength {
                shape: vec![batch],
                expected: batch,
                found: w.len(),
            });
        }
        Some(w) => {
            for &value in w {
                Error::check(
                    "sample weight",
                    value,
                    value >= 0.0,
                    "non-negative and finite",
                )?;
            }
            w.to_vec()
        }
    };
    Ok((batch, row_weight))
}

/// The values of `norms`, one per row of `cos`: panics (at the caller's line) naming `op` when
/// there are not as many; [`Error::NonFinite`] for a NaN or infinite norm.
#[track_caller]
pub(crate) fn row_norms<F: Element>(
    cos: Var<'_, F>,
    norms: Var<'_, F>,
    op: &str,
) -> Result<Vec<f64>, Error> {
    let (cos_shape, norm_shape) = (cos.shape(), norms.shape());
    let rows = cos_shape.first().copied().unwrap_or(0);
    assert!(
        norm_shape.iter().product::<usize>() == rows,
        "{op}: expected one norm per row of the cosines {cos_shape:?}, found shape {norm_shape:?}"
    );
    let values: Vec<f64> = norms.value().data().iter().map(|a| a.to_f64()).collect();
    if let Some(index) = values.iter().position(|a| !a.is_finite()) {
        return Err(Error::NonFinite {
            what: "feature norm".into(),
            index,
            value: values[index],
        });
    }
    Ok(values)
}
