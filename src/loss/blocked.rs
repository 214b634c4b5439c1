//! The margin loss over many classes, block by block: a cosine head that never holds the `B×C`
//! logits, nor (with [`BlockedHead::step`]) a dense `C×D` gradient of the centres.
//!
//! Features `x` `[B, D]`, class centres `W` `[C, D]` (one row per class), labels `y`:
//!
//! ```text
//! x̂_r = x_r / max(‖x_r‖, ε)    ŵ_c = w_c / max(‖w_c‖, ε)    c_rj = ⟨x̂_r, ŵ_j⟩
//! L = (1/B) Σ_r (lse_r − z_{r,y_r}),   lse_r = log Σ_j exp z_rj
//! ```
//!
//! with the logits `z` of the [`MarginLoss`] (its one definition, shared with
//! [`margin_cross_entropy`](super::margin_cross_entropy)). The classes are visited in blocks of
//! `block` rows of `W`, twice:
//!
//! 1. per block: `ŵ` of the block, its cosines `[B, block]` by one GEMM, and an online
//!    log-sum-exp per row (a running maximum `m_r` and a running sum `s_r` of `exp(z − m_r)`,
//!    rescaled by `exp(m_old − m_new)` when the maximum grows), plus the target logit;
//! 2. per block: the same cosines again, their gradient `∂L/∂c` in place (`s·p_j/B` off the
//!    target, `(p_y − 1)·(dz_y/dc)/B` at it, `p = exp(z − lse)`), then
//!    `∂x̂ += ∂c · ŵ` (accumulated over blocks), `∂ŵ = ∂cᵀ · x̂`, and `∂w` through the
//!    normalisation, handed at once to the caller.
//!
//! Memory besides `W` (and whatever state the caller's update keeps): `O(B·block + B·D +
//! block·D)`. The arithmetic is 4 GEMMs of `2·B·D·block` per block (the cosines are computed
//! twice rather than stored).
//!
//! **Layout.** The centres are stored `[C, D]`, one class per row, so that a block of classes
//! is one contiguous slice: it streams through the cache once per pass, its norms are row
//! reductions, and the update (and any optimiser state kept in the same layout) works on one
//! contiguous run. Stored `[D, C]` (the dense head's layout), a block would be `D` strided
//! pieces.
//!
//! **Threads.** Blocks are visited in order; inside one, the GEMMs cut their output at fixed
//! places and each row's statistics are its own, so the results are bitwise identical whatever
//! the number of threads.
//!
//! **Beyond the margin family** ([`BlockedHead::step_with`], [`BlockLoss`]): AdaFace, MagFace,
//! CurricularFace and ElasticFace are softmax losses too: each row's target logit comes from
//! the dense op's own formula (a function of the target cosine and the row's norm, margin or
//! scaler), and the non-target logits from the dense kernels' own maps (CurricularFace's
//! re-weighting needs each row's threshold before pass 1: the target cosines are computed
//! first, one dot product per row). MagFace's gradient reaches the features through their
//! norm as well. SphereFace2 shares no denominator: pass 1 sums its per-class terms, pass 2
//! writes each block's gradient, and the bias receives `∂L/∂b`. Sub-centres
//! ([`BlockedHead::with_subcenters`]) go in front of any of them: a block's GEMM runs over its
//! classes' `K` sub-centres and each class takes its best.
//!
//! **Class sampling** ([`ClassSample`], as InsightFace's Partial FC): the head computes the
//! loss over every class of the batch plus uniformly sampled negatives only; the other
//! centres are neither read nor handed to the update.

use super::Bf16Centres;
use super::curricularface::Curricular;
use super::fused::{Linear, Others};
use super::sphereface2::Binary;
use super::subcenter::{argmax_in_group, check_subcenters};
use super::{
    AdaFace, AdaFaceNorms, CurricularFace, CurricularFaceState, ElasticFace, LogitMap, MagFace,
    MarginLoss, SphereFace2,
};
use crate::kernels::{MatRef, gemm, normalize_rows, normalize_rows_grad, parallel, simd};
use crate::{CustomOp, Element, Error, InputGrad, Labels, Tensor, Var};
use rand::Rng;
use rayon::prelude::*;
use std::ops::Range;

/// The `ε` under which a feature's or a centre's norm is floored before dividing by it.
pub const HEAD_NORM_EPS: f64 = 1e-12;

/// A margin loss computed over the classes in blocks: see the [module documentation](self).
#[derive(Clone, Debug, PartialEq)]
pub struct BlockedHead {
    loss: MarginLoss,
    block: usize,
    subcenters: usize,
}

/// A loss of the blocked head's step ([`BlockedHead::step_with`]) with what it takes from the
/// batch: each is the dense op of the same name computed block by block, with the same
/// per-logit formulas. The state carried between batches (AdaFace's norm statistics,
/// CurricularFace's `t`) is updated by the caller before the step, as for the dense ops;
/// [`BlockedHead::target_cosines`] gives CurricularFace's update its cosines.
#[derive(Clone, Copy)]
pub enum BlockLoss<'a, 'g, F: Element> {
    /// The margin-softmax family ([`margin_cross_entropy`](super::margin_cross_entropy)).
    Margin(&'a MarginLoss),
    /// [`adaface_loss`](super::adaface_loss) with the features' norms (read as constants) and
    /// the statistics already updated with them.
    AdaFace(&'a AdaFace, &'a AdaFaceNorms),
    /// [`magface_loss`](super::magface_loss) with the features' norms, through which its
    /// gradient reaches the features.
    MagFace(&'a MagFace),
    /// [`curricularface_loss`](super::curricularface_loss) with the state already updated
    /// with this batch.
    CurricularFace(&'a CurricularFace, &'a CurricularFaceState),
    /// [`elasticface_loss`](super::elasticface_loss) with each sample's margin.
    ElasticFace(&'a ElasticFace, &'a [f64]),
    /// [`sphereface2_loss`](super::sphereface2_loss) with its learned bias (one element on the
    /// tape, which receives its gradient). No class shares a denominator with another.
    SphereFace2(&'a SphereFace2, Var<'g, F>),
}

impl BlockedHead {
    /// The head for `loss`, visiting `block` classes at a time.
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] for a block of 0 classes or a setting of `loss` out of range.
    pub fn new(loss: MarginLoss, block: usize) -> Result<Self, Error> {
        Error::check("class block", block as f64, block > 0, "at least 1 class")?;
        loss.validate()?;
        Ok(BlockedHead {
            loss,
            block,
            subcenters: 1,
        })
    }

    /// The same head with `k` sub-centres per class (sub-center ArcFace's, in front of any of
    /// its losses): the centres are then `[C·K, D]`, class `j`'s sub-centres the rows
    /// `j·K .. j·K + K`, and a class's cosine the best of its `K`
    /// ([`max_over_subcenters`](super::max_over_subcenters)); each class's gradient goes to its
    /// winning sub-centre.
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] for `k = 0`.
    pub fn with_subcenters(self, k: usize) -> Result<Self, Error> {
        check_subcenters(k)?;
        Ok(BlockedHead {
            subcenters: k,
            ..self
        })
    }

    /// Sub-centres per class (1: one centre per class).
    pub fn subcenters(&self) -> usize {
        self.subcenters
    }

    /// The loss.
    pub fn margin_loss(&self) -> &MarginLoss {
        &self.loss
    }

    /// Classes per block.
    pub fn block(&self) -> usize {
        self.block
    }

    /// One training step of the centres, fused, for the head's [`MarginLoss`]:
    /// [`BlockedHead::step_with`] with [`BlockLoss::Margin`].
    ///
    /// # Errors
    /// As [`BlockedHead::step_with`].
    ///
    /// # Panics
    /// As [`BlockedHead::step_with`].
    #[track_caller]
    pub fn step<'g, F: Element>(
        &self,
        features: Var<'g, F>,
        centres: &mut Tensor<F>,
        labels: &Labels,
        sample: Option<&ClassSample>,
        update: impl FnMut(usize, &mut [F], &[F]),
    ) -> Result<Var<'g, F>, Error> {
        let loss = BlockLoss::Margin(&self.loss);
        self.step_with(features, centres, labels, sample, loss, update)
    }

    /// One training step of the centres for `loss`, fused: returns the mean loss `L` over the
    /// classes of `sample` (all `C` when `None`) and, block by block, calls
    /// `update(first_row, rows, grad)` with `grad = ∂L/∂W` for the contiguous rows `rows` of
    /// `centres` from row `first_row` on (the first class's first sub-centre; the class itself
    /// with one sub-centre per class), which `update` may change in place (an SGD step, say).
    /// No centre outside `sample` is read or passed to `update`; with a sample the rows passed
    /// are the sample's runs of consecutive classes.
    ///
    /// The features' side joins the tape: backward from the returned loss gives `x` the
    /// gradient `g·∂L/∂x` for the loss's output gradient `g` (and SphereFace2's bias
    /// `g·∂L/∂b`). The centres receive `∂L/∂W` itself, whatever is done with the loss
    /// afterwards.
    ///
    /// # Errors
    /// [`Error::EmptyBatch`] for `B = 0`; [`Error::DataLength`] when there are not `B` labels
    /// (or ElasticFace margins); [`Error::LabelOutOfRange`] for a label not below `C`;
    /// [`Error::InvalidSetting`] for a setting or state of `loss` out of range, a label outside
    /// the sample, or a sampled class not below `C`; [`Error::NonFinite`] for an ElasticFace
    /// margin that is not finite, or when the loss is not finite (a NaN or infinity in the
    /// features or the centres), before any centre is updated.
    ///
    /// # Panics
    /// When `features` is not `[B, D]` or `centres` not `[C·K, D]` with the same `D`, or
    /// SphereFace2's bias has not one element.
    #[track_caller]
    pub fn step_with<'g, F: Element>(
        &self,
        features: Var<'g, F>,
        centres: &mut Tensor<F>,
        labels: &Labels,
        sample: Option<&ClassSample>,
        loss: BlockLoss<'_, 'g, F>,
        update: impl FnMut(usize, &mut [F], &[F]),
    ) -> Result<Var<'g, F>, Error> {
        let shape = [centres.shape()[0], centres.shape()[1]];
        let centres = centres.data_mut();
        self.fused_step(features, centres, shape, labels, sample, loss, update)
    }

    /// [`BlockedHead::step_with`] over centres stored in bfloat16 ([`Bf16Centres`]): each
    /// block is widened to f32 (exactly) before the same arithmetic, so the step equals the
    /// f32 step on the widened centres bit for bit; `update(first_row, rows, grad)` receives
    /// the stored rows and their f32 gradient (round the updated rows back with
    /// [`sgd_momentum_update_bf16`](crate::optim::sgd_momentum_update_bf16), say).
    ///
    /// # Errors
    /// As [`BlockedHead::step_with`].
    ///
    /// # Panics
    /// As [`BlockedHead::step_with`].
    #[track_caller]
    pub fn step_bf16<'g>(
        &self,
        features: Var<'g, f32>,
        centres: &mut Bf16Centres,
        labels: &Labels,
        sample: Option<&ClassSample>,
        loss: BlockLoss<'_, 'g, f32>,
        update: impl FnMut(usize, &mut [u16], &[f32]),
    ) -> Result<Var<'g, f32>, Error> {
        let shape = centres.shape();
        self.fused_step(features, centres, shape, labels, sample, loss, update)
    }

    /// The step over any storage of the centres (`shape`: `[C·K, D]`).
    #[allow(clippy::too_many_arguments)]
    #[track_caller]
    fn fused_step<'g, F: Element, C: CentreRows<F> + ?Sized>(
        &self,
        features: Var<'g, F>,
        centres: &mut C,
        shape: [usize; 2],
        labels: &Labels,
        sample: Option<&ClassSample>,
        loss: BlockLoss<'_, 'g, F>,
        mut update: impl FnMut(usize, &mut [C::Stored], &[F]),
    ) -> Result<Var<'g, F>, Error> {
        let x = features.value();
        let (b, d, classes) = self.check_shapes("blocked head step", x.shape(), &shape);
        let selection = match sample {
            None => Selection::All(classes),
            Some(s) => Selection::Sample(s.classes()),
        };
        let targets = check_labels(labels, b, classes, &selection)?;
        let mut pass = Pass::new(x.data(), b, d, targets, self, selection);
        let (rule, bias) = rule(&loss, &pass, centres)?;
        let coef = F::from_f64(1.0 / b as f64);
        let (value, dbias) = pass.forward(centres, &rule, coef);
        // a NaN or infinity in the features or the centres shows in the loss: refused before
        // any centre is updated
        if !value.is_finite() {
            return Err(Error::NonFinite {
                what: "blocked head loss (features or centres not finite)".into(),
                index: 0,
                value: value.to_f64(),
            });
        }
        let rows_per_class = self.subcenters * d;
        let mut dxn = vec![F::ZERO; b * d];
        for k in 0..pass.blocks() {
            let runs = pass.runs(k);
            pass.load(k, centres);
            let dw = pass.backward_block(k, &rule, coef, &mut dxn);
            for (first, range) in runs {
                let rows = first * rows_per_class..(first + range.len()) * rows_per_class;
                update(
                    first * self.subcenters,
                    centres.stored_mut(rows),
                    &dw[range.start * rows_per_class..range.end * rows_per_class],
                );
            }
        }
        let mut dx = vec![F::ZERO; b * d];
        pass.features_grad(&dxn, &mut dx, true);
        drop(pass);
        drop(x);
        let graph = features.graph();
        Ok(match bias {
            None => {
                let op = FeatureGrad { dx, dbias: None };
                graph.custom(op, &[features], Tensor::scalar(value))
            }
            Some(bias) => {
                let op = FeatureGrad {
                    dx,
                    dbias: Some(dbias),
                };
                graph.custom(op, &[features, bias], Tensor::scalar(value))
            }
        })
    }

    /// Each row's cosine to its target class (the best of its sub-centres): what
    /// [`CurricularFaceState::update_from_targets`] takes, without the `[B, C]` cosines.
    ///
    /// # Errors
    /// As [`BlockedHead::step`], for the labels.
    ///
    /// # Panics
    /// As [`BlockedHead::step`], for the shapes.
    #[track_caller]
    pub fn target_cosines<F: Element>(
        &self,
        features: &Tensor<F>,
        centres: &Tensor<F>,
        labels: &Labels,
    ) -> Result<Vec<F>, Error> {
        let (b, d, classes) = self.check_shapes(
            "blocked head target cosines",
            features.shape(),
            centres.shape(),
        );
        let selection = Selection::All(classes);
        let targets = check_labels(labels, b, classes, &selection)?;
        let pass = Pass::new(features.data(), b, d, targets, self, selection);
        Ok(pass.target_cosines(centres.data()))
    }

    /// Panics (at the caller's line) unless `x` is `[B, D]` and `w` is `[C·K, D]`; returns
    /// `(B, D, C)`.
    #[track_caller]
    fn check_shapes(&self, op: &str, x: &[usize], w: &[usize]) -> (usize, usize, usize) {
        let k = self.subcenters;
        match (x, w) {
            ([b, d], [rows, d2]) if d == d2 && rows % k == 0 => (*b, *d, *rows / k),
            _ => panic!(
                "shape mismatch in {op}: features {x:?} (expected [B, D]), centres {w:?} \
                 (expected [C·K, D] with K = {k})"
            ),
        }
    }

    /// The same loss as an op on the tape with both inputs: `features` `[B, D]` and `centres`
    /// `[C, D]`. Backward gives the centres a dense `[C, D]` gradient, as any parameter gets,
    /// but the `B×C` cosines are never held. For gradient checks, and for heads small enough
    /// to keep a dense gradient.
    ///
    /// # Errors
    /// As [`BlockedHead::step`].
    ///
    /// # Panics
    /// As [`BlockedHead::step`].
    #[track_caller]
    pub fn loss<'g, F: Element>(
        &self,
        features: Var<'g, F>,
        centres: Var<'g, F>,
        labels: &Labels,
    ) -> Result<Var<'g, F>, Error> {
        let (x, w) = (features.value(), centres.value());
        let (b, d, classes) = self.check_shapes("blocked head loss", x.shape(), w.shape());
        let targets = check_labels(labels, b, classes, &Selection::All(classes))?;
        let mut pass = Pass::new(x.data(), b, d, targets, self, Selection::All(classes));
        let rule = Rule::Softmax(family_rule(&self.loss));
        let (loss, _) = pass.forward(w.data(), &rule, F::from_f64(1.0 / b as f64));
        let op = BlockedXent {
            head: self.clone(),
            targets: std::mem::take(&mut pass.targets),
            lse: pass.lse.to_vec(),
        };
        drop(pass);
        drop((x, w));
        Ok(features
            .graph()
            .custom(op, &[features, centres], Tensor::scalar(loss)))
    }
}

/// How the shards of a class-parallel head (each holding a contiguous range of the classes,
/// [`BlockedHead::shard_step`]) combine what each computed over its own classes. A
/// communicator implements it with all-reduces; every shard calls both methods once per step,
/// in this order.
pub trait ShardExchange<F> {
    /// Turns each row's statistics over this shard's classes into those over every class, in
    /// place: `max[r]`, the largest logit of row `r`; `sum[r] = Σ_j exp(z_rj − max[r])`;
    /// `target[r]`, the target logit `z_{r,y_r}` (0 where the target is another shard's).
    /// Combined: `max = maxₛ maxₛ`, `sum = Σₛ sumₛ·exp(maxₛ − max)`, `target = Σₛ targetₛ`.
    fn combine_rows(&mut self, max: &mut [F], sum: &mut [F], target: &mut [F]);

    /// Sums over the shards the gradient of the normalised features `∂L/∂x̂` (`[B, D]`), each
    /// shard's holding the terms of its own classes, in place.
    fn sum_features_grad(&mut self, grad: &mut [F]);
}

impl BlockedHead {
    /// [`BlockedHead::step`] over one shard of the classes: `centres` (`[C_s, D]`) are the
    /// classes `first_class..first_class + C_s` of a head of `labels.classes()` classes, and
    /// `features` (`[B, D]`, row-major) and `labels` are the whole batch, the same on every
    /// shard. The row statistics and the features' gradient are combined through `exchange`;
    /// the loss `L` (the mean over the batch, over every class) is then the same on every
    /// shard. `update(class, rows, grad)` receives `∂L/∂W` of this shard's centres, block by
    /// block, with `class` the global index of the first row.
    ///
    /// With a `sample` (Partial FC; the shard's part of a sample drawn for the whole batch,
    /// [`ClassSample::draw_keyed`], global class indices), the shard computes over the sampled
    /// classes only, and the loss is the softmax over the union of the shards' samples. A
    /// centre left out is treated as [`BlockedHead::step`] treats one: neither read nor handed
    /// to `update`.
    ///
    /// Returns `L` and `∂L/∂x` for the whole batch, `[B, D]`.
    ///
    /// # Errors
    /// [`Error::EmptyBatch`] for `B = 0`; [`Error::DataLength`] when there are not `B`
    /// labels or `features` is not `B·D` long; [`Error::InvalidSetting`] when the shard's
    /// classes run past `labels.classes()`, a sampled class is not the shard's, or a label of
    /// the shard is not in the sample; [`Error::NonFinite`] when the loss is not finite,
    /// before any centre is updated. The same inputs give the same error on every shard.
    ///
    /// # Panics
    /// When `centres` is not a `[C_s, D]` matrix.
    #[allow(clippy::too_many_arguments)]
    #[track_caller]
    pub fn shard_step<F: Element>(
        &self,
        features: &[F],
        centres: &mut Tensor<F>,
        first_class: usize,
        labels: &Labels,
        sample: Option<&ClassSample>,
        exchange: &mut impl ShardExchange<F>,
        mut update: impl FnMut(usize, &mut [F], &[F]),
    ) -> Result<(F, Vec<F>), Error> {
        let k = self.subcenters;
        let (own, d) = match centres.shape() {
            &[rows, d] if rows % k == 0 => (rows / k, d),
            shape => panic!(
                "shape mismatch in blocked head shard step: centres {shape:?} (expected \
                 [C·K, D] with K = {k})"
            ),
        };
        let b = labels.len();
        if b == 0 {
            return Err(Error::EmptyBatch);
        }
        if features.len() != b * d {
            return Err(Error::DataLength {
                shape: vec![b, d],
                expected: b * d,
                found: features.len(),
            });
        }
        let classes = labels.classes();
        Error::check(
            "first class of the shard",
            first_class as f64,
            first_class + own <= classes,
            "such that the shard's centres are classes of the labels",
        )?;
        // the sampled classes as rows of this shard
        let local: Option<Vec<usize>> = sample.map(|s| {
            s.classes()
                .iter()
                .map(|&c| c.wrapping_sub(first_class))
                .collect()
        });
        let selection = match &local {
            None => Selection::All(own),
            Some(rows) => {
                if let Some(&row) = rows.iter().find(|&&row| row >= own) {
                    return Err(Error::InvalidSetting {
                        name: "sampled class",
                        value: row.wrapping_add(first_class) as f64,
                        requirement: "a class of the shard",
                    });
                }
                Selection::Sample(rows)
            }
        };
        // a target in another shard is at a position no block reaches
        let targets = labels
            .values()
            .iter()
            .map(|&l| match l.checked_sub(first_class).filter(|&t| t < own) {
                None => Ok(usize::MAX),
                Some(t) => selection.position(t).ok_or(Error::InvalidSetting {
                    name: "label",
                    value: l as f64,
                    requirement: "a class of the sample (draw the sample from the batch's labels)",
                }),
            })
            .collect::<Result<_, _>>()?;
        let mut pass = Pass::new(features, b, d, targets, self, selection);
        let softmax = family_rule(&self.loss);
        let mut stats = pass.row_stats(centres.data(), &softmax);
        let mut max: Vec<F> = stats.iter().map(|s| s.max).collect();
        let mut sum: Vec<F> = stats.iter().map(|s| s.sum).collect();
        let mut target: Vec<F> = stats.iter().map(|s| s.target_logit).collect();
        exchange.combine_rows(&mut max, &mut sum, &mut target);
        for (r, s) in stats.iter_mut().enumerate() {
            *s = RowStats {
                max: max[r],
                sum: sum[r],
                target_logit: target[r],
                target_norm_slope: F::ZERO,
            };
        }
        let coef = F::from_f64(1.0 / b as f64);
        let loss = pass.finish(&stats, &softmax, coef);
        let rule = Rule::Softmax(softmax);
        if !loss.is_finite() {
            return Err(Error::NonFinite {
                what: "class-parallel head loss (features or centres not finite)".into(),
                index: 0,
                value: loss.to_f64(),
            });
        }
        let mut dxn = vec![F::ZERO; b * d];
        let rows_per_class = k * d;
        for block in 0..pass.blocks() {
            let runs = pass.runs(block);
            pass.load(block, centres.data());
            let dw = pass.backward_block(block, &rule, coef, &mut dxn);
            for (first, range) in runs {
                let rows = first * rows_per_class..(first + range.len()) * rows_per_class;
                update(
                    (first_class + first) * k,
                    &mut centres.data_mut()[rows],
                    &dw[range.start * rows_per_class..range.end * rows_per_class],
                );
            }
        }
        exchange.sum_features_grad(&mut dxn);
        let mut dx = vec![F::ZERO; b * d];
        pass.features_grad(&dxn, &mut dx, true);
        Ok((loss, dx))
    }
}

/// Checks the labels against the batch, the classes and the sample; returns each row's
/// target as a position in the selection.
fn check_labels(
    labels: &Labels,
    batch: usize,
    classes: usize,
    selection: &Selection<'_>,
) -> Result<Vec<usize>, Error> {
    if batch == 0 {
        return Err(Error::EmptyBatch);
    }
    if labels.len() != batch {
        return Err(Error::DataLength {
            shape: vec![batch],
            expected: batch,
            found: labels.len(),
        });
    }
    labels.check_within(classes)?;
    let values = labels.values();
    if let Selection::Sample(sample) = selection
        && let Some(&last) = sample.last()
        && last >= classes
    {
        return Err(Error::InvalidSetting {
            name: "sampled class",
            value: last as f64,
            requirement: "below the number of centres",
        });
    }
    values
        .iter()
        .map(|&label| {
            selection.position(label).ok_or(Error::InvalidSetting {
                name: "label",
                value: label as f64,
                requirement: "a class of the sample (draw the sample from the batch's labels)",
            })
        })
        .collect()
}

/// The classes a pass visits, in order: all of them, or a sorted sample.
#[derive(Clone, Copy, Debug)]
enum Selection<'a> {
    All(usize),
    Sample(&'a [usize]),
}

impl Selection<'_> {
    fn len(&self) -> usize {
        match self {
            Selection::All(c) => *c,
            Selection::Sample(s) => s.len(),
        }
    }

    fn position(&self, class: usize) -> Option<usize> {
        match self {
            Selection::All(c) => (class < *c).then_some(class),
            Selection::Sample(s) => s.binary_search(&class).ok(),
        }
    }
}

/// Centres as the head reads them: rows of `F`, stored as `F` or in a narrower type.
pub(super) trait CentreRows<F> {
    /// The stored element.
    type Stored;
    /// Elements `range` (whole rows) as they are, when stored as `F`.
    fn direct(&self, range: Range<usize>) -> Option<&[F]>;
    /// Elements `range` (whole rows) into `out`, as `F`.
    fn copy_to(&self, range: Range<usize>, out: &mut [F]);
    /// Elements `range` as stored, to update.
    fn stored_mut(&mut self, range: Range<usize>) -> &mut [Self::Stored];
}

impl<F: Element> CentreRows<F> for [F] {
    type Stored = F;

    fn direct(&self, range: Range<usize>) -> Option<&[F]> {
        Some(&self[range])
    }

    fn copy_to(&self, range: Range<usize>, out: &mut [F]) {
        out.copy_from_slice(&self[range]);
    }

    fn stored_mut(&mut self, range: Range<usize>) -> &mut [F] {
        &mut self[range]
    }
}

/// How a step turns each row's cosines into its loss: a softmax over logits (the margin family
/// and the sample-adaptive margins), or SphereFace2's per-class binary terms.
enum Rule<F> {
    Softmax(Softmax<F, Linear<F>>),
    Curricular(Softmax<F, Curricular<F>>),
    Binary { kernel: Binary<F>, bias: F },
}

/// A softmax rule: each row's target logit from its target cosine, the other logits by the
/// dense ops' own [`Others`] kernels, and MagFace's norm terms.
struct Softmax<F, O> {
    targets: TargetMap<F>,
    others: O,
    /// `(e_r, ∂e_r/∂a_r)` of each row (MagFace's regulariser); empty otherwise.
    norm_terms: Vec<(F, F)>,
}

/// Each row's target logit as the dense op computes it.
enum TargetMap<F> {
    Family(LogitMap<F>),
    /// With each row's margin scaler `ẑ`.
    AdaFace(AdaFace, Vec<f64>),
    /// With each row's feature norm `a`.
    MagFace(MagFace, Vec<f64>),
    /// With each row's margin.
    ElasticFace(ElasticFace, Vec<f64>),
}

impl<F: Element> TargetMap<F> {
    /// `(z_y, ∂z_y/∂c, ∂z_y/∂a)` of row `r` at the target cosine `c` (`a` the feature norm).
    #[inline]
    fn target(&self, r: usize, c: F) -> (F, F, F) {
        let f = F::from_f64;
        let (logit, slope, norm_slope) = match self {
            TargetMap::Family(map) => {
                let (z, slope) = map.target(c);
                return (z, slope, F::ZERO);
            }
            TargetMap::AdaFace(loss, scalers) => {
                let (z, slope) = loss.target(c.to_f64(), scalers[r]);
                (z, slope, 0.0)
            }
            TargetMap::MagFace(loss, norms) => loss.target(c.to_f64(), norms[r]),
            TargetMap::ElasticFace(loss, margins) => {
                let (z, slope) = loss.target(c.to_f64(), margins[r]);
                (z, slope, 0.0)
            }
        };
        (f(logit), f(slope), f(norm_slope))
    }
}

/// The state of the passes over one batch: the normalised features, the row statistics, and
/// the buffers one block needs.
struct Pass<'a, F: Element> {
    x: &'a [F],
    b: usize,
    d: usize,
    /// Each row's target, as a position in `selection`.
    targets: Vec<usize>,
    block: usize,
    /// Sub-centres per class, `K`: class `j`'s centres are rows `j·K .. j·K + K`.
    k: usize,
    selection: Selection<'a>,
    eps: F,
    xn: Vec<F>,
    x_norms: Vec<F>,
    /// Each row's log-sum-exp (after [`Pass::forward`]).
    lse: Vec<F>,
    /// Each row's `g·∂L/∂a_r` through its feature norm (MagFace); empty otherwise.
    norm_grad: Vec<F>,
    /// The block's centres gathered from a sample or widened from their storage, `[block·K, D]`
    /// (allocated when first needed).
    gathered: Vec<F>,
    /// The block's normalised centres and their norms.
    wn: Vec<F>,
    w_norms: Vec<F>,
    /// The block's cosines to every sub-centre, `[B, block·K]` (only when `K > 1`).
    sub: Vec<F>,
    /// The block's class cosines `[B, block]`, and their gradient.
    cos: Vec<F>,
    dcos: Vec<F>,
    /// The gradient of the sub-centres' cosines, `[B, block·K]` (only when `K > 1`).
    dsub: Vec<F>,
    /// The block's `∂ŵ` and `∂w`, `[block·K, D]`.
    dwn: Vec<F>,
    dw: Vec<F>,
}

/// A pass's working buffer of `len` elements, from this thread's [pool](crate::pool) when one
/// is there (its contents unspecified: a pass writes each of its buffers before reading it),
/// given back when the pass is dropped. A step of a large head fills some 16 MB of block
/// buffers; fresh pages would cost a page fault per 4 KiB on every step.
fn lend<F: Element>(len: usize) -> Vec<F> {
    crate::pool::take(len).unwrap_or_else(|| vec![F::ZERO; len])
}

impl<F: Element> Drop for Pass<'_, F> {
    fn drop(&mut self) {
        let buffers = [
            &mut self.xn,
            &mut self.x_norms,
            &mut self.lse,
            &mut self.gathered,
            &mut self.wn,
            &mut self.w_norms,
            &mut self.sub,
            &mut self.cos,
            &mut self.dcos,
            &mut self.dsub,
            &mut self.dwn,
            &mut self.dw,
        ];
        for buffer in buffers {
            crate::pool::give(std::mem::take(buffer));
        }
    }
}

/// One row's running log-sum-exp: `sum = Σ exp(z − max)` over the blocks seen so far.
#[derive(Clone, Copy)]
struct RowStats<F> {
    max: F,
    sum: F,
    target_logit: F,
    /// `∂z_y/∂a` (MagFace).
    target_norm_slope: F,
}

impl<'a, F: Element> Pass<'a, F> {
    fn new(
        x: &'a [F],
        b: usize,
        d: usize,
        targets: Vec<usize>,
        head: &BlockedHead,
        selection: Selection<'a>,
    ) -> Self {
        let eps = F::from_f64(HEAD_NORM_EPS);
        let block = head.block.min(selection.len()).max(1);
        let k = head.subcenters;
        let (mut xn, mut x_norms) = (lend(b * d), lend(b));
        normalize_rows(x, d, eps, &mut xn, &mut x_norms);
        let per_subcentre = |len| if k > 1 { lend(len) } else { Vec::new() };
        Pass {
            x,
            b,
            d,
            targets,
            block,
            k,
            selection,
            eps,
            xn,
            x_norms,
            lse: lend(b),
            norm_grad: Vec::new(),
            gathered: Vec::new(),
            wn: lend(block * k * d),
            w_norms: lend(block * k),
            sub: per_subcentre(b * block * k),
            cos: lend(b * block),
            dcos: lend(b * block),
            dsub: per_subcentre(b * block * k),
            dwn: lend(block * k * d),
            dw: lend(block * k * d),
        }
    }

    fn blocks(&self) -> usize {
        self.selection.len().div_ceil(self.block)
    }

    /// Positions (in the selection) of block `k`.
    fn span(&self, k: usize) -> Range<usize> {
        k * self.block..((k + 1) * self.block).min(self.selection.len())
    }

    /// Block `k`'s runs of consecutive classes: `(first class, positions in the block)`.
    fn runs(&self, k: usize) -> Vec<(usize, Range<usize>)> {
        let span = self.span(k);
        match self.selection {
            Selection::All(_) => vec![(span.start, 0..span.len())],
            Selection::Sample(s) => {
                let classes = &s[span];
                let mut runs = Vec::new();
                let mut start = 0;
                for i in 1..=classes.len() {
                    if i == classes.len() || classes[i] != classes[i - 1] + 1 {
                        runs.push((classes[start], start..i));
                        start = i;
                    }
                }
                runs
            }
        }
    }

    /// Normalises block `k`'s centres (every sub-centre of its classes) into `wn`.
    fn load<C: CentreRows<F> + ?Sized>(&mut self, k: usize, centres: &C) {
        let (span, rows) = (self.span(k), self.k * self.d);
        let n = span.len();
        let all = span.start * rows..span.end * rows;
        let direct = match self.selection {
            Selection::All(_) => centres.direct(all.clone()),
            Selection::Sample(_) => None,
        };
        if direct.is_none() && self.gathered.is_empty() {
            self.gathered = lend(self.block * rows);
        }
        let block: &[F] = match (direct, self.selection) {
            (Some(block), _) => block,
            (None, Selection::All(_)) => {
                centres.copy_to(all, &mut self.gathered[..n * rows]);
                &self.gathered[..n * rows]
            }
            (None, Selection::Sample(s)) => {
                for (row, &class) in self.gathered.chunks_mut(rows).zip(&s[span]) {
                    centres.copy_to(class * rows..(class + 1) * rows, row);
                }
                &self.gathered[..n * rows]
            }
        };
        normalize_rows(
            block,
            self.d,
            self.eps,
            &mut self.wn[..n * rows],
            &mut self.w_norms[..n * self.k],
        );
    }

    /// `cos[..B·n]`: each row's cosine to the `n` classes loaded, the best of each class's
    /// sub-centres (`x̂ · ŵᵀ`, then the maximum over groups of `K`).
    fn cosines(&mut self, n: usize) {
        let (b, d, k) = (self.b, self.d, self.k);
        let out = if k > 1 {
            &mut self.sub[..b * n * k]
        } else {
            &mut self.cos[..b * n]
        };
        gemm(
            F::ONE,
            MatRef::new(&self.xn, b, d, false),
            MatRef::new(&self.wn[..n * k * d], n * k, d, true),
            F::ZERO,
            out,
        );
        if k > 1 {
            let groups = self.sub[..b * n * k].chunks(k);
            for (c, group) in self.cos[..b * n].iter_mut().zip(groups) {
                *c = group[argmax_in_group(group)];
            }
        }
    }

    /// Each row's cosine to its target class, `max_a ⟨x̂_r, ŵ_{y·K+a}⟩`, by one dot product per
    /// sub-centre.
    fn target_cosines<C: CentreRows<F> + ?Sized>(&self, centres: &C) -> Vec<F> {
        let (d, k) = (self.d, self.k);
        let mut rows = vec![F::ZERO; k * d];
        let mut wn = vec![F::ZERO; k * d];
        let mut norms = vec![F::ZERO; k];
        let mut dots = vec![F::ZERO; k];
        (0..self.b)
            .map(|r| {
                let class = match self.selection {
                    Selection::All(_) => self.targets[r],
                    Selection::Sample(s) => s[self.targets[r]],
                };
                centres.copy_to(class * k * d..(class + 1) * k * d, &mut rows);
                normalize_rows(&rows, d, self.eps, &mut wn, &mut norms);
                let x = &self.xn[r * d..(r + 1) * d];
                for (dot, w) in dots.iter_mut().zip(wn.chunks(d)) {
                    *dot = x.iter().zip(w).fold(F::ZERO, |acc, (&a, &b)| acc + a * b);
                }
                dots[argmax_in_group(&dots)]
            })
            .collect()
    }

    /// The target of row `r` in block `span` of `n` classes, as a position in the block.
    fn target_in(&self, r: usize, span: &Range<usize>) -> Option<usize> {
        self.targets[r]
            .checked_sub(span.start)
            .filter(|&t| t < span.len())
    }

    /// Pass 1 of a softmax rule: each row's running log-sum-exp over the selection.
    fn row_stats<O: Others<F>, C: CentreRows<F> + ?Sized>(
        &mut self,
        centres: &C,
        rule: &Softmax<F, O>,
    ) -> Vec<RowStats<F>> {
        let neg_inf = F::from_f64(f64::NEG_INFINITY);
        let start = RowStats {
            max: neg_inf,
            sum: F::ZERO,
            target_logit: F::ZERO,
            target_norm_slope: F::ZERO,
        };
        let mut stats = vec![start; self.b];
        for k in 0..self.blocks() {
            let span = self.span(k);
            let n = span.len();
            self.load(k, centres);
            self.cosines(n);
            let this = &*self;
            let fold = |(r, stats): (usize, &mut RowStats<F>)| {
                let row = &this.cos[r * n..(r + 1) * n];
                let target = this.target_in(r, &span);
                simd(
                    #[inline(always)]
                    || fold_row(rule, r, row, target, stats),
                )
            };
            if parallel(self.b * n) {
                stats.par_iter_mut().enumerate().for_each(fold);
            } else {
                stats.iter_mut().enumerate().for_each(fold);
            }
        }
        stats
    }

    /// Each row's log-sum-exp from its statistics into `lse` (and MagFace's norm gradient into
    /// `norm_grad`); returns `Σ_r coef·(lse_r − z_{r,y} + e_r)`.
    fn finish<O>(&mut self, stats: &[RowStats<F>], rule: &Softmax<F, O>, coef: F) -> F {
        let mut total = F::ZERO;
        for (lse, s) in self.lse.iter_mut().zip(stats) {
            *lse = s.max + s.sum.ln();
            total += (*lse - s.target_logit) * coef;
        }
        if !rule.norm_terms.is_empty() {
            self.norm_grad = (stats.iter().zip(&self.lse).zip(&rule.norm_terms))
                .map(|((s, &lse), &(e, de_da))| {
                    total += e * coef;
                    let p_y = (s.target_logit - lse).exp();
                    coef * ((p_y - F::ONE) * s.target_norm_slope + de_da)
                })
                .collect();
        }
        total
    }

    /// Pass 1 of SphereFace2: returns `(Σ_r coef·L_r, Σ_r coef·∂L_r/∂b)`.
    fn binary_forward<C: CentreRows<F> + ?Sized>(
        &mut self,
        centres: &C,
        kernel: &Binary<F>,
        bias: F,
        coef: F,
    ) -> (F, F) {
        let mut rows = vec![(F::ZERO, F::ZERO); self.b];
        for k in 0..self.blocks() {
            let span = self.span(k);
            let n = span.len();
            self.load(k, centres);
            self.cosines(n);
            let targets: Vec<_> = (0..self.b).map(|r| self.target_in(r, &span)).collect();
            kernel.add_block(&self.cos[..self.b * n], n, &targets, bias, &mut rows);
        }
        rows.iter().fold((F::ZERO, F::ZERO), |(l, db), &(lr, dbr)| {
            (l + coef * lr, db + coef * dbr)
        })
    }

    /// Pass 1: the loss (and SphereFace2's `∂L/∂b`), each row's log-sum-exp kept for pass 2.
    fn forward<C: CentreRows<F> + ?Sized>(
        &mut self,
        centres: &C,
        rule: &Rule<F>,
        coef: F,
    ) -> (F, F) {
        match rule {
            Rule::Softmax(rule) => {
                let stats = self.row_stats(centres, rule);
                (self.finish(&stats, rule, coef), F::ZERO)
            }
            Rule::Curricular(rule) => {
                let stats = self.row_stats(centres, rule);
                (self.finish(&stats, rule, coef), F::ZERO)
            }
            Rule::Binary { kernel, bias } => self.binary_forward(centres, kernel, *bias, coef),
        }
    }

    /// Pass 2 over the loaded block `k`: its cosines' gradient (scaled by `coef`) by `rule`,
    /// `∂x̂ += ∂c·ŵ` (written when `k = 0`), and `∂w` of the block, returned.
    fn backward_block(&mut self, k: usize, rule: &Rule<F>, coef: F, dxn: &mut [F]) -> &[F] {
        let span = self.span(k);
        self.cosines(span.len());
        match rule {
            Rule::Softmax(rule) => self.softmax_grad(&span, rule, coef),
            Rule::Curricular(rule) => self.softmax_grad(&span, rule, coef),
            Rule::Binary { kernel, bias } => {
                let n = span.len();
                let targets: Vec<_> = (0..self.b).map(|r| self.target_in(r, &span)).collect();
                let (cos, dcos) = (&self.cos[..self.b * n], &mut self.dcos[..self.b * n]);
                kernel.block_grad(cos, n, &targets, *bias, coef, dcos);
            }
        }
        self.centres_grad(k, dxn)
    }

    /// `dcos = coef·∂L/∂c` of a softmax rule over the block `span`: `o′(c_j)·p_j` off the
    /// target, `(p_y − 1)·dz_y/dc` at it, `p = exp(z − lse)`.
    fn softmax_grad<O: Others<F>>(&mut self, span: &Range<usize>, rule: &Softmax<F, O>, coef: F) {
        let n = span.len();
        let (b, cos, lse) = (self.b, &self.cos[..self.b * n], &self.lse);
        let targets: Vec<_> = (0..b).map(|r| self.target_in(r, span)).collect();
        let grad = |(r, d): (usize, &mut [F])| {
            let row = &cos[r * n..(r + 1) * n];
            simd(
                #[inline(always)]
                || grad_row(rule, r, row, targets[r], lse[r], coef, d),
            )
        };
        let dcos = &mut self.dcos[..b * n];
        if parallel(b * n) {
            dcos.par_chunks_mut(n).enumerate().for_each(grad);
        } else {
            dcos.chunks_mut(n).enumerate().for_each(grad);
        }
    }

    /// From the block's `dcos`: `∂x̂ += ∂c·ŵ` (written when `k = 0`) and the block's `∂w`
    /// through its normalisation, returned; each class's gradient goes to its winning
    /// sub-centre.
    fn centres_grad(&mut self, k: usize, dxn: &mut [F]) -> &[F] {
        let (b, d, kk, n) = (self.b, self.d, self.k, self.span(k).len());
        let rows = n * kk;
        let dcos = if kk > 1 {
            let dsub = &mut self.dsub[..b * rows];
            let groups = dsub.chunks_mut(kk).zip(self.sub.chunks(kk));
            for ((d, c), &g) in groups.zip(&self.dcos[..b * n]) {
                d.fill(F::ZERO);
                d[argmax_in_group(c)] = g;
            }
            &self.dsub[..b * rows]
        } else {
            &self.dcos[..b * n]
        };
        let wn = &self.wn[..rows * d];
        let beta = if k == 0 { F::ZERO } else { F::ONE };
        gemm(
            F::ONE,
            MatRef::new(dcos, b, rows, false),
            MatRef::new(wn, rows, d, false),
            beta,
            dxn,
        );
        gemm(
            F::ONE,
            MatRef::new(dcos, b, rows, true),
            MatRef::new(&self.xn, b, d, false),
            F::ZERO,
            &mut self.dwn[..rows * d],
        );
        normalize_rows_grad(
            &self.dwn[..rows * d],
            wn,
            &self.w_norms[..rows],
            d,
            self.eps,
            &mut self.dw[..rows * d],
            true,
        );
        &self.dw[..rows * d]
    }

    /// `dx (+)= ∂x` from `∂x̂`, through the features' normalisation, plus the gradient through
    /// each feature's norm (`∂a_r/∂x_r = x̂_r`) when the loss has one.
    fn features_grad(&self, dxn: &[F], dx: &mut [F], overwrite: bool) {
        debug_assert_eq!(self.x.len(), dx.len());
        normalize_rows_grad(
            dxn,
            &self.xn,
            &self.x_norms,
            self.d,
            self.eps,
            dx,
            overwrite,
        );
        let d = self.d;
        for (r, &g) in self.norm_grad.iter().enumerate() {
            for (dx, &xn) in dx[r * d..(r + 1) * d].iter_mut().zip(&self.xn[r * d..]) {
                *dx += g * xn;
            }
        }
    }
}

/// Folds one row of a block's cosines (the target at `target`, when in this block) into the
/// row's running log-sum-exp.
#[inline(always)]
fn fold_row<F: Element, O: Others<F>>(
    rule: &Softmax<F, O>,
    r: usize,
    row: &[F],
    target: Option<usize>,
    stats: &mut RowStats<F>,
) {
    let (before, after, z_y) = match target {
        Some(t) => {
            let (z, _, norm_slope) = rule.targets.target(r, row[t]);
            stats.target_norm_slope = norm_slope;
            (&row[..t], &row[t + 1..], Some(z))
        }
        None => (row, &row[..0], None),
    };
    let o = &rule.others;
    let mut block_max = o.max(r, before).max(o.max(r, after));
    if let Some(z) = z_y {
        block_max = block_max.max(z);
    }
    let max = stats.max.max(block_max);
    let carried = if stats.sum == F::ZERO {
        F::ZERO
    } else {
        stats.sum * (stats.max - max).exp()
    };
    let mut sum = carried + o.sum_exp(r, before, max) + o.sum_exp(r, after, max);
    if let Some(z) = z_y {
        sum += (z - max).exp();
        stats.target_logit = z;
    }
    stats.max = max;
    stats.sum = sum;
}

/// Writes `coef·∂L_r/∂c` of one row of a block into `d`: `coef·o′(c_j)·p_j` off the target,
/// `coef·(p_y − 1)·dz_y/dc` at it, `p = exp(z − lse)`.
#[inline(always)]
fn grad_row<F: Element, O: Others<F>>(
    rule: &Softmax<F, O>,
    r: usize,
    row: &[F],
    target: Option<usize>,
    lse: F,
    coef: F,
    d: &mut [F],
) {
    let o = &rule.others;
    match target {
        None => o.grad(r, row, lse, coef, d, true),
        Some(t) => {
            let (d_before, d_rest) = d.split_at_mut(t);
            let (d_target, d_after) = d_rest.split_at_mut(1);
            o.grad(r, &row[..t], lse, coef, d_before, true);
            o.grad(r, &row[t + 1..], lse, coef, d_after, true);
            let (z_y, slope, _) = rule.targets.target(r, row[t]);
            d_target[0] = coef * ((z_y - lse).exp() - F::ONE) * slope;
        }
    }
}

/// The features' side of [`BlockedHead::step`], `∂x = g·∂L/∂x`, computed in the step; with
/// SphereFace2's bias as a second input, its side too, `∂b = g·∂L/∂b`.
pub(crate) struct FeatureGrad<F> {
    pub(crate) dx: Vec<F>,
    pub(crate) dbias: Option<F>,
}

impl<F: Element> CustomOp<F> for FeatureGrad<F> {
    fn name(&self) -> &'static str {
        "blocked head"
    }

    fn backward(
        &self,
        _inputs: &[&Tensor<F>],
        _output: &Tensor<F>,
        g: &[F],
        grads: &mut [Option<InputGrad<'_, F>>],
    ) {
        if let Some(dx) = &mut grads[0] {
            for (i, &v) in self.dx.iter().enumerate() {
                dx.store(i, g[0] * v);
            }
        }
        if let (Some(dbias), Some(Some(grad))) = (self.dbias, grads.get_mut(1)) {
            grad.store(0, g[0] * dbias);
        }
    }
}

/// The margin family's rule: its target map, its linear non-target logits.
fn family_rule<F: Element>(loss: &MarginLoss) -> Softmax<F, Linear<F>> {
    let map = loss.logit_map::<F>();
    let others = Linear {
        scale: map.scale,
        shift: map.nontarget_shift,
    };
    Softmax {
        targets: TargetMap::Family(map),
        others,
        norm_terms: Vec::new(),
    }
}

/// The rule of `loss` for the batch of `pass` (its settings and state checked), and
/// SphereFace2's bias.
#[track_caller]
fn rule<'g, F: Element, C: CentreRows<F> + ?Sized>(
    loss: &BlockLoss<'_, 'g, F>,
    pass: &Pass<'_, F>,
    centres: &C,
) -> Result<(Rule<F>, Option<Var<'g, F>>), Error> {
    let f = F::from_f64;
    let norms = || pass.x_norms.iter().map(|a| a.to_f64()).collect::<Vec<_>>();
    let linear = |scale: f64| Linear {
        scale: f(scale),
        shift: F::ZERO,
    };
    let softmax = |targets, scale| {
        Rule::Softmax(Softmax {
            targets,
            others: linear(scale),
            norm_terms: Vec::new(),
        })
    };
    Ok(match *loss {
        BlockLoss::Margin(loss) => {
            loss.validate()?;
            (Rule::Softmax(family_rule(loss)), None)
        }
        BlockLoss::AdaFace(loss, stats) => {
            loss.validate()?;
            stats.validate()?;
            let scalers = norms()
                .into_iter()
                .map(|a| loss.margin_scaler(a, stats))
                .collect();
            let targets = TargetMap::AdaFace(loss.clone(), scalers);
            (softmax(targets, loss.scale), None)
        }
        BlockLoss::MagFace(loss) => {
            loss.validate()?;
            let a = norms();
            let norm_terms = a
                .iter()
                .map(|&a| {
                    let (g, dg_da) = loss.regulariser(a);
                    (f(loss.lambda_g * g), f(loss.lambda_g * dg_da))
                })
                .collect();
            let rule = Softmax {
                targets: TargetMap::MagFace(loss.clone(), a),
                others: linear(loss.scale),
                norm_terms,
            };
            (Rule::Softmax(rule), None)
        }
        BlockLoss::CurricularFace(loss, state) => {
            loss.validate()?;
            state.validate()?;
            let thresholds = pass
                .target_cosines(centres)
                .into_iter()
                .map(|c| f(loss.hardness_threshold(c.to_f64())))
                .collect();
            let rule = Softmax {
                targets: TargetMap::Family(loss.arcface()?.logit_map()),
                others: Curricular {
                    scale: f(loss.scale),
                    t: f(state.t),
                    thresholds,
                },
                norm_terms: Vec::new(),
            };
            (Rule::Curricular(rule), None)
        }
        BlockLoss::ElasticFace(loss, margins) => {
            loss.validate()?;
            if margins.len() != pass.b {
                return Err(Error::DataLength {
                    shape: vec![pass.b],
                    expected: pass.b,
                    found: margins.len(),
                });
            }
            if let Some(index) = margins.iter().position(|m| !m.is_finite()) {
                return Err(Error::NonFinite {
                    what: "ElasticFace margin".into(),
                    index,
                    value: margins[index],
                });
            }
            let targets = TargetMap::ElasticFace(loss.clone(), margins.to_vec());
            (softmax(targets, loss.scale), None)
        }
        BlockLoss::SphereFace2(loss, bias) => {
            let shape = bias.shape();
            assert!(
                shape.iter().product::<usize>() == 1,
                "blocked head step: SphereFace2's bias must have one element, found shape {shape:?}"
            );
            loss.validate()?;
            let value = bias.value().data()[0];
            let rule = Rule::Binary {
                kernel: loss.kernel(),
                bias: value,
            };
            (rule, Some(bias))
        }
    })
}

/// [`BlockedHead::loss`] on the tape: pass 2 runs in backward, with the output's gradient.
struct BlockedXent<F> {
    head: BlockedHead,
    targets: Vec<usize>,
    lse: Vec<F>,
}

impl<F: Element> CustomOp<F> for BlockedXent<F> {
    fn name(&self) -> &'static str {
        "blocked head"
    }

    fn backward(
        &self,
        inputs: &[&Tensor<F>],
        _output: &Tensor<F>,
        g: &[F],
        grads: &mut [Option<InputGrad<'_, F>>],
    ) {
        let (x, w) = (inputs[0], inputs[1]);
        let ([b, d], [rows, _]) = (x.shape(), w.shape()) else {
            unreachable!("shapes checked when recorded")
        };
        let (b, d, k) = (*b, *d, self.head.subcenters);
        let selection = Selection::All(*rows / k);
        let mut pass = Pass::new(x.data(), b, d, self.targets.clone(), &self.head, selection);
        pass.lse.copy_from_slice(&self.lse);
        let rule = Rule::Softmax(family_rule(&self.head.loss));
        let coef = g[0] * F::from_f64(1.0 / b as f64);
        let mut dxn = vec![F::ZERO; b * d];
        let [dx, dw] = grads else {
            unreachable!("two inputs")
        };
        for block in 0..pass.blocks() {
            let offset = pass.span(block).start * k * d;
            pass.load(block, w.data());
            let grad = pass.backward_block(block, &rule, coef, &mut dxn);
            if let Some(dw) = dw {
                for (i, &v) in grad.iter().enumerate() {
                    dw.store(offset + i, v);
                }
            }
        }
        if let Some(dx) = dx {
            let fresh = dx.is_fresh();
            pass.features_grad(&dxn, dx.data(), fresh);
        }
    }
}

/// A sorted set of classes for one step of a sampled head (InsightFace's Partial FC): every
/// class of the batch, plus negatives drawn uniformly without replacement until the set holds
/// `⌊r·C⌋` classes (or only the batch's classes, when they are more).
///
/// With [`BlockedHead::step`], a centre outside the sample is neither read nor handed to the
/// update: an optimiser step applied through the update (momentum, weight decay) leaves it and
/// its state exactly as they were, as Partial FC's memory bank of weights and momenta does.
/// Its momentum does not decay and no weight decay shrinks it while it is not sampled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassSample {
    classes: Vec<usize>,
}

impl ClassSample {
    /// Draws the sample for `labels` out of `classes` classes at rate `rate`, from `rng`.
    /// `rate = 1` gives every class (and draws nothing).
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] unless `0 < rate ≤ 1`; [`Error::LabelOutOfRange`] for a label
    /// not below `classes`.
    pub fn draw(
        labels: &Labels,
        classes: usize,
        rate: f64,
        rng: &mut (impl Rng + ?Sized),
    ) -> Result<Self, Error> {
        check_sample_rate(rate)?;
        labels.check_within(classes)?;
        let values = labels.values();
        if rate == 1.0 {
            return Ok(ClassSample {
                classes: (0..classes).collect(),
            });
        }
        let mut positives = values.to_vec();
        positives.sort_unstable();
        positives.dedup();
        let wanted = (rate * classes as f64).floor() as usize;
        let negatives = wanted.saturating_sub(positives.len());
        // the i-th negative drawn is the i-th class (in order) that is not a positive
        let mut drawn =
            rand::seq::index::sample(rng, classes - positives.len(), negatives).into_vec();
        drawn.sort_unstable();
        let mut out = Vec::with_capacity(positives.len() + negatives);
        let mut skipped = 0; // positives below the current negative
        let mut p = positives.iter().peekable();
        for i in drawn {
            while let Some(&&q) = p.peek()
                && q <= i + skipped
            {
                out.push(q);
                skipped += 1;
                p.next();
            }
            out.push(i + skipped);
        }
        out.extend(p);
        Ok(ClassSample { classes: out })
    }

    /// The part in `shard` of a sample drawn class by class, for the shards of a
    /// class-parallel head: every class of `labels` in `shard`, and each other class `c` of
    /// `shard` when `u(key, c) < q`, with `u` a uniform number in `[0, 1)` hashed from the
    /// step's `key` and the class (SplitMix64's finaliser) and
    ///
    /// ```text
    /// q = (⌊r·C⌋ − P) / (C − P)     (clamped to [0, 1]; P: the batch's distinct classes)
    /// ```
    ///
    /// so that the whole sample holds `⌊r·C⌋` classes in expectation (at least the `P`
    /// positives, as [`ClassSample::draw`]) and each negative is kept with the same
    /// probability. A class's fate depends on the key and the class alone: however the classes
    /// are cut into shards (any number of ranks, or one process), the parts make the same
    /// sample. `rate = 1` gives every class of the shard.
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] unless `0 < rate ≤ 1` and `shard` lies in `0..classes`;
    /// [`Error::LabelOutOfRange`] for a label not below `classes`.
    pub fn draw_keyed(
        labels: &Labels,
        classes: usize,
        shard: Range<usize>,
        rate: f64,
        key: u64,
    ) -> Result<Self, Error> {
        check_sample_rate(rate)?;
        Error::check(
            "end of the shard",
            shard.end as f64,
            shard.start <= shard.end && shard.end <= classes,
            "at most the number of classes",
        )?;
        labels.check_within(classes)?;
        let values = labels.values();
        if rate == 1.0 {
            return Ok(ClassSample {
                classes: shard.collect(),
            });
        }
        let mut positives = values.to_vec();
        positives.sort_unstable();
        positives.dedup();
        let p = positives.len();
        let wanted = (rate * classes as f64).floor() as usize;
        let keep = match classes - p {
            0 => 0.0,
            negatives => (wanted.saturating_sub(p) as f64 / negatives as f64).min(1.0),
        };
        let classes = shard
            .filter(|&c| positives.binary_search(&c).is_ok() || keyed_uniform(key, c) < keep)
            .collect();
        Ok(ClassSample { classes })
    }

    /// A sample given as a list of classes (sorted here, duplicates dropped).
    pub fn from_classes(mut classes: Vec<usize>) -> Self {
        classes.sort_unstable();
        classes.dedup();
        ClassSample { classes }
    }

    /// The classes, in increasing order.
    pub fn classes(&self) -> &[usize] {
        &self.classes
    }
}

/// A uniform number in `[0, 1)` that depends on `key` and `class` alone: SplitMix64's
/// finaliser over their mix, its top 53 bits.
fn keyed_uniform(key: u64, class: usize) -> f64 {
    let mut z = key ^ (class as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// `Ok` for a class sampling rate in `(0, 1]`, else [`Error::InvalidSetting`] naming it.
fn check_sample_rate(rate: f64) -> Result<(), Error> {
    Error::check(
        "class sampling rate",
        rate,
        rate > 0.0 && rate <= 1.0,
        "in (0, 1]",
    )
}
