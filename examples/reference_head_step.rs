//! The reference head step: a face-recognition classifier over many identities, alone, on the
//! benchmark's data files and with its timing protocol, printing one `RESULT {json}` line.
//!
//! Features x `[B, 512]` (a leaf: its gradient is computed, as if passed back to a backbone,
//! not applied), centres W, labels y; cos = (x / ‖x‖)(W / ‖W‖ per centre); CosFace /
//! AM-Softmax with s = 64, m = 0.35, mean cross-entropy; SGD with momentum 0.9 and lr 0.1 on W
//! (`v ← 0.9 v + ∂L/∂W`, `W ← W − 0.1 v`). The head is [`BlockedHead`]: classes in blocks,
//! no `B×C` logits, no dense gradient of W; the update is applied block by block.
//!
//! `cargo run --release --example reference_head_step -- DATA_DIR B C THREADS [--block N]
//! [--sample-rate R]`
//!
//! DATA_DIR holds x.f32 `[B, 512]`, y.i32 `[B]` and W.f32 `[512, C]` (one column per class);
//! W is read in slices of rows straight into the head's layout, one row per class, so loading
//! never holds a second copy of it. With `--sample-rate R < 1` each step trains on a class
//! sample (every class of the batch and uniform negatives, Partial FC): not the benchmark's
//! step, and its losses are not the peers'.

use margrad::loss::{BlockedHead, ClassSample, MarginLoss};
use margrad::optim::sgd_momentum_update;
use margrad::{Graph, Labels, SeededRng, Tensor, seeded_rng};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The feature width of the step.
const D: usize = 512;

/// Reads `len` little-endian f32 from `path`, after checking the file holds exactly that many.
fn read_f32(path: &Path, len: usize) -> Result<Vec<f32>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if bytes.len() != 4 * len {
        return Err(format!(
            "{}: {} bytes, expected {} ({len} f32)",
            path.display(),
            bytes.len(),
            4 * len
        ));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect())
}

/// Reads W.f32 (`[D, C]`, row-major) into the head's layout `[C, D]`, a few rows of the file
/// at a time (so that the file's bytes and the centres are never both held whole).
fn read_centres(path: &Path, classes: usize) -> Result<Tensor<f32>, String> {
    let fail = |e: std::io::Error| format!("{}: {e}", path.display());
    let mut file = std::fs::File::open(path).map_err(fail)?;
    let expected = 4 * D as u64 * classes as u64;
    let found = file.metadata().map_err(fail)?.len();
    if found != expected {
        return Err(format!(
            "{}: {found} bytes, expected {expected} (W [{D}, {classes}] f32)",
            path.display()
        ));
    }
    let mut centres = vec![0.0f32; classes * D];
    const ROWS: usize = 16;
    let mut bytes = vec![0u8; ROWS * classes * 4];
    for d0 in (0..D).step_by(ROWS) {
        let rows = ROWS.min(D - d0);
        let chunk = &mut bytes[..rows * classes * 4];
        file.read_exact(chunk).map_err(fail)?;
        for (i, row) in chunk.chunks_exact(classes * 4).enumerate() {
            for (c, v) in row.chunks_exact(4).enumerate() {
                centres[c * D + d0 + i] = f32::from_le_bytes(v.try_into().expect("4 bytes"));
            }
        }
    }
    Ok(Tensor::from_vec(centres, &[classes, D]).expect("C·D values"))
}

/// Refuses, before allocating, a head whose centres and momentum (`8·C·D` bytes) and block
/// buffers would not fit in the memory the system has available.
fn check_memory(classes: usize, block: usize, batch: usize) -> Result<(), String> {
    let needed =
        (2 * classes * D + 4 * block.min(classes) * D + batch * block + 4 * batch * D) as u64 * 4;
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let available = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024);
    match available {
        Some(available) if needed > available => Err(format!(
            "{classes} classes of {D} floats need {:.2} GB (centres, momentum, block buffers); \
             {:.2} GB are available",
            needed as f64 / 1e9,
            available as f64 / 1e9
        )),
        _ => Ok(()),
    }
}

struct Step {
    x: Tensor<f32>,
    labels: Labels,
    centres: Tensor<f32>,
    velocity: Vec<f32>,
    head: BlockedHead,
    sample_rate: f64,
    rng: SeededRng,
}

impl Step {
    fn load(dir: &Path, b: usize, c: usize, block: usize, rate: f64) -> Result<Step, String> {
        let x = Tensor::from_vec(read_f32(&dir.join("x.f32"), b * D)?, &[b, D])
            .map_err(|e| e.to_string())?;
        let path = dir.join("y.i32");
        let raw = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        if raw.len() != 4 * b {
            return Err(format!(
                "{}: {} bytes for {b} labels",
                path.display(),
                raw.len()
            ));
        }
        let y = raw
            .chunks_exact(4)
            .map(|v| {
                let label = i32::from_le_bytes(v.try_into().expect("4 bytes"));
                usize::try_from(label).map_err(|_| format!("{}: label {label}", path.display()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let labels = Labels::new(y, c).map_err(|e| format!("{}: {e}", path.display()))?;
        let loss = MarginLoss::am(64.0, 0.35).map_err(|e| e.to_string())?;
        let head = BlockedHead::new(loss, block).map_err(|e| e.to_string())?;
        check_memory(c, block, b)?;
        let centres = read_centres(&dir.join("W.f32"), c)?;
        Ok(Step {
            x,
            labels,
            centres,
            velocity: vec![0.0; c * D],
            head,
            sample_rate: rate,
            rng: seeded_rng(0),
        })
    }

    /// One training step; returns the loss before the update.
    fn run(&mut self) -> f32 {
        let sample = (self.sample_rate < 1.0).then(|| {
            let classes = self.centres.shape()[0];
            ClassSample::draw(&self.labels, classes, self.sample_rate, &mut self.rng)
                .expect("checked rate and labels")
        });
        let velocity = &mut self.velocity;
        let g = Graph::new();
        let x = g.leaf(self.x.clone());
        let update = |first: usize, rows: &mut [f32], grad: &[f32]| {
            let v = &mut velocity[first * D..first * D + rows.len()];
            // the step's SGD: lr 0.1, momentum 0.9 (a non-finite centre shows in the next loss)
            sgd_momentum_update(rows, v, grad, 0.1, 0.9);
        };
        let loss = self
            .head
            .step(x, &mut self.centres, &self.labels, sample.as_ref(), update)
            .unwrap_or_else(|e| {
                eprintln!("error: {e}");
                std::process::exit(1)
            });
        let value = loss.item();
        let dx = loss.backward();
        assert!(dx.wrt(x).is_some(), "the features' gradient is computed");
        value
    }
}

fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some((kb / 1024.0 * 10.0).round() / 10.0)
}

/// CPU time used by the process so far (all threads, user and system), in seconds: from
/// /proc/self/stat, in Linux's fixed USER_HZ of 100 ticks a second. Beside wall time, it shows
/// how much of the machine a run really had when others share it.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // the fields after the command name (which is in parentheses and may hold spaces)
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i)?.parse::<f64>().ok();
    Some((ticks(11)? + ticks(12)?) / 100.0)
}

/// A rate as the protocol prints it: 3 decimals, or 4 significant digits under 1 step/s.
fn rounded(rate: f64) -> f64 {
    if rate >= 1.0 {
        (rate * 1000.0).round() / 1000.0
    } else {
        format!("{rate:.3e}").parse().expect("a number")
    }
}

/// The reference large-class head step on the blocked head, timed by the shared protocol;
/// prints one RESULT line.
#[derive(clap::Parser, Debug)]
#[command(name = "reference_head_step")]
struct Cli {
    /// Folder of this shape's data files (the bench's make_data.py writes one per shape, named
    /// head_B{B}_C{C})
    data_dir: PathBuf,
    /// Batch size B
    b: usize,
    /// Number of classes C
    c: usize,
    /// Worker threads
    #[arg(value_parser = clap::value_parser!(u16).range(1..=1024))]
    threads: u16,
    /// Classes per block of the head
    #[arg(long, value_name = "N", default_value_t = 1024,
          value_parser = clap::value_parser!(u64).range(1..))]
    block: u64,
    /// Partial FC: the share of classes sampled each step, in (0, 1]
    #[arg(long, value_name = "R", default_value_t = 1.0, value_parser = sample_rate)]
    sample_rate: f64,
}

fn sample_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r > 0.0 && r <= 1.0 => Ok(r),
        Ok(r) => Err(format!("must be in (0, 1], found {r}")),
        Err(e) => Err(e.to_string()),
    }
}

fn main() {
    let cli = <Cli as clap::Parser>::parse();
    let (dir, b, c, threads) = (cli.data_dir, cli.b, cli.c, usize::from(cli.threads));
    let (block, rate) = (cli.block as usize, cli.sample_rate);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .build()
        .expect("a thread pool");
    pool.install(|| run(&dir, b, c, threads, block, rate));
}

fn run(dir: &Path, b: usize, c: usize, threads: usize, block: usize, rate: f64) {
    let mut step = Step::load(dir, b, c, block, rate).unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(1)
    });
    let load_peak = peak_rss_mb();
    let first: Vec<f32> = (0..3).map(|_| step.run()).collect();

    // the shared protocol: warm-up ≥ 1 s and ≥ 5 steps, then 5 timed runs of ~1 s; a step
    // over a second long: the warm-up is that one step and each run a single step
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed().as_secs_f64() < 1.0 || n < 5 {
        step.run();
        n += 1;
        if n == 1 && start.elapsed().as_secs_f64() > 1.0 {
            break;
        }
    }
    let per = start.elapsed().as_secs_f64() / n as f64;
    let iters = if per > 1.0 {
        1
    } else {
        ((1.0 / per).ceil() as usize).max(5)
    };
    let (cpu_start, wall_start) = (cpu_seconds(), Instant::now());
    let runs: Vec<f64> = (0..5)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..iters {
                step.run();
            }
            iters as f64 / t.elapsed().as_secs_f64()
        })
        .collect();
    let wall = wall_start.elapsed().as_secs_f64();
    let cpu = cpu_seconds().zip(cpu_start).map(|(end, start)| end - start);
    let mut sorted = runs.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[2];
    // 6·B·D·C: the three products of the step as the benchmark counts them (the blocked head
    // computes the cosines twice, 8·B·D·C in all); with a sample, C is the sample's size
    let classes = (rate * c as f64).floor().max(1.0);
    let gflop = 6.0 * b as f64 * D as f64 * classes / 1e9;

    let result = serde_json::json!({
        "framework": format!("margrad-{}-blocked", env!("CARGO_PKG_VERSION")),
        "threads": threads, "B": b, "C": c, "D": D,
        "median": rounded(median),
        "min": rounded(sorted[0]),
        "max": rounded(sorted[4]),
        "runs": runs.iter().map(|&r| rounded(r)).collect::<Vec<_>>(),
        "steps_per_run": iters,
        "loss0": first[0], "loss1": first[1], "loss2": first[2],
        "block": block,
        "sample_rate": rate,
        "gflops": (gflop * median * 10.0).round() / 10.0,
        "cpu_s_per_step": cpu.map(|s| (s / (5 * iters) as f64 * 1000.0).round() / 1000.0),
        "cpu_share": cpu.map(|s| (s / wall / threads as f64 * 100.0).round() / 100.0),
        "load_peak_rss_mb": load_peak,
        "peak_rss_mb": peak_rss_mb(),
    });
    println!("RESULT {result}");
}
