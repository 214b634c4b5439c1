//! ElasticFace (Boutros et al. 2022): ArcFace or CosFace with each sample's margin drawn afresh
//! from a normal distribution at every step, as one fused op with a closed-form backward.
//!
//! ```text
//! m_i ~ N(m, σ²)                                    one draw per sample and step (seeded)
//! ElasticFace-Arc:  z_y = s·cos(θ_y + m_i),  θ_y = arccos(clamp(c_y))
//! ElasticFace-Cos:  z_y = s·(c_y − m_i)
//! z_j = s·c_j                                       (j ≠ y)
//! L_i = −log softmax(z)_y
//! ```
//!
//! The margins are an input of the loss ([`ElasticFace::draw_margins`] draws them from a
//! seeded generator), so that a step is a function of its inputs: the same seed gives the
//! same margins, and a gradient check holds them fixed. Derivations: `docs/derivations.md`,
//! section 13.

use super::fused::{Linear, Rows, Target, softmax_rows};
use super::margin::Angular;
use super::{ArcFallback, Reduction, check_rows, reduced_row_weights};
use crate::{Element, Error, Labels, Var};
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

/// Where ElasticFace puts its random margin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ElasticKind {
    /// ElasticFace-Arc: on the angle, `cos(θ + m_i)` (ArcFace's, with no fallback, as the
    /// official code).
    Arc,
    /// ElasticFace-Cos: on the cosine, `c − m_i` (CosFace's).
    Cos,
}

/// ElasticFace's settings: [`ElasticFace::arc`] and [`ElasticFace::cos`] give the paper's
/// and the official configuration's defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ElasticFace {
    /// Arc or Cos.
    pub kind: ElasticKind,
    /// `s`, the logit scale (> 0).
    pub scale: f64,
    /// `m`, the mean margin (≥ 0; below π for the Arc form).
    pub margin: f64,
    /// `σ`, the standard deviation of the margins (≥ 0; 0 is ArcFace or CosFace).
    pub std: f64,
}

impl ElasticFace {
    /// ElasticFace-Arc with `s = 64, m = 0.5, σ = 0.05`.
    pub fn arc() -> Self {
        ElasticFace {
            kind: ElasticKind::Arc,
            scale: 64.0,
            margin: 0.5,
            std: 0.05,
        }
    }

    /// ElasticFace-Cos with `s = 64, m = 0.35, σ = 0.05`.
    pub fn cos() -> Self {
        ElasticFace {
            kind: ElasticKind::Cos,
            scale: 64.0,
            margin: 0.35,
            std: 0.05,
        }
    }

    /// Checks every setting against its range.
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] naming the first setting out of range: `s ≤ 0`, `m < 0` (or
    /// `m ≥ π` for the Arc form), `σ < 0`, or any not finite.
    pub fn validate(&self) -> Result<(), Error> {
        Error::check(
            "ElasticFace scale s",
            self.scale,
            self.scale > 0.0,
            "positive",
        )?;
        let m = self.margin;
        match self.kind {
            ElasticKind::Arc => Error::check(
                "ElasticFace margin m",
                m,
                (0.0..std::f64::consts::PI).contains(&m),
                "in [0, π)",
            )?,
            ElasticKind::Cos => Error::check("ElasticFace margin m", m, m >= 0.0, "non-negative")?,
        }
        Error::check(
            "ElasticFace std σ",
            self.std,
            self.std >= 0.0,
            "non-negative",
        )
    }

    /// One margin per sample, `m_i = m + σ·n_i` with `n_i` standard normal drawn from `rng`:
    /// the same generator state gives the same margins.
    ///
    /// # Errors
    /// An invalid setting ([`ElasticFace::validate`]).
    pub fn draw_margins<R: Rng + ?Sized>(
        &self,
        batch: usize,
        rng: &mut R,
    ) -> Result<Vec<f64>, Error> {
        self.validate()?;
        Ok((0..batch)
            .map(|_| {
                let n: f64 = StandardNormal.sample(rng);
                self.margin + self.std * n
            })
            .collect())
    }

    /// `(z_y, dz_y/dc)` for a target cosine `c` and the sample's margin `m_i`.
    pub(crate) fn target(&self, c: f64, margin: f64) -> (f64, f64) {
        let s = self.scale;
        match self.kind {
            ElasticKind::Arc => {
                let (psi, slope) = Angular::<f64>::additive(margin, ArcFallback::None).psi(c);
                (s * psi, s * slope)
            }
            ElasticKind::Cos => (s * (c - margin), s),
        }
    }
}

/// ElasticFace's loss of the cosines `cos` (`[B, C]`) with each sample's margin `margins`
/// (`B` values, from [`ElasticFace::draw_margins`]), weighted by `weights` (default 1) and
/// reduced: see the module's formula.
///
/// # Errors
/// - [`Error::InvalidSetting`] for a setting of `loss` out of range, or a weight negative or
///   not finite;
/// - [`Error::DataLength`] when there are not `B` margins;
/// - [`Error::NonFinite`] for a margin that is NaN or infinite;
/// - [`Error::EmptyBatch`], [`Error::LabelOutOfRange`] as
///   [`margin_cross_entropy_with`](super::margin_cross_entropy_with).
///
/// # Panics
/// When `cos` is not rank 2.
#[track_caller]
pub fn elasticface_loss<'g, F: Element>(
    cos: Var<'g, F>,
    labels: &Labels,
    loss: &ElasticFace,
    margins: &[f64],
    reduction: Reduction,
    weights: Option<&[f64]>,
) -> Result<Var<'g, F>, Error> {
    let (batch, row_weight) =
        check_elasticface(cos, labels, loss, margins, weights, "elasticface")?;
    let f = F::from_f64;
    let targets = {
        let x = cos.value();
        let cols = x.shape()[1];
        (0..batch)
            .map(|r| {
                let c = x.data()[r * cols + labels.values()[r]].to_f64();
                let (logit, slope) = loss.target(c, margins[r]);
                Target {
                    logit: f(logit),
                    slope: f(slope),
                }
            })
            .collect()
    };
    let rows = Rows {
        name: "elasticface loss",
        labels: labels.values(),
        targets,
        others: Linear {
            scale: f(loss.scale),
            shift: F::ZERO,
        },
    };
    let row_weight = reduced_row_weights(batch, row_weight, reduction);
    Ok(softmax_rows(cos, rows, None, row_weight, reduction))
}

/// The checks of [`elasticface_loss`], shared with its composed twin; returns the batch size
/// and the rows' weights.
#[track_caller]
pub(crate) fn check_elasticface<F: Element>(
    cos: Var<'_, F>,
    labels: &Labels,
    loss: &ElasticFace,
    margins: &[f64],
    weights: Option<&[f64]>,
    op: &str,
) -> Result<(usize, Vec<f64>), Error> {
    let (batch, row_weight) = check_rows(cos, labels, || loss.validate(), weights, op)?;
    if margins.len() != batch {
        return Err(Error::DataLength {
            shape: vec![batch],
            expected: batch,
            found: margins.len(),
        });
    }
    if let Some(index) = margins.iter().position(|m| !m.is_finite()) {
        return Err(Error::NonFinite {
            what: "ElasticFace margin".into(),
            index,
            value: margins[index],
        });
    }
    Ok((batch, row_weight))
}
