//! What the `train`, `verify` and `compare_losses` examples share: the data flags, the rule that
//! refuses a flag the run would not read, a standard output that survives a closed pipe, and the
//! final figures as they print them.
//!
//! Flags are parsed by clap: a malformed or misspelt flag, or an argument that is not UTF-8, is
//! a usage error (exit code 2) with clap's hint; so is a setting the library refuses
//! ([`usage`]).

#![allow(dead_code)] // each example uses its own subset

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, ValueEnum};
use margrad::data::SyntheticConfig;
use margrad::loss::LossKind;
use margrad::train::{
    DataSettings, DataSource, FinalMetrics, FolderError, MethodName, ModelKind, Setting, TrainError,
};
use std::fmt;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

/// Reports a usage error as clap does (`error: ...`, the usage line, a pointer to `--help`) and
/// exits with code 2.
pub fn usage<C: CommandFactory>(message: impl fmt::Display) -> ! {
    C::command()
        .error(clap::error::ErrorKind::ArgumentConflict, message)
        .exit()
}

/// Parses the command line into `C`, keeping clap's matches to tell which flags were given.
/// Exits with code 2 on a usage error, 0 after `--help`.
pub fn parse<C: CommandFactory + clap::FromArgMatches>() -> (C, ArgMatches) {
    let matches = C::command().get_matches();
    let cli = C::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    (cli, matches)
}

/// Whether flag `id` (its field's name) was given on the command line, not defaulted.
pub fn given(matches: &ArgMatches, id: &str) -> bool {
    matches.value_source(id) == Some(ValueSource::CommandLine)
}

/// Writes a line to standard error, ignoring a closed stderr (nowhere left to report it).
macro_rules! complain {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// A data set the examples can use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DataName {
    /// The UCI digits shipped in the crate.
    Digits,
    /// MNIST's IDX files, from --data-dir.
    Mnist,
    /// Synthetic open-set identities.
    Synthetic,
}

/// The data flags of every example.
#[derive(Args, Debug)]
#[command(next_help_heading = "Data")]
pub struct DataFlags {
    /// The data set
    #[arg(long, value_enum, default_value_t = DataName::Digits)]
    pub data: DataName,
    /// Folder of MNIST's IDX files, raw or gzip (with --data mnist)
    #[arg(long, value_name = "PATH", required_if_eq("data", "mnist"))]
    pub data_dir: Option<PathBuf>,
    /// Seeds the digits split, the synthetic data and the pairs
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub data_seed: u64,
    /// Never train on the last N classes; verify on pairs of them (open set)
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub holdout_classes: usize,
    /// Verification pairs (at least 20)
    #[arg(long, value_name = "N", default_value_t = 6000)]
    pub pairs: usize,
    /// Synthetic identities (with --data synthetic)
    #[arg(long, value_name = "N", default_value_t = SyntheticConfig::default().identities)]
    pub identities: usize,
    /// Synthetic training samples per identity (with --data synthetic)
    #[arg(long, value_name = "N",
          default_value_t = SyntheticConfig::default().train_per_identity)]
    pub train_per_identity: usize,
    /// Synthetic test samples per identity (with --data synthetic)
    #[arg(long, value_name = "N",
          default_value_t = SyntheticConfig::default().test_per_identity)]
    pub test_per_identity: usize,
}

impl DataFlags {
    /// The settings, checked: a flag for another data set than the one chosen is refused, and
    /// so is a setting [`DataSettings::validate`] refuses.
    pub fn settings(&self, matches: &ArgMatches) -> Result<DataSettings, String> {
        let synthetic_flags = ["identities", "train_per_identity", "test_per_identity"];
        if self.data != DataName::Mnist && given(matches, "data_dir") {
            return Err("--data-dir is read only with --data mnist".into());
        }
        if self.data != DataName::Synthetic
            && let Some(id) = synthetic_flags.iter().find(|id| given(matches, id))
        {
            return Err(format!(
                "--{} is read only with --data synthetic",
                id.replace('_', "-")
            ));
        }
        let source = match self.data {
            DataName::Digits => DataSource::Digits,
            DataName::Mnist => DataSource::Mnist {
                dir: self.data_dir.clone().unwrap_or_default(),
            },
            DataName::Synthetic => DataSource::Synthetic(SyntheticConfig {
                identities: self.identities,
                train_per_identity: self.train_per_identity,
                test_per_identity: self.test_per_identity,
                ..SyntheticConfig::default()
            }),
        };
        let settings = DataSettings {
            source,
            holdout_classes: self.holdout_classes,
            pairs: self.pairs,
            seed: self.data_seed,
        };
        settings.validate().map_err(|e| e.to_string())?;
        Ok(settings)
    }
}

/// Refuses a flag that no run would read: each of `flags` (its field's id, its flag, the
/// setting it sets) given on the command line must be read by at least one of the `losses`
/// trained with `optimizer`.
pub fn refuse_unread(
    matches: &ArgMatches,
    flags: &[(&str, &str, Setting)],
    losses: &[LossKind],
    optimizer: MethodName,
) -> Result<(), String> {
    for &(id, flag, setting) in flags {
        if !given(matches, id) || losses.iter().any(|&k| setting.read_by(k, optimizer)) {
            continue;
        }
        if setting == Setting::Momentum {
            return Err(format!(
                "{flag} is read only by --optimizer sgd, not {}",
                optimizer_name(optimizer)
            ));
        }
        let readers: Vec<&str> = LossKind::ALL
            .iter()
            .filter(|&&k| setting.read_by(k, optimizer))
            .map(|k| k.name())
            .collect();
        let chosen: Vec<&str> = losses.iter().map(|k| k.name()).collect();
        let chosen = match chosen[..] {
            [one] => format!("--loss {one}"),
            _ => format!("any of --losses {}", chosen.join(",")),
        };
        return Err(format!(
            "{flag} is not read by {chosen}: only by {}",
            readers.join(", ")
        ));
    }
    Ok(())
}

/// An optimiser's name on the command line.
pub fn optimizer_name(method: MethodName) -> &'static str {
    match method {
        MethodName::Sgd => "sgd",
        MethodName::Adam => "adam",
        MethodName::AdamW => "adamw",
    }
}

/// A loss by name, from the one list the library keeps ([`LossKind::ALL`]); clap lists the
/// names in `--help` and suggests the nearest for a misspelt one.
pub fn loss_parser() -> impl clap::builder::TypedValueParser<Value = LossKind> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(LossKind::ALL.map(LossKind::name))
        .map(|name| LossKind::from_name(&name).expect("one of the possible values"))
}

/// A model by name, from the library's list ([`ModelKind::ALL`]).
pub fn model_parser() -> impl clap::builder::TypedValueParser<Value = ModelKind> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(ModelKind::ALL.map(ModelKind::name))
        .map(|name| ModelKind::from_name(&name).expect("one of the possible values"))
}

/// Refuses the MLP's flags (`(id, flag)` pairs) given for another model.
pub fn refuse_mlp_flags(
    matches: &ArgMatches,
    flags: &[(&str, &str)],
    model: ModelKind,
) -> Result<(), String> {
    match flags.iter().find(|(id, _)| given(matches, id)) {
        Some((_, flag)) if !model.reads_mlp_settings() => Err(format!(
            "{flag} is read only by --model mlp, not {}",
            model.name()
        )),
        _ => Ok(()),
    }
}

/// A train error, with the flags that resolve it when a new run finds its folder in use.
pub fn describe(e: &TrainError) -> String {
    match e {
        TrainError::OutputFolder {
            reason: FolderError::NotEmpty { .. },
            ..
        } => format!(
            "{e}\n(--overwrite replaces a previous run's outputs, --resume PATH continues it, \
             --out DIR chooses another folder)"
        ),
        _ => e.to_string(),
    }
}

/// Standard output that notices when writing fails. A closed pipe (`| head`) stops the printing
/// and nothing else: the run goes on and saves its outputs. Any other error (a full disk) is
/// reported on standard error once, the printing stops, and [`Stdout::exit_code`] fails.
pub struct Stdout {
    state: State,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    Closed,
    Failed,
}

impl Stdout {
    /// Standard output, open.
    pub fn new() -> Stdout {
        Stdout { state: State::Open }
    }

    /// Writes one line (and flushes it), unless an earlier write failed.
    pub fn line(&mut self, args: fmt::Arguments) {
        if self.state != State::Open {
            return;
        }
        let mut out = std::io::stdout().lock();
        let written = out
            .write_fmt(args)
            .and_then(|()| out.write_all(b"\n"))
            .and_then(|()| out.flush());
        if let Err(e) = written {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                self.state = State::Closed;
            } else {
                complain!("error: cannot write to standard output: {e}");
                self.state = State::Failed;
            }
        }
    }

    /// Success, unless writing failed other than by a closed pipe.
    pub fn exit_code(&self) -> ExitCode {
        match self.state {
            State::Failed => ExitCode::FAILURE,
            State::Open | State::Closed => ExitCode::SUCCESS,
        }
    }
}

/// `say!(out, "format", args...)`: one line to a [`Stdout`].
macro_rules! say {
    ($out:expr, $($arg:tt)*) => {
        $out.line(format_args!($($arg)*))
    };
}

/// Prints the final figures as both examples report them; an undefined figure as
/// "undefined", the accuracy (undefined whenever any figure is) with the reason.
pub fn print_final(out: &mut Stdout, f: &FinalMetrics) {
    let (v, g) = (&f.verification, &f.geometry);
    let accuracy = match (v.accuracy_mean, v.accuracy_std) {
        (Some(m), Some(s)) => format!("{:.2}% ± {:.2}%", 100.0 * m, 100.0 * s),
        _ => format!("undefined ({})", v.undefined.as_deref().unwrap_or("")),
    };
    let figure = |x: Option<f64>| x.map_or("undefined".to_string(), |x| format!("{x:.4}"));
    say!(out, "test accuracy       {:.2}%", 100.0 * f.test_accuracy);
    say!(out, "verification        {}", f.verification_set);
    say!(
        out,
        "  {:<18}{accuracy}   AUC {}   EER {}",
        format!("{}-fold accuracy", v.folds),
        figure(v.auc),
        figure(v.eer)
    );
    say!(
        out,
        "  TAR@FAR=1e-3      {}   TAR@FAR=1e-2 {}   ({} pairs, {} same-class)",
        figure(v.tar_at_far_1e3),
        figure(v.tar_at_far_1e2),
        v.pairs,
        v.positive_pairs
    );
    say!(
        out,
        "geometry            intra {:.1}°   inter min {:.1}°   inter mean {:.1}°",
        g.intra_angle_deg,
        g.inter_min_angle_deg,
        g.inter_mean_angle_deg
    );
    if let Some(n) = &f.feature_norms {
        let mean_norm = |x: Option<f64>| x.map_or("none".to_string(), |x| format!("{x:.3}"));
        say!(
            out,
            "feature norms       mean {:.3} ± {:.3}   min {:.3}   p5 {:.3}   median {:.3}   p95 {:.3}   max {:.3}",
            n.mean,
            n.std,
            n.min,
            n.p5,
            n.median,
            n.p95,
            n.max
        );
        say!(
            out,
            "  by prediction     correct {} ({} samples)   wrong {} ({} samples)",
            mean_norm(n.mean_correct),
            n.correct,
            mean_norm(n.mean_wrong),
            n.samples - n.correct
        );
    }
    if let Some(m) = &f.magface_norms {
        say!(
            out,
            "  MagFace           {:.1}% at or below l_a = {}   {:.1}% at or above u_a = {}   mean margin {:.4}",
            100.0 * m.at_or_below_lower,
            m.lower_norm,
            100.0 * m.at_or_above_upper,
            m.upper_norm,
            m.mean_margin
        );
    }
}
