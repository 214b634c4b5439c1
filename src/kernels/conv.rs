//! Convolution over NCHW planes through the GEMM: each batch item's receptive fields are laid
//! out as the columns of a matrix (im2col), one product per group gives the item's output, and
//! the gradients are the two transposed products (the input's scattered back by col2im).
//!
//! Two threads: the forward and the input's gradient split the batch into contiguous ranges of
//! whole items, one range per task with its own column buffer and a single-threaded GEMM; an
//! item's result never depends on which task computed it. The weight's gradient sums over the
//! items in their order, one parallel (and thread-count independent) GEMM per item. Results are
//! bitwise identical on any number of threads.

use super::{MatRef, gemm, gemm_serial, lane_sum, parallel};
use crate::Element;
use rayon::prelude::*;

/// The sliding window of a convolution or pooling over one `H×W` plane: window size, step,
/// zero (or −∞) padding on each side, and spacing between the window's taps; `[rows, cols]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// The input plane, `[H, W]`.
    pub input: [usize; 2],
    /// The window, `[kh, kw]`.
    pub kernel: [usize; 2],
    /// The step between windows.
    pub stride: [usize; 2],
    /// Added on both sides of each axis.
    pub padding: [usize; 2],
    /// The spacing of the window's taps (1: adjacent).
    pub dilation: [usize; 2],
}

impl Window {
    /// The output plane, `⌊(H + 2p − d(k − 1) − 1)/s⌋ + 1` per axis, or `None` when the
    /// (dilated) window is larger than the padded input or a step is zero.
    pub fn output(&self) -> Option<[usize; 2]> {
        let axis = |i: usize| {
            let span = self.dilation[i].checked_mul(self.kernel[i].checked_sub(1)?)? + 1;
            let padded = self.input[i].checked_add(self.padding[i].checked_mul(2)?)?;
            (self.stride[i] > 0 && self.kernel[i] > 0 && padded >= span)
                .then(|| (padded - span) / self.stride[i] + 1)
        };
        Some([axis(0)?, axis(1)?])
    }

    /// Output elements per plane.
    pub(super) fn output_len(&self) -> usize {
        let [oh, ow] = self.output().expect("a checked window");
        oh * ow
    }

    /// For output index `o` along `axis`, tap `k` reads input `o·s + k·d − p`; the range of
    /// `o` whose read lands inside the input (`lo..hi`, possibly empty), and the read at `o = 0`.
    #[inline]
    fn valid(&self, axis: usize, k: usize, out_len: usize) -> (usize, usize, isize) {
        let s = self.stride[axis];
        let offset = (k * self.dilation[axis]) as isize - self.padding[axis] as isize;
        let n = self.input[axis] as isize;
        // o·s + offset ≥ 0  and  o·s + offset ≤ n − 1
        let lo = if offset >= 0 {
            0
        } else {
            (-offset as usize).div_ceil(s)
        };
        let hi = if n - 1 - offset < 0 {
            0
        } else {
            (((n - 1 - offset) as usize) / s + 1).min(out_len)
        };
        (lo.min(hi), hi, offset)
    }
}

/// The shape of a 2-D convolution of an `[N, C, H, W]` input with `[O, C/groups, kh, kw]`
/// weights (PyTorch's layouts), output `[N, O, OH, OW]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvShape {
    /// `N`.
    pub batch: usize,
    /// `C`.
    pub in_channels: usize,
    /// `O`.
    pub out_channels: usize,
    /// Input channels and output channels are split into this many independent groups.
    pub groups: usize,
    /// The window over each plane.
    pub window: Window,
}

impl ConvShape {
    fn group_in(&self) -> usize {
        self.in_channels / self.groups
    }
    fn group_out(&self) -> usize {
        self.out_channels / self.groups
    }
    fn plane(&self) -> usize {
        self.window.input[0] * self.window.input[1]
    }
    /// Rows of a group's column matrix: `C/groups · kh · kw`.
    fn col_rows(&self) -> usize {
        self.group_in() * self.window.kernel[0] * self.window.kernel[1]
    }
    /// Elements of one group's column matrix (`col_rows × OH·OW`): the scratch each task needs.
    pub fn col_len(&self) -> usize {
        self.col_rows() * self.window.output_len()
    }
    fn in_item(&self) -> usize {
        self.in_channels * self.plane()
    }
    fn out_item(&self) -> usize {
        self.out_channels * self.window.output_len()
    }

    /// How many tasks the batch is split into (each needs [`col_len`](Self::col_len) of
    /// scratch): one per thread, when the work is worth spreading.
    pub fn tasks(&self) -> usize {
        let work = self.batch * self.out_item() * self.col_rows();
        if parallel(work) {
            rayon::current_num_threads().min(self.batch).max(1)
        } else {
            1
        }
    }
}

/// Writes the receptive fields of one group's `C/groups` planes (`x`) as the columns of `col`
/// (`C/groups·kh·kw` rows, row `(c, i, j)` holding tap `(i, j)` of channel `c` for every
/// output position); taps in the padding read 0.
fn im2col<F: Element>(x: &[F], window: &Window, col: &mut [F]) {
    let [h, w] = window.input;
    let [kh, kw] = window.kernel;
    let [oh, ow] = window.output().expect("a checked window");
    let sw = window.stride[1];
    let fill_row = |row: usize, dst: &mut [F]| {
        let (c, tap) = (row / (kh * kw), row % (kh * kw));
        let (i, j) = (tap / kw, tap % kw);
        let plane = &x[c * h * w..(c + 1) * h * w];
        let (y_lo, y_hi, y_off) = window.valid(0, i, oh);
        let (x_lo, x_hi, x_off) = window.valid(1, j, ow);
        for (oy, out) in dst.chunks_mut(ow).enumerate() {
            if oy < y_lo || oy >= y_hi {
                out.fill(F::ZERO);
                continue;
            }
            let src = &plane[(oy as isize * window.stride[0] as isize + y_off) as usize * w..][..w];
            out[..x_lo].fill(F::ZERO);
            out[x_hi..].fill(F::ZERO);
            let start = (x_lo as isize * sw as isize + x_off) as usize;
            if sw == 1 {
                out[x_lo..x_hi].copy_from_slice(&src[start..start + (x_hi - x_lo)]);
            } else {
                for (k, o) in out[x_lo..x_hi].iter_mut().enumerate() {
                    *o = src[start + k * sw];
                }
            }
        }
    };
    col.chunks_mut(oh * ow)
        .enumerate()
        .for_each(|(row, dst)| fill_row(row, dst));
}

/// The transpose of [`im2col`]: adds each column entry back into the input element it was
/// read from (`dx`, one group's planes); entries read from the padding are dropped.
fn col2im_acc<F: Element>(col: &[F], window: &Window, dx: &mut [F]) {
    let [h, w] = window.input;
    let [kh, kw] = window.kernel;
    let [oh, ow] = window.output().expect("a checked window");
    let sw = window.stride[1];
    for (row, src) in col.chunks(oh * ow).enumerate() {
        let (c, tap) = (row / (kh * kw), row % (kh * kw));
        let (i, j) = (tap / kw, tap % kw);
        let plane = &mut dx[c * h * w..(c + 1) * h * w];
        let (y_lo, y_hi, y_off) = window.valid(0, i, oh);
        let (x_lo, x_hi, x_off) = window.valid(1, j, ow);
        for oy in y_lo..y_hi {
            let line = (oy as isize * window.stride[0] as isize + y_off) as usize * w;
            let dst = &mut plane[line..line + w];
            let start = (x_lo as isize * sw as isize + x_off) as usize;
            let g = &src[oy * ow + x_lo..oy * ow + x_hi];
            for (k, &g) in g.iter().enumerate() {
                dst[start + k * sw] += g;
            }
        }
    }
}

/// Calls `f(first_item, items, scratch)` on contiguous ranges of whole batch items of `buf`
/// (`item_len` elements each), one range per scratch slot (`scratch.len() / col_len` of
/// them), in parallel when there are several.
fn for_item_ranges<F: Element>(
    shape: &ConvShape,
    buf: &mut [F],
    item_len: usize,
    scratch: &mut [F],
    f: impl Fn(usize, &mut [F], &mut [F]) + Sync + Send,
) {
    let col_len = shape.col_len().max(1);
    let tasks = (scratch.len() / col_len).max(1);
    let per_task = shape.batch.div_ceil(tasks).max(1);
    let run = |(t, (items, col)): (usize, (&mut [F], &mut [F]))| {
        super::simd(
            #[inline(always)]
            || f(t * per_task, items, col),
        )
    };
    if tasks == 1 {
        run((0, (buf, &mut scratch[..shape.col_len()])));
    } else {
        buf.par_chunks_mut(per_task * item_len)
            .zip(scratch.par_chunks_mut(col_len))
            .enumerate()
            .for_each(run);
    }
}

/// `y[n, o] = Σ_{c in o's group, i, j} w[o, c, i, j] · x[n, c, s·oy + d·i − p, s·ox + d·j − p]
/// (+ b[o])`: the forward of a 2-D convolution, written into `out` (`[N, O, OH, OW]`).
/// `scratch` holds [`ConvShape::tasks`] column buffers of [`ConvShape::col_len`].
pub fn conv2d<F: Element>(
    shape: &ConvShape,
    x: &[F],
    w: &[F],
    bias: Option<&[F]>,
    out: &mut [F],
    scratch: &mut [F],
) {
    let (out_item, in_item) = (shape.out_item(), shape.in_item());
    let (gin, gout, rows) = (shape.group_in(), shape.group_out(), shape.col_rows());
    let spatial = shape.window.output_len();
    for_item_ranges(shape, out, out_item, scratch, |first, items, col| {
        for (k, y) in items.chunks_mut(out_item).enumerate() {
            let xn = &x[(first + k) * in_item..][..in_item];
            for g in 0..shape.groups {
                im2col(
                    &xn[g * gin * shape.plane()..][..gin * shape.plane()],
                    &shape.window,
                    col,
                );
                let wg = MatRef::new(&w[g * gout * rows..][..gout * rows], gout, rows, false);
                let cm = MatRef::new(col, rows, spatial, false);
                gemm_serial(
                    F::ONE,
                    wg,
                    cm,
                    F::ZERO,
                    &mut y[g * gout * spatial..][..gout * spatial],
                );
            }
            if let Some(b) = bias {
                for (plane, &b) in y.chunks_mut(spatial).zip(b) {
                    plane.iter_mut().for_each(|v| *v += b);
                }
            }
        }
    });
}

/// `∂x = col2im(wᵀ · ∂y)` per item and group: the input's gradient, written into a fresh `dx`
/// (`fresh`) or added to it. `scratch` as for [`conv2d`].
pub fn conv2d_grad_input<F: Element>(
    shape: &ConvShape,
    dy: &[F],
    w: &[F],
    dx: &mut [F],
    fresh: bool,
    scratch: &mut [F],
) {
    let (out_item, in_item) = (shape.out_item(), shape.in_item());
    let (gin, gout, rows) = (shape.group_in(), shape.group_out(), shape.col_rows());
    let spatial = shape.window.output_len();
    let plane = shape.plane();
    for_item_ranges(shape, dx, in_item, scratch, |first, items, col| {
        for (k, dxn) in items.chunks_mut(in_item).enumerate() {
            if fresh {
                dxn.fill(F::ZERO);
            }
            let dyn_ = &dy[(first + k) * out_item..][..out_item];
            for g in 0..shape.groups {
                let wt = MatRef::new(&w[g * gout * rows..][..gout * rows], gout, rows, true);
                let dyg = MatRef::new(
                    &dyn_[g * gout * spatial..][..gout * spatial],
                    gout,
                    spatial,
                    false,
                );
                gemm_serial(F::ONE, wt, dyg, F::ZERO, col);
                col2im_acc(
                    col,
                    &shape.window,
                    &mut dxn[g * gin * plane..][..gin * plane],
                );
            }
        }
    });
}

/// `∂w[group] = Σ_n ∂y[n, group] · im2col(x[n, group])ᵀ`, summed over the items in order
/// (each product spread over the threads by [`gemm`]), written into a fresh `dw` or added.
/// `col` is one column buffer ([`ConvShape::col_len`]).
pub fn conv2d_grad_weight<F: Element>(
    shape: &ConvShape,
    dy: &[F],
    x: &[F],
    dw: &mut [F],
    fresh: bool,
    col: &mut [F],
) {
    let (out_item, in_item) = (shape.out_item(), shape.in_item());
    let (gin, gout, rows) = (shape.group_in(), shape.group_out(), shape.col_rows());
    let spatial = shape.window.output_len();
    let plane = shape.plane();
    if shape.batch == 0 && fresh {
        dw.fill(F::ZERO);
    }
    for n in 0..shape.batch {
        let beta = if fresh && n == 0 { F::ZERO } else { F::ONE };
        for g in 0..shape.groups {
            let xg = &x[n * in_item + g * gin * plane..][..gin * plane];
            if parallel(col.len()) {
                let window = &shape.window;
                let [kh, kw] = window.kernel;
                // the rows of the column matrix are independent: fill them on every thread
                col.par_chunks_mut(spatial * kh * kw)
                    .enumerate()
                    .for_each(|(c, rows)| im2col(&xg[c * plane..][..plane], window, rows));
            } else {
                im2col(xg, &shape.window, col);
            }
            let dyg = MatRef::new(
                &dy[n * out_item + g * gout * spatial..][..gout * spatial],
                gout,
                spatial,
                false,
            );
            let ct = MatRef::new(col, rows, spatial, true);
            gemm(
                F::ONE,
                dyg,
                ct,
                beta,
                &mut dw[g * gout * rows..][..gout * rows],
            );
        }
    }
}

/// `∂b[o] = Σ_n Σ_{positions} ∂y[n, o, ·]`, items in order; written into a fresh `db` or added.
pub fn conv2d_grad_bias<F: Element>(shape: &ConvShape, dy: &[F], db: &mut [F], fresh: bool) {
    let spatial = shape.window.output_len();
    for (o, d) in db.iter_mut().enumerate() {
        let mut total = F::ZERO;
        for n in 0..shape.batch {
            let plane = &dy[(n * shape.out_channels + o) * spatial..][..spatial];
            total += lane_sum(plane, |v| v);
        }
        super::store_grad(d, total, fresh);
    }
}
