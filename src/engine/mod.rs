//! The engine: the tape and its handles ([`Graph`], [`Var`]), every op's forward constructor,
//! and the reverse loop that holds every gradient rule ([`Gradients`]).
//!
//! Three files, one reason each to change: `graph.rs` records ops, `backward.rs` runs the
//! chain rule, `ops.rs` lists the elementwise ops with their derivatives.

mod backward;
mod graph;
pub(crate) mod ops;

pub use backward::Gradients;
pub use graph::{Graph, ValueRef, Var};
