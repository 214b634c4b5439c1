//! The contract every layer and head implements, and the stored form of a layer.

use super::Forward;
use crate::{Element, Error, Graph, Labels, ParamId, Params, Tensor, Var};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A layer: a function `y = f(x; θ)` of a batch `x` (`[B, …]`) and of the parameters `θ` it
/// keeps as [`ParamId`]s into a [`Params`] store.
///
/// Every layer of the crate implements it (Linear, BatchNorm1d, Dropout, the activations,
/// [`Sequential`](super::Sequential)), and so do the heads (see [`Head`]). A layer kind of your
/// own implements it too, and becomes buildable from a stored configuration once registered in
/// a [`LayerRegistry`](super::LayerRegistry).
///
/// Parameter names follow PyTorch's `state_dict`: a layer built at prefix `embed.3` names its
/// tensors `embed.3.weight`, `embed.3.running_mean`, …; the names live in [`Params`]
/// ([`Params::name`]), the layer keeps only ids.
pub trait Module<F: Element>: fmt::Debug + Send + Sync {
    /// `y = f(x)`. Training or evaluation (dropout, batch statistics) is the context's
    /// ([`Forward::is_training`]); buffers a training pass updates go to
    /// [`Forward::update_buffer`].
    fn forward<'g>(&self, cx: &mut Forward<'g, '_, F>, x: Var<'g, F>) -> Var<'g, F>;

    /// `max(f(x), 0)`: this layer followed by a ReLU. [`Sequential`](super::Sequential) calls
    /// it instead of running the two layers when the next layer [`is_relu`](Module::is_relu).
    /// The default is `forward(x).relu()`; [`Linear`](super::Linear) overrides it to fuse its
    /// bias and the ReLU into one pass ([`Var::add_relu`]).
    fn forward_relu<'g>(&self, cx: &mut Forward<'g, '_, F>, x: Var<'g, F>) -> Var<'g, F> {
        self.forward(cx, x).relu()
    }

    /// Whether this layer is exactly `max(x, 0)` with nothing else to do, so that the layer
    /// before it may absorb it through [`forward_relu`](Module::forward_relu). `false` unless
    /// overridden.
    fn is_relu(&self) -> bool {
        false
    }

    /// The stored configuration of this layer: its kind and its settings, from which a
    /// [`LayerRegistry`](super::LayerRegistry) rebuilds it.
    fn spec(&self) -> LayerSpec;

    /// The trainable parameters, in the order the layer added them.
    fn parameters(&self) -> Vec<ParamId> {
        Vec::new()
    }

    /// The buffers (saved, never trained: BatchNorm's running statistics), in the order the
    /// layer added them.
    fn buffers(&self) -> Vec<ParamId> {
        Vec::new()
    }

    /// The shape one item of `x` must have (`x` without its batch dimension), when the
    /// layer's settings alone fix it: `[in]` for a Linear, `[C·H·W]` for an Unflatten to
    /// `[C, H, W]`. `None` (the default) for a layer that takes any shape
    /// [`output_shape`](Module::output_shape) accepts. A [`Sequential`](super::Sequential) takes
    /// its input shape from the first layer that fixes one.
    fn input_shape(&self) -> Option<Vec<usize>> {
        None
    }

    /// The shape of one item of `y` given that of `x` (both without the batch dimension: `[D]`
    /// for feature rows, `[C, L]` for sequences, `[C, H, W]` for planes), or why such an `x`
    /// does not fit the layer, as a sentence naming the shapes. The default keeps the shape, as
    /// element-wise layers do; a layer that changes it or takes only some shapes overrides it.
    /// [`Sequential`](super::Sequential) calls it for each layer when it is built, so that a
    /// mismatch is an [`Error::LayerSettings`] naming the layer, not a panic at the first
    /// forward pass.
    ///
    /// # Errors
    /// The reason, when `x` of shape `[B, input…]` would not fit.
    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>, String> {
        Ok(input.to_vec())
    }

    /// `f(x)` in evaluation mode, on a graph that records nothing: the one inference path
    /// (prediction and embedding go through it).
    ///
    /// # Panics
    /// As [`forward`](Module::forward), when `x` does not fit the layer.
    #[track_caller]
    fn infer(&self, params: &Params<F>, x: &Tensor<F>) -> Tensor<F> {
        let g = Graph::inference();
        let mut cx = Forward::eval(&g, params);
        self.forward(&mut cx, g.constant(x.clone())).to_tensor()
    }
}

/// A classification head: a [`Module`] whose `forward` gives the class scores without margin
/// (cosines for [`CosineHead`](super::CosineHead), logits for a [`Linear`](super::Linear)
/// classifier), and which knows the loss it trains with.
pub trait Head<F: Element>: Module<F> {
    /// The training loss of a batch of features (`[B, D]`) and the class scores without margin
    /// (`[B, C]`) it was computed from, from which the training accuracy comes at no extra cost.
    ///
    /// # Errors
    /// As the head's loss (labels out of range, an empty batch, …).
    fn loss_and_scores<'g>(
        &self,
        cx: &mut Forward<'g, '_, F>,
        features: Var<'g, F>,
        labels: &Labels,
    ) -> Result<(Var<'g, F>, Var<'g, F>), Error>;

    /// The mean training loss of a batch: the first half of
    /// [`loss_and_scores`](Head::loss_and_scores).
    ///
    /// # Errors
    /// As [`loss_and_scores`](Head::loss_and_scores).
    fn loss<'g>(
        &self,
        cx: &mut Forward<'g, '_, F>,
        features: Var<'g, F>,
        labels: &Labels,
    ) -> Result<Var<'g, F>, Error> {
        Ok(self.loss_and_scores(cx, features, labels)?.0)
    }

    /// The predicted class of each row of `features`: `argmax_j score_ij`, evaluated by
    /// [`infer`](Module::infer). The one prediction path: [`Model::predict`](super::Model::predict)
    /// and [`TrainedHead::predict`](super::TrainedHead::predict) call it.
    ///
    /// # Panics
    /// When `features` is not `[B, D]`.
    #[track_caller]
    fn predict(&self, params: &Params<F>, features: &Tensor<F>) -> Vec<usize> {
        self.infer(params, features).argmax_rows()
    }
}

/// Two layers are equal when they have the same stored configuration and the same parameter
/// and buffer ids (the same layer, rebuilt).
impl<F: Element> PartialEq for dyn Module<F> {
    fn eq(&self, other: &Self) -> bool {
        self.spec() == other.spec()
            && self.parameters() == other.parameters()
            && self.buffers() == other.buffers()
    }
}

/// As for [`Module`]: same configuration, same ids.
impl<F: Element> PartialEq for dyn Head<F> {
    fn eq(&self, other: &Self) -> bool {
        (self as &dyn Module<F>) == (other as &dyn Module<F>)
    }
}

/// A layer as a checkpoint stores it: its kind (the name it is registered under in a
/// [`LayerRegistry`](super::LayerRegistry)) and its settings, the JSON form of the kind's own
/// `#[derive(Serialize, Deserialize)]` configuration struct.
///
/// In JSON (metrics.json) the settings appear as a nested object; in the checkpoint's binary
/// body, which cannot hold a self-describing value, as the JSON text, keys sorted, so that the
/// same layer always gives the same bytes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerSpec {
    /// The registered kind: `"linear"`, `"relu"`, or one of yours.
    #[serde(deserialize_with = "crate::files::read_str")]
    pub kind: String,
    /// The kind's settings.
    #[serde(with = "settings_codec")]
    pub config: serde_json::Value,
}

impl LayerSpec {
    /// The spec of a layer of `kind` with settings `config`.
    ///
    /// # Panics
    /// When `config` does not serialise to JSON (a map with non-string keys, for instance):
    /// a bug in the configuration type, not in the data.
    #[track_caller]
    pub fn new<C: Serialize + ?Sized>(kind: impl Into<String>, config: &C) -> Self {
        let kind = kind.into();
        let config = serde_json::to_value(config).unwrap_or_else(|e| {
            panic!("LayerSpec::new: the settings of layer kind {kind:?} do not serialise: {e}")
        });
        LayerSpec { kind, config }
    }

    /// The settings, read as the kind's configuration type.
    ///
    /// # Errors
    /// When they do not have that type's fields and values.
    pub fn settings<C: DeserializeOwned>(&self) -> Result<C, serde_json::Error> {
        C::deserialize(&self.config)
    }
}

/// Settings as a nested value for human-readable formats, as JSON text for binary ones.
mod settings_codec {
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use serde_json::Value;

    pub(super) fn serialize<S: Serializer>(
        value: &Value,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            value.serialize(serializer)
        } else {
            serializer.serialize_str(&value.to_string())
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Value, D::Error> {
        if deserializer.is_human_readable() {
            Value::deserialize(deserializer)
        } else {
            let text = crate::files::read_str(deserializer)?;
            serde_json::from_str(&text).map_err(|e| {
                D::Error::custom(format!(
                    "a layer's settings, stored as JSON text, do not parse: {e}"
                ))
            })
        }
    }
}

/// One item's shape in words, for the messages of [`Module::output_shape`]: "rows of 784
/// features", "items of shape [32, 14, 14]".
pub(super) fn describe_item(shape: &[usize]) -> String {
    match shape {
        [d] => format!("rows of {d} features"),
        _ => format!("items of shape {shape:?}"),
    }
}

/// `input` as `N` dimensions (`[C, L]`, `[C, H, W]`), or the sentence saying that the layer
/// takes `what` and what it was given instead.
pub(super) fn item_dims<const N: usize>(input: &[usize], what: &str) -> Result<[usize; N], String> {
    input.try_into().map_err(|_| {
        format!(
            "it takes {what}, the layers before it give {}",
            describe_item(input)
        )
    })
}

/// `Ok` when the item's channels (its first dimension) are the `takes` the layer needs.
pub(super) fn check_channels(takes: usize, given: usize) -> Result<(), String> {
    if takes == given {
        Ok(())
    } else {
        Err(format!(
            "it takes {takes} channels, the layers before it give {given}"
        ))
    }
}
