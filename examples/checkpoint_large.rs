//! Saves and loads the checkpoint of a large head, printing the time and the peak resident
//! memory of each phase: a model whose head holds `C` centres of `D` features, with SGD's
//! momentum for every parameter, saved with its training state, loaded whole, then its head
//! alone.
//!
//! `cargo run --release --example checkpoint_large -- [--classes 1000000] [--dim 512]
//! [--dir DIR]`
//!
//! The centres take `4·C·D` bytes (2 GiB at C = 10⁶, D = 512) and the momentum as much: a save
//! that streams holds nothing more, a load holds the two once, and the head alone only the
//! centres. The peaks come from the kernel's high-water mark (`VmHWM`), reset between phases.

use clap::Parser;
use margrad::checkpoint::{self, TrainingState};
use margrad::loss::MarginLoss;
use margrad::nn::{HeadConfig, MlpConfig, Model, ModelConfig};
use margrad::optim::{Method, Optimizer, ParamState};
use margrad::{Params, Tensor, seeded_rng};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Parser)]
#[command(about = "Times a large head's checkpoint and reports each phase's peak memory")]
struct Args {
    /// Classes (centres).
    #[arg(long, default_value_t = 1_000_000)]
    classes: usize,
    /// Feature dimension.
    #[arg(long, default_value_t = 512)]
    dim: usize,
    /// The folder to write the checkpoint in (a temporary one by default; removed after).
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// A field of /proc/self/status in MiB (Linux), if it can be read.
fn status_mib(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Resets the peak resident memory to the current one (Linux: `echo 5 > clear_refs`).
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn phase<T>(name: &str, f: impl FnOnce() -> T) -> T {
    reset_peak();
    let start = Instant::now();
    let out = f();
    let seconds = start.elapsed().as_secs_f64();
    let (rss, peak) = (status_mib("VmRSS:"), status_mib("VmHWM:"));
    println!(
        "{name:<10} {seconds:7.2} s   peak RSS {:8.0} MiB   RSS after {:8.0} MiB",
        peak.unwrap_or(f64::NAN),
        rss.unwrap_or(f64::NAN)
    );
    out
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let (classes, dim) = (args.classes, args.dim);
    let dir = args.dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("margrad-checkpoint-large-{}", std::process::id()))
    });
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("checkpoint.margrad");
    let centres_mib = (4 * classes * dim) as f64 / (1 << 20) as f64;
    println!(
        "C = {classes}, D = {dim}: the centres take {centres_mib:.0} MiB, the momentum as much"
    );

    let (model, params, training) = phase("build", || {
        let config = ModelConfig {
            embedder: MlpConfig::new(&[dim, dim])
                .sequential()
                .expect("valid sizes"),
            head: HeadConfig::Cosine {
                classes,
                loss: MarginLoss::am(64.0, 0.35).expect("valid settings"),
            },
        };
        let mut params = Params::<f32>::new();
        let model = Model::new(config, &mut params, &mut seeded_rng(0)).expect("valid model");
        let method = Method::Sgd {
            momentum: 0.9,
            nesterov: false,
        };
        let mut optimizer = Optimizer::new(method, &params, 0.1, 0.0)
            .expect("valid optimiser")
            .state()
            .clone();
        optimizer.per_param = params
            .ids()
            .map(|id| {
                Some(ParamState {
                    steps: 1,
                    first: Tensor::full(params.get(id).shape(), 1e-3),
                    second: Tensor::zeros(&[0]),
                })
            })
            .collect();
        let training = TrainingState {
            optimizer,
            epoch: 1,
            rng: seeded_rng(1),
            history: Vec::new(),
        };
        (model, params, training)
    });
    phase("save", || {
        checkpoint::save(&path, &model, &params, Some(&training))
    })?;
    let bytes = std::fs::metadata(&path)?.len();
    println!("file       {:.0} MiB", bytes as f64 / (1 << 20) as f64);
    drop((model, params, training));
    let loaded = phase("load", || checkpoint::load::<f32>(&path))?;
    drop(loaded);
    let head = phase("load_head", || checkpoint::load_head::<f32>(&path))?;
    drop(head);
    if args.dir.is_none() {
        std::fs::remove_dir_all(&dir)?;
    }
    Ok(())
}
