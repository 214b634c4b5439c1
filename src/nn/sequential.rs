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
    input_width: Option<usize>,
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
    /// # Errors
    /// What `registry` returns for a layer ([`Error::UnknownLayerKind`],
    /// [`Error::LayerSettings`], [`Error::InvalidSetting`]); [`Error::LayerSettings`] when a
    /// layer's input width (or, for planes, its input channels) is not what the layers before
    /// it give.
    pub fn new_with(
        config: &SequentialConfig,
        registry: &LayerRegistry<F>,
        params: &mut Params<F>,
        prefix: &str,
        source: &mut dyn ParamSource<F>,
    ) -> Result<Self, Error> {
        let mut layers = Vec::with_capacity(config.layers.len());
        let (mut width, mut input_width, mut channels) = (None, None, None);
        for (i, spec) in config.layers.iter().enumerate() {
            let name = format!("{prefix}.{i}");
            let layer = registry.build(spec, params, &name, source)?;
            if let (Some(takes), Some(given)) = (layer.input_channels(), channels)
                && takes != given
            {
                return Err(Error::LayerSettings {
                    layer: name,
                    kind: spec.kind.clone(),
                    message: format!(
                        "it takes {takes} channels, the layers before it give {given}"
                    ),
                });
            }
            channels = layer.output_channels(channels.or(layer.input_channels()));
            if let Some(takes) = layer.input_width() {
                match width {
                    Some(given) if given != takes => {
                        return Err(Error::LayerSettings {
                            layer: name,
                            kind: spec.kind.clone(),
                            message: format!(
                                "it takes {takes} features, the layers before it give {given}"
                            ),
                        });
                    }
                    Some(_) => {}
                    // nothing before it fixed a width: the sequence takes this one
                    None => input_width = input_width.or(Some(takes)),
                }
            }
            width = layer.output_width(width.or(layer.input_width()));
            layers.push(layer);
        }
        Ok(Sequential {
            // the layers' own account of themselves: canonical, whatever form the input had
            config: SequentialConfig {
                layers: layers.iter().map(|l| l.spec()).collect(),
            },
            layers,
            input_width,
        })
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

    /// The first width a layer fixes, when no layer before it changes the width.
    fn input_width(&self) -> Option<usize> {
        self.input_width
    }

    fn output_width(&self, input: Option<usize>) -> Option<usize> {
        let start = input.or(self.input_width);
        self.layers.iter().fold(start, |w, l| l.output_width(w))
    }

    /// The first layer's, when it fixes them.
    fn input_channels(&self) -> Option<usize> {
        self.layers.first().and_then(|l| l.input_channels())
    }

    fn output_channels(&self, input: Option<usize>) -> Option<usize> {
        let start = input.or(self.input_channels());
        self.layers.iter().fold(start, |c, l| l.output_channels(c))
    }
}
