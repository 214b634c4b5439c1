//! The engine: the tape and its handles ([`Graph`], [`Var`]), every op's forward constructor,
//! and the reverse loop that holds every gradient rule ([`Gradients`]).
//!
//! One reason each to change: `graph.rs` records ops, `backward.rs` runs the chain rule,
//! `elementwise.rs` lists the elementwise ops, one table row each with its derivative, and `custom.rs` is the plug-in
//! point ([`CustomOp`]) through which a fused op defined elsewhere (the margin losses, under
//! `loss/`) joins the tape with its own backward. The ops over NCHW tensors join the tape the
//! same way, each in its own file with its backward beside it: `conv.rs` (conv2d, conv1d),
//! `pool.rs` (max, average and global average pooling), `batch_norm.rs`, `prelu.rs`.

mod backward;
mod batch_norm;
mod conv;
mod custom;
mod elementwise;
mod graph;
mod pool;
mod prelu;

pub use backward::Gradients;
pub use batch_norm::BatchStatistics;
pub use conv::{Conv1dOptions, Conv2dOptions};
pub use custom::{CustomOp, InputGrad};
pub use graph::{Graph, ValueRef, Var};
pub use pool::Pool2dOptions;
