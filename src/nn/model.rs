//! A model: an embedder (a [`Sequential`]) and a classification head, rebuilt from its
//! configuration.

use super::{
    CentresHead, CosineHead, CosineHeadConfig, ExtendedHead, ExtendedHeadConfig, Forward, Head,
    Init, LayerRegistry, LayerSpec, LinearConfig, Module, ParamSource, Sequential,
    SequentialConfig, l2_normalize,
};
use crate::loss::{ExtendedLoss, MarginLoss};
use crate::{Element, Error, Graph, Labels, Params, Tensor, Var};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The prefix of the embedder's tensors (`embed.0.weight`).
pub const EMBEDDER_PREFIX: &str = "embed";
/// The prefix of the head's tensors (`head.weight`).
pub const HEAD_PREFIX: &str = "head";

/// The rows [`Model::predict`] and [`Model::embeddings`] take through the embedder at once:
/// every row's result is its own (evaluation mode), and the memory a convolutional embedder's
/// planes take stays that of this many rows, not of a whole test split (10,000 MNIST images
/// through LeNet++'s first stage would hold 1 GB per layer).
pub const EVAL_ROWS: usize = 256;

/// `f` applied to the rows of `x` [`EVAL_ROWS`] at a time, the results stacked in order.
fn by_rows<F: Element>(x: &Tensor<F>, f: impl Fn(Tensor<F>) -> Tensor<F>) -> Tensor<F> {
    let rows = x.shape().first().copied().unwrap_or(0);
    if rows <= EVAL_ROWS {
        return f(x.clone());
    }
    let width = x.numel() / rows;
    let (mut data, mut item) = (Vec::new(), Vec::new());
    for start in (0..rows).step_by(EVAL_ROWS) {
        let n = EVAL_ROWS.min(rows - start);
        let mut shape = x.shape().to_vec();
        shape[0] = n;
        let slice = x.data()[start * width..(start + n) * width].to_vec();
        let y = f(Tensor::from_vec(slice, &shape).expect("whole rows"));
        item = y.shape()[1..].to_vec();
        data.extend_from_slice(y.data());
    }
    let shape: Vec<usize> = std::iter::once(rows).chain(item).collect();
    Tensor::from_vec(data, &shape).expect("rows of one shape")
}

/// The head on top of the embedding.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum HeadConfig {
    /// A cosine classifier trained with a margin loss (centres `head.weight`, `[D, C]`):
    /// a [`CosineHead`].
    Cosine {
        /// The number of classes.
        classes: usize,
        /// The loss.
        loss: MarginLoss,
    },
    /// A cosine classifier whose centres are stored one class per row (`head.weight`,
    /// `[C, D]`), the layout the blocked large-class head trains: a [`CentresHead`]. Added in
    /// checkpoint format version 4.
    Centres {
        /// The number of classes.
        classes: usize,
        /// The loss.
        loss: MarginLoss,
    },
    /// A cosine classifier trained with a loss beyond the softmax family's formula (AdaFace,
    /// MagFace, CurricularFace, sub-center ArcFace, SphereFace2, ElasticFace): an
    /// [`ExtendedHead`] (centres `head.weight`, `[D, C·K]`, and what its loss keeps).
    Extended {
        /// The number of classes.
        classes: usize,
        /// The loss.
        loss: ExtendedLoss,
    },
    /// A plain linear classifier `x Wᵀ + b` trained with softmax cross-entropy
    /// (`head.weight` `[C, D]`, `head.bias` `[C]`, Xavier-normal): a [`Linear`](super::Linear).
    Linear {
        /// The number of classes.
        classes: usize,
    },
}

impl HeadConfig {
    /// The number of classes.
    pub fn classes(&self) -> usize {
        match self {
            HeadConfig::Cosine { classes, .. }
            | HeadConfig::Centres { classes, .. }
            | HeadConfig::Extended { classes, .. }
            | HeadConfig::Linear { classes } => *classes,
        }
    }

    /// The head as a layer over `dim`-wide features: its kind (`cosine_head`, `centres_head`,
    /// `extended_head`, `linear`) and settings, checked.
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] for zero classes or an invalid loss.
    pub fn layer_spec(&self, dim: usize) -> Result<LayerSpec, Error> {
        let classes = self.classes();
        Error::check("classes", classes as f64, classes > 0, "at least 1")?;
        Ok(match self {
            HeadConfig::Cosine { loss, .. } | HeadConfig::Centres { loss, .. } => {
                let config = CosineHeadConfig {
                    dim,
                    classes,
                    loss: loss.clone(),
                };
                config.validate()?;
                let kind = match self {
                    HeadConfig::Centres { .. } => CentresHead::KIND,
                    _ => CosineHead::KIND,
                };
                LayerSpec::new(kind, &config)
            }
            HeadConfig::Extended { loss, .. } => {
                let config = ExtendedHeadConfig {
                    dim,
                    classes,
                    loss: loss.clone(),
                };
                config.validate()?;
                LayerSpec::new(ExtendedHead::KIND, &config)
            }
            HeadConfig::Linear { .. } => {
                let config = LinearConfig::new(dim, classes).with_init(Init::XavierNormal);
                config.validate()?;
                config.spec()
            }
        })
    }

    /// Builds the head over `dim`-wide features at `prefix` with the crate's kinds, adding its
    /// tensors to `params`, drawn from `source`: [`HeadConfig::build_with`] and
    /// [`LayerRegistry::standard`].
    ///
    /// # Errors
    /// As [`HeadConfig::build_with`].
    pub fn build<F: Element>(
        &self,
        params: &mut Params<F>,
        prefix: &str,
        dim: usize,
        source: &mut dyn ParamSource<F>,
    ) -> Result<Arc<dyn Head<F>>, Error> {
        self.build_with(&LayerRegistry::standard(), params, prefix, dim, source)
    }

    /// Builds the head through `registry`, as every other layer is built: the builder
    /// registered for its kind ([`HeadConfig::layer_spec`]) makes it.
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] for zero classes or an invalid loss; what the registry returns
    /// ([`LayerRegistry::build_head`]).
    pub fn build_with<F: Element>(
        &self,
        registry: &LayerRegistry<F>,
        params: &mut Params<F>,
        prefix: &str,
        dim: usize,
        source: &mut dyn ParamSource<F>,
    ) -> Result<Arc<dyn Head<F>>, Error> {
        registry.build_head(&self.layer_spec(dim)?, params, prefix, source)
    }
}

/// Everything needed to rebuild a [`Model`] (a checkpoint stores it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// The embedder's layers, named `embed.{i}.*` (an [`MlpConfig`](super::MlpConfig) gives
    /// one with [`sequential`](super::MlpConfig::sequential)).
    pub embedder: SequentialConfig,
    /// The head, named `head.*`.
    pub head: HeadConfig,
}

/// An embedder and a head: `scores = head(embedder(x))`.
#[derive(Clone, Debug)]
pub struct Model<F: Element = f32> {
    config: ModelConfig,
    embedder: Sequential<F>,
    head: Arc<dyn Head<F>>,
    input_shape: Vec<usize>,
    embedding_dim: usize,
    /// The kinds it was built with, with which its head is rebuilt on its own
    /// ([`TrainedHead`](super::TrainedHead)).
    registry: LayerRegistry<F>,
}

impl<F: Element> Model<F> {
    /// Builds the model with the crate's layer kinds ([`LayerRegistry::standard`]); see
    /// [`Model::new_with`].
    ///
    /// # Errors
    /// As [`Model::new_with`].
    pub fn new(
        config: ModelConfig,
        params: &mut Params<F>,
        source: &mut dyn ParamSource<F>,
    ) -> Result<Self, Error> {
        Self::new_with(config, &LayerRegistry::standard(), params, source)
    }

    /// Builds the model, its embedder's layers through `registry`, adding its parameters (in a
    /// fixed order: embedder, then head) to `params`, drawn from `source` (a
    /// [`SeededRng`](crate::SeededRng) for a fresh model).
    ///
    /// # Errors
    /// What [`Sequential::new_with`] returns for the embedder (a layer that does not fit the
    /// shape the layers before it give); [`Error::LayerSettings`] when no layer fixes its input
    /// shape, or when it does not end in feature rows; [`Error::InvalidSetting`] for zero
    /// classes or an invalid loss.
    pub fn new_with(
        config: ModelConfig,
        registry: &LayerRegistry<F>,
        params: &mut Params<F>,
        source: &mut dyn ParamSource<F>,
    ) -> Result<Self, Error> {
        let embedder =
            Sequential::new_with(&config.embedder, registry, params, EMBEDDER_PREFIX, source)?;
        let not_rows = |message: String| Error::LayerSettings {
            layer: EMBEDDER_PREFIX.to_string(),
            kind: SequentialConfig::KIND.to_string(),
            message,
        };
        let Some((input_shape, output_shape)) = embedder.item_shapes() else {
            return Err(not_rows(
                "no layer fixes the embedder's input shape: it needs one that declares it \
                 (a Linear, a BatchNorm1d, an Unflatten)"
                    .to_string(),
            ));
        };
        let &[embedding_dim] = output_shape else {
            return Err(not_rows(format!(
                "it gives items of shape {output_shape:?}, the head takes feature rows (a \
                 flatten or a global pooling at its end gives them)"
            )));
        };
        let input_shape = input_shape.to_vec();
        let head = config
            .head
            .build_with(registry, params, HEAD_PREFIX, embedding_dim, source)?;
        Ok(Model {
            config: ModelConfig {
                embedder: embedder.config().clone(),
                head: config.head,
            },
            embedder,
            head,
            input_shape,
            embedding_dim,
            registry: registry.clone(),
        })
    }

    /// The layer kinds it was built with.
    pub(super) fn registry(&self) -> &LayerRegistry<F> {
        &self.registry
    }

    /// The configuration, as the built layers state it (what a checkpoint stores).
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The embedder.
    pub fn embedder(&self) -> &Sequential<F> {
        &self.embedder
    }

    /// The head.
    pub fn head(&self) -> &dyn Head<F> {
        &*self.head
    }

    /// The number of input features: each row of `x` is one item of
    /// [`input_shape`](Model::input_shape), flattened.
    pub fn input_dim(&self) -> usize {
        self.input_shape.iter().product()
    }

    /// The shape of one input item as the embedder's first layers see it: `[D]` for feature
    /// rows; for a convolutional embedder, the rows it unflattens into planes
    /// (`[784]` for MNIST, which its first layer turns into `[1, 28, 28]`).
    pub fn input_shape(&self) -> &[usize] {
        &self.input_shape
    }

    /// The width `D` of the embedding.
    pub fn embedding_dim(&self) -> usize {
        self.embedding_dim
    }

    /// The embedder's output (`[B, D]`, not normalised).
    ///
    /// # Panics
    /// When `x` is not `[B, input_dim]`.
    #[track_caller]
    pub fn embed<'g>(&self, cx: &mut Forward<'g, '_, F>, x: Var<'g, F>) -> Var<'g, F> {
        self.embedder.forward(cx, x)
    }

    /// Class scores without margin (`[B, C]`): cosines for a cosine head, logits for a linear
    /// one.
    ///
    /// # Panics
    /// When `x` is not `[B, input_dim]`.
    #[track_caller]
    pub fn logits<'g>(&self, cx: &mut Forward<'g, '_, F>, x: Var<'g, F>) -> Var<'g, F> {
        let e = self.embed(cx, x);
        self.head.forward(cx, e)
    }

    /// The training loss of a batch.
    ///
    /// # Errors
    /// As the head's loss ([`Head::loss_and_scores`]).
    pub fn loss<'g>(
        &self,
        cx: &mut Forward<'g, '_, F>,
        x: Var<'g, F>,
        labels: &Labels,
    ) -> Result<Var<'g, F>, Error> {
        Ok(self.loss_and_logits(cx, x, labels)?.0)
    }

    /// The training loss of a batch, and its class scores without margin (from which the
    /// training accuracy comes at no extra cost).
    ///
    /// # Errors
    /// As the head's loss ([`Head::loss_and_scores`]).
    pub fn loss_and_logits<'g>(
        &self,
        cx: &mut Forward<'g, '_, F>,
        x: Var<'g, F>,
        labels: &Labels,
    ) -> Result<(Var<'g, F>, Var<'g, F>), Error> {
        let e = self.embed(cx, x);
        self.head.loss_and_scores(cx, e, labels)
    }

    /// The predicted class of each row of `x` (evaluation mode): the embedder, then
    /// [`Head::predict`]. The rows go through the embedder [`EVAL_ROWS`] at a time.
    ///
    /// # Panics
    /// When `x` is not `[B, input_dim]`.
    #[track_caller]
    pub fn predict(&self, params: &Params<F>, x: &Tensor<F>) -> Vec<usize> {
        self.head.predict(params, &self.features(params, x))
    }

    /// The embedder's output for the rows of `x` (evaluation mode, `[B, D]`, not normalised:
    /// the features whose norms MagFace and AdaFace read), [`EVAL_ROWS`] rows at a time.
    ///
    /// # Panics
    /// When `x` is not `[B, input_dim]`.
    #[track_caller]
    pub fn features(&self, params: &Params<F>, x: &Tensor<F>) -> Tensor<F> {
        by_rows(x, |rows| self.embedder.infer(params, &rows))
    }

    /// L2-normalised embeddings of the rows of `x` (evaluation mode), for verification:
    /// `ê_i = e_i / max(‖e_i‖, ε)` ([`l2_normalize`]) of [`Model::embed`]'s `e`, [`EVAL_ROWS`]
    /// rows at a time.
    ///
    /// # Panics
    /// When `x` is not `[B, input_dim]`.
    #[track_caller]
    pub fn embeddings(&self, params: &Params<F>, x: &Tensor<F>) -> Tensor<F> {
        by_rows(x, |rows| {
            let g = Graph::inference();
            let mut cx = Forward::eval(&g, params);
            l2_normalize(self.embed(&mut cx, g.constant(rows))).to_tensor()
        })
    }
}

impl<F: Element> PartialEq for Model<F> {
    /// The same configuration, and the same layers and head over the same parameter ids.
    fn eq(&self, other: &Self) -> bool {
        self.config == other.config && self.embedder == other.embedder && *self.head == *other.head
    }
}
