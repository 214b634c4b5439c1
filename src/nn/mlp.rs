//! A multilayer perceptron described in a few fields, turned into a [`SequentialConfig`].

use super::{Activation, BatchNorm1dConfig, Dropout, Init, LinearConfig, SequentialConfig};
use crate::Error;
use serde::{Deserialize, Serialize};

/// The shape of an MLP: `sizes = [in, hidden…, out]`; between Linear layers (not after the
/// last) an optional BatchNorm1d, the activation, and optional dropout. A convenience: what is
/// built and stored is the [`SequentialConfig`] that [`MlpConfig::sequential`] gives.
///
/// ```
/// use margrad::nn::MlpConfig;
/// let config = MlpConfig { batch_norm: true, ..MlpConfig::new(&[784, 256, 128]) };
/// let kinds: Vec<String> = config.sequential()?.layers.into_iter().map(|l| l.kind).collect();
/// assert_eq!(kinds, ["linear", "batch_norm1d", "relu", "linear"]); // embed.0 … embed.3
/// # Ok::<(), margrad::Error>(())
/// ```
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

    /// Checks the widths, the dropout probability and the activation.
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] for fewer than two sizes, a zero width, dropout outside
    /// `[0, 1)`, or a leaky ReLU's slope that is not finite.
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
        // the widest element type: a layer built in f32 checks its slope again
        self.activation.validate::<f64>()
    }

    /// The layers: for each pair of widths a `linear`, and between two of them
    /// `[batch_norm1d,] activation[, dropout]`, each taking an index as `nn.Sequential` does.
    ///
    /// # Errors
    /// As [`MlpConfig::validate`].
    pub fn sequential(&self) -> Result<SequentialConfig, Error> {
        self.validate()?;
        let mut config = SequentialConfig::new();
        let last = self.sizes.len() - 2;
        for (i, pair) in self.sizes.windows(2).enumerate() {
            let (inputs, outputs) = (pair[0], pair[1]);
            let linear = LinearConfig {
                bias: self.bias,
                init: self.init,
                ..LinearConfig::new(inputs, outputs)
            };
            config = config.with(linear.spec());
            if i == last {
                break;
            }
            if self.batch_norm {
                config = config.with(BatchNorm1dConfig::new(outputs).spec());
            }
            config = config.with(self.activation.spec());
            if self.dropout > 0.0 {
                config = config.with(Dropout { p: self.dropout }.spec());
            }
        }
        Ok(config)
    }
}

impl TryFrom<MlpConfig> for SequentialConfig {
    type Error = Error;

    /// [`MlpConfig::sequential`].
    fn try_from(mlp: MlpConfig) -> Result<Self, Error> {
        mlp.sequential()
    }
}
