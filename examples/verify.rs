//! Loads a trained checkpoint, embeds a data set and prints the figures the trainer reported for
//! the same data (the same function computes them, so they are identical). `--help` lists the
//! flags.
//!
//! `cargo run --release --example verify -- --model runs/latest/checkpoint.margrad`

mod cli;

use cli::{Args, DATA_HELP, DataFlags, Usage, print_final};
use margrad::checkpoint;
use margrad::train::{evaluate, prepare_data};
use std::path::PathBuf;
use std::process::ExitCode;

const HELP: &str = "\
Evaluate a trained checkpoint: closed-set accuracy, verification, embedding geometry.

USAGE
  cargo run --release --example verify -- --model PATH [FLAGS]

  --model PATH       the checkpoint (checkpoint.margrad) written by the train example
  --json             print metrics.json's `final` object instead of text
  (pass the same data flags the model was trained with)

";

fn parse() -> Result<(PathBuf, bool, margrad::train::DataSettings), Usage> {
    let mut args = Args::from_env();
    let (mut model, mut json, mut data) = (None, false, DataFlags::default());
    while let Some(flag) = args.next_flag()? {
        if data.take(&flag, &mut args)? {
            continue;
        }
        match flag.as_str() {
            "help" | "h" => {
                println!("{HELP}{DATA_HELP}");
                std::process::exit(0);
            }
            "model" => model = Some(PathBuf::from(args.value::<String>(&flag)?)),
            "json" => json = true,
            other => return Err(Usage(format!("unknown flag --{other}"))),
        }
    }
    let model = model.ok_or_else(|| Usage("--model PATH is required".into()))?;
    Ok((model, json, data.settings()?))
}

fn main() -> ExitCode {
    let (path, json, settings) = match parse() {
        Ok(parsed) => parsed,
        Err(Usage(message)) => {
            eprintln!("error: {message}\n(run with --help for the flags)");
            return ExitCode::from(2);
        }
    };
    let checkpoint = match checkpoint::load::<f32>(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let data = match prepare_data(&settings) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let expected = checkpoint.model.input_dim();
    if data.test.dim() != expected || data.train.classes != checkpoint.model.config().head.classes()
    {
        eprintln!(
            "error: the model takes {expected} features and {} classes, the data has {} features \
             and {} classes: pass the data flags it was trained with",
            checkpoint.model.config().head.classes(),
            data.test.dim(),
            data.train.classes
        );
        return ExitCode::FAILURE;
    }
    let f = match evaluate(&checkpoint.model, &checkpoint.params, &data, &settings) {
        Ok(evaluation) => evaluation.metrics,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&f).expect("metrics serialise")
        );
        return ExitCode::SUCCESS;
    }
    print_final(&f);
    ExitCode::SUCCESS
}
