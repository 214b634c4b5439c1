//! Class parallelism for a margin head (Partial FC's model-parallel pattern): the `C` class
//! centres are cut into one contiguous shard per rank, so that a head too large for one
//! machine is held by all of them, and each step moves `O(B·D)` numbers whatever `C` is.
//!
//! One step, on every rank, for a global batch of `B = size · b` samples:
//!
//! 1. the features (`[b, D]` per rank) and labels are all-gathered: every rank holds the
//!    global batch `x` `[B, D]`;
//! 2. each rank computes the cosines and logits of its own classes only, and per row its
//!    largest logit, its sum of `exp(z − max)` and (where it owns the target) the target logit;
//! 3. these are combined by two all-reduces (the maximum, then the rescaled sums with the
//!    target logits), so every rank has each row's log-sum-exp over every class and the same
//!    loss `L`;
//! 4. each rank computes `∂L/∂W` of its own centres and updates them; the gradients of the
//!    normalised features are summed over the ranks by an all-reduce, and each rank keeps its
//!    own samples' rows, which then flow back through its embedder.
//!
//! The arithmetic is [`BlockedHead::shard_step`]'s, the loss code of a single process.

use super::{Wire, World};
use crate::loss::{BlockedHead, ClassSample, FeatureGrad, ShardExchange};
use crate::{Element, Error, Labels, Tensor, Var};
use std::ops::Range;

/// Partial FC's class sampling in a step of a [`ClassParallelHead`]: each rank keeps, of its
/// shard, the classes of the global batch and negatives drawn by [`ClassSample::draw_keyed`]
/// at `rate` with the step's `key`, so that the ranks' samples make the same union on any
/// number of ranks.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampling {
    /// The rate `r` in `(0, 1]` (1: every class).
    pub rate: f64,
    /// The step's key (the same on every rank; a new one each step).
    pub key: u64,
}

/// A margin head whose classes are sharded over the ranks: see the
/// [module documentation](self).
#[derive(Clone, Debug, PartialEq)]
pub struct ClassParallelHead {
    head: BlockedHead,
    classes: usize,
    shard: Range<usize>,
}

impl ClassParallelHead {
    /// The most elements [`ClassParallelHead::stream_in_order`] sends at a time: 1 MiB of
    /// `f32`.
    pub const STREAM_CHUNK: usize = 1 << 18;

    /// The head over `classes` classes, of which this rank holds [`ClassParallelHead::shard`].
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] when there are fewer classes than ranks.
    pub fn new(head: BlockedHead, classes: usize, world: &World) -> Result<Self, Error> {
        Self::for_rank(head, classes, world.rank(), world.size())
    }

    /// The head as rank `rank` of a world of `size` holds it (to cut a whole head into the
    /// shards of any number of ranks, say).
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] when there are fewer classes than ranks, or `rank` is not
    /// below `size`.
    pub fn for_rank(
        head: BlockedHead,
        classes: usize,
        rank: usize,
        size: usize,
    ) -> Result<Self, Error> {
        Error::check(
            "classes",
            classes as f64,
            classes >= size,
            "at least one per rank",
        )?;
        Error::check("rank", rank as f64, rank < size, "below the world size")?;
        Ok(ClassParallelHead {
            head,
            classes,
            shard: Self::shard_of(classes, size, rank),
        })
    }

    /// The classes rank `rank` of `size` holds: contiguous, the first `C mod size` ranks one
    /// class more than the others.
    pub fn shard_of(classes: usize, size: usize, rank: usize) -> Range<usize> {
        let (each, extra) = (classes / size, classes % size);
        let start = rank * each + rank.min(extra);
        start..start + each + usize::from(rank < extra)
    }

    /// This rank's classes: its centres are rows `0..len` of the `[len, D]` tensor it holds.
    pub fn shard(&self) -> Range<usize> {
        self.shard.clone()
    }

    /// Every class of the head.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// This rank's centres out of a whole head `[C, D]`: how a head saved whole (by one
    /// process, or gathered from any number of ranks with [`ClassParallelHead::gather`]) is
    /// loaded on this world, whatever its size.
    ///
    /// # Errors
    /// [`Error::DataLength`] when `all` is not a `[C, D]` matrix of this head's `C` classes.
    pub fn take_shard<F: Element>(&self, all: &Tensor<F>) -> Result<Tensor<F>, Error> {
        let d = match all.shape() {
            &[c, d] if c == self.classes => d,
            shape => {
                return Err(Error::DataLength {
                    shape: shape.to_vec(),
                    expected: self.classes,
                    found: shape.first().copied().unwrap_or(0),
                });
            }
        };
        let rows = all.data()[self.shard.start * d..self.shard.end * d].to_vec();
        Tensor::from_vec(rows, &[self.shard.len(), d])
    }

    /// The whole head `[C, D]` on rank 0, put together from every rank's shard `centres`
    /// (collective); `None` on the other ranks. Each shard is padded to the largest for the
    /// gather, which rank 0 receives whole (`C·D` elements and at most `N·D` of padding besides
    /// its own shard) and closes up in place.
    ///
    /// # Panics
    /// When `centres` is not this rank's `[len, D]`.
    #[track_caller]
    pub fn gather<F: Element + Wire>(
        &self,
        world: &World,
        centres: &Tensor<F>,
    ) -> Option<Tensor<F>> {
        let d = match centres.shape() {
            &[len, d] if len == self.shard.len() => d,
            shape => panic!(
                "shape mismatch in class-parallel head gather: centres {shape:?} (expected [{}, D])",
                self.shard.len()
            ),
        };
        let widest = self.classes.div_ceil(world.size()) * d;
        let mut mine = centres.data().to_vec();
        mine.resize(widest, F::ZERO);
        let mut all = world.gather(&mine, 0)?;
        drop(mine);
        // shard r starts at r·widest in the gathered buffer and at its first class's row in the
        // head, never later: moved down in rank order, no shard overwrites one not yet moved
        for r in 1..world.size() {
            let rows = Self::shard_of(self.classes, world.size(), r);
            let from = r * widest;
            all.copy_within(from..from + rows.len() * d, rows.start * d);
        }
        all.truncate(self.classes * d);
        all.shrink_to_fit();
        Some(Tensor::from_vec(all, &[self.classes, d]).expect("C rows of D"))
    }

    /// Every rank's shard `local` (`[len, D]`, this rank's rows of a `[C, D]` matrix: the
    /// centres, their momentum) handed to `sink` on rank 0 in class order, chunk by chunk
    /// (collective): rank 0's own rows straight from `local`, each other rank's sent by a
    /// [`World::broadcast`] from it, [`Self::STREAM_CHUNK`] elements at most at a time; so no rank
    /// ever holds more than its shard and a chunk, and rank 0 can write the whole matrix to a
    /// file as it arrives. `sink` is called on rank 0 only. Once it fails, the chunks left are
    /// still sent (no rank is left waiting) but not handed over, and its first error is
    /// returned.
    ///
    /// # Panics
    /// When `local` is not this rank's `[len, D]`.
    #[track_caller]
    pub fn stream_in_order<F: Element + Wire, E>(
        &self,
        world: &World,
        local: &Tensor<F>,
        mut sink: impl FnMut(&[F]) -> Result<(), E>,
    ) -> Result<(), E> {
        let d = match local.shape() {
            &[len, d] if len == self.shard.len() => d,
            shape => panic!(
                "shape mismatch in class-parallel head stream_in_order: shard {shape:?} \
                 (expected [{}, D])",
                self.shard.len()
            ),
        };
        let mut outcome = Ok(());
        let mut deliver = |chunk: &[F]| {
            if outcome.is_ok() {
                outcome = sink(chunk);
            }
        };
        let rows_per_chunk = (Self::STREAM_CHUNK / d.max(1)).max(1);
        let mut buffer = Vec::new();
        for rank in 0..world.size() {
            let rows = Self::shard_of(self.classes, world.size(), rank);
            for first in (0..rows.len()).step_by(rows_per_chunk) {
                let chunk = first * d..(first + rows_per_chunk).min(rows.len()) * d;
                match (rank, world.rank()) {
                    (0, 0) => deliver(&local.data()[chunk]),
                    (0, _) => {}
                    (from, me) => {
                        buffer.clear();
                        match from == me {
                            true => buffer.extend_from_slice(&local.data()[chunk]),
                            false => buffer.resize(chunk.len(), F::ZERO),
                        }
                        world.broadcast(&mut buffer, from);
                        if me == 0 {
                            deliver(&buffer);
                        }
                    }
                }
            }
        }
        outcome
    }

    /// One step (collective): `features` are this rank's `[b, D]` on its tape, `labels` its
    /// `b` labels (global class indices), `centres` its shard `[len, D]`, which
    /// `update(class, rows, grad)` changes in place as [`BlockedHead::step`]'s update does.
    /// Returns the loss `L`, the mean over the global batch (the same value on every rank), as
    /// an op on this rank's tape: backward from it gives `features` `∂L/∂x` of this rank's
    /// rows. As `L` is already the global batch's, the embedder's gradients are then summed
    /// over the ranks ([`reduce_gradients`](super::reduce_gradients) with factor 1), not
    /// averaged. With a `sampling`, each rank computes over its part of the step's sample only
    /// ([`Sampling`]); a centre left out is neither read nor updated.
    ///
    /// # Errors
    /// On every rank, when any rank's input is wrong: [`Error::LabelOutOfRange`],
    /// [`Error::DataLength`] (labels and features of different counts), [`Error::NonFinite`]
    /// (a loss that is not finite, before any centre is updated), or
    /// [`Error::Distributed`] naming the rank that failed, or saying that the ranks hold
    /// batches of different sizes `b` (checked in the same round trip).
    ///
    /// # Panics
    /// When `features` is not `[b, D]` or `centres` not `[len, D]` with the same `D` and
    /// `len` this rank's number of classes.
    #[track_caller]
    pub fn step<'g, F: Element + Wire>(
        &self,
        world: &World,
        features: Var<'g, F>,
        centres: &mut Tensor<F>,
        labels: &Labels,
        sampling: Option<Sampling>,
        update: impl FnMut(usize, &mut [F], &[F]),
    ) -> Result<Var<'g, F>, Error> {
        let x = features.value();
        let (b, d) = match (x.shape(), centres.shape()) {
            (&[b, d], &[len, d2]) if d == d2 && len == self.shard.len() => (b, d),
            (xs, ws) => panic!(
                "shape mismatch in class-parallel head step: features {xs:?} (expected [b, D]), \
                 centres {ws:?} (expected [{}, D])",
                self.shard.len()
            ),
        };
        // the same batch on every rank, or the gathers below would misalign the rows
        world.agree_on(self.check_labels(labels, b), "batch sizes", b as u64)?;
        let gathered = world.all_gather(x.data());
        let global: Vec<u64> = world.all_gather(
            &labels
                .values()
                .iter()
                .map(|&l| l as u64)
                .collect::<Vec<_>>(),
        );
        drop(x);
        let global = Labels::new(global.iter().map(|&l| l as usize).collect(), self.classes)?;
        // the same on every rank: the global labels and the settings are
        let sample = sampling
            .map(|s| ClassSample::draw_keyed(&global, self.classes, self.shard(), s.rate, s.key))
            .transpose()?;
        let mut exchange = WorldExchange { world };
        let (loss, dx) = self.head.shard_step(
            &gathered,
            centres,
            self.shard.start,
            &global,
            sample.as_ref(),
            &mut exchange,
            update,
        )?;
        let own = world.rank() * b * d..(world.rank() + 1) * b * d;
        let op = FeatureGrad {
            dx: dx[own].to_vec(),
            dbias: None,
        };
        Ok(features
            .graph()
            .custom(op, &[features], Tensor::scalar(loss)))
    }

    fn check_labels(&self, labels: &Labels, b: usize) -> Result<(), Error> {
        if labels.len() != b {
            return Err(Error::DataLength {
                shape: vec![b],
                expected: b,
                found: labels.len(),
            });
        }
        let values = labels.values();
        match values.iter().position(|&l| l >= self.classes) {
            Some(index) => Err(Error::LabelOutOfRange {
                index,
                label: values[index],
                classes: self.classes,
            }),
            None => Ok(()),
        }
    }
}

/// [`ShardExchange`] through a [`World`]'s all-reduces.
struct WorldExchange<'w> {
    world: &'w World,
}

impl<F: Element + Wire> ShardExchange<F> for WorldExchange<'_> {
    fn combine_rows(&mut self, max: &mut [F], sum: &mut [F], target: &mut [F]) {
        let local = max.to_vec();
        self.world.all_reduce_max(max);
        let b = max.len();
        let mut both = Vec::with_capacity(2 * b);
        both.extend(
            sum.iter()
                .zip(&local)
                .zip(max.iter())
                .map(|((&s, &m), &g)| {
                    // a shard without classes has sum 0 and max −∞
                    if s == F::ZERO {
                        F::ZERO
                    } else {
                        s * (m - g).exp()
                    }
                }),
        );
        both.extend_from_slice(target);
        self.world.all_reduce_sum(&mut both);
        sum.copy_from_slice(&both[..b]);
        target.copy_from_slice(&both[b..]);
    }

    fn sum_features_grad(&mut self, grad: &mut [F]) {
        self.world.all_reduce_sum(grad);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shards_cover_the_classes_once() {
        for (classes, size) in [(10, 3), (7, 7), (100, 8), (5, 1)] {
            let shards: Vec<_> = (0..size)
                .map(|r| ClassParallelHead::shard_of(classes, size, r))
                .collect();
            assert_eq!(shards[0].start, 0);
            assert_eq!(shards[size - 1].end, classes);
            for pair in shards.windows(2) {
                assert_eq!(pair[0].end, pair[1].start);
                assert!(pair[0].len() >= pair[1].len() && pair[0].len() <= pair[1].len() + 1);
            }
        }
    }
}
