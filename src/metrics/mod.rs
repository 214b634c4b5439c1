//! How margin-loss models are judged: closed-set accuracy, open-set verification on pairs,
//! and the geometry of the embedding.
//!
//! # Verification
//!
//! The face-recognition protocol (LFW's: 6,000 pairs in ten folds, each of 300 same-class and
//! 300 different-class pairs), on pairs half of one class and half of two ([`make_pairs`]):
//!
//! - **Score**: the cosine similarity of the pair's two embeddings ([`pair_scores`]); higher
//!   means more alike. A score that is NaN or infinite is an error
//!   ([`Error::NonFiniteScores`]), never a perfect or a worst score.
//! - **Folds** ([`balanced_folds`]): the same-class pairs and the different-class pairs are each
//!   put in a fixed order (by their sample indices: the order the pairs arrive in does not
//!   matter), shuffled with the caller's seed, and cut into ten near-equal parts; fold `k` is
//!   part `k` of both. Every fold holds the overall share of same-class pairs, to within one
//!   pair, as scikit-learn's `StratifiedKFold(10, shuffle=True, random_state=seed)` would.
//!   Every model judged on the same pairs and seed is judged on the same folds.
//! - **Threshold**: for each fold, the one with the highest accuracy on the other nine folds
//!   together, a pair being predicted same-class when its score is at or above it. The
//!   candidates are "all same", a point midway between each two consecutive distinct scores,
//!   and "all different"; of equally accurate candidates the lowest wins.
//! - **Accuracy**: that threshold's accuracy on the held-out fold, reported as the mean and
//!   the population standard deviation (`np.std`, as InsightFace and LFW tables report) over
//!   the ten folds. Scores that carry no information come out near 50%.
//! - **ROC** ([`Roc`]), over all pairs at once: AUC; EER (where the false-accept rate equals
//!   the false-reject rate); TAR at FAR = 1e-3 and 1e-2.
//!
//! # Undefined figures
//!
//! With no same-class or no different-class pair, neither the ROC nor an accuracy over both
//! kinds exists (scikit-learn's `roc_auc_score` refuses such labels); with fewer than ten of
//! either kind, ten folds holding both kinds cannot be made. Rather than failing the whole
//! evaluation (closed-set accuracy and geometry still mean something), [`verification`]
//! reports such figures as `None`, `null` in metrics.json, and says why in
//! [`Verification::undefined`].
//!
//! # Feature norms
//!
//! The norms of the features before normalisation ([`feature_norms`], [`magface_norms`]):
//! their distribution, and the mean norm of correctly and wrongly classified samples, which is
//! what MagFace's and AdaFace's reading of the norm as a sample's quality predicts to differ.

mod norms;

pub use norms::{FeatureNorms, MagFaceNorms, feature_norms, magface_norms, row_norms};

use crate::{Element, Error, Tensor, seeded_rng};
use rand::seq::SliceRandom;
use rand::{Rng, RngExt};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

/// The fraction of predictions equal to their label.
///
/// # Panics
/// When the slices differ in length.
#[track_caller]
pub fn top1_accuracy(predictions: &[usize], labels: &[usize]) -> f64 {
    assert_eq!(
        predictions.len(),
        labels.len(),
        "top1_accuracy: one prediction per label"
    );
    let correct = predictions
        .iter()
        .zip(labels)
        .filter(|(p, l)| p == l)
        .count();
    correct as f64 / labels.len().max(1) as f64
}

/// Two samples, by index, and whether they share a class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Pair {
    /// First sample.
    pub a: usize,
    /// Second sample.
    pub b: usize,
    /// Same class.
    pub same: bool,
}

/// Up to `count` distinct pairs, half of one class and half of two, drawn with `rng`.
/// Fewer when the data cannot supply them (a class needs two samples for a same pair).
pub fn make_pairs<R: Rng + ?Sized>(labels: &[usize], count: usize, rng: &mut R) -> Vec<Pair> {
    let classes = labels.iter().max().map_or(0, |&m| m + 1);
    let mut members = vec![Vec::new(); classes];
    for (i, &l) in labels.iter().enumerate() {
        members[l].push(i);
    }
    let multi: Vec<&Vec<usize>> = members.iter().filter(|m| m.len() >= 2).collect();
    let populated: Vec<&Vec<usize>> = members.iter().filter(|m| !m.is_empty()).collect();
    let mut seen = HashSet::new();
    let mut pairs = Vec::with_capacity(count);
    let want_same = count / 2;
    let mut draw = |same: bool, want: usize, pairs: &mut Vec<Pair>| {
        let (mut got, mut attempts) = (0, 0);
        while got < want && attempts < 20 * want + 100 {
            attempts += 1;
            let (a, b) = if same {
                if multi.is_empty() {
                    break;
                }
                let m = multi[rng.random_range(0..multi.len())];
                let (i, j) = (rng.random_range(0..m.len()), rng.random_range(0..m.len()));
                if i == j {
                    continue;
                }
                (m[i], m[j])
            } else {
                if populated.len() < 2 {
                    break;
                }
                let (x, y) = (
                    rng.random_range(0..populated.len()),
                    rng.random_range(0..populated.len()),
                );
                if x == y {
                    continue;
                }
                let (mx, my) = (populated[x], populated[y]);
                (
                    mx[rng.random_range(0..mx.len())],
                    my[rng.random_range(0..my.len())],
                )
            };
            let key = (a.min(b), a.max(b));
            if seen.insert(key) {
                pairs.push(Pair { a, b, same });
                got += 1;
            }
        }
    };
    draw(true, want_same, &mut pairs);
    draw(false, count - want_same, &mut pairs);
    pairs
}

/// Two rows of an embedding matrix to compare: a labelled [`Pair`], or a bare `(a, b)`.
pub trait RowPair {
    /// The two row indices.
    fn rows(&self) -> (usize, usize);
}

impl RowPair for Pair {
    fn rows(&self) -> (usize, usize) {
        (self.a, self.b)
    }
}

impl RowPair for (usize, usize) {
    fn rows(&self) -> (usize, usize) {
        *self
    }
}

/// The verification score of each pair: the cosine similarity of its two rows of
/// `embeddings` (`[N, D]`, normalised or not),
/// `s(a, b) = ⟨e_a, e_b⟩ / (max(‖e_a‖, ε) · max(‖e_b‖, ε))` with `ε = 1e-12` (as
/// [`NORM_EPS`](crate::nn::NORM_EPS) and `F.normalize`), accumulated in `f64`.
///
/// Pairs are [`Pair`]s (from [`make_pairs`]; `same` is not read) or plain `(a, b)` tuples:
///
/// ```
/// use margrad::{Tensor, metrics::pair_scores};
/// let e = Tensor::from_vec(vec![1.0f32, 0.0, 0.0, 2.0, 3.0, 3.0], &[3, 2]).unwrap();
/// let s = pair_scores(&e, &[(0, 1), (0, 2)]);
/// assert!(s[0].abs() < 1e-12 && (s[1] - 0.5f64.sqrt()).abs() < 1e-7);
/// ```
///
/// # Panics
/// When `embeddings` is not rank 2, or a pair names a row it does not have.
#[track_caller]
pub fn pair_scores<F: Element, P: RowPair>(embeddings: &Tensor<F>, pairs: &[P]) -> Vec<f64> {
    let (n, d) = embeddings.matrix_dims().unwrap_or_else(|| {
        panic!(
            "pair_scores: embeddings must be [N, D], found shape {:?}",
            embeddings.shape()
        )
    });
    let row = |i: usize| {
        assert!(
            i < n,
            "pair_scores: row {i} out of range for {n} embeddings"
        );
        &embeddings.data()[i * d..(i + 1) * d]
    };
    let norm = |r: &[F]| {
        r.iter()
            .map(|v| v.to_f64().powi(2))
            .sum::<f64>()
            .sqrt()
            .max(1e-12)
    };
    pairs
        .iter()
        .map(|p| {
            let (a, b) = p.rows();
            let (a, b) = (row(a), row(b));
            let dot: f64 = a.iter().zip(b).map(|(x, y)| x.to_f64() * y.to_f64()).sum();
            dot / (norm(a) * norm(b))
        })
        .collect()
}

/// [`Error::NonFiniteScores`] when a score is NaN or infinite.
fn check_finite(scores: &[f64]) -> Result<(), Error> {
    let mut bad = scores.iter().enumerate().filter(|(_, s)| !s.is_finite());
    match bad.next() {
        Some((first, &value)) => Err(Error::NonFiniteScores {
            count: 1 + bad.count(),
            total: scores.len(),
            first,
            value,
        }),
        None => Ok(()),
    }
}

/// A ROC curve: false-accept and true-accept rates, from the strictest threshold to the
/// loosest, starting at (0, 0) and ending at (1, 1); empty when it is undefined (no same-class
/// or no different-class pair: one of the two rates would divide by zero).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Roc {
    /// False-accept rate (FAR, false positive rate) at each point.
    pub far: Vec<f64>,
    /// True-accept rate (TAR, true positive rate) at each point.
    pub tar: Vec<f64>,
}

impl Roc {
    /// The curve of `scores` (higher = more alike) against `same`; tied scores form one point.
    ///
    /// ```
    /// use margrad::metrics::Roc;
    /// let roc = Roc::new(&[0.9, 0.8, 0.7, 0.1], &[true, false, true, false]).unwrap();
    /// assert_eq!(roc.auc(), Some(0.75));
    /// // one kind of pair only: a curve, and its figures, do not exist
    /// assert_eq!(Roc::new(&[0.9, 0.1], &[true, true]).unwrap().auc(), None);
    /// // a NaN score is an error, not the best or the worst score
    /// assert!(Roc::new(&[f64::NAN, 0.1], &[true, false]).is_err());
    /// ```
    ///
    /// # Errors
    /// [`Error::NonFiniteScores`] when a score is NaN or infinite.
    ///
    /// # Panics
    /// When the slices differ in length.
    #[track_caller]
    pub fn new(scores: &[f64], same: &[bool]) -> Result<Roc, Error> {
        assert_eq!(scores.len(), same.len(), "Roc: one label per score");
        check_finite(scores)?;
        let positives = same.iter().filter(|&&s| s).count();
        let negatives = same.len() - positives;
        if positives == 0 || negatives == 0 {
            return Ok(Roc {
                far: Vec::new(),
                tar: Vec::new(),
            });
        }
        let mut order: Vec<usize> = (0..scores.len()).collect();
        order.sort_by(|&i, &j| scores[j].total_cmp(&scores[i]));
        let (positives, negatives) = (positives as f64, negatives as f64);
        let (mut far, mut tar) = (vec![0.0], vec![0.0]);
        let (mut tp, mut fp) = (0.0, 0.0);
        for (k, &i) in order.iter().enumerate() {
            if same[i] {
                tp += 1.0;
            } else {
                fp += 1.0;
            }
            let tie_next = order.get(k + 1).is_some_and(|&j| scores[j] == scores[i]);
            if !tie_next {
                far.push(fp / negatives);
                tar.push(tp / positives);
            }
        }
        Ok(Roc { far, tar })
    }

    /// Whether the curve exists (the pairs held both kinds).
    pub fn is_defined(&self) -> bool {
        self.far.len() >= 2
    }

    /// The area under the curve (trapezoids); `None` when the curve is undefined.
    pub fn auc(&self) -> Option<f64> {
        self.is_defined().then(|| {
            self.far
                .windows(2)
                .zip(self.tar.windows(2))
                .map(|(f, t)| (f[1] - f[0]) * (t[0] + t[1]) / 2.0)
                .sum()
        })
    }

    /// The equal error rate: where the false-accept rate equals the false-reject rate
    /// (1 − TAR), interpolated linearly between points; `None` when the curve is undefined.
    pub fn eer(&self) -> Option<f64> {
        if !self.is_defined() {
            return None;
        }
        for k in 1..self.far.len() {
            let gap = |i: usize| self.far[i] - (1.0 - self.tar[i]);
            let (g0, g1) = (gap(k - 1), gap(k));
            if g0 <= 0.0 && g1 >= 0.0 {
                let t = if g1 == g0 { 0.0 } else { -g0 / (g1 - g0) };
                return Some(self.far[k - 1] + t * (self.far[k] - self.far[k - 1]));
            }
        }
        Some(1.0)
    }

    /// The highest true-accept rate at a false-accept rate of at most `far`; `None` when the
    /// curve is undefined.
    pub fn tar_at_far(&self, far: f64) -> Option<f64> {
        self.is_defined().then(|| {
            self.far
                .iter()
                .zip(&self.tar)
                .filter(|(f, _)| **f <= far)
                .map(|(_, t)| *t)
                .fold(0.0, f64::max)
        })
    }
}

/// The number of folds of the LFW protocol.
pub const FOLDS: usize = 10;

/// The fold of each pair (`0..folds`, in the order of `pairs`), balanced by construction: the
/// same-class pairs and the different-class pairs are each sorted by their two sample indices
/// (so that the order of `pairs` does not matter), shuffled with a generator seeded by `seed`,
/// and cut into `folds` parts whose sizes differ by at most one; fold `k` is part `k` of both.
/// Each fold thus holds the overall share of same-class pairs to within one pair, and the
/// folds' sizes differ by at most one (the larger parts of the same-class pairs go to the
/// first folds, those of the different-class pairs to the last).
///
/// With 3,000 pairs of each kind and ten folds, every fold holds 300 of each, as LFW's do.
///
/// # Panics
/// When `folds` is 0.
#[track_caller]
pub fn balanced_folds(pairs: &[Pair], folds: usize, seed: u64) -> Vec<usize> {
    assert!(folds > 0, "balanced_folds: at least one fold");
    let mut rng = seeded_rng(seed);
    let mut fold = vec![0; pairs.len()];
    for same in [true, false] {
        let mut members: Vec<usize> = (0..pairs.len())
            .filter(|&i| pairs[i].same == same)
            .collect();
        members.sort_by_key(|&i| (pairs[i].a.min(pairs[i].b), pairs[i].a.max(pairs[i].b)));
        members.shuffle(&mut rng);
        let (base, extra) = (members.len() / folds, members.len() % folds);
        let mut rest = members.as_slice();
        for k in 0..folds {
            let larger = if same { k < extra } else { k >= folds - extra };
            let (part, tail) = rest.split_at(base + usize::from(larger));
            part.iter().for_each(|&i| fold[i] = k);
            rest = tail;
        }
    }
    fold
}

/// The verification figures of a set of scored pairs (the protocol is the
/// [module's](self#verification)). A figure that is undefined is `None`, `null` in JSON, and
/// `undefined` says why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Verification {
    /// Mean accuracy over the test folds, each at the threshold best on the other folds.
    pub accuracy_mean: Option<f64>,
    /// Population standard deviation of the test folds' accuracies.
    pub accuracy_std: Option<f64>,
    /// ROC area under the curve.
    pub auc: Option<f64>,
    /// Equal error rate.
    pub eer: Option<f64>,
    /// TAR at FAR = 1e-3 (meaningful only with well over 1,000 different-class pairs: see
    /// `pairs` and `positive_pairs`).
    #[serde(rename = "tar_at_far_1e-3")]
    pub tar_at_far_1e3: Option<f64>,
    /// TAR at FAR = 1e-2.
    #[serde(rename = "tar_at_far_1e-2")]
    pub tar_at_far_1e2: Option<f64>,
    /// The number of pairs.
    pub pairs: usize,
    /// How many of them are same-class pairs.
    pub positive_pairs: usize,
    /// The number of folds of the accuracy.
    #[serde(default = "default_folds")]
    pub folds: usize,
    /// Why some figures are undefined (`None` when none is): no pair of one kind (then none
    /// is defined), or fewer than `folds` of one kind (then only the accuracy is undefined).
    #[serde(default)]
    pub undefined: Option<String>,
}

fn default_folds() -> usize {
    FOLDS
}

/// Why figures over `positives` same-class and `negatives` different-class pairs are
/// undefined, if they are.
fn undefined_reason(positives: usize, negatives: usize, folds: usize) -> Option<String> {
    let both = "the ROC and the fold accuracy need both kinds";
    match (positives, negatives) {
        (0, 0) => Some("no pairs".to_string()),
        (0, n) => Some(format!("no same-class pairs, {n} different-class: {both}")),
        (p, 0) => Some(format!("no different-class pairs, {p} same-class: {both}")),
        (p, n) if p < folds || n < folds => Some(format!(
            "{p} same-class and {n} different-class pairs: {folds} balanced folds need at least \
             {folds} of each kind (the ROC figures are defined)"
        )),
        _ => None,
    }
}

/// The threshold with the best accuracy on `(score, same)` items, predicting "same" at or
/// above it. The candidates are −∞ (all same), a point between each two consecutive distinct
/// scores (their midpoint, or the higher one when no float lies between), and +∞ (all
/// different); of equally accurate candidates, the lowest wins.
fn best_threshold(items: &mut [(f64, bool)]) -> f64 {
    items.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total_same = items.iter().filter(|i| i.1).count();
    let (mut best, mut threshold) = (total_same, f64::NEG_INFINITY);
    let (mut same_below, mut diff_below) = (0, 0);
    for k in 0..items.len() {
        if items[k].1 {
            same_below += 1;
        } else {
            diff_below += 1;
        }
        if items.get(k + 1).is_some_and(|next| next.0 == items[k].0) {
            continue;
        }
        let correct = total_same - same_below + diff_below;
        if correct > best {
            best = correct;
            threshold = items.get(k + 1).map_or(f64::INFINITY, |next| {
                let (low, high) = (items[k].0, next.0);
                let mid = low / 2.0 + high / 2.0;
                if mid > low && mid <= high { mid } else { high }
            });
        }
    }
    threshold
}

/// The verification figures of `pairs` scored by `scores` (higher = more alike), by the
/// protocol the [module](self#verification) describes: `folds`-fold accuracy over
/// [`balanced_folds`]`(pairs, folds, seed)`, and the ROC figures over all pairs.
///
/// A figure that cannot be computed is `None`, with the reason in
/// [`undefined`](Verification::undefined): every figure when the pairs are of one kind, the
/// accuracy alone when there are fewer than `folds` of either kind.
///
/// ```
/// use margrad::metrics::{Pair, verification};
/// // 20 same-class pairs scored 0.9, 20 different-class scored 0.1
/// let pairs: Vec<Pair> = (0..40).map(|i| Pair { a: i, b: 40 + i, same: i % 2 == 0 }).collect();
/// let scores: Vec<f64> = pairs.iter().map(|p| if p.same { 0.9 } else { 0.1 }).collect();
/// let v = verification(&pairs, &scores, 10, 0).unwrap();
/// assert_eq!((v.accuracy_mean, v.auc, v.eer), (Some(1.0), Some(1.0), Some(0.0)));
/// ```
///
/// # Errors
/// [`Error::NonFiniteScores`] when a score is NaN or infinite.
///
/// # Panics
/// When the slices differ in length, or `folds` is below 2 (one fold to test, the others to
/// choose the threshold).
#[track_caller]
pub fn verification(
    pairs: &[Pair],
    scores: &[f64],
    folds: usize,
    seed: u64,
) -> Result<Verification, Error> {
    assert_eq!(
        scores.len(),
        pairs.len(),
        "verification: one score per pair"
    );
    assert!(
        folds >= 2,
        "verification: at least two folds (one to test, the others to choose the threshold)"
    );
    check_finite(scores)?;
    let same: Vec<bool> = pairs.iter().map(|p| p.same).collect();
    let roc = Roc::new(scores, &same)?;
    let positives = same.iter().filter(|&&s| s).count();
    let undefined = undefined_reason(positives, pairs.len() - positives, folds);
    let accuracy = undefined.is_none().then(|| {
        let fold = balanced_folds(pairs, folds, seed);
        let accuracies: Vec<f64> = (0..folds)
            .map(|k| {
                let (mut train, mut test) = (Vec::new(), Vec::new());
                for (i, &f) in fold.iter().enumerate() {
                    let item = (scores[i], same[i]);
                    if f == k {
                        test.push(item)
                    } else {
                        train.push(item)
                    }
                }
                let threshold = best_threshold(&mut train);
                let correct = test
                    .iter()
                    .filter(|(s, same)| (*s >= threshold) == *same)
                    .count();
                correct as f64 / test.len() as f64
            })
            .collect();
        let mean = accuracies.iter().sum::<f64>() / folds as f64;
        let var = accuracies.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / folds as f64;
        (mean, var.sqrt())
    });
    Ok(Verification {
        accuracy_mean: accuracy.map(|a| a.0),
        accuracy_std: accuracy.map(|a| a.1),
        auc: roc.auc(),
        eer: roc.eer(),
        tar_at_far_1e3: roc.tar_at_far(1e-3),
        tar_at_far_1e2: roc.tar_at_far(1e-2),
        pairs: pairs.len(),
        positive_pairs: positives,
        folds,
        undefined,
    })
}

/// What a margin loss claims to improve, measured on normalised embeddings, in degrees.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Geometry {
    /// Mean angle between each sample and its class centre (compactness).
    pub intra_angle_deg: f64,
    /// Smallest angle between two class centres (separation).
    pub inter_min_angle_deg: f64,
    /// Mean angle between class centres.
    pub inter_mean_angle_deg: f64,
}

/// The geometry of `embeddings` (`[N, D]`, normalised here) under `labels`: class centres are
/// the normalised means of each class's normalised embeddings. Classes without samples are
/// left out.
pub fn geometry<F: Element>(embeddings: &Tensor<F>, labels: &[usize]) -> Geometry {
    let (n, d) = embeddings.matrix_dims().expect("embeddings are [N, D]");
    let unit = |v: &[f64]| {
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
        v.iter().map(|x| x / norm).collect::<Vec<f64>>()
    };
    let rows: Vec<Vec<f64>> = (0..n)
        .map(|i| {
            unit(
                &embeddings.data()[i * d..(i + 1) * d]
                    .iter()
                    .map(|v| v.to_f64())
                    .collect::<Vec<_>>(),
            )
        })
        .collect();
    let classes = labels.iter().max().map_or(0, |&m| m + 1);
    let mut sums = vec![vec![0.0; d]; classes];
    let mut counts = vec![0usize; classes];
    for (row, &l) in rows.iter().zip(labels) {
        sums[l].iter_mut().zip(row).for_each(|(s, v)| *s += v);
        counts[l] += 1;
    }
    let centres: Vec<Option<Vec<f64>>> = sums
        .iter()
        .zip(&counts)
        .map(|(s, &c)| (c > 0).then(|| unit(s)))
        .collect();
    let angle = |a: &[f64], b: &[f64]| {
        let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        dot.clamp(-1.0, 1.0).acos().to_degrees()
    };
    let intra = rows
        .iter()
        .zip(labels)
        .map(|(r, &l)| angle(r, centres[l].as_ref().expect("has samples")))
        .sum::<f64>()
        / n.max(1) as f64;
    let present: Vec<&Vec<f64>> = centres.iter().flatten().collect();
    let (mut min, mut sum, mut count) = (f64::INFINITY, 0.0, 0usize);
    for i in 0..present.len() {
        for j in i + 1..present.len() {
            let a = angle(present[i], present[j]);
            min = min.min(a);
            sum += a;
            count += 1;
        }
    }
    Geometry {
        intra_angle_deg: intra,
        inter_min_angle_deg: if count > 0 { min } else { 0.0 },
        inter_mean_angle_deg: if count > 0 { sum / count as f64 } else { 0.0 },
    }
}

/// One epoch's figures, as a training run's history records them (metrics.json's `history`,
/// and a checkpoint's training state, so that a resumed run keeps the whole history).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// 1-based.
    pub epoch: usize,
    /// Mean training loss over the epoch's samples.
    pub loss: f64,
    /// Accuracy of the training batches as they were trained (scores without margin).
    pub train_accuracy: f64,
    /// Closed-set accuracy on the test split after the epoch.
    pub test_accuracy: f64,
    /// Training samples per second (evaluation not counted).
    pub samples_per_sec: f64,
    /// Seconds of training in the epoch.
    pub seconds: f64,
}
