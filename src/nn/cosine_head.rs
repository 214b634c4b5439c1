//! The cosine classifier: class centres `W` normalised inside, a margin loss on top; and what
//! every cosine head shares ([`CentresHead`](super::CentresHead),
//! [`ExtendedHead`](super::ExtendedHead)): how its centres are made and how its cosines are
//! computed.

use super::{Fill, Forward, Head, LayerSpec, Module, NORM_EPS, ParamSource, l2_normalize};
use crate::loss::{MarginLoss, Reduction, margin_cross_entropy, margin_cross_entropy_with};
use crate::{Element, Error, Labels, ParamId, Params, Var};
use serde::{Deserialize, Serialize};

/// How a cosine head stores its centres `W`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum CentreLayout {
    /// `[D, N]`, one centre per column.
    Columns,
    /// `[N, D]`, one centre per row (PyTorch's classifier weight): a block of centres is one
    /// contiguous slice.
    Rows,
}

/// Adds the `count` centres `{prefix}.weight` over `dim` features, stored in `layout`, to
/// `params`, taken from `source`: Xavier-normal when fresh, `N(0, 2/(D + count))`.
pub(super) fn add_centres<F: Element>(
    params: &mut Params<F>,
    prefix: &str,
    (dim, count): (usize, usize),
    layout: CentreLayout,
    source: &mut dyn ParamSource<F>,
) -> ParamId {
    // in f64: sizes read from a file may be anything, their sum must not overflow
    let std = (2.0 / (dim as f64 + count as f64)).sqrt();
    let shape = match layout {
        CentreLayout::Columns => [dim, count],
        CentreLayout::Rows => [count, dim],
    };
    let name = format!("{prefix}.weight");
    let centres = source.tensor(&name, &shape, Fill::Normal { std });
    params.add(name, centres)
}

/// `cos θ_ij = x̂_i · ŵ_j` (`[B, N]`): the cosines of `features` (`[B, D]`) to the `centres`
/// stored in `layout`, both scaled to unit length (norms floored at [`NORM_EPS`]).
///
/// # Panics
/// When `features` is not `[B, D]`.
#[track_caller]
pub(super) fn cosines<'g, F: Element>(
    features: Var<'g, F>,
    centres: Var<'g, F>,
    layout: CentreLayout,
) -> Var<'g, F> {
    let (w, eps) = (centres, F::from_f64(NORM_EPS));
    match layout {
        CentreLayout::Columns => l2_normalize(features).matmul(w.normalize_cols(eps)),
        CentreLayout::Rows => l2_normalize(features).matmul_nt(w.normalize_rows(eps)),
    }
}

/// The settings of a [`CosineHead`] (kind `cosine_head`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CosineHeadConfig {
    /// The feature dimension `D`.
    pub dim: usize,
    /// The number of classes `C`.
    pub classes: usize,
    /// The loss the head trains with.
    pub loss: MarginLoss,
}

impl CosineHeadConfig {
    /// Checks the sizes and the loss.
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] for a zero size or an invalid loss.
    pub fn validate(&self) -> Result<(), Error> {
        Error::check("cosine head dim", self.dim as f64, self.dim > 0, "positive")?;
        Error::check(
            "classes",
            self.classes as f64,
            self.classes > 0,
            "at least 1",
        )?;
        self.loss.validate()
    }

    /// The stored form of the head.
    pub fn spec(&self) -> LayerSpec {
        LayerSpec::new(CosineHead::KIND, self)
    }
}

/// A cosine-classifier head: owns the class centres `W` (`[D, C]`, one centre per column,
/// `{prefix}.weight`) and a [`MarginLoss`]. Features and centres are both L2-normalised
/// inside, so its [`forward`](Module::forward) gives
/// `cos θ_ij = (x_i / ‖x_i‖) · (W_j / ‖W_j‖)` (`[B, C]`, no margin: prediction), and its
/// [`loss`](Head::loss) the margin loss of those cosines (training).
///
/// Which cosine head: this one for a loss of the softmax family's formula ([`MarginLoss`])
/// trained on the tape; [`CentresHead`](super::CentresHead), the same head with its centres
/// one class per row, for the classes a [`BlockedHead`](crate::loss::BlockedHead) trains block
/// by block; [`ExtendedHead`](super::ExtendedHead) for the losses that need more than the
/// cosines (sub-centres, a bias, running state).
#[derive(Clone, Debug, PartialEq)]
pub struct CosineHead {
    weight: ParamId,
    config: CosineHeadConfig,
}

impl CosineHead {
    /// The kind name a [`LayerRegistry`](super::LayerRegistry) knows it by.
    pub const KIND: &'static str = "cosine_head";

    /// Adds the centres `{prefix}.weight` (`[dim, classes]`, Xavier-normal when fresh,
    /// `N(0, 2/(D + C))`) to `params`, taken from `source` (a [`SeededRng`](crate::SeededRng)
    /// for a fresh head).
    pub fn new<F: Element>(
        params: &mut Params<F>,
        prefix: &str,
        config: CosineHeadConfig,
        source: &mut dyn ParamSource<F>,
    ) -> Self {
        let size = (config.dim, config.classes);
        CosineHead {
            weight: add_centres(params, prefix, size, CentreLayout::Columns, source),
            config,
        }
    }

    /// The id of the centres `W`.
    pub fn weight(&self) -> ParamId {
        self.weight
    }

    /// The settings it was built from.
    pub fn config(&self) -> &CosineHeadConfig {
        &self.config
    }

    /// The loss the head trains with.
    pub fn margin_loss(&self) -> &MarginLoss {
        &self.config.loss
    }

    /// The feature dimension `D`.
    pub fn dim(&self) -> usize {
        self.config.dim
    }

    /// The number of classes `C`.
    pub fn classes(&self) -> usize {
        self.config.classes
    }

    /// The margin loss of a batch with a reduction and optional sample weights.
    ///
    /// # Errors
    /// As [`margin_cross_entropy_with`].
    #[track_caller]
    pub fn loss_with<'g, F: Element>(
        &self,
        cx: &mut Forward<'g, '_, F>,
        features: Var<'g, F>,
        labels: &Labels,
        reduction: Reduction,
        weights: Option<&[f64]>,
    ) -> Result<Var<'g, F>, Error> {
        let cos = self.forward(cx, features);
        margin_cross_entropy_with(cos, labels, &self.config.loss, reduction, weights)
    }
}

impl<F: Element> Module<F> for CosineHead {
    /// `cos θ` (`[B, C]`): normalised features times column-normalised centres, no margin.
    ///
    /// # Panics
    /// When `features` is not `[B, D]`.
    #[track_caller]
    fn forward<'g>(&self, cx: &mut Forward<'g, '_, F>, features: Var<'g, F>) -> Var<'g, F> {
        cosines(features, cx.param(self.weight), CentreLayout::Columns)
    }

    fn spec(&self) -> LayerSpec {
        self.config.spec()
    }

    fn parameters(&self) -> Vec<ParamId> {
        vec![self.weight]
    }

    fn input_shape(&self) -> Option<Vec<usize>> {
        Some(vec![self.config.dim])
    }

    /// `[D] → [C]`.
    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>, String> {
        super::layers::rows_of(self.config.dim, input)?;
        Ok(vec![self.config.classes])
    }
}

impl<F: Element> Head<F> for CosineHead {
    /// The mean margin loss of the cosines ([`MarginLoss`] gives the formula), and the cosines.
    fn loss_and_scores<'g>(
        &self,
        cx: &mut Forward<'g, '_, F>,
        features: Var<'g, F>,
        labels: &Labels,
    ) -> Result<(Var<'g, F>, Var<'g, F>), Error> {
        let cos = self.forward(cx, features);
        Ok((margin_cross_entropy(cos, labels, &self.config.loss)?, cos))
    }
}
