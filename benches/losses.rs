//! The fused margin loss against the same loss composed from primitives: forward + backward
//! from a `[B, C]` cosine matrix, B = 256, C = 10, 1,000 and 100,000 (AM-Softmax, s = 30,
//! m = 0.35), with the number of `B×C` tensors each version materialises.
//!
//! `cargo bench --bench losses`

#[path = "harness.rs"]
mod harness;

use margrad::loss::composed::margin_cross_entropy_composed;
use margrad::loss::{MarginLoss, Reduction, margin_cross_entropy_with};
use margrad::{Error, Graph, Labels, Tensor, Var};
use rand::SeedableRng;

type LossFn = for<'g> fn(
    Var<'g, f32>,
    &Labels,
    &MarginLoss,
    Reduction,
    Option<&[f64]>,
) -> Result<Var<'g, f32>, Error>;

/// Runs forward + backward; returns how many `B×C` tensors the graph held.
fn step(which: LossFn, cos: &Tensor<f32>, labels: &Labels, loss: &MarginLoss) -> usize {
    let g = Graph::new();
    let x = g.leaf(cos.clone());
    let out = which(x, labels, loss, Reduction::Mean, None).expect("valid batch");
    std::hint::black_box(out.backward());
    let size = cos.numel();
    g.node_sizes().iter().filter(|&&n| n == size).count()
}

fn main() {
    let mut rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(0);
    let loss = MarginLoss::am(30.0, 0.35).expect("valid");
    let fused: LossFn = margin_cross_entropy_with;
    let composed: LossFn = margin_cross_entropy_composed;
    println!(
        "AM-Softmax forward+backward from [256, C] cosines: median ms of 7 interleaved rounds"
    );
    println!(
        "{:>7} {:>3} {:>10} {:>10} {:>7} {:>14} {:>14}",
        "C", "thr", "fused", "composed", "speedup", "BxC fused", "BxC composed"
    );
    for classes in [10, 1000, 100_000] {
        let b = 256;
        let cos = Tensor::<f32>::rand_uniform(&[b, classes], -1.0, 1.0, &mut rng);
        let labels =
            Labels::new((0..b).map(|i| (i * 7919) % classes).collect(), classes).expect("in range");
        let n_fused = step(fused, &cos, &labels, &loss);
        let n_composed = step(composed, &cos, &labels, &loss);
        for threads in [1, 2] {
            let mut run_fused = || {
                step(fused, &cos, &labels, &loss);
            };
            let mut run_composed = || {
                step(composed, &cos, &labels, &loss);
            };
            let t = harness::with_threads(threads, || {
                harness::interleaved(7, 0.2, &mut [&mut run_fused, &mut run_composed])
            });
            println!(
                "{classes:>7} {threads:>3} {:>10.3} {:>10.3} {:>6.1}x {n_fused:>14} {n_composed:>14}",
                t[0] * 1e3,
                t[1] * 1e3,
                t[1] / t[0]
            );
        }
    }
}
