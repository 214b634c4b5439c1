//! Convolution layers: [`Conv2d`] over `[N, C, H, W]` and [`Conv1d`] over `[N, C, L]`, with
//! weights stored as PyTorch stores them (`[O, C/groups, kh, kw]`, `[O, C/groups, k]`).

use super::module::{check_channels, item_dims};
use super::{Fill, Forward, Init, LayerSpec, Module, ParamSource};
use crate::kernels::Window;
use crate::{Conv1dOptions, Conv2dOptions, Element, Error, ParamId, Params, Var};
use serde::{Deserialize, Serialize};

/// The settings of a [`Conv2d`] layer (kind `conv2d`): PyTorch's `nn.Conv2d` arguments.
///
/// ```
/// use margrad::nn::Conv2dConfig;
/// let c = Conv2dConfig::new(32, 64, 3).stride(2).padding(1).without_bias();
/// assert_eq!((c.kernel, c.stride, c.padding, c.bias), ([3, 3], [2, 2], [1, 1], false));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conv2dConfig {
    /// Input channels `C`.
    pub in_channels: usize,
    /// Output channels `O`.
    pub out_channels: usize,
    /// The kernel, `[kh, kw]`.
    pub kernel: [usize; 2],
    /// The step between windows.
    pub stride: [usize; 2],
    /// Zeros added on both sides of each axis.
    pub padding: [usize; 2],
    /// The spacing of the kernel's taps.
    pub dilation: [usize; 2],
    /// Channels split into this many independent groups (`C` for depthwise).
    pub groups: usize,
    /// Whether the layer adds a bias per output channel.
    pub bias: bool,
    /// How the weights are drawn (fan-in `C/groups·kh·kw`).
    pub init: Init,
}

impl Conv2dConfig {
    /// `in_channels → out_channels` with a `k×k` kernel: stride 1, no padding, no dilation,
    /// one group, a bias, Kaiming-normal weights.
    pub fn new(in_channels: usize, out_channels: usize, k: usize) -> Self {
        Conv2dConfig {
            in_channels,
            out_channels,
            kernel: [k, k],
            stride: [1, 1],
            padding: [0, 0],
            dilation: [1, 1],
            groups: 1,
            bias: true,
            init: Init::KaimingNormal,
        }
    }
    /// The same with stride `s` on both axes.
    pub fn stride(self, s: usize) -> Self {
        Conv2dConfig {
            stride: [s, s],
            ..self
        }
    }
    /// The same with padding `p` on both axes.
    pub fn padding(self, p: usize) -> Self {
        Conv2dConfig {
            padding: [p, p],
            ..self
        }
    }
    /// The same with dilation `d` on both axes.
    pub fn dilation(self, d: usize) -> Self {
        Conv2dConfig {
            dilation: [d, d],
            ..self
        }
    }
    /// The same with `groups` groups.
    pub fn groups(self, groups: usize) -> Self {
        Conv2dConfig { groups, ..self }
    }
    /// The same without a bias.
    pub fn without_bias(self) -> Self {
        Conv2dConfig {
            bias: false,
            ..self
        }
    }

    /// The op's options.
    pub fn options(&self) -> Conv2dOptions {
        Conv2dOptions {
            stride: self.stride,
            padding: self.padding,
            dilation: self.dilation,
            groups: self.groups,
        }
    }

    /// Checks the settings.
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] for zero channels, kernel, stride, dilation or groups, groups
    /// that do not divide both channel counts, padding past the window's span, or sizes whose
    /// product overflows.
    pub fn validate(&self) -> Result<(), Error> {
        let positive = |name, v: usize| Error::check(name, v as f64, v > 0, "positive");
        positive("Conv in_channels", self.in_channels)?;
        positive("Conv out_channels", self.out_channels)?;
        for axis in 0..2 {
            positive("Conv kernel", self.kernel[axis])?;
            positive("Conv stride", self.stride[axis])?;
            positive("Conv dilation", self.dilation[axis])?;
            // past the window's span, padding adds rows and columns that see only zeros
            let span = self.dilation[axis].saturating_mul(self.kernel[axis] - 1);
            Error::check(
                "Conv padding",
                self.padding[axis] as f64,
                self.padding[axis] <= span,
                "at most the window's span, dilation·(kernel − 1)",
            )?;
        }
        positive("Conv groups", self.groups)?;
        let g = self.groups;
        Error::check(
            "Conv groups",
            g as f64,
            self.in_channels.is_multiple_of(g) && self.out_channels.is_multiple_of(g),
            "a divisor of both channel counts",
        )?;
        let weights = [
            self.out_channels,
            self.in_channels / g,
            self.kernel[0],
            self.kernel[1],
        ]
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d));
        Error::check(
            "Conv out_channels",
            self.out_channels as f64,
            weights.is_some(),
            "small enough for the weight's element count to be representable",
        )
    }

    /// The weight's shape, `[O, C/groups, kh, kw]`.
    /// The shape of one output item given one input item `[C, H, W]`:
    /// `[O, OH, OW]` with `OH = ⌊(H + 2p − d(kh − 1) − 1)/s⌋ + 1` (likewise `OW`).
    ///
    /// # Errors
    /// The reason, as a sentence, when the item is not `[C, H, W]` with `C = in_channels`, or
    /// the dilated kernel is larger than the padded input.
    pub fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>, String> {
        Ok(self
            .plane_output(item_dims(input, "planes [C, H, W]")?)?
            .to_vec())
    }

    fn plane_output(&self, [c, h, w]: [usize; 3]) -> Result<[usize; 3], String> {
        check_channels(self.in_channels, c)?;
        let window = Window {
            input: [h, w],
            kernel: self.kernel,
            stride: self.stride,
            padding: self.padding,
            dilation: self.dilation,
        };
        match window.output() {
            Some([oh, ow]) => Ok([self.out_channels, oh, ow]),
            _ => Err(format!(
                "its kernel {:?} (dilation {:?}) is larger than its {h}×{w} input padded by {:?}",
                self.kernel, self.dilation, self.padding
            )),
        }
    }

    fn weight_shape(&self) -> [usize; 4] {
        let [kh, kw] = self.kernel;
        [self.out_channels, self.in_channels / self.groups, kh, kw]
    }

    /// The stored form of the layer.
    pub fn spec(&self) -> LayerSpec {
        LayerSpec::new(Conv2d::KIND, self)
    }
}

/// `{prefix}.weight` of `shape` drawn as `init` says (fan-in: everything but dimension 0;
/// fan-out: everything but dimension 1), and `{prefix}.bias` (`[O]`, zeros) when asked.
fn add_conv_params<F: Element>(
    params: &mut Params<F>,
    prefix: &str,
    shape: &[usize],
    init: Init,
    bias: bool,
    source: &mut dyn ParamSource<F>,
) -> (ParamId, Option<ParamId>) {
    let receptive: f64 = shape[2..].iter().map(|&d| d as f64).product();
    let (fan_in, fan_out) = (shape[1] as f64 * receptive, shape[0] as f64 * receptive);
    let variance = match init {
        Init::KaimingNormal => 2.0 / fan_in,
        Init::XavierNormal => 2.0 / (fan_in + fan_out),
    };
    let name = format!("{prefix}.weight");
    let w = source.tensor(
        &name,
        shape,
        Fill::Normal {
            std: variance.sqrt(),
        },
    );
    let weight = params.add(name, w);
    let bias = bias.then(|| {
        let name = format!("{prefix}.bias");
        let b = source.tensor(&name, &shape[..1], Fill::Zeros);
        params.add(name, b)
    });
    (weight, bias)
}

/// A 2-D convolution layer, `y = conv2d(x, W) + b` ([`Var::conv2d`]) for `x` of shape
/// `[N, C, H, W]`; `W` is `[O, C/groups, kh, kw]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Conv2d {
    /// `[O, C/groups, kh, kw]`.
    pub weight: ParamId,
    /// `[O]`, if the layer has a bias.
    pub bias: Option<ParamId>,
    config: Conv2dConfig,
}

impl Conv2d {
    /// The kind name a [`LayerRegistry`](super::LayerRegistry) knows it by.
    pub const KIND: &'static str = "conv2d";

    /// Adds `{prefix}.weight` and, with a bias, `{prefix}.bias` to `params`, taken from
    /// `source`. The caller has validated `config`.
    pub fn new<F: Element>(
        params: &mut Params<F>,
        prefix: &str,
        config: Conv2dConfig,
        source: &mut dyn ParamSource<F>,
    ) -> Self {
        let shape = config.weight_shape();
        let (weight, bias) =
            add_conv_params(params, prefix, &shape, config.init, config.bias, source);
        Conv2d {
            weight,
            bias,
            config,
        }
    }

    /// The settings it was built from.
    pub fn config(&self) -> &Conv2dConfig {
        &self.config
    }
}

impl<F: Element> Module<F> for Conv2d {
    /// The convolution of `x` (`[N, C, H, W]`).
    ///
    /// # Panics
    /// As [`Var::conv2d`], when `x` does not fit.
    #[track_caller]
    fn forward<'g>(&self, cx: &mut Forward<'g, '_, F>, x: Var<'g, F>) -> Var<'g, F> {
        x.conv2d(
            cx.param(self.weight),
            self.bias.map(|b| cx.param(b)),
            self.config.options(),
        )
    }

    fn spec(&self) -> LayerSpec {
        self.config.spec()
    }

    fn parameters(&self) -> Vec<ParamId> {
        std::iter::once(self.weight).chain(self.bias).collect()
    }

    /// Unknown: the output is `[N, O, OH, OW]`, not a width.
    /// `[C, H, W] → [O, OH, OW]`.
    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>, String> {
        self.config.output_shape(input)
    }
}

/// The settings of a [`Conv1d`] layer (kind `conv1d`): PyTorch's `nn.Conv1d` arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conv1dConfig {
    /// Input channels `C`.
    pub in_channels: usize,
    /// Output channels `O`.
    pub out_channels: usize,
    /// The kernel's length.
    pub kernel: usize,
    /// The step between windows, the zeros added on both sides, the spacing of the taps, and
    /// the number of groups.
    pub options: Conv1dOptions,
    /// Whether the layer adds a bias per output channel.
    pub bias: bool,
    /// How the weights are drawn.
    pub init: Init,
}

impl Conv1dConfig {
    /// `in_channels → out_channels` with a kernel of `k`: stride 1, no padding, no dilation,
    /// one group, a bias, Kaiming-normal weights.
    pub fn new(in_channels: usize, out_channels: usize, k: usize) -> Self {
        Conv1dConfig {
            in_channels,
            out_channels,
            kernel: k,
            options: Conv1dOptions::default(),
            bias: true,
            init: Init::KaimingNormal,
        }
    }

    /// The same convolution as a [`Conv2dConfig`] over planes of height 1: one set of checks.
    fn as_2d(&self) -> Conv2dConfig {
        let o = self.options;
        Conv2dConfig {
            in_channels: self.in_channels,
            out_channels: self.out_channels,
            kernel: [1, self.kernel],
            stride: [1, o.stride],
            padding: [0, o.padding],
            dilation: [1, o.dilation],
            groups: o.groups,
            bias: self.bias,
            init: self.init,
        }
    }

    /// Checks the settings.
    ///
    /// # Errors
    /// As [`Conv2dConfig::validate`].
    pub fn validate(&self) -> Result<(), Error> {
        self.as_2d().validate()
    }

    /// The stored form of the layer.
    pub fn spec(&self) -> LayerSpec {
        LayerSpec::new(Conv1d::KIND, self)
    }
}

/// A 1-D convolution layer, `y = conv1d(x, W) + b` ([`Var::conv1d`]) for `x` of shape
/// `[N, C, L]`; `W` is `[O, C/groups, k]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Conv1d {
    /// `[O, C/groups, k]`.
    pub weight: ParamId,
    /// `[O]`, if the layer has a bias.
    pub bias: Option<ParamId>,
    config: Conv1dConfig,
}

impl Conv1d {
    /// The kind name a [`LayerRegistry`](super::LayerRegistry) knows it by.
    pub const KIND: &'static str = "conv1d";

    /// Adds `{prefix}.weight` and, with a bias, `{prefix}.bias` to `params`, taken from
    /// `source`. The caller has validated `config`.
    pub fn new<F: Element>(
        params: &mut Params<F>,
        prefix: &str,
        config: Conv1dConfig,
        source: &mut dyn ParamSource<F>,
    ) -> Self {
        let shape = [
            config.out_channels,
            config.in_channels / config.options.groups,
            config.kernel,
        ];
        let (weight, bias) =
            add_conv_params(params, prefix, &shape, config.init, config.bias, source);
        Conv1d {
            weight,
            bias,
            config,
        }
    }

    /// The settings it was built from.
    pub fn config(&self) -> &Conv1dConfig {
        &self.config
    }
}

impl<F: Element> Module<F> for Conv1d {
    /// The convolution of `x` (`[N, C, L]`).
    ///
    /// # Panics
    /// As [`Var::conv1d`], when `x` does not fit.
    #[track_caller]
    fn forward<'g>(&self, cx: &mut Forward<'g, '_, F>, x: Var<'g, F>) -> Var<'g, F> {
        x.conv1d(
            cx.param(self.weight),
            self.bias.map(|b| cx.param(b)),
            self.config.options,
        )
    }

    fn spec(&self) -> LayerSpec {
        self.config.spec()
    }

    fn parameters(&self) -> Vec<ParamId> {
        std::iter::once(self.weight).chain(self.bias).collect()
    }

    /// Unknown: the output is `[N, O, OL]`, whose last dimension is a length.
    /// `[C, L] → [O, OL]`.
    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>, String> {
        let [c, l] = item_dims(input, "sequences [C, L]")?;
        let [o, _, ol] = self.config.as_2d().plane_output([c, 1, l])?;
        Ok(vec![o, ol])
    }
}
