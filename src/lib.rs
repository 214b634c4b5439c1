//! # margrad
//!
//! A reverse-mode automatic differentiation engine for training embedding models with
//! margin-based softmax losses (AM-Softmax / CosFace and its family), written from scratch.
//!
//! - [`Tensor`]: contiguous row-major data with a shape; `f32` for training, `f64` for
//!   gradient checks ([`Element`]).
//! - [`Graph`] and [`Var`]: a tape built fresh for each step; ops are methods on `Var`
//!   (matmul, elementwise, reductions, fused L2 normalisation and log-softmax, ...).
//! - [`Params`]: named parameters that enter a graph without being copied; backward returns
//!   their [`Gradients`] by [`ParamId`].
//! - [`loss`]: the margin-softmax family (softmax, NormFace, AM-Softmax, Enhanced AM-Softmax,
//!   ArcFace, combined margins) as one fused op with a closed-form backward; sub-centres per
//!   class in front of any of them (sub-center ArcFace), SphereFace2, and the sample-adaptive
//!   margins AdaFace, MagFace, CurricularFace and ElasticFace.
//! - [`nn`]: one [`nn::Module`] contract for every layer and head; an open [`nn::Sequential`]
//!   whose configuration is data (a [`nn::LayerRegistry`] rebuilds it, your own layer kinds
//!   included); [`nn::CosineHead`], class centres normalised inside, for the margin losses.
//! - [`optim`]: SGD, Adam, AdamW, schedules; [`checkpoint`]: checked files and safetensors.
//! - [`metrics`]: closed-set accuracy, verification, embedding geometry; [`train`]: the
//!   trainer behind the examples.
//! - [`gradcheck`](mod@gradcheck): check any function's gradients against finite differences.
//! - [`data`]: the UCI digits shipped inside the crate.
//! - [`distributed`]: training over several processes (MPI behind the `mpi` feature): data
//!   parallelism and a class-parallel margin head.
//!
//! # Layers
//!
//! Dependencies run one way, from the bottom up; a module never uses one above it
//! (`tests/layering.rs` checks every `crate::` path):
//!
//! 1. foundations: [`Error`], [`Element`], [`profile`], [`SeededRng`]; files read bounded
//!    (nothing allocated by a length a file claims before the claim is checked) and written
//!    atomically;
//! 2. kernels: plain functions over slices, which know no tensor (private);
//! 3. storage: the buffer pool, [`Tensor`], [`Labels`], [`Params`];
//! 4. the engine: [`Graph`], [`Var`], backward ([`Gradients`]), fused-op plug-in
//!    ([`CustomOp`]); and [`gradcheck`](mod@gradcheck) on top of it;
//! 5. [`loss`], then [`nn`], then [`optim`];
//! 6. around a model: [`data`], [`metrics`], [`plot`], [`checkpoint`], and [`distributed`]
//!    (other processes);
//! 7. [`train`], which wires them together.
//!
//! A linear classifier's gradient, the whole loop:
//!
//! ```
//! use margrad::{Graph, Labels, Params, Tensor};
//! use rand::SeedableRng;
//!
//! let mut rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(0);
//! let mut params = Params::<f32>::new();
//! let w = params.add("weight", Tensor::randn(&[4, 3], 0.0, 0.1, &mut rng));
//! let b = params.add("bias", Tensor::zeros(&[3]));
//!
//! let x = Tensor::randn(&[8, 4], 0.0, 1.0, &mut rng);
//! let labels = Labels::new(vec![0, 1, 2, 0, 1, 2, 0, 1], 3).unwrap();
//!
//! let g = Graph::new();
//! let logits = g.constant(x).matmul(g.param(&params, w)) + g.param(&params, b);
//! let loss = -logits.log_softmax().pick(&labels).mean(); // cross-entropy
//! let grads = loss.backward();
//! assert_eq!(grads.param(w).unwrap().shape(), &[4, 3]);
//! ```

pub mod checkpoint;
pub mod data;
pub mod distributed;
mod element;
mod engine;
mod error;
mod files;
pub mod gradcheck;
mod kernels;
mod labels;
pub mod loss;
pub mod metrics;
pub mod nn;
pub mod optim;
mod params;
pub mod plot;
mod pool;
pub mod profile;
mod rng;
mod tensor;
pub mod train;

pub use element::Element;
pub use engine::{
    BatchStatistics, Conv1dOptions, Conv2dOptions, CustomOp, Gradients, Graph, InputGrad,
    Pool2dOptions, ValueRef, Var,
};
pub use error::Error;
pub use gradcheck::{GradcheckError, GradcheckOptions, GradcheckReport, gradcheck, gradcheck_with};
pub use labels::Labels;
pub use params::{ParamId, Params};
pub use rng::{SeededRng, seeded_rng};
pub use tensor::{Tensor, numel};

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
