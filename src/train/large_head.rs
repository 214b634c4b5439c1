//! Training over many identities: an MLP embedder and a [`BlockedHead`] end to end, on the
//! synthetic identities made on demand ([`SyntheticIdentities`]), verified on identities never
//! trained on.
//!
//! A step draws its `(identity, sample)` pairs from [`BatchSampler`] (seeded by the step),
//! makes their features, embeds them on the tape, and runs the blocked head's fused step: the
//! centres (`[C, D]`, one identity per row, [`HeadConfig::Centres`]) are updated block by block
//! by SGD with momentum (`v ← μ v + ∂L/∂w`, `w ← w − η v`, PyTorch's rule) while the loss's
//! gradient flows back into the embedder, which the crate's [`Optimizer`] updates with the
//! same rule. With a sampling rate `r < 1` each step visits the batch's identities and
//! uniformly sampled others only ([`ClassSample::draw_keyed`]: `⌊r·C⌋` classes in
//! expectation); a centre left out keeps its value and its momentum. The memory the run will hold is counted before anything is allocated
//! ([`Footprint`]); the checkpoint (model, embedder optimiser, centres' momentum) is written
//! streaming, at the end and every [`LargeHeadConfig::checkpoint_every`] steps, with the steps
//! done, the generator's state and a fingerprint of the settings, so that
//! [`resume_large_head`] continues a stopped run (with the same settings but for the steps and
//! the checkpoints' interval) and ends bit for bit where the uninterrupted one does; the
//! figures are verification on pairs of unseen identities and closed-set accuracy over all `C`
//! identities on held-out samples of some of them.
//!
//! **Over the ranks of a [`World`]** ([`train_large_head_distributed`], `mpirun`): the head is
//! class-parallel ([`ClassParallelHead`], InsightFace's Partial FC): each rank holds its shard
//! of the centres and of their momentum, the embedder is replicated, each rank embeds its own
//! disjoint part of the global batch, and the embedder's gradients are summed over the ranks
//! (the loss is already the global batch's). The global batches are the same on any number of
//! ranks, and so is the class sample ([`ClassSample::draw_keyed`], keyed by the seed and the
//! step): a run on `N` ranks follows one process's to rounding, and a checkpoint (one file,
//! the one a single process writes, streamed to rank 0 a chunk at a time) resumes on any
//! number of ranks. No rank holds more of the head than its shard at any moment: it draws
//! only its rows of the fresh head (the same as one process draws), reads only its rows of a
//! checkpoint, and sends its rows to rank 0's file in chunks. One process is a world of one
//! ([`train_large_head`]), where the shard is the whole head.
//!
//! The loss is [`LargeHeadConfig::loss`], a loss of the margin family; the blocked head also
//! computes the sample-adaptive losses and SphereFace2 ([`BlockLoss`](crate::loss::BlockLoss)),
//! which this trainer does not offer yet: their state (AdaFace's statistics, CurricularFace's
//! `t`, SphereFace2's bias) would join the checkpoint beside the centres' momentum.

use super::{Footprint, available_memory};
use crate::checkpoint::{self, CheckpointError, StreamedParam, TrainingState};
use crate::data::{BatchSampler, IdentitiesConfig, SyntheticIdentities};
use crate::distributed::{
    ClassParallelHead, Sampling, World, parameter_checksum, reduce_gradients,
};
use crate::kernels::{MatRef, first_non_finite, gemm, normalize_rows};
#[cfg(doc)]
use crate::loss::ClassSample;
use crate::loss::{BlockedHead, MarginLoss};
use crate::metrics::{Verification, make_pairs, pair_scores, verification};
use crate::nn::{
    Fill, Forward, HEAD_PREFIX, HeadConfig, MlpConfig, Model, ModelConfig, ParamSource,
};
use crate::optim::{Method, Optimizer, ParamState, sgd_momentum_update};
use crate::{Error, Graph, Labels, ParamId, Params, Tensor, seeded_rng};
use serde::{Deserialize, Serialize};
use std::cell::Cell;
use std::convert::Infallible;
use std::ops::Range;
use std::path::Path;
use std::time::Instant;

/// The settings of a large-head run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LargeHeadConfig {
    /// The identities: how many are trained on (the head's classes) and how many are kept
    /// unseen for verification, their samples, and the data seed.
    pub identities: IdentitiesConfig,
    /// The embedder's hidden widths (ReLU between layers).
    pub hidden: Vec<usize>,
    /// The embedding dimension `D` (the centres' width).
    pub embed_dim: usize,
    /// The margin loss.
    pub loss: MarginLoss,
    /// Classes per block of the head.
    pub block: usize,
    /// The class sampling rate `r` (`0 < r ≤ 1`; 1: every class, every step).
    pub sample_rate: f64,
    /// Samples per step.
    pub batch: usize,
    /// Training steps.
    pub steps: u64,
    /// The learning rate `η` of embedder and centres.
    pub lr: f64,
    /// SGD's momentum `μ` (embedder and centres).
    pub momentum: f64,
    /// Samples of each unseen identity to verify.
    pub verify_samples: u64,
    /// Verification pairs to draw.
    pub pairs: usize,
    /// Trained identities whose held-out samples are classified among all `C`.
    pub accuracy_identities: usize,
    /// Seeds the model, the class samples and the pairs.
    pub seed: u64,
    /// Writes the checkpoint every this many steps as well as at the end (0: at the end only),
    /// so that a run stopped on the way resumes from its last one ([`resume_large_head`]).
    #[serde(default)]
    pub checkpoint_every: u64,
}

impl Default for LargeHeadConfig {
    fn default() -> Self {
        LargeHeadConfig {
            identities: IdentitiesConfig::default(),
            hidden: vec![256],
            embed_dim: 128,
            loss: MarginLoss::am(30.0, 0.35).expect("valid settings"),
            block: 4096,
            sample_rate: 1.0,
            batch: 256,
            steps: 1000,
            lr: 0.1,
            momentum: 0.9,
            verify_samples: 4,
            pairs: 6000,
            accuracy_identities: 1000,
            seed: 0,
            checkpoint_every: 0,
        }
    }
}

impl LargeHeadConfig {
    /// The model: an MLP `input → hidden… → D` and centres `[C, D]`.
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] for a zero width or an invalid loss.
    pub fn model(&self) -> Result<ModelConfig, Error> {
        let mut sizes = vec![self.identities.input_dim];
        sizes.extend(&self.hidden);
        sizes.push(self.embed_dim);
        Ok(ModelConfig {
            embedder: MlpConfig::new(&sizes).sequential()?,
            head: HeadConfig::Centres {
                classes: self.identities.trained,
                loss: self.loss.clone(),
            },
        })
    }

    /// Checks every setting no constructor checks.
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] naming the setting out of range.
    pub fn validate(&self) -> Result<(), Error> {
        Error::check(
            "class sampling rate",
            self.sample_rate,
            self.sample_rate > 0.0 && self.sample_rate <= 1.0,
            "in (0, 1]",
        )?;
        Error::check(
            "class block",
            self.block as f64,
            self.block > 0,
            "at least 1 class",
        )?;
        Error::check("batch size", self.batch as f64, self.batch > 0, "positive")?;
        Error::check("steps", self.steps as f64, self.steps > 0, "positive")?;
        Error::check(
            "learning rate",
            self.lr,
            self.lr > 0.0,
            "positive and finite",
        )?;
        Error::check(
            "momentum",
            self.momentum,
            (0.0..1.0).contains(&self.momentum),
            "in [0, 1)",
        )?;
        Error::check("pairs", self.pairs as f64, self.pairs >= 20, "at least 20")?;
        Error::check(
            "verification samples per identity",
            self.verify_samples as f64,
            self.verify_samples >= 2,
            "at least 2 (a same-identity pair needs two)",
        )?;
        Error::check(
            "accuracy identities",
            self.accuracy_identities as f64,
            (1..=self.identities.trained).contains(&self.accuracy_identities),
            "between 1 and the trained identities",
        )?;
        self.loss.validate()
    }

    /// A fingerprint of every setting a resumed run must share with the run it continues:
    /// all but `steps` and `checkpoint_every` (FNV-1a over their JSON text). Its top bit is
    /// set, so that it never equals the epoch count 1 that checkpoints without it hold.
    pub fn fingerprint(&self) -> u64 {
        let shared = LargeHeadConfig {
            steps: 0,
            checkpoint_every: 0,
            ..self.clone()
        };
        let text = serde_json::to_string(&shared).expect("settings serialise");
        let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        hash | 1 << 63
    }

    /// The memory the run will hold in one process, counted from the settings: centres and
    /// their momentum, the embedder with its gradient and momentum, a step's buffers, the
    /// verification and accuracy samples, the pairs.
    ///
    /// # Errors
    /// [`Error::TooLarge`] when a share overflows 64 bits.
    pub fn footprint(&self) -> Result<Footprint, Error> {
        self.footprint_of_rank(0, 1)
    }

    /// The memory rank `rank` of `ranks` will hold ([`train_large_head_distributed`]): its
    /// shard of the centres and of their momentum, and never more of them (a rank draws, or
    /// reads from a checkpoint, only its shard's rows, and the checkpoint streams to rank 0's
    /// file a chunk at a time); the rest as [`LargeHeadConfig::footprint`], the global batch's
    /// features included.
    ///
    /// # Errors
    /// [`Error::TooLarge`] when a share overflows 64 bits.
    pub fn footprint_of_rank(&self, rank: usize, ranks: usize) -> Result<Footprint, Error> {
        const F32: u64 = 4;
        let classes = ("identities", self.identities.trained);
        let dim = ("embed_dim", self.embed_dim);
        let mut footprint = Footprint::new();
        // centres and momentum: the rank's shard
        let shard = ClassParallelHead::shard_of(self.identities.trained, ranks.max(1), rank);
        footprint.add(2 * F32, &[("identities", shard.len()), dim])?;
        // the embedder's weights, gradients and momentum
        let mut width = self.identities.input_dim;
        for &next in self.hidden.iter().chain([&self.embed_dim]) {
            footprint.add(3 * F32, &[("hidden", width), ("hidden", next + 1)])?;
            width = next;
        }
        // a step: the block's cosines and centres, the batch's features and activations
        let block = ("block", self.block.min(self.identities.trained));
        footprint.add(F32, &[("batch", self.batch), block])?;
        footprint.add(4 * F32, &[block, dim])?;
        let widest = self
            .hidden
            .iter()
            .copied()
            .chain([self.identities.input_dim, self.embed_dim]);
        let widest = widest.max().unwrap_or(0);
        footprint.add(8 * F32, &[("batch", self.batch), ("hidden", widest)])?;
        // the sample of classes
        if self.sample_rate < 1.0 {
            footprint.add(16, &[classes])?;
        }
        // evaluation: features and embeddings of the unseen and held-out samples, the pairs
        let verify = ("unseen identities", self.identities.unseen);
        let per = ("verify_samples", self.verify_samples as usize);
        footprint.add(F32, &[verify, per, ("hidden", widest)])?;
        footprint.add(
            F32,
            &[
                ("accuracy identities", self.accuracy_identities),
                ("hidden", widest),
            ],
        )?;
        footprint.add(48, &[("pairs", self.pairs)])?;
        Ok(footprint)
    }
}

/// What a large-head run reports.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LargeHeadReport {
    /// The settings.
    pub config: LargeHeadConfig,
    /// The mean loss of the first and of the last tenth of the steps.
    pub first_loss: f64,
    /// See `first_loss`.
    pub last_loss: f64,
    /// The steps run by this call (fewer than `config.steps` after a resume).
    #[serde(default)]
    pub steps_run: u64,
    /// Seconds spent training (steps only).
    pub train_seconds: f64,
    /// Seconds spent writing the checkpoint.
    pub save_seconds: f64,
    /// Closed-set top-1 accuracy among all trained identities, on held-out samples of the
    /// first `accuracy_identities` of them.
    pub accuracy: f64,
    /// Verification on pairs of unseen identities.
    pub verification: Verification,
    /// The bytes counted before allocating (on this rank).
    pub footprint_bytes: u64,
    /// `(step, mean loss since the previous report)` at each report.
    #[serde(default)]
    pub reported_losses: Vec<(u64, f64)>,
}

/// What [`train_large_head`] reports while it runs.
#[derive(Clone, Copy, Debug)]
pub enum LargeHeadEvent {
    /// The steps since the last report (every `report_every` steps, fewer at the first report
    /// of a resumed run) ran up to `step`, with this mean loss.
    Steps {
        /// 1-based step.
        step: u64,
        /// Mean loss since the last report.
        loss: f64,
        /// Steps per second since the last report.
        steps_per_sec: f64,
    },
}

/// Why a large-head run stopped.
#[derive(Debug)]
pub enum LargeHeadError {
    /// A setting, or the memory it needs.
    Input(Error),
    /// The loss or an update became non-finite at a step.
    Diverged {
        /// 1-based step.
        step: u64,
        /// The error.
        error: Error,
    },
    /// The checkpoint could not be written, or the one to resume from read.
    Checkpoint(CheckpointError),
    /// The checkpoint to resume was written with other settings than the run's: only `steps`
    /// and `checkpoint_every` may change.
    SettingsDiffer {
        /// The settings that differ, or, when the checkpoint tells only that some do, the
        /// ones that may.
        settings: String,
    },
}

impl std::fmt::Display for LargeHeadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LargeHeadError::Input(e) => write!(f, "{e}"),
            LargeHeadError::Diverged { step, error } => {
                write!(f, "training diverged at step {step}: {error}")
            }
            LargeHeadError::Checkpoint(e) => write!(f, "{e}"),
            LargeHeadError::SettingsDiffer { settings } => write!(
                f,
                "the checkpoint to resume was written with other settings ({settings}): a \
                 resumed run may change only steps and checkpoint_every"
            ),
        }
    }
}

impl std::error::Error for LargeHeadError {}

impl From<Error> for LargeHeadError {
    fn from(e: Error) -> Self {
        LargeHeadError::Input(e)
    }
}

/// Trains the embedder and the blocked head of `config`, writes the checkpoint to
/// `checkpoint_path` (when given: at the end, and every `config.checkpoint_every` steps), and
/// judges the model; `on_event` hears every `report_every` steps.
///
/// # Errors
/// [`LargeHeadError::Input`] for a setting out of range or a run that would not fit in the
/// memory available ([`Error::TooLarge`], before anything is allocated);
/// [`LargeHeadError::Diverged`] when the loss or an update is not finite (nothing more is
/// saved); [`LargeHeadError::Checkpoint`] when the checkpoint cannot be written.
pub fn train_large_head(
    config: &LargeHeadConfig,
    checkpoint_path: Option<&Path>,
    report_every: u64,
    on_event: impl FnMut(LargeHeadEvent),
) -> Result<LargeHeadReport, LargeHeadError> {
    let world = World::single();
    run(
        &world,
        config,
        None,
        checkpoint_path,
        report_every,
        on_event,
    )
}

/// Continues the run of `config` saved in the checkpoint at `from` (written by
/// [`train_large_head`] or by this function with the same settings but, possibly, fewer
/// steps): the model, the embedder's optimiser, the centres and their momentum, the steps
/// done and the generator as they stood, then the steps left up to `config.steps`. The run
/// ends bit for bit where the uninterrupted one would have; the report's losses are those of
/// the steps run here.
///
/// # Errors
/// As [`train_large_head`]; [`LargeHeadError::Checkpoint`] when `from` cannot be read, and
/// [`LargeHeadError::Input`] when it holds another model, no training state, or as many steps as
/// `config.steps` or more (nothing would run); [`LargeHeadError::SettingsDiffer`] when it was
/// written with other settings than `config`'s but for `steps` and `checkpoint_every`.
pub fn resume_large_head(
    config: &LargeHeadConfig,
    from: &Path,
    checkpoint_path: Option<&Path>,
    report_every: u64,
    on_event: impl FnMut(LargeHeadEvent),
) -> Result<LargeHeadReport, LargeHeadError> {
    let world = World::single();
    run(
        &world,
        config,
        Some(from),
        checkpoint_path,
        report_every,
        on_event,
    )
}

/// [`train_large_head`] (or, with `resume_from`, [`resume_large_head`]) over the ranks of
/// `world` (collective: every rank calls it with the same settings), the head class-parallel:
/// see the [module documentation](self). Rank `k` embeds samples `k·b..(k + 1)·b` of each
/// global batch of [`LargeHeadConfig::batch`] samples (`b = batch / N`); the checkpoint, the
/// file one process writes, is written by rank 0 alone from every rank's shard streamed to it
/// in chunks (`checkpoint_path` is given to every rank, and written there only) and resumes
/// on any number of ranks; `resume_from` is read by every rank, each its own rows of the head.
/// Every rank returns the same report but for [`LargeHeadReport::footprint_bytes`], its own.
///
/// # Errors
/// As [`train_large_head`], on every rank: the failing rank's own error there, and on the
/// others the same kind ([`LargeHeadError::Diverged`] naming the step when a step failed)
/// carrying [`Error::Distributed`] with the failing rank and its message. Also
/// [`Error::Distributed`] when the ranks were started with different settings, and
/// [`Error::InvalidSetting`] when the batch is not a multiple of the number of ranks or there
/// are fewer identities than ranks.
pub fn train_large_head_distributed(
    world: &World,
    config: &LargeHeadConfig,
    resume_from: Option<&Path>,
    checkpoint_path: Option<&Path>,
    report_every: u64,
    on_event: impl FnMut(LargeHeadEvent),
) -> Result<LargeHeadReport, LargeHeadError> {
    let settings = serde_json::to_vec(config).expect("settings serialise");
    world.check_same_config("settings", &settings)?;
    run(
        world,
        config,
        resume_from,
        checkpoint_path,
        report_every,
        on_event,
    )
}

/// Where a run starts: the model (its centres taken out of `params`, which hold an empty
/// tensor in their place), its optimisers' state, this rank's shard of the centres and of
/// their momentum, the step and the generator.
struct Start {
    model: Model<f32>,
    params: Params<f32>,
    optimizer: Optimizer<f32>,
    centres: Tensor<f32>,
    /// Empty before the first step.
    velocity: Tensor<f32>,
    step: u64,
    rng: crate::SeededRng,
}

/// A fresh start from the seed, holding the centres of the classes `shard` only: the model as
/// [`Model::new`] draws it in one process, bit for bit, and the generator where that draw
/// leaves it ([`ShardOfCentres`]).
fn fresh(config: &LargeHeadConfig, shard: Range<usize>) -> Result<Start, Error> {
    let mut rng = seeded_rng(config.seed);
    let mut params = Params::<f32>::new();
    let mut source = ShardOfCentres {
        rng: &mut rng,
        name: centres_name(),
        rows: shard,
        shard: None,
    };
    let model = Model::new(config.model()?, &mut params, &mut source)?;
    let centres = source.shard.take().expect("the model has centres");
    let method = Method::Sgd {
        momentum: config.momentum,
        nesterov: false,
    };
    let optimizer = Optimizer::new(method, &params, config.lr, 0.0)?;
    Ok(Start {
        model,
        params,
        optimizer,
        centres,
        velocity: Tensor::zeros(&[0]),
        step: 0,
        rng,
    })
}

/// The name of the centres in the store and in a checkpoint.
fn centres_name() -> String {
    format!("{HEAD_PREFIX}.weight")
}

/// A fresh model's tensors as the generator draws them, but for the centres `name`, of which
/// only the rows `rows` are kept (in `shard`; the model's store gets an empty tensor).
struct ShardOfCentres<'a> {
    rng: &'a mut crate::SeededRng,
    name: String,
    rows: Range<usize>,
    shard: Option<Tensor<f32>>,
}

impl ParamSource<f32> for ShardOfCentres<'_> {
    fn tensor(&mut self, name: &str, shape: &[usize], fill: Fill) -> Tensor<f32> {
        match (fill, shape) {
            (Fill::Normal { std }, &[rows, d]) if name == self.name => {
                let keep = self.rows.clone();
                self.shard = Some(normal_rows(rows, d, std, keep, self.rng));
                Tensor::zeros(&[0])
            }
            _ => self.rng.tensor(name, shape, fill),
        }
    }
}

/// Rows `keep` of the `[rows, d]` matrix of `N(0, std²)` elements that [`Tensor::randn`] draws
/// whole from `rng`, and `rng` left where that draw leaves it. `Tensor::randn` draws its
/// elements one after another from one stream (each normal takes a variable number of words
/// from it), so the stream cannot be skipped ahead: the rows before and after `keep` are drawn
/// too, in chunks of at most [`DRAW_CHUNK`] elements, and dropped. It costs what the whole
/// draw costs in time, `O(rows·d)` (about a second per 10⁸ elements), and holds the kept rows
/// and one chunk.
fn normal_rows(
    rows: usize,
    d: usize,
    std: f64,
    keep: Range<usize>,
    rng: &mut crate::SeededRng,
) -> Tensor<f32> {
    let skip = |rows: Range<usize>, rng: &mut crate::SeededRng| {
        let per_chunk = (DRAW_CHUNK / d.max(1)).max(1);
        for start in rows.clone().step_by(per_chunk) {
            let n = per_chunk.min(rows.end - start);
            drop(Tensor::<f32>::randn(&[n, d], 0.0, std, rng));
        }
    };
    skip(0..keep.start, rng);
    let kept = Tensor::randn(&[keep.len(), d], 0.0, std, rng);
    skip(keep.end..rows, rng);
    kept
}

/// The most elements [`normal_rows`] draws at a time to drop them: 4 MiB of `f32`.
const DRAW_CHUNK: usize = 1 << 20;

/// The start saved at `from`, checked against `config`, holding the centres of the classes
/// `shard` only, and their momentum: the file streams through, the other rows dropped
/// ([`checkpoint::load_rows`]).
fn resumed(
    config: &LargeHeadConfig,
    from: &Path,
    shard: Range<usize>,
) -> Result<Start, LargeHeadError> {
    let loaded = checkpoint::load_rows::<f32>(from, &centres_name(), shard)
        .map_err(LargeHeadError::Checkpoint)?;
    let invalid = |requirement| Error::InvalidSetting {
        name: "checkpoint to resume",
        value: 0.0,
        requirement,
    };
    if loaded.model.config() != &config.model()? {
        return Err(invalid("a checkpoint of the same model (identities, widths, loss)").into());
    }
    let Some(mut training) = loaded.training else {
        return Err(invalid("a checkpoint with its training state").into());
    };
    // the embedder's optimiser holds the learning rate and momentum exactly; the rest of the
    // settings are known by their fingerprint (checkpoints written before it hold 1 there)
    let mut differ = Vec::new();
    if training.optimizer.groups.iter().any(|g| g.lr != config.lr) {
        differ.push("lr");
    }
    let Method::Sgd { momentum, .. } = training.optimizer.method else {
        return Err(invalid("a checkpoint of an SGD run").into());
    };
    if momentum != config.momentum {
        differ.push("momentum");
    }
    if differ.is_empty() && training.epoch != 1 && training.epoch != config.fingerprint() {
        differ.push(
            "one or more of identities, block, sample_rate, batch, verify_samples, pairs, \
             accuracy_identities, seed",
        );
    }
    if !differ.is_empty() {
        return Err(LargeHeadError::SettingsDiffer {
            settings: differ.join(", "),
        });
    }
    let centres = loaded.model.head().parameters()[0];
    let saved = training
        .optimizer
        .per_param
        .get_mut(centres.index())
        .and_then(Option::take)
        .ok_or(invalid("a checkpoint with the centres' momentum"))?;
    Error::check(
        "steps of the checkpoint to resume",
        saved.steps as f64,
        saved.steps < config.steps,
        "fewer than the run's steps (nothing to do: the checkpoint already holds this many)",
    )?;
    let mut params = loaded.params;
    let optimizer = Optimizer::from_state(training.optimizer, &params)?;
    Ok(Start {
        model: loaded.model,
        centres: std::mem::replace(params.get_mut(centres), Tensor::zeros(&[0])),
        params,
        optimizer,
        velocity: saved.first,
        step: saved.steps,
        rng: training.rng,
    })
}

fn run(
    world: &World,
    config: &LargeHeadConfig,
    from: Option<&Path>,
    checkpoint_path: Option<&Path>,
    report_every: u64,
    mut on_event: impl FnMut(LargeHeadEvent),
) -> Result<LargeHeadReport, LargeHeadError> {
    world.agree(config.validate())?;
    let per_rank = world.agree(batch_per_rank(config.batch, world.size()))?;
    let identities = world.agree(SyntheticIdentities::new(config.identities.clone()))?;
    let footprint = config.footprint_of_rank(world.rank(), world.size());
    let footprint_bytes = world.agree(footprint.and_then(|f| f.check(available_memory())))?;
    let classes = config.identities.trained;
    let head = BlockedHead::new(config.loss.clone(), config.block)?;
    let head = ClassParallelHead::new(head, classes, world)?;
    let shard = head.shard();
    let sampler = BatchSampler::new(
        classes,
        config.identities.train_samples,
        config.batch,
        config.identities.seed,
    )?;
    // this rank's shard of the centres and of their momentum, never the whole head; they live
    // outside the store (a graph holds the store)
    let start = match from {
        None => fresh(config, shard.clone()).map_err(LargeHeadError::from),
        Some(path) => resumed(config, path, shard.clone()),
    };
    let Start {
        model,
        mut params,
        mut optimizer,
        mut centres,
        mut velocity,
        step: first_step,
        mut rng,
    } = agree(world, start)?;
    let centres_id = model.head().parameters()[0];
    if velocity.shape() != centres.shape() {
        velocity = Tensor::zeros(centres.shape());
    }
    // the same embedder on every rank (each read its own copy of a checkpoint, say)
    if world.size() > 1 {
        parameter_checksum(world, &params)?;
    }
    let (lr, momentum) = (config.lr, config.momentum);
    let d = config.embed_dim;
    let save_at = |step: u64,
                   params: &Params<f32>,
                   centres: &Tensor<f32>,
                   velocity: &Tensor<f32>,
                   optimizer: &Optimizer<f32>,
                   rng: &crate::SeededRng|
     -> Result<(), LargeHeadError> {
        let Some(path) = checkpoint_path else {
            return Ok(());
        };
        let run = SavedRun {
            model: &model,
            optimizer,
            centres: centres_id,
            step,
            rng,
            fingerprint: config.fingerprint(),
        };
        let saved = save_shards(world, &head, path, params, [centres, velocity], &run);
        agree(world, saved.map_err(LargeHeadError::Checkpoint))
    };

    let started = Instant::now();
    let (mut window_loss, mut window_steps, mut window_start) = (0.0, 0u64, Instant::now());
    let mut reported_losses = Vec::new();
    let run_steps = config.steps - first_step;
    let tenth = (run_steps / 10).max(1);
    let (mut first, mut last) = (0.0, 0.0);
    for step in first_step..config.steps {
        let diverged = |error| LargeHeadError::Diverged {
            step: step + 1,
            error,
        };
        // this rank's part of the global batch
        let pairs = &sampler.batch(step)[world.rank() * per_rank..][..per_rank];
        let x = identities.features(pairs);
        let labels = Labels::new(pairs.iter().map(|&(k, _)| k).collect(), classes)?;
        let sampling = (config.sample_rate < 1.0).then(|| Sampling {
            rate: config.sample_rate,
            key: sample_key(config.seed, step),
        });
        let mut centres_finite = true;
        let (loss, mut grads) = {
            let g = Graph::new();
            let mut cx = Forward::train(&g, &params, &mut rng);
            let embeddings = model.embed(&mut cx, g.constant(x));
            let update = |first: usize, w: &mut [f32], grad: &[f32]| {
                let row = first - shard.start;
                let v = &mut velocity.data_mut()[row * d..row * d + w.len()];
                centres_finite &= sgd_momentum_update(w, v, grad, lr, momentum);
            };
            let loss = head
                .step(world, embeddings, &mut centres, &labels, sampling, update)
                .map_err(diverged)?;
            (loss.value().data()[0] as f64, loss.backward())
        };
        let finite = match centres_finite {
            true => Ok(()),
            false => {
                let index = first_non_finite(centres.data()).unwrap_or(0);
                Err(Error::NonFinite {
                    what: "the class centres after the update".into(),
                    index: shard.start * d + index,
                    value: centres.data()[index].into(),
                })
            }
        };
        world.agree(finite).map_err(diverged)?;
        // the loss is the global batch's: the ranks' gradients add up to its gradient
        reduce_gradients(world, &mut grads, 1.0).map_err(diverged)?;
        optimizer.step(&mut params, &grads).map_err(diverged)?;
        if step - first_step < tenth {
            first += loss / tenth as f64;
        }
        if step >= config.steps - tenth {
            last += loss / tenth as f64;
        }
        window_loss += loss;
        window_steps += 1;
        if (step + 1) % report_every.max(1) == 0 {
            // after a resume the first window holds only the steps run here
            let n = window_steps as f64;
            reported_losses.push((step + 1, window_loss / n));
            on_event(LargeHeadEvent::Steps {
                step: step + 1,
                loss: window_loss / n,
                steps_per_sec: n / window_start.elapsed().as_secs_f64(),
            });
            (window_loss, window_steps, window_start) = (0.0, 0, Instant::now());
        }
        let every = config.checkpoint_every;
        if every > 0 && (step + 1) % every == 0 && step + 1 < config.steps {
            save_at(step + 1, &params, &centres, &velocity, &optimizer, &rng)?;
        }
    }
    let train_seconds = started.elapsed().as_secs_f64();

    // the figures, from the embeddings of samples never trained on (the embedder is the same
    // on every rank, and so are the figures)
    let held_out = identities.dataset(
        0..config.accuracy_identities,
        config.identities.train_samples,
        1,
    )?;
    let embeddings = model.embeddings(&params, &held_out.features);
    let nearest = nearest_scored(&embeddings, &centres, config.block, shard.start);
    let predicted = nearest_over_ranks(world, &nearest);
    let accuracy = predicted
        .iter()
        .zip(&held_out.labels)
        .filter(|(p, l)| p == l)
        .count() as f64
        / held_out.len() as f64;
    let unseen = identities.dataset(identities.unseen(), 0, config.verify_samples)?;
    let embeddings = model.embeddings(&params, &unseen.features);
    let pairs = make_pairs(
        &unseen.labels,
        config.pairs,
        &mut seeded_rng(config.seed ^ 0x9e37_79b9),
    );
    let scores = pair_scores(&embeddings, &pairs);
    let verification = verification(&pairs, &scores, crate::metrics::FOLDS, config.seed)?;

    let save_started = Instant::now();
    save_at(config.steps, &params, &centres, &velocity, &optimizer, &rng)?;
    Ok(LargeHeadReport {
        config: config.clone(),
        first_loss: first,
        last_loss: last,
        steps_run: run_steps,
        train_seconds,
        save_seconds: save_started.elapsed().as_secs_f64(),
        accuracy,
        verification,
        footprint_bytes,
        reported_losses,
    })
}

/// Samples per rank and step: `batch / ranks`.
fn batch_per_rank(batch: usize, ranks: usize) -> Result<usize, Error> {
    Error::check(
        "batch",
        batch as f64,
        batch.is_multiple_of(ranks) && batch >= ranks,
        "a multiple of the number of ranks (each rank embeds batch / ranks samples)",
    )?;
    Ok(batch / ranks)
}

/// The key of step `step`'s class sample: the same on every rank, a new one each step.
fn sample_key(seed: u64, step: u64) -> u64 {
    (seed ^ 0x2545_f491_4f6c_dd1d).wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ step.wrapping_mul(0xbf58_476d_1ce4_e5b9)
}

/// [`World::agree`] on a run's result: the failing rank keeps its own error, the others stop
/// with the same kind of error carrying [`Error::Distributed`] (the failing rank and its
/// message): a divergence stays a divergence at the same step on every rank.
fn agree<T>(world: &World, local: Result<T, LargeHeadError>) -> Result<T, LargeHeadError> {
    let status = local.as_ref().map(|_| ()).map_err(|e| Error::Distributed {
        message: e.to_string(),
    });
    match world.agree(status) {
        Ok(()) => local,
        Err(e) => Err(local.err().unwrap_or(LargeHeadError::Input(e))),
    }
}

/// Saves the whole model from this rank's shard of the centres and of their momentum
/// (collective), the file that one process writes: rank 0 writes it, the rows of the centres
/// and then of the momentum streaming in class order from every rank's `shards`
/// ([`ClassParallelHead::stream_in_order`]), so that no rank holds more than its shard and a
/// chunk. Every rank runs both streams to their end whatever happens on rank 0, so that none
/// is left waiting; the outcome is rank 0's.
fn save_shards(
    world: &World,
    head: &ClassParallelHead,
    path: &Path,
    params: &Params<f32>,
    shards: [&Tensor<f32>; 2],
    run: &SavedRun<'_>,
) -> Result<(), CheckpointError> {
    // which streams rank 0's writer has run (the ones it has not, it runs with no sink after)
    let ran = [Cell::new(false), Cell::new(false)];
    let stream = |which: usize, sink: &mut dyn FnMut(&[f32]) -> std::io::Result<()>| {
        ran[which].set(true);
        head.stream_in_order(world, shards[which], sink)
    };
    let saved = match world.is_root() {
        true => {
            let d = shards[0].shape()[1];
            let streamed = StreamedParam {
                id: run.centres,
                shape: [head.classes(), d],
                value: &mut |sink| stream(0, sink),
                moment: &mut |sink| stream(1, sink),
            };
            save(path, params, streamed, run)
        }
        false => Ok(()),
    };
    for (shard, ran) in shards.into_iter().zip(&ran) {
        if !ran.get() {
            let Ok(()) = head.stream_in_order(world, shard, |_| Ok::<_, Infallible>(()));
        }
    }
    saved
}

/// What a checkpoint of a large-head run holds besides the parameters.
struct SavedRun<'a> {
    model: &'a Model<f32>,
    optimizer: &'a Optimizer<f32>,
    centres: ParamId,
    /// Steps done.
    step: u64,
    /// The generator as it stands after them.
    rng: &'a crate::SeededRng,
    /// [`LargeHeadConfig::fingerprint`], kept in the training state's epoch count (a large-head
    /// run has no epochs).
    fingerprint: u64,
}

/// Saves the model with its training state: the embedder's optimiser, the centres' momentum
/// with the steps done, and the generator, written streaming, the centres and their momentum
/// from `centres`' streams.
fn save(
    path: &Path,
    params: &Params<f32>,
    centres: StreamedParam<'_, f32>,
    run: &SavedRun<'_>,
) -> Result<(), CheckpointError> {
    let mut state = run.optimizer.state().clone();
    let index = run.centres.index();
    if state.per_param.len() <= index {
        state.per_param.resize_with(index + 1, || None);
    }
    // stand-ins: the momentum streams in
    state.per_param[index] = Some(ParamState {
        steps: run.step,
        first: Tensor::zeros(&[0]),
        second: Tensor::zeros(&[0]),
    });
    let training = TrainingState {
        optimizer: state,
        epoch: run.fingerprint,
        rng: run.rng.clone(),
        history: Vec::new(),
    };
    checkpoint::save_streamed(path, run.model, params, &training, centres)
}

/// The nearest centre (largest cosine) of each embedding, over the centres `[C, D]` visited
/// `block` rows at a time in buffers allocated once, so that no `N×C` score matrix is held.
/// On a tie the first class wins.
pub fn nearest_centres(
    embeddings: &Tensor<f32>,
    centres: &Tensor<f32>,
    block: usize,
) -> Vec<usize> {
    let nearest = nearest_scored(embeddings, centres, block, 0);
    nearest.into_iter().map(|(_, class)| class).collect()
}

/// Each embedding's nearest class over every rank's shard (collective): the largest cosine,
/// the first class on a tie, as [`nearest_centres`] over the whole head.
fn nearest_over_ranks(world: &World, local: &[(f32, usize)]) -> Vec<usize> {
    if world.size() == 1 {
        return local.iter().map(|&(_, class)| class).collect();
    }
    let cosines: Vec<f32> = local.iter().map(|&(c, _)| c).collect();
    let classes: Vec<u64> = local.iter().map(|&(_, k)| k as u64).collect();
    let (cosines, classes) = (world.all_gather(&cosines), world.all_gather(&classes));
    let n = local.len();
    (0..n)
        .map(|i| {
            // the ranks' shards in class order: a later shard wins only when strictly nearer
            let best = (1..world.size()).fold(i, |best, r| {
                if cosines[r * n + i] > cosines[best] {
                    r * n + i
                } else {
                    best
                }
            });
            classes[best] as usize
        })
        .collect()
}

/// Each embedding's largest cosine over the centres `[C_s, D]` and its class (the centres'
/// first row being class `first_class`), `(−∞, first_class)` when no cosine is above −∞.
fn nearest_scored(
    embeddings: &Tensor<f32>,
    centres: &Tensor<f32>,
    block: usize,
    first_class: usize,
) -> Vec<(f32, usize)> {
    let (n, d) = embeddings.matrix_dims().expect("embeddings [N, D]");
    let classes = centres.shape()[0];
    let block = block.clamp(1, classes.max(1));
    let eps = crate::nn::NORM_EPS as f32;
    let (mut e, mut e_norms) = (vec![0.0; n * d], vec![0.0; n]);
    normalize_rows(embeddings.data(), d, eps, &mut e, &mut e_norms);
    let (mut wn, mut w_norms, mut cos) =
        (vec![0.0; block * d], vec![0.0; block], vec![0.0; n * block]);
    let mut best = vec![(f32::NEG_INFINITY, first_class); n];
    for start in (0..classes).step_by(block) {
        let m = (start + block).min(classes) - start;
        let rows = &centres.data()[start * d..(start + m) * d];
        normalize_rows(rows, d, eps, &mut wn[..m * d], &mut w_norms[..m]);
        gemm(
            1.0,
            MatRef::new(&e, n, d, false),
            MatRef::new(&wn[..m * d], m, d, true),
            0.0,
            &mut cos[..n * m],
        );
        for (r, row) in cos[..n * m].chunks(m).enumerate() {
            for (j, &c) in row.iter().enumerate() {
                if c > best[r].0 {
                    best[r] = (c, first_class + start + j);
                }
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rank_draws_the_rows_of_its_shard_of_the_head_one_process_draws() {
        let config = |classes| LargeHeadConfig {
            identities: IdentitiesConfig {
                trained: classes,
                unseen: 10,
                ..IdentitiesConfig::default()
            },
            hidden: vec![6],
            embed_dim: 5,
            ..LargeHeadConfig::default()
        };
        // uneven shards, shards of one class, and a world of one
        for (classes, ranks) in [(7, 1), (7, 3), (10, 4), (5, 5), (1000, 3)] {
            let config = config(classes);
            let whole = fresh(&config, 0..classes).unwrap();
            assert_eq!(whole.centres.shape(), [classes, 5]);
            // the whole shard is what one process draws with Model::new
            let mut rng = seeded_rng(config.seed);
            let mut params = Params::<f32>::new();
            let model = Model::new(config.model().unwrap(), &mut params, &mut rng).unwrap();
            let centres = params.get(model.head().parameters()[0]);
            assert_eq!(whole.centres.data(), centres.data());
            assert_eq!(whole.rng, rng);
            for rank in 0..ranks {
                let rows = ClassParallelHead::shard_of(classes, ranks, rank);
                let shard = fresh(&config, rows.clone()).unwrap();
                let expected = &whole.centres.data()[rows.start * 5..rows.end * 5];
                assert_eq!(shard.centres.shape(), [rows.len(), 5]);
                assert_eq!(
                    shard.centres.data(),
                    expected,
                    "{classes} on {ranks}: {rank}"
                );
                assert_eq!(
                    shard.rng, whole.rng,
                    "the generator ends where one process's does"
                );
                assert_eq!(shard.params.len(), whole.params.len());
                for id in whole.params.ids() {
                    assert_eq!(shard.params.get(id), whole.params.get(id));
                }
            }
        }
    }

    #[test]
    fn normal_rows_keeps_rows_of_the_whole_draw_across_chunks() {
        // 3000 rows of 700: 1497 rows a chunk, so the dropped rows take several chunks
        let (rows, d) = (3000, 700);
        let mut rng = seeded_rng(5);
        let whole = Tensor::<f32>::randn(&[rows, d], 0.0, 0.1, &mut rng);
        for keep in [
            0..0,
            0..1,
            1496..1498,
            2999..3000,
            100..2900,
            0..3000,
            3000..3000,
        ] {
            let mut drawn = seeded_rng(5);
            let kept = normal_rows(rows, d, 0.1, keep.clone(), &mut drawn);
            assert_eq!(kept.shape(), [keep.len(), d]);
            assert_eq!(kept.data(), &whole.data()[keep.start * d..keep.end * d]);
            assert_eq!(drawn, rng, "rows {keep:?}");
        }
    }
}
