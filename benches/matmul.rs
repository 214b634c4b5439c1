//! Matmul GFLOP/s through the engine (a graph op: output allocation, tape record, rayon split;
//! our AVX-512 kernel where the CPU has it) against matrixmultiply's sgemm called directly, on
//! the products of a training step; and, as the yardstick, this core's f32 FMA peak.
//!
//! `cargo bench --bench matmul` (rayon row/column blocks), and
//! `cargo bench --bench matmul --features matmul-threading` (matrixmultiply's own threads).

#[path = "harness.rs"]
mod harness;

use margrad::{Graph, Tensor};
use rand::SeedableRng;

/// (name, m, k, n, transpose a, transpose b): the forward products of the MLP 784-512-128 and
/// a 10,000-class head at batch 256, and the transposed products of their backward.
const PRODUCTS: [(&str, usize, usize, usize, bool, bool); 8] = [
    ("x·W1        256x784·784x512", 256, 784, 512, false, false),
    ("h·W2        256x512·512x128", 256, 512, 128, false, false),
    (
        "e·W         256x128·128x10000",
        256,
        128,
        10000,
        false,
        false,
    ),
    (
        "G·Wᵀ (nt)   256x10000·(128x10000)ᵀ",
        256,
        10000,
        128,
        false,
        true,
    ),
    (
        "eᵀ·G (tn)   (256x128)ᵀ·256x10000",
        128,
        256,
        10000,
        true,
        false,
    ),
    ("G2·W2ᵀ (nt) 256x128·(512x128)ᵀ", 256, 128, 512, false, true),
    ("hᵀ·G2 (tn)  (256x512)ᵀ·256x128", 512, 256, 128, true, false),
    ("xᵀ·G1 (tn)  (256x784)ᵀ·256x512", 784, 256, 512, true, false),
];

/// GFLOP/s of one core issuing nothing but independent 16-wide (AVX-512) or 8-wide (AVX2)
/// f32 fused multiply-adds: twelve chains, enough to hide the FMA latency.
#[cfg(target_arch = "x86_64")]
fn fma_peak_gflops() -> Option<f64> {
    use std::arch::x86_64::*;
    const CHAINS: usize = 12;
    const ITERS: usize = 20_000_000;
    #[target_feature(enable = "avx512f")]
    fn chains_512() -> f32 {
        let (a, b) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
        let mut acc = [_mm512_set1_ps(1.0); CHAINS];
        for _ in 0..ITERS {
            for x in acc.iter_mut() {
                *x = _mm512_fmadd_ps(a, *x, b);
            }
        }
        acc.iter().map(|&x| _mm512_reduce_add_ps(x)).sum()
    }
    #[target_feature(enable = "avx2,fma")]
    fn chains_256() -> f32 {
        let (a, b) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
        let mut acc = [_mm256_set1_ps(1.0); CHAINS];
        for _ in 0..ITERS {
            for x in acc.iter_mut() {
                *x = _mm256_fmadd_ps(a, *x, b);
            }
        }
        let mut lanes = [0f32; 8];
        acc.iter()
            .map(|&x| {
                // SAFETY: `lanes` holds eight floats
                unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), x) };
                lanes.iter().sum::<f32>()
            })
            .sum()
    }
    let (width, run): (usize, fn() -> f32) = if is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has the feature
        (16, || unsafe { chains_512() })
    } else if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY: as above
        (8, || unsafe { chains_256() })
    } else {
        return None;
    };
    let best = (0..3)
        .map(|_| {
            let start = std::time::Instant::now();
            std::hint::black_box(run());
            start.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min);
    Some((2 * width * CHAINS * ITERS) as f64 / best / 1e9)
}

#[cfg(not(target_arch = "x86_64"))]
fn fma_peak_gflops() -> Option<f64> {
    None
}

fn main() {
    if let Some(peak) = fma_peak_gflops() {
        println!(
            "this core's f32 FMA peak: {peak:.1} GFLOP/s (independent FMA chains, one thread)"
        );
    }
    let mut rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(0);
    let mode = if cfg!(feature = "matmul-threading") {
        "matrixmultiply threading"
    } else {
        "rayon blocks"
    };
    println!("matmul GFLOP/s, median of 7 interleaved rounds; engine threading: {mode}");
    println!(
        "{:<38} {:>3} {:>9} {:>9} {:>7}",
        "product", "thr", "direct", "engine", "ratio"
    );
    for threads in [1, 2] {
        for &(name, m, k, n, ta, tb) in &PRODUCTS {
            let a_shape = if ta { [k, m] } else { [m, k] };
            let b_shape = if tb { [n, k] } else { [k, n] };
            let a = Tensor::<f32>::randn(&a_shape, 0.0, 1.0, &mut rng);
            let b = Tensor::<f32>::randn(&b_shape, 0.0, 1.0, &mut rng);
            let mut c = vec![0f32; m * n];
            let (rsa, csa) = if ta { (1, m as isize) } else { (k as isize, 1) };
            let (rsb, csb) = if tb { (1, k as isize) } else { (n as isize, 1) };
            let mut direct = || unsafe {
                matrixmultiply::sgemm(
                    m,
                    k,
                    n,
                    1.0,
                    a.data().as_ptr(),
                    rsa,
                    csa,
                    b.data().as_ptr(),
                    rsb,
                    csb,
                    0.0,
                    c.as_mut_ptr(),
                    n as isize,
                    1,
                );
            };
            let mut engine = || {
                let g = Graph::new();
                let (va, vb) = (g.constant(a.clone()), g.constant(b.clone()));
                std::hint::black_box(match (ta, tb) {
                    (false, false) => va.matmul(vb),
                    (false, true) => va.matmul_nt(vb),
                    _ => va.matmul_tn(vb),
                });
            };
            // the engine's timing includes cloning its inputs into the graph: subtract it
            let mut copies = || {
                std::hint::black_box((a.clone(), b.clone()));
            };
            let t = harness::with_threads(threads, || {
                harness::interleaved(7, 0.15, &mut [&mut direct, &mut engine, &mut copies])
            });
            let flops = 2.0 * (m * k * n) as f64;
            let (gd, ge) = (flops / t[0] / 1e9, flops / (t[1] - t[2]) / 1e9);
            println!(
                "{name:<38} {threads:>3} {gd:>9.1} {ge:>9.1} {:>7.2}",
                ge / gd
            );
        }
    }
}
