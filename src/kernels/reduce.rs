//! Reductions in a fixed order: the same bits whatever the number of threads.

use super::{CHUNK, parallel};

/// Columns per task of the parallel column sums: each task adds every row's slice of its
/// columns, so a block is a few rows' worth of cache lines (unlike the normalisation's
/// `COL_BLOCK`, which keeps a whole block in L2 between two passes).
const SUM_COL_BLOCK: usize = 256;
use crate::Element;
use rayon::prelude::*;

/// Σ x, summed in fixed chunks whose partial sums are then added in order.
pub fn sum_all<F: Element>(x: &[F]) -> F {
    let chunk_sum = |c: &[F]| c.iter().copied().sum::<F>();
    if !parallel(x.len()) {
        x.chunks(CHUNK).map(chunk_sum).sum()
    } else {
        let partials: Vec<F> = x.par_chunks(CHUNK).map(chunk_sum).collect();
        partials.into_iter().sum()
    }
}

/// `out[r] += Σ_c x[r, c]` for the `rows×cols` matrix `x`.
pub fn sum_rows_acc<F: Element>(x: &[F], cols: usize, out: &mut [F]) {
    if cols == 0 {
        return;
    }
    let add_row =
        |(r, o): (usize, &mut F)| *o += x[r * cols..(r + 1) * cols].iter().copied().sum::<F>();
    if !parallel(x.len()) {
        out.iter_mut().enumerate().for_each(add_row);
    } else {
        out.par_iter_mut().enumerate().for_each(add_row);
    }
}

/// `out[c] += Σ_r x[r, c]` for the `rows×cols` matrix `x`, rows added in order.
pub fn sum_cols_acc<F: Element>(x: &[F], cols: usize, out: &mut [F]) {
    if cols == 0 {
        return;
    }
    let rows = x.len() / cols;
    let add_block = |c0: usize, block: &mut [F]| {
        for r in 0..rows {
            let row = &x[r * cols + c0..r * cols + c0 + block.len()];
            block.iter_mut().zip(row).for_each(|(o, &v)| *o += v);
        }
    };
    if !parallel(x.len()) || cols < 2 * SUM_COL_BLOCK {
        add_block(0, out);
    } else {
        out.par_chunks_mut(SUM_COL_BLOCK)
            .enumerate()
            .for_each(|(i, block)| add_block(i * SUM_COL_BLOCK, block));
    }
}
