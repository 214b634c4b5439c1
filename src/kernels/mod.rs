//! Plain functions over slices: the arithmetic every op runs, with or without a tape.
//!
//! Work is spread over rayon's pool above a size threshold, always in fixed-size chunks whose
//! results are combined in a fixed order, so results are bitwise identical whatever the number
//! of threads. Backward kernels *accumulate* (`+=`) into gradient buffers.

mod elementwise;
mod margin;
mod matmul;
mod reduce;
mod rowwise;

pub use elementwise::{add_broadcast_acc, binary, binary_grad, map, map_grad};
pub(crate) use margin::{margin_xent, margin_xent_grad};
pub use matmul::{MatRef, gemm};
pub use reduce::{sum_all, sum_cols_acc, sum_rows_acc};
pub use rowwise::{
    log_softmax_rows, log_softmax_rows_grad, normalize_cols, normalize_cols_grad, normalize_rows,
    normalize_rows_grad,
};

use rayon::prelude::*;

/// Below this many elements a kernel runs on the calling thread: spawning costs more.
pub const PARALLEL_THRESHOLD: usize = 1 << 15;

/// The fixed work unit (elements) of parallel kernels; fixed so results never depend on threads.
pub const CHUNK: usize = 1 << 13;

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
    if out.len() < PARALLEL_THRESHOLD {
        out.chunks_mut(rows_per_block * cols)
            .enumerate()
            .for_each(|(i, block)| f(i * rows_per_block, block));
    } else {
        out.par_chunks_mut(rows_per_block * cols)
            .enumerate()
            .for_each(|(i, block)| f(i * rows_per_block, block));
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
