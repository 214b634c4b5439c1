//! Flag parsing shared by the `train` and `verify` examples: `--name value`, `--name=value`,
//! and switches, with a clear message (and exit code 2) for anything unknown or malformed.

#![allow(dead_code)] // each example uses its own subset

use margrad::data::SyntheticConfig;
use margrad::train::{DataSettings, DataSource, FinalMetrics};
use std::collections::VecDeque;
use std::str::FromStr;

/// The command line, consumed flag by flag.
pub struct Args {
    rest: VecDeque<String>,
}

/// A usage error: printed with a hint, exit code 2.
pub struct Usage(pub String);

impl Args {
    pub fn from_env() -> Args {
        Args {
            rest: std::env::args().skip(1).collect(),
        }
    }

    /// The next flag's name (without `--`), splitting `--name=value` in two.
    pub fn next_flag(&mut self) -> Result<Option<String>, Usage> {
        let Some(arg) = self.rest.pop_front() else {
            return Ok(None);
        };
        let Some(flag) = arg.strip_prefix("--") else {
            return Err(Usage(format!(
                "unexpected argument {arg:?} (flags start with --)"
            )));
        };
        match flag.split_once('=') {
            Some((name, value)) => {
                self.rest.push_front(value.to_string());
                Ok(Some(name.to_string()))
            }
            None => Ok(Some(flag.to_string())),
        }
    }

    /// The value of flag `name`, parsed.
    pub fn value<T: FromStr>(&mut self, name: &str) -> Result<T, Usage> {
        let raw = self
            .rest
            .pop_front()
            .ok_or_else(|| Usage(format!("--{name} needs a value")))?;
        raw.parse().map_err(|_| {
            Usage(format!(
                "--{name}: cannot read {raw:?} as a {}",
                kind::<T>()
            ))
        })
    }

    /// A comma-separated list of numbers (`--hidden 512,256`; empty for none).
    pub fn list(&mut self, name: &str) -> Result<Vec<usize>, Usage> {
        let raw: String = self.value(name)?;
        raw.split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| {
                s.trim()
                    .parse()
                    .map_err(|_| Usage(format!("--{name}: {s:?} is not a whole number")))
            })
            .collect()
    }
}

fn kind<T>() -> &'static str {
    let name = std::any::type_name::<T>();
    if name.contains("f64") {
        "number"
    } else if name.contains("usize") || name.contains("u64") {
        "whole number"
    } else {
        "value"
    }
}

/// The data flags both examples take.
pub const DATA_HELP: &str = "\
DATA
  --data digits|mnist|synthetic   data set (default digits, shipped in the crate)
  --data-dir PATH                 folder of MNIST's IDX files (for --data mnist)
  --data-seed N                   seeds the digits split, synthetic data and pairs (default 0)
  --holdout-classes N             never train on the last N classes; verify on them (open set)
  --pairs N                       verification pairs (default 6000)
  --identities N                  synthetic identities (default 400)
  --train-per-identity N          synthetic training samples per identity (default 40)
  --test-per-identity N           synthetic test samples per identity (default 10)";

/// Data flags, gathered before the source is known.
#[derive(Default)]
pub struct DataFlags {
    data: Option<String>,
    dir: Option<String>,
    seed: u64,
    holdout: usize,
    pairs: Option<usize>,
    synthetic: SyntheticConfig,
}

impl DataFlags {
    /// Takes flag `name` if it is a data flag; `Ok(false)` otherwise.
    pub fn take(&mut self, name: &str, args: &mut Args) -> Result<bool, Usage> {
        match name {
            "data" => self.data = Some(args.value(name)?),
            "data-dir" => self.dir = Some(args.value(name)?),
            "data-seed" => self.seed = args.value(name)?,
            "holdout-classes" => self.holdout = args.value(name)?,
            "pairs" => self.pairs = Some(args.value(name)?),
            "identities" => self.synthetic.identities = args.value(name)?,
            "train-per-identity" => self.synthetic.train_per_identity = args.value(name)?,
            "test-per-identity" => self.synthetic.test_per_identity = args.value(name)?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// The settings, checked for consistency.
    pub fn settings(self) -> Result<DataSettings, Usage> {
        let source = match self.data.as_deref().unwrap_or("digits") {
            "digits" => DataSource::Digits,
            "mnist" => DataSource::Mnist {
                dir: self
                    .dir
                    .ok_or_else(|| Usage("--data mnist needs --data-dir PATH".into()))?
                    .into(),
            },
            "synthetic" => DataSource::Synthetic(self.synthetic),
            other => {
                return Err(Usage(format!(
                    "--data: unknown data set {other:?} (digits, mnist, synthetic)"
                )));
            }
        };
        Ok(DataSettings {
            source,
            holdout_classes: self.holdout,
            pairs: self.pairs.unwrap_or(6000),
            seed: self.seed,
        })
    }
}

/// Prints the final figures as both examples report them; an undefined figure as
/// "undefined", the accuracy (undefined whenever any figure is) with the reason.
pub fn print_final(f: &FinalMetrics) {
    let (v, g) = (&f.verification, &f.geometry);
    let accuracy = match (v.accuracy_mean, v.accuracy_std) {
        (Some(m), Some(s)) => format!("{:.2}% ± {:.2}%", 100.0 * m, 100.0 * s),
        _ => format!("undefined ({})", v.undefined.as_deref().unwrap_or("")),
    };
    let figure = |x: Option<f64>| x.map_or("undefined".to_string(), |x| format!("{x:.4}"));
    println!("test accuracy       {:.2}%", 100.0 * f.test_accuracy);
    println!("verification        {}", f.verification_set);
    println!(
        "  {:<18}{accuracy}   AUC {}   EER {}",
        format!("{}-fold accuracy", v.folds),
        figure(v.auc),
        figure(v.eer)
    );
    println!(
        "  TAR@FAR=1e-3      {}   TAR@FAR=1e-2 {}   ({} pairs, {} same-class)",
        figure(v.tar_at_far_1e3),
        figure(v.tar_at_far_1e2),
        v.pairs,
        v.positive_pairs
    );
    println!(
        "geometry            intra {:.1}°   inter min {:.1}°   inter mean {:.1}°",
        g.intra_angle_deg, g.inter_min_angle_deg, g.inter_mean_angle_deg
    );
}
