//! Trains an embedding model with a margin loss, evaluates it the way face-verification models
//! are judged, saves it, and draws what it learned. `--help` lists the flags.
//!
//! `cargo run --release --example train` trains on the UCI digits shipped in the crate.

mod cli;

use cli::{Args, DATA_HELP, DataFlags, Usage, print_final};
use margrad::loss::ArcFallback;
use margrad::loss::LossKind;
use margrad::train::{CHECKPOINT_FILE, EXPORT_FILE, Event, MethodName, TrainConfig, train};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

const HELP: &str = "\
Train an embedding model with a margin-based softmax loss.

USAGE
  cargo run --release --example train -- [FLAGS]

LOSS
  --loss NAME        the loss (default am), one of:
LOSSES
  --scale S          logit scale s (default 30)
  --margin M         margin m: cosine margin (am, enhanced), angular margin (arcface) (default 0.35)
  --m-nt X           enhanced: margin added to every non-target cosine (default m)
  --big-m X          enhanced: target divisor M (default e^m)
  --m1 X, --m2 X, --m3 X
                     combined: angular multiplier (default 1), angular margin (default 0.3),
                     cosine margin (default 0.2)
  --fallback F       arcface/combined past the monotonic range: none | threshold | easy (default threshold)

MODEL AND TRAINING
  --hidden LIST      hidden layer widths, comma-separated (default 512)
  --embed-dim N      embedding dimension (default 128; 2 or 3 also draws the sphere)
  --batch-norm       BatchNorm1d after each hidden layer
  --dropout P        dropout after each hidden layer (default 0.2)
  --epochs N         (default 20)
  --batch N          (default 128)
  --optimizer NAME   sgd | adam | adamw (default adam)
  --lr X             learning rate, annealed by a cosine to 1% (default 0.001)
  --momentum X       SGD momentum, Nesterov when > 0 (default 0.9)
  --weight-decay X   (default 0)
  --seed N           seeds initialisation, shuffling and dropout (default 0)
  --threads N        worker threads (default or 0: all cores; the result is the same on any)
  --out DIR          where the outputs go (default runs/latest)
  --resume PATH      continue the run saved in PATH (its checkpoint.margrad) from the epoch
                     after the ones it completed, up to --epochs, as if it had never stopped;
                     pass the interrupted run's flags (model and optimiser flags are checked
                     against it)

";

fn parse() -> Result<(TrainConfig, PathBuf), Usage> {
    let mut args = Args::from_env();
    let mut config = TrainConfig::default();
    let mut data = DataFlags::default();
    let mut out = PathBuf::from("runs/latest");
    let (mut m2, mut m1, mut m3) = (None, None, None);
    while let Some(flag) = args.next_flag()? {
        if data.take(&flag, &mut args)? {
            continue;
        }
        let loss = &mut config.loss;
        match flag.as_str() {
            "help" | "h" => {
                // the loss names come from the one list the library keeps
                let (mut list, mut width) = (String::new(), 0);
                for (i, kind) in LossKind::ALL.iter().enumerate() {
                    let name = kind.name();
                    if i > 0 && width + name.len() > 70 {
                        list.push_str(" |\n");
                        width = 0;
                    } else if i > 0 {
                        list.push_str(" | ");
                    }
                    if width == 0 {
                        list.push_str(&" ".repeat(21));
                        width = 21;
                    }
                    list.push_str(name);
                    width += name.len() + 3;
                }
                let help = HELP.replace("LOSSES", &list);
                println!("{help}{DATA_HELP}");
                std::process::exit(0);
            }
            "loss" => {
                let name: String = args.value(&flag)?;
                loss.kind = LossKind::from_name(&name).ok_or_else(|| {
                    let names: Vec<_> = LossKind::ALL.iter().map(|k| k.name()).collect();
                    Usage(format!(
                        "--loss: unknown loss {name:?} ({})",
                        names.join(", ")
                    ))
                })?;
            }
            "scale" => loss.scale = args.value(&flag)?,
            "margin" => loss.margin = args.value(&flag)?,
            "m-nt" => loss.nontarget_margin = Some(args.value(&flag)?),
            "m2" => m2 = Some(args.value(&flag)?),
            "big-m" => loss.target_divisor = Some(args.value(&flag)?),
            "m1" => m1 = Some(args.value(&flag)?),
            "m3" => m3 = Some(args.value(&flag)?),
            "fallback" => {
                let name: String = args.value(&flag)?;
                loss.fallback = match name.as_str() {
                    "none" => ArcFallback::None,
                    "threshold" => ArcFallback::Threshold,
                    "easy" => ArcFallback::EasyMargin,
                    _ => {
                        return Err(Usage(format!(
                            "--fallback: unknown {name:?} (none, threshold, easy)"
                        )));
                    }
                };
            }
            "hidden" => config.hidden = args.list(&flag)?,
            "embed-dim" => config.embed_dim = args.value(&flag)?,
            "batch-norm" => config.batch_norm = true,
            "dropout" => config.dropout = args.value(&flag)?,
            "epochs" => config.epochs = args.value(&flag)?,
            "batch" => config.batch = args.value(&flag)?,
            "optimizer" => {
                let name: String = args.value(&flag)?;
                config.optimizer = match name.as_str() {
                    "sgd" => MethodName::Sgd,
                    "adam" => MethodName::Adam,
                    "adamw" => MethodName::AdamW,
                    _ => {
                        return Err(Usage(format!(
                            "--optimizer: unknown {name:?} (sgd, adam, adamw)"
                        )));
                    }
                };
            }
            "lr" => config.lr = args.value(&flag)?,
            "momentum" => config.momentum = args.value(&flag)?,
            "weight-decay" => config.weight_decay = args.value(&flag)?,
            "seed" => config.seed = args.value(&flag)?,
            "threads" => config.threads = Some(args.value(&flag)?),
            "resume" => config.resume = Some(args.value::<String>(&flag)?.into()),
            "out" => out = args.value::<String>(&flag)?.into(),
            other => return Err(Usage(format!("unknown flag --{other}"))),
        }
    }
    let loss = &mut config.loss;
    loss.combined = (m1.unwrap_or(1.0), m2.unwrap_or(0.3), m3.unwrap_or(0.2));
    config.data = data.settings()?;
    Ok((config, out))
}

fn main() -> ExitCode {
    let (config, out) = match parse() {
        Ok(parsed) => parsed,
        Err(Usage(message)) => {
            eprintln!("error: {message}\n(run with --help for the flags)");
            return ExitCode::from(2);
        }
    };
    let terminal = std::io::stderr().is_terminal();
    println!(
        "training {} (s = {}, m = {}) for {} epochs; outputs in {}",
        config.loss.kind.name(),
        config.loss.scale,
        config.loss.margin,
        config.epochs,
        out.display()
    );
    let epochs = config.epochs;
    let mut on_event = |event: Event| match event {
        Event::Step {
            epoch,
            step,
            steps,
            loss,
        } if terminal && (step % 10 == 0 || step == steps) => {
            eprint!("\r  epoch {epoch}/{epochs}  step {step}/{steps}  loss {loss:.4}   ");
            let _ = std::io::stderr().flush();
        }
        Event::Step { .. } => {}
        Event::Resumed { from, epoch } => {
            println!("resumed from {} after epoch {epoch}", from.display());
        }
        Event::Epoch(r) => {
            if terminal {
                eprint!("\r{:60}\r", "");
            }
            println!(
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
    match train(&config, &out, &mut on_event) {
        Ok(metrics) => {
            let f = &metrics.final_metrics;
            print_final(f);
            println!(
                "wrote {CHECKPOINT_FILE}, {EXPORT_FILE}, metrics.json and figures to {}",
                out.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
