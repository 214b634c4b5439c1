//! Reductions in a fixed order: the same bits whatever the number of threads; and the search
//! for the first non-finite element.

use super::{CHUNK, parallel, simd};
use crate::Element;
use rayon::prelude::*;

/// Columns per task of the parallel column sums: each task adds every row's slice of its
/// columns, so a block is a few rows' worth of cache lines (unlike the normalisation's
/// `COL_BLOCK`, which keeps a whole block in L2 between two passes).
const SUM_COL_BLOCK: usize = 256;

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

/// The index of the first NaN or infinity in `data`. Whether there is one comes from vectorised
/// sums of `v − v` (zero for a finite `v`, NaN otherwise) over fixed chunks, spread over the pool
/// when `data` is large; only then is the index searched for.
pub(crate) fn first_non_finite<F: Element>(data: &[F]) -> Option<usize> {
    let finite = |chunk: &[F]| {
        simd(
            #[inline(always)]
            || all_finite(chunk),
        )
    };
    let clean = if parallel(data.len()) {
        data.par_chunks(CHUNK).all(finite)
    } else {
        data.chunks(CHUNK).all(finite)
    };
    if clean {
        None
    } else {
        data.iter().position(|v| !v.is_finite())
    }
}

/// Whether every element of `chunk` is finite: a vectorised sum of `v − v`, for a caller that
/// has the chunk in cache anyway (the optimiser, right after updating it).
#[inline(always)]
#[allow(
    clippy::eq_op,
    reason = "v − v is 0 for a finite v and NaN otherwise: the test itself"
)]
pub(crate) fn all_finite<F: Element>(chunk: &[F]) -> bool {
    const LANES: usize = 16;
    let mut sums = [F::ZERO; LANES];
    let mut blocks = chunk.chunks_exact(LANES);
    for block in &mut blocks {
        for (sum, &v) in sums.iter_mut().zip(block) {
            *sum += v - v;
        }
    }
    let tail = blocks
        .remainder()
        .iter()
        .fold(F::ZERO, |sum, &v| sum + (v - v));
    sums.iter().fold(tail, |total, &sum| total + sum) == F::ZERO
}

#[cfg(test)]
mod tests {
    use super::first_non_finite;

    #[test]
    fn finds_the_first_nan_or_infinity_anywhere() {
        for len in [0usize, 1, 15, 16, 17, 100, 8192, 8193, 70_000] {
            let clean: Vec<f32> = (0..len).map(|i| (i as f32 * 0.37).sin() * 3e38).collect();
            assert_eq!(first_non_finite(&clean), None, "len {len}");
            for at in [0, len / 2, len.saturating_sub(1)]
                .into_iter()
                .filter(|&a| a < len)
            {
                for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                    let mut data = clean.clone();
                    data[at] = bad;
                    if at + 1 < len {
                        data[len - 1] = f32::NAN;
                    }
                    assert_eq!(first_non_finite(&data), Some(at), "len {len}, at {at}");
                }
            }
        }
        assert_eq!(first_non_finite(&[1.0f64, f64::MAX, f64::NAN]), Some(2));
    }
}
