//! A multilayer perceptron built from a configuration, as `nn.Sequential` would hold it.

use super::{Activation, BatchNorm1d, Dropout, Forward, Init, Linear, ParamSource};
use crate::{Element, Error, Params, Var};
use serde::{Deserialize, Serialize};

/// The shape of an MLP: `sizes = [in, hidden…, out]`; between layers (not after the last) an
/// optional BatchNorm1d, the activation, and optional dropout.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MlpConfig {
    /// Layer widths, input first.
    pub sizes: Vec<usize>,
    /// The nonlinearity between layers.
    pub activation: Activation,
    /// A BatchNorm1d after each hidden Linear layer.
    pub batch_norm: bool,
    /// Dropout probability after each hidden activation (0 = none).
    pub dropout: f64,
    /// Whether Linear layers have biases.
    pub bias: bool,
    /// Weight initialisation.
    pub init: Init,
}

impl MlpConfig {
    /// ReLU between layers, biases, Kaiming initialisation, no BatchNorm, no dropout.
    pub fn new(sizes: &[usize]) -> Self {
        MlpConfig {
            sizes: sizes.to_vec(),
            activation: Activation::Relu,
            batch_norm: false,
            dropout: 0.0,
            bias: true,
            init: Init::KaimingNormal,
        }
    }

    /// Checks the widths and the dropout probability.
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] for fewer than two sizes, a zero width, or dropout outside
    /// `[0, 1)`.
    pub fn validate(&self) -> Result<(), Error> {
        let invalid = |name, value: f64, requirement| {
            Err(Error::InvalidSetting {
                name,
                value,
                requirement,
            })
        };
        if self.sizes.len() < 2 {
            return invalid("MLP size count", self.sizes.len() as f64, "at least 2");
        }
        if self.sizes.contains(&0) {
            return invalid("MLP layer width", 0.0, "positive");
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return invalid("dropout", self.dropout, "in [0, 1)");
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Layer {
    Linear(Linear),
    BatchNorm(BatchNorm1d),
    Activation(Activation),
    Dropout(Dropout),
}

/// A built MLP. Parameters are named as `nn.Sequential` names them: `{prefix}.{index}.weight`,
/// where every layer (activations and dropout included) takes an index.
#[derive(Clone, Debug, PartialEq)]
pub struct Mlp {
    config: MlpConfig,
    layers: Vec<Layer>,
}

impl Mlp {
    /// Adds the layers' parameters to `params` under `prefix`, drawn from `source`.
    ///
    /// # Errors
    /// As [`MlpConfig::validate`].
    pub fn new<F: Element, S: ParamSource<F> + ?Sized>(
        config: MlpConfig,
        params: &mut Params<F>,
        prefix: &str,
        source: &mut S,
    ) -> Result<Self, Error> {
        config.validate()?;
        let mut layers = Vec::new();
        let last = config.sizes.len() - 2;
        for (i, pair) in config.sizes.windows(2).enumerate() {
            let name = format!("{prefix}.{}", layers.len());
            let (inputs, outputs) = (pair[0], pair[1]);
            let linear = Linear::new(
                params,
                &name,
                inputs,
                outputs,
                config.bias,
                config.init,
                source,
            );
            layers.push(Layer::Linear(linear));
            if i == last {
                break;
            }
            if config.batch_norm {
                let name = format!("{prefix}.{}", layers.len());
                layers.push(Layer::BatchNorm(BatchNorm1d::new(
                    params, &name, outputs, source,
                )));
            }
            layers.push(Layer::Activation(config.activation));
            if config.dropout > 0.0 {
                layers.push(Layer::Dropout(Dropout { p: config.dropout }));
            }
        }
        Ok(Mlp { config, layers })
    }

    /// The configuration it was built from.
    pub fn config(&self) -> &MlpConfig {
        &self.config
    }

    /// The output width.
    pub fn output_dim(&self) -> usize {
        *self
            .config
            .sizes
            .last()
            .expect("validated: at least two sizes")
    }

    /// Runs the layers on `x` (`[B, in]`).
    ///
    /// # Panics
    /// When `x` is not `[B, in]`.
    #[track_caller]
    pub fn forward<'g, F: Element>(
        &self,
        cx: &mut Forward<'g, '_, F>,
        x: Var<'g, F>,
    ) -> Var<'g, F> {
        let mut h = x;
        let mut layers = self.layers.iter().peekable();
        while let Some(layer) = layers.next() {
            h = match layer {
                // a Linear layer straight into a ReLU runs fused
                Layer::Linear(l)
                    if layers.peek() == Some(&&Layer::Activation(Activation::Relu)) =>
                {
                    layers.next();
                    l.forward_relu(cx, h)
                }
                Layer::Linear(l) => l.forward(cx, h),
                Layer::BatchNorm(bn) => bn.forward(cx, h),
                Layer::Activation(a) => a.forward(h),
                Layer::Dropout(d) => d.forward(cx, h),
            };
        }
        h
    }
}
