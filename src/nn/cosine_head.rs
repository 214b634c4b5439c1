//! The cosine classifier: class centres `W` normalised inside, a margin loss on top.

use super::{Fill, NORM_EPS, ParamSource};
use crate::loss::{MarginLoss, Reduction, margin_cross_entropy_with};
use crate::{Element, Error, Graph, Labels, ParamId, Params, Tensor, Var};

/// A cosine-classifier head: owns the class centres `W` (`[D, C]`, one centre per column) and
/// a [`MarginLoss`]. Features and centres are both L2-normalised inside, so
/// `cos θ_ij = (x_i / ‖x_i‖) · (W_j / ‖W_j‖)`.
///
/// - [`CosineHead::loss`]: the margin loss, for training;
/// - [`CosineHead::cosines`]: cosine logits without margin, for prediction;
/// - [`CosineHead::embed`]: normalised embeddings, for verification.
#[derive(Clone, Debug, PartialEq)]
pub struct CosineHead {
    weight: ParamId,
    loss: MarginLoss,
    dim: usize,
    classes: usize,
}

impl CosineHead {
    /// Adds the centres `name` (`[dim, classes]`, Xavier-normal when fresh) to `params`,
    /// drawn from `source` (a [`SeededRng`](crate::SeededRng) for a fresh head).
    pub fn new<F: Element, S: ParamSource<F> + ?Sized>(
        params: &mut Params<F>,
        name: &str,
        dim: usize,
        classes: usize,
        loss: MarginLoss,
        source: &mut S,
    ) -> Self {
        let std = (2.0 / (dim + classes) as f64).sqrt();
        let centres = source.tensor(name, &[dim, classes], Fill::Normal { std });
        let weight = params.add(name, centres);
        CosineHead {
            weight,
            loss,
            dim,
            classes,
        }
    }

    /// A head over centres already in `params` (a `[dim, classes]` parameter).
    ///
    /// # Panics
    /// When the parameter is not rank 2.
    #[track_caller]
    pub fn from_param<F: Element>(params: &Params<F>, weight: ParamId, loss: MarginLoss) -> Self {
        let shape = params.get(weight).shape();
        let [dim, classes] = shape[..] else {
            panic!("CosineHead: centres must be [D, C], found shape {shape:?}")
        };
        CosineHead {
            weight,
            loss,
            dim,
            classes,
        }
    }

    /// The id of the centres `W`.
    pub fn weight(&self) -> ParamId {
        self.weight
    }

    /// The loss the head trains with.
    pub fn margin_loss(&self) -> &MarginLoss {
        &self.loss
    }

    /// The feature dimension `D`.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The number of classes `C`.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// `cos θ` (`[B, C]`): normalised features times column-normalised centres, no margin.
    ///
    /// # Panics
    /// When `features` is not `[B, D]`.
    #[track_caller]
    pub fn cosines<'g, F: Element>(
        &self,
        g: &'g Graph<F>,
        params: &Params<F>,
        features: Var<'g, F>,
    ) -> Var<'g, F> {
        let eps = F::from_f64(NORM_EPS);
        let centres = g.param(params, self.weight).normalize_cols(eps);
        features.normalize_rows(eps).matmul(centres)
    }

    /// The mean margin loss of a batch.
    ///
    /// # Errors
    /// As [`margin_cross_entropy_with`](crate::loss::margin_cross_entropy_with).
    #[track_caller]
    pub fn loss<'g, F: Element>(
        &self,
        g: &'g Graph<F>,
        params: &Params<F>,
        features: Var<'g, F>,
        labels: &Labels,
    ) -> Result<Var<'g, F>, Error> {
        self.loss_with(g, params, features, labels, Reduction::Mean, None)
    }

    /// The margin loss with a reduction and optional sample weights.
    ///
    /// # Errors
    /// As [`margin_cross_entropy_with`](crate::loss::margin_cross_entropy_with).
    #[track_caller]
    pub fn loss_with<'g, F: Element>(
        &self,
        g: &'g Graph<F>,
        params: &Params<F>,
        features: Var<'g, F>,
        labels: &Labels,
        reduction: Reduction,
        weights: Option<&[f64]>,
    ) -> Result<Var<'g, F>, Error> {
        let cos = self.cosines(g, params, features);
        margin_cross_entropy_with(cos, labels, &self.loss, reduction, weights)
    }

    /// L2-normalised embeddings (`[B, D]`): compare two with a dot product (cosine similarity).
    pub fn embed<'g, F: Element>(&self, features: Var<'g, F>) -> Var<'g, F> {
        features.normalize_rows(F::from_f64(NORM_EPS))
    }

    /// The class with the largest cosine for each row of `features`.
    pub fn predict<F: Element>(&self, params: &Params<F>, features: &Tensor<F>) -> Vec<usize> {
        let g = Graph::inference();
        self.cosines(&g, params, g.constant(features.clone()))
            .value()
            .argmax_rows()
    }
}
