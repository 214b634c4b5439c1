//! The layers: Linear, BatchNorm1d, Dropout, and the activations between them.

use super::{Fill, Forward, ParamSource};
use crate::{Element, ParamId, Params, Tensor, Var};
use rand_distr::{Bernoulli, Distribution};
use serde::{Deserialize, Serialize};

/// How a Linear layer's weights are drawn (biases start at zero).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Init {
    /// Kaiming (He) normal: `N(0, 2/fan_in)`, for ReLU networks.
    KaimingNormal,
    /// Xavier (Glorot) normal: `N(0, 2/(fan_in + fan_out))`, for tanh and linear layers.
    XavierNormal,
}

/// `y = x Wᵀ + b`, with `W` stored `[out, in]` as PyTorch stores it (the transpose is free:
/// [`Var::matmul_nt`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Linear {
    /// `[out, in]`.
    pub weight: ParamId,
    /// `[out]`, if the layer has a bias.
    pub bias: Option<ParamId>,
}

impl Linear {
    /// Adds `{prefix}.weight` (and `{prefix}.bias`) to `params`, drawn from `source`.
    pub fn new<F: Element, S: ParamSource<F> + ?Sized>(
        params: &mut Params<F>,
        prefix: &str,
        inputs: usize,
        outputs: usize,
        bias: bool,
        init: Init,
        source: &mut S,
    ) -> Self {
        let variance = match init {
            Init::KaimingNormal => 2.0 / inputs as f64,
            Init::XavierNormal => 2.0 / (inputs + outputs) as f64,
        };
        let weight = format!("{prefix}.weight");
        let fill = Fill::Normal {
            std: variance.sqrt(),
        };
        let w = source.tensor(&weight, &[outputs, inputs], fill);
        Linear {
            weight: params.add(weight, w),
            bias: bias.then(|| {
                let name = format!("{prefix}.bias");
                let b = source.tensor(&name, &[outputs], Fill::Zeros);
                params.add(name, b)
            }),
        }
    }

    /// `x Wᵀ + b` for `x` of shape `[B, in]`.
    ///
    /// # Panics
    /// When `x` is not `[B, in]`.
    #[track_caller]
    pub fn forward<'g, F: Element>(&self, cx: &Forward<'g, '_, F>, x: Var<'g, F>) -> Var<'g, F> {
        let y = x.matmul_nt(cx.param(self.weight));
        match self.bias {
            Some(b) => y + cx.param(b),
            None => y,
        }
    }
}

impl Linear {
    /// `max(x Wᵀ + b, 0)`: the layer and a ReLU, with the bias and the ReLU fused
    /// ([`Var::add_relu`]); a layer without bias applies the ReLU on its own.
    ///
    /// # Panics
    /// When `x` is not `[B, in]`.
    #[track_caller]
    pub fn forward_relu<'g, F: Element>(
        &self,
        cx: &Forward<'g, '_, F>,
        x: Var<'g, F>,
    ) -> Var<'g, F> {
        let y = x.matmul_nt(cx.param(self.weight));
        match self.bias {
            Some(b) => y.add_relu(cx.param(b)),
            None => y.relu(),
        }
    }
}

/// Batch normalisation over the batch dimension, per feature:
/// `y = (x − μ) / √(σ² + eps) · γ + β`, with the batch's mean and (biased) variance while
/// training, and the running statistics when evaluating. Running statistics follow
/// `r ← (1 − momentum)·r + momentum·batch`, with the unbiased variance, as PyTorch does.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchNorm1d {
    /// γ, `[D]`.
    pub weight: ParamId,
    /// β, `[D]`.
    pub bias: ParamId,
    /// Running mean, `[D]` (a buffer).
    pub running_mean: ParamId,
    /// Running variance, `[D]` (a buffer).
    pub running_var: ParamId,
    /// Added to the variance.
    pub eps: f64,
    /// Weight of the batch in the running statistics.
    pub momentum: f64,
}

impl BatchNorm1d {
    /// Adds `{prefix}.weight`, `.bias`, `.running_mean`, `.running_var` to `params`, drawn
    /// from `source` (γ = 1, β = 0, mean 0, variance 1 when fresh).
    pub fn new<F: Element, S: ParamSource<F> + ?Sized>(
        params: &mut Params<F>,
        prefix: &str,
        features: usize,
        source: &mut S,
    ) -> Self {
        let mut make = |suffix: &str, fill: Fill, trainable: bool| {
            let name = format!("{prefix}.{suffix}");
            let t = source.tensor(&name, &[features], fill);
            if trainable {
                params.add(name, t)
            } else {
                params.add_buffer(name, t)
            }
        };
        BatchNorm1d {
            weight: make("weight", Fill::Ones, true),
            bias: make("bias", Fill::Zeros, true),
            running_mean: make("running_mean", Fill::Zeros, false),
            running_var: make("running_var", Fill::Ones, false),
            eps: 1e-5,
            momentum: 0.1,
        }
    }

    /// Normalises `x` (`[B, D]`); a training pass records the new running statistics.
    ///
    /// # Panics
    /// When `x` is not `[B, D]`.
    #[track_caller]
    pub fn forward<'g, F: Element>(
        &self,
        cx: &mut Forward<'g, '_, F>,
        x: Var<'g, F>,
    ) -> Var<'g, F> {
        let eps = F::from_f64(self.eps);
        let normalised = if cx.is_training() {
            let mean = x.mean_dim(0);
            let centred = x - mean;
            let var = (centred * centred).mean_dim(0);
            self.record_running_stats(cx, &mean.to_tensor(), &var.to_tensor(), x.shape()[0]);
            centred / (var + eps).sqrt()
        } else {
            let (mean, var) = (cx.buffer(self.running_mean), cx.buffer(self.running_var));
            (x - mean) / (var + eps).sqrt()
        };
        normalised * cx.param(self.weight) + cx.param(self.bias)
    }

    fn record_running_stats<F: Element>(
        &self,
        cx: &mut Forward<'_, '_, F>,
        mean: &Tensor<F>,
        var: &Tensor<F>,
        batch: usize,
    ) {
        let momentum = F::from_f64(self.momentum);
        let keep = F::ONE - momentum;
        let unbias = F::from_f64(batch as f64 / (batch.max(2) - 1) as f64);
        let blend = |running: &Tensor<F>, batch_stat: &Tensor<F>, factor: F| {
            Tensor::from_fn(running.shape(), |i| {
                keep * running.data()[i] + momentum * factor * batch_stat.data()[i]
            })
        };
        let params = cx.params();
        let new_mean = blend(params.get(self.running_mean), mean, F::ONE);
        let new_var = blend(params.get(self.running_var), var, unbias);
        cx.update_buffer(self.running_mean, new_mean);
        cx.update_buffer(self.running_var, new_var);
    }
}

/// Zeroes each element with probability `p` while training and scales the rest by
/// `1/(1 − p)`, so that evaluation (the identity) sees the same expected value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dropout {
    /// The probability of dropping an element, in `[0, 1)`.
    pub p: f64,
}

impl Dropout {
    /// `x ⊙ mask / (1 − p)` while training (mask drawn from the pass's generator), `x` otherwise.
    pub fn forward<'g, F: Element>(
        &self,
        cx: &mut Forward<'g, '_, F>,
        x: Var<'g, F>,
    ) -> Var<'g, F> {
        let graph = cx.graph();
        let p = self.p;
        let Some(rng) = cx.rng().filter(|_| p > 0.0) else {
            return x;
        };
        let keep = Bernoulli::new(1.0 - p).expect("p in [0, 1) is checked by the model config");
        let scale = F::from_f64(1.0 / (1.0 - p));
        let mask = Tensor::from_fn(
            &x.shape(),
            |_| if keep.sample(rng) { scale } else { F::ZERO },
        );
        x * graph.constant(mask)
    }
}

/// The nonlinearity between layers.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Activation {
    /// `max(x, 0)`.
    Relu,
    /// `x` for `x > 0`, `slope·x` otherwise.
    LeakyRelu(f64),
    /// `tanh x`.
    Tanh,
    /// `1/(1 + e⁻ˣ)`.
    Sigmoid,
    /// `x`.
    Identity,
}

impl Activation {
    /// Applies the activation.
    pub fn forward<'g, F: Element>(self, x: Var<'g, F>) -> Var<'g, F> {
        match self {
            Activation::Relu => x.relu(),
            Activation::LeakyRelu(slope) => x.leaky_relu(F::from_f64(slope)),
            Activation::Tanh => x.tanh(),
            Activation::Sigmoid => x.sigmoid(),
            Activation::Identity => x,
        }
    }
}
