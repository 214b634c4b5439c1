//! The residual basic block of ResNet: two 3×3 convolutions with batch normalisation, and a
//! shortcut around them.

use super::{
    BatchNorm2d, BatchNorm2dConfig, Conv2d, Conv2dConfig, Forward, LayerSpec, Module, PRelu,
    PReluConfig, ParamSource,
};
use crate::{Element, Error, ParamId, Params, Var};
use serde::{Deserialize, Serialize};

/// The activation between a block's two convolutions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockActivation {
    /// `max(x, 0)`.
    Relu,
    /// PReLU with one learned slope per channel (`{prefix}.prelu.weight`).
    Prelu,
}

/// The settings of a [`BasicBlock`] (kind `basic_block`).
///
/// ```
/// use margrad::nn::{BasicBlockConfig, BlockActivation};
/// let c = BasicBlockConfig::new(32, 64).stride(2).activation(BlockActivation::Prelu);
/// assert!(c.has_downsample());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicBlockConfig {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// The first convolution's (and the shortcut's) stride.
    pub stride: usize,
    /// Between the two convolutions.
    pub activation: BlockActivation,
}

impl BasicBlockConfig {
    /// `in_channels → out_channels`, stride 1, ReLU.
    pub fn new(in_channels: usize, out_channels: usize) -> Self {
        BasicBlockConfig {
            in_channels,
            out_channels,
            stride: 1,
            activation: BlockActivation::Relu,
        }
    }
    /// The same with stride `s`.
    pub fn stride(self, stride: usize) -> Self {
        BasicBlockConfig { stride, ..self }
    }
    /// The same with `activation` between the convolutions.
    pub fn activation(self, activation: BlockActivation) -> Self {
        BasicBlockConfig { activation, ..self }
    }

    /// Whether the shortcut is a 1×1 convolution and batch norm (the stride is not 1 or the
    /// channels change), rather than the identity.
    pub fn has_downsample(&self) -> bool {
        self.stride != 1 || self.in_channels != self.out_channels
    }

    fn conv1(&self) -> Conv2dConfig {
        Conv2dConfig::new(self.in_channels, self.out_channels, 3)
            .stride(self.stride)
            .padding(1)
            .without_bias()
    }
    fn conv2(&self) -> Conv2dConfig {
        Conv2dConfig::new(self.out_channels, self.out_channels, 3)
            .padding(1)
            .without_bias()
    }
    fn downsample(&self) -> Conv2dConfig {
        Conv2dConfig::new(self.in_channels, self.out_channels, 1)
            .stride(self.stride)
            .without_bias()
    }

    /// Checks the settings.
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] for zero channels or stride.
    pub fn validate(&self) -> Result<(), Error> {
        self.conv1().validate()?;
        self.conv2().validate()
    }

    /// The stored form of the layer.
    pub fn spec(&self) -> LayerSpec {
        LayerSpec::new(BasicBlock::KIND, self)
    }
}

/// `y = bn2(conv2(act(bn1(conv1(x))))) + shortcut(x)` on `[N, C, H, W]`: `conv1` 3×3 with the
/// block's stride, `conv2` 3×3, both padded by 1 and without bias; the shortcut is `x` itself,
/// or `bn(conv1×1(x))` with the block's stride when the stride is not 1 or the channels change.
/// No activation follows the sum (put one after the block). Tensors are named as torchvision's
/// `BasicBlock`: `conv1.weight`, `bn1.*`, `conv2.weight`, `bn2.*`, `downsample.0.weight`,
/// `downsample.1.*`, and `prelu.weight` with a PReLU.
#[derive(Clone, Debug, PartialEq)]
pub struct BasicBlock {
    conv1: Conv2d,
    bn1: BatchNorm2d,
    prelu: Option<PRelu>,
    conv2: Conv2d,
    bn2: BatchNorm2d,
    downsample: Option<(Conv2d, BatchNorm2d)>,
    config: BasicBlockConfig,
}

impl BasicBlock {
    /// The kind name a [`LayerRegistry`](super::LayerRegistry) knows it by.
    pub const KIND: &'static str = "basic_block";

    /// Adds the block's tensors under `{prefix}.` to `params`, taken from `source`. The caller
    /// has validated `config`.
    pub fn new<F: Element>(
        params: &mut Params<F>,
        prefix: &str,
        config: BasicBlockConfig,
        source: &mut dyn ParamSource<F>,
    ) -> Self {
        let out = config.out_channels;
        let bn = |params: &mut Params<F>, name: &str, source: &mut dyn ParamSource<F>| {
            BatchNorm2d::new(
                params,
                &format!("{prefix}.{name}"),
                BatchNorm2dConfig::new(out),
                source,
            )
        };
        let conv1 = Conv2d::new(params, &format!("{prefix}.conv1"), config.conv1(), source);
        let bn1 = bn(params, "bn1", source);
        let prelu = (config.activation == BlockActivation::Prelu).then(|| {
            PRelu::new(
                params,
                &format!("{prefix}.prelu"),
                PReluConfig::new(out),
                source,
            )
        });
        let conv2 = Conv2d::new(params, &format!("{prefix}.conv2"), config.conv2(), source);
        let bn2 = bn(params, "bn2", source);
        let downsample = config.has_downsample().then(|| {
            let conv = Conv2d::new(
                params,
                &format!("{prefix}.downsample.0"),
                config.downsample(),
                source,
            );
            (conv, bn(params, "downsample.1", source))
        });
        BasicBlock {
            conv1,
            bn1,
            prelu,
            conv2,
            bn2,
            downsample,
            config,
        }
    }

    /// The settings it was built from.
    pub fn config(&self) -> &BasicBlockConfig {
        &self.config
    }

    /// The block's layers, in the order their tensors were added.
    fn layers<F: Element>(&self) -> Vec<&dyn Module<F>> {
        let mut layers: Vec<&dyn Module<F>> = vec![&self.conv1, &self.bn1];
        if let Some(prelu) = &self.prelu {
            layers.push(prelu);
        }
        layers.extend([&self.conv2 as &dyn Module<F>, &self.bn2]);
        if let Some((conv, bn)) = &self.downsample {
            layers.extend([conv as &dyn Module<F>, bn]);
        }
        layers
    }
}

impl<F: Element> Module<F> for BasicBlock {
    /// # Panics
    /// When `x` is not `[N, in_channels, H, W]` with room for the 3×3 windows.
    #[track_caller]
    fn forward<'g>(&self, cx: &mut Forward<'g, '_, F>, x: Var<'g, F>) -> Var<'g, F> {
        let h = self.conv1.forward(cx, x);
        let h = self.bn1.forward(cx, h);
        let h = match &self.prelu {
            Some(prelu) => prelu.forward(cx, h),
            None => h.relu(),
        };
        let h = self.conv2.forward(cx, h);
        let h = self.bn2.forward(cx, h);
        let shortcut = match &self.downsample {
            Some((conv, bn)) => {
                let s = conv.forward(cx, x);
                bn.forward(cx, s)
            }
            None => x,
        };
        h + shortcut
    }

    fn spec(&self) -> LayerSpec {
        self.config.spec()
    }

    fn parameters(&self) -> Vec<ParamId> {
        self.layers::<F>()
            .iter()
            .flat_map(|l| l.parameters())
            .collect()
    }

    fn buffers(&self) -> Vec<ParamId> {
        self.layers::<F>()
            .iter()
            .flat_map(|l| l.buffers())
            .collect()
    }

    /// `[C, H, W] → [O, OH, OW]`: the first convolution's shape (the second keeps it, and so
    /// does the shortcut's 1×1 convolution of the same stride).
    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>, String> {
        let out = self.config.conv1().output_shape(input)?;
        self.config.conv2().output_shape(&out)
    }
}
