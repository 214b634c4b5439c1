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

use margrad::loss::{MarginLoss, margin_cross_entropy};
use margrad::optim::{Method, Optimizer};
use margrad::profile::{self, Phase};
use margrad::train::train_step;
use margrad::{Labels, ParamId, Params, SeededRng, Tensor, seeded_rng};
use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Counts allocations, to report how many a steady-state step makes.
struct Counting;
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static ALLOCATED_BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator, only counting.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        ALLOCATED_BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        ALLOCATED_BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn read_f32(dir: &Path, name: &str, shape: &[usize]) -> Result<Tensor<f32>, String> {
    let path = dir.join(format!("{name}.f32"));
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let data = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect();
    Tensor::from_vec(data, shape).map_err(|e| format!("{}: {e}", path.display()))
}

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
        let path = dir.join("y.i32");
        let raw = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let y: Vec<usize> = raw
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes(c.try_into().expect("4 bytes")).max(0) as usize)
            .collect();
        if y.len() != b {
            return Err(format!(
                "{}: {} labels for a batch of {b}",
                path.display(),
                y.len()
            ));
        }
        let labels = Labels::new(y, c).map_err(|e| format!("{}: {e}", path.display()))?;
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

fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
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

    // the shared protocol: warm-up ≥ 1 s and ≥ 5 steps, then 5 timed runs of ~1 s
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed().as_secs_f64() < 1.0 || n < 5 {
        step.run();
        n += 1;
    }
    let per = start.elapsed().as_secs_f64() / n as f64;
    let iters = ((1.0 / per).ceil() as usize).max(5);
    let mut rates: Vec<f64> = (0..5)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..iters {
                step.run();
            }
            iters as f64 / t.elapsed().as_secs_f64()
        })
        .collect();
    let runs = rates.clone();
    rates.sort_by(f64::total_cmp);

    let (a0, b0) = (
        ALLOCATIONS.load(Ordering::Relaxed),
        ALLOCATED_BYTES.load(Ordering::Relaxed),
    );
    step.run();
    let allocs = ALLOCATIONS.load(Ordering::Relaxed) - a0;
    let alloc_mb = (ALLOCATED_BYTES.load(Ordering::Relaxed) - b0) as f64 / 1e6;
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
        "median": (rates[2] * 1000.0).round() / 1000.0,
        "min": (rates[0] * 1000.0).round() / 1000.0,
        "max": (rates[4] * 1000.0).round() / 1000.0,
        "runs": runs.iter().map(|r| (r * 1000.0).round() / 1000.0).collect::<Vec<_>>(),
        "steps_per_run": iters,
        "loss0": first[0], "loss1": first[1], "loss2": first[2],
        "allocations_per_step": allocs,
        "allocated_mb_per_step": (alloc_mb * 100.0).round() / 100.0,
        "peak_rss_mb": peak_rss_mb().map(|m| (m * 10.0).round() / 10.0),
        "needed_mb": (needed_mb * 10.0).round() / 10.0,
    });
    println!("RESULT {result}");

    if profile_wanted {
        profile::enable(true);
        let _ = profile::take();
        let steps = iters.max(20);
        let t = Instant::now();
        for _ in 0..steps {
            step.run();
        }
        let total_ms = t.elapsed().as_secs_f64() * 1e3 / steps as f64;
        let entries = profile::take();
        println!("\nwhere one step's time goes (B = {b}, C = {c}, {threads} thread(s), profiled):");
        println!(
            "{:<16} {:>10} {:>10} {:>7}",
            "op", "forward", "backward", "share"
        );
        let mut accounted = 0.0;
        let mut categories: Vec<&str> = entries
            .iter()
            .filter(|e| e.phase != Phase::Update)
            .map(|e| e.category)
            .collect();
        categories.dedup();
        for cat in categories {
            let ms = |phase| {
                entries
                    .iter()
                    .filter(|e| e.category == cat && e.phase == phase)
                    .map(|e| e.total.as_secs_f64() * 1e3 / steps as f64)
                    .sum::<f64>()
            };
            let (f, bw) = (ms(Phase::Forward), ms(Phase::Backward));
            accounted += f + bw;
            println!(
                "{cat:<16} {f:>8.3}ms {bw:>8.3}ms {:>6.1}%",
                100.0 * (f + bw) / total_ms
            );
        }
        for e in entries.iter().filter(|e| e.phase == Phase::Update) {
            let ms = e.total.as_secs_f64() * 1e3 / steps as f64;
            accounted += ms;
            let name = match e.category {
                "optimizer" => "optimizer (SGD)",
                other => other,
            };
            println!(
                "{name:<16} {ms:>8.3}ms {:>10} {:>6.1}%",
                "",
                100.0 * ms / total_ms
            );
        }
        let rest = total_ms - accounted;
        println!(
            "{:<16} {:>8.3}ms {:>10} {:>6.1}%",
            "other",
            rest,
            "",
            100.0 * rest / total_ms
        );
        println!("{:<16} {:>8.3}ms", "step", total_ms);
    }
}
