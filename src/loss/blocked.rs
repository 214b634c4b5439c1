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
//! **Class sampling** ([`ClassSample`], as InsightFace's Partial FC): the head computes the
//! loss over every class of the batch plus uniformly sampled negatives only; the other
//! centres are neither read nor handed to the update.

use super::{LogitMap, MarginLoss};
use crate::kernels::{
    MatRef, gemm, lane_max, lane_sum, normalize_rows, normalize_rows_grad, parallel, simd,
};
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
}

impl BlockedHead {
    /// The head for `loss`, visiting `block` classes at a time.
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] for a block of 0 classes or a setting of `loss` out of range.
    pub fn new(loss: MarginLoss, block: usize) -> Result<Self, Error> {
        Error::check("class block", block as f64, block > 0, "at least 1 class")?;
        loss.validate()?;
        Ok(BlockedHead { loss, block })
    }

    /// The loss.
    pub fn margin_loss(&self) -> &MarginLoss {
        &self.loss
    }

    /// Classes per block.
    pub fn block(&self) -> usize {
        self.block
    }

    /// One training step of the centres, fused: returns the mean loss `L` over the classes of
    /// `sample` (all `C` when `None`) and, block by block, calls
    /// `update(first_class, rows, grad)` with `grad = ∂L/∂W` for the contiguous rows `rows` of
    /// `centres` from class `first_class` on, which `update` may change in place (an SGD step,
    /// say). No centre outside `sample` is read or passed to `update`; with a sample the rows
    /// passed are the sample's runs of consecutive classes.
    ///
    /// The features' side joins the tape: backward from the returned loss gives `x` the
    /// gradient `g·∂L/∂x` for the loss's output gradient `g`. The centres receive `∂L/∂W`
    /// itself, whatever is done with the loss afterwards.
    ///
    /// # Errors
    /// [`Error::EmptyBatch`] for `B = 0`; [`Error::DataLength`] when there are not `B` labels;
    /// [`Error::LabelOutOfRange`] for a label not below `C`; [`Error::InvalidSetting`] for a
    /// label outside the sample, or a sampled class not below `C`; [`Error::NonFinite`] when
    /// the loss is not finite (a NaN or infinity in the features or the centres), before any
    /// centre is updated.
    ///
    /// # Panics
    /// When `features` is not `[B, D]` or `centres` not `[C, D]` with the same `D`.
    #[track_caller]
    pub fn step<'g, F: Element>(
        &self,
        features: Var<'g, F>,
        centres: &mut Tensor<F>,
        labels: &Labels,
        sample: Option<&ClassSample>,
        mut update: impl FnMut(usize, &mut [F], &[F]),
    ) -> Result<Var<'g, F>, Error> {
        let x = features.value();
        let (b, d, classes) = check_shapes("blocked head step", x.shape(), centres.shape());
        let selection = match sample {
            None => Selection::All(classes),
            Some(s) => Selection::Sample(s.classes()),
        };
        let targets = check_labels(labels, b, classes, &selection)?;
        let mut pass = Pass::new(x.data(), b, d, targets, self, selection);
        let coef = F::from_f64(1.0 / b as f64);
        let loss = pass.forward(centres.data(), coef);
        // a NaN or infinity in the features or the centres shows in the loss: refused before
        // any centre is updated
        if !loss.is_finite() {
            return Err(Error::NonFinite {
                what: "blocked head loss (features or centres not finite)".into(),
                index: 0,
                value: loss.to_f64(),
            });
        }
        let mut dxn = vec![F::ZERO; b * d];
        for k in 0..pass.blocks() {
            let runs = pass.runs(k);
            pass.load(k, centres.data());
            let dw = pass.backward_block(k, coef, &mut dxn);
            for (first, range) in runs {
                let rows = first * d..(first + range.len()) * d;
                update(
                    first,
                    &mut centres.data_mut()[rows],
                    &dw[range.start * d..range.end * d],
                );
            }
        }
        let mut dx = vec![F::ZERO; b * d];
        pass.features_grad(&dxn, &mut dx, true);
        drop(x);
        let op = FeatureGrad { dx };
        Ok(features
            .graph()
            .custom(op, &[features], Tensor::scalar(loss)))
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
        let (b, d, classes) = check_shapes("blocked head loss", x.shape(), w.shape());
        let targets = check_labels(labels, b, classes, &Selection::All(classes))?;
        let mut pass = Pass::new(x.data(), b, d, targets, self, Selection::All(classes));
        let loss = pass.forward(w.data(), F::from_f64(1.0 / b as f64));
        let op = BlockedXent {
            head: self.clone(),
            targets: pass.targets,
            lse: pass.lse,
        };
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
    /// Returns `L` and `∂L/∂x` for the whole batch, `[B, D]`.
    ///
    /// # Errors
    /// [`Error::EmptyBatch`] for `B = 0`; [`Error::DataLength`] when there are not `B`
    /// labels or `features` is not `B·D` long; [`Error::InvalidSetting`] when the shard's
    /// classes run past `labels.classes()`; [`Error::NonFinite`] when the loss is not finite,
    /// before any centre is updated. The same inputs give the same error on every shard.
    ///
    /// # Panics
    /// When `centres` is not a `[C_s, D]` matrix.
    #[track_caller]
    pub fn shard_step<F: Element>(
        &self,
        features: &[F],
        centres: &mut Tensor<F>,
        first_class: usize,
        labels: &Labels,
        exchange: &mut impl ShardExchange<F>,
        mut update: impl FnMut(usize, &mut [F], &[F]),
    ) -> Result<(F, Vec<F>), Error> {
        let &[own, d] = centres.shape() else {
            panic!(
                "shape mismatch in blocked head shard step: centres {:?} (expected [C, D])",
                centres.shape()
            )
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
        // a target in another shard is at a position no block reaches
        let targets = labels
            .values()
            .iter()
            .map(|&l| {
                l.checked_sub(first_class)
                    .filter(|&t| t < own)
                    .unwrap_or(usize::MAX)
            })
            .collect();
        let mut pass = Pass::new(features, b, d, targets, self, Selection::All(own));
        let mut stats = pass.row_stats(centres.data());
        let mut max: Vec<F> = stats.iter().map(|s| s.max).collect();
        let mut sum: Vec<F> = stats.iter().map(|s| s.sum).collect();
        let mut target: Vec<F> = stats.iter().map(|s| s.target_logit).collect();
        exchange.combine_rows(&mut max, &mut sum, &mut target);
        for (r, s) in stats.iter_mut().enumerate() {
            *s = RowStats {
                max: max[r],
                sum: sum[r],
                target_logit: target[r],
            };
        }
        let coef = F::from_f64(1.0 / b as f64);
        let loss = pass.finish(&stats, coef);
        if !loss.is_finite() {
            return Err(Error::NonFinite {
                what: "class-parallel head loss (features or centres not finite)".into(),
                index: 0,
                value: loss.to_f64(),
            });
        }
        let mut dxn = vec![F::ZERO; b * d];
        for k in 0..pass.blocks() {
            let span = pass.span(k);
            pass.load(k, centres.data());
            let dw = pass.backward_block(k, coef, &mut dxn);
            let rows = span.start * d..span.end * d;
            update(first_class + span.start, &mut centres.data_mut()[rows], dw);
        }
        exchange.sum_features_grad(&mut dxn);
        let mut dx = vec![F::ZERO; b * d];
        pass.features_grad(&dxn, &mut dx, true);
        Ok((loss, dx))
    }
}

/// Panics (at the caller's line) unless `x` is `[B, D]` and `w` is `[C, D]`; returns `(B, D, C)`.
#[track_caller]
fn check_shapes(op: &str, x: &[usize], w: &[usize]) -> (usize, usize, usize) {
    match (x, w) {
        ([b, d], [c, d2]) if d == d2 => (*b, *d, *c),
        _ => panic!(
            "shape mismatch in {op}: features {x:?} (expected [B, D]), centres {w:?} (expected [C, D])"
        ),
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
    let values = labels.values();
    if let Some(index) = values.iter().position(|&l| l >= classes) {
        return Err(Error::LabelOutOfRange {
            index,
            label: values[index],
            classes,
        });
    }
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

/// The state of the two passes over one batch: the normalised features, the row statistics,
/// and the buffers one block needs.
struct Pass<'a, F> {
    x: &'a [F],
    b: usize,
    d: usize,
    /// Each row's target, as a position in `selection`.
    targets: Vec<usize>,
    map: LogitMap<F>,
    block: usize,
    selection: Selection<'a>,
    eps: F,
    xn: Vec<F>,
    x_norms: Vec<F>,
    /// Each row's log-sum-exp (after [`Pass::forward`]).
    lse: Vec<F>,
    /// The block's centres gathered from a sample, `[block, D]`.
    gathered: Vec<F>,
    /// The block's normalised centres and their norms.
    wn: Vec<F>,
    w_norms: Vec<F>,
    /// The block's cosines `[B, block]`, then their gradient.
    cos: Vec<F>,
    /// The block's `∂ŵ` and `∂w`, `[block, D]`.
    dwn: Vec<F>,
    dw: Vec<F>,
}

/// One row's running log-sum-exp: `sum = Σ exp(z − max)` over the blocks seen so far.
#[derive(Clone, Copy)]
struct RowStats<F> {
    max: F,
    sum: F,
    target_logit: F,
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
        let (mut xn, mut x_norms) = (vec![F::ZERO; b * d], vec![F::ZERO; b]);
        normalize_rows(x, d, eps, &mut xn, &mut x_norms);
        let gathered = match selection {
            Selection::All(_) => Vec::new(),
            Selection::Sample(_) => vec![F::ZERO; block * d],
        };
        Pass {
            x,
            b,
            d,
            targets,
            map: head.loss.logit_map(),
            block,
            selection,
            eps,
            xn,
            x_norms,
            lse: vec![F::ZERO; b],
            gathered,
            wn: vec![F::ZERO; block * d],
            w_norms: vec![F::ZERO; block],
            cos: vec![F::ZERO; b * block],
            dwn: vec![F::ZERO; block * d],
            dw: vec![F::ZERO; block * d],
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

    /// Normalises block `k`'s centres into `wn` (with their norms).
    fn load(&mut self, k: usize, centres: &[F]) {
        let (span, d) = (self.span(k), self.d);
        let n = span.len();
        let rows: &[F] = match self.selection {
            Selection::All(_) => &centres[span.start * d..span.end * d],
            Selection::Sample(s) => {
                for (row, &class) in self.gathered.chunks_mut(d).zip(&s[span]) {
                    row.copy_from_slice(&centres[class * d..(class + 1) * d]);
                }
                &self.gathered[..n * d]
            }
        };
        normalize_rows(
            rows,
            d,
            self.eps,
            &mut self.wn[..n * d],
            &mut self.w_norms[..n],
        );
    }

    /// `cos[..B·n] = x̂ · ŵᵀ` for the `n` centres loaded.
    fn cosines(&mut self, n: usize) {
        let (b, d) = (self.b, self.d);
        gemm(
            F::ONE,
            MatRef::new(&self.xn, b, d, false),
            MatRef::new(&self.wn[..n * d], n, d, true),
            F::ZERO,
            &mut self.cos[..b * n],
        );
    }

    /// Pass 1: every row's log-sum-exp into `lse`; returns `Σ_r coef·(lse_r − z_{r,y})`.
    fn forward(&mut self, centres: &[F], coef: F) -> F {
        let stats = self.row_stats(centres);
        self.finish(&stats, coef)
    }

    /// Pass 1 proper: each row's running log-sum-exp over the selection.
    fn row_stats(&mut self, centres: &[F]) -> Vec<RowStats<F>> {
        let neg_inf = F::from_f64(f64::NEG_INFINITY);
        let start = RowStats {
            max: neg_inf,
            sum: F::ZERO,
            target_logit: F::ZERO,
        };
        let mut stats = vec![start; self.b];
        for k in 0..self.blocks() {
            let span = self.span(k);
            let n = span.len();
            self.load(k, centres);
            self.cosines(n);
            let (map, targets, cos) = (&self.map, &self.targets, &self.cos[..self.b * n]);
            let fold = |(r, stats): (usize, &mut RowStats<F>)| {
                let row = &cos[r * n..(r + 1) * n];
                let target = targets[r].checked_sub(span.start).filter(|&t| t < n);
                simd(
                    #[inline(always)]
                    || fold_row(map, row, target, stats),
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

    /// Each row's log-sum-exp from its statistics into `lse`; returns
    /// `Σ_r coef·(lse_r − z_{r,y})`.
    fn finish(&mut self, stats: &[RowStats<F>], coef: F) -> F {
        let mut total = F::ZERO;
        for (lse, s) in self.lse.iter_mut().zip(stats) {
            *lse = s.max + s.sum.ln();
            total += (*lse - s.target_logit) * coef;
        }
        total
    }

    /// Pass 2 over the loaded block `k`: its cosines' gradient (scaled by `coef`),
    /// `∂x̂ += ∂c·ŵ` (written when `k = 0`), and `∂w` of the block, returned.
    fn backward_block(&mut self, k: usize, coef: F, dxn: &mut [F]) -> &[F] {
        let (b, d, span) = (self.b, self.d, self.span(k));
        let n = span.len();
        self.cosines(n);
        let (map, targets, lse) = (&self.map, &self.targets, &self.lse);
        let grad = |(r, row): (usize, &mut [F])| {
            let target = targets[r].checked_sub(span.start).filter(|&t| t < n);
            simd(
                #[inline(always)]
                || grad_row(map, row, target, lse[r], coef),
            )
        };
        let cos = &mut self.cos[..b * n];
        if parallel(b * n) {
            cos.par_chunks_mut(n).enumerate().for_each(grad);
        } else {
            cos.chunks_mut(n).enumerate().for_each(grad);
        }
        let (dcos, wn) = (&self.cos[..b * n], &self.wn[..n * d]);
        let beta = if k == 0 { F::ZERO } else { F::ONE };
        gemm(
            F::ONE,
            MatRef::new(dcos, b, n, false),
            MatRef::new(wn, n, d, false),
            beta,
            dxn,
        );
        gemm(
            F::ONE,
            MatRef::new(dcos, b, n, true),
            MatRef::new(&self.xn, b, d, false),
            F::ZERO,
            &mut self.dwn[..n * d],
        );
        normalize_rows_grad(
            &self.dwn[..n * d],
            wn,
            &self.w_norms[..n],
            d,
            self.eps,
            &mut self.dw[..n * d],
            true,
        );
        &self.dw[..n * d]
    }

    /// `dx (+)= ∂x` from `∂x̂`, through the features' normalisation.
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
    }
}

/// Folds one row of a block's cosines (the target at `target`, when in this block) into the
/// row's running log-sum-exp.
#[inline(always)]
fn fold_row<F: Element>(
    map: &LogitMap<F>,
    row: &[F],
    target: Option<usize>,
    stats: &mut RowStats<F>,
) {
    let (before, after, z_y) = match target {
        Some(t) => (&row[..t], &row[t + 1..], Some(map.target(row[t]).0)),
        None => (row, &row[..0], None),
    };
    let neg_inf = F::from_f64(f64::NEG_INFINITY);
    let mut block_max = if before.len() + after.len() > 0 {
        map.nontarget(lane_max(before).max(lane_max(after)))
    } else {
        neg_inf
    };
    if let Some(z) = z_y {
        block_max = block_max.max(z);
    }
    let max = stats.max.max(block_max);
    // Σ exp(s·c_j + s·m_nt − max), with the constant folded into one shift
    let shift = max - map.nontarget_shift;
    let term = |c: F| (map.scale * c - shift).exp();
    let carried = if stats.sum == F::ZERO {
        F::ZERO
    } else {
        stats.sum * (stats.max - max).exp()
    };
    let mut sum = carried + lane_sum(before, term) + lane_sum(after, term);
    if let Some(z) = z_y {
        sum += (z - max).exp();
        stats.target_logit = z;
    }
    stats.max = max;
    stats.sum = sum;
}

/// Replaces one row of a block's cosines by `coef·∂L_r/∂c`: `coef·s·p_j` off the target,
/// `coef·(p_y − 1)·dz_y/dc` at it, `p = exp(z − lse)`.
#[inline(always)]
fn grad_row<F: Element>(map: &LogitMap<F>, row: &mut [F], target: Option<usize>, lse: F, coef: F) {
    let at_target = target.map(|t| (t, map.target(row[t])));
    let (factor, shift) = (coef * map.scale, lse - map.nontarget_shift);
    for c in row.iter_mut() {
        *c = factor * (map.scale * *c - shift).exp();
    }
    if let Some((t, (z_y, slope))) = at_target {
        row[t] = coef * ((z_y - lse).exp() - F::ONE) * slope;
    }
}

/// The features' side of [`BlockedHead::step`]: `∂x = g·∂L/∂x`, computed in the step.
pub(crate) struct FeatureGrad<F> {
    pub(crate) dx: Vec<F>,
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
    }
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
        let ([b, d], [classes, _]) = (x.shape(), w.shape()) else {
            unreachable!("shapes checked when recorded")
        };
        let (b, d) = (*b, *d);
        let selection = Selection::All(*classes);
        let mut pass = Pass::new(x.data(), b, d, self.targets.clone(), &self.head, selection);
        pass.lse.copy_from_slice(&self.lse);
        let coef = g[0] * F::from_f64(1.0 / b as f64);
        let mut dxn = vec![F::ZERO; b * d];
        let [dx, dw] = grads else {
            unreachable!("two inputs")
        };
        for k in 0..pass.blocks() {
            let offset = pass.span(k).start * d;
            pass.load(k, w.data());
            let grad = pass.backward_block(k, coef, &mut dxn);
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
        Error::check(
            "class sampling rate",
            rate,
            rate > 0.0 && rate <= 1.0,
            "in (0, 1]",
        )?;
        let values = labels.values();
        if let Some(index) = values.iter().position(|&l| l >= classes) {
            return Err(Error::LabelOutOfRange {
                index,
                label: values[index],
                classes,
            });
        }
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
