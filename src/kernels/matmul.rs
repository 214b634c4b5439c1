//! Matrix multiply through a strided GEMM (our AVX-512 f32 kernel, or matrixmultiply's):
//! transposes cost nothing; `beta = 0` writes a fresh gradient buffer (never zeroed first) and
//! `beta = 1` adds straight into one that already holds a gradient.
//!
//! Two threads: the output is cut into blocks of whole rows (or columns, when it is wide and
//! short), one single-threaded GEMM per rayon task. Cuts fall on multiples of [`SPLIT_ALIGN`],
//! so every output tile is computed by the same microkernel call as without cutting, and results
//! are bitwise identical whatever the thread count. With the `matmul-threading` feature,
//! matrixmultiply's own threading is used instead; the two are never nested.

use super::{SharedOut, choose_sgemm};
use crate::Element;
use std::any::{Any, TypeId};

/// A row-major matrix, read either as stored or as its transpose (no copy either way).
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a, F> {
    /// The stored elements, `rows×cols` row-major.
    pub data: &'a [F],
    /// Rows as stored.
    pub rows: usize,
    /// Columns as stored.
    pub cols: usize,
    /// Read as the transpose of what is stored.
    pub transposed: bool,
}

impl<'a, F> MatRef<'a, F> {
    /// The stored matrix, read as is or transposed.
    pub fn new(data: &'a [F], rows: usize, cols: usize, transposed: bool) -> Self {
        debug_assert_eq!(data.len(), rows * cols);
        MatRef {
            data,
            rows,
            cols,
            transposed,
        }
    }

    /// `(rows, cols)` as read.
    pub fn dims(&self) -> (usize, usize) {
        if self.transposed {
            (self.cols, self.rows)
        } else {
            (self.rows, self.cols)
        }
    }

    /// `(row stride, column stride)` as read.
    fn strides(&self) -> (isize, isize) {
        if self.transposed {
            (1, self.cols as isize)
        } else {
            (self.cols as isize, 1)
        }
    }
}

/// The signature of a strided single-threaded GEMM (matrixmultiply's):
/// `(m, k, n, α, a, rsa, csa, b, rsb, csb, β, c, rsc, csc)`, element `(i, p)` of `A` at
/// `a + i·rsa + p·csa` (likewise `B` and `C`).
pub(crate) type GemmFn<F> = unsafe fn(
    usize,
    usize,
    usize,
    F,
    *const F,
    isize,
    isize,
    *const F,
    isize,
    isize,
    F,
    *mut F,
    isize,
    isize,
);

/// The single-threaded GEMM for an `m×k · k×n` product of `F`: [`choose_sgemm`] for `f32`,
/// matrixmultiply's `dgemm` for `f64`.
fn kernel_for<F: Element>(m: usize, k: usize, n: usize) -> GemmFn<F> {
    let kernel: &dyn Any = if TypeId::of::<F>() == TypeId::of::<f32>() {
        &(choose_sgemm(m, k, n) as GemmFn<f32>)
    } else {
        &(matrixmultiply::dgemm as GemmFn<f64>)
    };
    *kernel.downcast_ref().expect("an element is f32 or f64")
}

/// Output rows or columns per cut are a multiple of this (a multiple of every microkernel's
/// tile side, in matrixmultiply 0.3 and in ours).
const SPLIT_ALIGN: usize = 64;

/// Below this many multiply-adds a product runs on one thread.
const PARALLEL_MIN_FLOPS: usize = 1 << 20;

/// `C ← alpha·op(A)·op(B) + beta·C`, with `C` the contiguous row-major `m×n` output.
///
/// With `beta = 0`, `C` is only written, never read (NaN in it does not propagate).
///
/// # Panics
/// When the inner dimensions or the output length do not match (a bug in the caller: the
/// graph checks shapes before calling).
pub fn gemm<F: Element>(alpha: F, a: MatRef<F>, b: MatRef<F>, beta: F, c: &mut [F]) {
    gemm_on(rayon::current_num_threads(), alpha, a, b, beta, c);
}

/// [`gemm`] on the calling thread only: for kernels that already spread their work over the
/// threads (the convolutions, one batch item per task). The same arithmetic as [`gemm`], so
/// the same bits.
///
/// # Panics
/// As [`gemm`].
pub fn gemm_serial<F: Element>(alpha: F, a: MatRef<F>, b: MatRef<F>, beta: F, c: &mut [F]) {
    gemm_on(1, alpha, a, b, beta, c);
}

/// [`gemm`] with the output cut for `threads` threads.
fn gemm_on<F: Element>(threads: usize, alpha: F, a: MatRef<F>, b: MatRef<F>, beta: F, c: &mut [F]) {
    let (m, k) = a.dims();
    let (k2, n) = b.dims();
    assert!(k == k2 && c.len() == m * n, "gemm: inconsistent dimensions");
    if m == 0 || n == 0 {
        return;
    }
    let parallel = !cfg!(feature = "matmul-threading")
        && threads > 1
        && m * n * k >= PARALLEL_MIN_FLOPS
        && m.max(n) >= 2 * SPLIT_ALIGN;
    // chosen for the whole product, so that every block runs the same arithmetic
    let kernel = kernel_for::<F>(m, k, n);
    let out = SharedOut(c.as_mut_ptr());
    if !parallel {
        // SAFETY: dimensions checked above; `c` is exclusively borrowed.
        unsafe { gemm_block(kernel, alpha, a, b, beta, out, (0, m), (0, n), n) };
        return;
    }
    let split_rows = m >= n;
    let extent = if split_rows { m } else { n };
    // as even as whole units of SPLIT_ALIGN allow (784 rows: 384 + 400, not 448 + 336)
    let units = extent.div_ceil(SPLIT_ALIGN);
    let cut = |t: usize| (units * t / threads * SPLIT_ALIGN).min(extent);
    let blocks: Vec<(usize, usize)> = (0..threads)
        .map(|t| (cut(t), cut(t + 1)))
        .filter(|(start, end)| start < end)
        .collect();
    rayon::scope(|scope| {
        for &block in &blocks {
            let (rows, cols) = if split_rows {
                (block, (0, n))
            } else {
                ((0, m), block)
            };
            // SAFETY: blocks are disjoint ranges of rows (or columns) of `c`.
            scope.spawn(move |_| unsafe {
                gemm_block(kernel, alpha, a, b, beta, out, rows, cols, n)
            });
        }
    });
}

/// One single-threaded GEMM on output rows `rows.0..rows.1` and columns `cols.0..cols.1`.
///
/// # Safety
/// The block must lie inside `C` (row length `ldc`) and no other thread may touch it.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_block<F: Element>(
    kernel: GemmFn<F>,
    alpha: F,
    a: MatRef<F>,
    b: MatRef<F>,
    beta: F,
    c: SharedOut<F>,
    rows: (usize, usize),
    cols: (usize, usize),
    ldc: usize,
) {
    let (_, k) = a.dims();
    let (rsa, csa) = a.strides();
    let (rsb, csb) = b.strides();
    // SAFETY: offsets stay inside the matrices by the caller's contract.
    unsafe {
        kernel(
            rows.1 - rows.0,
            k,
            cols.1 - cols.0,
            alpha,
            a.data.as_ptr().offset(rows.0 as isize * rsa),
            rsa,
            csa,
            b.data.as_ptr().offset(cols.0 as isize * csb),
            rsb,
            csb,
            beta,
            c.0.add(rows.0 * ldc + cols.0),
            ldc as isize,
            1,
        );
    }
}
