//! What the tape costs beside the arithmetic:
//! 1. per-op overhead: a chain of 10,000 small ops, forward and backward, in ns per op;
//! 2. an MLP step (784-512-128, AM-style cosine head, B = 256): the share of its
//!    forward+backward time spent inside matrix products (the same products timed alone).
//!
//! `cargo bench --bench tape`

#[path = "harness.rs"]
mod harness;

use margrad::kernels::{MatRef, gemm};
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
    // the step's eight products, alone: 3 forward, 5 backward (x needs no gradient)
    let buf = |r, c| vec![0f32; r * c];
    let (xa, h, e, w1v, w2v, wv) = (
        x.data().to_vec(),
        buf(b, d_h),
        buf(b, d_e),
        params.get(w1).data().to_vec(),
        params.get(w2).data().to_vec(),
        params.get(w).data().to_vec(),
    );
    let (g1, g2, gc) = (buf(b, d_h), buf(b, d_e), buf(b, classes));
    let mut products = || {
        let mm = |a: MatRef<f32>, bm: MatRef<f32>, out: &mut Vec<f32>| {
            gemm(1.0, a, bm, 0.0, out);
        };
        let (mut o1, mut o2, mut o3) = (buf(b, d_h), buf(b, d_e), buf(b, classes));
        mm(
            MatRef::new(&xa, b, d_in, false),
            MatRef::new(&w1v, d_in, d_h, false),
            &mut o1,
        );
        mm(
            MatRef::new(&h, b, d_h, false),
            MatRef::new(&w2v, d_h, d_e, false),
            &mut o2,
        );
        mm(
            MatRef::new(&e, b, d_e, false),
            MatRef::new(&wv, d_e, classes, false),
            &mut o3,
        );
        let (mut dw, mut de, mut dw2, mut dh, mut dw1) = (
            buf(d_e, classes),
            buf(b, d_e),
            buf(d_h, d_e),
            buf(b, d_h),
            buf(d_in, d_h),
        );
        mm(
            MatRef::new(&e, b, d_e, true),
            MatRef::new(&gc, b, classes, false),
            &mut dw,
        );
        mm(
            MatRef::new(&gc, b, classes, false),
            MatRef::new(&wv, d_e, classes, true),
            &mut de,
        );
        mm(
            MatRef::new(&h, b, d_h, true),
            MatRef::new(&g2, b, d_e, false),
            &mut dw2,
        );
        mm(
            MatRef::new(&g2, b, d_e, false),
            MatRef::new(&w2v, d_h, d_e, true),
            &mut dh,
        );
        mm(
            MatRef::new(&xa, b, d_in, true),
            MatRef::new(&g1, b, d_h, false),
            &mut dw1,
        );
        std::hint::black_box((o1, o2, o3, dw, de, dw2, dh, dw1));
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
