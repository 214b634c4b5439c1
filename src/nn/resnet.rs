//! A small residual embedder for small grey images (MNIST's 28×28), described in a few fields
//! and turned into a [`SequentialConfig`].

use super::{
    Activation, BasicBlockConfig, BatchNorm2dConfig, Conv2dConfig, GlobalAvgPool, LayerSpec,
    LinearConfig, SequentialConfig, Unflatten,
};
use crate::Error;
use serde::{Deserialize, Serialize};

/// A 3×3 stem convolution (no bias) with BatchNorm2d and ReLU, three stages of
/// [`BasicBlock`](super::BasicBlock)s each followed by a ReLU (two 3×3 convolutions with
/// BatchNorm2d, a shortcut; the
/// first block of stages 2 and 3 halves the planes with stride 2 and widens them through a
/// 1×1 convolution on the shortcut), global average pooling, and a Linear embedding. On 28×28
/// inputs the stages see 28×28, 14×14 and 7×7 planes. The stored form is the
/// [`SequentialConfig`] that [`ResNetConfig::sequential`] gives, so a checkpoint rebuilds it
/// like any other embedder.
///
/// ```
/// use margrad::nn::ResNetConfig;
/// let config = ResNetConfig::new(128).sequential()?; // MNIST in, a 128-d embedding out
/// let kinds: Vec<&str> = config.layers.iter().map(|l| l.kind.as_str()).collect();
/// assert_eq!(kinds[..4], ["unflatten", "conv2d", "batch_norm2d", "relu"]);
/// assert_eq!(kinds[kinds.len() - 2..], ["global_avg_pool", "linear"]);
/// # Ok::<(), margrad::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResNetConfig {
    /// Each input's shape, `[C, H, W]` (`[1, 28, 28]` for MNIST); the embedder takes rows of
    /// `C·H·W` features.
    pub input: [usize; 3],
    /// The channels of the three stages (the stem gives the first stage's).
    pub channels: [usize; 3],
    /// Basic blocks per stage.
    pub blocks: [usize; 3],
    /// The embedding's width.
    pub embedding_dim: usize,
}

impl ResNetConfig {
    /// MNIST-shaped input, 16/32/64 channels, one block per stage, an embedding of
    /// `embedding_dim`: 76 k convolution weights and 9.4 M multiply-adds per 28×28 image
    /// (3.6 M of them in the first stage's block), so a training step costs about 56 MFLOP
    /// per image, forward and backward: at the 50-80 GFLOP/s the convolutions reach on two
    /// cores, about a minute per pass over MNIST's 60,000 images.
    pub fn new(embedding_dim: usize) -> Self {
        ResNetConfig {
            input: [1, 28, 28],
            channels: [16, 32, 64],
            blocks: [1, 1, 1],
            embedding_dim,
        }
    }

    /// The layers: `unflatten`, the stem `conv2d batch_norm2d relu`, the stages' `basic_block relu`s,
    /// then `global_avg_pool` and `linear`.
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] for a zero channel count, block count, input dimension or
    /// embedding width.
    pub fn sequential(&self) -> Result<SequentialConfig, Error> {
        let positive = |name, v: usize| Error::check(name, v as f64, v > 0, "positive");
        for &d in &self.input {
            positive("ResNet input dimensions", d)?;
        }
        for (&c, &b) in self.channels.iter().zip(&self.blocks) {
            positive("ResNet channels", c)?;
            positive("ResNet blocks", b)?;
        }
        positive("ResNet embedding_dim", self.embedding_dim)?;
        let unflatten = Unflatten {
            shape: self.input.to_vec(),
        };
        unflatten.validate()?;
        let first = self.channels[0];
        let mut config = SequentialConfig::new()
            .with(unflatten.spec())
            .with(
                Conv2dConfig::new(self.input[0], first, 3)
                    .padding(1)
                    .without_bias()
                    .spec(),
            )
            .with(BatchNorm2dConfig::new(first).spec())
            .with(Activation::Relu.spec());
        let mut from = first;
        for (stage, (&to, &blocks)) in self.channels.iter().zip(&self.blocks).enumerate() {
            for block in 0..blocks {
                let stride = if stage > 0 && block == 0 { 2 } else { 1 };
                // the block ends at the sum; the ReLU after it is torchvision's last step
                config = config
                    .with(BasicBlockConfig::new(from, to).stride(stride).spec())
                    .with(Activation::Relu.spec());
                from = to;
            }
        }
        Ok(config
            .with(LayerSpec::new(GlobalAvgPool::KIND, &serde_json::json!({})))
            .with(LinearConfig::new(from, self.embedding_dim).spec()))
    }
}
