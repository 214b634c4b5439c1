//! Loads a trained checkpoint, embeds a data set and prints the figures the trainer reported for
//! the same data (the same function computes them, so they are identical). `--help` lists the
//! flags; the data flags are checked as `train` checks them.
//!
//! `cargo run --release --example verify -- --model runs/latest/checkpoint.margrad`

#[macro_use]
mod cli;

use clap::Parser;
use cli::{DataFlags, Stdout, parse, print_final, usage};
use margrad::checkpoint;
use margrad::train::{evaluate, prepare_data};
use std::path::PathBuf;
use std::process::ExitCode;

/// Evaluate a trained checkpoint: closed-set accuracy, verification, embedding geometry. Pass
/// the data flags the model was trained with.
#[derive(Parser, Debug)]
#[command(
    name = "verify",
    allow_negative_numbers = true,
    args_override_self = true
)]
struct Cli {
    /// The checkpoint written by the train example (checkpoint.margrad in its --out folder)
    #[arg(long, value_name = "PATH")]
    model: PathBuf,
    /// Print metrics.json's `final` object instead of text
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    data: DataFlags,
}

fn main() -> ExitCode {
    let (cli, matches) = parse::<Cli>();
    let settings = cli
        .data
        .settings(&matches)
        .unwrap_or_else(|message| usage::<Cli>(message));
    let fail = |e: &dyn std::fmt::Display| {
        complain!("error: {e}");
        ExitCode::FAILURE
    };
    let data = match prepare_data(&settings) {
        Ok(d) => d,
        Err(e) => return fail(&e),
    };
    let checkpoint = match checkpoint::load::<f32>(&cli.model) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let expected = checkpoint.model.input_dim();
    let classes = checkpoint.model.config().head.classes();
    if data.test.dim() != expected || data.train.classes != classes {
        return fail(&format!(
            "the model takes {expected} features and {classes} classes, the data has {} \
             features and {} classes: pass the data flags it was trained with",
            data.test.dim(),
            data.train.classes
        ));
    }
    let f = match evaluate(&checkpoint.model, &checkpoint.params, &data, &settings) {
        Ok(evaluation) => evaluation.metrics,
        Err(e) => return fail(&e),
    };
    let mut stdout = Stdout::new();
    if cli.json {
        let json = serde_json::to_string_pretty(&f).expect("metrics serialise");
        say!(stdout, "{json}");
    } else {
        print_final(&mut stdout, &f);
    }
    stdout.exit_code()
}
