//! Data parallelism: each rank trains the same model on its own part of every global batch,
//! and the ranks' gradients are combined before each optimiser step.

use super::{Wire, World};
use crate::{Element, Error, Gradients, Params, seeded_rng};
use rand::seq::SliceRandom;

/// One rank's part of the data, epoch by epoch: a seeded permutation of the `n` samples, the
/// same on every rank, cut into global batches of `size · batch` samples, of which rank `r`
/// takes the `r`-th run of `batch`. The ranks' parts are disjoint, and step `t`'s global batch
/// (the ranks' batches concatenated in rank order) is exactly the `t`-th batch that one
/// process (`size = 1`, batch `size · batch`) draws from the same seed. The samples past the
/// last whole global batch are left out of that epoch (every rank takes the same number of
/// steps); the permutation changes with the epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    rank: usize,
    size: usize,
    batch: usize,
    samples: usize,
}

impl Shard {
    /// This rank's shard of `samples` samples, with `batch` samples per rank and step
    /// (collective: every rank must hold the same number of samples, or no rank could tell
    /// how many steps the others take).
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] for a batch of 0; [`Error::Distributed`] on every rank when
    /// the ranks hold different numbers of samples.
    pub fn new(world: &World, batch: usize, samples: usize) -> Result<Shard, Error> {
        let (lo, hi) = world.min_max(samples as u64);
        if lo != hi {
            return Err(Error::Distributed {
                message: format!(
                    "the ranks hold data sets of different lengths ({lo} to {hi} samples); \
                     every rank must hold the same samples"
                ),
            });
        }
        Shard::of(world.rank(), world.size(), batch, samples)
    }

    /// Rank `rank`'s shard of `samples` samples in a world of `size` (for a rank other than
    /// this process's).
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] for a batch of 0 or a rank not below `size`.
    pub fn of(rank: usize, size: usize, batch: usize, samples: usize) -> Result<Shard, Error> {
        Error::check("batch per rank", batch as f64, batch > 0, "at least 1")?;
        Error::check("rank", rank as f64, rank < size, "below the world size")?;
        Ok(Shard {
            rank,
            size,
            batch,
            samples,
        })
    }

    /// The global batch: `size · batch` samples per step.
    pub fn global_batch(&self) -> usize {
        self.size * self.batch
    }

    /// The steps of one epoch: `⌊samples / global batch⌋`.
    pub fn steps(&self) -> usize {
        self.samples / self.global_batch()
    }

    /// This rank's batches of epoch `epoch`, as sample indices.
    pub fn batches(&self, seed: u64, epoch: u64) -> Vec<Vec<usize>> {
        let mut order: Vec<usize> = (0..self.samples).collect();
        let mut rng = seeded_rng(seed ^ epoch.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        order.shuffle(&mut rng);
        order
            .chunks_exact(self.global_batch())
            .map(|global| global[self.rank * self.batch..][..self.batch].to_vec())
            .collect()
    }
}

/// `g ← factor · Σ_ranks g` for every parameter gradient, through one flat buffer and one
/// all-reduce (collective). With each rank's loss the mean over its own batch, `factor =
/// 1/size` gives the gradient of the mean over the global batch (data parallelism); with a
/// loss that is already the global batch's (a [`ClassParallelHead`](super::ClassParallelHead)),
/// `factor = 1`.
///
/// # Errors
/// [`Error::Distributed`] on every rank when the ranks hold gradients of different sizes (a
/// different model, or a parameter that received no gradient on one rank only); nothing is
/// changed then. [`Error::NonFinite`] on every rank when the sum holds a NaN or an infinity
/// (one rank's non-finite gradient reaches every rank through the sum, which is the same on
/// every rank, so every rank fails together); nothing is changed then either.
pub fn reduce_gradients<F: Element + Wire>(
    world: &World,
    grads: &mut Gradients<F>,
    factor: F,
) -> Result<(), Error> {
    if world.size() == 1 && factor == F::ONE {
        return all_finite(grads.params().map(|(_, g)| g.data()));
    }
    let layout: Vec<u64> = grads
        .params()
        .map(|(id, g)| (id.index() as u64) << 32 | g.numel() as u64)
        .collect();
    // the same parameters with the same sizes on every rank, or no rank goes on
    let mine = super::fnv1a(&words_as_bytes(&layout));
    let mut both = [mine, u64::MAX - mine];
    world.all_reduce_max(&mut both);
    if both != [mine, u64::MAX - mine] {
        return Err(Error::Distributed {
            message: "the ranks' gradients are of different parameters or sizes (are all \
                      ranks training the same model?)"
                .into(),
        });
    }
    let total = grads.params().map(|(_, g)| g.numel()).sum();
    let mut staged = world.staged_sum::<F>(total);
    let mut at = 0;
    for (_, g) in grads.params() {
        staged.local()[at..at + g.numel()].copy_from_slice(g.data());
        at += g.numel();
    }
    let sum = staged.sum();
    all_finite([sum])?;
    let mut at = 0;
    for (_, g) in grads.params_mut() {
        let n = g.numel();
        for (v, &s) in g.data_mut().iter_mut().zip(&sum[at..at + n]) {
            *v = s * factor;
        }
        at += n;
    }
    Ok(())
}

/// [`Error::NonFinite`] naming the first NaN or infinity among the gradients (the slices
/// taken as one, in order), if any. The common case, every value finite, is one pass without
/// an early exit over each slice (a count, which the compiler vectorises); only a slice that
/// fails is searched for the first culprit.
fn all_finite<'a, F: Element>(slices: impl IntoIterator<Item = &'a [F]>) -> Result<(), Error> {
    let mut offset = 0;
    for slice in slices {
        let not_finite = slice.iter().filter(|v| !v.is_finite()).count();
        if not_finite > 0
            && let Some(index) = slice.iter().position(|v| !v.is_finite())
        {
            return Err(Error::NonFinite {
                what: "the gradients summed over the ranks".into(),
                index: offset + index,
                value: slice[index].to_f64(),
            });
        }
        offset += slice.len();
    }
    Ok(())
}

fn words_as_bytes(words: &[u64]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// Checks that every rank holds the same parameters, bit for bit (collective): an all-reduce
/// of a 64-bit hash of every parameter's bits (the maximum and the minimum over the ranks
/// must agree). Returns the hash.
///
/// # Errors
/// [`Error::Distributed`] on every rank when the ranks' parameters differ.
pub fn parameter_checksum<F: Element>(world: &World, params: &Params<F>) -> Result<u64, Error> {
    let mut bytes = Vec::new();
    for id in params.ids() {
        for &v in params.get(id).data() {
            bytes.extend_from_slice(&v.to_f64().to_bits().to_le_bytes());
        }
    }
    let hash = super::fnv1a(&bytes);
    let mut both = [hash, u64::MAX - hash];
    world.all_reduce_max(&mut both);
    if both[0] != hash || u64::MAX - both[1] != hash {
        return Err(Error::Distributed {
            message: "the ranks' parameters differ: training has diverged between ranks".into(),
        });
    }
    Ok(hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shards_are_disjoint_and_make_up_the_global_batches() {
        let (n, size, batch) = (23, 3, 2);
        let whole = Shard::of(0, 1, size * batch, n).unwrap();
        let global = whole.batches(7, 1);
        assert_eq!(global.len(), 3);
        let parts: Vec<Vec<Vec<usize>>> = (0..size)
            .map(|r| Shard::of(r, size, batch, n).unwrap().batches(7, 1))
            .collect();
        let mut seen = std::collections::BTreeSet::new();
        for (t, g) in global.iter().enumerate() {
            let joined: Vec<usize> = parts.iter().flat_map(|p| p[t].clone()).collect();
            assert_eq!(&joined, g);
            for &i in g {
                assert!(seen.insert(i), "sample {i} in two shards");
            }
        }
        assert_ne!(whole.batches(7, 2), global, "each epoch has its own order");
        assert!(Shard::of(3, 3, 2, n).is_err() && Shard::of(0, 1, 0, n).is_err());
    }
}
