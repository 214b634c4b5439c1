//! What the reference training steps share: their data files, the shared timing protocol,
//! allocation counting, peak resident memory, and the `--profile` table of where a step's time
//! goes.

#![allow(dead_code)] // each example uses its own subset

use margrad::Tensor;
use margrad::profile::{self, Phase};
use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Counts allocations, to report how many a steady-state step makes.
pub struct Counting;
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

/// Reads `dir/NAME.f32`, raw little-endian f32 in C order, as a tensor of `shape`; the file's
/// size is checked against the shape before anything is read.
pub fn read_f32(dir: &Path, name: &str, shape: &[usize]) -> Result<Tensor<f32>, String> {
    let path = dir.join(format!("{name}.f32"));
    let bytes = read_exact_size(&path, shape.iter().product::<usize>() * 4)?;
    let data = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect();
    Tensor::from_vec(data, shape).map_err(|e| format!("{}: {e}", path.display()))
}

/// Reads `dir/y.i32`, `b` raw little-endian i32 labels, refusing one outside `[0, c)`.
pub fn read_labels(dir: &Path, b: usize, c: usize) -> Result<margrad::Labels, String> {
    let path = dir.join("y.i32");
    let raw = read_exact_size(&path, b * 4)?;
    let y = raw
        .chunks_exact(4)
        .map(|c| {
            let v = i32::from_le_bytes(c.try_into().expect("4 bytes"));
            usize::try_from(v).map_err(|_| format!("{}: a negative label {v}", path.display()))
        })
        .collect::<Result<Vec<usize>, String>>()?;
    margrad::Labels::new(y, c).map_err(|e| format!("{}: {e}", path.display()))
}

/// The bytes of `path`, refused unless it holds exactly `size` of them (checked before
/// reading, so a wrong file never allocates more than its shape calls for).
fn read_exact_size(path: &Path, size: usize) -> Result<Vec<u8>, String> {
    let found = std::fs::metadata(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .len();
    if found != size as u64 {
        return Err(format!(
            "{}: {found} bytes, expected {size} for this shape",
            path.display()
        ));
    }
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// The process's resident-memory high-water mark (VmHWM), in MB.
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Steps per second under the shared protocol, and what one steady-state step allocates.
pub struct Timing {
    /// Steps/s of each of the 5 timed runs, in order.
    pub runs: Vec<f64>,
    /// Steps in each timed run.
    pub steps_per_run: usize,
    /// Allocations made by one step after the timed runs.
    pub allocations_per_step: u64,
    /// Bytes those allocations asked for, in MB.
    pub allocated_mb_per_step: f64,
}

impl Timing {
    /// The runs' median, min and max steps/s.
    pub fn median_min_max(&self) -> (f64, f64, f64) {
        let mut sorted = self.runs.clone();
        sorted.sort_by(f64::total_cmp);
        (
            sorted[sorted.len() / 2],
            sorted[0],
            sorted[sorted.len() - 1],
        )
    }
}

/// Times `step` by the shared protocol: a warm-up of at least 1 s and 5 steps, then 5 timed
/// runs of `max(5, ⌈1 s / step time⌉)` steps each; then counts one more step's allocations.
/// When the first warm-up step alone takes over a second, the warm-up is that step and each
/// run a single step.
pub fn time_steps(mut step: impl FnMut()) -> Timing {
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed().as_secs_f64() < 1.0 || n < 5 {
        step();
        n += 1;
        if n == 1 && start.elapsed().as_secs_f64() > 1.0 {
            break;
        }
    }
    let per = start.elapsed().as_secs_f64() / n as f64;
    let steps_per_run = if n == 1 {
        1
    } else {
        ((1.0 / per).ceil() as usize).max(5)
    };
    let runs = (0..5)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..steps_per_run {
                step();
            }
            steps_per_run as f64 / t.elapsed().as_secs_f64()
        })
        .collect();
    let (a0, b0) = (
        ALLOCATIONS.load(Ordering::Relaxed),
        ALLOCATED_BYTES.load(Ordering::Relaxed),
    );
    step();
    Timing {
        runs,
        steps_per_run,
        allocations_per_step: ALLOCATIONS.load(Ordering::Relaxed) - a0,
        allocated_mb_per_step: (ALLOCATED_BYTES.load(Ordering::Relaxed) - b0) as f64 / 1e6,
    }
}

/// Rounds `x` to `places` decimals, for the RESULT line.
pub fn round(x: f64, places: i32) -> f64 {
    let scale = 10f64.powi(places);
    (x * scale).round() / scale
}

/// Runs `step` `steps` times with the library's profiler on and prints, per op category, the
/// forward and backward time of one step and its share, then the update phases, the time no
/// op accounts for, and the whole step.
pub fn print_profile(title: &str, steps: usize, mut step: impl FnMut()) {
    profile::enable(true);
    let _ = profile::take();
    let t = Instant::now();
    for _ in 0..steps {
        step();
    }
    let total_ms = t.elapsed().as_secs_f64() * 1e3 / steps as f64;
    let entries = profile::take();
    profile::enable(false);
    println!("\nwhere one step's time goes ({title}, profiled):");
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
