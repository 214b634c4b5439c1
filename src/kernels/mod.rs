//! Plain functions over slices: the arithmetic every op runs, with or without a tape.
//!
//! Work is spread over rayon's pool above a size threshold, always in fixed-size chunks whose
//! results are combined in a fixed order, so results are bitwise identical whatever the number
//! of threads. A backward kernel either writes a fresh gradient buffer or adds into one that
//! already holds another path's gradient; each says which.

mod bf16;
mod channels;
mod conv;
mod elementwise;
mod matmul;
mod pool;
mod reduce;
mod rowwise;
#[cfg(target_arch = "x86_64")]
mod sgemm;

pub(crate) use bf16::{has_avx512_bf16, narrow_bf16, widen_bf16};
pub use channels::{
    channel_affine, channel_affine_grad, channel_grad_sums, channel_mean_var, prelu,
    prelu_grad_input, prelu_grad_slope,
};
pub use conv::{
    ConvShape, Window, conv2d, conv2d_grad_bias, conv2d_grad_input, conv2d_grad_weight,
};
pub use elementwise::{
    Broadcast, add_broadcast_acc, add_relu_grad, binary, binary_grad, map, map_grad,
};
pub(crate) use matmul::GemmFn;
pub use matmul::{MatRef, gemm, gemm_serial};
pub use pool::{
    avg_pool2d, avg_pool2d_grad, max_pool2d, max_pool2d_grad, plane_means, plane_means_grad,
};
pub(crate) use reduce::{all_finite, first_non_finite};
pub use reduce::{sum_all, sum_cols_acc, sum_rows_acc};
pub use rowwise::{
    log_softmax_rows, log_softmax_rows_grad, normalize_cols, normalize_cols_grad, normalize_rows,
    normalize_rows_grad,
};

use rayon::prelude::*;

/// The f32 GEMM for an `m×k · k×n` product: our AVX-512 kernel where this CPU has it and it is
/// faster (see `sgemm.rs`), matrixmultiply's otherwise (and always with the `matmul-threading`
/// feature, whose threads are matrixmultiply's).
fn choose_sgemm(m: usize, k: usize, n: usize) -> GemmFn<f32> {
    #[cfg(all(target_arch = "x86_64", not(feature = "matmul-threading")))]
    {
        sgemm::choose(m, k, n)
    }
    #[cfg(any(not(target_arch = "x86_64"), feature = "matmul-threading"))]
    {
        let _ = (m, k, n);
        matrixmultiply::sgemm
    }
}

/// Below this many elements a kernel runs on the calling thread: spawning costs more.
pub const PARALLEL_THRESHOLD: usize = 1 << 15;

/// Whether work over `len` elements is worth spreading over the pool: it is large enough, and
/// the pool has a second thread (with one, handing work to it only adds a wake-up).
#[inline]
pub(crate) fn parallel(len: usize) -> bool {
    len >= PARALLEL_THRESHOLD && rayon::current_num_threads() > 1
}

/// The fixed work unit (elements) of parallel kernels; fixed so results never depend on threads.
pub const CHUNK: usize = 1 << 13;

/// Runs `f` compiled for the widest vector instructions this CPU has (AVX-512, else AVX2 with
/// FMA, else the baseline), chosen at run time: the crate needs no `target-cpu` flag to be
/// fast. `f` is inlined into a `#[target_feature]` function, so the loops it holds are
/// vectorised for those instructions; wrap the innermost work (inside any rayon closure).
#[inline(always)]
pub(crate) fn simd<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has the features the function is compiled for.
            return unsafe { simd_avx512(f) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: as above.
            return unsafe { simd_avx2(f) };
        }
    }
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn simd_avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn simd_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// Stores a gradient term: `*d = v` into a fresh buffer (`overwrite`), `*d += v` otherwise.
/// For short loop bodies. Where the body is long (the margin loss's exp), the compiler keeps
/// the branch inside the loop: write the two loops out there (measured 7% faster).
#[inline(always)]
pub(crate) fn store_grad<F: crate::Element>(d: &mut F, v: F, overwrite: bool) {
    if overwrite { *d = v } else { *d += v }
}

/// `Σ f(x)` with sixteen interleaved accumulators added in a fixed order, so that the compiler
/// vectorises it and the result does not depend on threads.
#[inline(always)]
pub(crate) fn lane_sum<F: crate::Element>(xs: &[F], f: impl Fn(F) -> F) -> F {
    const LANES: usize = 16;
    let mut acc = [F::ZERO; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for k in 0..LANES {
            acc[k] += f(chunk[k]);
        }
    }
    let mut width = LANES;
    while width > 1 {
        width /= 2;
        for k in 0..width {
            acc[k] += acc[k + width];
        }
    }
    tail.iter().fold(acc[0], |total, &x| total + f(x))
}

/// `max(x)` with sixteen interleaved lanes (NaN-ignoring, as `f32::max`); −∞ for no elements.
#[inline(always)]
pub(crate) fn lane_max<F: crate::Element>(xs: &[F]) -> F {
    lane_max_by(xs, |x| x)
}

/// `max f(x)` with sixteen interleaved lanes (NaN-ignoring, as `f32::max`); −∞ for no
/// elements.
#[inline(always)]
pub(crate) fn lane_max_by<F: crate::Element>(xs: &[F], f: impl Fn(F) -> F) -> F {
    const LANES: usize = 16;
    let mut acc = [F::from_f64(f64::NEG_INFINITY); LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for k in 0..LANES {
            acc[k] = acc[k].max(f(chunk[k]));
        }
    }
    let m = acc.iter().copied().fold(acc[0], F::max);
    tail.iter().fold(m, |m, &x| m.max(f(x)))
}

/// Calls `f(first_row, rows_block)` over blocks of whole rows of `out` (row length `cols`),
/// in parallel when `out` is large.
pub(crate) fn for_row_blocks<F: Send>(
    out: &mut [F],
    cols: usize,
    f: impl Fn(usize, &mut [F]) + Sync + Send,
) {
    if cols == 0 || out.is_empty() {
        return;
    }
    let rows_per_block = (CHUNK / cols).max(1);
    let run = |(i, block): (usize, &mut [F])| {
        simd(
            #[inline(always)]
            || f(i * rows_per_block, block),
        )
    };
    if !parallel(out.len()) {
        out.chunks_mut(rows_per_block * cols)
            .enumerate()
            .for_each(run);
    } else {
        out.par_chunks_mut(rows_per_block * cols)
            .enumerate()
            .for_each(run);
    }
}

/// An output buffer that parallel tasks write through, each to a part no other task touches
/// (blocks of a matrix that are not contiguous slices, so cannot be split safely).
#[derive(Clone, Copy)]
pub(crate) struct SharedOut<F>(pub(crate) *mut F);
// SAFETY: tasks write disjoint elements (each user states which); the pointer outlives them.
unsafe impl<F> Send for SharedOut<F> {}
unsafe impl<F> Sync for SharedOut<F> {}

impl<F> SharedOut<F> {
    /// The `len` elements from `start`.
    ///
    /// # Safety
    /// They lie inside the buffer, and no other live slice or task touches them.
    #[inline(always)]
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn slice(&self, start: usize, len: usize) -> &mut [F] {
        // SAFETY: the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.0.add(start), len) }
    }
}

/// Columns per block of the column-wise kernels: one block of a 128-row f32 matrix (512 KiB)
/// stays in L2 between the pass that reduces its columns and the pass that writes them.
/// (Measured at 256 and 1,024 on `W [128, 10000]`: 1,024 is as fast or faster.)
pub(crate) const COL_BLOCK: usize = 1024;

/// Calls `f(first_column, per_column_block)` over blocks of [`COL_BLOCK`] columns of a matrix
/// with `per_column.len()` columns (`work` elements in all), in parallel when large. Fixed
/// blocks, so results never depend on the threads.
pub(crate) fn for_col_blocks<F: Send>(
    per_column: &mut [F],
    work: usize,
    f: impl Fn(usize, &mut [F]) + Sync + Send,
) {
    let run = |(i, block): (usize, &mut [F])| {
        simd(
            #[inline(always)]
            || f(i * COL_BLOCK, block),
        )
    };
    if !parallel(work) {
        per_column.chunks_mut(COL_BLOCK).enumerate().for_each(run);
    } else {
        per_column
            .par_chunks_mut(COL_BLOCK)
            .enumerate()
            .for_each(run);
    }
}

/// Writes the transpose of the `rows×cols` matrix `x` into `out` (`cols×rows`), in tiles.
pub fn transpose<F: Copy>(x: &[F], rows: usize, cols: usize, out: &mut [F]) {
    const TILE: usize = 32;
    for r0 in (0..rows).step_by(TILE) {
        for c0 in (0..cols).step_by(TILE) {
            for r in r0..(r0 + TILE).min(rows) {
                for c in c0..(c0 + TILE).min(cols) {
                    out[c * rows + r] = x[r * cols + c];
                }
            }
        }
    }
}
