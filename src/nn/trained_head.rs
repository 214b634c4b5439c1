//! A trained head on its own, for inference on embeddings.

use super::{Fill, HEAD_PREFIX, Head, HeadConfig, Model, ParamSource};
use crate::{Element, ParamId, Params, Tensor};
use std::sync::Arc;

/// The head of a trained model, on its own: class centres (or a linear classifier), its loss
/// configuration, and a copy of only its tensors. Predicts classes from embeddings; pairs of
/// embeddings are scored by [`pair_scores`](crate::metrics::pair_scores).
#[derive(Clone, Debug)]
pub struct TrainedHead<F: Element = f32> {
    config: HeadConfig,
    head: Arc<dyn Head<F>>,
    params: Params<F>,
}

/// Hands copies of a model's own tensors, by name, to the head's builder.
struct CopyOf<'a, F: Element>(&'a Params<F>);

/// Hands a model's own tensors, by name, to the head's builder, moved out of the store.
struct MovedFrom<'a, F: Element>(&'a mut Params<F>);

/// The id of the tensor `name` of `params`, checked to have `shape`.
#[track_caller]
fn model_tensor<F: Element>(params: &Params<F>, name: &str, shape: &[usize]) -> ParamId {
    let id = params
        .find(name)
        .unwrap_or_else(|| panic!("TrainedHead: the parameters lack {name:?}: not this model's"));
    assert_eq!(
        params.get(id).shape(),
        shape,
        "TrainedHead: {name:?} does not have the shape the model gives it"
    );
    id
}

impl<F: Element> ParamSource<F> for CopyOf<'_, F> {
    fn tensor(&mut self, name: &str, shape: &[usize], _fill: Fill) -> Tensor<F> {
        self.0.get(model_tensor(self.0, name, shape)).clone()
    }
}

impl<F: Element> ParamSource<F> for MovedFrom<'_, F> {
    fn tensor(&mut self, name: &str, shape: &[usize], _fill: Fill) -> Tensor<F> {
        let id = model_tensor(self.0, name, shape);
        std::mem::replace(self.0.get_mut(id), Tensor::zeros(&[0]))
    }
}

impl<F: Element> TrainedHead<F> {
    /// The head of `model`, with a copy of its tensors from `params`: the head is rebuilt
    /// from its configuration through the registry the model was built with, taking each
    /// tensor by name.
    ///
    /// # Panics
    /// When `params` are not `model`'s (a head tensor missing or of another shape).
    #[track_caller]
    pub fn new(model: &Model<F>, params: &Params<F>) -> Self {
        Self::build(model, &mut CopyOf(params))
    }

    /// The head of `model`, its tensors moved out of `params` (which are dropped): no copy of
    /// the centres is made, however many classes there are.
    ///
    /// # Panics
    /// As [`TrainedHead::new`].
    #[track_caller]
    pub fn take(model: &Model<F>, mut params: Params<F>) -> Self {
        Self::build(model, &mut MovedFrom(&mut params))
    }

    #[track_caller]
    fn build(model: &Model<F>, source: &mut dyn ParamSource<F>) -> Self {
        let config = model.config().head.clone();
        let mut own = Params::new();
        let head = config
            .build_with(
                model.registry(),
                &mut own,
                HEAD_PREFIX,
                model.embedding_dim(),
                source,
            )
            .expect("a built model's head configuration is valid");
        TrainedHead {
            config,
            head,
            params: own,
        }
    }

    /// The head's configuration (classes and, for a cosine head, the margin loss).
    pub fn config(&self) -> &HeadConfig {
        &self.config
    }

    /// The head.
    pub fn head(&self) -> &dyn Head<F> {
        &*self.head
    }

    /// The head's tensors (`head.weight`, …).
    pub fn params(&self) -> &Params<F> {
        &self.params
    }

    /// The class centres of a cosine head: `[D, C]` ([`HeadConfig::Cosine`]), `[C, D]`
    /// ([`HeadConfig::Centres`]) or `[D, C·K]` ([`HeadConfig::Extended`], `K` sub-centres per
    /// class).
    pub fn centres(&self) -> Option<&Tensor<F>> {
        match self.config {
            HeadConfig::Cosine { .. }
            | HeadConfig::Centres { .. }
            | HeadConfig::Extended { .. } => Some(self.params.get(self.head.parameters()[0])),
            HeadConfig::Linear { .. } => None,
        }
    }

    /// Class scores without margin for `embeddings` (`[B, D]`): cosines to the centres, or the
    /// linear classifier's logits ([`Module::infer`](super::Module::infer)).
    ///
    /// # Panics
    /// When `embeddings` is not `[B, D]`.
    #[track_caller]
    pub fn scores(&self, embeddings: &Tensor<F>) -> Tensor<F> {
        self.head.infer(&self.params, embeddings)
    }

    /// The predicted class of each embedding ([`Head::predict`]).
    ///
    /// # Panics
    /// When `embeddings` is not `[B, D]`.
    #[track_caller]
    pub fn predict(&self, embeddings: &Tensor<F>) -> Vec<usize> {
        self.head.predict(&self.params, embeddings)
    }
}
