//! Pooling over the `H×W` planes of an NCHW tensor: each plane is pooled on its own, so the
//! planes are spread over the threads and results never depend on their number.

use super::{CHUNK, Window, for_row_blocks, lane_sum, parallel, simd, store_grad};
use crate::Element;
use rayon::prelude::*;

/// The input positions (flat, in the plane) that output `(oy, ox)`'s window covers, row by
/// row; taps in the padding are skipped.
#[inline]
fn taps(window: &Window, oy: usize, ox: usize) -> impl Iterator<Item = usize> + '_ {
    let [h, w] = window.input;
    let [kh, kw] = window.kernel;
    let row = move |i: usize| {
        (oy * window.stride[0] + i * window.dilation[0]).checked_sub(window.padding[0])
    };
    let col = move |j: usize| {
        (ox * window.stride[1] + j * window.dilation[1]).checked_sub(window.padding[1])
    };
    (0..kh)
        .filter_map(move |i| row(i).filter(|&y| y < h))
        .flat_map(move |y| {
            (0..kw).filter_map(move |j| col(j).filter(|&x| x < w).map(|x| y * w + x))
        })
}

/// Whether `v` displaces `best` as a window's maximum, scanning in order: it is larger, or it
/// is the first NaN (a NaN is the maximum, so that it propagates). Equal values keep the first.
#[inline(always)]
#[allow(clippy::eq_op)]
fn displaces<F: Element>(best: F, v: F) -> bool {
    best == best && (v > best || v != v)
}

/// The larger of two window elements in scan order, `a` first (see [`displaces`]).
#[inline(always)]
fn pick<F: Element>(a: F, b: F) -> F {
    if displaces(a, b) { b } else { a }
}

/// Whether the window is 2×2, moved by 2, without padding: the pooling of most CNNs, which
/// has a loop of its own.
fn is_two_by_two(window: &Window) -> bool {
    window.kernel == [2, 2]
        && window.stride == [2, 2]
        && window.padding == [0, 0]
        && window.dilation == [1, 1]
}

/// Calls `f(input_plane, output_plane)` on each plane, in parallel when `x` is large.
fn for_planes<F: Element>(
    window: &Window,
    x: &[F],
    out: &mut [F],
    f: impl Fn(&[F], &mut [F]) + Sync + Send,
) {
    let plane = window.input[0] * window.input[1];
    let out_plane = window.output_len();
    if out_plane == 0 {
        return;
    }
    let per_block = (CHUNK / out_plane).max(1);
    let run = |(b, block): (usize, &mut [F])| {
        simd(
            #[inline(always)]
            || {
                for (k, y) in block.chunks_mut(out_plane).enumerate() {
                    f(&x[(b * per_block + k) * plane..][..plane], y);
                }
            },
        )
    };
    if !parallel(x.len()) {
        out.chunks_mut(per_block * out_plane)
            .enumerate()
            .for_each(run);
    } else {
        out.par_chunks_mut(per_block * out_plane)
            .enumerate()
            .for_each(run);
    }
}

/// `y[p, oy, ox] = max` over the window of plane `p` (padding is −∞, never chosen). The
/// element taken is the first maximum in scan order (row by row), or the first NaN, so that
/// it propagates; [`max_pool2d_grad`] finds the same element again from `x` and `y`.
pub fn max_pool2d<F: Element>(window: &Window, x: &[F], out: &mut [F]) {
    let [oh, ow] = window.output().expect("a checked window");
    let w = window.input[1];
    if is_two_by_two(window) {
        for_planes(window, x, out, |xp, y| {
            for (oy, y) in y.chunks_exact_mut(ow).enumerate() {
                let (top, bottom) = (
                    &xp[2 * oy * w..][..2 * ow],
                    &xp[(2 * oy + 1) * w..][..2 * ow],
                );
                for ((y, t), b) in y
                    .iter_mut()
                    .zip(top.chunks_exact(2))
                    .zip(bottom.chunks_exact(2))
                {
                    // scan order: the top pair, then the bottom pair
                    *y = pick(pick(t[0], t[1]), pick(b[0], b[1]));
                }
            }
        });
        return;
    }
    for_planes(window, x, out, |xp, y| {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut taps = taps(window, oy, ox).map(|t| xp[t]);
                let first = taps.next().expect("every window holds an input element");
                y[oy * ow + ox] = taps.fold(first, pick);
            }
        }
    });
}

/// `∂x[p, t] += ∂y[p, o]` where `t` is the element output `o` took: the first in scan order
/// equal to `y[p, o]` (the first NaN when `y` is NaN), which is the one [`max_pool2d`]
/// chose. `dx` is zeroed first when `fresh`.
pub fn max_pool2d_grad<F: Element>(
    window: &Window,
    x: &[F],
    y: &[F],
    dy: &[F],
    dx: &mut [F],
    fresh: bool,
) {
    let plane = window.input[0] * window.input[1];
    let [oh, ow] = window.output().expect("a checked window");
    let out_plane = oh * ow;
    #[allow(clippy::eq_op)]
    let taken = |v: F, best: F| v == best || (best != best && v != v);
    let [h, w] = window.input;
    if is_two_by_two(window) {
        // every element is in at most one window: each is written once, unless the plane has
        // an odd row or column, which no window covers
        let overwrite = fresh && h % 2 == 0 && w % 2 == 0;
        for_row_blocks(dx, plane, |first, block| {
            if fresh && !overwrite {
                block.fill(F::ZERO);
            }
            for (k, dxp) in block.chunks_mut(plane).enumerate() {
                let p = first + k;
                let xp = &x[p * plane..][..plane];
                let (g, yp) = (
                    &dy[p * out_plane..][..out_plane],
                    &y[p * out_plane..][..out_plane],
                );
                for oy in 0..oh {
                    let (top, rest) = dxp[2 * oy * w..].split_at_mut(w);
                    let bottom = &mut rest[..w];
                    let (xt, xb) = (&xp[2 * oy * w..][..w], &xp[(2 * oy + 1) * w..][..w]);
                    for ox in 0..ow {
                        let (best, g) = (yp[oy * ow + ox], g[oy * ow + ox]);
                        let j = 2 * ox;
                        // the first of the four, in scan order, that the forward took
                        let t0 = taken(xt[j], best);
                        let t1 = !t0 && taken(xt[j + 1], best);
                        let t2 = !(t0 || t1) && taken(xb[j], best);
                        let t3 = !(t0 || t1 || t2);
                        let share = |t: bool| if t { g } else { F::ZERO };
                        store_grad(&mut top[j], share(t0), overwrite);
                        store_grad(&mut top[j + 1], share(t1), overwrite);
                        store_grad(&mut bottom[j], share(t2), overwrite);
                        store_grad(&mut bottom[j + 1], share(t3), overwrite);
                    }
                }
            }
        });
        return;
    }
    for_row_blocks(dx, plane, |first, block| {
        if fresh {
            block.fill(F::ZERO);
        }
        for (k, dxp) in block.chunks_mut(plane).enumerate() {
            let p = first + k;
            let xp = &x[p * plane..][..plane];
            let (g, yp) = (
                &dy[p * out_plane..][..out_plane],
                &y[p * out_plane..][..out_plane],
            );
            for oy in 0..oh {
                for ox in 0..ow {
                    let (best, g) = (yp[oy * ow + ox], g[oy * ow + ox]);
                    let t = taps(window, oy, ox).find(|&t| taken(xp[t], best));
                    dxp[t.expect("the maximum is one of the window's elements")] += g;
                }
            }
        }
    });
}

/// `y[p, o] = Σ_window x / (kh·kw)`: the average over the window, the padding counted as
/// zeros (PyTorch's `count_include_pad=True`).
pub fn avg_pool2d<F: Element>(window: &Window, x: &[F], out: &mut [F]) {
    let [oh, ow] = window.output().expect("a checked window");
    let plane = window.input[0] * window.input[1];
    let inv = F::ONE / F::from_f64((window.kernel[0] * window.kernel[1]) as f64);
    for_row_blocks(out, oh * ow, |first, block| {
        for (k, y) in block.chunks_mut(oh * ow).enumerate() {
            let xp = &x[(first + k) * plane..][..plane];
            for oy in 0..oh {
                for ox in 0..ow {
                    let total = taps(window, oy, ox).fold(F::ZERO, |s, t| s + xp[t]);
                    y[oy * ow + ox] = total * inv;
                }
            }
        }
    });
}

/// `∂x[p, t] += ∂y[p, o] / (kh·kw)` for every tap `t` of every window `o`. `dx` is zeroed
/// first when `fresh`.
pub fn avg_pool2d_grad<F: Element>(window: &Window, dy: &[F], dx: &mut [F], fresh: bool) {
    let [oh, ow] = window.output().expect("a checked window");
    let plane = window.input[0] * window.input[1];
    let inv = F::ONE / F::from_f64((window.kernel[0] * window.kernel[1]) as f64);
    for_row_blocks(dx, plane, |first, block| {
        if fresh {
            block.fill(F::ZERO);
        }
        for (k, dxp) in block.chunks_mut(plane).enumerate() {
            let g = &dy[(first + k) * oh * ow..][..oh * ow];
            for oy in 0..oh {
                for ox in 0..ow {
                    let share = g[oy * ow + ox] * inv;
                    taps(window, oy, ox).for_each(|t| dxp[t] += share);
                }
            }
        }
    });
}

/// `y[p] = mean(x[p, ·])` over each plane of `plane` elements.
pub fn plane_means<F: Element>(x: &[F], plane: usize, out: &mut [F]) {
    let inv = F::ONE / F::from_f64(plane.max(1) as f64);
    let mean = |(p, y): (usize, &mut F)| {
        *y = simd(
            #[inline(always)]
            || lane_sum(&x[p * plane..][..plane], |v| v),
        ) * inv
    };
    if !parallel(x.len()) {
        out.iter_mut().enumerate().for_each(mean);
    } else {
        out.par_iter_mut().enumerate().for_each(mean);
    }
}

/// `∂x[p, ·] (+)= ∂y[p] / plane`: the gradient of [`plane_means`], written into a fresh `dx`
/// or added.
pub fn plane_means_grad<F: Element>(dy: &[F], plane: usize, dx: &mut [F], fresh: bool) {
    let inv = F::ONE / F::from_f64(plane.max(1) as f64);
    for_row_blocks(dx, plane, |first, block| {
        for (k, dxp) in block.chunks_mut(plane).enumerate() {
            let share = dy[first + k] * inv;
            dxp.iter_mut().for_each(|d| store_grad(d, share, fresh));
        }
    });
}
