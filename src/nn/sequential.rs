//! An open chain of layers, as `nn.Sequential` holds them, built from a list of layer specs.

use super::{Forward, LayerRegistry, LayerSpec, Module, ParamSource};
use crate::{Element, Error, ParamId, Params, Var};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The configuration of a [`Sequential`]: its layers in order, each a kind and its settings.
/// Data, not code: any kind a [`LayerRegistry`] knows can stand in it, and a checkpoint stores
/// it as is.
///
/// ```
/// use margrad::nn::{Activation, Dropout, LinearConfig, SequentialConfig};
/// let config = SequentialConfig::new()
///     .with(LinearConfig::new(64, 32).spec())
///     .with(Activation::Relu.spec())
///     .with(Dropout { p: 0.1 }.spec())
///     .with(LinearConfig::new(32, 8).spec());
/// assert_eq!(config.layers[1].kind, "relu");
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SequentialConfig {
    /// The layers, input first; layer `i` is named `{prefix}.{i}`.
    pub layers: Vec<LayerSpec>,
}

impl SequentialConfig {
    /// The kind name of a nested Sequential in a [`LayerRegistry`].
    pub const KIND: &'static str = "sequential";

    /// No layers.
    pub fn new() -> Self {
        Self::default()
    }

    /// These layers and then `layer`.
    pub fn with(mut self, layer: LayerSpec) -> Self {
        self.layers.push(layer);
        self
    }
}

/// Layers applied one after another: `y = f_{n−1}(… f_1(f_0(x)))`. Layer `i` owns the tensors
/// `{prefix}.{i}.*`; every layer takes an index, activations and dropout included, as in
/// PyTorch's `nn.Sequential` (`embed.0.weight`, `embed.1.running_mean`, …).
///
/// A layer followed by a ReLU ([`Module::is_relu`]) runs as one call to its
/// [`Module::forward_relu`], which [`Linear`](super::Linear) fuses (bias and ReLU in one pass).
#[derive(Clone, Debug)]
pub struct Sequential<F: Element = f32> {
    config: SequentialConfig,
    layers: Vec<Arc<dyn Module<F>>>,
    input_shape: Option<Vec<usize>>,
    output_shape: Option<Vec<usize>>,
}

impl<F: Element> Sequential<F> {
    /// Builds `config`'s layers with the crate's kinds ([`LayerRegistry::standard`]); see
    /// [`Sequential::new_with`].
    ///
    /// # Errors
    /// As [`Sequential::new_with`].
    pub fn new(
        config: &SequentialConfig,
        params: &mut Params<F>,
        prefix: &str,
        source: &mut dyn ParamSource<F>,
    ) -> Result<Self, Error> {
        Self::new_with(config, &LayerRegistry::standard(), params, prefix, source)
    }

    /// Builds `config`'s layers through `registry`, layer `i` at `{prefix}.{i}`, adding their
    /// tensors to `params` in order, drawn from `source` (a [`SeededRng`](crate::SeededRng)
    /// for fresh layers, a checkpoint's tensors when loading).
    ///
    /// The shape of one input item follows from the layers: the first layer that fixes one
    /// ([`Module::input_shape`]) gives it, when every layer before it keeps that shape. From
    /// there each layer states the shape it gives ([`Module::output_shape`]), so that a layer
    /// that does not fit what the layers before it give is refused here, not at the first
    /// forward pass.
    ///
    /// # Errors
    /// What `registry` returns for a layer ([`Error::UnknownLayerKind`],
    /// [`Error::LayerSettings`], [`Error::InvalidSetting`]); [`Error::LayerSettings`] naming
    /// the first layer whose input does not fit (a Linear whose width is not the flattened
    /// size before it, channels that differ, a window larger than its padded input).
    pub fn new_with(
        config: &SequentialConfig,
        registry: &LayerRegistry<F>,
        params: &mut Params<F>,
        prefix: &str,
        source: &mut dyn ParamSource<F>,
    ) -> Result<Self, Error> {
        let mut layers = Vec::with_capacity(config.layers.len());
        for (i, spec) in config.layers.iter().enumerate() {
            layers.push(registry.build(spec, params, &format!("{prefix}.{i}"), source)?);
        }
        let input_shape = first_fixed_shape(&layers);
        let mut shape = input_shape.clone();
        for (i, layer) in layers.iter().enumerate() {
            // before the first layer that fixes a shape, nothing is known to check
            shape = shape.or_else(|| layer.input_shape());
            if let Some(input) = &shape {
                let output = layer
                    .output_shape(input)
                    .map_err(|message| Error::LayerSettings {
                        layer: format!("{prefix}.{i}"),
                        kind: config.layers[i].kind.clone(),
                        message,
                    })?;
                shape = Some(output);
            }
        }
        Ok(Sequential {
            // the layers' own account of themselves: canonical, whatever form the input had
            config: SequentialConfig {
                layers: layers.iter().map(|l| l.spec()).collect(),
            },
            layers,
            input_shape,
            output_shape: shape,
        })
    }

    /// The shapes of one input item and of one output item (`[784]` and `[128]` for an MLP
    /// on MNIST), when a layer fixes the input's (see [`Sequential::new_with`]).
    pub fn item_shapes(&self) -> Option<(&[usize], &[usize])> {
        Some((self.input_shape.as_deref()?, self.output_shape.as_deref()?))
    }

    /// The configuration, as the layers state it ([`Module::spec`]).
    pub fn config(&self) -> &SequentialConfig {
        &self.config
    }

    /// The layers, in order.
    pub fn layers(&self) -> &[Arc<dyn Module<F>>] {
        &self.layers
    }
}

impl<F: Element> PartialEq for Sequential<F> {
    /// The same layers: same configurations, same parameter ids.
    fn eq(&self, other: &Self) -> bool {
        self.layers == other.layers
    }
}

impl<F: Element> Module<F> for Sequential<F> {
    /// Runs the layers on `x`, absorbing each ReLU into the layer before it.
    ///
    /// # Panics
    /// When `x` does not fit the first layer.
    #[track_caller]
    fn forward<'g>(&self, cx: &mut Forward<'g, '_, F>, x: Var<'g, F>) -> Var<'g, F> {
        let mut h = x;
        let mut layers = self.layers.iter().peekable();
        while let Some(layer) = layers.next() {
            h = match layers.peek() {
                Some(next) if next.is_relu() => {
                    layers.next();
                    layer.forward_relu(cx, h)
                }
                _ => layer.forward(cx, h),
            };
        }
        h
    }

    fn spec(&self) -> LayerSpec {
        LayerSpec::new(SequentialConfig::KIND, &self.config)
    }

    fn parameters(&self) -> Vec<ParamId> {
        self.layers.iter().flat_map(|l| l.parameters()).collect()
    }

    fn buffers(&self) -> Vec<ParamId> {
        self.layers.iter().flat_map(|l| l.buffers()).collect()
    }

    fn input_shape(&self) -> Option<Vec<usize>> {
        self.input_shape.clone()
    }

    /// Each layer's [`Module::output_shape`] in turn; a misfit names the layer's index and kind.
    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>, String> {
        self.layers
            .iter()
            .enumerate()
            .try_fold(input.to_vec(), |shape, (i, layer)| {
                layer
                    .output_shape(&shape)
                    .map_err(|e| format!("layer {i} ({}): {e}", layer.spec().kind))
            })
    }
}

/// The item shape the first layer that fixes one takes, when every layer before it keeps that
/// shape (dropout or an activation in front of a Linear); `None` otherwise.
fn first_fixed_shape<F: Element>(layers: &[Arc<dyn Module<F>>]) -> Option<Vec<usize>> {
    let (at, shape) = layers
        .iter()
        .enumerate()
        .find_map(|(i, l)| l.input_shape().map(|s| (i, s)))?;
    layers[..at]
        .iter()
        .all(|l| l.output_shape(&shape).as_ref() == Ok(&shape))
        .then_some(shape)
}
