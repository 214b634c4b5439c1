//! CurricularFace (Huang et al. 2020): ArcFace whose hard negatives weigh more as training
//! advances, as one fused op with a closed-form backward.
//!
//! ```text
//! θ_y   = arccos(clamp(c_y)),   τ_i = cos(θ_y + m)        (the row's hardness threshold)
//! z_y   = s·ψ(c_y)                    ArcFace's target, with its threshold fallback
//! z_j   = s·c_j·(t + c_j)   where c_j > τ_i  (a hard negative)
//! z_j   = s·c_j             elsewhere                      (j ≠ y)
//! L_i   = −log softmax(z)_y
//! ```
//!
//! `t` is carried from batch to batch ([`CurricularFaceState`]), updated with each batch before
//! it is used: `t ← α·mean_i c_{i, y_i} + (1 − α)·t`. Early in training `t ≈ 0` and
//! `c(t + c) = c²` is below `c` for a hard negative (it is down-weighted); as the target
//! cosines grow, `t → 1` and `c(1 + c) > c` (it is weighted up). No gradient flows through `t`
//! or the choice of hard negatives. Derivations: `docs/derivations.md`, section 12.

use super::fused::{Others, Rows, Target, softmax_rows};
use super::{ArcFallback, CLAMP, MarginLoss, Reduction, check_rows, reduced_row_weights};
use crate::kernels::{lane_max_by, lane_sum};
use crate::{Element, Error, Labels, Tensor, Var};
use serde::{Deserialize, Serialize};

/// CurricularFace's settings; [`Default`] gives the paper's and the official code's
/// `m = 0.5, s = 64` and `t`'s momentum 0.01.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CurricularFace {
    /// `m`, ArcFace's angular margin, in `[0, π)`.
    pub margin: f64,
    /// `s`, the logit scale (> 0).
    pub scale: f64,
    /// `α`, the weight of each batch in `t`, in `(0, 1]`.
    pub momentum: f64,
}

impl Default for CurricularFace {
    fn default() -> Self {
        CurricularFace {
            margin: 0.5,
            scale: 64.0,
            momentum: 0.01,
        }
    }
}

impl CurricularFace {
    /// Checks every setting against its range.
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] naming the first setting out of range: `m` outside `[0, π)`,
    /// `s ≤ 0`, `α` outside `(0, 1]`, or any not finite.
    pub fn validate(&self) -> Result<(), Error> {
        let m = self.margin;
        Error::check(
            "CurricularFace margin m",
            m,
            (0.0..std::f64::consts::PI).contains(&m),
            "in [0, π)",
        )?;
        Error::check(
            "CurricularFace scale s",
            self.scale,
            self.scale > 0.0,
            "positive",
        )?;
        let a = self.momentum;
        Error::check(
            "CurricularFace momentum",
            a,
            a > 0.0 && a <= 1.0,
            "in (0, 1]",
        )
    }

    /// The target's loss: ArcFace with the threshold fallback.
    pub(super) fn arcface(&self) -> Result<MarginLoss, Error> {
        MarginLoss::arcface(self.scale, self.margin, ArcFallback::Threshold)
    }

    /// `τ = cos(θ + m)` for a target cosine `c`: non-target cosines above it are hard.
    pub fn hardness_threshold(&self, c: f64) -> f64 {
        let limit = 1.0 - CLAMP;
        (c.clamp(-limit, limit).acos() + self.margin).cos()
    }
}

/// CurricularFace's `t`, carried from batch to batch (serialisable, for a training loop to keep
/// with its checkpoint); it starts at 0 ([`Default`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CurricularFaceState {
    /// `t`, the running mean of the target cosines, in `[−1, 1]`.
    pub t: f64,
}

impl CurricularFaceState {
    /// Blends one batch into `t`, before the batch's loss uses it:
    /// `t ← α·mean_i c_{i, y_i} + (1 − α)·t`, with the cosines clamped to `[−1, 1]`.
    ///
    /// # Errors
    /// - [`Error::InvalidSetting`] for a momentum outside `(0, 1]`;
    /// - [`Error::EmptyBatch`], [`Error::DataLength`], [`Error::LabelOutOfRange`] for a batch
    ///   that does not fit the labels;
    /// - [`Error::NonFinite`] for a target cosine that is NaN or infinite.
    ///
    /// Nothing is changed on an error.
    ///
    /// # Panics
    /// When `cos` is not rank 2.
    #[track_caller]
    pub fn update<F: Element>(
        &mut self,
        cos: &Tensor<F>,
        labels: &Labels,
        momentum: f64,
    ) -> Result<(), Error> {
        // the momentum is checked by `update_from_targets`, before anything changes
        let shape = cos.shape();
        let [batch, classes] = shape[..] else {
            panic!("CurricularFaceState::update: expected [B, C] cosines, found shape {shape:?}")
        };
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
        let mut targets = Vec::with_capacity(batch);
        for (index, &y) in labels.values().iter().enumerate() {
            if y >= classes {
                return Err(Error::LabelOutOfRange {
                    index,
                    label: y,
                    classes,
                });
            }
            targets.push(cos.data()[index * classes + y]);
        }
        self.update_from_targets(&targets, momentum)
    }

    /// [`CurricularFaceState::update`] from the batch's target cosines `c_{i, y_i}` alone (a
    /// head that never holds the `[B, C]` cosines, such as
    /// [`BlockedHead::target_cosines`](super::BlockedHead::target_cosines)'s).
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] for a momentum outside `(0, 1]`; [`Error::EmptyBatch`] for no
    /// cosine; [`Error::NonFinite`] for a cosine that is NaN or infinite. Nothing is changed on
    /// an error.
    pub fn update_from_targets<F: Element>(
        &mut self,
        targets: &[F],
        momentum: f64,
    ) -> Result<(), Error> {
        Error::check(
            "CurricularFace momentum",
            momentum,
            momentum > 0.0 && momentum <= 1.0,
            "in (0, 1]",
        )?;
        if targets.is_empty() {
            return Err(Error::EmptyBatch);
        }
        let mut sum = 0.0;
        for (index, c) in targets.iter().enumerate() {
            let c = c.to_f64();
            if !c.is_finite() {
                return Err(Error::NonFinite {
                    what: "target cosine".into(),
                    index,
                    value: c,
                });
            }
            sum += c.clamp(-1.0, 1.0);
        }
        self.t = momentum * sum / targets.len() as f64 + (1.0 - momentum) * self.t;
        Ok(())
    }

    /// Checks that `t` can be used.
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] unless `t` is in `[−1, 1]`.
    pub fn validate(&self) -> Result<(), Error> {
        Error::check(
            "CurricularFace t",
            self.t,
            (-1.0..=1.0).contains(&self.t),
            "in [−1, 1]",
        )
    }
}

/// CurricularFace's non-target logits: `s·c·(t + c)` above the row's threshold, `s·c` below.
pub(super) struct Curricular<F> {
    pub(super) scale: F,
    pub(super) t: F,
    /// `τ_r` of each row.
    pub(super) thresholds: Vec<F>,
}

impl<F: Element> Curricular<F> {
    /// `(z, dz/dc)` of a non-target cosine `c` in a row with threshold `tau`, branch-free.
    #[inline(always)]
    fn logit(scale: F, t: F, c: F, tau: F) -> (F, F) {
        let hard = c > tau;
        let factor = if hard { t + c } else { F::ONE };
        let slope = if hard { t + c + c } else { F::ONE };
        (scale * c * factor, scale * slope)
    }
}

// Each method copies the settings out of `self` before its loop: read through `self` inside
// the loop, they kept the loop from vectorising (the forward pass was six times slower).
impl<F: Element> Others<F> for Curricular<F> {
    #[inline(always)]
    fn max(&self, r: usize, cs: &[F]) -> F {
        let (scale, t, tau) = (self.scale, self.t, self.thresholds[r]);
        lane_max_by(
            cs,
            #[inline(always)]
            |c| Self::logit(scale, t, c, tau).0,
        )
    }

    #[inline(always)]
    fn sum_exp(&self, r: usize, cs: &[F], shift: F) -> F {
        let (scale, t, tau) = (self.scale, self.t, self.thresholds[r]);
        lane_sum(
            cs,
            #[inline(always)]
            |c| (Self::logit(scale, t, c, tau).0 - shift).exp(),
        )
    }

    #[inline(always)]
    fn grad(&self, r: usize, cs: &[F], lse: F, k: F, d: &mut [F], overwrite: bool) {
        let (scale, t, tau) = (self.scale, self.t, self.thresholds[r]);
        let term = |c: F| {
            let (z, slope) = Self::logit(scale, t, c, tau);
            k * slope * (z - lse).exp()
        };
        if overwrite {
            for (d, &c) in d.iter_mut().zip(cs) {
                *d = term(c);
            }
        } else {
            for (d, &c) in d.iter_mut().zip(cs) {
                *d += term(c);
            }
        }
    }
}

/// CurricularFace's loss of the cosines `cos` (`[B, C]`) with `state`'s `t` (already updated
/// with this batch), weighted by `weights` (default 1) and reduced: see the module's formula.
///
/// # Errors
/// - [`Error::InvalidSetting`] for a setting of `loss` or `state` out of range, or a weight
///   negative or not finite;
/// - [`Error::EmptyBatch`], [`Error::DataLength`], [`Error::LabelOutOfRange`] as
///   [`margin_cross_entropy_with`](super::margin_cross_entropy_with).
///
/// # Panics
/// When `cos` is not rank 2.
#[track_caller]
pub fn curricularface_loss<'g, F: Element>(
    cos: Var<'g, F>,
    labels: &Labels,
    loss: &CurricularFace,
    state: &CurricularFaceState,
    reduction: Reduction,
    weights: Option<&[f64]>,
) -> Result<Var<'g, F>, Error> {
    let (batch, row_weight) =
        check_curricularface(cos, labels, loss, state, weights, "curricularface")?;
    let f = F::from_f64;
    let map = loss.arcface()?.logit_map::<F>();
    let (targets, thresholds) = {
        let x = cos.value();
        let cols = x.shape()[1];
        (0..batch)
            .map(|r| {
                let c = x.data()[r * cols + labels.values()[r]];
                let (logit, slope) = map.target(c);
                (
                    Target { logit, slope },
                    f(loss.hardness_threshold(c.to_f64())),
                )
            })
            .unzip()
    };
    let rows = Rows {
        name: "curricularface loss",
        labels: labels.values(),
        targets,
        others: Curricular {
            scale: f(loss.scale),
            t: f(state.t),
            thresholds,
        },
    };
    let row_weight = reduced_row_weights(batch, row_weight, reduction);
    Ok(softmax_rows(cos, rows, None, row_weight, reduction))
}

/// The checks of [`curricularface_loss`], shared with its composed twin; returns the batch
/// size and the rows' weights.
#[track_caller]
pub(crate) fn check_curricularface<F: Element>(
    cos: Var<'_, F>,
    labels: &Labels,
    loss: &CurricularFace,
    state: &CurricularFaceState,
    weights: Option<&[f64]>,
    op: &str,
) -> Result<(usize, Vec<f64>), Error> {
    let validate = || {
        loss.validate()?;
        state.validate()
    };
    check_rows(cos, labels, validate, weights, op)
}
