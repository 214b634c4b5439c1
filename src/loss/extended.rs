//! The losses beyond [`MarginLoss`]'s formula, as one value a head trains with: each needs
//! something besides the cosines and the labels (the features' norms, state carried between
//! batches, sub-centres, a learned bias, a margin drawn per sample).

use super::{
    AdaFace, CurricularFace, ElasticFace, ElasticKind, LossKind, MagFace, MarginLoss, SphereFace2,
    check_subcenters,
};
use crate::Error;
use serde::{Deserialize, Serialize};

/// A loss that needs more than the cosines and the labels, and what its head keeps for it:
///
/// | loss | centres | also |
/// |---|---|---|
/// | AdaFace | `C` | the norms `‖x‖` (constants); running `μ`, `σ` of the norms (state) |
/// | MagFace | `C` | the norms `‖x‖`, with their gradient |
/// | CurricularFace | `C` | `t`, the running mean target cosine (state) |
/// | sub-center ArcFace | `C·K` | each class's cosine is the best of its `K` |
/// | SphereFace2 | `C` | a learned scalar bias; no softmax |
/// | ElasticFace | `C` | a margin per sample drawn from the step's generator |
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ExtendedLoss {
    /// AdaFace ([`adaface_loss`](super::adaface_loss)).
    AdaFace(AdaFace),
    /// MagFace ([`magface_loss`](super::magface_loss)).
    MagFace(MagFace),
    /// CurricularFace ([`curricularface_loss`](super::curricularface_loss)).
    CurricularFace(CurricularFace),
    /// Sub-center ArcFace: [`max_over_subcenters`](super::max_over_subcenters) of `K`
    /// sub-centres per class, then ArcFace.
    SubcenterArcFace {
        /// `K`, the sub-centres per class (≥ 1).
        subcenters: usize,
        /// ArcFace on the classes' cosines.
        loss: MarginLoss,
    },
    /// SphereFace2 ([`sphereface2_loss`](super::sphereface2_loss)).
    SphereFace2(SphereFace2),
    /// ElasticFace, Arc or Cos ([`elasticface_loss`](super::elasticface_loss)).
    ElasticFace(ElasticFace),
}

impl ExtendedLoss {
    /// Checks every setting against its range.
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] naming the first setting out of range.
    pub fn validate(&self) -> Result<(), Error> {
        match self {
            ExtendedLoss::AdaFace(l) => l.validate(),
            ExtendedLoss::MagFace(l) => l.validate(),
            ExtendedLoss::CurricularFace(l) => l.validate(),
            ExtendedLoss::SubcenterArcFace { subcenters, loss } => {
                check_subcenters(*subcenters)?;
                loss.validate()
            }
            ExtendedLoss::SphereFace2(l) => l.validate(),
            ExtendedLoss::ElasticFace(l) => l.validate(),
        }
    }

    /// `K`, the centres per class: the sub-centres of sub-center ArcFace, 1 for the others.
    pub fn subcenters(&self) -> usize {
        match self {
            ExtendedLoss::SubcenterArcFace { subcenters, .. } => *subcenters,
            _ => 1,
        }
    }

    /// The loss's kind (its name in reports).
    pub fn kind(&self) -> LossKind {
        match self {
            ExtendedLoss::AdaFace(_) => LossKind::AdaFace,
            ExtendedLoss::MagFace(_) => LossKind::MagFace,
            ExtendedLoss::CurricularFace(_) => LossKind::CurricularFace,
            ExtendedLoss::SubcenterArcFace { .. } => LossKind::SubcenterArcFace,
            ExtendedLoss::SphereFace2(_) => LossKind::SphereFace2,
            ExtendedLoss::ElasticFace(l) => match l.kind {
                ElasticKind::Arc => LossKind::ElasticFaceArc,
                ElasticKind::Cos => LossKind::ElasticFaceCos,
            },
        }
    }
}
