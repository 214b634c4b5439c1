//! A model: an embedder and a classification head, rebuilt from its configuration.

use super::{CosineHead, Forward, Init, Linear, Mlp, MlpConfig, ParamSource};
use crate::loss::{MarginLoss, softmax_cross_entropy};
use crate::{Element, Error, Graph, Labels, Params, Tensor, Var};
use serde::{Deserialize, Serialize};

/// The head on top of the embedding.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum HeadConfig {
    /// A cosine classifier trained with a margin loss (centres `head.weight`, `[D, C]`).
    Cosine {
        /// The number of classes.
        classes: usize,
        /// The loss.
        loss: MarginLoss,
    },
    /// A plain linear classifier `x Wᵀ + b` trained with softmax cross-entropy
    /// (`head.weight` `[C, D]`, `head.bias` `[C]`).
    Linear {
        /// The number of classes.
        classes: usize,
    },
}

impl HeadConfig {
    /// The number of classes.
    pub fn classes(&self) -> usize {
        match self {
            HeadConfig::Cosine { classes, .. } | HeadConfig::Linear { classes } => *classes,
        }
    }
}

/// Everything needed to rebuild a [`Model`] (a checkpoint stores it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// The embedder, named `embed.*`.
    pub embedder: MlpConfig,
    /// The head, named `head.*`.
    pub head: HeadConfig,
}

/// A built head.
#[derive(Clone, Debug, PartialEq)]
pub enum Head {
    /// See [`HeadConfig::Cosine`].
    Cosine(CosineHead),
    /// See [`HeadConfig::Linear`].
    Linear(Linear),
}

/// An embedder (an MLP) and a head.
#[derive(Clone, Debug, PartialEq)]
pub struct Model {
    config: ModelConfig,
    embedder: Mlp,
    head: Head,
}

impl Model {
    /// Builds the model, adding its parameters (in a fixed order) to `params`, drawn from
    /// `source` (a [`SeededRng`](crate::SeededRng) for a fresh model).
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] for an invalid embedder, zero classes, or an invalid loss.
    pub fn new<F: Element, S: ParamSource<F> + ?Sized>(
        config: ModelConfig,
        params: &mut Params<F>,
        source: &mut S,
    ) -> Result<Self, Error> {
        let embedder = Mlp::new(config.embedder.clone(), params, "embed", source)?;
        let dim = embedder.output_dim();
        if config.head.classes() == 0 {
            return Err(Error::InvalidSetting {
                name: "classes",
                value: 0.0,
                requirement: "at least 1",
            });
        }
        let head = match &config.head {
            HeadConfig::Cosine { classes, loss } => {
                loss.validate()?;
                let head =
                    CosineHead::new(params, "head.weight", dim, *classes, loss.clone(), source);
                Head::Cosine(head)
            }
            HeadConfig::Linear { classes } => Head::Linear(Linear::new(
                params,
                "head",
                dim,
                *classes,
                true,
                Init::XavierNormal,
                source,
            )),
        };
        Ok(Model {
            config,
            embedder,
            head,
        })
    }

    /// The configuration it was built from.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The head.
    pub fn head(&self) -> &Head {
        &self.head
    }

    /// The embedder's output (`[B, D]`, not normalised).
    pub fn embed<'g, F: Element>(&self, cx: &mut Forward<'g, '_, F>, x: Var<'g, F>) -> Var<'g, F> {
        self.embedder.forward(cx, x)
    }

    /// Class scores without margin: cosines for a cosine head, logits for a linear one.
    pub fn logits<'g, F: Element>(&self, cx: &mut Forward<'g, '_, F>, x: Var<'g, F>) -> Var<'g, F> {
        let e = self.embed(cx, x);
        match &self.head {
            Head::Cosine(head) => head.cosines(cx.graph(), cx.params(), e),
            Head::Linear(linear) => linear.forward(cx, e),
        }
    }

    /// The training loss of a batch.
    ///
    /// # Errors
    /// As [`margin_cross_entropy_with`](crate::loss::margin_cross_entropy_with).
    pub fn loss<'g, F: Element>(
        &self,
        cx: &mut Forward<'g, '_, F>,
        x: Var<'g, F>,
        labels: &Labels,
    ) -> Result<Var<'g, F>, Error> {
        Ok(self.loss_and_logits(cx, x, labels)?.0)
    }

    /// The training loss of a batch, and its class scores without margin (from which the
    /// training accuracy comes at no extra cost).
    ///
    /// # Errors
    /// As [`margin_cross_entropy_with`](crate::loss::margin_cross_entropy_with).
    pub fn loss_and_logits<'g, F: Element>(
        &self,
        cx: &mut Forward<'g, '_, F>,
        x: Var<'g, F>,
        labels: &Labels,
    ) -> Result<(Var<'g, F>, Var<'g, F>), Error> {
        let e = self.embed(cx, x);
        match &self.head {
            Head::Cosine(head) => {
                let cos = head.cosines(cx.graph(), cx.params(), e);
                let loss = crate::loss::margin_cross_entropy(cos, labels, head.margin_loss())?;
                Ok((loss, cos))
            }
            Head::Linear(linear) => {
                let logits = linear.forward(cx, e);
                Ok((softmax_cross_entropy(logits, labels)?, logits))
            }
        }
    }

    /// The predicted class of each row of `x` (evaluation mode).
    pub fn predict<F: Element>(&self, params: &Params<F>, x: &Tensor<F>) -> Vec<usize> {
        let g = Graph::inference();
        let mut cx = Forward::eval(&g, params);
        self.logits(&mut cx, g.constant(x.clone()))
            .value()
            .argmax_rows()
    }

    /// L2-normalised embeddings of the rows of `x` (evaluation mode), for verification.
    pub fn embeddings<F: Element>(&self, params: &Params<F>, x: &Tensor<F>) -> Tensor<F> {
        let g = Graph::inference();
        let mut cx = Forward::eval(&g, params);
        self.embed(&mut cx, g.constant(x.clone()))
            .normalize_rows(F::from_f64(super::NORM_EPS))
            .to_tensor()
    }
}
