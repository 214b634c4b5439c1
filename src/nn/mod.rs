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
