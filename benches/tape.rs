//! What the tape costs beside the arithmetic:
//! 1. per-op overhead: a chain of 10,000 small ops, forward and backward, in ns per op;
//! 2. an MLP step (784-512-128, AM-style cosine head, B = 256): the share of its
//!    forward+backward time spent inside matrix products (the same products timed alone).
//!
//! `cargo bench --bench tape`

#[path = "harness.rs"]
mod harness;

use margrad::{Graph, Labels, Params, Tensor};
use rand::SeedableRng;

fn chain(len: usize, side: usize) {
    let g = Graph::<f32>::new();
    let x = g.leaf(Tensor::full(&[side, side], 0.5));
    let mut y = x;
    for i in 0..len / 2 {
        y = if i % 2 == 0 { y * x } else { y + x };
        y = y.tanh();
    }
    let grads = y.sum().backward();
    std::hint::black_box(grads.wrt(x));
}

fn main() {
    println!("tape overhead: chain of 10,000 ops (alternating mul/add with tanh) + backward");
    for side in [1, 8] {
        let t = harness::median_secs(7, 0.2, || chain(10_000, side));
        println!(
            "  {side}x{side} tensors: {:.2} ms per chain, {:.0} ns per op (forward + backward)",
            t * 1e3,
            t * 1e9 / 10_000.0
        );
    }

    let mut rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(0);
    let (b, d_in, d_h, d_e, classes) = (256, 784, 512, 128, 10);
    let mut params = Params::<f32>::new();
    let w1 = params.add("w1", Tensor::randn(&[d_in, d_h], 0.0, 0.05, &mut rng));
    let b1 = params.add("b1", Tensor::zeros(&[d_h]));
    let w2 = params.add("w2", Tensor::randn(&[d_h, d_e], 0.0, 0.05, &mut rng));
    let b2 = params.add("b2", Tensor::zeros(&[d_e]));
    let w = params.add("w", Tensor::randn(&[d_e, classes], 0.0, 0.05, &mut rng));
    let x = Tensor::<f32>::rand_uniform(&[b, d_in], 0.0, 1.0, &mut rng);
    let labels = Labels::new((0..b).map(|i| i % classes).collect(), classes).unwrap();

    let mut step = || {
        let g = Graph::new();
        let p = |id| g.param(&params, id);
        let h = (g.constant(x.clone()).matmul(p(w1)) + p(b1)).relu();
        let e = (h.matmul(p(w2)) + p(b2)).normalize_rows(1e-12);
        let cos = e.matmul(p(w).normalize_cols(1e-12));
        let loss = -(cos * 30.0).log_softmax().pick(&labels).mean();
        std::hint::black_box(loss.backward());
    };
    // the step's eight products, alone (3 forward, 5 backward; x needs no gradient), run by
    // the same kernels on an inference graph, which records nothing; operands enter shared,
    // as parameters do, so nothing is copied
    let mut operands = Params::<f32>::new();
    let mut operand = |name: &str, value| operands.add_buffer(name, value);
    let x = operand("x", x.clone());
    let [h, e, g1, g2, gc] = [
        ("h", d_h),
        ("e", d_e),
        ("g1", d_h),
        ("g2", d_e),
        ("gc", classes),
    ]
    .map(|(name, width)| operand(name, Tensor::zeros(&[b, width])));
    let mut products = || {
        let g = Graph::inference();
        let p = |id| g.param(&params, id);
        let o = |id| g.param(&operands, id);
        let forward = [o(x).matmul(p(w1)), o(h).matmul(p(w2)), o(e).matmul(p(w))];
        let backward = [
            o(e).matmul_tn(o(gc)),  // ∂W
            o(gc).matmul_nt(p(w)),  // ∂e
            o(h).matmul_tn(o(g2)),  // ∂W2
            o(g2).matmul_nt(p(w2)), // ∂h
            o(x).matmul_tn(o(g1)),  // ∂W1
        ];
        std::hint::black_box((forward, backward));
    };
    println!("MLP step 784-512-128 + cosine head (10 classes), B = 256, forward + backward:");
    for threads in [1, 2] {
        let t = harness::with_threads(threads, || {
            harness::interleaved(7, 0.3, &mut [&mut step, &mut products])
        });
        println!(
            "  {threads} thread(s): step {:.2} ms, its 8 matrix products alone {:.2} ms: {:.0}% of \
             the step in matmul",
            t[0] * 1e3,
            t[1] * 1e3,
            100.0 * t[1] / t[0]
        );
    }
}
