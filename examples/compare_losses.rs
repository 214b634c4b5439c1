//! The honest comparison: the same network, data, epochs, optimiser and seeds for every loss;
//! only the loss changes. Prints a markdown table of mean ± std over the seeds for every metric
//! (what docs/results.md holds) and keeps each run's outputs under `--out`, one folder per run,
//! refused if not empty unless `--overwrite`. Settings are checked for every loss before the
//! first run; any failure other than a divergence stops the comparison with a non-zero exit.
//!
//! `cargo run --release --example compare_losses -- --data mnist --data-dir PATH --seeds 3`

#[macro_use]
mod cli;

use clap::Parser;
use cli::{
    DataFlags, Stdout, describe, loss_parser, model_parser, parse, refuse_mlp_flags, refuse_unread,
    usage,
};
use margrad::loss::LossKind;
use margrad::train::{Metrics, ModelKind, OutputPolicy, Setting, TrainConfig, TrainError, train};
use std::path::PathBuf;
use std::process::ExitCode;

/// Train every loss with the same settings and seeds; print a markdown table of the results.
#[derive(Parser, Debug)]
#[command(
    name = "compare_losses",
    allow_negative_numbers = true,
    args_override_self = true
)]
struct Cli {
    /// Seeds 0..N per loss
    #[arg(long, value_name = "N", default_value_t = 3)]
    seeds: u64,
    /// Epochs
    #[arg(long, value_name = "N", default_value_t = 10)]
    epochs: usize,
    /// Comma-separated loss names [default: all]
    #[arg(long, value_name = "LIST", value_parser = loss_parser(), value_delimiter = ',')]
    losses: Vec<LossKind>,
    /// Embedding dimension
    #[arg(long, value_name = "N", default_value_t = TrainConfig::default().embed_dim)]
    embed_dim: usize,
    /// The embedder (as train's --model)
    #[arg(long, value_name = "NAME", value_parser = model_parser(),
          default_value = TrainConfig::default().model.name())]
    model: ModelKind,
    /// Dropout probability after the MLP's hidden layer
    #[arg(long, value_name = "P", default_value_t = TrainConfig::default().dropout)]
    dropout: f64,
    /// Logit scale s for every loss that has one [default: each loss's own (train --help)]
    #[arg(long, value_name = "S")]
    scale: Option<f64>,
    /// Margin m for every loss that has one [default: each loss's own (train --help)]
    #[arg(long, value_name = "M")]
    margin: Option<f64>,
    /// Where each run's outputs go (a folder LOSS-seedN per run, each refused if not empty)
    #[arg(long, value_name = "DIR", default_value = "runs/compare")]
    out: PathBuf,
    /// Remove the previous runs' outputs from their folders first (refused for a folder that
    /// holds any other file)
    #[arg(long)]
    overwrite: bool,
    #[command(flatten)]
    data: DataFlags,
}

fn mean_std(values: &[f64]) -> (f64, f64) {
    let n = values.len().max(1) as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

/// The base configuration, the losses and the seeds, every flag checked for every loss; a
/// usage error otherwise.
fn configure() -> (TrainConfig, Vec<LossKind>, Cli) {
    let (cli, matches) = parse::<Cli>();
    let losses = if cli.losses.is_empty() {
        LossKind::ALL.to_vec()
    } else {
        cli.losses.clone()
    };
    for (i, kind) in losses.iter().enumerate() {
        if losses[..i].contains(kind) {
            usage::<Cli>(format!("--losses names {} twice", kind.name()));
        }
    }
    let base = TrainConfig::default();
    let flags = [
        ("scale", "--scale", Setting::Scale),
        ("margin", "--margin", Setting::Margin),
    ];
    let data = refuse_unread(&matches, &flags, &losses, base.optimizer)
        .and_then(|()| refuse_mlp_flags(&matches, &[("dropout", "--dropout")], cli.model))
        .and_then(|()| cli.data.settings(&matches))
        .unwrap_or_else(|message| usage::<Cli>(message));
    let base = TrainConfig {
        data,
        epochs: cli.epochs,
        model: cli.model,
        embed_dim: cli.embed_dim,
        dropout: cli.dropout,
        output: if cli.overwrite {
            OutputPolicy::Overwrite
        } else {
            OutputPolicy::New
        },
        ..base
    };
    if cli.seeds == 0 {
        usage::<Cli>("invalid seeds = 0: must be at least 1");
    }
    for &kind in &losses {
        if let Err(e) = config_for(&base, kind, &cli).validate() {
            usage::<Cli>(format!("{}: {e}", kind.name()));
        }
    }
    (base, losses, cli)
}

/// The run of `kind`: `base` with the loss, and `--scale` and `--margin` as given, else the
/// loss's own ([`LossKind::default_scale_and_margin`]).
fn config_for(base: &TrainConfig, kind: LossKind, cli: &Cli) -> TrainConfig {
    let mut config = base.clone();
    let (scale, margin) = kind.default_scale_and_margin();
    config.loss.kind = kind;
    config.loss.scale = cli.scale.unwrap_or(scale);
    config.loss.margin = cli.margin.unwrap_or(margin);
    config
}

fn main() -> ExitCode {
    let (base, losses, cli) = configure();
    let (seeds, out) = (cli.seeds, cli.out.clone());
    let mut stdout = Stdout::new();
    say!(
        stdout,
        "| loss | test acc. % | verif. acc. % | AUC | EER | TAR@1e-3 | TAR@1e-2 | intra ° | inter min ° | inter mean ° | ‖f‖ | ‖f‖ right | ‖f‖ wrong | epoch s |"
    );
    say!(
        stdout,
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    let mut pairs_line = String::new();
    for kind in losses {
        let mut runs: Vec<Metrics> = Vec::new();
        let mut failures = Vec::new();
        for seed in 0..seeds {
            let mut config = config_for(&base, kind, &cli);
            config.seed = seed;
            let dir = out.join(format!("{}-seed{seed}", kind.name()));
            match train(&config, &dir, &mut |_| {}) {
                Ok(m) => runs.push(m),
                Err(e @ TrainError::Diverged { .. }) => failures.push(format!("seed {seed}: {e}")),
                Err(e) => {
                    // not the loss's doing: the table would misreport it
                    complain!("error: {} seed {seed}: {}", kind.name(), describe(&e));
                    return ExitCode::FAILURE;
                }
            }
        }
        if runs.is_empty() {
            say!(
                stdout,
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
        say!(
            stdout,
            "| {}{} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
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
            vcol(&|r| fm(r).feature_norms.as_ref().map(|n| n.mean), 1.0, 2),
            vcol(
                &|r| fm(r).feature_norms.as_ref().and_then(|n| n.mean_correct),
                1.0,
                2
            ),
            vcol(
                &|r| fm(r).feature_norms.as_ref().and_then(|n| n.mean_wrong),
                1.0,
                2
            ),
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
            complain!("{}: {f}", kind.name());
        }
    }
    say!(stdout, "\n{pairs_line}");
    stdout.exit_code()
}
