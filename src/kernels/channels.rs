//! Per-channel arithmetic over `[N, C, inner]` data (NCHW with `inner = H·W`, or `[N, C]` with
//! `inner = 1`): the statistics and affine maps of batch normalisation and the slopes of PReLU.
//! Channel sums run over the items in order, so results never depend on the threads.

use super::{for_row_blocks, lane_sum, parallel, simd, store_grad};
use crate::Element;
use rayon::prelude::*;

/// `out[c] = Σ_n f(n·C + c)` over the `batch` items in order, for each of the `out.len()`
/// channels; `f` receives a plane's index (`plane p` holds elements `p·inner..(p + 1)·inner`).
fn per_channel<F: Element>(
    batch: usize,
    work: usize,
    out: &mut [F],
    f: impl Fn(usize) -> F + Sync + Send,
) {
    let channels = out.len();
    let sum = |(c, o): (usize, &mut F)| {
        *o = simd(
            #[inline(always)]
            || (0..batch).fold(F::ZERO, |s, n| s + f(n * channels + c)),
        )
    };
    if !parallel(work) {
        out.iter_mut().enumerate().for_each(sum);
    } else {
        out.par_iter_mut().enumerate().for_each(sum);
    }
}

/// Each channel's mean and biased variance over its `N·inner` elements (two passes: the mean,
/// then the squared deviations from it).
pub fn channel_mean_var<F: Element>(
    x: &[F],
    batch: usize,
    inner: usize,
    mean: &mut [F],
    var: &mut [F],
) {
    let count = F::from_f64((batch * inner).max(1) as f64);
    let plane = |p: usize| &x[p * inner..][..inner];
    per_channel(batch, x.len(), mean, |p| lane_sum(plane(p), |v| v));
    mean.iter_mut().for_each(|m| *m /= count);
    let channels = mean.len();
    per_channel(batch, x.len(), var, |p| {
        let m = mean[p % channels];
        lane_sum(plane(p), |v| (v - m) * (v - m))
    });
    var.iter_mut().for_each(|v| *v /= count);
}

/// `y = x·scale[c] + shift[c]` for every element of channel `c`.
pub fn channel_affine<F: Element>(x: &[F], inner: usize, scale: &[F], shift: &[F], out: &mut [F]) {
    let channels = scale.len();
    for_row_blocks(out, inner.max(1), |first, block| {
        for (k, y) in block.chunks_mut(inner.max(1)).enumerate() {
            let p = first + k;
            let c = p % channels;
            let (a, b) = (scale[c], shift[c]);
            let xp = &x[p * inner..][..inner];
            y.iter_mut().zip(xp).for_each(|(y, &x)| *y = x * a + b);
        }
    });
}

/// Each channel's `Σ g` and `Σ g·(x − μ_c)·r_c` (the gradient's sum, and its correlation with
/// the normalised input `x̂`).
#[allow(clippy::too_many_arguments)]
pub fn channel_grad_sums<F: Element>(
    g: &[F],
    x: &[F],
    batch: usize,
    inner: usize,
    mean: &[F],
    rstd: &[F],
    sum_g: &mut [F],
    sum_g_xhat: &mut [F],
) {
    let channels = mean.len();
    per_channel(batch, x.len(), sum_g, |p| {
        lane_sum(&g[p * inner..][..inner], |v| v)
    });
    per_channel(batch, x.len(), sum_g_xhat, |p| {
        let c = p % channels;
        let (m, r) = (mean[c], rstd[c]);
        let (gp, xp) = (&g[p * inner..][..inner], &x[p * inner..][..inner]);
        gp.iter()
            .zip(xp)
            .fold(F::ZERO, |s, (&g, &x)| s + g * (x - m) * r)
    });
}

/// `dx (+)= a[c]·g + b[c]·(x − μ[c]) + d[c]` for every element of channel `c`: the input
/// gradient of batch normalisation (see the op for `a`, `b`, `d`); written into a fresh `dx`
/// or added.
#[allow(clippy::too_many_arguments)]
pub fn channel_affine_grad<F: Element>(
    g: &[F],
    x: &[F],
    inner: usize,
    a: &[F],
    b: &[F],
    mean: &[F],
    d: &[F],
    dx: &mut [F],
    fresh: bool,
) {
    let channels = a.len();
    for_row_blocks(dx, inner.max(1), |first, block| {
        for (k, dxp) in block.chunks_mut(inner.max(1)).enumerate() {
            let p = first + k;
            let c = p % channels;
            let (gp, xp) = (&g[p * inner..][..inner], &x[p * inner..][..inner]);
            for ((dx, &g), &x) in dxp.iter_mut().zip(gp).zip(xp) {
                store_grad(dx, a[c] * g + b[c] * (x - mean[c]) + d[c], fresh);
            }
        }
    });
}

/// The channel of plane `p` for slopes `a`: its own with one slope per channel, the shared one
/// otherwise.
#[inline]
fn slope_of<F: Element>(a: &[F], channels: usize, p: usize) -> F {
    if a.len() == 1 { a[0] } else { a[p % channels] }
}

/// PReLU: `y = x` for `x > 0`, `a_c·x` otherwise, over `channels` channels of `inner`
/// elements (`a` has one slope per channel, or one shared).
pub fn prelu<F: Element>(x: &[F], channels: usize, inner: usize, a: &[F], out: &mut [F]) {
    for_row_blocks(out, inner.max(1), |first, block| {
        for (k, y) in block.chunks_mut(inner.max(1)).enumerate() {
            let p = first + k;
            let s = slope_of(a, channels, p);
            let xp = &x[p * inner..][..inner];
            y.iter_mut()
                .zip(xp)
                .for_each(|(y, &x)| *y = if x > F::ZERO { x } else { s * x });
        }
    });
}

/// PReLU's input gradient: `∂x (+)= g` where `x > 0`, `a_c·g` elsewhere.
pub fn prelu_grad_input<F: Element>(
    g: &[F],
    x: &[F],
    channels: usize,
    inner: usize,
    a: &[F],
    dx: &mut [F],
    fresh: bool,
) {
    for_row_blocks(dx, inner.max(1), |first, block| {
        for (k, dxp) in block.chunks_mut(inner.max(1)).enumerate() {
            let p = first + k;
            let s = slope_of(a, channels, p);
            let (gp, xp) = (&g[p * inner..][..inner], &x[p * inner..][..inner]);
            for ((d, &g), &x) in dxp.iter_mut().zip(gp).zip(xp) {
                store_grad(d, if x > F::ZERO { g } else { s * g }, fresh);
            }
        }
    });
}

/// PReLU's slope gradient: `∂a_c = Σ_{x ≤ 0 in channel c} g·x` (per channel), or its sum over
/// the channels in order for one shared slope; written into a fresh `da` or added.
pub fn prelu_grad_slope<F: Element>(
    g: &[F],
    x: &[F],
    batch: usize,
    channels: usize,
    inner: usize,
    da: &mut [F],
    fresh: bool,
) {
    let mut sums = vec![F::ZERO; channels];
    per_channel(batch, x.len(), &mut sums, |p| {
        let (gp, xp) = (&g[p * inner..][..inner], &x[p * inner..][..inner]);
        gp.iter().zip(xp).fold(
            F::ZERO,
            |s, (&g, &x)| {
                if x > F::ZERO { s } else { s + g * x }
            },
        )
    });
    if da.len() == 1 {
        let total = sums.iter().fold(F::ZERO, |s, &v| s + v);
        store_grad(&mut da[0], total, fresh);
    } else {
        da.iter_mut()
            .zip(&sums)
            .for_each(|(d, &s)| store_grad(d, s, fresh));
    }
}
