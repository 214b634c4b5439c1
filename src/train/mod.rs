//! The trainer: data, model, optimiser and evaluation wired together, as the `train` and
//! `verify` examples run them, and the training step they share with hand-written loops.
//!
//! [`train`] writes into its output folder the checkpoint ([`CHECKPOINT_FILE`], with the
//! training state, saved after every epoch so that a failure keeps the last good one), its
//! safetensors export for PyTorch ([`EXPORT_FILE`]),
//! `metrics.json`, and SVG figures; given a checkpoint in [`TrainConfig::resume`], it continues
//! that run where it stopped, with the same result as a run never interrupted. Each run owns its
//! folder ([`OutputPolicy`]), and counts the memory it will hold before it allocates any
//! ([`Footprint`]). [`evaluate`]
//! computes the final figures; `verify` calls the same function on a reloaded checkpoint, so the
//! two report identical numbers. [`train_step`] is one step of any forward pass, [`model_step`]
//! one step of a [`Model`]. [`train_large_head`] trains over many identities, with a blocked
//! head whose centres are updated as they are visited. [`train_distributed`] trains over the
//! ranks of a [`World`], data-parallel, through the same loop over epochs and steps as
//! [`train`], which runs it in a world of one; the two differ only in how they draw their
//! batches and their steps' random numbers.

mod distributed;
mod epochs;
mod figures;
mod large_head;
mod memory;
mod output;
mod settings;
mod step;

pub use distributed::train_distributed;
pub use large_head::{
    LargeHeadConfig, LargeHeadError, LargeHeadEvent, LargeHeadReport, nearest_centres,
    resume_large_head, train_large_head, train_large_head_distributed,
};
pub use memory::{DataShape, Footprint, available_memory};
pub use output::{
    CHECKPOINT_FILE, EXPORT_FILE, FIGURE_FILES, FolderError, METRICS_FILE, OutputPolicy, RUN_FILES,
};
pub use settings::{
    DataSettings, DataSource, MethodName, ModelKind, Setting, TrainConfig, head_config,
};
pub use step::{StepError, StepOutcome, model_step, train_step};

use epochs::Sampling;

use crate::checkpoint::{self, Checkpoint, CheckpointError, TrainingState};
use crate::data::{Dataset, MnistSplit, digits, load_mnist, synthetic};
use crate::distributed::World;
use crate::loss::ExtendedLoss;
use crate::metrics::{
    EpochRecord, FeatureNorms, Geometry, MagFaceNorms, Roc, Verification, feature_norms, geometry,
    magface_norms, make_pairs, pair_scores, row_norms, top1_accuracy, verification,
};
use crate::nn::{
    HEAD_PREFIX, HeadConfig, LeNetPlusPlus, MlpConfig, Model, ModelConfig, ResNetConfig,
    subcenter_usage,
};
use crate::optim::{LrSchedule, Method, Optimizer, Schedule};
use crate::{Error, Labels, Params, SeededRng, Tensor, seeded_rng};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The data a run trains and is judged on.
#[derive(Clone, Debug)]
pub struct PreparedData {
    /// Training samples of the trained classes.
    pub train: Dataset,
    /// Test samples of the trained classes (closed-set accuracy).
    pub test: Dataset,
    /// The samples whose pairs are verified: unseen classes (open set) or `test` (closed set).
    pub verify: Dataset,
    /// What `verify` is, in words (metrics.json says it).
    pub verification_set: String,
}

/// Loads or generates the data and splits it as `settings` says.
///
/// # Errors
/// What the loader returns for missing or malformed files; [`Error::InvalidSetting`] for a
/// setting out of range ([`DataSettings::validate`]) or a holdout that leaves no class to train
/// on or none to verify; [`Error::TooLarge`], before anything is generated, when the synthetic
/// data or the pairs would not fit in the memory available
/// ([`Footprint::of_data_settings`]); [`Error::EmptyData`] when the training, test or
/// verification samples come out empty (a data set of 0 images trains 0 steps and would report
/// undefined figures as a finished run).
pub fn prepare_data(settings: &DataSettings) -> Result<PreparedData, Error> {
    settings.validate()?;
    Footprint::of_data_settings(settings)?.check(available_memory())?;
    let data = split_data(settings)?;
    for (set, what) in [
        (&data.train, "training samples"),
        (&data.test, "test samples"),
        (&data.verify, "samples to verify"),
    ] {
        if set.is_empty() {
            return Err(Error::EmptyData { what: what.into() });
        }
    }
    Ok(data)
}

fn split_data(settings: &DataSettings) -> Result<PreparedData, Error> {
    let (train, test) = match &settings.source {
        DataSource::Digits => digits().split(0.2, &mut seeded_rng(settings.seed)),
        DataSource::Mnist { dir } => (
            load_mnist(dir, MnistSplit::Train)?,
            load_mnist(dir, MnistSplit::Test)?,
        ),
        DataSource::Synthetic(config) => synthetic(&crate::data::SyntheticConfig {
            seed: settings.seed,
            ..config.clone()
        })?,
    };
    if settings.holdout_classes == 0 {
        return Ok(PreparedData {
            verify: test.clone(),
            verification_set: "test split of the trained classes (closed set)".to_string(),
            train,
            test,
        });
    }
    let classes = train.classes;
    let (train, _) = train.split_classes(settings.holdout_classes)?;
    let (test, unseen) = test.split_classes(settings.holdout_classes)?;
    Ok(PreparedData {
        train,
        test,
        verify: unseen,
        verification_set: format!(
            "unseen classes {}..={} (open set, never trained on)",
            classes - settings.holdout_classes,
            classes - 1
        ),
    })
}

/// The final figures of a model (metrics.json's `final` object).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FinalMetrics {
    /// Closed-set top-1 accuracy on the test split of the trained classes.
    pub test_accuracy: f64,
    /// Verification on pairs of `verification_set`.
    pub verification: Verification,
    /// Geometry of the embeddings of `verification_set`.
    pub geometry: Geometry,
    /// Which samples were verified.
    pub verification_set: String,
    /// The norms of the test split's features before normalisation, with the mean norm of
    /// the correctly and of the wrongly classified samples (always written; `None` only when
    /// read from a metrics.json that predates them).
    #[serde(default)]
    pub feature_norms: Option<FeatureNorms>,
    /// Where MagFace's norm range cuts those norms and the margin they get (MagFace only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub magface_norms: Option<MagFaceNorms>,
}

/// [`FinalMetrics`] and the ROC curve behind them.
#[derive(Clone, Debug)]
pub struct Evaluation {
    /// The figures.
    pub metrics: FinalMetrics,
    /// The ROC curve of the verification pairs.
    pub roc: Roc,
}

/// Judges a model: test accuracy, verification on seeded pairs (`pairs` of them, drawn and cut
/// into folds by the data seed), embedding geometry, and the norms of the test features
/// before normalisation.
///
/// # Errors
/// [`Error::NonFiniteScores`] when the model's embeddings make a verification score NaN or
/// infinite ([`train`] returns it as [`TrainError::Input`]); [`Error::EmptyData`] for an empty
/// test split.
pub fn evaluate(
    model: &Model,
    params: &Params<f32>,
    data: &PreparedData,
    settings: &DataSettings,
) -> Result<Evaluation, Error> {
    let features = model.features(params, &data.test.features);
    let predictions = model.head().predict(params, &features);
    let test_accuracy = top1_accuracy(&predictions, &data.test.labels);
    let norms = row_norms(&features);
    let correct: Vec<bool> = predictions
        .iter()
        .zip(&data.test.labels)
        .map(|(p, l)| p == l)
        .collect();
    let magface = match &model.config().head {
        HeadConfig::Extended {
            loss: ExtendedLoss::MagFace(loss),
            ..
        } => Some(magface_norms(&norms, loss)?),
        _ => None,
    };
    let embeddings = model.embeddings(params, &data.verify.features);
    let pairs = make_pairs(
        &data.verify.labels,
        settings.pairs,
        &mut seeded_rng(settings.seed ^ 0x9e37_79b9),
    );
    let scores = pair_scores(&embeddings, &pairs);
    let same: Vec<bool> = pairs.iter().map(|p| p.same).collect();
    let fold_seed = settings.seed ^ 0x85eb_ca6b;
    Ok(Evaluation {
        metrics: FinalMetrics {
            test_accuracy,
            verification: verification(&pairs, &scores, crate::metrics::FOLDS, fold_seed)?,
            geometry: geometry(&embeddings, &data.verify.labels),
            verification_set: data.verification_set.clone(),
            feature_norms: Some(feature_norms(&norms, &correct)?),
            magface_norms: magface,
        },
        roc: Roc::new(&scores, &same)?,
    })
}

/// What [`train`] reports while it runs.
#[derive(Clone, Debug)]
pub enum Event<'a> {
    /// A training step finished.
    Step {
        /// 1-based epoch.
        epoch: usize,
        /// 1-based step within the epoch.
        step: usize,
        /// Steps in the epoch.
        steps: usize,
        /// The step's loss.
        loss: f64,
    },
    /// An epoch finished (and its checkpoint is saved).
    Epoch(&'a EpochRecord),
    /// What rank 0 handed to collectives during an epoch's steps, reported after the epoch's
    /// [`Event::Epoch`] on more than one rank only: the calls, the bytes and the time spent in
    /// them (waiting for the other ranks included). Per step, the step count divides them.
    Communication {
        /// 1-based epoch.
        epoch: usize,
        /// Steps in the epoch.
        steps: usize,
        /// The epoch's traffic.
        traffic: crate::distributed::Traffic,
    },
    /// The run continues from a checkpoint (reported before the first step).
    Resumed {
        /// The checkpoint.
        from: &'a Path,
        /// The epochs it had completed; training goes on from the next.
        epoch: usize,
    },
}

/// The data's sizes, for metrics.json.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataSummary {
    /// Training samples.
    pub train_samples: usize,
    /// Test samples (trained classes).
    pub test_samples: usize,
    /// Samples verified.
    pub verification_samples: usize,
    /// Trained classes.
    pub classes: usize,
    /// Input features per sample.
    pub input_dim: usize,
}

/// Everything metrics.json holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// The crate version that trained.
    pub margrad_version: String,
    /// "complete": only a finished run writes the file.
    pub status: String,
    /// The run's whole configuration.
    pub config: TrainConfig,
    /// The model built from it.
    pub model: ModelConfig,
    /// Trainable parameters.
    pub parameters: usize,
    /// The data's sizes.
    pub data: DataSummary,
    /// One record per epoch.
    pub history: Vec<EpochRecord>,
    /// The final figures.
    #[serde(rename = "final")]
    pub final_metrics: FinalMetrics,
    /// Sub-center ArcFace's sub-centres after training (absent for the other losses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subcenters: Option<SubcenterReport>,
}

/// How a trained sub-center ArcFace head uses its sub-centres, over the training samples
/// ([`subcenter_usage`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SubcenterReport {
    /// `K`, the sub-centres per class.
    pub per_class: usize,
    /// Each class's dominant sub-centre, `0..K` (the one most of its samples are nearest).
    pub dominant: Vec<Option<usize>>,
    /// The angle, in degrees, from which a sample is far from its class's dominant
    /// sub-centre: the paper's 75°.
    pub far_angle_degrees: f64,
    /// The training samples that far: the likely label noise, which the paper drops before
    /// training again.
    pub far_from_dominant: usize,
}

/// The paper's angle past which a sample is far from its class's dominant sub-centre.
const FAR_ANGLE_DEGREES: f64 = 75.0;

/// The [`SubcenterReport`] of a sub-center ArcFace model over `train` (`None` for another
/// head).
fn subcenter_report(
    model: &Model,
    params: &Params<f32>,
    train: &Dataset,
) -> Result<Option<SubcenterReport>, Error> {
    let HeadConfig::Extended {
        loss: ExtendedLoss::SubcenterArcFace { subcenters, .. },
        ..
    } = model.config().head
    else {
        return Ok(None);
    };
    let centres = params
        .find(&format!("{HEAD_PREFIX}.weight"))
        .expect("the head's centres");
    let features = model.embeddings(params, &train.features);
    let labels = Labels::new(train.labels.clone(), train.classes)?;
    let (dominant, far) = subcenter_usage(
        params.get(centres),
        subcenters,
        &features,
        &labels,
        FAR_ANGLE_DEGREES.to_radians(),
    )?;
    Ok(Some(SubcenterReport {
        per_class: subcenters,
        dominant,
        far_angle_degrees: FAR_ANGLE_DEGREES,
        far_from_dominant: far.len(),
    }))
}

/// Why a run stopped early.
#[derive(Debug)]
pub enum TrainError {
    /// The output folder holds files this run may not replace ([`OutputPolicy`]).
    OutputFolder {
        /// The folder.
        dir: PathBuf,
        /// Why it is refused.
        reason: FolderError,
    },
    /// A setting or the data was refused.
    Input(Error),
    /// The loss or a gradient became NaN or infinite.
    Diverged {
        /// 1-based epoch.
        epoch: usize,
        /// 1-based step within it.
        step: usize,
        /// "loss" or which gradient.
        what: String,
        /// The offending value.
        value: f64,
        /// The last good checkpoint, if an epoch finished before.
        last_good: Option<PathBuf>,
    },
    /// An output (the folder, a checkpoint, the export, metrics.json, a figure) could not be
    /// written.
    Output {
        /// The file or folder.
        path: PathBuf,
        /// The system's message.
        message: String,
    },
    /// The checkpoint to resume from cannot continue this run.
    Resume {
        /// The checkpoint.
        path: PathBuf,
        /// Why not.
        reason: ResumeError,
    },
    /// The thread pool could not be started.
    ThreadPool {
        /// The threads asked for.
        threads: Option<usize>,
        /// rayon's message.
        message: String,
    },
}

/// Why a checkpoint cannot continue a run.
#[derive(Clone, Debug, PartialEq)]
pub enum ResumeError {
    /// It cannot be read, or is damaged.
    Checkpoint(CheckpointError),
    /// It holds a model alone, without the training state needed to continue.
    NoTrainingState,
    /// Its model or optimiser is not the one the configuration describes.
    Mismatch {
        /// The first setting that differs, as a path into the configurations
        /// (`model.embedder.layers[0].config.outputs`, `optimizer.groups[0].lr`).
        setting: String,
        /// Its value in the checkpoint (JSON).
        checkpoint: String,
        /// Its value in the configuration (JSON).
        config: String,
    },
    /// It has already completed the epochs the configuration asks for.
    Finished {
        /// Epochs it completed.
        completed: usize,
        /// Epochs the configuration asks for.
        epochs: usize,
    },
    /// Its history does not have one record per completed epoch.
    History {
        /// Epochs it completed.
        completed: usize,
        /// Records it holds.
        records: usize,
    },
}

impl fmt::Display for ResumeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResumeError::Checkpoint(e) => write!(f, "{e}"),
            ResumeError::NoTrainingState => write!(
                f,
                "it holds no training state (optimiser, generator, epoch): it was saved for \
                 inference only"
            ),
            ResumeError::Mismatch {
                setting,
                checkpoint,
                config,
            } => write!(
                f,
                "it was trained with {setting} = {checkpoint}, the configuration says {config} \
                 (resume with the interrupted run's settings)"
            ),
            ResumeError::Finished { completed, epochs } => write!(
                f,
                "it has completed {completed} epochs and the run asks for {epochs}: nothing is \
                 left to train"
            ),
            ResumeError::History { completed, records } => write!(
                f,
                "its training state has completed {completed} epochs but holds {records} \
                 history records (not written by this trainer?)"
            ),
        }
    }
}

impl fmt::Display for TrainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrainError::OutputFolder { dir, reason } => {
                write!(f, "output folder {} refused: {reason}", dir.display())
            }
            TrainError::Input(e) => write!(f, "{e}"),
            TrainError::Diverged {
                epoch,
                step,
                what,
                value,
                last_good,
            } => {
                write!(
                    f,
                    "training diverged at epoch {epoch}, step {step}: {what} is {value}"
                )?;
                match last_good {
                    Some(path) => write!(f, "; the last good checkpoint is {}", path.display()),
                    None => write!(f, "; no epoch finished, so no checkpoint was written"),
                }
            }
            TrainError::Output { path, message } => {
                write!(f, "cannot write {}: {message}", path.display())
            }
            TrainError::Resume { path, reason } => {
                write!(f, "cannot resume from {}: {reason}", path.display())
            }
            TrainError::ThreadPool { threads, message } => match threads {
                Some(n) => write!(f, "cannot start a pool of {n} threads: {message}"),
                None => write!(f, "cannot start the thread pool: {message}"),
            },
        }
    }
}

impl std::error::Error for TrainError {}

impl From<Error> for TrainError {
    fn from(e: Error) -> Self {
        TrainError::Input(e)
    }
}

impl From<CheckpointError> for TrainError {
    /// A checkpoint or export that could not be written (the only error a save returns).
    fn from(e: CheckpointError) -> Self {
        match e {
            CheckpointError::Io { path, message } => TrainError::Output { path, message },
            other => TrainError::Output {
                path: PathBuf::new(),
                message: other.to_string(),
            },
        }
    }
}

/// The model a configuration describes, for data of `input_dim` features and `classes` classes:
/// its [`TrainConfig::model`] embedder ([`MlpConfig`], [`LeNetPlusPlus`] or [`ResNetConfig`],
/// the convolutional ones built for [`ModelKind::image_shape`]) and the loss's head.
///
/// # Errors
/// [`Error::InvalidSetting`] for a loss or embedder setting out of range;
/// [`Error::DataDoesNotFit`] when a convolutional model is given `input_dim` features that are
/// not its images' pixels.
pub fn model_config(
    config: &TrainConfig,
    input_dim: usize,
    classes: usize,
) -> Result<ModelConfig, Error> {
    let embedder = match config.model.image_shape() {
        None => {
            let mut sizes = vec![input_dim];
            sizes.extend(&config.hidden);
            sizes.push(config.embed_dim);
            MlpConfig {
                batch_norm: config.batch_norm,
                dropout: config.dropout,
                ..MlpConfig::new(&sizes)
            }
            .sequential()?
        }
        Some(input) => {
            let pixels: usize = input.iter().product();
            if input_dim != pixels {
                return Err(Error::DataDoesNotFit {
                    model: format!("--model {}", config.model.name()),
                    takes: format!("{}×{} grey images ({pixels} features)", input[1], input[2]),
                    given: format!("the data has {input_dim} features"),
                });
            }
            match config.model {
                ModelKind::ResNet => ResNetConfig {
                    input,
                    ..ResNetConfig::new(config.embed_dim)
                }
                .sequential()?,
                _ => LeNetPlusPlus {
                    input,
                    ..LeNetPlusPlus::new(config.embed_dim)
                }
                .sequential()?,
            }
        }
    };
    Ok(ModelConfig {
        embedder,
        head: head_config(&config.loss, classes)?,
    })
}

fn output(path: &Path, text: &str) -> Result<(), TrainError> {
    crate::files::write_atomically(path, |file| file.write_all(text.as_bytes())).map_err(|e| {
        TrainError::Output {
            path: path.to_path_buf(),
            message: e.to_string(),
        }
    })
}

/// Trains as `config` says, writing the outputs into `out` and reporting progress to
/// `on_event`; returns the final metrics.
///
/// The run happens on a rayon pool of [`TrainConfig::threads`] threads, built for it: the
/// training thread is one of its workers, so each op's parallel work joins it instead of waking
/// the pool from outside. The result does not depend on the number of threads.
///
/// With [`TrainConfig::resume`], the run continues from that checkpoint: its parameters,
/// optimiser state and generator, from the epoch after the ones it completed up to
/// [`TrainConfig::epochs`], with the learning-rate schedule of the whole run. Given the
/// interrupted run's settings, the parameters, the optimiser state and the history's losses and
/// accuracies come out bit for bit as in a run never interrupted; metrics.json holds the whole
/// history.
///
/// The run owns `out` as [`TrainConfig::output`] says ([`OutputPolicy`]): a new run refuses a
/// folder that is not empty, an overwrite removes only a previous run's files ([`RUN_FILES`]),
/// a resumed run continues in the folder; all settings, the data and the memory the run needs
/// ([`Footprint::of_run`]) are checked before the folder is touched. `metrics.json` is written
/// last, by a completed run only.
///
/// # Errors
/// [`TrainError::Input`] for refused settings or data (a configuration too large for the memory
/// available is [`Error::TooLarge`]), [`TrainError::OutputFolder`] for an output folder the run
/// may not use, [`TrainError::Resume`] for a checkpoint
/// that cannot continue this run (unreadable or damaged, saved without training state, another
/// model or optimiser, already at `epochs`), [`TrainError::Diverged`] for a NaN or infinity (the
/// last good checkpoint stays in `out`; no metrics.json is written), [`TrainError::Output`] when
/// a file cannot be written, [`TrainError::ThreadPool`] when the threads cannot be started.
pub fn train(
    config: &TrainConfig,
    out: &Path,
    on_event: &mut (dyn FnMut(Event) + Send),
) -> Result<Metrics, TrainError> {
    config.validate()?;
    Footprint::of_threads(config.threads)?.check(available_memory())?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(config.threads.unwrap_or(0))
        .build()
        .map_err(|e| TrainError::ThreadPool {
            threads: config.threads,
            message: e.to_string(),
        })?;
    pool.install(|| {
        let metrics = epochs::run(&World::single(), Sampling::Shuffled, config, out, on_event)?;
        Ok(metrics.expect("one process is rank 0 of its world"))
    })
}

/// Where a run starts: a fresh model, or a checkpoint's.
struct Start {
    model: Model,
    params: Params<f32>,
    optimizer: Optimizer<f32>,
    rng: SeededRng,
    history: Vec<EpochRecord>,
}

fn optimizer(config: &TrainConfig, params: &Params<f32>) -> Result<Optimizer<f32>, Error> {
    let method = match config.optimizer {
        MethodName::Sgd => Method::Sgd {
            momentum: config.momentum,
            nesterov: config.momentum > 0.0,
        },
        MethodName::Adam => Method::adam(),
        MethodName::AdamW => Method::adamw(),
    };
    Optimizer::new(method, params, config.lr, config.weight_decay)
}

fn fresh_start(config: &TrainConfig, model_config: ModelConfig) -> Result<Start, Error> {
    let mut rng = seeded_rng(config.seed);
    let mut params = Params::<f32>::new();
    let model = Model::new(model_config, &mut params, &mut rng)?;
    let optimizer = optimizer(config, &params)?;
    Ok(Start {
        model,
        params,
        optimizer,
        rng,
        history: Vec::new(),
    })
}

/// The state of the run saved in `path`, checked against the run `config` describes.
fn resumed_start(
    path: &Path,
    config: &TrainConfig,
    model_config: &ModelConfig,
) -> Result<Start, TrainError> {
    let refuse = |reason| TrainError::Resume {
        path: path.to_path_buf(),
        reason,
    };
    let Checkpoint {
        model,
        params,
        training,
    } = checkpoint::load::<f32>(path).map_err(|e| refuse(ResumeError::Checkpoint(e)))?;
    if let Some(mismatch) = first_difference("model", model.config(), model_config) {
        return Err(refuse(mismatch));
    }
    let training = training.ok_or_else(|| refuse(ResumeError::NoTrainingState))?;
    let completed = usize::try_from(training.epoch).unwrap_or(usize::MAX);
    if completed >= config.epochs {
        return Err(refuse(ResumeError::Finished {
            completed,
            epochs: config.epochs,
        }));
    }
    if training.history.len() != completed {
        return Err(refuse(ResumeError::History {
            completed,
            records: training.history.len(),
        }));
    }
    // the optimiser the configuration builds must be the one saved: the same rule, rates and
    // decay over the same parameters (its moments and step counts come from the file)
    let expected = optimizer(config, &params)?;
    let (saved, wanted) = (&training.optimizer, expected.state());
    let mismatch = first_difference("optimizer.method", &saved.method, &wanted.method)
        .or_else(|| first_difference("optimizer.groups", &saved.groups, &wanted.groups));
    if let Some(mismatch) = mismatch {
        return Err(refuse(mismatch));
    }
    let optimizer = Optimizer::from_state(training.optimizer, &params)
        .map_err(|e| refuse(ResumeError::Checkpoint(CheckpointError::Invalid(e))))?;
    Ok(Start {
        model,
        params,
        optimizer,
        rng: training.rng,
        history: training.history,
    })
}

/// The first place where `saved` and `wanted` differ, as a path from `root`, with both values.
fn first_difference<T: Serialize>(root: &str, saved: &T, wanted: &T) -> Option<ResumeError> {
    use serde_json::Value;
    fn walk(path: String, a: &Value, b: &Value) -> Option<(String, String, String)> {
        match (a, b) {
            (Value::Object(x), Value::Object(y)) if x.len() == y.len() => {
                x.iter().find_map(|(key, va)| match y.get(key) {
                    Some(vb) => walk(format!("{path}.{key}"), va, vb),
                    None => Some((path.clone(), a.to_string(), b.to_string())),
                })
            }
            (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
                .iter()
                .zip(y)
                .enumerate()
                .find_map(|(i, (va, vb))| walk(format!("{path}[{i}]"), va, vb)),
            _ if a == b => None,
            _ => Some((path, a.to_string(), b.to_string())),
        }
    }
    let json = |v: &T| serde_json::to_value(v).expect("configurations serialise");
    walk(root.to_string(), &json(saved), &json(wanted)).map(|(setting, checkpoint, config)| {
        ResumeError::Mismatch {
            setting,
            checkpoint,
            config,
        }
    })
}

/// The start of the run `config` describes: fresh, or its [`TrainConfig::resume`] checkpoint.
fn start(config: &TrainConfig, model_config: &ModelConfig) -> Result<Start, TrainError> {
    match &config.resume {
        None => Ok(fresh_start(config, model_config.clone())?),
        Some(path) => resumed_start(path, config, model_config),
    }
}

/// The learning rate's factor per epoch: a cosine over the run's epochs down to 1%.
fn lr_schedule(config: &TrainConfig) -> LrSchedule {
    LrSchedule {
        schedule: Schedule::Cosine {
            total: config.epochs,
            min_factor: 0.01,
        },
        warmup: 0,
    }
}

/// The losses and correct predictions of an epoch's steps, summed.
#[derive(Default)]
struct EpochTally {
    loss_sum: f64,
    correct: usize,
    samples: usize,
}

impl EpochTally {
    /// Counts a step's `outcome` over its `samples`.
    fn add(&mut self, outcome: &StepOutcome, samples: usize) {
        self.correct += outcome.correct.unwrap_or(0);
        self.loss_sum += outcome.loss * samples as f64;
        self.samples += samples;
    }

    /// The epoch's record: mean loss and training accuracy over the samples counted.
    fn record(&self, epoch: usize, seconds: f64, test_accuracy: f64) -> EpochRecord {
        let samples = self.samples as f64;
        EpochRecord {
            epoch,
            loss: self.loss_sum / samples,
            train_accuracy: self.correct as f64 / samples,
            test_accuracy,
            samples_per_sec: samples / seconds,
            seconds,
        }
    }
}

/// Top-1 accuracy on the test split of the trained classes.
fn test_accuracy(model: &Model, params: &Params<f32>, data: &PreparedData) -> f64 {
    let predictions = model.predict(params, &data.test.features);
    top1_accuracy(&predictions, &data.test.labels)
}

/// The error that stops a run at `epoch`, `step` for a step's error.
fn stopped(e: StepError, epoch: usize, step: usize, last_good: &Option<PathBuf>) -> TrainError {
    match e {
        StepError::Forward(e) => TrainError::Input(e),
        StepError::NonFinite { what, value } => TrainError::Diverged {
            epoch,
            step,
            what,
            value,
            last_good: last_good.clone(),
        },
    }
}

/// Saves the checkpoint of the epoch that `history` ends with.
fn save_epoch(
    checkpoint: &Path,
    model: &Model,
    params: &Params<f32>,
    optimizer: &Optimizer<f32>,
    rng: &SeededRng,
    history: &[EpochRecord],
) -> Result<(), TrainError> {
    let state = TrainingState {
        optimizer: optimizer.state().clone(),
        epoch: history.len() as u64,
        rng: rng.clone(),
        history: history.to_vec(),
    };
    Ok(checkpoint::save(checkpoint, model, params, Some(&state))?)
}

/// Evaluates the trained model and writes the run's outputs; metrics.json last.
fn finish(
    config: &TrainConfig,
    out: &Path,
    model: &Model,
    params: &Params<f32>,
    data: &PreparedData,
    model_config: ModelConfig,
    history: Vec<EpochRecord>,
) -> Result<Metrics, TrainError> {
    let evaluation = evaluate(model, params, data, &config.data)?;
    let metrics = Metrics {
        margrad_version: env!("CARGO_PKG_VERSION").to_string(),
        status: "complete".to_string(),
        config: config.clone(),
        model: model_config,
        parameters: params.count(),
        data: DataSummary {
            train_samples: data.train.len(),
            test_samples: data.test.len(),
            verification_samples: data.verify.len(),
            classes: data.train.classes,
            input_dim: data.train.dim(),
        },
        history,
        final_metrics: evaluation.metrics.clone(),
        subcenters: subcenter_report(model, params, &data.train)?,
    };
    write_outputs(out, model, params, data, &metrics, &evaluation)?;
    Ok(metrics)
}

/// The batch `x` as the model trains on it: augmented when the run says so, with draws
/// seeded by the run's seed, the epoch and the step (so that a resumed run draws the same).
fn augmented(config: &TrainConfig, x: Tensor<f32>, epoch: usize, step: usize) -> Tensor<f32> {
    match (&config.augment, config.data.source.image_shape()) {
        (Some(augment), Some(image)) => {
            augment.apply(&x, image, config.seed, epoch as u64, step as u64)
        }
        _ => x,
    }
}

fn write_outputs(
    out: &Path,
    model: &Model,
    params: &Params<f32>,
    data: &PreparedData,
    metrics: &Metrics,
    evaluation: &Evaluation,
) -> Result<(), TrainError> {
    let scaling = metrics.config.data.source.input_scaling();
    checkpoint::save_safetensors(&out.join(EXPORT_FILE), model, params, &scaling)?;
    for (name, svg) in figures::figures(model, params, data, metrics, evaluation) {
        output(&out.join(name), &svg)?;
    }
    let json = serde_json::to_string_pretty(metrics).expect("metrics serialise");
    output(&out.join(METRICS_FILE), &json)?;
    Ok(())
}
