//! PReLU as a layer: a learned slope for negative inputs, per channel or shared.

use super::{Fill, Forward, LayerSpec, Module, ParamSource};
use crate::{Element, Error, ParamId, Params, Var};
use serde::{Deserialize, Serialize};

/// The settings of a [`PRelu`] layer (kind `prelu`): PyTorch's `nn.PReLU(num_parameters, init)`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PReluConfig {
    /// 1 for one shared slope, or the number of channels (dimension 1) for one each.
    pub parameters: usize,
    /// The initial slope (0.25).
    pub init: f64,
}

impl PReluConfig {
    /// One slope per channel (or one shared, for `parameters = 1`), starting at 0.25.
    pub fn new(parameters: usize) -> Self {
        PReluConfig {
            parameters,
            init: 0.25,
        }
    }

    /// Checks the settings.
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] for zero parameters or an initial slope that is not finite in
    /// the element type `F` (1e300 overflows `f32`).
    pub fn validate<F: Element>(&self) -> Result<(), Error> {
        let p = self.parameters;
        Error::check("PReLU parameters", p as f64, p > 0, "positive")?;
        let init = F::from_f64(self.init);
        Error::check(
            "PReLU init",
            self.init,
            init.is_finite(),
            "finite in the element type",
        )
    }

    /// The stored form of the layer.
    pub fn spec(&self) -> LayerSpec {
        LayerSpec::new(PRelu::KIND, self)
    }
}

/// `y = x` for `x > 0`, `a_c·x` otherwise ([`Var::prelu`]), `a` learned: `{prefix}.weight`,
/// `[parameters]`.
#[derive(Clone, Debug, PartialEq)]
pub struct PRelu {
    /// The slopes, `[C]` or `[1]`.
    pub weight: ParamId,
    config: PReluConfig,
}

impl PRelu {
    /// The kind name a [`LayerRegistry`](super::LayerRegistry) knows it by.
    pub const KIND: &'static str = "prelu";

    /// Adds `{prefix}.weight` to `params`, taken from `source` (every slope `init` when fresh).
    pub fn new<F: Element>(
        params: &mut Params<F>,
        prefix: &str,
        config: PReluConfig,
        source: &mut dyn ParamSource<F>,
    ) -> Self {
        let name = format!("{prefix}.weight");
        let a = source.tensor(&name, &[config.parameters], Fill::Constant(config.init));
        PRelu {
            weight: params.add(name, a),
            config,
        }
    }
}

impl<F: Element> Module<F> for PRelu {
    /// # Panics
    /// As [`Var::prelu`], when `x`'s channels are not the slopes'.
    #[track_caller]
    fn forward<'g>(&self, cx: &mut Forward<'g, '_, F>, x: Var<'g, F>) -> Var<'g, F> {
        x.prelu(cx.param(self.weight))
    }
    fn spec(&self) -> LayerSpec {
        self.config.spec()
    }
    fn parameters(&self) -> Vec<ParamId> {
        vec![self.weight]
    }

    /// Keeps the shape; with a slope per channel, the item's first dimension (the channels of
    /// `[C, …]`, the features of a row) must be their count.
    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>, String> {
        let slopes = self.config.parameters;
        if slopes > 1 {
            let [c, ..] = input else {
                return Err(format!(
                    "it takes {slopes} channels, the layers before it give a scalar"
                ));
            };
            super::module::check_channels(slopes, *c)?;
        }
        Ok(input.to_vec())
    }
}
