//! Trains an embedding model with a margin loss, evaluates it the way face-verification models
//! are judged, saves it, and draws what it learned. `--help` lists the flags.
//!
//! `cargo run --release --example train` trains on the UCI digits shipped in the crate.
//!
//! Each run owns its `--out` folder: a folder that is not empty is refused unless the run is
//! told `--overwrite` (which removes only a previous run's files) or `--resume`. A flag the run
//! would not read (`--m-nt` with `--loss am`, `--momentum` with adam, `--data-dir` without
//! `--data mnist`...) is refused, naming the conflict. A closed standard output (`| head`)
//! stops the printing, not the run.

#[macro_use]
mod cli;

use clap::{Parser, ValueEnum};
use cli::{
    DataFlags, Stdout, describe, given, loss_parser, model_parser, parse, print_final,
    refuse_mlp_flags, refuse_unread, usage,
};
use margrad::data::Augment;
use margrad::distributed::World;
use margrad::loss::{ArcFallback, ExtraSettings, LossKind};
use margrad::train::{
    CHECKPOINT_FILE, EXPORT_FILE, Event, MethodName, Metrics, ModelKind, OutputPolicy, Setting,
    TrainConfig, TrainError, train,
};
use std::fmt;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;

/// Train an embedding model with a margin-based softmax loss; evaluate it (closed-set accuracy,
/// verification, embedding geometry), save it and draw it.
#[derive(Parser, Debug)]
#[command(
    name = "train",
    allow_negative_numbers = true,
    args_override_self = true
)]
struct Cli {
    /// The loss
    #[arg(long, value_name = "NAME", value_parser = loss_parser(), help_heading = "Loss",
          default_value = TrainConfig::default().loss.kind.name())]
    loss: LossKind,
    /// Logit scale s [default: the loss's: 30 for the softmax family, 64 for the losses
    /// beyond it (sphereface2: 40)]
    #[arg(long, value_name = "S", help_heading = "Loss")]
    scale: Option<f64>,
    /// Margin m: the cosine margin (am, enhanced family, elasticface-cos' mean), the angular
    /// margin (arcface, subcenter-arcface, curricularface, elasticface-arc's mean), AdaFace's,
    /// SphereFace2's [default: the loss's: 0.35 for the softmax family; adaface 0.4,
    /// curricularface, subcenter-arcface and elasticface-arc 0.5, elasticface-cos 0.35,
    /// sphereface2 0.4]
    #[arg(long, value_name = "M", help_heading = "Loss")]
    margin: Option<f64>,
    /// Enhanced: the margin added to every non-target cosine [default: m]
    #[arg(long, value_name = "X", help_heading = "Loss")]
    m_nt: Option<f64>,
    /// Enhanced: the target divisor M [default: e^m]
    #[arg(long, value_name = "X", help_heading = "Loss")]
    big_m: Option<f64>,
    /// Combined: the angular multiplier m1
    #[arg(long, value_name = "X", help_heading = "Loss",
          default_value_t = TrainConfig::default().loss.combined.0)]
    m1: f64,
    /// Combined: the angular margin m2
    #[arg(long, value_name = "X", help_heading = "Loss",
          default_value_t = TrainConfig::default().loss.combined.1)]
    m2: f64,
    /// Combined: the cosine margin m3
    #[arg(long, value_name = "X", help_heading = "Loss",
          default_value_t = TrainConfig::default().loss.combined.2)]
    m3: f64,
    /// Arcface and combined: the target past the monotonic range
    #[arg(long, value_enum, help_heading = "Loss", default_value_t = TrainConfig::default().loss.fallback.into())]
    fallback: Fallback,
    /// AdaFace: h, the norm's standard deviations that make the full margin
    #[arg(long, value_name = "X", help_heading = "Loss",
          default_value_t = ExtraSettings::default().adaface_h)]
    adaface_h: f64,
    /// AdaFace and CurricularFace: each batch's weight in the running state (the norms'
    /// statistics, t)
    #[arg(long, value_name = "X", help_heading = "Loss",
          default_value_t = ExtraSettings::default().state_momentum)]
    state_momentum: f64,
    /// MagFace: the norm range l_a,u_a over which the margin grows
    #[arg(long, value_name = "LO,HI", help_heading = "Loss",
          default_value_t = Pair(ExtraSettings::default().magface_norms))]
    magface_norms: Pair,
    /// MagFace: the margins l_m,u_m at the ends of the norm range
    #[arg(long, value_name = "LO,HI", help_heading = "Loss",
          default_value_t = Pair(ExtraSettings::default().magface_margins))]
    magface_margins: Pair,
    /// MagFace: λ_g, the weight of the norm regulariser
    #[arg(long, value_name = "X", help_heading = "Loss",
          default_value_t = ExtraSettings::default().magface_lambda_g)]
    lambda_g: f64,
    /// Sub-center ArcFace: K, the sub-centres per class
    #[arg(long, value_name = "K", help_heading = "Loss",
          default_value_t = ExtraSettings::default().subcenters)]
    subcenters: usize,
    /// SphereFace2: λ, the weight of the positive term
    #[arg(long, value_name = "X", help_heading = "Loss",
          default_value_t = ExtraSettings::default().sphereface2_lambda)]
    sphereface2_lambda: f64,
    /// SphereFace2: t, the exponent of the similarity map
    #[arg(long, value_name = "X", help_heading = "Loss",
          default_value_t = ExtraSettings::default().sphereface2_t)]
    sphereface2_t: f64,
    /// ElasticFace: σ, the standard deviation of the margins drawn per sample and step
    #[arg(long, value_name = "X", help_heading = "Loss",
          default_value_t = ExtraSettings::default().margin_std)]
    margin_std: f64,

    /// The embedder: an MLP of --hidden widths (any data), or for 28×28 grey images (MNIST)
    /// LeNet++ or a small ResNet
    #[arg(long, value_name = "NAME", value_parser = model_parser(), help_heading = "Model and training",
          default_value = TrainConfig::default().model.name())]
    model: ModelKind,
    /// The MLP's hidden layer widths, comma-separated (empty for none)
    #[arg(long, value_name = "LIST", help_heading = "Model and training",
          default_value_t = Widths(TrainConfig::default().hidden))]
    hidden: Widths,
    /// Embedding dimension (2 or 3 also draws the circle or sphere)
    #[arg(long, value_name = "N", help_heading = "Model and training",
          default_value_t = TrainConfig::default().embed_dim)]
    embed_dim: usize,
    /// BatchNorm1d after each of the MLP's hidden layers
    #[arg(long, help_heading = "Model and training")]
    batch_norm: bool,
    /// Dropout probability after each of the MLP's hidden layers
    #[arg(long, value_name = "P", help_heading = "Model and training",
          default_value_t = TrainConfig::default().dropout)]
    dropout: f64,
    /// Augment the training images (image data): random shifts of up to --translate pixels,
    /// and with --erase a rectangle erased
    #[arg(long, help_heading = "Model and training")]
    augment: bool,
    /// With --augment: the largest shift, in pixels, along each axis
    #[arg(
        long,
        value_name = "N",
        help_heading = "Model and training",
        default_value_t = 2
    )]
    translate: usize,
    /// With --augment: the probability that an image has a random rectangle erased
    #[arg(
        long,
        value_name = "P",
        help_heading = "Model and training",
        default_value_t = 0.0
    )]
    erase: f64,
    /// Epochs
    #[arg(long, value_name = "N", help_heading = "Model and training",
          default_value_t = TrainConfig::default().epochs)]
    epochs: usize,
    /// Batch size
    #[arg(long, value_name = "N", help_heading = "Model and training",
          default_value_t = TrainConfig::default().batch)]
    batch: usize,
    /// The optimiser
    #[arg(long, value_enum, value_name = "NAME", help_heading = "Model and training",
          default_value_t = TrainConfig::default().optimizer.into())]
    optimizer: Optimizer,
    /// Learning rate, annealed by a cosine to 1% of it
    #[arg(long, value_name = "X", help_heading = "Model and training",
          default_value_t = TrainConfig::default().lr)]
    lr: f64,
    /// SGD's momentum (Nesterov when > 0)
    #[arg(long, value_name = "X", help_heading = "Model and training",
          default_value_t = TrainConfig::default().momentum)]
    momentum: f64,
    /// Weight decay
    #[arg(long, value_name = "X", help_heading = "Model and training",
          default_value_t = TrainConfig::default().weight_decay)]
    weight_decay: f64,
    /// Seeds initialisation, shuffling and dropout
    #[arg(long, value_name = "N", help_heading = "Model and training",
          default_value_t = TrainConfig::default().seed)]
    seed: u64,
    /// Worker threads [default: all cores; 0 too]; the result is the same on any number
    #[arg(long, value_name = "N", help_heading = "Model and training")]
    threads: Option<usize>,

    /// Where the outputs go; a new run refuses a folder that is not empty
    #[arg(
        long,
        value_name = "DIR",
        help_heading = "Output",
        default_value = "runs/latest"
    )]
    out: PathBuf,
    /// Remove a previous run's outputs from --out first (refused if the folder holds any other
    /// file)
    #[arg(long, help_heading = "Output", conflicts_with = "resume")]
    overwrite: bool,
    /// Continue the run saved in PATH (its checkpoint) from the epoch after the ones it
    /// completed, up to --epochs, as if it had never stopped; pass the interrupted run's flags
    /// (model and optimiser flags are checked against it)
    #[arg(long, value_name = "PATH", help_heading = "Output")]
    resume: Option<PathBuf>,
    /// Train over the ranks `mpirun` started (needs the `mpi` cargo feature): each rank trains
    /// on its part of every --batch, rank 0 prints and writes the outputs
    #[arg(long, help_heading = "Model and training")]
    distributed: bool,

    #[command(flatten)]
    data: DataFlags,
}

/// ArcFace's fallback past the monotonic range, by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Fallback {
    /// cos(m1·θ + m2) at every angle
    None,
    /// InsightFace's: c − mm past the threshold
    Threshold,
    /// The margin only where c > 0
    Easy,
}

/// An optimiser by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Optimizer {
    Sgd,
    Adam,
    Adamw,
}

/// The flags' names and the library's values, both ways (the defaults come from the library).
macro_rules! names {
    ($flag:ident <-> $library:ident { $($a:ident <-> $b:ident),* }) => {
        impl From<$flag> for $library {
            fn from(value: $flag) -> Self {
                match value { $($flag::$a => $library::$b),* }
            }
        }
        impl From<$library> for $flag {
            fn from(value: $library) -> Self {
                match value { $($library::$b => $flag::$a),* }
            }
        }
    };
}
names!(Fallback <-> ArcFallback { None <-> None, Threshold <-> Threshold, Easy <-> EasyMargin });
names!(Optimizer <-> MethodName { Sgd <-> Sgd, Adam <-> Adam, Adamw <-> AdamW });

/// Layer widths as `512,256` (empty: none).
#[derive(Clone, Debug)]
struct Widths(Vec<usize>);

impl FromStr for Widths {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        s.split(',')
            .filter(|w| !w.trim().is_empty())
            .map(|w| {
                w.trim()
                    .parse()
                    .map_err(|_| format!("{w:?} is not a whole number"))
            })
            .collect::<Result<_, _>>()
            .map(Widths)
    }
}

impl fmt::Display for Widths {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let widths: Vec<String> = self.0.iter().map(usize::to_string).collect();
        write!(f, "{}", widths.join(","))
    }
}

/// Two numbers as `10,110`.
#[derive(Clone, Copy, Debug)]
struct Pair((f64, f64));

impl FromStr for Pair {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let number = |x: &str| {
            x.trim()
                .parse::<f64>()
                .map_err(|_| format!("{x:?} is not a number"))
        };
        match s.split(',').collect::<Vec<_>>()[..] {
            [a, b] => Ok(Pair((number(a)?, number(b)?))),
            _ => Err(format!("{s:?} is not two numbers LO,HI")),
        }
    }
}

impl fmt::Display for Pair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{},{}", self.0.0, self.0.1)
    }
}

/// The flags that only some runs read, by their ids.
const READ_BY_SOME: [(&str, &str, Setting); 18] = [
    ("scale", "--scale", Setting::Scale),
    ("margin", "--margin", Setting::Margin),
    ("m_nt", "--m-nt", Setting::NontargetMargin),
    ("big_m", "--big-m", Setting::TargetDivisor),
    ("m1", "--m1", Setting::Combined),
    ("m2", "--m2", Setting::Combined),
    ("m3", "--m3", Setting::Combined),
    ("fallback", "--fallback", Setting::Fallback),
    ("adaface_h", "--adaface-h", Setting::AdaFaceH),
    ("state_momentum", "--state-momentum", Setting::StateMomentum),
    ("magface_norms", "--magface-norms", Setting::MagFace),
    ("magface_margins", "--magface-margins", Setting::MagFace),
    ("lambda_g", "--lambda-g", Setting::MagFace),
    ("subcenters", "--subcenters", Setting::Subcenters),
    (
        "sphereface2_lambda",
        "--sphereface2-lambda",
        Setting::SphereFace2,
    ),
    ("sphereface2_t", "--sphereface2-t", Setting::SphereFace2),
    ("margin_std", "--margin-std", Setting::MarginStd),
    ("momentum", "--momentum", Setting::Momentum),
];

/// Refuses --translate and --erase without --augment, which alone reads them.
fn refuse_without_augment(matches: &clap::ArgMatches, augment: bool) -> Result<(), String> {
    match [("translate", "--translate"), ("erase", "--erase")]
        .iter()
        .find(|(id, _)| given(matches, id))
    {
        Some((_, flag)) if !augment => Err(format!("{flag} is read only with --augment")),
        _ => Ok(()),
    }
}

/// The run's configuration, output folder and whether it is distributed, every flag checked; a
/// usage error otherwise.
fn configure() -> (TrainConfig, PathBuf, bool) {
    let (cli, matches) = parse::<Cli>();
    let optimizer = MethodName::from(cli.optimizer);
    let mlp_flags = [
        ("hidden", "--hidden"),
        ("dropout", "--dropout"),
        ("batch_norm", "--batch-norm"),
    ];
    let checked = refuse_unread(&matches, &READ_BY_SOME, &[cli.loss], optimizer)
        .and_then(|()| refuse_mlp_flags(&matches, &mlp_flags, cli.model))
        .and_then(|()| refuse_without_augment(&matches, cli.augment))
        .and_then(|()| cli.data.settings(&matches));
    let data = checked.unwrap_or_else(|message| usage::<Cli>(message));
    // dropout and BatchNorm follow each hidden layer: with none, nothing reads them
    for (id, flag) in [("dropout", "--dropout"), ("batch_norm", "--batch-norm")] {
        if cli.hidden.0.is_empty() && given(&matches, id) {
            usage::<Cli>(format!(
                "{flag} is read only with hidden layers, and --hidden is empty"
            ));
        }
    }
    let (default_scale, default_margin) = cli.loss.default_scale_and_margin();
    let config = TrainConfig {
        data,
        loss: margrad::loss::LossSettings {
            kind: cli.loss,
            scale: cli.scale.unwrap_or(default_scale),
            margin: cli.margin.unwrap_or(default_margin),
            nontarget_margin: cli.m_nt,
            target_divisor: cli.big_m,
            combined: (cli.m1, cli.m2, cli.m3),
            fallback: cli.fallback.into(),
            extra: ExtraSettings {
                adaface_h: cli.adaface_h,
                state_momentum: cli.state_momentum,
                magface_norms: cli.magface_norms.0,
                magface_margins: cli.magface_margins.0,
                magface_lambda_g: cli.lambda_g,
                subcenters: cli.subcenters,
                sphereface2_lambda: cli.sphereface2_lambda,
                sphereface2_t: cli.sphereface2_t,
                margin_std: cli.margin_std,
            },
        },
        model: cli.model,
        hidden: cli.hidden.0,
        embed_dim: cli.embed_dim,
        batch_norm: cli.batch_norm,
        dropout: cli.dropout,
        augment: cli.augment.then_some(Augment {
            translate: cli.translate,
            erase: cli.erase,
        }),
        epochs: cli.epochs,
        batch: cli.batch,
        optimizer,
        lr: cli.lr,
        momentum: cli.momentum,
        weight_decay: cli.weight_decay,
        seed: cli.seed,
        threads: cli.threads,
        resume: cli.resume,
        output: if cli.overwrite {
            OutputPolicy::Overwrite
        } else {
            OutputPolicy::New
        },
    };
    if let Err(e) = config.validate() {
        usage::<Cli>(e);
    }
    (config, cli.out, cli.distributed)
}

fn main() -> ExitCode {
    let (config, out, distributed) = configure();
    if let Some(ranks) = launched_ranks().filter(|&n| n > 1 && !distributed) {
        // independent runs, each writing the same --out
        usage::<Cli>(format!(
            "started as one of {ranks} ranks by an MPI launcher: add --distributed to train \
             together"
        ));
    }
    if !distributed {
        return run(&config, &out, None, |on_event| {
            train(&config, &out, on_event).map(Some)
        });
    }
    #[cfg(feature = "mpi")]
    {
        let world = match margrad::distributed::World::mpi() {
            Ok(world) => world,
            Err(e) => {
                complain!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        run(&config, &out, Some(&world), |on_event| {
            margrad::train::train_distributed(&world, &config, &out, on_event)
        })
        // the world is dropped here: MPI is finalised before the exit
    }
    #[cfg(not(feature = "mpi"))]
    usage::<Cli>(
        "--distributed needs the `mpi` cargo feature: build with \
         `cargo build --release --features mpi --example train` (see docs/distributed.md)",
    )
}

/// The number of ranks an MPI launcher (Open MPI's or a PMI one) says it started, if any.
fn launched_ranks() -> Option<usize> {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"]
        .iter()
        .find_map(|name| std::env::var(name).ok()?.trim().parse().ok())
}

/// Runs `train_with` and reports it: progress and the final figures from the only process, or
/// from rank 0 of `world` (the other ranks print only an error, prefixed by their rank).
fn run(
    config: &TrainConfig,
    out: &std::path::Path,
    world: Option<&World>,
    train_with: impl FnOnce(&mut (dyn FnMut(Event) + Send)) -> Result<Option<Metrics>, TrainError>,
) -> ExitCode {
    let mut stdout = Stdout::new();
    let rank = world.map_or(String::new(), |w| {
        format!("rank {} of {}: ", w.rank(), w.size())
    });
    // the other ranks receive no events and return no metrics
    let speaks = world.is_none_or(World::is_root);
    let terminal = std::io::stderr().is_terminal() && speaks;
    if speaks {
        say!(
            stdout,
            "training {} with {} (s = {}, m = {}) for {} epochs; outputs in {}",
            config.model.name(),
            config.loss.kind.name(),
            config.loss.scale,
            config.loss.margin,
            config.epochs,
            out.display()
        );
    }
    let epochs = config.epochs;
    let mut on_event = |event: Event| match event {
        Event::Step {
            epoch,
            step,
            steps,
            loss,
        } if terminal && (step % 10 == 0 || step == steps) => {
            let mut stderr = std::io::stderr();
            let _ = write!(
                stderr,
                "\r  epoch {epoch}/{epochs}  step {step}/{steps}  loss {loss:.4}   "
            );
            let _ = stderr.flush();
        }
        Event::Step { .. } => {}
        Event::Resumed { from, epoch } => {
            say!(
                stdout,
                "resumed from {} after epoch {epoch}",
                from.display()
            );
        }
        Event::Communication {
            epoch,
            steps,
            traffic,
        } => {
            let per_step = steps.max(1) as f64;
            say!(
                stdout,
                "  epoch {epoch}, rank 0: collectives {:.2} ms per step (waiting for the other \
                 ranks included), {:.0} calls and {:.0} bytes per step",
                1e3 * traffic.time.as_secs_f64() / per_step,
                traffic.calls as f64 / per_step,
                traffic.bytes as f64 / per_step
            );
        }
        Event::Epoch(r) => {
            if terminal {
                let _ = write!(std::io::stderr(), "\r{:60}\r", "");
            }
            say!(
                stdout,
                "epoch {:>3}/{epochs}  loss {:.4}  train {:.2}%  test {:.2}%  {:.0} samples/s  ({:.2} s)",
                r.epoch,
                r.loss,
                100.0 * r.train_accuracy,
                100.0 * r.test_accuracy,
                r.samples_per_sec,
                r.seconds
            );
        }
    };
    match train_with(&mut on_event) {
        Ok(None) => ExitCode::SUCCESS,
        Ok(Some(metrics)) => {
            print_final(&mut stdout, &metrics.final_metrics);
            say!(
                stdout,
                "wrote {CHECKPOINT_FILE}, {EXPORT_FILE}, metrics.json and figures to {}",
                out.display()
            );
            stdout.exit_code()
        }
        Err(e) => {
            // one write, so that the ranks' messages do not interleave
            let message = format!("{rank}error: {}\n", describe(&e));
            let _ = std::io::stderr().write_all(message.as_bytes());
            ExitCode::FAILURE
        }
    }
}
