//! Convolution over NCHW planes through the GEMM: each batch item's receptive fields are laid
//! out as the columns of a matrix (im2col), and one product per group gives the item's output.
//! When the window moves by 1 and keeps the plane's size, our f32 GEMM reads those columns
//! straight from the planes while packing them (an implicit GEMM), and no column matrix is
//! written.
//!
//! The gradients: with stride 1, the input's gradient is itself a convolution, of the output's
//! gradient with the flipped, transposed weights (so it runs as the forward does, with no
//! scatter); otherwise it is `wᵀ · ∂y` scattered back by col2im. The weight's gradient is
//! `Σ_n ∂y_n · colₙᵀ`.
//!
//! Two threads: the forward and the input's gradient split the batch into contiguous ranges of
//! whole items, one range per task with its own column buffer and a single-threaded GEMM; an
//! item's result never depends on which task computed it. The weight's gradient sums the items
//! of fixed slices of the batch into one partial sum each (the slices spread over the tasks),
//! then adds the partial sums in order. Results are bitwise identical on any number of threads.

use super::{MatRef, gemm_serial, lane_sum, parallel};
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
    fn tasks(&self) -> usize {
        let work = self.batch * self.out_item() * self.col_rows();
        if parallel(work) {
            rayon::current_num_threads().min(self.batch).max(1)
        } else {
            1
        }
    }

    /// The scratch [`conv2d`] needs: one column buffer per task.
    pub fn forward_scratch(&self) -> usize {
        self.tasks() * self.col_len()
    }

    /// With stride 1, the convolution whose forward is this one's input gradient: it reads
    /// `∂y` (`[N, O, OH, OW]`) padded by `d(k − 1) − p`, with the weights flipped and
    /// transposed (`[C, O/groups, kh, kw]`), and gives `[N, C, H, W]`. `None` for other
    /// strides, or padding beyond the dilated kernel's reach.
    fn input_grad_conv(&self) -> Option<ConvShape> {
        let w = &self.window;
        let reach = |i: usize| w.dilation[i] * (w.kernel[i] - 1);
        if w.stride != [1, 1] || (0..2).any(|i| w.padding[i] > reach(i)) {
            return None;
        }
        let flipped = ConvShape {
            batch: self.batch,
            in_channels: self.out_channels,
            out_channels: self.in_channels,
            groups: self.groups,
            window: Window {
                input: w.output()?,
                kernel: w.kernel,
                stride: [1, 1],
                padding: [reach(0) - w.padding[0], reach(1) - w.padding[1]],
                dilation: w.dilation,
            },
        };
        debug_assert_eq!(flipped.window.output(), Some(w.input));
        Some(flipped)
    }

    /// The scratch [`conv2d_grad_input`] needs.
    pub fn grad_input_scratch(&self) -> usize {
        match self.input_grad_conv() {
            Some(flipped) => flipped.forward_scratch() + self.weight_len(),
            None => self.forward_scratch(),
        }
    }

    /// Elements of the weight, `O · C/groups · kh · kw`.
    fn weight_len(&self) -> usize {
        self.out_channels * self.col_rows()
    }

    /// The slices of the batch whose weight gradients are summed apart, and the items in each:
    /// fixed by the batch alone, so that the sums never depend on the threads.
    fn weight_grad_slices(&self) -> (usize, usize) {
        /// At most this many partial sums (enough to keep two threads evenly busy).
        const MAX_SLICES: usize = 8;
        let per_slice = self.batch.div_ceil(MAX_SLICES).max(1);
        (self.batch.div_ceil(per_slice), per_slice)
    }

    /// The scratch [`conv2d_grad_weight`] needs: a column buffer per task, a partial sum per
    /// slice of the batch.
    pub fn grad_weight_scratch(&self) -> usize {
        let (slices, _) = self.weight_grad_slices();
        self.tasks().min(slices.max(1)) * self.col_len() + slices * self.weight_len()
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
    // stride 1 and rows as wide as the input's: the taps of consecutive output rows are
    // consecutive in the input, so a tap's valid rows are one shifted copy, whose
    // elements that fell outside the row (off the left or right edge) are then zeroed
    let one_copy = window.stride == [1, 1] && ow == w;
    let fill_row = |row: usize, dst: &mut [F]| {
        let (c, tap) = (row / (kh * kw), row % (kh * kw));
        let (i, j) = (tap / kw, tap % kw);
        let plane = &x[c * h * w..(c + 1) * h * w];
        let (y_lo, y_hi, y_off) = window.valid(0, i, oh);
        let (x_lo, x_hi, x_off) = window.valid(1, j, ow);
        if one_copy {
            if y_lo >= y_hi || x_lo >= x_hi {
                dst.fill(F::ZERO);
                return;
            }
            let (start, end) = (y_lo * ow + x_lo, (y_hi - 1) * ow + x_hi);
            let src = (start as isize + y_off * w as isize + x_off) as usize;
            dst[..start].fill(F::ZERO);
            dst[start..end].copy_from_slice(&plane[src..src + (end - start)]);
            dst[end..].fill(F::ZERO);
            for line in dst[y_lo * ow..y_hi * ow].chunks_exact_mut(ow) {
                line[..x_lo].fill(F::ZERO);
                line[x_hi..].fill(F::ZERO);
            }
            return;
        }
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

/// `y ← w · im2col(x)` (or `+=`, `add`) for one group, by our f32 GEMM reading the columns
/// straight from the planes as it packs them, with no column matrix written: taken when the
/// elements are `f32`, the GEMM [`gemm_serial`] would choose is ours, and the window moves by
/// 1 and keeps the plane's size (3×3 with padding 1, 5×5 with padding 2…). The same panels
/// reach the same micro-kernel as through [`im2col`], so the result has the same bits.
/// Returns whether it ran; otherwise nothing is written.
fn gemm_from_planes<F: Element>(window: &Window, w: &[F], x: &[F], add: bool, y: &mut [F]) -> bool {
    #[cfg(all(target_arch = "x86_64", not(feature = "matmul-threading")))]
    {
        use super::sgemm::{MAX_TAPS, ShiftedPlanes, sgemm_shifted, takes};
        use std::any::TypeId;
        let [h, wd] = window.input;
        let [kh, kw] = window.kernel;
        let taps = kh * kw;
        let (k, n) = (x.len() / (h * wd).max(1) * taps, h * wd);
        let m = w.len().checked_div(k).unwrap_or(0);
        let same_plane = window.stride == [1, 1] && window.output() == Some(window.input);
        if TypeId::of::<F>() != TypeId::of::<f32>()
            || !same_plane
            || taps > MAX_TAPS
            || !takes(m, k, n)
        {
            return false;
        }
        let mut shifts = [[0isize; 2]; MAX_TAPS];
        for (t, shift) in shifts.iter_mut().take(taps).enumerate() {
            let axis = |i: usize, tap: usize| {
                (tap * window.dilation[i]) as isize - window.padding[i] as isize
            };
            *shift = [axis(0, t / kw), axis(1, t % kw)];
        }
        // SAFETY: F is f32 (checked above), so the slices are f32 slices of the same length.
        let (w, x, y) = unsafe {
            (
                std::slice::from_raw_parts(w.as_ptr().cast::<f32>(), w.len()),
                std::slice::from_raw_parts(x.as_ptr().cast::<f32>(), x.len()),
                std::slice::from_raw_parts_mut(y.as_mut_ptr().cast::<f32>(), y.len()),
            )
        };
        assert_eq!(y.len(), m * n, "conv2d: output of one group");
        let planes = ShiftedPlanes {
            planes: x,
            size: [h, wd],
            taps: &shifts[..taps],
        };
        let beta = if add { 1.0 } else { 0.0 };
        // SAFETY: our kernel runs on this CPU (`takes`); `w` is the m×k row-major weight and
        // `y` the m×n output, both exclusively ours.
        unsafe {
            sgemm_shifted(
                m,
                1.0,
                (w.as_ptr(), k as isize, 1),
                &planes,
                beta,
                y.as_mut_ptr(),
                n,
            )
        };
        true
    }
    #[cfg(not(all(target_arch = "x86_64", not(feature = "matmul-threading"))))]
    {
        let _ = (window, w, x, add, y);
        false
    }
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

/// Calls `f(first_item, items, column_buffer)` on contiguous ranges of whole batch items of
/// `buf` (`item_len` elements each), one range per task ([`ConvShape::tasks`], each with its
/// column buffer from `scratch`), in parallel when there are several.
fn for_item_ranges<F: Element>(
    shape: &ConvShape,
    buf: &mut [F],
    item_len: usize,
    scratch: &mut [F],
    f: impl Fn(usize, &mut [F], &mut [F]) + Sync + Send,
) {
    let col_len = shape.col_len().max(1);
    let tasks = shape.tasks();
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
            .zip(scratch[..tasks * col_len].par_chunks_mut(col_len))
            .enumerate()
            .for_each(run);
    }
}

/// `y[n, o] = Σ_{c in o's group, i, j} w[o, c, i, j] · x[n, c, s·oy + d·i − p, s·ox + d·j − p]
/// (+ b[o])`: the forward of a 2-D convolution, written into `out` (`[N, O, OH, OW]`).
/// `scratch` holds [`ConvShape::forward_scratch`] elements.
pub fn conv2d<F: Element>(
    shape: &ConvShape,
    x: &[F],
    w: &[F],
    bias: Option<&[F]>,
    out: &mut [F],
    scratch: &mut [F],
) {
    convolve(shape, x, w, bias, out, false, scratch);
}

/// [`conv2d`], writing `out` or (`add`) adding to it.
fn convolve<F: Element>(
    shape: &ConvShape,
    x: &[F],
    w: &[F],
    bias: Option<&[F]>,
    out: &mut [F],
    add: bool,
    scratch: &mut [F],
) {
    let (out_item, in_item) = (shape.out_item(), shape.in_item());
    let (gin, gout, rows) = (shape.group_in(), shape.group_out(), shape.col_rows());
    let spatial = shape.window.output_len();
    let beta = if add { F::ONE } else { F::ZERO };
    for_item_ranges(shape, out, out_item, scratch, |first, items, col| {
        for (k, y) in items.chunks_mut(out_item).enumerate() {
            let xn = &x[(first + k) * in_item..][..in_item];
            for g in 0..shape.groups {
                let xg = &xn[g * gin * shape.plane()..][..gin * shape.plane()];
                let wg = &w[g * gout * rows..][..gout * rows];
                let yg = &mut y[g * gout * spatial..][..gout * spatial];
                if !gemm_from_planes(&shape.window, wg, xg, add, yg) {
                    im2col(xg, &shape.window, col);
                    let wg = MatRef::new(wg, gout, rows, false);
                    let cm = MatRef::new(col, rows, spatial, false);
                    gemm_serial(F::ONE, wg, cm, beta, yg);
                }
            }
            if let Some(b) = bias {
                for (plane, &b) in y.chunks_mut(spatial).zip(b) {
                    plane.iter_mut().for_each(|v| *v += b);
                }
            }
        }
    });
}

/// The input's gradient, written into a fresh `dx` (`fresh`) or added to it. With stride 1,
/// `∂x[n, c] = Σ_{o in c's group, i, j} w[o, c, kh−1−i, kw−1−j] · ∂y[n, o, y + d·i − p', x +
/// d·j − p']` with `p' = d(k − 1) − p`: a convolution of `∂y`, run as the forward is;
/// otherwise `∂x = col2im(wᵀ · ∂y)` per item and group.
/// `scratch` holds [`ConvShape::grad_input_scratch`] elements.
pub fn conv2d_grad_input<F: Element>(
    shape: &ConvShape,
    dy: &[F],
    w: &[F],
    dx: &mut [F],
    fresh: bool,
    scratch: &mut [F],
) {
    if let Some(flipped) = shape.input_grad_conv() {
        let (wt, cols) = scratch.split_at_mut(shape.weight_len());
        flip_transpose(shape, w, wt);
        convolve(&flipped, dy, wt, None, dx, !fresh, cols);
        return;
    }
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

/// `wt[g·C/groups + c, o, i, j] = w[g·O/groups + o, c, kh−1−i, kw−1−j]`: the weights of the
/// convolution that gives the input's gradient, `[C, O/groups, kh, kw]`.
fn flip_transpose<F: Element>(shape: &ConvShape, w: &[F], wt: &mut [F]) {
    let (gin, gout) = (shape.group_in(), shape.group_out());
    let taps = shape.window.kernel[0] * shape.window.kernel[1];
    for g in 0..shape.groups {
        for o in 0..gout {
            for c in 0..gin {
                let src = &w[((g * gout + o) * gin + c) * taps..][..taps];
                let dst = &mut wt[((g * gin + c) * gout + o) * taps..][..taps];
                // reversing the flat taps flips both axes
                dst.iter_mut()
                    .zip(src.iter().rev())
                    .for_each(|(d, &s)| *d = s);
            }
        }
    }
}

/// `∂w[group] = Σ_n ∂y[n, group] · im2col(x[n, group])ᵀ`, written into a fresh `dw` or
/// added. The batch is cut into at most eight fixed slices (fixed by the batch size); each slice's
/// items are summed in order into a partial sum (the slices spread over the tasks, one
/// single-threaded GEMM per item), and the partial sums are added in order. `scratch` holds
/// [`ConvShape::grad_weight_scratch`] elements.
pub fn conv2d_grad_weight<F: Element>(
    shape: &ConvShape,
    dy: &[F],
    x: &[F],
    dw: &mut [F],
    fresh: bool,
    scratch: &mut [F],
) {
    let (out_item, in_item) = (shape.out_item(), shape.in_item());
    let (gin, gout, rows) = (shape.group_in(), shape.group_out(), shape.col_rows());
    let spatial = shape.window.output_len();
    let plane = shape.plane();
    let (slices, per_slice) = shape.weight_grad_slices();
    let weight_len = shape.weight_len();
    let col_len = shape.col_len().max(1);
    let tasks = shape.tasks().min(slices.max(1));
    let (cols, partials) = scratch.split_at_mut(tasks * shape.col_len());
    let partials = &mut partials[..slices * weight_len];
    // the partial sum of slice `s` of the batch
    let slice_sum = |s: usize, partial: &mut [F], col: &mut [F]| {
        let items = s * per_slice..((s + 1) * per_slice).min(shape.batch);
        for (k, n) in items.enumerate() {
            let beta = if k == 0 { F::ZERO } else { F::ONE };
            for g in 0..shape.groups {
                let xg = &x[n * in_item + g * gin * plane..][..gin * plane];
                im2col(xg, &shape.window, col);
                let dyg = MatRef::new(
                    &dy[n * out_item + g * gout * spatial..][..gout * spatial],
                    gout,
                    spatial,
                    false,
                );
                let ct = MatRef::new(col, rows, spatial, true);
                gemm_serial(
                    F::ONE,
                    dyg,
                    ct,
                    beta,
                    &mut partial[g * gout * rows..][..gout * rows],
                );
            }
        }
    };
    if weight_len > 0 {
        let per_task = slices.div_ceil(tasks).max(1);
        let run = |(t, (partials, col)): (usize, (&mut [F], &mut [F]))| {
            super::simd(
                #[inline(always)]
                || {
                    for (k, partial) in partials.chunks_mut(weight_len).enumerate() {
                        slice_sum(t * per_task + k, partial, col);
                    }
                },
            )
        };
        if tasks == 1 {
            run((0, (&mut *partials, &mut cols[..shape.col_len()])));
        } else {
            partials
                .par_chunks_mut(per_task * weight_len)
                .zip(cols.par_chunks_mut(col_len))
                .enumerate()
                .for_each(run);
        }
    }
    super::simd(
        #[inline(always)]
        || {
            for (i, d) in dw.iter_mut().enumerate() {
                let total = (0..slices).fold(F::ZERO, |t, s| t + partials[s * weight_len + i]);
                super::store_grad(d, total, fresh);
            }
        },
    );
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic values in [−1, 1), some of them exact zeros and negative zeros.
    fn values(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|i| match (i + seed) % 37 {
                0 => 0.0,
                1 => -0.0,
                r => ((r * 2_654_435_761 + i) % 1000) as f32 / 500.0 - 1.0,
            })
            .collect()
    }

    #[test]
    fn the_gemm_from_the_planes_gives_the_bits_of_im2col_and_the_gemm() {
        if !super::super::sgemm::available() {
            eprintln!("no AVX-512 on this CPU: the columns are always written out");
            return;
        }
        // (channels, out channels, [h, w], kernel, padding, dilation): 3×3, 5×5 and a dilated
        // 3×3 keeping the plane's size; planes narrower than a panel, not a multiple of one,
        // and over a block of columns; k over one and two slices of the GEMM
        let cases = [
            (32, 32, [28, 28], [3, 3], [1, 1], [1, 1]),
            (64, 64, [14, 14], [3, 3], [1, 1], [1, 1]),
            (8, 16, [9, 13], [3, 3], [1, 1], [1, 1]),
            (3, 70, [11, 7], [5, 5], [2, 2], [1, 1]),
            (8, 9, [12, 10], [3, 3], [2, 2], [2, 2]),
            (40, 8, [30, 20], [3, 5], [1, 2], [1, 1]),
        ];
        for (case, &(c, o, input, kernel, padding, dilation)) in cases.iter().enumerate() {
            let window = Window {
                input,
                kernel,
                stride: [1, 1],
                padding,
                dilation,
            };
            let (k, n) = (c * kernel[0] * kernel[1], input[0] * input[1]);
            let (x, w) = (values(c * n, case), values(o * k, case + 5));
            for add in [false, true] {
                let start = values(o * n, case + 9);
                let mut direct = start.clone();
                assert!(
                    gemm_from_planes(&window, &w, &x, add, &mut direct),
                    "case {case}: the planes' GEMM was not taken"
                );
                let mut col = vec![f32::NAN; k * n];
                im2col(&x, &window, &mut col);
                let mut written = start.clone();
                let beta = if add { 1.0 } else { 0.0 };
                gemm_serial(
                    1.0,
                    MatRef::new(&w, o, k, false),
                    MatRef::new(&col, k, n, false),
                    beta,
                    &mut written,
                );
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&direct), bits(&written), "case {case}, add {add}");
            }
        }
    }

    #[test]
    fn the_planes_gemm_leaves_other_windows_and_f64_to_im2col() {
        let window = |stride, padding| Window {
            input: [16, 16],
            kernel: [3, 3],
            stride: [stride, stride],
            padding: [padding, padding],
            dilation: [1, 1],
        };
        let (x, w) = (values(32 * 256, 0), values(32 * 288, 1));
        let mut y = vec![0.0f32; 32 * 256];
        // stride 2, or padding that changes the plane's size
        assert!(!gemm_from_planes(&window(2, 1), &w, &x, false, &mut y));
        assert!(!gemm_from_planes(
            &window(1, 0),
            &w,
            &x,
            false,
            &mut y[..32 * 196]
        ));
        let (x64, w64): (Vec<f64>, Vec<f64>) = (
            x.iter().map(|&v| v as f64).collect(),
            w.iter().map(|&v| v as f64).collect(),
        );
        let mut y64 = vec![0.0f64; 32 * 256];
        assert!(!gemm_from_planes(
            &window(1, 1),
            &w64,
            &x64,
            false,
            &mut y64
        ));
    }
}
