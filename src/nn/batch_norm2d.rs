//! Batch normalisation of planes: per channel over the batch and the plane.

use super::{Forward, LayerSpec, Module, ParamSource};
use crate::{Element, Error, ParamId, Params, Var};
use serde::{Deserialize, Serialize};

/// The settings of a [`BatchNorm2d`] layer (kind `batch_norm2d`), PyTorch's defaults from
/// [`BatchNorm2dConfig::new`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchNorm2dConfig {
    /// The number of channels `C` (`num_features`).
    pub channels: usize,
    /// Added to the variance (`1e-5`).
    pub eps: f64,
    /// Weight of the batch in the running statistics (`0.1`).
    pub momentum: f64,
}

impl BatchNorm2dConfig {
    /// `channels` channels, `eps = 1e-5`, `momentum = 0.1`.
    pub fn new(channels: usize) -> Self {
        BatchNorm2dConfig {
            channels,
            eps: 1e-5,
            momentum: 0.1,
        }
    }

    /// Checks the settings.
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] for zero channels, an `eps` that is not positive and finite in
    /// the element type `F` (1e-50 is 0 in `f32`), or a momentum outside `[0, 1]`.
    pub fn validate<F: Element>(&self) -> Result<(), Error> {
        let names = [
            "BatchNorm2d channels",
            "BatchNorm2d eps",
            "BatchNorm2d momentum",
        ];
        super::layers::check_batch_norm::<F>(names, self.channels, self.eps, self.momentum)
    }

    /// The stored form of the layer.
    pub fn spec(&self) -> LayerSpec {
        LayerSpec::new(BatchNorm2d::KIND, self)
    }
}

/// Batch normalisation of an `[N, C, H, W]` input, per channel over `N·H·W` elements
/// ([`Var::batch_norm_train`], [`Var::batch_norm_eval`]):
/// `y = (x − μ_c)/√(σ²_c + eps)·γ_c + β_c`, with the batch's statistics while training and
/// the running ones when evaluating. Running statistics follow
/// `r ← (1 − momentum)·r + momentum·batch`, the variance unbiased (`·M/(M − 1)`), as PyTorch.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchNorm2d {
    /// γ, `[C]`.
    pub weight: ParamId,
    /// β, `[C]`.
    pub bias: ParamId,
    /// Running mean, `[C]` (a buffer).
    pub running_mean: ParamId,
    /// Running variance, `[C]` (a buffer).
    pub running_var: ParamId,
    config: BatchNorm2dConfig,
}

impl BatchNorm2d {
    /// The kind name a [`LayerRegistry`](super::LayerRegistry) knows it by.
    pub const KIND: &'static str = "batch_norm2d";

    /// Adds `{prefix}.weight`, `.bias`, `.running_mean`, `.running_var` (`[C]` each) to
    /// `params`, taken from `source` (γ = 1, β = 0, mean 0, variance 1 when fresh).
    pub fn new<F: Element>(
        params: &mut Params<F>,
        prefix: &str,
        config: BatchNorm2dConfig,
        source: &mut dyn ParamSource<F>,
    ) -> Self {
        let [weight, bias, running_mean, running_var] =
            super::layers::batch_norm_tensors(params, prefix, config.channels, source);
        BatchNorm2d {
            weight,
            bias,
            running_mean,
            running_var,
            config,
        }
    }

    /// The settings it was built from.
    pub fn config(&self) -> &BatchNorm2dConfig {
        &self.config
    }
}

impl<F: Element> Module<F> for BatchNorm2d {
    /// Normalises `x` (`[N, C, H, W]`, or any `[N, C, …]`); a training pass records the new
    /// running statistics.
    ///
    /// # Panics
    /// When `x`'s channels are not `C`.
    #[track_caller]
    fn forward<'g>(&self, cx: &mut Forward<'g, '_, F>, x: Var<'g, F>) -> Var<'g, F> {
        let eps = F::from_f64(self.config.eps);
        let (gamma, beta) = (cx.param(self.weight), cx.param(self.bias));
        if !cx.is_training() {
            let params = cx.params();
            let (mean, var) = (params.get(self.running_mean), params.get(self.running_var));
            return x.batch_norm_eval(gamma, beta, mean, var, eps);
        }
        let (y, stats) = x.batch_norm_train(gamma, beta, eps);
        super::layers::record_running_stats(
            cx,
            [self.running_mean, self.running_var],
            [&stats.mean, &stats.var],
            stats.count,
            self.config.momentum,
        );
        y
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

    /// Keeps the shape, planes `[C, …]` of its `C` channels.
    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>, String> {
        let [c, _, ..] = input else {
            return Err(format!(
                "it takes planes [C, H, W] (or [C, L]), the layers before it give {}",
                super::module::describe_item(input)
            ));
        };
        super::module::check_channels(self.config.channels, *c)?;
        Ok(input.to_vec())
    }
}
