//! Layers, heads and models, under one contract.
//!
//! # The contract
//!
//! Every layer implements [`Module`]: `forward(cx, x)` runs inside a [`Forward`] context that
//! holds the graph and the parameters and says whether the pass is training (dropout on, batch
//! statistics) or evaluating; `spec()` gives the layer's stored form, a [`LayerSpec`] (its kind
//! and its own settings); `parameters()` and `buffers()` give its tensors' ids, whose names
//! live in [`Params`](crate::Params) and follow PyTorch's `state_dict` (`embed.0.weight`,
//! `embed.1.running_mean`, `head.weight`). Heads implement [`Head`] too: their `forward` gives
//! the class scores without margin, and `loss_and_scores` the training loss beside them.
//!
//! A [`Sequential`] is open: its configuration is data, a [`SequentialConfig`] listing layer
//! specs, and a [`LayerRegistry`] maps each kind name to a builder. Layer `i` owns
//! `{prefix}.{i}.*`, activations and dropout included, as in `nn.Sequential`. A layer followed
//! by a ReLU runs as one call to its [`Module::forward_relu`] (Linear fuses bias and ReLU).
//! [`MlpConfig`] describes the usual MLP in a few fields and turns into a `SequentialConfig`.
//! A [`Model`] is an embedder `Sequential` and a head, both built through one
//! [`LayerRegistry`] (the head from the kind its [`HeadConfig`] names: `linear`, `cosine_head`,
//! `centres_head` or `extended_head`, whose builders a registry may replace); a checkpoint stores its [`ModelConfig`]
//! and rebuilds it through the same builders, each taking its tensors from a [`ParamSource`]
//! (a [`SeededRng`] when fresh, the file's tensors when loading).
//!
//! # Adding a layer kind
//!
//! Implement [`Module`] for the layer and register a builder for its settings type in a
//! [`LayerRegistry`] (see its example); build with [`Model::new_with`] or
//! [`Sequential::new_with`] and load with
//! [`checkpoint::load_with`](crate::checkpoint::load_with). Files that change: one, yours; no
//! enum, configuration or forward pass of the crate is edited.
//!
//! | kind | layer | stored settings |
//! |---|---|---|
//! | `linear` | [`Linear`] | [`LinearConfig`] |
//! | `batch_norm1d` | [`BatchNorm1d`] | [`BatchNorm1dConfig`] |
//! | `dropout` | [`Dropout`] | `{"p": …}` |
//! | `relu`, `leaky_relu`, `tanh`, `sigmoid`, `identity` | [`Activation`] | `{}`, `{"slope": …}` |
//! | `sequential` | [`Sequential`] | [`SequentialConfig`] |
//! | `cosine_head`, `centres_head` | [`CosineHead`], [`CentresHead`] | [`CosineHeadConfig`] |
//! | `extended_head` | [`ExtendedHead`] | [`ExtendedHeadConfig`] |
//! | `conv2d`, `conv1d` | [`Conv2d`], [`Conv1d`] | [`Conv2dConfig`], [`Conv1dConfig`] |
//! | `max_pool2d`, `avg_pool2d` | [`MaxPool2d`], [`AvgPool2d`] | [`Pool2dOptions`](crate::Pool2dOptions) |
//! | `global_avg_pool`, `flatten` | [`GlobalAvgPool`], [`Flatten`] | `{}` |
//! | `unflatten` | [`Unflatten`] | `{"shape": [C, H, W]}` |
//! | `batch_norm2d` | [`BatchNorm2d`] | [`BatchNorm2dConfig`] |
//! | `prelu` | [`PRelu`] | [`PReluConfig`] |
//! | `basic_block` | [`BasicBlock`] | [`BasicBlockConfig`] |
//!
//! # Planes: how layers see NCHW
//!
//! A [`Tensor`] has any rank, and a layer receives whatever its predecessor gives: a batch of
//! feature rows is `[N, D]`, a batch of planes `[N, C, H, W]` (`[N, C, L]` for sequences),
//! row-major, as PyTorch lays them out. The spatial shape travels in the tensor, not in the
//! layers' settings, so a convolution or pooling layer takes any `H×W`. The data sets give
//! rows, so a convolutional embedder begins with an [`Unflatten`] (`[N, 784] → [N, 1, 28, 28]`,
//! which also fixes the embedder's input shape) and reaches the rows again through a
//! [`Flatten`] or a [`GlobalAvgPool`] before its Linear layers.
//!
//! A [`Sequential`] knows the shape of one item at each layer: the first layer that fixes its
//! input ([`Module::input_shape`]: a Linear's `[in]`, an Unflatten's `[C·H·W]`) gives the
//! input's, and each layer states the shape it gives ([`Module::output_shape`]: a convolution
//! `[C, H, W] → [O, OH, OW]`, a flatten `[C, H, W] → [C·H·W]`). A stored configuration whose
//! layers do not fit (a Conv2d taking 8 channels after one giving 4, a Linear whose width is not
//! the flattened size before it, a window larger than its padded input, an image too small for
//! its strides and pools) is refused as an [`Error`](crate::Error) naming the layer when it is
//! built, as are settings that cannot hold (groups that do not divide the channels, a zero
//! stride). Tensors that do not fit at the forward pass (a batch of another shape than the
//! model's input) panic there, naming the op and the shapes.

mod batch_norm2d;
mod centres_head;
mod conv;
mod cosine_head;
mod extended_head;
mod forward;
mod layers;
mod lenet;
mod mlp;
mod model;
mod module;
mod pool;
mod prelu;
mod registry;
mod residual;
mod resnet;
mod sequential;
mod trained_head;

pub use batch_norm2d::{BatchNorm2d, BatchNorm2dConfig};
pub use centres_head::CentresHead;
pub use conv::{Conv1d, Conv1dConfig, Conv2d, Conv2dConfig};
pub use cosine_head::{CosineHead, CosineHeadConfig};
pub use extended_head::{ExtendedHead, ExtendedHeadConfig, subcenter_usage};
pub use forward::{BufferUpdates, Forward};
pub use layers::{Activation, BatchNorm1d, BatchNorm1dConfig, Dropout, Init, Linear, LinearConfig};
pub use lenet::LeNetPlusPlus;
pub use mlp::MlpConfig;
pub use model::{EMBEDDER_PREFIX, EVAL_ROWS, HEAD_PREFIX, HeadConfig, Model, ModelConfig};
pub use module::{Head, LayerSpec, Module};
pub use pool::{AvgPool2d, Flatten, GlobalAvgPool, MaxPool2d, Unflatten};
pub use prelu::{PRelu, PReluConfig};
pub use registry::{BuildContext, LayerRegistry};
pub use residual::{BasicBlock, BasicBlockConfig, BlockActivation};
pub use resnet::ResNetConfig;
pub use sequential::{Sequential, SequentialConfig};
pub use trained_head::TrainedHead;

/// The floor of every L2 norm taken by the heads and embeddings (as `F.normalize`'s default).
pub const NORM_EPS: f64 = 1e-12;

use crate::{Element, SeededRng, Tensor, Var};

/// Rows scaled to unit length, `x̂_i = x_i / max(‖x_i‖₂, ε)` with `ε =` [`NORM_EPS`]: the
/// embedding a verification score compares, and the features a [`CosineHead`] compares with
/// its centres.
pub fn l2_normalize<'g, F: Element>(x: Var<'g, F>) -> Var<'g, F> {
    x.normalize_rows(F::from_f64(NORM_EPS))
}

/// How a freshly made tensor is filled.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fill {
    /// `N(0, std²)` elements.
    Normal {
        /// The standard deviation.
        std: f64,
    },
    /// Zeros.
    Zeros,
    /// Ones.
    Ones,
    /// Every element this value (PReLU's initial slope).
    Constant(f64),
}

/// Where a module's tensors come from when it is built: drawn fresh (a [`SeededRng`] is a
/// source), or taken from a checkpoint, which checks each name and shape. Every constructor
/// in this module takes one, so a checkpoint rebuilds a model through the same code that made
/// it.
pub trait ParamSource<F: Element> {
    /// The tensor called `name`, of `shape`.
    fn tensor(&mut self, name: &str, shape: &[usize], fill: Fill) -> Tensor<F>;
}

impl<F: Element> ParamSource<F> for SeededRng {
    fn tensor(&mut self, _name: &str, shape: &[usize], fill: Fill) -> Tensor<F> {
        match fill {
            Fill::Normal { std } => Tensor::randn(shape, 0.0, std, self),
            Fill::Zeros => Tensor::zeros(shape),
            Fill::Ones => Tensor::ones(shape),
            Fill::Constant(v) => Tensor::full(shape, F::from_f64(v)),
        }
    }
}
