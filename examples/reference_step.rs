//! The reference training step of `docs/performance.md`, on its data files, with its timing
//! protocol, printing one `RESULT {json}` line (the line the JAX comparison harness reads):
//!
//! h = relu(x W1 + b1); e = h W2 + b2; cos = (e / ‖e‖)(W / ‖W‖ per column);
//! loss = AM-Softmax (s = 30, m = 0.35), mean; backward; SGD with lr 0.1. The step is the
//! library's [`train_step`] (finite check, update) around this forward pass.
//!
//! `cargo run --release --example reference_step -- DATA_DIR B C THREADS [--profile]`
//!
//! Besides steps/s it reports allocations per steady-state step, peak resident memory against
//! what the step must hold, and with `--profile` where one step's time goes.

mod bench;

use bench::{print_profile, read_f32, read_labels, round, time_steps};
use margrad::loss::{MarginLoss, margin_cross_entropy};
use margrad::optim::{Method, Optimizer};
use margrad::train::train_step;
use margrad::{Labels, ParamId, Params, SeededRng, seeded_rng};
use std::path::{Path, PathBuf};

struct Step {
    params: Params<f32>,
    ids: [ParamId; 5],
    x: ParamId,
    labels: Labels,
    loss: MarginLoss,
    optimizer: Optimizer<f32>,
    /// The step's generator (the forward pass draws nothing from it: no dropout).
    rng: SeededRng,
}

impl Step {
    fn load(dir: &Path, b: usize, c: usize) -> Result<Step, String> {
        let mut params = Params::new();
        let mut add = |name: &str, shape: &[usize]| -> Result<ParamId, String> {
            Ok(params.add(name, read_f32(dir, name, shape)?))
        };
        let ids = [
            add("W1", &[784, 512])?,
            add("b1", &[512])?,
            add("W2", &[512, 128])?,
            add("b2", &[128])?,
            add("W", &[128, c])?,
        ];
        let x = params.add_buffer("x", read_f32(dir, "x", &[b, 784])?);
        let labels = read_labels(dir, b, c)?;
        let sgd = Method::Sgd {
            momentum: 0.0,
            nesterov: false,
        };
        let optimizer = Optimizer::new(sgd, &params, 0.1, 0.0).map_err(|e| e.to_string())?;
        let loss = MarginLoss::am(30.0, 0.35).map_err(|e| e.to_string())?;
        Ok(Step {
            params,
            ids,
            x,
            labels,
            loss,
            optimizer,
            rng: seeded_rng(0),
        })
    }

    /// One training step; returns the loss before the update.
    fn run(&mut self) -> f32 {
        let ([w1, b1, w2, b2, w], x) = (self.ids, self.x);
        let (labels, margin) = (&self.labels, &self.loss);
        let outcome = train_step(
            &mut self.params,
            &mut self.optimizer,
            &mut self.rng,
            labels,
            |cx| {
                let h = cx.param(x).matmul(cx.param(w1)).add_relu(cx.param(b1));
                let e = h.matmul(cx.param(w2)) + cx.param(b2);
                let cos = e
                    .normalize_rows(1e-12)
                    .matmul(cx.param(w).normalize_cols(1e-12));
                Ok((margin_cross_entropy(cos, labels, margin)?, None))
            },
        );
        let outcome = outcome.unwrap_or_else(|e| {
            eprintln!("error: {e}");
            std::process::exit(1)
        });
        outcome.loss as f32
    }
}

/// The reference MLP training step, timed by the shared protocol; prints one RESULT line.
#[derive(clap::Parser, Debug)]
#[command(name = "reference_step")]
struct Cli {
    /// Folder of this shape's data files (x.f32, y.i32, W1.f32...: the bench's make_data.py
    /// writes one per shape, named B{B}_C{C})
    data_dir: PathBuf,
    /// Batch size B
    b: usize,
    /// Number of classes C
    c: usize,
    /// Worker threads
    #[arg(value_parser = clap::value_parser!(u16).range(1..=1024))]
    threads: u16,
    /// Also print where the step's time goes, op by op
    #[arg(long)]
    profile: bool,
}

fn main() {
    let cli = <Cli as clap::Parser>::parse();
    let (dir, b, c, threads, profile_wanted) = (
        cli.data_dir,
        cli.b,
        cli.c,
        usize::from(cli.threads),
        cli.profile,
    );
    // run everything on a worker of the pool, so that each op's parallel work joins the
    // calling thread instead of waking the pool from outside it
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .build()
        .expect("a thread pool");
    pool.install(|| run(&dir, b, c, threads, profile_wanted));
}

fn run(dir: &Path, b: usize, c: usize, threads: usize, profile_wanted: bool) {
    let mut step = Step::load(dir, b, c).unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(1)
    });
    let first: Vec<f32> = (0..3).map(|_| step.run()).collect();
    let timing = time_steps(|| {
        step.run();
    });
    let (median, min, max) = timing.median_min_max();
    // what the step must hold: parameters, their gradients, the input, and the activations
    // kept for backward (x W1, h, e, ‖e‖-normalised e, W normalised, cos: as the graph holds them)
    let param_floats: usize = step
        .params
        .ids()
        .map(|id| step.params.get(id).numel())
        .sum();
    let x_floats = b * 784;
    let trainable = param_floats - x_floats;
    let activations = b * 512 * 3 + b * 128 * 3 + 128 * c + b * c;
    let needed_mb = (2 * trainable + x_floats + activations) as f64 * 4.0 / 1e6;

    let result = serde_json::json!({
        "framework": format!("margrad-{}", env!("CARGO_PKG_VERSION")),
        "threads": threads, "B": b, "C": c,
        "median": round(median, 3), "min": round(min, 3), "max": round(max, 3),
        "runs": timing.runs.iter().map(|&r| round(r, 3)).collect::<Vec<_>>(),
        "steps_per_run": timing.steps_per_run,
        "loss0": first[0], "loss1": first[1], "loss2": first[2],
        "allocations_per_step": timing.allocations_per_step,
        "allocated_mb_per_step": round(timing.allocated_mb_per_step, 2),
        "peak_rss_mb": bench::peak_rss_mb().map(|m| round(m, 1)),
        "needed_mb": round(needed_mb, 1),
    });
    println!("RESULT {result}");

    if profile_wanted {
        let title = format!("B = {b}, C = {c}, {threads} thread(s)");
        print_profile(&title, timing.steps_per_run.max(20), || {
            step.run();
        });
    }
}
