//! The engine: the tape and its handles ([`Graph`], [`Var`]), every op's forward constructor,
//! and the reverse loop that holds every gradient rule ([`Gradients`]).
//!
//! One reason each to change: `graph.rs` records ops, `backward.rs` runs the chain rule,
//! `elementwise.rs` lists the elementwise ops, one table row each with its derivative, and `custom.rs` is the plug-in
//! point ([`CustomOp`]) through which a fused op defined elsewhere (the margin losses, under
//! `loss/`) joins the tape with its own backward.

mod backward;
mod custom;
mod elementwise;
mod graph;

pub use backward::Gradients;
pub use custom::{CustomOp, InputGrad};
pub use graph::{Graph, ValueRef, Var};
