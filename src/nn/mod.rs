//! Layers, heads and models.
//!
//! Modules keep [`ParamId`](crate::ParamId)s into a [`Params`](crate::Params) store, named as
//! PyTorch's `nn.Sequential` names them (`embed.0.weight`), and run inside a [`Forward`]
//! context that says whether they are training.

mod cosine_head;
mod forward;
mod layers;
mod mlp;
mod model;

pub use cosine_head::CosineHead;
pub use forward::{BufferUpdates, Forward};
pub use layers::{Activation, BatchNorm1d, Dropout, Init, Linear};
pub use mlp::{Mlp, MlpConfig};
pub use model::{Head, HeadConfig, Model, ModelConfig};

/// The floor of every L2 norm taken by the heads (as `F.normalize`'s default).
pub const NORM_EPS: f64 = 1e-12;

use crate::{Element, SeededRng, Tensor};

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
        }
    }
}
