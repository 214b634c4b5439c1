//! AdaFace (Kim et al. 2022): a margin that adapts to image quality, with the feature norm as
//! the proxy for quality, as one fused op with a closed-form backward.
//!
//! ```text
//! a     = clip(‖x‖, 0.001, 100)                       (a constant: no gradient through it)
//! ẑ     = clip(h·(a − μ)/(σ + ε), −1, 1)              μ, σ: running statistics of the norms
//! θ_y   = arccos(clamp(c_y, −1 + ε, 1 − ε))
//! z_y   = s·(cos(clip(θ_y − m·ẑ, ε, π − ε)) − m·(1 + ẑ))      the target
//! z_j   = s·c_j                                       (j ≠ y) every other class
//! L_i   = −log softmax(z)_y                           ε = 10⁻³
//! ```
//!
//! A low-quality sample (small norm, `ẑ = −1`) gets ArcFace's angular margin `m` and no additive
//! one; a high-quality one (`ẑ = 1`) gets its angle *reduced* by `m` and an additive margin `2m`,
//! which weighs its hard cases more; `ẑ = 0` is CosFace with margin `m`. The running
//! statistics ([`AdaFaceNorms`]) are carried from batch to batch and updated with each batch
//! before it is used ([`AdaFaceNorms::update`]). Derivations: `docs/derivations.md`,
//! section 10.

use super::fused::{Linear, Rows, Target, softmax_rows};
use super::{Reduction, check_rows, reduced_row_weights, row_norms};
use crate::{Element, Error, Labels, Var};
use serde::{Deserialize, Serialize};

/// `ε`: the clamp of the cosine and of the angle, and the floor added to `σ` (the official
/// code's 10⁻³).
pub const ADAFACE_EPS: f64 = 1e-3;
/// The range norms are clipped to before they are used (the official code's).
pub const ADAFACE_NORM_RANGE: (f64, f64) = (0.001, 100.0);

/// AdaFace's settings; [`Default`] gives the paper's `m = 0.4, h = 0.333, s = 64` and the
/// statistics' momentum 0.01.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdaFace {
    /// `m`, the margin (angular and additive), in `[0, π/2]`.
    pub margin: f64,
    /// `h`, how many standard deviations of the norm make the full margin (`ẑ = ±1` at
    /// `|a − μ| = σ/h`), ≥ 0.
    pub h: f64,
    /// `s`, the logit scale (> 0).
    pub scale: f64,
    /// `α`, the weight of each batch in the running statistics, in `(0, 1]`.
    pub momentum: f64,
}

impl Default for AdaFace {
    fn default() -> Self {
        AdaFace {
            margin: 0.4,
            h: 0.333,
            scale: 64.0,
            momentum: 0.01,
        }
    }
}

impl AdaFace {
    /// The settings, checked.
    ///
    /// # Errors
    /// As [`AdaFace::validate`].
    pub fn new(margin: f64, h: f64, scale: f64, momentum: f64) -> Result<Self, Error> {
        let loss = AdaFace {
            margin,
            h,
            scale,
            momentum,
        };
        loss.validate()?;
        Ok(loss)
    }

    /// Checks every setting against its range.
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] naming the first setting out of range: `m` outside
    /// `[0, π/2]`, `h < 0`, `s ≤ 0`, `α` outside `(0, 1]`, or any not finite.
    pub fn validate(&self) -> Result<(), Error> {
        let m = self.margin;
        Error::check(
            "AdaFace margin m",
            m,
            (0.0..=std::f64::consts::FRAC_PI_2).contains(&m),
            "in [0, π/2]",
        )?;
        Error::check("AdaFace h", self.h, self.h >= 0.0, "non-negative")?;
        Error::check("AdaFace scale s", self.scale, self.scale > 0.0, "positive")?;
        let a = self.momentum;
        Error::check("AdaFace momentum", a, a > 0.0 && a <= 1.0, "in (0, 1]")
    }

    /// `ẑ = clip(h·(a − μ)/(σ + ε), −1, 1)` for a norm `a` (clipped to the norm range first).
    pub fn margin_scaler(&self, norm: f64, stats: &AdaFaceNorms) -> f64 {
        let a = clip_norm(norm);
        (self.h * (a - stats.mean) / (stats.std + ADAFACE_EPS)).clamp(-1.0, 1.0)
    }

    /// `(z_y, dz_y/dc)` for a target cosine `c` and margin scaler `ẑ`.
    pub(crate) fn target(&self, c: f64, scaler: f64) -> (f64, f64) {
        let (s, m, eps) = (self.scale, self.margin, ADAFACE_EPS);
        let clamped = c.clamp(-1.0 + eps, 1.0 - eps);
        let theta = clamped.acos();
        let angle = theta - m * scaler;
        let clipped = angle.clamp(eps, std::f64::consts::PI - eps);
        let inside = clamped == c && clipped == angle;
        // d cos(θ − mẑ)/dc = −sin(θ − mẑ)·dθ/dc = sin(θ − mẑ)/sin θ
        let slope = if inside {
            s * clipped.sin() / theta.sin()
        } else {
            0.0
        };
        (s * (clipped.cos() - m * (1.0 + scaler)), slope)
    }
}

/// `a` clipped to [`ADAFACE_NORM_RANGE`].
fn clip_norm(a: f64) -> f64 {
    a.clamp(ADAFACE_NORM_RANGE.0, ADAFACE_NORM_RANGE.1)
}

/// AdaFace's running statistics of the feature norms, carried from batch to batch (serialisable,
/// for a training loop to keep with its checkpoint); [`Default`] gives the official starting values `μ = 20, σ = 100`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdaFaceNorms {
    /// `μ`, the running mean of the norms.
    pub mean: f64,
    /// `σ`, the running (unbiased) standard deviation of the norms.
    pub std: f64,
}

impl Default for AdaFaceNorms {
    fn default() -> Self {
        AdaFaceNorms {
            mean: 20.0,
            std: 100.0,
        }
    }
}

impl AdaFaceNorms {
    /// Blends one batch's norms into the statistics, before the batch's loss uses them:
    /// `μ ← α·mean(a) + (1 − α)·μ`, `σ ← α·std(a) + (1 − α)·σ`, with the norms clipped to
    /// [`ADAFACE_NORM_RANGE`] and `std` the unbiased standard deviation (divided by `B − 1`).
    ///
    /// # Errors
    /// - [`Error::InvalidSetting`] for fewer than two norms (their unbiased standard deviation is
    ///   undefined) or a momentum outside `(0, 1]`;
    /// - [`Error::NonFinite`] for a norm that is NaN or infinite.
    ///
    /// Nothing is changed on an error.
    pub fn update<F: Element>(&mut self, norms: &[F], momentum: f64) -> Result<(), Error> {
        Error::check(
            "AdaFace momentum",
            momentum,
            momentum > 0.0 && momentum <= 1.0,
            "in (0, 1]",
        )?;
        let n = norms.len();
        Error::check(
            "AdaFace norms in a batch",
            n as f64,
            n >= 2,
            "at least 2 (for their standard deviation)",
        )?;
        if let Some(index) = norms.iter().position(|a| !a.to_f64().is_finite()) {
            return Err(Error::NonFinite {
                what: "feature norm".into(),
                index,
                value: norms[index].to_f64(),
            });
        }
        let a: Vec<f64> = norms.iter().map(|a| clip_norm(a.to_f64())).collect();
        let mean = a.iter().sum::<f64>() / n as f64;
        let var = a.iter().map(|&v| (v - mean) * (v - mean)).sum::<f64>() / (n - 1) as f64;
        self.mean = momentum * mean + (1.0 - momentum) * self.mean;
        self.std = momentum * var.sqrt() + (1.0 - momentum) * self.std;
        Ok(())
    }

    /// Checks that the statistics can be used.
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] for a mean that is not finite or a standard deviation that is
    /// negative or not finite.
    pub fn validate(&self) -> Result<(), Error> {
        Error::check("AdaFace norm mean μ", self.mean, true, "finite")?;
        Error::check(
            "AdaFace norm std σ",
            self.std,
            self.std >= 0.0,
            "non-negative and finite",
        )
    }
}

/// AdaFace's loss of the cosines `cos` (`[B, C]`) and the features' norms `norms` (`B`
/// elements, any shape; read as constants: the loss records no gradient to them), with the
/// running statistics `stats` (already updated with this batch), weighted by `weights`
/// (default 1) and reduced: see the module's formula.
///
/// # Errors
/// - [`Error::InvalidSetting`] for a setting of `loss` or `stats` out of range, or a weight
///   negative or not finite;
/// - [`Error::NonFinite`] for a norm that is NaN or infinite;
/// - [`Error::EmptyBatch`], [`Error::DataLength`], [`Error::LabelOutOfRange`] as
///   [`margin_cross_entropy_with`](super::margin_cross_entropy_with).
///
/// # Panics
/// When `cos` is not rank 2 or `norms` has not one element per row.
#[track_caller]
pub fn adaface_loss<'g, F: Element>(
    cos: Var<'g, F>,
    norms: Var<'g, F>,
    labels: &Labels,
    loss: &AdaFace,
    stats: &AdaFaceNorms,
    reduction: Reduction,
    weights: Option<&[f64]>,
) -> Result<Var<'g, F>, Error> {
    let (batch, row_weight, scalers) =
        check_adaface(cos, norms, labels, loss, stats, weights, "adaface")?;
    let targets = {
        let x = cos.value();
        let cols = x.shape()[1];
        let f = F::from_f64;
        (0..batch)
            .map(|r| {
                let c = x.data()[r * cols + labels.values()[r]].to_f64();
                let (logit, slope) = loss.target(c, scalers[r]);
                Target {
                    logit: f(logit),
                    slope: f(slope),
                }
            })
            .collect()
    };
    let rows = Rows {
        name: "adaface loss",
        labels: labels.values(),
        targets,
        others: Linear {
            scale: F::from_f64(loss.scale),
            shift: F::ZERO,
        },
    };
    let row_weight = reduced_row_weights(batch, row_weight, reduction);
    Ok(softmax_rows(cos, rows, None, row_weight, reduction))
}

/// The checks of [`adaface_loss`], shared with its composed twin; returns the batch size, the
/// rows' weights and each row's margin scaler `ẑ`.
#[track_caller]
pub(crate) fn check_adaface<F: Element>(
    cos: Var<'_, F>,
    norms: Var<'_, F>,
    labels: &Labels,
    loss: &AdaFace,
    stats: &AdaFaceNorms,
    weights: Option<&[f64]>,
    op: &str,
) -> Result<(usize, Vec<f64>, Vec<f64>), Error> {
    let validate = || {
        loss.validate()?;
        stats.validate()
    };
    let (batch, row_weight) = check_rows(cos, labels, validate, weights, op)?;
    let norm_values = row_norms(cos, norms, op)?;
    let scalers = norm_values
        .iter()
        .map(|&a| loss.margin_scaler(a, stats))
        .collect();
    Ok((batch, row_weight, scalers))
}
