//! Pooling over the `H×W` planes of an NCHW tensor: each plane is pooled on its own, so the
//! planes are spread over the threads and results never depend on their number.

use super::{Window, for_row_blocks, lane_sum, parallel, simd, store_grad};
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

/// `y[p, oy, ox] = max` over the window of plane `p` (padding is −∞, never chosen), with the
/// flat position of the maximum in `argmax`: the first in scan order on ties; a NaN is the
/// maximum (the first NaN), so that it propagates.
pub fn max_pool2d<F: Element>(window: &Window, x: &[F], out: &mut [F], argmax: &mut [usize]) {
    let [oh, ow] = window.output().expect("a checked window");
    let (plane, out_plane) = (window.input[0] * window.input[1], oh * ow);
    let pool = |(p, (y, arg)): (usize, (&mut [F], &mut [usize]))| {
        let xp = &x[p * plane..][..plane];
        for oy in 0..oh {
            for ox in 0..ow {
                let mut best: Option<(usize, F)> = None;
                for t in taps(window, oy, ox) {
                    let v = xp[t];
                    let better = match best {
                        None => true,
                        #[allow(clippy::eq_op)]
                        Some((_, b)) => b == b && (v > b || v != v),
                    };
                    if better {
                        best = Some((t, v));
                    }
                }
                let (t, v) = best.expect("every window holds an input element");
                y[oy * ow + ox] = v;
                arg[oy * ow + ox] = t;
            }
        }
    };
    if out_plane == 0 {
        return;
    }
    let planes = out.chunks_mut(out_plane).zip(argmax.chunks_mut(out_plane));
    if !parallel(x.len()) {
        planes.enumerate().for_each(pool);
    } else {
        out.par_chunks_mut(out_plane)
            .zip(argmax.par_chunks_mut(out_plane))
            .enumerate()
            .for_each(pool);
    }
}

/// `∂x[p, argmax[p, o]] += ∂y[p, o]`: each output's gradient to the element it took. `dx` is
/// zeroed first when `fresh`.
pub fn max_pool2d_grad<F: Element>(
    window: &Window,
    dy: &[F],
    argmax: &[usize],
    dx: &mut [F],
    fresh: bool,
) {
    let plane = window.input[0] * window.input[1];
    let [oh, ow] = window.output().expect("a checked window");
    let out_plane = oh * ow;
    for_row_blocks(dx, plane, |first, block| {
        if fresh {
            block.fill(F::ZERO);
        }
        for (k, dxp) in block.chunks_mut(plane).enumerate() {
            let p = first + k;
            let (g, arg) = (
                &dy[p * out_plane..][..out_plane],
                &argmax[p * out_plane..][..out_plane],
            );
            for (&g, &t) in g.iter().zip(arg) {
                dxp[t] += g;
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
