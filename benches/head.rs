//! The blocked large-class head against the dense one, one training step of the centres each:
//! AM-Softmax (s = 64, m = 0.35) over features `[256, 512]` and C = 10,000 to 100,000 centres,
//! the features' gradient computed, SGD with momentum 0.9 and lr 0.1 on the centres.
//!
//! - dense: `margin_cross_entropy(x̂ · Ŵᵀ)` on the tape, backward (the `B×C` cosines and their
//!   gradient, a `C×D` gradient of the centres), then the momentum update over that gradient;
//! - blocked: [`BlockedHead::step`] with the update applied block by block.
//!
//! Both sides compute the same step (the tests hold them to 1e-6). GFLOP/s counts the three
//! products, `6·B·D·C`, though the blocked head computes the cosines twice.
//!
//! `cargo bench --bench head`

#[path = "harness.rs"]
mod harness;

use margrad::loss::{BlockedHead, HEAD_NORM_EPS, MarginLoss, margin_cross_entropy};
use margrad::{Graph, Labels, Tensor};
use rand::SeedableRng;

const B: usize = 256;
const D: usize = 512;

/// `v ← 0.9 v + g`, `w ← w − 0.1 v`.
fn momentum_step(w: &mut [f32], v: &mut [f32], g: &[f32]) {
    for ((w, v), &g) in w.iter_mut().zip(v.iter_mut()).zip(g) {
        *v = 0.9 * *v + g;
        *w -= 0.1 * *v;
    }
}

struct Centres {
    w: Tensor<f32>,
    velocity: Vec<f32>,
}

fn dense_step(x: &Tensor<f32>, c: &mut Centres, labels: &Labels, loss: &MarginLoss) {
    let grad = {
        let g = Graph::new();
        let (xv, wv) = (g.leaf(x.clone()), g.leaf(c.w.clone()));
        let eps = HEAD_NORM_EPS as f32;
        let cos = xv.normalize_rows(eps).matmul_nt(wv.normalize_rows(eps));
        let l = margin_cross_entropy(cos, labels, loss).expect("valid batch");
        let grads = l.backward();
        std::hint::black_box(grads.wrt(xv).expect("∂x"));
        grads.wrt(wv).expect("∂W").clone()
    };
    momentum_step(c.w.data_mut(), &mut c.velocity, grad.data());
}

fn blocked_step(x: &Tensor<f32>, c: &mut Centres, labels: &Labels, head: &BlockedHead) {
    let g = Graph::new();
    let xv = g.leaf(x.clone());
    let velocity = &mut c.velocity;
    let l = head
        .step(xv, &mut c.w, labels, None, |first, rows, grad| {
            momentum_step(rows, &mut velocity[first * D..first * D + rows.len()], grad)
        })
        .expect("valid batch");
    std::hint::black_box(l.backward().wrt(xv).expect("∂x"));
}

fn main() {
    let mut rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(0);
    let loss = MarginLoss::am(64.0, 0.35).expect("valid");
    let head = BlockedHead::new(loss.clone(), 1024).expect("valid");
    println!("one step of the centres, B = {B}, D = {D}: median ms of 3 interleaved rounds");
    println!(
        "{:>7} {:>3} {:>10} {:>10} {:>7} {:>9} {:>9} {:>11} {:>11}",
        "C", "thr", "dense", "blocked", "speedup", "GF/s dns", "GF/s blk", "dense MB", "blocked MB"
    );
    for classes in [10_000, 30_000, 100_000] {
        let x = Tensor::<f32>::randn(&[B, D], 0.0, 1.0, &mut rng);
        let w = Tensor::<f32>::randn(&[classes, D], 0.0, (1.0 / D as f64).sqrt(), &mut rng);
        let labels =
            Labels::new((0..B).map(|i| (i * 7919) % classes).collect(), classes).expect("fits");
        let fresh = || Centres {
            w: w.clone(),
            velocity: vec![0.0; classes * D],
        };
        let (mut dense, mut blocked) = (fresh(), fresh());
        // memory beyond the centres and their momentum: dense holds the cosines, their
        // gradient and the centres' gradient (with their normalised copy); blocked, per block
        // of 1,024 classes, the cosines, the normalised centres and two gradients of them
        let dense_mb = (2 * B * classes + 2 * classes * D) as f64 * 4.0 / 1e6;
        let blocked_mb = (B * 1024 + 3 * 1024 * D + 2 * B * D) as f64 * 4.0 / 1e6;
        let gflop = 6.0 * (B * D * classes) as f64 / 1e9;
        for threads in [1, 2] {
            let mut run_dense = || dense_step(&x, &mut dense, &labels, &loss);
            let mut run_blocked = || blocked_step(&x, &mut blocked, &labels, &head);
            let t = harness::with_threads(threads, || {
                harness::interleaved(3, 0.5, &mut [&mut run_dense, &mut run_blocked])
            });
            println!(
                "{classes:>7} {threads:>3} {:>10.1} {:>10.1} {:>6.2}x {:>9.1} {:>9.1} {dense_mb:>11.1} {blocked_mb:>11.1}",
                t[0] * 1e3,
                t[1] * 1e3,
                t[0] / t[1],
                gflop / t[0],
                gflop / t[1],
            );
        }
    }
}
