//! The head of the losses beyond the softmax family's formula ([`ExtendedLoss`]): a cosine
//! classifier that also keeps what its loss needs (sub-centres, a bias, running state).

use super::cosine_head::{CentreLayout, add_centres, cosines};
use super::{Fill, Forward, Head, LayerSpec, Module, ParamSource};
use crate::loss::{
    AdaFaceNorms, CurricularFaceState, ExtendedLoss, Reduction, adaface_loss, check_subcenters,
    chosen_subcenters, curricularface_loss, elasticface_loss, magface_loss, margin_cross_entropy,
    max_over_subcenters, sphereface2_loss,
};
use crate::{Element, Error, Graph, Labels, ParamId, Params, Tensor, Var};
use serde::{Deserialize, Serialize};

/// The settings of an [`ExtendedHead`] (kind `extended_head`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtendedHeadConfig {
    /// The feature dimension `D`.
    pub dim: usize,
    /// The number of classes `C`.
    pub classes: usize,
    /// The loss the head trains with.
    pub loss: ExtendedLoss,
}

impl ExtendedHeadConfig {
    /// Checks the sizes and the loss.
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] for a zero size, an invalid loss, or fewer than 2 classes for
    /// SphereFace2 (whose starting bias balances a class against the others).
    pub fn validate(&self) -> Result<(), Error> {
        Error::check("head dim", self.dim as f64, self.dim > 0, "positive")?;
        Error::check(
            "classes",
            self.classes as f64,
            self.classes > 0,
            "at least 1",
        )?;
        self.loss.validate()?;
        if let ExtendedLoss::SphereFace2(loss) = &self.loss {
            loss.initial_bias(self.classes)?;
        }
        Ok(())
    }
}

/// A cosine-classifier head for an [`ExtendedLoss`]. Its tensors:
///
/// - `{prefix}.weight`: the centres `W`, `[D, C·K]`, class-major (class `j`'s `K` sub-centres
///   are columns `jK .. jK + K`; `K = 1` but for sub-center ArcFace), Xavier-normal when fresh;
/// - `{prefix}.bias` (SphereFace2): the learned bias, `[1]`, starting at
///   [`SphereFace2::initial_bias`](crate::loss::SphereFace2::initial_bias);
/// - the buffers `{prefix}.norm_mean` and `{prefix}.norm_std` (AdaFace): the running `μ`, `σ` of
///   the feature norms ([`AdaFaceNorms`], starting at 20 and 100), and `{prefix}.t`
///   (CurricularFace): [`CurricularFaceState`]'s `t`, starting at 0. Being buffers, they are
///   saved with every checkpoint and restored on resume.
///
/// Its [`forward`](Module::forward) gives each class's cosine `max_a x̂_i·ŵ_{jK+a}` (`[B, C]`,
/// no margin: prediction); its [`loss`](Head::loss), in a training pass, first blends the batch
/// into the running state (recorded as buffer updates, as BatchNorm's), then applies the loss
/// with the updated state (a batch of one sample, whose norms have no standard deviation, leaves
/// AdaFace's statistics as they are). ElasticFace draws its margins from the pass's generator (the step's:
/// the same seed, epoch and step draw the same, a resumed run included); an evaluation pass
/// uses the mean margin and leaves the state as it is.
///
/// Which cosine head: this one for the losses of [`ExtendedLoss`], which need more than a
/// class's cosine (the features' norms, sub-centres, a bias, state between batches);
/// [`CosineHead`](super::CosineHead) for the softmax family's losses, whose head keeps the
/// centres alone; [`CentresHead`](super::CentresHead) for centres trained block by block.
#[derive(Clone, Debug, PartialEq)]
pub struct ExtendedHead {
    weight: ParamId,
    bias: Option<ParamId>,
    state: Vec<ParamId>,
    config: ExtendedHeadConfig,
}

impl ExtendedHead {
    /// The kind name a [`LayerSpec`] records it by.
    pub const KIND: &'static str = "extended_head";

    /// Adds the head's tensors (see [`ExtendedHead`]) to `params`, taken from `source` (a
    /// [`SeededRng`](crate::SeededRng) for a fresh head).
    ///
    /// # Errors
    /// As [`ExtendedHeadConfig::validate`].
    pub fn new<F: Element>(
        params: &mut Params<F>,
        prefix: &str,
        config: ExtendedHeadConfig,
        source: &mut dyn ParamSource<F>,
    ) -> Result<Self, Error> {
        config.validate()?;
        let size = (config.dim, config.classes * config.loss.subcenters());
        let weight = add_centres(params, prefix, size, CentreLayout::Columns, source);
        let mut tensor = |suffix: &str, fill: Fill, trainable: bool| {
            let name = format!("{prefix}.{suffix}");
            let t = source.tensor(&name, &[1], fill);
            if trainable {
                params.add(name, t)
            } else {
                params.add_buffer(name, t)
            }
        };
        let (bias, state) = match &config.loss {
            ExtendedLoss::SphereFace2(loss) => {
                let b = loss.initial_bias(config.classes)?;
                (Some(tensor("bias", Fill::Constant(b), true)), vec![])
            }
            ExtendedLoss::AdaFace(_) => {
                let start = AdaFaceNorms::default();
                let mean = tensor("norm_mean", Fill::Constant(start.mean), false);
                let std = tensor("norm_std", Fill::Constant(start.std), false);
                (None, vec![mean, std])
            }
            ExtendedLoss::CurricularFace(_) => {
                let t = CurricularFaceState::default().t;
                (None, vec![tensor("t", Fill::Constant(t), false)])
            }
            _ => (None, vec![]),
        };
        Ok(ExtendedHead {
            weight,
            bias,
            state,
            config,
        })
    }

    /// The settings it was built from.
    pub fn config(&self) -> &ExtendedHeadConfig {
        &self.config
    }

    /// The id of the centres `W` (`[D, C·K]`).
    pub fn weight(&self) -> ParamId {
        self.weight
    }

    /// AdaFace's running norm statistics as `params` hold them (`None` for another loss).
    pub fn adaface_norms<F: Element>(&self, params: &Params<F>) -> Option<AdaFaceNorms> {
        let ExtendedLoss::AdaFace(_) = self.config.loss else {
            return None;
        };
        let value = |id: ParamId| params.get(id).data()[0].to_f64();
        Some(AdaFaceNorms {
            mean: value(self.state[0]),
            std: value(self.state[1]),
        })
    }

    /// CurricularFace's `t` as `params` hold it (`None` for another loss).
    pub fn curricularface_state<F: Element>(
        &self,
        params: &Params<F>,
    ) -> Option<CurricularFaceState> {
        let ExtendedLoss::CurricularFace(_) = self.config.loss else {
            return None;
        };
        Some(CurricularFaceState {
            t: params.get(self.state[0]).data()[0].to_f64(),
        })
    }
}

/// Each class's dominant sub-centre over the samples `features` (`[N, D]`, the embedder's
/// output) with `labels`, given the centres `centres` (`[D, C·K]`, class-major, as an
/// [`ExtendedHead`] keeps them): the one most of its samples pick, first of equally popular
/// ones, `None` for a class with no sample (the rule of
/// [`dominant_subcenters`](crate::loss::dominant_subcenters)); and the samples whose angle to
/// their class's dominant sub-centre is `max_angle` (radians) or more, by index (the rule of
/// [`far_from_dominant`](crate::loss::far_from_dominant): the likely label noise). Evaluated
/// 1024 samples at a time, so that no `N × C·K` matrix is held.
///
/// # Errors
/// [`Error::InvalidSetting`] for `k = 0` or a `max_angle` outside `[0, π]`;
/// [`Error::LabelOutOfRange`] for a label not below `C`.
///
/// # Panics
/// When `centres` is not `[D, C·K]` or `features` is not `[N, D]` with one row per label.
#[track_caller]
pub fn subcenter_usage<F: Element>(
    centres: &Tensor<F>,
    k: usize,
    features: &Tensor<F>,
    labels: &Labels,
    max_angle: f64,
) -> Result<(Vec<Option<usize>>, Vec<usize>), Error> {
    const ROWS: usize = 1024;
    check_subcenters(k)?;
    Error::check(
        "maximum angle to the dominant sub-centre",
        max_angle,
        (0.0..=std::f64::consts::PI).contains(&max_angle),
        "in [0, π] (radians)",
    )?;
    let &[dim, columns] = centres.shape() else {
        panic!(
            "subcenter_usage: expected [D, C·K] centres, found {:?}",
            centres.shape()
        )
    };
    assert!(
        columns % k == 0,
        "subcenter_usage: {columns} centres are not C·{k}"
    );
    let (classes, n) = (columns / k, labels.len());
    assert_eq!(
        features.shape(),
        [n, dim],
        "subcenter_usage: features of shape {:?} for {n} labels and D = {dim}",
        features.shape()
    );
    // one chunk's labels, and its cosines to every sub-centre
    let chunk = |start: usize| -> Result<(Labels, Tensor<F>), Error> {
        let end = (start + ROWS).min(n);
        let rows = features.data()[start * dim..end * dim].to_vec();
        let g = Graph::inference();
        let x = g.constant(Tensor::from_vec(rows, &[end - start, dim])?);
        let cos = cosines(x, g.constant(centres.clone()), CentreLayout::Columns);
        let y = Labels::new(labels.values()[start..end].to_vec(), classes)?;
        Ok((y, cos.to_tensor()))
    };
    let mut votes = vec![0usize; columns];
    for start in (0..n).step_by(ROWS) {
        let (y, cos) = chunk(start)?;
        for (&class, a) in y.values().iter().zip(chosen_subcenters(&cos, &y, k)?) {
            votes[class * k + a] += 1;
        }
    }
    let dominant: Vec<Option<usize>> = votes
        .chunks(k)
        .map(|v| {
            let most = *v.iter().max().expect("k ≥ 1");
            (most > 0).then(|| v.iter().position(|&c| c == most).expect("present"))
        })
        .collect();
    let min_cos = max_angle.cos();
    let mut far = Vec::new();
    for start in (0..n).step_by(ROWS) {
        let (y, cos) = chunk(start)?;
        for (i, &class) in y.values().iter().enumerate() {
            let a = dominant[class].expect("a class with a sample has a dominant sub-centre");
            if cos.data()[i * columns + class * k + a].to_f64() <= min_cos {
                far.push(start + i);
            }
        }
    }
    Ok((dominant, far))
}

/// A one-element tensor `[1]` holding `value`: a running state's buffer.
fn state_value<F: Element>(value: f64) -> Tensor<F> {
    Tensor::from_vec(vec![F::from_f64(value)], &[1]).expect("one element")
}

impl<F: Element> Module<F> for ExtendedHead {
    /// Each class's cosine (`[B, C]`): the best of its `K` sub-centres, no margin.
    ///
    /// # Panics
    /// When `features` is not `[B, D]`.
    #[track_caller]
    fn forward<'g>(&self, cx: &mut Forward<'g, '_, F>, features: Var<'g, F>) -> Var<'g, F> {
        // to every centre, `[B, C·K]`, class-major
        let cos = cosines(features, cx.param(self.weight), CentreLayout::Columns);
        match self.config.loss.subcenters() {
            1 => cos,
            k => max_over_subcenters(cos, k).expect("K checked when built"),
        }
    }

    fn spec(&self) -> LayerSpec {
        LayerSpec::new(Self::KIND, &self.config)
    }

    fn parameters(&self) -> Vec<ParamId> {
        std::iter::once(self.weight).chain(self.bias).collect()
    }

    fn buffers(&self) -> Vec<ParamId> {
        self.state.clone()
    }

    fn input_shape(&self) -> Option<Vec<usize>> {
        Some(vec![self.config.dim])
    }

    /// `[D] → [C]`.
    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>, String> {
        super::layers::rows_of(self.config.dim, input)?;
        Ok(vec![self.config.classes])
    }
}

impl<F: Element> Head<F> for ExtendedHead {
    /// The mean loss of the batch ([`ExtendedLoss`] gives the formula), and the classes'
    /// cosines.
    fn loss_and_scores<'g>(
        &self,
        cx: &mut Forward<'g, '_, F>,
        features: Var<'g, F>,
        labels: &Labels,
    ) -> Result<(Var<'g, F>, Var<'g, F>), Error> {
        let cos = self.forward(cx, features);
        let mean = Reduction::Mean;
        let loss = match &self.config.loss {
            ExtendedLoss::AdaFace(loss) => {
                let norms = row_norms(features.value().data(), self.config.dim);
                let mut stats = self.adaface_norms(cx.params()).expect("an AdaFace head");
                // a batch of one sample has no standard deviation: it leaves the statistics
                if cx.is_training() && norms.len() > 1 {
                    stats.update(&norms, loss.momentum)?;
                    let [mean_id, std_id] = self.state[..] else {
                        unreachable!("AdaFace keeps two buffers")
                    };
                    cx.update_buffer(mean_id, state_value(stats.mean));
                    cx.update_buffer(std_id, state_value(stats.std));
                }
                let rows = norms.len();
                let norms = cx.graph().constant(Tensor::from_vec(norms, &[rows])?);
                adaface_loss(cos, norms, labels, loss, &stats, mean, None)?
            }
            ExtendedLoss::MagFace(loss) => {
                let norms = features * features;
                let norms = norms.sum_dim(1).sqrt();
                magface_loss(cos, norms, labels, loss, mean, None)?
            }
            ExtendedLoss::CurricularFace(loss) => {
                let mut state = self.curricularface_state(cx.params()).expect("a head's t");
                if cx.is_training() {
                    state.update(&cos.value(), labels, loss.momentum)?;
                    cx.update_buffer(self.state[0], state_value(state.t));
                }
                curricularface_loss(cos, labels, loss, &state, mean, None)?
            }
            ExtendedLoss::SubcenterArcFace { loss, .. } => margin_cross_entropy(cos, labels, loss)?,
            ExtendedLoss::SphereFace2(loss) => {
                let bias = cx.param(self.bias.expect("a SphereFace2 head has a bias"));
                sphereface2_loss(cos, bias, labels, loss, mean, None)?
            }
            ExtendedLoss::ElasticFace(loss) => {
                let margins = match cx.rng() {
                    Some(rng) => loss.draw_margins(labels.len(), rng)?,
                    None => vec![loss.margin; labels.len()],
                };
                elasticface_loss(cos, labels, loss, &margins, mean, None)?
            }
        };
        Ok((loss, cos))
    }
}

/// `‖x_i‖` of each row of `data` (rows of `dim`), in `F`.
fn row_norms<F: Element>(data: &[F], dim: usize) -> Vec<F> {
    data.chunks(dim)
        .map(|row| {
            let sum: f64 = row.iter().map(|v| v.to_f64() * v.to_f64()).sum();
            F::from_f64(sum.sqrt())
        })
        .collect()
}
