//! The margin-softmax family as one configuration: how each loss turns cosines into logits.
//!
//! See [`MarginLoss`] for the formula and the table of settings.

use super::{AdaFace, CurricularFace, ElasticFace, ExtendedLoss, MagFace, SphereFace2};
use crate::{Element, Error};
use serde::{Deserialize, Serialize};

/// What the angular margin does past the angle where `cos(m1·θ + m2)` stops decreasing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ArcFallback {
    /// Nothing: the target logit is `cos(m1·θ + m2)` at every angle (not monotonic in θ).
    None,
    /// InsightFace's default: past `θ_t = (π − m2)/m1` (where `c < th = cos θ_t`) the target
    /// uses `c − mm`, `mm = sin(π − m2)·m2`.
    Threshold,
    /// "Easy margin": the margin applies only where `c > 0`; elsewhere the target uses `c`.
    EasyMargin,
}

/// The losses of the family, by name: the one list from which the trainer's `--loss` flag,
/// `metrics.json` and reports take their names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LossKind {
    /// Softmax cross-entropy on raw logits (a linear head).
    #[serde(rename = "softmax")]
    Softmax,
    /// NormFace: `z = s·cos`.
    #[serde(rename = "normface")]
    NormFace,
    /// AM-Softmax (CosFace): `z_y = s(cos − m)`.
    #[serde(rename = "am")]
    Am,
    /// Enhanced AM-Softmax, both changes: `z_y = s(cos − m)/M`, `z_j = s(cos + m_nt)`.
    #[serde(rename = "enhanced")]
    Enhanced,
    /// Enhanced ablation: only the additional non-target margin (`M = 1`).
    #[serde(rename = "enhanced-margin-only")]
    EnhancedMarginOnly,
    /// Enhanced ablation: only the exponential scaling of the target (`m_nt = 0`).
    #[serde(rename = "enhanced-scaling-only")]
    EnhancedScalingOnly,
    /// ArcFace: `z_y = s·cos(θ + m)`, the angular margin.
    #[serde(rename = "arcface")]
    ArcFace,
    /// The combined margin: `z_y = s(cos(m1·θ + m2) − m3)`.
    #[serde(rename = "combined")]
    Combined,
    /// AdaFace: a margin set by the feature norm against its running statistics.
    #[serde(rename = "adaface")]
    AdaFace,
    /// MagFace: an angular margin growing with the feature norm, and a norm regulariser.
    #[serde(rename = "magface")]
    MagFace,
    /// CurricularFace: ArcFace whose hard negatives weigh more as training advances.
    #[serde(rename = "curricularface")]
    CurricularFace,
    /// Sub-center ArcFace: `K` centres per class, the class's cosine the best of them.
    #[serde(rename = "subcenter-arcface")]
    SubcenterArcFace,
    /// SphereFace2: one binary problem per class with a learned bias, no softmax.
    #[serde(rename = "sphereface2")]
    SphereFace2,
    /// ElasticFace-Arc: ArcFace with a margin per sample drawn from `N(m, σ²)`.
    #[serde(rename = "elasticface-arc")]
    ElasticFaceArc,
    /// ElasticFace-Cos: CosFace with a margin per sample drawn from `N(m, σ²)`.
    #[serde(rename = "elasticface-cos")]
    ElasticFaceCos,
}

impl LossKind {
    /// Every kind, in the order reports list them.
    pub const ALL: [LossKind; 15] = [
        LossKind::Softmax,
        LossKind::NormFace,
        LossKind::Am,
        LossKind::Enhanced,
        LossKind::EnhancedMarginOnly,
        LossKind::EnhancedScalingOnly,
        LossKind::ArcFace,
        LossKind::Combined,
        LossKind::AdaFace,
        LossKind::MagFace,
        LossKind::CurricularFace,
        LossKind::SubcenterArcFace,
        LossKind::SphereFace2,
        LossKind::ElasticFaceArc,
        LossKind::ElasticFaceCos,
    ];

    /// The kind's name (`--loss am`, `"kind": "am"` in metrics.json).
    pub fn name(self) -> &'static str {
        match self {
            LossKind::Softmax => "softmax",
            LossKind::NormFace => "normface",
            LossKind::Am => "am",
            LossKind::Enhanced => "enhanced",
            LossKind::EnhancedMarginOnly => "enhanced-margin-only",
            LossKind::EnhancedScalingOnly => "enhanced-scaling-only",
            LossKind::ArcFace => "arcface",
            LossKind::Combined => "combined",
            LossKind::AdaFace => "adaface",
            LossKind::MagFace => "magface",
            LossKind::CurricularFace => "curricularface",
            LossKind::SubcenterArcFace => "subcenter-arcface",
            LossKind::SphereFace2 => "sphereface2",
            LossKind::ElasticFaceArc => "elasticface-arc",
            LossKind::ElasticFaceCos => "elasticface-cos",
        }
    }

    /// `(s, m)` as each loss's paper and official code set them, for the losses beyond
    /// [`MarginLoss`]'s formula; the crate's `(30, 0.35)` for the softmax family, whose
    /// comparisons share them. (MagFace's margin comes from its norm range instead: its `m` is
    /// unused.)
    pub fn default_scale_and_margin(self) -> (f64, f64) {
        let arc = ElasticFace::arc();
        match self {
            LossKind::AdaFace => {
                let l = AdaFace::default();
                (l.scale, l.margin)
            }
            LossKind::MagFace => (MagFace::default().scale, 0.35),
            LossKind::CurricularFace | LossKind::SubcenterArcFace => {
                let l = CurricularFace::default();
                (l.scale, l.margin)
            }
            LossKind::SphereFace2 => {
                let l = SphereFace2::default();
                (l.scale, l.margin)
            }
            LossKind::ElasticFaceArc => (arc.scale, arc.margin),
            LossKind::ElasticFaceCos => {
                let l = ElasticFace::cos();
                (l.scale, l.margin)
            }
            _ => (30.0, 0.35),
        }
    }

    /// The kind called `name`.
    pub fn from_name(name: &str) -> Option<LossKind> {
        LossKind::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// A loss by kind with every parameter a trainer takes from its flags; [`LossSettings::margin_loss`]
/// turns it into its formula.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LossSettings {
    /// The family.
    pub kind: LossKind,
    /// s.
    pub scale: f64,
    /// m: the cosine margin (AM, Enhanced) or the angular margin (ArcFace).
    pub margin: f64,
    /// Enhanced's non-target margin m_nt (default: m).
    pub nontarget_margin: Option<f64>,
    /// Enhanced's target divisor M (default: e^m).
    pub target_divisor: Option<f64>,
    /// The combined margin's (m1, m2, m3): angular multiplier, angular margin, cosine margin.
    pub combined: (f64, f64, f64),
    /// ArcFace's (and the combined margin's, and sub-center ArcFace's) fallback.
    pub fallback: ArcFallback,
    /// The settings only the losses beyond [`MarginLoss`]'s formula read.
    #[serde(default)]
    pub extra: ExtraSettings,
}

/// The settings of the losses beyond [`MarginLoss`]'s formula, besides `s` and `m`;
/// [`Default`] gives the papers' and the official code's values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExtraSettings {
    /// AdaFace's `h` (0.333).
    pub adaface_h: f64,
    /// The weight of each batch in the running state: AdaFace's norm statistics and
    /// CurricularFace's `t` (0.01 in both).
    pub state_momentum: f64,
    /// MagFace's norm range `(l_a, u_a)` (10, 110).
    pub magface_norms: (f64, f64),
    /// MagFace's margins `(l_m, u_m)` at the ends of the norm range (0.45, 0.8).
    pub magface_margins: (f64, f64),
    /// MagFace's `λ_g`, the weight of its norm regulariser (35).
    pub magface_lambda_g: f64,
    /// Sub-center ArcFace's `K`, the sub-centres per class (3).
    pub subcenters: usize,
    /// SphereFace2's `λ`, the weight of the positive term (0.7).
    pub sphereface2_lambda: f64,
    /// SphereFace2's exponent `t` of its similarity map (3).
    pub sphereface2_t: f64,
    /// ElasticFace's `σ`, the standard deviation of the margins (0.05).
    pub margin_std: f64,
}

impl Default for ExtraSettings {
    fn default() -> Self {
        let (magface, sphereface2) = (MagFace::default(), SphereFace2::default());
        ExtraSettings {
            adaface_h: AdaFace::default().h,
            state_momentum: AdaFace::default().momentum,
            magface_norms: (magface.lower_norm, magface.upper_norm),
            magface_margins: (magface.lower_margin, magface.upper_margin),
            magface_lambda_g: magface.lambda_g,
            subcenters: 3,
            sphereface2_lambda: sphereface2.lambda,
            sphereface2_t: sphereface2.t,
            margin_std: ElasticFace::arc().std,
        }
    }
}

/// The loss a head trains with: one of [`MarginLoss`]'s formula (on the cosines alone), or one
/// that needs more ([`ExtendedLoss`]).
#[derive(Clone, Debug, PartialEq)]
pub enum HeadLoss {
    /// The softmax family.
    Margin(MarginLoss),
    /// The losses beyond it.
    Extended(ExtendedLoss),
}

impl LossSettings {
    /// The loss of the softmax family these settings describe ([`LossSettings::head_loss`]).
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] for a parameter out of its range, or a loss beyond the family's
    /// formula.
    pub fn margin_loss(&self) -> Result<MarginLoss, Error> {
        match self.head_loss()? {
            HeadLoss::Margin(loss) => Ok(loss),
            HeadLoss::Extended(_) => Err(Error::InvalidSetting {
                name: "loss",
                value: f64::NAN,
                requirement: "one of the softmax family (this one needs more than the cosines)",
            }),
        }
    }

    /// The loss these settings describe, whichever its family: the one place a [`LossKind`]
    /// becomes its formula.
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] for a parameter out of its range.
    pub fn head_loss(&self) -> Result<HeadLoss, Error> {
        let (s, m) = (self.scale, self.margin);
        let x = &self.extra;
        let extended = |loss: ExtendedLoss| {
            loss.validate()?;
            Ok(HeadLoss::Extended(loss))
        };
        let margin = |loss: Result<MarginLoss, Error>| loss.map(HeadLoss::Margin);
        match self.kind {
            LossKind::Softmax => margin(Ok(MarginLoss::softmax())),
            LossKind::NormFace => margin(MarginLoss::normface(s)),
            LossKind::Am => margin(MarginLoss::am(s, m)),
            LossKind::Enhanced => margin(MarginLoss::enhanced_with(
                s,
                m,
                self.nontarget_margin.unwrap_or(m),
                self.target_divisor.unwrap_or(m.exp()),
            )),
            LossKind::EnhancedMarginOnly => margin(MarginLoss::enhanced_margin_only(s, m)),
            LossKind::EnhancedScalingOnly => margin(MarginLoss::enhanced_scaling_only(s, m)),
            LossKind::ArcFace => margin(MarginLoss::arcface(s, m, self.fallback)),
            LossKind::Combined => {
                let (m1, m2, m3) = self.combined;
                margin(MarginLoss::combined(s, m1, m2, m3, self.fallback))
            }
            LossKind::AdaFace => extended(ExtendedLoss::AdaFace(AdaFace {
                margin: m,
                h: x.adaface_h,
                scale: s,
                momentum: x.state_momentum,
            })),
            LossKind::MagFace => extended(ExtendedLoss::MagFace(MagFace {
                scale: s,
                lower_norm: x.magface_norms.0,
                upper_norm: x.magface_norms.1,
                lower_margin: x.magface_margins.0,
                upper_margin: x.magface_margins.1,
                lambda_g: x.magface_lambda_g,
                ..MagFace::default()
            })),
            LossKind::CurricularFace => extended(ExtendedLoss::CurricularFace(CurricularFace {
                margin: m,
                scale: s,
                momentum: x.state_momentum,
            })),
            LossKind::SubcenterArcFace => extended(ExtendedLoss::SubcenterArcFace {
                subcenters: x.subcenters,
                loss: MarginLoss::arcface(s, m, self.fallback)?,
            }),
            LossKind::SphereFace2 => extended(ExtendedLoss::SphereFace2(SphereFace2 {
                lambda: x.sphereface2_lambda,
                scale: s,
                margin: m,
                t: x.sphereface2_t,
            })),
            LossKind::ElasticFaceArc | LossKind::ElasticFaceCos => {
                let paper = if self.kind == LossKind::ElasticFaceArc {
                    ElasticFace::arc()
                } else {
                    ElasticFace::cos()
                };
                extended(ExtendedLoss::ElasticFace(ElasticFace {
                    scale: s,
                    margin: m,
                    std: x.margin_std,
                    ..paper
                }))
            }
        }
    }
}

/// A margin-softmax loss: the settings of one formula.
///
/// For a sample with label `y` and cosines `c_j` to the class centres, every loss here is
/// softmax cross-entropy over the logits
///
/// ```text
/// z_y = s · (ψ(c_y) − m3) / M                      the target
/// z_j = s · (c_j + m_nt)                 (j ≠ y)   every other class
/// ψ(c) = cos(m1·θ + m2),  θ = arccos c             (ψ(c) = c when m1 = 1, m2 = 0)
/// ```
///
/// | loss | s | m1 | m2 | m3 | M | m_nt |
/// |---|---|---|---|---|---|---|
/// | softmax on raw logits | 1 | 1 | 0 | 0 | 1 | 0 |
/// | NormFace | s | 1 | 0 | 0 | 1 | 0 |
/// | AM-Softmax (CosFace) | s | 1 | 0 | m | 1 | 0 |
/// | Enhanced AM-Softmax | s | 1 | 0 | m | e^m | m |
/// | ArcFace | s | 1 | m | 0 | 1 | 0 |
/// | combined margin | s | m1 | m2 | m3 | 1 | 0 |
///
/// The angular part (m1 ≠ 1 or m2 ≠ 0) clamps `c` to `[−1 + 1e-7, 1 − 1e-7]` before `arccos`,
/// so that `dψ/dc = m1·sin(m1θ + m2)/sin θ` stays finite, and can fall back where
/// `cos(m1θ + m2)` stops decreasing in θ ([`ArcFallback`]). Derivations: `docs/derivations.md`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MarginLoss {
    /// Which loss of the family these settings describe (its name in reports).
    pub kind: LossKind,
    /// `s`, the logit scale.
    pub scale: f64,
    /// `m1`, the multiplicative angular margin (1 = off).
    pub angular_multiplier: f64,
    /// `m2`, the additive angular margin (ArcFace's m; 0 = off).
    pub angular_margin: f64,
    /// `m3`, the additive cosine margin (CosFace's m; 0 = off).
    pub cosine_margin: f64,
    /// `M`, the divisor of the target logit (Enhanced AM-Softmax's e^m; 1 = off).
    pub target_divisor: f64,
    /// `m_nt`, the margin added to every non-target cosine (Enhanced's additional margin;
    /// 0 = off).
    pub nontarget_margin: f64,
    /// What the angular margin does where it stops being monotonic.
    pub fallback: ArcFallback,
}

impl MarginLoss {
    fn plain(kind: LossKind, scale: f64) -> Self {
        MarginLoss {
            kind,
            scale,
            angular_multiplier: 1.0,
            angular_margin: 0.0,
            cosine_margin: 0.0,
            target_divisor: 1.0,
            nontarget_margin: 0.0,
            fallback: ArcFallback::None,
        }
    }

    /// Softmax cross-entropy on the input taken as raw logits (scale 1, no margin).
    pub fn softmax() -> Self {
        Self::plain(LossKind::Softmax, 1.0)
    }

    /// NormFace: `z = s·cos` for every class.
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] unless `s` is positive and finite.
    pub fn normface(s: f64) -> Result<Self, Error> {
        Self::plain(LossKind::NormFace, s).validated()
    }

    /// AM-Softmax (CosFace): `z_y = s(cos − m)`, `z_j = s·cos`.
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] for `s ≤ 0` or `m < 0` (or either not finite).
    pub fn am(s: f64, m: f64) -> Result<Self, Error> {
        MarginLoss {
            cosine_margin: m,
            ..Self::plain(LossKind::Am, s)
        }
        .validated()
    }

    /// Enhanced AM-Softmax with its defaults: `z_y = s(cos − m)/e^m`, `z_j = s(cos + m)`.
    ///
    /// # Errors
    /// As [`MarginLoss::enhanced_with`].
    pub fn enhanced(s: f64, m: f64) -> Result<Self, Error> {
        Self::enhanced_with(s, m, m, m.exp())
    }

    /// Enhanced AM-Softmax with each change set on its own: `z_y = s(cos − m)/big_m`,
    /// `z_j = s(cos + m_nt)`. `m_nt = 0` turns off the additional margin, `big_m = 1` the
    /// exponential scaling.
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] for `s ≤ 0`, `m < 0`, `m_nt < 0` or `big_m ≤ 0`.
    pub fn enhanced_with(s: f64, m: f64, m_nt: f64, big_m: f64) -> Result<Self, Error> {
        MarginLoss {
            cosine_margin: m,
            target_divisor: big_m,
            nontarget_margin: m_nt,
            ..Self::plain(LossKind::Enhanced, s)
        }
        .validated()
    }

    /// The Enhanced ablation's first change alone: `z_y = s(cos − m)`, `z_j = s(cos + m)`.
    /// (By shift invariance this is AM-Softmax with margin `2m`: `docs/derivations.md`.)
    ///
    /// # Errors
    /// As [`MarginLoss::am`].
    pub fn enhanced_margin_only(s: f64, m: f64) -> Result<Self, Error> {
        Ok(MarginLoss {
            kind: LossKind::EnhancedMarginOnly,
            ..Self::enhanced_with(s, m, m, 1.0)?
        })
    }

    /// The Enhanced ablation's second change alone: `z_y = s(cos − m)/e^m`, `z_j = s·cos`.
    ///
    /// # Errors
    /// As [`MarginLoss::am`].
    pub fn enhanced_scaling_only(s: f64, m: f64) -> Result<Self, Error> {
        Ok(MarginLoss {
            kind: LossKind::EnhancedScalingOnly,
            ..Self::enhanced_with(s, m, 0.0, m.exp())?
        })
    }

    /// ArcFace: `z_y = s·cos(θ + m)`, `z_j = s·cos`, with the given fallback.
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] for `s ≤ 0` or `m` outside `[0, π)`.
    pub fn arcface(s: f64, m: f64, fallback: ArcFallback) -> Result<Self, Error> {
        MarginLoss {
            angular_margin: m,
            fallback,
            ..Self::plain(LossKind::ArcFace, s)
        }
        .validated()
    }

    /// The combined margin: `z_y = s(cos(m1·θ + m2) − m3)`, `z_j = s·cos`.
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] for `s ≤ 0`, `m1 < 1`, `m2` outside `[0, π)` or `m3 < 0`.
    pub fn combined(
        s: f64,
        m1: f64,
        m2: f64,
        m3: f64,
        fallback: ArcFallback,
    ) -> Result<Self, Error> {
        MarginLoss {
            angular_multiplier: m1,
            angular_margin: m2,
            cosine_margin: m3,
            fallback,
            ..Self::plain(LossKind::Combined, s)
        }
        .validated()
    }

    /// The loss's name, as reports show it ([`LossKind::name`]).
    pub fn name(&self) -> &'static str {
        self.kind.name()
    }

    /// Whether the target logit goes through `arccos` (m1 ≠ 1 or m2 ≠ 0).
    pub fn is_angular(&self) -> bool {
        self.angular_multiplier != 1.0 || self.angular_margin != 0.0
    }

    /// Checks every setting against the range its formula allows.
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] naming the first setting out of range.
    pub fn validate(&self) -> Result<(), Error> {
        Error::check("scale", self.scale, self.scale > 0.0, "positive and finite")?;
        Error::check(
            "angular multiplier m1",
            self.angular_multiplier,
            self.angular_multiplier >= 1.0,
            "at least 1",
        )?;
        Error::check(
            "angular margin m2",
            self.angular_margin,
            (0.0..std::f64::consts::PI).contains(&self.angular_margin),
            "in [0, π)",
        )?;
        Error::check(
            "cosine margin m",
            self.cosine_margin,
            self.cosine_margin >= 0.0,
            "non-negative",
        )?;
        Error::check(
            "target divisor M",
            self.target_divisor,
            self.target_divisor > 0.0,
            "positive",
        )?;
        Error::check(
            "non-target margin m_nt",
            self.nontarget_margin,
            self.nontarget_margin >= 0.0,
            "non-negative",
        )
    }

    fn validated(self) -> Result<Self, Error> {
        self.validate()?;
        Ok(self)
    }

    /// Where the angular fallback applies and what it does there: `Some((th, mm))` means the
    /// target uses `c − mm` wherever the clamped cosine `c ≤ th`.
    pub(crate) fn fallback_rule(&self) -> Option<(f64, f64)> {
        fallback_rule(self.angular_multiplier, self.angular_margin, self.fallback)
    }

    /// The per-element maps of the fused kernel, in element type `F`.
    pub(crate) fn logit_map<F: Element>(&self) -> LogitMap<F> {
        let f = F::from_f64;
        LogitMap {
            scale: f(self.scale),
            target_scale: f(self.scale / self.target_divisor),
            cosine_margin: f(self.cosine_margin),
            nontarget_shift: f(self.scale * self.nontarget_margin),
            angular: self.is_angular().then(|| Angular {
                m1: f(self.angular_multiplier),
                m2: f(self.angular_margin),
                fallback: self.fallback_rule().map(|(th, mm)| (f(th), f(mm))),
            }),
        }
    }
}

/// Where `fallback` applies to `cos(m1·θ + m2)` and what it does there: `Some((th, mm))` means
/// the target uses `c − mm` wherever the clamped cosine `c ≤ th`.
fn fallback_rule(m1: f64, m2: f64, fallback: ArcFallback) -> Option<(f64, f64)> {
    let pi = std::f64::consts::PI;
    match fallback {
        ArcFallback::None => None,
        ArcFallback::Threshold => Some((((pi - m2) / m1).cos(), (pi - m2).sin() * m2)),
        ArcFallback::EasyMargin => Some((0.0, 0.0)),
    }
}

/// How far inside ±1 cosines are clamped before `arccos`.
pub(crate) const CLAMP: f64 = 1e-7;

/// The angular part of a target logit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Angular<F> {
    pub m1: F,
    pub m2: F,
    /// `(th, mm)`: the target is `c − mm` where `c ≤ th` (see [`MarginLoss::fallback_rule`]).
    pub fallback: Option<(F, F)>,
}

/// A [`MarginLoss`] in element type `F`, ready for the kernels.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct LogitMap<F> {
    /// `s`: the slope of every non-target logit.
    pub scale: F,
    /// `s / M`.
    pub target_scale: F,
    /// `m3`.
    pub cosine_margin: F,
    /// `s · m_nt`.
    pub nontarget_shift: F,
    pub angular: Option<Angular<F>>,
}

impl<F: Element> LogitMap<F> {
    /// `(z_y, dz_y/dc)` for the target class at cosine `c`.
    #[inline]
    pub fn target(&self, c: F) -> (F, F) {
        let (psi, slope) = match self.angular {
            None => (c, F::ONE),
            Some(a) => a.psi(c),
        };
        (
            self.target_scale * (psi - self.cosine_margin),
            self.target_scale * slope,
        )
    }
}

impl<F: Element> Angular<F> {
    /// ArcFace's angular part, `cos(θ + m)`, for a margin `m` that may change from sample to
    /// sample (MagFace, ElasticFace), with `fallback`.
    pub fn additive(m: f64, fallback: ArcFallback) -> Self {
        let f = F::from_f64;
        Angular {
            m1: F::ONE,
            m2: f(m),
            fallback: fallback_rule(1.0, m, fallback).map(|(th, mm)| (f(th), f(mm))),
        }
    }

    /// `(ψ(c), dψ/dc)`, with `c` clamped inside ±1 (slope 0 where the clamp is active).
    #[inline]
    pub fn psi(&self, c: F) -> (F, F) {
        let (psi, slope, _) = self.psi_with_margin_slope(c);
        (psi, slope)
    }

    /// `(ψ(c), ∂ψ/∂c, ∂ψ/∂m2)`: [`Angular::psi`] and its slope in the additive margin, which
    /// is `−sin(m1·θ + m2)` on the arc, `−d(mm)/dm2 = −(sin m2 + m2·cos m2)` past the
    /// threshold (`mm = m2·sin m2`), and 0 under the easy margin's fallback.
    #[inline]
    pub fn psi_with_margin_slope(&self, c: F) -> (F, F, F) {
        let limit = F::ONE - F::from_f64(CLAMP);
        let clamped = c.max(-limit).min(limit);
        let inside = if clamped == c { F::ONE } else { F::ZERO };
        if let Some((threshold, shift)) = self.fallback
            && clamped <= threshold
        {
            let margin_slope = if shift == F::ZERO {
                F::ZERO
            } else {
                -(self.m2.sin() + self.m2 * self.m2.cos())
            };
            return (clamped - shift, inside, margin_slope);
        }
        let theta = clamped.acos();
        let angle = self.m1 * theta + self.m2;
        let sin_theta = (F::ONE - clamped * clamped).sqrt();
        let sin_angle = angle.sin();
        (
            angle.cos(),
            inside * self.m1 * sin_angle / sin_theta,
            -sin_angle,
        )
    }
}
