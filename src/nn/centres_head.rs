//! The cosine classifier with its centres stored one class per row, as the blocked head
//! ([`BlockedHead`](crate::loss::BlockedHead)) trains them.

use super::cosine_head::{CentreLayout, add_centres, cosines};
use super::{CosineHeadConfig, Forward, Head, LayerSpec, Module, ParamSource};
use crate::loss::margin_cross_entropy;
use crate::{Element, Labels, ParamId, Params, Var};

/// A cosine-classifier head whose centres `W` are `[C, D]`, one class per row
/// (`{prefix}.weight`, as PyTorch stores a classifier's weight): the layout in which a block
/// of classes is one contiguous slice, so that [`BlockedHead`](crate::loss::BlockedHead)
/// streams it. Its [`forward`](Module::forward) gives `cos θ_ij = x̂_i · ŵ_j` (`[B, C]`, no
/// margin) and its [`loss`](Head::loss) the margin loss of those cosines, as [`CosineHead`](
/// super::CosineHead) does over centres stored one class per column.
///
/// Which cosine head: this one where the classes are many and trained block by block (the
/// large-class trainer's head, whose checkpoint it reads back); [`CosineHead`](super::CosineHead)
/// for a margin loss trained on the tape; [`ExtendedHead`](super::ExtendedHead) for the losses
/// that need more than the cosines.
#[derive(Clone, Debug, PartialEq)]
pub struct CentresHead {
    weight: ParamId,
    config: CosineHeadConfig,
}

impl CentresHead {
    /// The kind name a [`LayerRegistry`](super::LayerRegistry) knows it by.
    pub const KIND: &'static str = "centres_head";

    /// Adds the centres `{prefix}.weight` (`[classes, dim]`, Xavier-normal when fresh,
    /// `N(0, 2/(D + C))`) to `params`, taken from `source`.
    pub fn new<F: Element>(
        params: &mut Params<F>,
        prefix: &str,
        config: CosineHeadConfig,
        source: &mut dyn ParamSource<F>,
    ) -> Self {
        let size = (config.dim, config.classes);
        CentresHead {
            weight: add_centres(params, prefix, size, CentreLayout::Rows, source),
            config,
        }
    }

    /// The id of the centres `W` (`[C, D]`).
    pub fn weight(&self) -> ParamId {
        self.weight
    }

    /// The settings it was built from.
    pub fn config(&self) -> &CosineHeadConfig {
        &self.config
    }
}

impl<F: Element> Module<F> for CentresHead {
    /// `cos θ` (`[B, C]`): normalised features times the normalised centres' transpose.
    ///
    /// # Panics
    /// When `features` is not `[B, D]`.
    #[track_caller]
    fn forward<'g>(&self, cx: &mut Forward<'g, '_, F>, features: Var<'g, F>) -> Var<'g, F> {
        cosines(features, cx.param(self.weight), CentreLayout::Rows)
    }

    fn spec(&self) -> LayerSpec {
        LayerSpec::new(Self::KIND, &self.config)
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

impl<F: Element> Head<F> for CentresHead {
    /// The mean margin loss of the cosines, and the cosines.
    fn loss_and_scores<'g>(
        &self,
        cx: &mut Forward<'g, '_, F>,
        features: Var<'g, F>,
        labels: &Labels,
    ) -> Result<(Var<'g, F>, Var<'g, F>), crate::Error> {
        let cos = self.forward(cx, features);
        Ok((margin_cross_entropy(cos, labels, &self.config.loss)?, cos))
    }
}
