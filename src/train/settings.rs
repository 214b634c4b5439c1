//! The settings of a training run, as `examples/train.rs` takes them from its flags.

use crate::Error;
use crate::data::{Augment, InputScaling, SyntheticConfig};
use crate::loss::{ArcFallback, ExtraSettings, HeadLoss, LossKind, LossSettings};
use crate::nn::HeadConfig;
use crate::train::output::OutputPolicy;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Where the data comes from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum DataSource {
    /// The UCI digits shipped in the crate (a seeded 80/20 split).
    Digits,
    /// MNIST's IDX files in a folder.
    Mnist {
        /// The folder.
        dir: PathBuf,
    },
    /// The synthetic open-set generator (its seed is the data seed).
    Synthetic(SyntheticConfig),
}

impl DataSource {
    /// How the source's loader scales raw samples into features (an export records it).
    pub fn input_scaling(&self) -> InputScaling {
        match self {
            DataSource::Digits => InputScaling::digits(),
            DataSource::Mnist { .. } => InputScaling::mnist(),
            DataSource::Synthetic(_) => InputScaling::none(),
        }
    }

    /// The shape of one sample as an image, `[C, H, W]`: `[1, 8, 8]` for the digits,
    /// `[1, 28, 28]` for MNIST; `None` for synthetic features, which are no image.
    pub fn image_shape(&self) -> Option<[usize; 3]> {
        match self {
            DataSource::Digits => Some([1, 8, 8]),
            DataSource::Mnist { .. } => Some([1, 28, 28]),
            DataSource::Synthetic(_) => None,
        }
    }

    /// The source's name, as `--data` takes it.
    pub fn name(&self) -> &'static str {
        match self {
            DataSource::Digits => "digits",
            DataSource::Mnist { .. } => "mnist",
            DataSource::Synthetic(_) => "synthetic",
        }
    }
}

/// The embedder a run trains.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ModelKind {
    /// An MLP of [`TrainConfig::hidden`] widths ([`MlpConfig`](crate::nn::MlpConfig)), on any
    /// features.
    #[default]
    #[serde(rename = "mlp")]
    Mlp,
    /// LeNet++ ([`LeNetPlusPlus`](crate::nn::LeNetPlusPlus)), on 28×28 grey images.
    #[serde(rename = "lenet++")]
    LeNetPlusPlus,
    /// The small residual embedder ([`ResNetConfig`](crate::nn::ResNetConfig)), on 28×28 grey
    /// images.
    #[serde(rename = "resnet")]
    ResNet,
}

impl ModelKind {
    /// Every kind.
    pub const ALL: [ModelKind; 3] = [ModelKind::Mlp, ModelKind::LeNetPlusPlus, ModelKind::ResNet];

    /// The name `--model` takes.
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Mlp => "mlp",
            ModelKind::LeNetPlusPlus => "lenet++",
            ModelKind::ResNet => "resnet",
        }
    }

    /// The kind named `name` (as [`ModelKind::name`] gives it).
    pub fn from_name(name: &str) -> Option<ModelKind> {
        ModelKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The image shape `[C, H, W]` the convolutional embedders are built for; `None` for the
    /// MLP, which takes any features.
    pub fn image_shape(self) -> Option<[usize; 3]> {
        match self {
            ModelKind::Mlp => None,
            ModelKind::LeNetPlusPlus | ModelKind::ResNet => Some([1, 28, 28]),
        }
    }

    /// Whether the embedder reads [`TrainConfig::hidden`], [`TrainConfig::batch_norm`] and
    /// [`TrainConfig::dropout`]: the MLP only.
    pub fn reads_mlp_settings(self) -> bool {
        self == ModelKind::Mlp
    }

    /// Checks that the model can take `source`'s samples.
    ///
    /// # Errors
    /// [`Error::DataDoesNotFit`] when a convolutional model is given features that are no
    /// image, or images of another size than it takes.
    pub fn check_data(self, source: &DataSource) -> Result<(), Error> {
        let Some(takes) = self.image_shape() else {
            return Ok(());
        };
        let refuse = |found: String| Error::DataDoesNotFit {
            model: format!("--model {}", self.name()),
            takes: format!("{}×{} grey images", takes[1], takes[2]),
            given: format!(
                "--data {} gives {found} (--model mlp takes any)",
                source.name()
            ),
        };
        match source.image_shape() {
            Some(shape) if shape == takes => Ok(()),
            Some([_, h, w]) => Err(refuse(format!("{h}×{w} images"))),
            None => Err(refuse("features, not images".to_string())),
        }
    }
}

/// What the data is and how it is split; `verify` takes the same settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataSettings {
    /// The source.
    pub source: DataSource,
    /// The last this many classes are never trained on and are verified instead (0: verify
    /// pairs of the test split of the trained classes).
    pub holdout_classes: usize,
    /// Verification pairs to draw (fewer if the data cannot supply them).
    pub pairs: usize,
    /// Seeds the digits split, the synthetic data and the pairs.
    pub seed: u64,
}

impl DataSettings {
    /// Checks the settings that no loader checks: at least 20 verification pairs (two per
    /// fold of the 10-fold protocol, and enough for a ROC curve to mean something).
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] naming the setting out of range.
    pub fn validate(&self) -> Result<(), Error> {
        Error::check("pairs", self.pairs as f64, self.pairs >= 20, "at least 20")
    }
}

/// The head `loss` trains: a linear classifier for softmax on raw logits, a cosine head for
/// every other loss of the softmax family, an extended head for the losses beyond it;
/// `classes` classes.
///
/// # Errors
/// [`Error::InvalidSetting`] for a loss setting out of its range.
pub fn head_config(loss: &LossSettings, classes: usize) -> Result<HeadConfig, Error> {
    Ok(match loss.head_loss()? {
        HeadLoss::Margin(_) if loss.kind == LossKind::Softmax => HeadConfig::Linear { classes },
        HeadLoss::Margin(loss) => HeadConfig::Cosine { classes, loss },
        HeadLoss::Extended(loss) => HeadConfig::Extended { classes, loss },
    })
}

/// The optimiser families a run can use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MethodName {
    /// SGD, with Nesterov momentum when momentum > 0.
    Sgd,
    /// Adam.
    Adam,
    /// AdamW.
    AdamW,
}

/// A whole run's settings (metrics.json records them).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// The data.
    pub data: DataSettings,
    /// The loss.
    pub loss: LossSettings,
    /// The embedder (metrics.json records its name here and its layers beside).
    #[serde(default)]
    pub model: ModelKind,
    /// Hidden layer widths of the MLP embedder.
    pub hidden: Vec<usize>,
    /// The embedding dimension.
    pub embed_dim: usize,
    /// BatchNorm1d after each hidden layer of the MLP.
    pub batch_norm: bool,
    /// Dropout after each hidden layer of the MLP.
    pub dropout: f64,
    /// Augmentation of the training images (image data only), drawn from the run's seed, the
    /// epoch and the step.
    #[serde(default)]
    pub augment: Option<Augment>,
    /// Epochs.
    pub epochs: usize,
    /// Batch size.
    pub batch: usize,
    /// The optimiser.
    pub optimizer: MethodName,
    /// The learning rate (annealed by a cosine schedule over the epochs to 1% of it).
    pub lr: f64,
    /// SGD's momentum.
    pub momentum: f64,
    /// Weight decay.
    pub weight_decay: f64,
    /// Seeds initialisation, shuffling and dropout.
    pub seed: u64,
    /// The threads [`train`](super::train) runs on (a rayon pool of its own). `None` or 0:
    /// rayon's default (`RAYON_NUM_THREADS`, else one per logical core). The results do not
    /// depend on it: the kernels give the same bits on any number of threads.
    pub threads: Option<usize>,
    /// A checkpoint to continue from (a [`CHECKPOINT_FILE`](super::CHECKPOINT_FILE) the trainer
    /// wrote): its parameters, optimiser state, generator and history, from the epoch after the
    /// ones it completed up to `epochs`. Its model and optimiser must be the ones the other
    /// settings describe; the data and batch settings should be the interrupted run's, so that
    /// the run continues exactly.
    #[serde(default)]
    pub resume: Option<PathBuf>,
    /// What the run may find in its output folder: by default nothing (see [`OutputPolicy`]).
    #[serde(default)]
    pub output: OutputPolicy,
}

impl Default for TrainConfig {
    /// The embedded digits, AM-Softmax (s = 30, m = 0.35), an MLP 64-512-128 with dropout 0.2
    /// after the hidden layer, Adam.
    fn default() -> Self {
        TrainConfig {
            data: DataSettings {
                source: DataSource::Digits,
                holdout_classes: 0,
                pairs: 6000,
                seed: 0,
            },
            loss: LossSettings {
                kind: LossKind::Am,
                scale: 30.0,
                margin: 0.35,
                nontarget_margin: None,
                target_divisor: None,
                combined: (1.0, 0.3, 0.2),
                fallback: ArcFallback::Threshold,
                extra: ExtraSettings::default(),
            },
            model: ModelKind::Mlp,
            hidden: vec![512],
            embed_dim: 128,
            batch_norm: false,
            dropout: 0.2,
            augment: None,
            epochs: 20,
            batch: 128,
            optimizer: MethodName::Adam,
            lr: 1e-3,
            momentum: 0.9,
            weight_decay: 0.0,
            seed: 0,
            threads: None,
            resume: None,
            output: OutputPolicy::New,
        }
    }
}

impl TrainConfig {
    /// Checks every setting before anything is loaded or allocated: the ones no constructor
    /// checks later, the loss's ([`LossSettings::head_loss`]), the model's fit to the data
    /// ([`ModelKind::check_data`]), the embedder's widths and dropout, and the data's ([`DataSettings::validate`]). The memory the settings need is
    /// checked once the data's size is known ([`Footprint`](super::Footprint)).
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] naming the first setting out of range.
    pub fn validate(&self) -> Result<(), Error> {
        self.loss.head_loss()?;
        self.model.check_data(&self.data.source)?;
        let input_dim = self.model.image_shape().map_or(1, |s| s.iter().product());
        super::model_config(self, input_dim, 1)?;
        self.data.validate()?;
        if let Some(augment) = &self.augment {
            let image = self.data.source.image_shape();
            Error::check(
                "augment",
                1.0,
                image.is_some(),
                "used with image data only (--data digits or mnist)",
            )?;
            augment.validate(image.expect("checked"))?;
        }
        Error::check("epochs", self.epochs as f64, self.epochs > 0, "at least 1")?;
        Error::check("batch", self.batch as f64, self.batch > 0, "at least 1")?;
        Error::check(
            "embedding dimension",
            self.embed_dim as f64,
            self.embed_dim > 0,
            "at least 1",
        )?;
        Error::check("learning rate", self.lr, self.lr > 0.0, "positive")
    }
}

/// The settings of a [`TrainConfig`] that only some losses or optimisers read. A command line
/// refuses one that was given for a run that would not read it, rather than ignore it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setting {
    /// [`LossSettings::scale`]: every loss but softmax (raw logits).
    Scale,
    /// [`LossSettings::margin`]: every loss with one margin `m` (all but softmax, NormFace,
    /// the combined margin and MagFace).
    Margin,
    /// [`LossSettings::nontarget_margin`]: Enhanced.
    NontargetMargin,
    /// [`LossSettings::target_divisor`]: Enhanced.
    TargetDivisor,
    /// [`LossSettings::combined`]: the combined margin.
    Combined,
    /// [`LossSettings::fallback`]: the losses with an angular margin (ArcFace, combined,
    /// sub-center ArcFace).
    Fallback,
    /// [`ExtraSettings::adaface_h`]: AdaFace.
    AdaFaceH,
    /// [`ExtraSettings::state_momentum`]: AdaFace and CurricularFace.
    StateMomentum,
    /// [`ExtraSettings::magface_norms`], [`magface_margins`](ExtraSettings::magface_margins)
    /// and [`magface_lambda_g`](ExtraSettings::magface_lambda_g): MagFace.
    MagFace,
    /// [`ExtraSettings::subcenters`]: sub-center ArcFace.
    Subcenters,
    /// [`ExtraSettings::sphereface2_lambda`] and [`sphereface2_t`](ExtraSettings::sphereface2_t):
    /// SphereFace2.
    SphereFace2,
    /// [`ExtraSettings::margin_std`]: ElasticFace.
    MarginStd,
    /// [`TrainConfig::momentum`]: SGD.
    Momentum,
}

impl Setting {
    /// Every setting that only some runs read.
    pub const ALL: [Setting; 13] = [
        Setting::Scale,
        Setting::Margin,
        Setting::NontargetMargin,
        Setting::TargetDivisor,
        Setting::Combined,
        Setting::Fallback,
        Setting::AdaFaceH,
        Setting::StateMomentum,
        Setting::MagFace,
        Setting::Subcenters,
        Setting::SphereFace2,
        Setting::MarginStd,
        Setting::Momentum,
    ];

    /// Whether a run of `loss` trained with `optimizer` reads this setting (as
    /// [`LossSettings::head_loss`] and the optimiser's construction do).
    pub fn read_by(self, loss: LossKind, optimizer: MethodName) -> bool {
        use LossKind as K;
        match self {
            Setting::Scale => loss != K::Softmax,
            Setting::Margin => !matches!(loss, K::Softmax | K::NormFace | K::Combined | K::MagFace),
            Setting::NontargetMargin | Setting::TargetDivisor => loss == K::Enhanced,
            Setting::Combined => loss == K::Combined,
            Setting::Fallback => matches!(loss, K::ArcFace | K::Combined | K::SubcenterArcFace),
            Setting::AdaFaceH => loss == K::AdaFace,
            Setting::StateMomentum => matches!(loss, K::AdaFace | K::CurricularFace),
            Setting::MagFace => loss == K::MagFace,
            Setting::Subcenters => loss == K::SubcenterArcFace,
            Setting::SphereFace2 => loss == K::SphereFace2,
            Setting::MarginStd => matches!(loss, K::ElasticFaceArc | K::ElasticFaceCos),
            Setting::Momentum => optimizer == MethodName::Sgd,
        }
    }
}
