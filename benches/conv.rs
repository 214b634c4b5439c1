//! conv2d forward and forward+backward time and GFLOP/s through the engine, at the
//! convolutions of the reference CNN step (batch 64, 3×3 kernels, padding 1), on 1 and 2
//! threads. A forward costs `2·N·O·OH·OW·C·kh·kw` flops; backward twice that (the input's
//! and the weight's gradients), so forward+backward counts three forwards.
//!
//! `cargo bench --bench conv`

#[path = "harness.rs"]
mod harness;

use margrad::{Conv2dOptions, Graph, Params, Tensor};
use rand::SeedableRng;

/// (name, input channels, output channels, side): the four convolutions of the step.
const LAYERS: [(&str, usize, usize, usize); 4] = [
    ("1→32   28×28", 1, 32, 28),
    ("32→32  28×28", 32, 32, 28),
    ("32→64  14×14", 32, 64, 14),
    ("64→64  14×14", 64, 64, 14),
];
const BATCH: usize = 64;

/// This process's CPU time so far (user + system), in seconds, where Linux's `/proc` says it.
fn cpu_secs() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // the fields after the command name, which is in parentheses and may hold spaces
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i)?.parse::<f64>().ok();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name; 100 Hz
    Some((ticks(11)? + ticks(12)?) / 100.0)
}

fn main() {
    let mut rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(0);
    println!("conv2d at batch {BATCH}, 3×3, padding 1; median of 5 interleaved rounds");
    println!("(cores busy: CPU time over wall time while measuring; on a shared machine it shows");
    println!(" how much of the cores the run actually had)");
    println!(
        "{:<14} {:>3} {:>11} {:>9} {:>15} {:>9} {:>11}",
        "layer", "thr", "forward ms", "GFLOP/s", "fwd+bwd ms", "GFLOP/s", "cores busy"
    );
    for threads in [1, 2] {
        for &(name, c, o, side) in &LAYERS {
            let x = Tensor::<f32>::randn(&[BATCH, c, side, side], 0.0, 1.0, &mut rng);
            let mut params = Params::<f32>::new();
            let w = params.add("weight", Tensor::randn(&[o, c, 3, 3], 0.0, 0.1, &mut rng));
            let b = params.add("bias", Tensor::zeros(&[o]));
            let seed = Tensor::<f32>::randn(&[BATCH, o, side, side], 0.0, 1.0, &mut rng);
            let options = Conv2dOptions::new().padding(1);
            // the input is a leaf, so that its gradient is computed, as for any layer but the first
            let mut forward = || {
                let g = Graph::inference();
                let y = g.constant(x.clone()).conv2d(
                    g.param(&params, w),
                    Some(g.param(&params, b)),
                    options,
                );
                std::hint::black_box(y.value().data()[0]);
            };
            let mut step = || {
                let g = Graph::new();
                let y = g.leaf(x.clone()).conv2d(
                    g.param(&params, w),
                    Some(g.param(&params, b)),
                    options,
                );
                std::hint::black_box(y.backward_with(seed.clone()));
            };
            // both include copying the input (and the seed) into the graph: subtract it
            let mut copy_input = || {
                std::hint::black_box(x.clone());
            };
            let mut copy_both = || {
                std::hint::black_box((x.clone(), seed.clone()));
            };
            let (cpu_start, wall_start) = (cpu_secs(), std::time::Instant::now());
            let t = harness::with_threads(threads, || {
                let mut all: [&mut dyn FnMut(); 4] =
                    [&mut forward, &mut step, &mut copy_input, &mut copy_both];
                harness::interleaved(5, 0.3, &mut all)
            });
            let busy = cpu_secs()
                .zip(cpu_start)
                .map(|(end, start)| (end - start) / wall_start.elapsed().as_secs_f64());
            let busy = busy.map_or("n/a".to_string(), |b| format!("{b:.2}"));
            let flops = 2.0 * (BATCH * o * side * side * c * 9) as f64;
            let (tf, ts) = (t[0] - t[2], t[1] - t[3]);
            println!(
                "{name:<14} {threads:>3} {:>11.2} {:>9.1} {:>15.2} {:>9.1} {busy:>11}",
                tf * 1e3,
                flops / tf / 1e9,
                ts * 1e3,
                3.0 * flops / ts / 1e9
            );
        }
    }
}
