//! A small timing harness shared by the benchmarks: interleaved runs, medians, thread pools.
#![allow(dead_code)]

use std::time::Instant;

/// Seconds per call of `f`: the median over `runs` timed batches, each batch long enough
/// (about `batch_secs`) to dwarf the clock; a warm-up batch first.
pub fn median_secs(runs: usize, batch_secs: f64, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    f();
    let once = start.elapsed().as_secs_f64().max(1e-7);
    let reps = ((batch_secs / once) as usize).clamp(1, 1_000_000);
    for _ in 0..reps.min(3) {
        f();
    }
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..reps {
                f();
            }
            t.elapsed().as_secs_f64() / reps as f64
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[runs / 2]
}

/// Medians of several contenders timed in alternation (A B C A B C ...), so that a noisy
/// neighbour on a shared machine hits them all alike.
pub fn interleaved(rounds: usize, batch_secs: f64, fs: &mut [&mut dyn FnMut()]) -> Vec<f64> {
    let mut samples = vec![Vec::new(); fs.len()];
    for _ in 0..rounds {
        for (i, f) in fs.iter_mut().enumerate() {
            samples[i].push(median_secs(1, batch_secs, &mut **f));
        }
    }
    samples
        .into_iter()
        .map(|mut s| {
            s.sort_by(f64::total_cmp);
            s[s.len() / 2]
        })
        .collect()
}

/// Runs `f` inside a rayon pool of `threads` threads.
pub fn with_threads<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool")
        .install(f)
}
