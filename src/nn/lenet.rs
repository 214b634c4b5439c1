//! LeNet++ (Wen et al., "A Discriminative Feature Learning Approach for Deep Face Recognition",
//! ECCV 2016): the small convolutional embedder of the centre-loss and margin-loss MNIST
//! figures, described in a few fields and turned into a [`SequentialConfig`].

use super::{
    Conv2dConfig, Flatten, LayerSpec, LinearConfig, MaxPool2d, PReluConfig, SequentialConfig,
    Unflatten,
};
use crate::{Error, Pool2dOptions};
use serde::{Deserialize, Serialize};

/// Three stages, each two 5×5 convolutions (padding 2) with a PReLU after each and a 2×2 max
/// pooling at the end, then a Linear embedding of the flattened planes. The stored form is the
/// [`SequentialConfig`] that [`LeNetPlusPlus::sequential`] gives.
///
/// ```
/// use margrad::nn::LeNetPlusPlus;
/// let config = LeNetPlusPlus::new(2).sequential()?; // MNIST in, a 2-d embedding out
/// assert_eq!(config.layers.len(), 18); // unflatten, 3 × (conv prelu conv prelu pool), flatten, linear
/// assert_eq!(config.layers[17].config["inputs"], 128 * 3 * 3);
/// # Ok::<(), margrad::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeNetPlusPlus {
    /// Each input's shape, `[C, H, W]` (`[1, 28, 28]` for MNIST); the embedder takes rows of
    /// `C·H·W` features.
    pub input: [usize; 3],
    /// The channels of the three stages (`[32, 64, 128]`).
    pub channels: [usize; 3],
    /// The embedding's width.
    pub embedding_dim: usize,
}

impl LeNetPlusPlus {
    /// MNIST-shaped input, 32/64/128 channels, an embedding of `embedding_dim`.
    pub fn new(embedding_dim: usize) -> Self {
        LeNetPlusPlus {
            input: [1, 28, 28],
            channels: [32, 64, 128],
            embedding_dim,
        }
    }

    /// The layers: `unflatten`, then per stage `conv2d prelu conv2d prelu max_pool2d`, then
    /// `flatten` and `linear`, each taking an index as `nn.Sequential` does.
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] for a zero channel count or width, or an input smaller than
    /// 8×8 (three halvings must leave a plane).
    pub fn sequential(&self) -> Result<SequentialConfig, Error> {
        let [c, h, w] = self.input;
        Error::check("LeNet++ input channels", c as f64, c > 0, "positive")?;
        Error::check(
            "LeNet++ input side",
            h.min(w) as f64,
            h.min(w) >= 8,
            "at least 8",
        )?;
        for &k in &self.channels {
            Error::check("LeNet++ channels", k as f64, k > 0, "positive")?;
        }
        let d = self.embedding_dim;
        Error::check("LeNet++ embedding_dim", d as f64, d > 0, "positive")?;
        let unflatten = Unflatten {
            shape: self.input.to_vec(),
        };
        unflatten.validate()?;
        let mut config = SequentialConfig::new().with(unflatten.spec());
        let (mut from, mut side) = (c, [h, w]);
        for &to in &self.channels {
            for input in [from, to] {
                config = config
                    .with(Conv2dConfig::new(input, to, 5).padding(2).spec())
                    .with(PReluConfig::new(to).spec());
            }
            config = config.with(MaxPool2d(Pool2dOptions::new(2)).spec());
            (from, side) = (to, side.map(|s| s / 2));
        }
        let flat = from * side[0] * side[1];
        Ok(config
            .with(LayerSpec::new(Flatten::KIND, &serde_json::json!({})))
            .with(LinearConfig::new(flat, d).spec()))
    }
}
