//! Layer kinds by name: how a stored [`LayerSpec`] becomes a built layer.

use super::{
    Activation, AvgPool2d, BasicBlock, BasicBlockConfig, BatchNorm1d, BatchNorm1dConfig,
    BatchNorm2d, BatchNorm2dConfig, CentresHead, Conv1d, Conv1dConfig, Conv2d, Conv2dConfig,
    CosineHead, CosineHeadConfig, Dropout, ExtendedHead, ExtendedHeadConfig, Fill, Flatten,
    GlobalAvgPool, Head, LayerSpec, Linear, LinearConfig, MaxPool2d, Module, PRelu, PReluConfig,
    ParamSource, Sequential, SequentialConfig, Unflatten,
};
use crate::{Element, Error, ParamId, Params};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

/// What a builder receives: where to put its tensors and under which name, where to draw them
/// from, and the registry (to build layers inside it, as [`Sequential`] does).
pub struct BuildContext<'a, F: Element> {
    /// The store the layer adds its parameters and buffers to.
    pub params: &'a mut Params<F>,
    /// The layer's name: its tensors are `{prefix}.weight`, … (`embed.3`).
    pub prefix: &'a str,
    /// Where tensors come from: drawn fresh, or read from a checkpoint by name and shape.
    pub source: &'a mut dyn ParamSource<F>,
    /// The registry doing the building.
    pub registry: &'a LayerRegistry<F>,
}

impl<F: Element> BuildContext<'_, F> {
    /// Adds the trainable parameter `{prefix}.{name}` of `shape`, taken from the source
    /// (filled as `fill` says when fresh).
    pub fn param(&mut self, name: &str, shape: &[usize], fill: Fill) -> ParamId {
        let name = format!("{}.{name}", self.prefix);
        let value = self.source.tensor(&name, shape, fill);
        self.params.add(name, value)
    }

    /// Adds the buffer `{prefix}.{name}` (saved, never trained), as [`param`](Self::param).
    pub fn buffer(&mut self, name: &str, shape: &[usize], fill: Fill) -> ParamId {
        let name = format!("{}.{name}", self.prefix);
        let value = self.source.tensor(&name, shape, fill);
        self.params.add_buffer(name, value)
    }
}

/// What a builder makes: a layer, or a head (which is a layer too, and can be asked for as a
/// head).
enum Built<F: Element> {
    Layer(Arc<dyn Module<F>>),
    Head(Arc<dyn Head<F>>),
}

type Builder<F> =
    Arc<dyn Fn(&LayerSpec, &mut BuildContext<'_, F>) -> Result<Built<F>, Error> + Send + Sync>;

/// Layer kinds by name: each name maps to a builder that turns the kind's settings into a
/// layer. A [`Sequential`] (and so a [`Model`](super::Model) and a checkpoint) builds its
/// layers through one, and a model its head: the kinds registered as heads
/// ([`register_head`](Self::register_head)) can be built as a layer or as a model's head
/// ([`build_head`](Self::build_head)).
///
/// [`LayerRegistry::standard`] (also its `Default`) knows the crate's kinds:
///
/// | kind | settings | layer |
/// |---|---|---|
/// | `linear` | [`LinearConfig`] | [`Linear`]: `y = x Wᵀ + b` (also a head) |
/// | `batch_norm1d` | [`BatchNorm1dConfig`] | [`BatchNorm1d`] |
/// | `dropout` | [`Dropout`] (`{"p": …}`) | [`Dropout`] |
/// | `relu` | `{}` | [`Activation::Relu`]: `max(x, 0)` |
/// | `leaky_relu` | `{"slope": …}` | [`Activation::LeakyRelu`] |
/// | `tanh` | `{}` | [`Activation::Tanh`] |
/// | `sigmoid` | `{}` | [`Activation::Sigmoid`] |
/// | `identity` | `{}` | [`Activation::Identity`] |
/// | `sequential` | [`SequentialConfig`] | [`Sequential`], layers named `{prefix}.{i}` |
/// | `cosine_head` | [`CosineHeadConfig`] | [`CosineHead`] (a head) |
/// | `centres_head` | [`CosineHeadConfig`] | [`CentresHead`] (a head) |
/// | `extended_head` | [`ExtendedHeadConfig`] | [`ExtendedHead`] (a head) |
/// | `conv2d` | [`Conv2dConfig`] | [`Conv2d`] |
/// | `conv1d` | [`Conv1dConfig`] | [`Conv1d`] |
/// | `max_pool2d`, `avg_pool2d` | [`Pool2dOptions`](crate::Pool2dOptions) | [`MaxPool2d`], [`AvgPool2d`] |
/// | `global_avg_pool` | `{}` | [`GlobalAvgPool`]: `[N, C, H, W] → [N, C]` |
/// | `flatten` | `{}` | [`Flatten`]: `[N, …] → [N, D]` |
/// | `unflatten` | [`Unflatten`] (`{"shape": …}`) | [`Unflatten`]: `[N, D] → [N, …]` |
/// | `batch_norm2d` | [`BatchNorm2dConfig`] | [`BatchNorm2d`] |
/// | `prelu` | [`PReluConfig`] | [`PRelu`] |
/// | `basic_block` | [`BasicBlockConfig`] | [`BasicBlock`] |
///
/// A kind of your own: implement [`Module`] for the layer, then register a builder that reads
/// the layer's settings (any `Deserialize` type) and makes it:
///
/// ```
/// use margrad::nn::{Fill, Forward, LayerRegistry, LayerSpec, Module};
/// use margrad::{Element, ParamId, Var};
/// use serde::{Deserialize, Serialize};
///
/// /// `y = x ⊙ a`, one learned scale per feature.
/// #[derive(Debug)]
/// struct Scale {
///     a: ParamId,
///     config: ScaleConfig,
/// }
///
/// #[derive(Clone, Debug, Serialize, Deserialize)]
/// struct ScaleConfig {
///     features: usize,
/// }
///
/// impl<F: Element> Module<F> for Scale {
///     fn forward<'g>(&self, cx: &mut Forward<'g, '_, F>, x: Var<'g, F>) -> Var<'g, F> {
///         x * cx.param(self.a)
///     }
///     fn spec(&self) -> LayerSpec {
///         LayerSpec::new("scale", &self.config)
///     }
///     fn parameters(&self) -> Vec<ParamId> {
///         vec![self.a]
///     }
///     fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>, String> {
///         let fits = input == [self.config.features];
///         fits.then(|| input.to_vec()).ok_or_else(|| format!("{input:?} is not [features]"))
///     }
/// }
///
/// let mut registry = LayerRegistry::<f32>::standard();
/// registry.register("scale", |config: ScaleConfig, cx| {
///     let a = cx.param("weight", &[config.features], Fill::Ones);
///     Ok(Scale { a, config })
/// });
/// assert!(registry.contains("scale") && registry.contains("linear"));
/// ```
pub struct LayerRegistry<F: Element = f32> {
    builders: BTreeMap<String, Builder<F>>,
    /// The kinds registered as heads.
    heads: BTreeSet<String>,
}

impl<F: Element> LayerRegistry<F> {
    /// A registry that knows no kind.
    pub fn empty() -> Self {
        LayerRegistry {
            builders: BTreeMap::new(),
            heads: BTreeSet::new(),
        }
    }

    /// A registry that knows the crate's kinds (see the table above).
    pub fn standard() -> Self {
        let mut r = Self::empty();
        r.register_head(Linear::KIND, |config: LinearConfig, cx| {
            config.validate()?;
            Ok(Linear::new(cx.params, cx.prefix, config, cx.source))
        });
        r.register(BatchNorm1d::KIND, |config: BatchNorm1dConfig, cx| {
            config.validate::<F>()?;
            Ok(BatchNorm1d::new(cx.params, cx.prefix, config, cx.source))
        });
        r.register(Dropout::KIND, |dropout: Dropout, _| {
            dropout.validate()?;
            Ok(dropout)
        });
        for activation in [
            Activation::Relu,
            Activation::Tanh,
            Activation::Sigmoid,
            Activation::Identity,
        ] {
            r.register(activation.kind(), move |_: NoSettings, _| Ok(activation));
        }
        r.register("leaky_relu", |s: LeakyReluSettings, _| {
            let activation = Activation::LeakyRelu(s.slope);
            activation.validate::<F>()?;
            Ok(activation)
        });
        r.register(SequentialConfig::KIND, |config: SequentialConfig, cx| {
            Sequential::new_with(&config, cx.registry, cx.params, cx.prefix, cx.source)
        });
        r.register_heads();
        r.register_convolutional();
        r
    }

    /// The cosine heads: centres one class per column, one class per row, and the head of the
    /// losses beyond the softmax family's formula.
    fn register_heads(&mut self) {
        self.register_head(CosineHead::KIND, |config: CosineHeadConfig, cx| {
            config.validate()?;
            Ok(CosineHead::new(cx.params, cx.prefix, config, cx.source))
        });
        self.register_head(CentresHead::KIND, |config: CosineHeadConfig, cx| {
            config.validate()?;
            Ok(CentresHead::new(cx.params, cx.prefix, config, cx.source))
        });
        self.register_head(ExtendedHead::KIND, |config: ExtendedHeadConfig, cx| {
            ExtendedHead::new(cx.params, cx.prefix, config, cx.source)
        });
    }

    /// The layers over planes: convolutions, pooling, the reshapes around them, BatchNorm2d,
    /// PReLU and the residual block.
    fn register_convolutional(&mut self) {
        self.register(Conv2d::KIND, |config: Conv2dConfig, cx| {
            config.validate()?;
            Ok(Conv2d::new(cx.params, cx.prefix, config, cx.source))
        });
        self.register(Conv1d::KIND, |config: Conv1dConfig, cx| {
            config.validate()?;
            Ok(Conv1d::new(cx.params, cx.prefix, config, cx.source))
        });
        self.register(MaxPool2d::KIND, |pool: MaxPool2d, _| {
            pool.validate()?;
            Ok(pool)
        });
        self.register(AvgPool2d::KIND, |pool: AvgPool2d, _| {
            pool.validate()?;
            Ok(pool)
        });
        self.register(GlobalAvgPool::KIND, |_: NoSettings, _| Ok(GlobalAvgPool));
        self.register(Flatten::KIND, |_: NoSettings, _| Ok(Flatten));
        self.register(Unflatten::KIND, |unflatten: Unflatten, _| {
            unflatten.validate()?;
            Ok(unflatten)
        });
        self.register(BatchNorm2d::KIND, |config: BatchNorm2dConfig, cx| {
            config.validate::<F>()?;
            Ok(BatchNorm2d::new(cx.params, cx.prefix, config, cx.source))
        });
        self.register(PRelu::KIND, |config: PReluConfig, cx| {
            config.validate::<F>()?;
            Ok(PRelu::new(cx.params, cx.prefix, config, cx.source))
        });
        self.register(BasicBlock::KIND, |config: BasicBlockConfig, cx| {
            config.validate()?;
            Ok(BasicBlock::new(cx.params, cx.prefix, config, cx.source))
        });
    }

    /// Registers `kind`: `build` receives the layer's settings, read as a `C`, and the
    /// [`BuildContext`] to add its tensors through, and returns the layer. A kind registered
    /// again replaces the earlier builder (so a standard kind can be overridden).
    ///
    /// Settings that do not read as a `C` become [`Error::LayerSettings`], naming the layer.
    ///
    /// # Panics
    /// When `kind` is registered as a head (`linear`, say): a layer-only builder would leave
    /// every model whose head is of that kind unbuildable; replace it with
    /// [`register_head`](Self::register_head).
    #[track_caller]
    pub fn register<C, M, B>(&mut self, kind: impl Into<String>, build: B) -> &mut Self
    where
        C: DeserializeOwned,
        M: Module<F> + 'static,
        B: Fn(C, &mut BuildContext<'_, F>) -> Result<M, Error> + Send + Sync + 'static,
    {
        let kind = kind.into();
        assert!(
            !self.heads.contains(&kind),
            "LayerRegistry::register: kind {kind:?} builds a model's head too; replace it with \
             register_head, whose builder returns a Head"
        );
        self.insert(kind, move |settings: C, cx| {
            Ok(Built::Layer(Arc::new(build(settings, cx)?)))
        })
    }

    /// Registers `kind` as a head, as [`register`](Self::register) does a layer: a head kind
    /// builds as a layer too, and as a [`Model`](super::Model)'s head
    /// ([`build_head`](Self::build_head)). A model's [`HeadConfig`](super::HeadConfig) names
    /// one of the four standard head kinds (`linear`, `cosine_head`, `centres_head`,
    /// `extended_head`): registering one of them replaces the builder every model and
    /// checkpoint of this registry uses for it; a new kind is built by `build_head` from a
    /// [`LayerSpec`], not by a `HeadConfig`.
    pub fn register_head<C, M, B>(&mut self, kind: impl Into<String>, build: B) -> &mut Self
    where
        C: DeserializeOwned,
        M: Head<F> + 'static,
        B: Fn(C, &mut BuildContext<'_, F>) -> Result<M, Error> + Send + Sync + 'static,
    {
        let kind = kind.into();
        self.heads.insert(kind.clone());
        self.insert(kind, move |settings: C, cx| {
            Ok(Built::Head(Arc::new(build(settings, cx)?)))
        })
    }

    /// Registers `kind`'s builder behind the reading of its settings as a `C`.
    fn insert<C: DeserializeOwned>(
        &mut self,
        kind: String,
        build: impl Fn(C, &mut BuildContext<'_, F>) -> Result<Built<F>, Error> + Send + Sync + 'static,
    ) -> &mut Self {
        let builder: Builder<F> = Arc::new(move |spec, cx| {
            let settings = spec.settings::<C>().map_err(|e| Error::LayerSettings {
                layer: cx.prefix.to_string(),
                kind: spec.kind.clone(),
                message: e.to_string(),
            })?;
            build(settings, cx)
        });
        self.builders.insert(kind, builder);
        self
    }

    /// Whether `kind` is registered.
    pub fn contains(&self, kind: &str) -> bool {
        self.builders.contains_key(kind)
    }

    /// The registered kinds, sorted.
    pub fn kinds(&self) -> impl Iterator<Item = &str> {
        self.builders.keys().map(String::as_str)
    }

    /// Builds the layer `spec` describes at `prefix`, adding its tensors to `params`, drawn
    /// from `source`.
    ///
    /// # Errors
    /// [`Error::UnknownLayerKind`] for a kind this registry does not know;
    /// [`Error::LayerSettings`], naming the layer, for settings that do not read as the kind's
    /// or that its builder refuses as out of range (an [`Error::InvalidSetting`] of the builder,
    /// a width of zero, a dropout of 1, becomes its message); other errors of the builder as
    /// they are.
    pub fn build(
        &self,
        spec: &LayerSpec,
        params: &mut Params<F>,
        prefix: &str,
        source: &mut dyn ParamSource<F>,
    ) -> Result<Arc<dyn Module<F>>, Error> {
        Ok(match self.built(spec, params, prefix, source)? {
            Built::Layer(layer) => layer,
            Built::Head(head) => head,
        })
    }

    /// Builds the head `spec` describes at `prefix`, as [`build`](Self::build) does a layer.
    ///
    /// # Errors
    /// As [`build`](Self::build); [`Error::LayerSettings`] for a kind registered as a layer,
    /// not as a head.
    pub fn build_head(
        &self,
        spec: &LayerSpec,
        params: &mut Params<F>,
        prefix: &str,
        source: &mut dyn ParamSource<F>,
    ) -> Result<Arc<dyn Head<F>>, Error> {
        match self.built(spec, params, prefix, source)? {
            Built::Head(head) => Ok(head),
            Built::Layer(_) => Err(Error::LayerSettings {
                layer: prefix.to_string(),
                kind: spec.kind.clone(),
                message: "this kind is registered as a layer, not a head (register_head \
                          registers a head)"
                    .to_string(),
            }),
        }
    }

    fn built(
        &self,
        spec: &LayerSpec,
        params: &mut Params<F>,
        prefix: &str,
        source: &mut dyn ParamSource<F>,
    ) -> Result<Built<F>, Error> {
        let Some(builder) = self.builders.get(&spec.kind) else {
            return Err(Error::UnknownLayerKind {
                layer: prefix.to_string(),
                kind: spec.kind.clone(),
                known: self.kinds().map(String::from).collect(),
            });
        };
        let built = builder(
            spec,
            &mut BuildContext {
                params,
                prefix,
                source,
                registry: self,
            },
        );
        // a setting out of range, said with the layer it belongs to
        built.map_err(|e| match e {
            Error::InvalidSetting { .. } => Error::LayerSettings {
                layer: prefix.to_string(),
                kind: spec.kind.clone(),
                message: e.to_string(),
            },
            e => e,
        })
    }
}

impl<F: Element> Default for LayerRegistry<F> {
    /// [`LayerRegistry::standard`].
    fn default() -> Self {
        Self::standard()
    }
}

impl<F: Element> Clone for LayerRegistry<F> {
    fn clone(&self) -> Self {
        LayerRegistry {
            builders: self.builders.clone(),
            heads: self.heads.clone(),
        }
    }
}

impl<F: Element> fmt::Debug for LayerRegistry<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.kinds()).finish()
    }
}

/// The settings of a kind that has none: `{}`.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NoSettings {}

/// `leaky_relu`'s settings.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LeakyReluSettings {
    /// The slope for `x < 0`.
    pub(super) slope: f64,
}
