//! MagFace (Meng et al. 2021): an angular margin that grows with the feature norm, and a
//! regulariser that shapes the norm, as one fused op with a closed-form backward for the
//! cosines *and* the norms.
//!
//! ```text
//! â     = clamp(a, l_a, u_a)                          a = ‖x‖, the feature's norm
//! m(a)  = l_m + (u_m − l_m)(â − l_a)/(u_a − l_a)
//! z_y   = s·ψ(c_y),  ψ(c) = cos(θ + m(a)), θ = arccos c    (the easy margin: ψ(c) = c where c ≤ 0)
//! z_j   = s·c_j                                       (j ≠ y)
//! L_i   = −log softmax(z)_y + λ_g·g(â),   g(a) = a/u_a² + 1/a
//! ```
//!
//! The gradient flows through `a` in both places: the margin (`∂z_y/∂a = s·∂ψ/∂m·m′(a)`) and
//! the regulariser (`λ_g·g′(a)`, `g′(a) = 1/u_a² − 1/a²`); both are 0 outside `[l_a, u_a]`,
//! where the norm is clamped. Derivations: `docs/derivations.md`, section 11.

use super::fused::{Linear, NormTerms, Rows, Target, softmax_rows};
use super::margin::Angular;
use super::{ArcFallback, Reduction, check_rows, reduced_row_weights, row_norms};
use crate::{Element, Error, Labels, Var};
use serde::{Deserialize, Serialize};

/// MagFace's settings; [`Default`] gives the paper's and the official code's
/// `l_a = 10, u_a = 110, l_m = 0.45, u_m = 0.8, λ_g = 35, s = 64` with the official layer's
/// easy margin.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MagFace {
    /// `s`, the logit scale (> 0).
    pub scale: f64,
    /// `l_a`, the smallest norm the margin and the regulariser see (> 0).
    pub lower_norm: f64,
    /// `u_a`, the largest (> `l_a`).
    pub upper_norm: f64,
    /// `l_m`, the margin at `l_a` (≥ 0).
    pub lower_margin: f64,
    /// `u_m`, the margin at `u_a` (≥ `l_m`, below π).
    pub upper_margin: f64,
    /// `λ_g`, the weight of the regulariser `g` (≥ 0).
    pub lambda_g: f64,
    /// What the angular margin does where `cos(θ + m)` stops decreasing.
    pub fallback: ArcFallback,
}

impl Default for MagFace {
    fn default() -> Self {
        MagFace {
            scale: 64.0,
            lower_norm: 10.0,
            upper_norm: 110.0,
            lower_margin: 0.45,
            upper_margin: 0.8,
            lambda_g: 35.0,
            fallback: ArcFallback::EasyMargin,
        }
    }
}

impl MagFace {
    /// Checks every setting against its range.
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] naming the first setting out of range: `s ≤ 0`, `l_a ≤ 0`,
    /// `u_a ≤ l_a`, `l_m < 0`, `u_m < l_m` or `u_m ≥ π`, `λ_g < 0`, or any not finite.
    pub fn validate(&self) -> Result<(), Error> {
        Error::check("MagFace scale s", self.scale, self.scale > 0.0, "positive")?;
        let (la, ua) = (self.lower_norm, self.upper_norm);
        Error::check("MagFace lower norm l_a", la, la > 0.0, "positive")?;
        Error::check("MagFace upper norm u_a", ua, ua > la, "above l_a")?;
        let (lm, um) = (self.lower_margin, self.upper_margin);
        Error::check("MagFace lower margin l_m", lm, lm >= 0.0, "non-negative")?;
        Error::check(
            "MagFace upper margin u_m",
            um,
            um >= lm && um < std::f64::consts::PI,
            "at least l_m and below π",
        )?;
        Error::check(
            "MagFace λ_g",
            self.lambda_g,
            self.lambda_g >= 0.0,
            "non-negative",
        )
    }

    /// `(m(a), m′(a))`: the margin for a norm `a`, and its slope (0 where `a` is clamped).
    pub fn margin(&self, a: f64) -> (f64, f64) {
        let (la, ua) = (self.lower_norm, self.upper_norm);
        let slope = (self.upper_margin - self.lower_margin) / (ua - la);
        let clamped = a.clamp(la, ua);
        let inside = if clamped == a { 1.0 } else { 0.0 };
        (self.lower_margin + slope * (clamped - la), inside * slope)
    }

    /// `(z_y, ∂z_y/∂c, ∂z_y/∂a)` for a target cosine `c` and a feature norm `a`:
    /// `z_y = s·ψ(c)` with the margin `m(a)`, and its slope in the norm `s·∂ψ/∂m·m′(a)`.
    pub(crate) fn target(&self, c: f64, a: f64) -> (f64, f64, f64) {
        let s = self.scale;
        let (m, dm_da) = self.margin(a);
        let arc = Angular::<f64>::additive(m, self.fallback);
        let (psi, dpsi_dc, dpsi_dm) = arc.psi_with_margin_slope(c);
        (s * psi, s * dpsi_dc, s * dpsi_dm * dm_da)
    }

    /// `(g(â), g′(â))`: the regulariser at a norm `a` clamped to `[l_a, u_a]`, and its slope in
    /// `a` (0 where `a` is clamped).
    pub fn regulariser(&self, a: f64) -> (f64, f64) {
        let (la, ua) = (self.lower_norm, self.upper_norm);
        let clamped = a.clamp(la, ua);
        let inside = if clamped == a { 1.0 } else { 0.0 };
        (
            clamped / (ua * ua) + 1.0 / clamped,
            inside * (1.0 / (ua * ua) - 1.0 / (clamped * clamped)),
        )
    }
}

/// MagFace's loss of the cosines `cos` (`[B, C]`) and the features' norms `norms` (`B`
/// elements, any shape; the loss's gradient reaches them), weighted by `weights` (default 1)
/// and reduced: see the module's formula. The regulariser is part of each sample's loss, so
/// that the mean is the official `CE + λ_g·mean g(a)`.
///
/// # Errors
/// - [`Error::InvalidSetting`] for a setting of `loss` out of range, or a weight negative or
///   not finite;
/// - [`Error::NonFinite`] for a norm that is NaN or infinite;
/// - [`Error::EmptyBatch`], [`Error::DataLength`], [`Error::LabelOutOfRange`] as
///   [`margin_cross_entropy_with`](super::margin_cross_entropy_with).
///
/// # Panics
/// When `cos` is not rank 2 or `norms` has not one element per row.
#[track_caller]
pub fn magface_loss<'g, F: Element>(
    cos: Var<'g, F>,
    norms: Var<'g, F>,
    labels: &Labels,
    loss: &MagFace,
    reduction: Reduction,
    weights: Option<&[f64]>,
) -> Result<Var<'g, F>, Error> {
    let (batch, row_weight, a) = check_magface(cos, norms, labels, loss, weights, "magface")?;
    let f = F::from_f64;
    let s = loss.scale;
    let mut targets = Vec::with_capacity(batch);
    let mut norm = NormTerms {
        norms,
        target_slope: Vec::with_capacity(batch),
        extra: Vec::with_capacity(batch),
        extra_slope: Vec::with_capacity(batch),
    };
    {
        let x = cos.value();
        let cols = x.shape()[1];
        for (r, &a) in a.iter().enumerate() {
            let c = x.data()[r * cols + labels.values()[r]].to_f64();
            let (logit, slope, dz_da) = loss.target(c, a);
            targets.push(Target {
                logit: f(logit),
                slope: f(slope),
            });
            let (g, dg_da) = loss.regulariser(a);
            norm.target_slope.push(f(dz_da));
            norm.extra.push(f(loss.lambda_g * g));
            norm.extra_slope.push(f(loss.lambda_g * dg_da));
        }
    }
    let rows = Rows {
        name: "magface loss",
        labels: labels.values(),
        targets,
        others: Linear {
            scale: f(s),
            shift: F::ZERO,
        },
    };
    let row_weight = reduced_row_weights(batch, row_weight, reduction);
    Ok(softmax_rows(cos, rows, Some(norm), row_weight, reduction))
}

/// The checks of [`magface_loss`], shared with its composed twin; returns the batch size, the
/// rows' weights and the norms' values.
#[track_caller]
pub(crate) fn check_magface<F: Element>(
    cos: Var<'_, F>,
    norms: Var<'_, F>,
    labels: &Labels,
    loss: &MagFace,
    weights: Option<&[f64]>,
    op: &str,
) -> Result<(usize, Vec<f64>, Vec<f64>), Error> {
    let (batch, row_weight) = check_rows(cos, labels, || loss.validate(), weights, op)?;
    let values = row_norms(cos, norms, op)?;
    Ok((batch, row_weight, values))
}
