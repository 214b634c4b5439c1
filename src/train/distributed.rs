//! The trainer over the ranks of a [`World`]: data parallelism of the whole model.
//!
//! Every rank loads the data, builds the same model from the same seed (or loads the same
//! checkpoint) and trains on its own [`Shard`](crate::distributed::Shard) of each global batch
//! of [`TrainConfig::batch`] samples; after backward, the ranks' gradients are averaged
//! ([`reduce_gradients`]) and every rank applies the same update, so that the parameters stay
//! the same on every rank.
//! The ranks agree after every part that can fail on one rank alone (loading the data, a
//! step's loss and gradients, writing an output): a failure on one rank stops every rank with
//! its message, and no rank is left waiting. Rank 0 alone reports events and writes the
//! checkpoint, the export, the figures and metrics.json. The loop over epochs and steps is
//! [`train`](super::train)'s; this file holds the checks at the start and how the ranks
//! combine a step.

use super::epochs::{self, Sampling};
use super::{Event, Footprint, Metrics, PreparedData, TrainError, available_memory};
use super::{StepError, TrainConfig, step::LocalStep};
use crate::Error;
use crate::distributed::{World, reduce_gradients};
use crate::loss::LossKind;
use std::path::{Path, PathBuf};

/// [`train`](super::train) over the ranks of `world` (collective: every rank calls it with the
/// same configuration, `world.size()` dividing [`TrainConfig::batch`]).
///
/// Step `t` of an epoch trains on the same global batch whatever the number of ranks (a
/// seeded permutation of the training samples per epoch,
/// [`Shard`](crate::distributed::Shard)), so that a run on `N` ranks follows one process's
/// (`World::single()`) to rounding: the sums of the gradients are split differently, and f32
/// rounds each split differently. The samples past the last whole
/// global batch of an epoch are left out of it. Dropout masks and augmentation are drawn per
/// rank from the seed, the epoch and the step; BatchNorm normalises with each rank's batch
/// statistics and its running statistics are averaged over the ranks.
///
/// The checkpoint holds the whole model, so a run saved by `N` ranks resumes
/// ([`TrainConfig::resume`], every rank reading the file) on any number of ranks, or in one
/// process with this function and a world of one, with the same global batches.
///
/// Returns the final metrics on rank 0, `None` on the other ranks.
///
/// # Errors
/// As [`train`](super::train), on every rank: a rank's own error on that rank, and
/// [`Error::Distributed`] naming the failing rank and its message on the others; also
/// [`Error::Distributed`] when the ranks were started with different settings, hold different
/// training data, or hold different parameters after loading, and [`Error::InvalidSetting`]
/// when the batch is not a multiple of the number of ranks.
pub fn train_distributed(
    world: &World,
    config: &TrainConfig,
    out: &Path,
    on_event: &mut (dyn FnMut(Event) + Send),
) -> Result<Option<Metrics>, TrainError> {
    world.check_same_config("settings", &settings_hash_input(config))?;
    world.agree(config.validate())?;
    world.agree(loss_splits_over_ranks(config, world.size()))?;
    // agreed as a whole: `threads` is a node's own, so one rank alone may fail here
    world.agree(Footprint::of_threads(config.threads).and_then(|f| f.check(available_memory())))?;
    world.agree(global_threads(config.threads))?;
    epochs::run(world, Sampling::Sharded, config, out, on_event)
}

/// Refuses, on more than one rank, a loss whose state is updated from the batch before the
/// loss is formed (AdaFace's norm statistics, CurricularFace's `t`): each rank would update it
/// from its own share of the batch, and AdaFace's spread of the norms over the ranks is not the
/// mean of the ranks' spreads, so the run would not follow one process's.
fn loss_splits_over_ranks(config: &TrainConfig, ranks: usize) -> Result<(), Error> {
    match config.loss.kind {
        LossKind::AdaFace | LossKind::CurricularFace if ranks > 1 => Err(Error::Distributed {
            message: format!(
                "{:?} updates its statistics from the whole batch before forming the loss, \
                 which {ranks} ranks holding a share each cannot do: train it in one process",
                config.loss.kind
            ),
        }),
        _ => Ok(()),
    }
}

/// Sizes rayon's global pool to `threads` (`None` or 0: rayon's default). The run stays on
/// the calling thread, the one that started MPI, the only one allowed to call it; the ops'
/// parallel work goes to the global pool.
fn global_threads(threads: Option<usize>) -> Result<(), Error> {
    let Some(wanted) = threads.filter(|&n| n > 0) else {
        return Ok(());
    };
    // fails when the pool already runs, which is right if it runs `wanted` threads
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(wanted)
        .build_global();
    match rayon::current_num_threads() {
        running if running == wanted => Ok(()),
        running => Err(Error::Distributed {
            message: format!(
                "{wanted} threads asked for, but the process's thread pool already runs \
                 {running}"
            ),
        }),
    }
}

/// The settings every rank must share, as bytes: the configuration without the threads (a
/// node's own) and the MNIST folder (each node may read its own copy; the data are compared
/// once loaded).
fn settings_hash_input(config: &TrainConfig) -> Vec<u8> {
    let mut shared = config.clone();
    shared.threads = None;
    if let super::DataSource::Mnist { dir } = &mut shared.data.source {
        *dir = PathBuf::new();
    }
    serde_json::to_vec(&shared).expect("configurations serialise")
}

/// Samples per rank and step: `batch / ranks`.
pub(super) fn batch_per_rank(batch: usize, ranks: usize) -> Result<usize, Error> {
    Error::check(
        "batch",
        batch as f64,
        batch.is_multiple_of(ranks) && batch >= ranks,
        "a multiple of the number of ranks (each rank trains on batch / ranks samples)",
    )?;
    Ok(batch / ranks)
}

/// A step's result, combined over the ranks (collective): every rank's success agreed, the
/// gradients and BatchNorm's running statistics averaged, the loss and the correct
/// predictions those of the global batch.
pub(super) fn combine(
    world: &World,
    local: Result<LocalStep<f32>, StepError>,
    samples: usize,
) -> Result<LocalStep<f32>, StepError> {
    let status = local.as_ref().map(|_| ()).map_err(|e| Error::Distributed {
        message: e.to_string(),
    });
    if let Err(e) = world.agree(status) {
        // a divergence on one rank is a divergence at this step on every rank
        let divergence = divergence_of_failed(world, &local);
        return Err(match (local, divergence) {
            (Err(own), _) => own,
            (Ok(_), Some((rank, what, value))) => StepError::NonFinite {
                what: format!("on rank {rank} of {}, {what}", world.size()),
                value,
            },
            (Ok(_), None) => StepError::Forward(e),
        });
    }
    let mut local = local.expect("agreed");
    let size = world.size() as f32;
    reduce_gradients(world, &mut local.grads, 1.0 / size).map_err(|e| match e {
        Error::NonFinite { what, value, .. } => StepError::NonFinite { what, value },
        other => StepError::Forward(other),
    })?;
    // the loss and the correct predictions of the global batch, and the buffers' mean, in one
    // all-reduce
    let outcome = &mut local.outcome;
    let mut sums = vec![
        outcome.loss * samples as f64,
        outcome.correct.unwrap_or(0) as f64,
    ];
    for (_, value) in &local.updates {
        sums.extend(value.data().iter().map(|&v| f64::from(v)));
    }
    world.all_reduce_sum(&mut sums);
    outcome.loss = sums[0] / (samples * world.size()) as f64;
    outcome.correct = outcome.correct.map(|_| sums[1] as usize);
    let mut at = 2;
    for (_, value) in &mut local.updates {
        for v in value.data_mut() {
            *v = (sums[at] / f64::from(size)) as f32;
            at += 1;
        }
    }
    Ok(local)
}

/// After a step that failed on some rank (collective, every rank calls it): when the lowest
/// failing rank's step diverged (a NaN or an infinity), that rank and what was not finite, with
/// its value, on every rank; `None` when it failed otherwise.
fn divergence_of_failed(
    world: &World,
    local: &Result<LocalStep<f32>, StepError>,
) -> Option<(usize, String, f64)> {
    let size = world.size();
    // (size − rank)·2 + diverged of each failing rank: the maximum is the lowest's
    let mut code = [match local {
        Ok(_) => 0,
        Err(e) => {
            ((size - world.rank()) as u64) << 1
                | u64::from(matches!(e, StepError::NonFinite { .. }))
        }
    }];
    world.all_reduce_max(&mut code);
    if code[0] & 1 == 0 {
        return None;
    }
    let failed = size - (code[0] >> 1) as usize;
    let (what, value) = match local {
        Err(StepError::NonFinite { what, value }) if world.rank() == failed => {
            (what.as_bytes().to_vec(), *value)
        }
        _ => (Vec::new(), 0.0),
    };
    let mut head = [what.len() as u64, value.to_bits()];
    world.broadcast(&mut head, failed);
    let mut words: Vec<u64> = what.iter().map(|&b| u64::from(b)).collect();
    words.resize(head[0] as usize, 0);
    world.broadcast(&mut words, failed);
    let what: Vec<u8> = words.iter().map(|&w| w as u8).collect();
    Some((
        failed,
        String::from_utf8_lossy(&what).into_owned(),
        f64::from_bits(head[1]),
    ))
}

/// [`World::agree`] on a result whose error is a [`TrainError`]: the failing rank keeps its
/// own, the others stop with [`Error::Distributed`] carrying its message.
pub(super) fn agree<T>(
    world: &World,
    local: Result<T, impl Into<TrainError>>,
) -> Result<T, TrainError> {
    let local = local.map_err(Into::into);
    let status = local.as_ref().map(|_| ()).map_err(|e| Error::Distributed {
        message: e.to_string(),
    });
    match world.agree(status) {
        Ok(()) => local,
        Err(e) => Err(local.err().unwrap_or(TrainError::Input(e))),
    }
}

/// What must agree between the ranks' training data: their sizes and labels (the features
/// are not hashed: MNIST's 47 MB would cost a noticeable pass at start).
pub(super) fn fingerprint(data: &PreparedData) -> Vec<u8> {
    let mut bytes = Vec::new();
    for set in [&data.train, &data.test, &data.verify] {
        for n in [set.len(), set.dim(), set.classes] {
            bytes.extend_from_slice(&(n as u64).to_le_bytes());
        }
        bytes.extend(set.labels.iter().flat_map(|&l| (l as u64).to_le_bytes()));
    }
    bytes
}

/// A 64-bit key of `(epoch, draw)` for seeding.
pub(super) fn mix(epoch: usize, draw: usize) -> u64 {
    (epoch as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ (draw as u64).wrapping_mul(0xbf58_476d_1ce4_e5b9)
}
