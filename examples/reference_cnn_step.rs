//! The reference CNN training step of the benchmark, on its data files and with its timing
//! protocol, printing one `RESULT {json}` line (the line the comparison harness reads):
//!
//! four 3×3 convolutions (1→32→32→64→64, padding 1, bias, ReLU), a 2×2 max-pool after the
//! second and the fourth; flatten to `[B, 3136]`; e = flat Wf + bf; cos = (e / ‖e‖)(W / ‖W‖
//! per column); loss = AM-Softmax (s = 30, m = 0.35), mean; backward; SGD with lr 0.01 on the
//! 11 parameters. The step is the library's [`train_step`] around this forward pass; the input
//! x `[B, 1, 28, 28]` is a constant buffer.
//!
//! `cargo run --release --example reference_cnn_step -- DATA_DIR B C THREADS [--profile]
//! [--cpu-steps N]`
//!
//! DATA_DIR holds x.f32, y.i32, c1w.f32, c1b.f32 ... c4w.f32, c4b.f32, Wf.f32, bf.f32, W.f32.
//! Besides steps/s it reports GFLOP/s (by the benchmark's count of 111.70 MFLOP per sample at
//! C = 10), allocations per steady-state step, peak resident memory, and with `--profile` where
//! one step's time goes.

mod bench;

use bench::{print_profile, read_f32, read_labels, round, time_steps};
use margrad::loss::{MarginLoss, margin_cross_entropy};
use margrad::optim::{Method, Optimizer};
use margrad::train::train_step;
use margrad::{Conv2dOptions, Labels, ParamId, Params, Pool2dOptions, SeededRng, seeded_rng};
use std::path::{Path, PathBuf};

/// The convolutions' channels, input → output, in order; a 2×2 max-pool follows the second and the fourth.
const CONVS: [(usize, usize); 4] = [(1, 32), (32, 32), (32, 64), (64, 64)];
/// The embedding's width.
const EMBEDDING: usize = 128;
/// The flattened features after the last pooling: 64 channels of 7×7.
const FLAT: usize = 64 * 7 * 7;

/// Multiply-adds ×2 of one sample's forward and backward (the benchmark's count: every 3×3 tap,
/// padding included; no input gradient for conv1), for `c` classes.
fn flop_per_sample(c: usize) -> f64 {
    let conv = |cin: usize, cout: usize, side: usize| 2.0 * (cout * side * side * cin * 9) as f64;
    let sides = [28, 28, 14, 14];
    let convs: Vec<f64> = CONVS
        .iter()
        .zip(sides)
        .map(|(&(i, o), s)| conv(i, o, s))
        .collect();
    let forward = convs.iter().sum::<f64>() + 2.0 * (FLAT * EMBEDDING + EMBEDDING * c) as f64;
    3.0 * forward - convs[0]
}

struct Step {
    params: Params<f32>,
    /// Each convolution's weight `[O, I, 3, 3]` and bias `[O]`.
    convs: [(ParamId, ParamId); 4],
    dense: (ParamId, ParamId),
    centres: ParamId,
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
        let mut convs = Vec::with_capacity(CONVS.len());
        for (k, &(cin, cout)) in CONVS.iter().enumerate() {
            let weight = add(&format!("c{}w", k + 1), &[cout, cin, 3, 3])?;
            convs.push((weight, add(&format!("c{}b", k + 1), &[cout])?));
        }
        let dense = (add("Wf", &[FLAT, EMBEDDING])?, add("bf", &[EMBEDDING])?);
        let centres = add("W", &[EMBEDDING, c])?;
        let x = params.add_buffer("x", read_f32(dir, "x", &[b, 1, 28, 28])?);
        let labels = read_labels(dir, b, c)?;
        let sgd = Method::Sgd {
            momentum: 0.0,
            nesterov: false,
        };
        let optimizer = Optimizer::new(sgd, &params, 0.01, 0.0).map_err(|e| e.to_string())?;
        let loss = MarginLoss::am(30.0, 0.35).map_err(|e| e.to_string())?;
        Ok(Step {
            params,
            convs: convs.try_into().expect("four convolutions"),
            dense,
            centres,
            x,
            labels,
            loss,
            optimizer,
            rng: seeded_rng(0),
        })
    }

    /// One training step; returns the loss before the update.
    fn run(&mut self) -> f32 {
        let (convs, (wf, bf), w, x) = (self.convs, self.dense, self.centres, self.x);
        let (labels, margin) = (&self.labels, &self.loss);
        let outcome = train_step(
            &mut self.params,
            &mut self.optimizer,
            &mut self.rng,
            labels,
            |cx| {
                let same = Conv2dOptions::new().padding(1);
                let pool = Pool2dOptions::new(2);
                let mut h = cx.param(x);
                for (k, &(weight, bias)) in convs.iter().enumerate() {
                    h = h
                        .conv2d(cx.param(weight), Some(cx.param(bias)), same)
                        .relu();
                    if k % 2 == 1 {
                        h = h.max_pool2d(pool);
                    }
                }
                let batch = h.shape()[0];
                let e = h.reshape(&[batch, FLAT]).matmul(cx.param(wf)) + cx.param(bf);
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

/// The reference CNN training step, timed by the shared protocol; prints one RESULT line.
#[derive(clap::Parser, Debug)]
#[command(name = "reference_cnn_step")]
struct Cli {
    /// Folder of this shape's data files (x.f32, y.i32, c1w.f32...: the bench's make_data.py
    /// --step cnn writes one per shape, named cnn_B{B}_C{C})
    data_dir: PathBuf,
    /// Batch size B
    #[arg(value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    b: u32,
    /// Number of classes C
    #[arg(value_parser = clap::value_parser!(u32).range(1..=100_000_000))]
    c: u32,
    /// Worker threads
    #[arg(value_parser = clap::value_parser!(u16).range(1..=1024))]
    threads: u16,
    /// Also print where the step's time goes, op by op
    #[arg(long)]
    profile: bool,
    /// Instead of the protocol: time this many steps one by one and print a `STEPS {json}`
    /// line with the median and least wall time and CPU time of the thread that runs them,
    /// in ms (on a loaded machine the CPU time is the steadier figure)
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    cpu_steps: Option<u32>,
}

fn main() {
    let cli = <Cli as clap::Parser>::parse();
    let threads = usize::from(cli.threads);
    // run everything on a worker of the pool, so that each op's parallel work joins the
    // calling thread instead of waking the pool from outside it
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("a thread pool");
    pool.install(|| {
        run(
            &cli.data_dir,
            cli.b as usize,
            cli.c as usize,
            threads,
            cli.profile,
            cli.cpu_steps.map(|n| n as usize),
        )
    });
}

/// CPU time the calling thread has run, in ms (Linux's `/proc/thread-self/schedstat`).
fn thread_cpu_ms() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    Some(stat.split_whitespace().next()?.parse::<f64>().ok()? / 1e6)
}

/// Times `n` steps one by one: the median and least wall and thread CPU time, in ms.
fn time_each_step(step: &mut Step, n: usize) -> serde_json::Value {
    let (mut wall, mut cpu) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for _ in 0..n {
        let (start, cpu_start) = (std::time::Instant::now(), thread_cpu_ms());
        step.run();
        wall.push(start.elapsed().as_secs_f64() * 1e3);
        cpu.extend(
            thread_cpu_ms()
                .zip(cpu_start)
                .map(|(end, start)| end - start),
        );
    }
    let median_min = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (!v.is_empty()).then(|| (round(v[v.len() / 2], 2), round(v[0], 2)))
    };
    let (wall, cpu) = (median_min(wall), median_min(cpu));
    serde_json::json!({
        "steps": n,
        "wall_ms_median": wall.map(|w| w.0), "wall_ms_min": wall.map(|w| w.1),
        "thread_cpu_ms_median": cpu.map(|c| c.0), "thread_cpu_ms_min": cpu.map(|c| c.1),
    })
}

fn run(
    dir: &Path,
    b: usize,
    c: usize,
    threads: usize,
    profile_wanted: bool,
    cpu_steps: Option<usize>,
) {
    let mut step = Step::load(dir, b, c).unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(1)
    });
    let first: Vec<f32> = (0..3).map(|_| step.run()).collect();
    if let Some(n) = cpu_steps {
        let mut line = time_each_step(&mut step, n);
        line["B"] = b.into();
        line["threads"] = threads.into();
        line["losses"] = first.into();
        println!("STEPS {line}");
        return;
    }
    let timing = time_steps(|| {
        step.run();
    });
    let (median, min, max) = timing.median_min_max();
    let gflop = flop_per_sample(c) * b as f64 / 1e9;
    let result = serde_json::json!({
        "framework": format!("margrad-{}", env!("CARGO_PKG_VERSION")),
        "threads": threads, "B": b, "C": c,
        "median": round(median, 3), "min": round(min, 3), "max": round(max, 3),
        "runs": timing.runs.iter().map(|&r| round(r, 3)).collect::<Vec<_>>(),
        "steps_per_run": timing.steps_per_run,
        "loss0": first[0], "loss1": first[1], "loss2": first[2],
        "gflop_per_step": round(gflop, 3),
        "gflop_per_s": round(median * gflop, 1),
        "allocations_per_step": timing.allocations_per_step,
        "allocated_mb_per_step": round(timing.allocated_mb_per_step, 2),
        "peak_rss_mb": bench::peak_rss_mb().map(|m| round(m, 1)),
    });
    println!("RESULT {result}");

    if profile_wanted {
        let title = format!("B = {b}, C = {c}, {threads} thread(s)");
        print_profile(&title, timing.steps_per_run.max(10), || {
            step.run();
        });
    }
}
