//! The honest comparison: the same network, data, epochs, optimiser and seeds for every loss;
//! only the loss changes. Prints a markdown table of mean ± std over the seeds for every metric
//! (what docs/results.md holds) and keeps each run's outputs under `--out`.
//!
//! `cargo run --release --example compare_losses -- --data mnist --data-dir PATH --seeds 3`

mod cli;

use cli::{Args, DATA_HELP, DataFlags, Usage};
use margrad::loss::LossKind;
use margrad::train::{Metrics, TrainConfig, train};
use std::path::PathBuf;
use std::process::ExitCode;

const HELP: &str = "\
Train every loss with the same settings and seeds; print a markdown table of the results.

USAGE
  cargo run --release --example compare_losses -- [FLAGS]

  --seeds N          seeds 0..N per loss (default 3)
  --epochs N         (default 10)
  --losses LIST      comma-separated loss names (default: all)
  --embed-dim N      (default 128)
  --dropout P        (default 0.2)
  --scale S, --margin M   (defaults 30, 0.35)
  --out DIR          run outputs (default runs/compare)

";

fn mean_std(values: &[f64]) -> (f64, f64) {
    let n = values.len().max(1) as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

fn main() -> ExitCode {
    let mut args = Args::from_env();
    let mut data = DataFlags::default();
    let mut base = TrainConfig {
        epochs: 10,
        dropout: 0.2,
        ..TrainConfig::default()
    };
    let (mut seeds, mut out, mut losses) =
        (3u64, PathBuf::from("runs/compare"), LossKind::ALL.to_vec());
    let parsed: Result<(), Usage> = (|| {
        while let Some(flag) = args.next_flag()? {
            if data.take(&flag, &mut args)? {
                continue;
            }
            match flag.as_str() {
                "help" | "h" => {
                    println!("{HELP}{DATA_HELP}");
                    std::process::exit(0);
                }
                "seeds" => seeds = args.value(&flag)?,
                "epochs" => base.epochs = args.value(&flag)?,
                "embed-dim" => base.embed_dim = args.value(&flag)?,
                "dropout" => base.dropout = args.value(&flag)?,
                "scale" => base.loss.scale = args.value(&flag)?,
                "margin" => base.loss.margin = args.value(&flag)?,
                "out" => out = args.value::<String>(&flag)?.into(),
                "losses" => {
                    let names: String = args.value(&flag)?;
                    losses = names
                        .split(',')
                        .map(|n| {
                            LossKind::from_name(n.trim())
                                .ok_or_else(|| Usage(format!("--losses: unknown {n:?}")))
                        })
                        .collect::<Result<_, _>>()?;
                }
                other => return Err(Usage(format!("unknown flag --{other}"))),
            }
        }
        Ok(())
    })();
    if let Err(Usage(message)) = parsed.and_then(|()| {
        base.data = std::mem::take(&mut data).settings()?;
        Ok(())
    }) {
        eprintln!("error: {message}\n(run with --help for the flags)");
        return ExitCode::from(2);
    }
    println!(
        "| loss | test acc. % | verif. acc. % | AUC | EER | TAR@1e-3 | TAR@1e-2 | intra ° | inter min ° | inter mean ° | epoch s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let mut pairs_line = String::new();
    for kind in losses {
        let mut runs: Vec<Metrics> = Vec::new();
        let mut failures = Vec::new();
        for seed in 0..seeds {
            let mut config = base.clone();
            config.loss.kind = kind;
            config.seed = seed;
            let dir = out.join(format!("{}-seed{seed}", kind.name()));
            match train(&config, &dir, &mut |_| {}) {
                Ok(m) => runs.push(m),
                Err(e) => failures.push(format!("seed {seed}: {e}")),
            }
        }
        if runs.is_empty() {
            println!(
                "| {} | did not converge: {} |",
                kind.name(),
                failures.join("; ")
            );
            continue;
        }
        let col = |f: &dyn Fn(&Metrics) -> f64, scale: f64, digits: usize| {
            let (m, s) = mean_std(&runs.iter().map(|r| f(r) * scale).collect::<Vec<_>>());
            format!("{m:.digits$} ± {s:.digits$}")
        };
        // a verification figure undefined in any run is undefined in the table
        let vcol = |f: &dyn Fn(&Metrics) -> Option<f64>, scale: f64, digits: usize| {
            if runs.iter().all(|r| f(r).is_some()) {
                col(&|r| f(r).unwrap_or_default(), scale, digits)
            } else {
                "undefined".to_string()
            }
        };
        let fm = |r: &Metrics| r.final_metrics.clone();
        println!(
            "| {}{} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            kind.name(),
            if failures.is_empty() {
                String::new()
            } else {
                format!(" ({} of {seeds} diverged)", failures.len())
            },
            col(&|r| fm(r).test_accuracy, 100.0, 2),
            vcol(&|r| fm(r).verification.accuracy_mean, 100.0, 2),
            vcol(&|r| fm(r).verification.auc, 1.0, 4),
            vcol(&|r| fm(r).verification.eer, 1.0, 4),
            vcol(&|r| fm(r).verification.tar_at_far_1e3, 1.0, 3),
            vcol(&|r| fm(r).verification.tar_at_far_1e2, 1.0, 3),
            col(&|r| fm(r).geometry.intra_angle_deg, 1.0, 1),
            col(&|r| fm(r).geometry.inter_min_angle_deg, 1.0, 1),
            col(&|r| fm(r).geometry.inter_mean_angle_deg, 1.0, 1),
            col(
                &|r| r.history.iter().map(|h| h.seconds).sum::<f64>() / r.history.len() as f64,
                1.0,
                2
            ),
        );
        let v = &runs[0].final_metrics;
        pairs_line = format!(
            "verification: {}; {} pairs ({} same-class)",
            v.verification_set, v.verification.pairs, v.verification.positive_pairs
        );
        for f in failures {
            eprintln!("{}: {f}", kind.name());
        }
    }
    println!("\n{pairs_line}");
    ExitCode::SUCCESS
}
