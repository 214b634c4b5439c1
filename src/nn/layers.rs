//! The layers: Linear, BatchNorm1d, Dropout, and the activations between them.

use super::registry::{LeakyReluSettings, NoSettings};
use super::{Fill, Forward, Head, LayerSpec, Module, ParamSource};
use crate::loss::softmax_cross_entropy;
use crate::{Element, Error, Labels, ParamId, Params, Tensor, Var};
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

/// The settings of a [`Linear`] layer (kind `linear`).
///
/// ```
/// use margrad::nn::{Init, LinearConfig};
/// let c = LinearConfig::new(784, 256).without_bias().with_init(Init::XavierNormal);
/// assert_eq!((c.inputs, c.outputs, c.bias, c.init), (784, 256, false, Init::XavierNormal));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinearConfig {
    /// Input width (`in_features`).
    pub inputs: usize,
    /// Output width (`out_features`).
    pub outputs: usize,
    /// Whether the layer adds a bias `b`.
    pub bias: bool,
    /// How `W` is drawn.
    pub init: Init,
}

impl LinearConfig {
    /// `inputs → outputs`, with a bias, Kaiming-normal weights.
    pub fn new(inputs: usize, outputs: usize) -> Self {
        LinearConfig {
            inputs,
            outputs,
            bias: true,
            init: Init::KaimingNormal,
        }
    }

    /// The same layer without a bias.
    pub fn without_bias(self) -> Self {
        LinearConfig {
            bias: false,
            ..self
        }
    }

    /// The same layer with weights drawn by `init`.
    pub fn with_init(self, init: Init) -> Self {
        LinearConfig { init, ..self }
    }

    /// Checks the widths.
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] for a width of zero.
    pub fn validate(&self) -> Result<(), Error> {
        Error::check(
            "Linear inputs",
            self.inputs as f64,
            self.inputs > 0,
            "positive",
        )?;
        Error::check(
            "Linear outputs",
            self.outputs as f64,
            self.outputs > 0,
            "positive",
        )
    }

    /// The stored form of the layer.
    pub fn spec(&self) -> LayerSpec {
        LayerSpec::new(Linear::KIND, self)
    }
}

/// `y = x Wᵀ + b`, with `W` stored `[out, in]` as PyTorch stores it (the transpose is free:
/// [`Var::matmul_nt`]). As a [`Head`], a linear classifier trained with softmax cross-entropy
/// on the logits `y`.
#[derive(Clone, Debug, PartialEq)]
pub struct Linear {
    /// `[out, in]`.
    pub weight: ParamId,
    /// `[out]`, if the layer has a bias.
    pub bias: Option<ParamId>,
    config: LinearConfig,
}

impl Linear {
    /// The kind name a [`LayerRegistry`](super::LayerRegistry) knows it by.
    pub const KIND: &'static str = "linear";

    /// Adds `{prefix}.weight` (`[out, in]`, drawn as `config.init` says when fresh) and, with
    /// a bias, `{prefix}.bias` (`[out]`, zeros when fresh) to `params`, taken from `source`.
    pub fn new<F: Element>(
        params: &mut Params<F>,
        prefix: &str,
        config: LinearConfig,
        source: &mut dyn ParamSource<F>,
    ) -> Self {
        let LinearConfig {
            inputs, outputs, ..
        } = config;
        let variance = match config.init {
            Init::KaimingNormal => 2.0 / inputs as f64,
            // in f64: widths read from a file may be anything, their sum must not overflow
            Init::XavierNormal => 2.0 / (inputs as f64 + outputs as f64),
        };
        let weight = format!("{prefix}.weight");
        let fill = Fill::Normal {
            std: variance.sqrt(),
        };
        let w = source.tensor(&weight, &[outputs, inputs], fill);
        Linear {
            weight: params.add(weight, w),
            bias: config.bias.then(|| {
                let name = format!("{prefix}.bias");
                let b = source.tensor(&name, &[outputs], Fill::Zeros);
                params.add(name, b)
            }),
            config,
        }
    }

    /// The settings it was built from.
    pub fn config(&self) -> &LinearConfig {
        &self.config
    }
}

impl<F: Element> Module<F> for Linear {
    /// `x Wᵀ + b` for `x` of shape `[B, in]`.
    ///
    /// # Panics
    /// When `x` is not `[B, in]`.
    #[track_caller]
    fn forward<'g>(&self, cx: &mut Forward<'g, '_, F>, x: Var<'g, F>) -> Var<'g, F> {
        let y = x.matmul_nt(cx.param(self.weight));
        match self.bias {
            Some(b) => y + cx.param(b),
            None => y,
        }
    }

    /// `max(x Wᵀ + b, 0)`: the layer and a ReLU, with the bias and the ReLU fused
    /// ([`Var::add_relu`]); a layer without bias applies the ReLU on its own.
    ///
    /// # Panics
    /// When `x` is not `[B, in]`.
    #[track_caller]
    fn forward_relu<'g>(&self, cx: &mut Forward<'g, '_, F>, x: Var<'g, F>) -> Var<'g, F> {
        let y = x.matmul_nt(cx.param(self.weight));
        match self.bias {
            Some(b) => y.add_relu(cx.param(b)),
            None => y.relu(),
        }
    }

    fn spec(&self) -> LayerSpec {
        self.config.spec()
    }

    fn parameters(&self) -> Vec<ParamId> {
        std::iter::once(self.weight).chain(self.bias).collect()
    }

    fn input_shape(&self) -> Option<Vec<usize>> {
        Some(vec![self.config.inputs])
    }

    /// `[in] → [out]`.
    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>, String> {
        rows_of(self.config.inputs, input)?;
        Ok(vec![self.config.outputs])
    }
}

impl<F: Element> Head<F> for Linear {
    /// Softmax cross-entropy of the logits `z = x Wᵀ + b`:
    /// `L = −(1/B) Σ_i log softmax(z_i)_{y_i}`, and the logits.
    fn loss_and_scores<'g>(
        &self,
        cx: &mut Forward<'g, '_, F>,
        features: Var<'g, F>,
        labels: &Labels,
    ) -> Result<(Var<'g, F>, Var<'g, F>), Error> {
        let logits = self.forward(cx, features);
        Ok((softmax_cross_entropy(logits, labels)?, logits))
    }
}

/// The settings of a [`BatchNorm1d`] layer (kind `batch_norm1d`), PyTorch's defaults from
/// [`BatchNorm1dConfig::new`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchNorm1dConfig {
    /// The number of features `D` (`num_features`).
    pub features: usize,
    /// Added to the variance (`1e-5`).
    pub eps: f64,
    /// Weight of the batch in the running statistics (`0.1`).
    pub momentum: f64,
}

impl BatchNorm1dConfig {
    /// `features` features, `eps = 1e-5`, `momentum = 0.1`.
    pub fn new(features: usize) -> Self {
        BatchNorm1dConfig {
            features,
            eps: 1e-5,
            momentum: 0.1,
        }
    }

    /// Checks the settings for a layer of element type `F`.
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] for zero features, an `eps` that is not positive and finite in
    /// `F` (1e-50 is 0 in f32, and would divide a constant feature by zero), or a momentum
    /// outside `[0, 1]`.
    pub fn validate<F: Element>(&self) -> Result<(), Error> {
        let names = [
            "BatchNorm1d features",
            "BatchNorm1d eps",
            "BatchNorm1d momentum",
        ];
        check_batch_norm::<F>(names, self.features, self.eps, self.momentum)
    }

    /// The stored form of the layer.
    pub fn spec(&self) -> LayerSpec {
        LayerSpec::new(BatchNorm1d::KIND, self)
    }
}

/// The settings of a batch norm of either kind, in element type `F`, each named by `names`
/// (the count, eps, momentum): a positive count, an `eps` positive and finite in `F`, a
/// momentum in `[0, 1]`.
pub(super) fn check_batch_norm<F: Element>(
    names: [&'static str; 3],
    count: usize,
    eps: f64,
    momentum: f64,
) -> Result<(), Error> {
    Error::check(names[0], count as f64, count > 0, "positive")?;
    let in_f = F::from_f64(eps);
    Error::check(
        names[1],
        eps,
        in_f > F::ZERO && in_f.is_finite(),
        "positive and finite in the element type",
    )?;
    Error::check(
        names[2],
        momentum,
        (0.0..=1.0).contains(&momentum),
        "in [0, 1]",
    )
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
    config: BatchNorm1dConfig,
}

impl BatchNorm1d {
    /// The kind name a [`LayerRegistry`](super::LayerRegistry) knows it by.
    pub const KIND: &'static str = "batch_norm1d";

    /// Adds `{prefix}.weight`, `.bias`, `.running_mean`, `.running_var` (`[D]` each) to
    /// `params`, taken from `source` (γ = 1, β = 0, mean 0, variance 1 when fresh).
    pub fn new<F: Element>(
        params: &mut Params<F>,
        prefix: &str,
        config: BatchNorm1dConfig,
        source: &mut dyn ParamSource<F>,
    ) -> Self {
        let [weight, bias, running_mean, running_var] =
            batch_norm_tensors(params, prefix, config.features, source);
        BatchNorm1d {
            weight,
            bias,
            running_mean,
            running_var,
            config,
        }
    }

    /// The settings it was built from.
    pub fn config(&self) -> &BatchNorm1dConfig {
        &self.config
    }
}

/// A batch norm's tensors over `count` features or channels, in PyTorch's order and names:
/// `{prefix}.weight` (γ = 1), `.bias` (β = 0), and the buffers `.running_mean` (0) and
/// `.running_var` (1), taken from `source`.
pub(super) fn batch_norm_tensors<F: Element>(
    params: &mut Params<F>,
    prefix: &str,
    count: usize,
    source: &mut dyn ParamSource<F>,
) -> [ParamId; 4] {
    let mut make = |suffix: &str, fill: Fill, trainable: bool| {
        let name = format!("{prefix}.{suffix}");
        let t = source.tensor(&name, &[count], fill);
        if trainable {
            params.add(name, t)
        } else {
            params.add_buffer(name, t)
        }
    };
    [
        make("weight", Fill::Ones, true),
        make("bias", Fill::Zeros, true),
        make("running_mean", Fill::Zeros, false),
        make("running_var", Fill::Ones, false),
    ]
}

/// Records a training pass's statistics in a batch norm's running buffers, as PyTorch does:
/// `r ← (1 − momentum)·r + momentum·batch`, the variance made unbiased (`·M/(M − 1)`) over the
/// `count` values each statistic was taken over.
pub(super) fn record_running_stats<F: Element>(
    cx: &mut Forward<'_, '_, F>,
    [running_mean, running_var]: [ParamId; 2],
    [mean, var]: [&Tensor<F>; 2],
    count: usize,
    momentum: f64,
) {
    let momentum = F::from_f64(momentum);
    let keep = F::ONE - momentum;
    let unbias = F::from_f64(count as f64 / (count.max(2) - 1) as f64);
    let blend = |running: &Tensor<F>, batch_stat: &Tensor<F>, factor: F| {
        Tensor::from_fn(running.shape(), |i| {
            keep * running.data()[i] + momentum * factor * batch_stat.data()[i]
        })
    };
    let params = cx.params();
    let new_mean = blend(params.get(running_mean), mean, F::ONE);
    let new_var = blend(params.get(running_var), var, unbias);
    cx.update_buffer(running_mean, new_mean);
    cx.update_buffer(running_var, new_var);
}

impl<F: Element> Module<F> for BatchNorm1d {
    /// Normalises `x` (`[B, D]`); a training pass records the new running statistics.
    ///
    /// # Panics
    /// When `x` is not `[B, D]`.
    #[track_caller]
    fn forward<'g>(&self, cx: &mut Forward<'g, '_, F>, x: Var<'g, F>) -> Var<'g, F> {
        let eps = F::from_f64(self.config.eps);
        let normalised = if cx.is_training() {
            let mean = x.mean_dim(0);
            let centred = x - mean;
            let var = (centred * centred).mean_dim(0);
            record_running_stats(
                cx,
                [self.running_mean, self.running_var],
                [&mean.to_tensor(), &var.to_tensor()],
                x.shape()[0],
                self.config.momentum,
            );
            centred / (var + eps).sqrt()
        } else {
            let (mean, var) = (cx.buffer(self.running_mean), cx.buffer(self.running_var));
            (x - mean) / (var + eps).sqrt()
        };
        normalised * cx.param(self.weight) + cx.param(self.bias)
    }

    fn spec(&self) -> LayerSpec {
        self.config.spec()
    }

    fn parameters(&self) -> Vec<ParamId> {
        vec![self.weight, self.bias]
    }

    fn buffers(&self) -> Vec<ParamId> {
        vec![self.running_mean, self.running_var]
    }

    fn input_shape(&self) -> Option<Vec<usize>> {
        Some(vec![self.config.features])
    }

    /// `[D] → [D]`.
    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>, String> {
        rows_of(self.config.features, input)?;
        Ok(input.to_vec())
    }
}

/// Zeroes each element with probability `p` while training and scales the rest by
/// `1/(1 − p)`, so that evaluation (the identity) sees the same expected value. Its own
/// settings (kind `dropout`, `{"p": 0.1}`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dropout {
    /// The probability of dropping an element, in `[0, 1)`.
    pub p: f64,
}

impl Dropout {
    /// The kind name a [`LayerRegistry`](super::LayerRegistry) knows it by.
    pub const KIND: &'static str = "dropout";

    /// Checks the probability.
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] for `p` outside `[0, 1)`.
    pub fn validate(&self) -> Result<(), Error> {
        Error::check("dropout", self.p, (0.0..1.0).contains(&self.p), "in [0, 1)")
    }

    /// The stored form of the layer.
    pub fn spec(&self) -> LayerSpec {
        LayerSpec::new(Self::KIND, self)
    }
}

impl<F: Element> Module<F> for Dropout {
    /// `x ⊙ mask / (1 − p)` while training (mask drawn from the pass's generator), `x` otherwise.
    ///
    /// # Panics
    /// When `p` is outside `[0, 1)` (a registry checks it; a hand-made `Dropout` may not).
    fn forward<'g>(&self, cx: &mut Forward<'g, '_, F>, x: Var<'g, F>) -> Var<'g, F> {
        let graph = cx.graph();
        let p = self.p;
        let Some(rng) = cx.rng().filter(|_| p > 0.0) else {
            return x;
        };
        let keep = Bernoulli::new(1.0 - p).expect("dropout p must be in [0, 1)");
        let scale = F::from_f64(1.0 / (1.0 - p));
        let mask = Tensor::from_fn(
            &x.shape(),
            |_| if keep.sample(rng) { scale } else { F::ZERO },
        );
        x * graph.constant(mask)
    }

    fn spec(&self) -> LayerSpec {
        Dropout::spec(self)
    }
}

/// The element-wise nonlinearities, each a layer of its own kind (`relu`, `leaky_relu`,
/// `tanh`, `sigmoid`, `identity`).
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
    /// The kind name a [`LayerRegistry`](super::LayerRegistry) knows it by.
    pub fn kind(self) -> &'static str {
        match self {
            Activation::Relu => "relu",
            Activation::LeakyRelu(_) => "leaky_relu",
            Activation::Tanh => "tanh",
            Activation::Sigmoid => "sigmoid",
            Activation::Identity => "identity",
        }
    }

    /// The stored form of the layer: the kind, and `{"slope": …}` for a leaky ReLU, `{}`
    /// otherwise.
    pub fn spec(self) -> LayerSpec {
        match self {
            Activation::LeakyRelu(slope) => {
                LayerSpec::new(self.kind(), &LeakyReluSettings { slope })
            }
            _ => LayerSpec::new(self.kind(), &NoSettings {}),
        }
    }
}

impl Activation {
    /// Checks the slope of a leaky ReLU for a layer of element type `F`: finite there (1e300
    /// is a finite f64 but an infinite f32). Any finite slope is a function PyTorch's
    /// `LeakyReLU` computes too, a negative one included (−1 gives `|x|`), so none is refused.
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] for a NaN or infinite slope.
    pub fn validate<F: Element>(&self) -> Result<(), Error> {
        match *self {
            Activation::LeakyRelu(slope) => Error::check(
                "leaky_relu slope",
                slope,
                F::from_f64(slope).is_finite(),
                "finite in the element type",
            ),
            _ => Ok(()),
        }
    }
}

impl<F: Element> Module<F> for Activation {
    /// Applies the activation, element by element.
    fn forward<'g>(&self, _cx: &mut Forward<'g, '_, F>, x: Var<'g, F>) -> Var<'g, F> {
        match *self {
            Activation::Relu => x.relu(),
            Activation::LeakyRelu(slope) => x.leaky_relu(F::from_f64(slope)),
            Activation::Tanh => x.tanh(),
            Activation::Sigmoid => x.sigmoid(),
            Activation::Identity => x,
        }
    }

    fn is_relu(&self) -> bool {
        *self == Activation::Relu
    }

    fn spec(&self) -> LayerSpec {
        Activation::spec(*self)
    }
}

/// `Ok` when `input` is a row of `features` features, the one item a Linear, a BatchNorm1d or
/// a head takes.
pub(super) fn rows_of(features: usize, input: &[usize]) -> Result<(), String> {
    if input == [features] {
        return Ok(());
    }
    let hint = if input.len() > 1 {
        " (a flatten or a global pooling before it gives rows)"
    } else {
        ""
    };
    Err(format!(
        "it takes rows of {features} features, the layers before it give {}{hint}",
        super::module::describe_item(input)
    ))
}
