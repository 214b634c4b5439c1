//! The run over epochs and steps that [`train`](super::train) and
//! [`train_distributed`](super::train_distributed) share: load and check the data, start or
//! resume, then per epoch the learning rate, the batches, the steps, the tally, the test
//! accuracy, the checkpoint and the events, and at the end the evaluation and the outputs.
//!
//! One process is a world of one (`World::single()`, whose collectives are the identity).
//! Where the two trainers differ on purpose, in how an epoch's batches and a step's random
//! draws are made, [`Sampling`] says so.

use super::distributed::{agree, batch_per_rank, combine, fingerprint, mix};
use super::step::{StepError, StepOutcome, combined_model_step, model_step};
use super::{
    CHECKPOINT_FILE, DataShape, EpochTally, Event, Footprint, Metrics, Start, TrainConfig,
    TrainError, augmented, available_memory, finish, lr_schedule, model_config, output,
    prepare_data, save_epoch, start, stopped, test_accuracy,
};
use crate::data::Dataset;
use crate::distributed::{Shard, World, parameter_checksum};
use crate::nn::Model;
use crate::optim::Optimizer;
use crate::{Error, Labels, Params, SeededRng, Tensor, seeded_rng};
use std::path::Path;
use std::time::Instant;

/// How a run draws its batches and its steps' random numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Sampling {
    /// One process ([`train`](super::train)): each epoch, the run's generator shuffles every
    /// training sample into batches of [`TrainConfig::batch`] (the last one shorter), and the
    /// steps draw their dropout masks from the same generator in turn; the checkpoint saves
    /// it. Augmentation draws from the seed, the epoch and the step.
    Shuffled,
    /// The ranks of a world ([`train_distributed`](super::train_distributed)): each epoch, a
    /// permutation seeded by the seed and the epoch makes the global batches of
    /// [`TrainConfig::batch`] samples, the same on any number of ranks, the samples past the
    /// last whole one left out; each rank trains on its [`Shard`] of each, draws its
    /// augmentation and dropout masks from the seed, the epoch, the step and its rank, and the
    /// ranks' results are combined before the update. The run's generator is left as it was.
    Sharded,
}

impl Sampling {
    /// The steps of an epoch over `samples` training samples (collective).
    ///
    /// # Errors
    /// [`Error::Distributed`] when the ranks hold different numbers of samples, and
    /// [`Error::InvalidSetting`] for a global batch larger than the training set (sharded).
    fn steps(self, world: &World, config: &TrainConfig, samples: usize) -> Result<usize, Error> {
        match self {
            Sampling::Shuffled => {
                assert_eq!(world.size(), 1, "shuffled batches are one process's");
                Ok(samples.div_ceil(config.batch))
            }
            Sampling::Sharded => {
                let steps = Shard::new(world, config.batch / world.size(), samples)?.steps();
                // the lengths agree, so every rank decides alike
                Error::check(
                    "batch",
                    config.batch as f64,
                    steps > 0,
                    "at most the training set's size (a global batch of the data every step)",
                )?;
                Ok(steps)
            }
        }
    }

    /// The batches of epoch `epoch` (1-based) that this process trains on, in order.
    fn batches<'d>(
        self,
        world: &World,
        config: &TrainConfig,
        train: &'d Dataset,
        epoch: usize,
        rng: &mut SeededRng,
    ) -> Box<dyn Iterator<Item = (Tensor<f32>, Labels)> + 'd> {
        match self {
            Sampling::Shuffled => Box::new(train.shuffled_batches(config.batch, rng)),
            Sampling::Sharded => {
                let per_rank = config.batch / world.size();
                let shard = Shard::of(world.rank(), world.size(), per_rank, train.len())
                    .expect("the batch and the rank were checked at the start");
                let batches = shard.batches(config.seed, epoch as u64);
                Box::new(batches.into_iter().map(|samples| train.batch(&samples)))
            }
        }
    }

    /// Step `step` (1-based) of epoch `epoch` on the batch `x` with `labels` (collective when
    /// sharded).
    #[allow(clippy::too_many_arguments)]
    fn step(
        self,
        world: &World,
        config: &TrainConfig,
        model: &Model,
        params: &mut Params<f32>,
        optimizer: &mut Optimizer<f32>,
        rng: &mut SeededRng,
        x: Tensor<f32>,
        labels: &Labels,
        epoch: usize,
        step: usize,
    ) -> Result<StepOutcome, StepError> {
        match self {
            Sampling::Shuffled => {
                let x = augmented(config, x, epoch, step);
                model_step(model, params, optimizer, rng, x, labels)
            }
            Sampling::Sharded => {
                // each rank draws its own augmentation and dropout masks, the same after a
                // resume
                let draw = (step - 1) * world.size() + world.rank() + 1;
                let x = augmented(config, x, epoch, draw);
                let mut step_rng =
                    seeded_rng(config.seed ^ 0x6a09_e667_f3bc_c908 ^ mix(epoch, draw));
                let combine = |local| combine(world, local, labels.len());
                combined_model_step(model, params, optimizer, &mut step_rng, x, labels, combine)
            }
        }
    }
}

/// Trains as `config` says on the ranks of `world` (collective), drawing batches as `sampling`
/// says; rank 0 alone reports events and writes the outputs. Returns the final metrics on rank
/// 0, `None` on the others.
///
/// Every part that can fail on one rank alone is agreed over the ranks (loading the data, the
/// start, claiming the folder, a step, a save, the end), so a failure stops every rank.
pub(super) fn run(
    world: &World,
    sampling: Sampling,
    config: &TrainConfig,
    out: &Path,
    on_event: &mut (dyn FnMut(Event) + Send),
) -> Result<Option<Metrics>, TrainError> {
    world.agree(batch_per_rank(config.batch, world.size()))?;
    let data = agree(world, prepare_data(&config.data))?;
    world.check_same_config("training data", &fingerprint(&data))?;
    let model_config = world.agree(model_config(config, data.train.dim(), data.train.classes))?;
    world.agree(
        Footprint::of_run(config, &DataShape::of(&data))
            .and_then(|footprint| footprint.check(available_memory())),
    )?;
    let Start {
        model,
        mut params,
        mut optimizer,
        mut rng,
        mut history,
    } = agree(world, start(config, &model_config))?;
    parameter_checksum(world, &params)?;
    let claimed = match world.is_root() {
        true => output::claim(out, config.output, config.resume.as_deref()),
        false => Ok(()),
    };
    agree(world, claimed)?;
    let steps = sampling.steps(world, config, data.train.len())?;
    let schedule = lr_schedule(config);
    let checkpoint = out.join(CHECKPOINT_FILE);
    let mut last_good = config.resume.clone();
    if let (Some(from), true) = (&config.resume, world.is_root()) {
        on_event(Event::Resumed {
            from,
            epoch: history.len(),
        });
    }
    for epoch in history.len() + 1..=config.epochs {
        optimizer.set_lr_factor(schedule.factor(epoch - 1));
        let started = Instant::now();
        let mut tally = EpochTally::default();
        let batches = sampling.batches(world, config, &data.train, epoch, &mut rng);
        world.take_traffic();
        for (index, (x, labels)) in batches.enumerate() {
            let step = index + 1;
            let outcome = sampling
                .step(
                    world,
                    config,
                    &model,
                    &mut params,
                    &mut optimizer,
                    &mut rng,
                    x,
                    &labels,
                    epoch,
                    step,
                )
                .map_err(|e| stopped(e, epoch, step, &last_good))?;
            // the loss and the correct predictions are the global batch's
            tally.add(&outcome, labels.len() * world.size());
            if world.is_root() {
                on_event(Event::Step {
                    epoch,
                    step,
                    steps,
                    loss: outcome.loss,
                });
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        let traffic = world.take_traffic();
        // rank 0 judges and saves; the others hold the same record
        let mut accuracy = [match world.is_root() {
            true => test_accuracy(&model, &params, &data),
            false => 0.0,
        }];
        world.broadcast(&mut accuracy, 0);
        history.push(tally.record(epoch, seconds, accuracy[0]));
        let saved = match world.is_root() {
            true => save_epoch(&checkpoint, &model, &params, &optimizer, &rng, &history),
            false => Ok(()),
        };
        agree(world, saved)?;
        last_good = Some(checkpoint.clone());
        if world.is_root() {
            on_event(Event::Epoch(history.last().expect("just pushed")));
            if world.size() > 1 {
                on_event(Event::Communication {
                    epoch,
                    steps,
                    traffic,
                });
            }
        }
    }
    let finished = match world.is_root() {
        true => finish(config, out, &model, &params, &data, model_config, history).map(Some),
        false => Ok(None),
    };
    agree(world, finished)
}
