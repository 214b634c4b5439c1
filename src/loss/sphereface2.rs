//! SphereFace2 (Wen et al. 2022, the "C" form): no softmax, one binary problem per class, with a
//! learned bias, as one fused op with a closed-form backward for the cosines and the bias.
//!
//! ```text
//! g(c)  = 2((c + 1)/2)^t − 1                               c clamped to [−1, 1]
//! u_y   = r(g(c_y) − m) + b        u_j = r(g(c_j) + m) + b   (j ≠ y)
//! L_i   = (λ/r) softplus(−u_y) + ((1 − λ)/r) Σ_{j≠y} softplus(u_j)
//! ∂L_i/∂c_y = −λ σ(−u_y) g′(c_y)     ∂L_i/∂c_j = (1 − λ) σ(u_j) g′(c_j)
//! ∂L_i/∂b   = −(λ/r) σ(−u_y) + ((1 − λ)/r) Σ_{j≠y} σ(u_j)
//! g′(c) = t((c + 1)/2)^(t−1)
//! ```
//!
//! The gradient flows through `g` (it is the gradient of the loss as written); the official
//! code computes `g(c) − c` without gradient, so that `∂u/∂c = r` there. Derivations:
//! `docs/derivations.md`, section 9.

use super::{Reduction, check_rows, reduce_rows, reduced_row_weights, row_coefficients};
use crate::kernels::{for_row_blocks, parallel, simd};
use crate::{CustomOp, Element, Error, InputGrad, Labels, Tensor, Var};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// The settings of SphereFace2's loss; [`Default`] gives the paper's and the official code's
/// `λ = 0.7, r = 40, m = 0.4, t = 3`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SphereFace2 {
    /// `λ`, the weight of the positive (target) term against the `C − 1` negatives, in (0, 1).
    pub lambda: f64,
    /// `r`, the scale of the logits (> 0).
    pub scale: f64,
    /// `m`, the additive margin on the similarity `g(c)` (≥ 0).
    pub margin: f64,
    /// `t`, the exponent of the similarity map `g` (≥ 1, so that `g′` stays finite at −1).
    pub t: f64,
}

impl Default for SphereFace2 {
    fn default() -> Self {
        SphereFace2 {
            lambda: 0.7,
            scale: 40.0,
            margin: 0.4,
            t: 3.0,
        }
    }
}

impl SphereFace2 {
    /// The settings, checked.
    ///
    /// # Errors
    /// As [`SphereFace2::validate`].
    pub fn new(lambda: f64, scale: f64, margin: f64, t: f64) -> Result<Self, Error> {
        let loss = SphereFace2 {
            lambda,
            scale,
            margin,
            t,
        };
        loss.validate()?;
        Ok(loss)
    }

    /// Checks every setting against its range.
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] naming the first setting out of range: `λ` outside (0, 1),
    /// `r ≤ 0`, `m < 0`, `t < 1`, or any not finite.
    pub fn validate(&self) -> Result<(), Error> {
        let lambda = self.lambda;
        Error::check(
            "SphereFace2 λ",
            lambda,
            lambda > 0.0 && lambda < 1.0,
            "in (0, 1)",
        )?;
        Error::check(
            "SphereFace2 scale r",
            self.scale,
            self.scale > 0.0,
            "positive",
        )?;
        Error::check(
            "SphereFace2 margin m",
            self.margin,
            self.margin >= 0.0,
            "non-negative",
        )?;
        Error::check(
            "SphereFace2 exponent t",
            self.t,
            self.t >= 1.0,
            "at least 1",
        )
    }

    /// The bias the official code starts from for `classes` classes: the `b` at which
    /// `∂L/∂b = 0` when every cosine is 0, i.e. `λ σ(−u_y) = (1 − λ)(C − 1) σ(u_j)` (positive
    /// and negative terms balanced at the start).
    ///
    /// # Errors
    /// An invalid setting, or fewer than 2 classes ([`Error::InvalidSetting`]).
    pub fn initial_bias(&self, classes: usize) -> Result<f64, Error> {
        self.validate()?;
        Error::check("classes", classes as f64, classes >= 2, "at least 2")?;
        let (lambda, r, m) = (self.lambda, self.scale, self.margin);
        let z = lambda / ((1.0 - lambda) * (classes as f64 - 1.0));
        let g0 = 2.0 * 0.5f64.powf(self.t) - 1.0;
        let (a_y, a_j) = (r * (g0 - m), r * (g0 + m));
        // with w = e^{a_j + b}, E = e^{a_y − a_j}: E·w² + (1 − z)·w − z = 0, whose positive root
        // w = (√((1 − z)² + 4zE) − (1 − z)) / 2E is taken in whichever form does not cancel
        let (d, big_e) = (1.0 - z, (a_y - a_j).exp());
        let root = (d * d + 4.0 * z * big_e).sqrt();
        Ok(if d >= 0.0 {
            (2.0 * z).ln() - a_j - (d + root).ln()
        } else {
            (root - d).ln() - 2f64.ln() - a_y
        })
    }

    pub(crate) fn kernel<F: Element>(&self) -> Binary<F> {
        let f = F::from_f64;
        let whole = self.t.fract() == 0.0 && self.t <= 4.0;
        Binary {
            scale: f(self.scale),
            margin: f(self.margin),
            t: f(self.t),
            whole_t: whole.then_some(self.t as u32),
            target_weight: f(self.lambda / self.scale),
            other_weight: f((1.0 - self.lambda) / self.scale),
        }
    }
}

/// [`SphereFace2`] in element type `F`, ready for the kernels.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Binary<F> {
    scale: F,
    margin: F,
    t: F,
    /// `t` when it is 1, 2, 3 or 4 (the kernels' unrolled cases): powers by multiplication;
    /// `None` for any other `t`, taken by `powf`.
    whole_t: Option<u32>,
    /// `λ/r`.
    target_weight: F,
    /// `(1 − λ)/r`.
    other_weight: F,
}

/// `σ(x) = 1/(1 + e^{−x})`, from `e = e^{−|x|}`: `1/(1 + e)` for `x ≥ 0`, `e/(1 + e)` otherwise;
/// never overflows.
#[inline(always)]
fn sigmoid_from<F: Element>(x: F, e: F) -> F {
    let numerator = if x >= F::ZERO { F::ONE } else { e };
    numerator / (F::ONE + e)
}

/// `softplus(x) = log(1 + eˣ)`, as `max(x, 0) + log(1 + e^{−|x|})`: never overflows.
#[inline(always)]
fn softplus<F: Element>(x: F) -> F {
    x.max(F::ZERO) + (F::ONE + (-x.abs()).exp()).ln()
}

/// Runs `$body` with the const `$n` set to `t` when `t` is a whole number from 1 to 4 (powers
/// by multiplication, unrolled), and to 0 otherwise (`powf`).
macro_rules! with_exponent {
    ($t:expr, $n:ident => $body:expr) => {
        match $t {
            Some(1) => {
                const $n: u32 = 1;
                $body
            }
            Some(2) => {
                const $n: u32 = 2;
                $body
            }
            Some(3) => {
                const $n: u32 = 3;
                $body
            }
            Some(4) => {
                const $n: u32 = 4;
                $body
            }
            _ => {
                const $n: u32 = 0;
                $body
            }
        }
    };
}

/// Accumulators across `LANES` interleaved lanes, so that the compiler vectorises the sums.
const LANES: usize = 16;
/// How many factors `1 + e^{−|u|} ≤ 2` each lane multiplies before one `log`: `2^32` fits f32.
const PRODUCT_RUN: usize = 32;

impl<F: Element> Binary<F> {
    /// `(g(c), g′(c))` with `c` clamped to `[−1, 1]` (slope 0 where the clamp is active);
    /// `N` is `t` when whole (see `with_exponent`), 0 for `powf`.
    #[inline(always)]
    fn similarity<const N: u32>(&self, c: F) -> (F, F) {
        let clamped = c.max(-F::ONE).min(F::ONE);
        let q = (clamped + F::ONE) * F::from_f64(0.5);
        let q_t_minus_1 = if N == 0 {
            q.powf(self.t - F::ONE)
        } else {
            (1..N).fold(F::ONE, |p, _| p * q)
        };
        let inside = if clamped == c { F::ONE } else { F::ZERO };
        let two = F::ONE + F::ONE;
        (
            two * q_t_minus_1 * q - F::ONE,
            inside * self.t * q_t_minus_1,
        )
    }

    /// `(u, du/dc)` of a non-target class: `u_j = r(g(c_j) + m) + b`.
    #[inline(always)]
    fn other_logit<const N: u32>(&self, c: F, bias: F) -> (F, F) {
        let (g, slope) = self.similarity::<N>(c);
        (self.scale * (g + self.margin) + bias, self.scale * slope)
    }

    /// `(u, du/dc)` of the target: `u_y = r(g(c_y) − m) + b`.
    #[inline(always)]
    fn target_logit<const N: u32>(&self, c: F, bias: F) -> (F, F) {
        let (g, slope) = self.similarity::<N>(c);
        (self.scale * (g - self.margin) + bias, self.scale * slope)
    }

    /// `(Σ softplus(u_j), Σ σ(u_j))` over non-target cosines `cs`, in a fixed order. The logs
    /// are taken of products of `PRODUCT_RUN` factors `1 + e^{−|u|}`, one per lane.
    #[inline(always)]
    fn others<const N: u32>(&self, cs: &[F], bias: F) -> (F, F) {
        let (mut linear, mut product, mut sig) =
            ([F::ZERO; LANES], [F::ONE; LANES], [F::ZERO; LANES]);
        let mut logs = F::ZERO;
        let chunks = cs.chunks_exact(LANES);
        let tail = chunks.remainder();
        for (n, chunk) in chunks.enumerate() {
            for l in 0..LANES {
                let (u, _) = self.other_logit::<N>(chunk[l], bias);
                let e = (-u.abs()).exp();
                linear[l] += u.max(F::ZERO);
                product[l] *= F::ONE + e;
                sig[l] += sigmoid_from(u, e);
            }
            if n % PRODUCT_RUN == PRODUCT_RUN - 1 {
                for p in &mut product {
                    logs += p.ln();
                    *p = F::ONE;
                }
            }
        }
        for &c in tail {
            let (u, _) = self.other_logit::<N>(c, bias);
            let e = (-u.abs()).exp();
            linear[0] += u.max(F::ZERO);
            product[0] *= F::ONE + e;
            sig[0] += sigmoid_from(u, e);
        }
        for p in product {
            logs += p.ln();
        }
        let total = |lanes: [F; LANES]| lanes.into_iter().fold(F::ZERO, |a, v| a + v);
        (total(linear) + logs, total(sig))
    }

    /// `(L_i, ∂L_i/∂b)` of one row, or of the part of a row that `row` holds: the target's
    /// term when `y` is `Some` (its place in `row`), the others' terms for every other column.
    #[inline(always)]
    fn row<const N: u32>(&self, row: &[F], y: Option<usize>, bias: F) -> (F, F) {
        let Some(y) = y else {
            let (sp, sig) = self.others::<N>(row, bias);
            return (self.other_weight * sp, self.other_weight * sig);
        };
        let (sp_before, sig_before) = self.others::<N>(&row[..y], bias);
        let (sp_after, sig_after) = self.others::<N>(&row[y + 1..], bias);
        let (u_y, _) = self.target_logit::<N>(row[y], bias);
        let e_y = (-u_y.abs()).exp();
        (
            self.target_weight * softplus(-u_y) + self.other_weight * (sp_before + sp_after),
            self.other_weight * (sig_before + sig_after)
                - self.target_weight * sigmoid_from(-u_y, e_y),
        )
    }

    /// `∂L_i/∂c_j` for every column of one row (or part of a row, as [`Binary::row`]), times
    /// `k`, written or added into `d`.
    #[inline(always)]
    fn row_grad<const N: u32>(
        &self,
        row: &[F],
        y: Option<usize>,
        bias: F,
        k: F,
        d: &mut [F],
        overwrite: bool,
    ) {
        // the weights (λ/r, (1 − λ)/r) times du/dc = r·g′
        let other = k * self.other_weight;
        let at = y.unwrap_or(row.len());
        let (d_before, d_rest) = d.split_at_mut(at);
        let (d_target, d_after) = d_rest.split_at_mut(y.map_or(0, |_| 1));
        let after = (at + 1).min(row.len());
        for (d, cs) in [(d_before, &row[..at]), (d_after, &row[after..])] {
            for (d, &c) in d.iter_mut().zip(cs) {
                let (u, slope) = self.other_logit::<N>(c, bias);
                let v = other * sigmoid_from(u, (-u.abs()).exp()) * slope;
                *d = if overwrite { v } else { *d + v };
            }
        }
        if let Some(y) = y {
            let (u_y, slope) = self.target_logit::<N>(row[y], bias);
            let v = -k * self.target_weight * sigmoid_from(-u_y, (-u_y.abs()).exp()) * slope;
            d_target[0] = if overwrite { v } else { d_target[0] + v };
        }
    }

    /// For each row `r` of a block of cosines `cos` (`[rows, n]`, some of the classes of a
    /// head, the target of row `r` at `targets[r]` when it is one of them): adds the row's part
    /// of `(L_r, ∂L_r/∂b)` to `acc[r]`. SphereFace2 shares nothing between classes, so a row's
    /// loss is the sum of its parts over the blocks.
    pub(super) fn add_block(
        &self,
        cos: &[F],
        n: usize,
        targets: &[Option<usize>],
        bias: F,
        acc: &mut [(F, F)],
    ) {
        with_exponent!(self.whole_t, N => {
            let row_part = |(r, acc): (usize, &mut (F, F))| {
                simd(
                    #[inline(always)]
                    || {
                        let (l, db) = self.row::<N>(&cos[r * n..(r + 1) * n], targets[r], bias);
                        acc.0 += l;
                        acc.1 += db;
                    },
                )
            };
            if parallel(cos.len()) {
                acc.par_iter_mut().enumerate().for_each(row_part);
            } else {
                acc.iter_mut().enumerate().for_each(row_part);
            }
        })
    }

    /// `d = k·∂L_r/∂c` for a block of cosines, as [`Binary::add_block`] takes them.
    pub(super) fn block_grad(
        &self,
        cos: &[F],
        n: usize,
        targets: &[Option<usize>],
        bias: F,
        k: F,
        d: &mut [F],
    ) {
        with_exponent!(self.whole_t, N => {
            let row_grad = |(r, d): (usize, &mut [F])| {
                simd(
                    #[inline(always)]
                    || self.row_grad::<N>(&cos[r * n..(r + 1) * n], targets[r], bias, k, d, true),
                )
            };
            if parallel(cos.len()) {
                d.par_chunks_mut(n).enumerate().for_each(row_grad);
            } else {
                d.chunks_mut(n).enumerate().for_each(row_grad);
            }
        })
    }
}

/// The recorded op: what its backward needs besides the cosines and the bias.
struct SphereFace2Op<F> {
    labels: Vec<usize>,
    kernel: Binary<F>,
    /// Each row's `∂L_i/∂b`, from the forward pass.
    dbias: Vec<F>,
    row_weight: Vec<F>,
    reduction: Reduction,
}

/// SphereFace2's loss of the cosines `cos` (`[B, C]`) with the learned scalar `bias` (one
/// element, any shape), weighted by `weights` (default 1) and reduced: see the module's
/// formula.
///
/// # Errors
/// - [`Error::InvalidSetting`] for a setting of `loss` out of range, or a weight negative or
///   not finite;
/// - [`Error::EmptyBatch`], [`Error::DataLength`], [`Error::LabelOutOfRange`] as
///   [`margin_cross_entropy_with`](super::margin_cross_entropy_with).
///
/// # Panics
/// When `cos` is not rank 2 or `bias` has not exactly one element.
#[track_caller]
pub fn sphereface2_loss<'g, F: Element>(
    cos: Var<'g, F>,
    bias: Var<'g, F>,
    labels: &Labels,
    loss: &SphereFace2,
    reduction: Reduction,
    weights: Option<&[f64]>,
) -> Result<Var<'g, F>, Error> {
    let (batch, row_weight) = check_sphereface2(cos, bias, labels, loss, weights, "sphereface2")?;
    let row_weight = reduced_row_weights(batch, row_weight, reduction);
    let kernel = loss.kernel::<F>();
    let x = cos.value();
    let (data, cols) = (x.data(), x.shape()[1]);
    let b = bias.value().data()[0];
    let rows: Vec<(F, F)> = with_exponent!(kernel.whole_t, N => {
        let row_forward = |r: usize| {
            simd(
                #[inline(always)]
                || kernel.row::<N>(&data[r * cols..(r + 1) * cols], Some(labels.values()[r]), b),
            )
        };
        if parallel(data.len()) {
            (0..batch).into_par_iter().map(row_forward).collect()
        } else {
            (0..batch).map(row_forward).collect()
        }
    });
    drop(x);
    let (losses, dbias): (Vec<F>, Vec<F>) = rows.into_iter().unzip();
    let out = reduce_rows(&losses, &row_weight, reduction);
    let op = SphereFace2Op {
        labels: labels.values().to_vec(),
        kernel,
        dbias,
        row_weight,
        reduction,
    };
    Ok(cos.graph().custom(op, &[cos, bias], out))
}

/// The checks of [`sphereface2_loss`], shared with its composed twin; returns the batch size
/// and the rows' weights.
#[track_caller]
pub(crate) fn check_sphereface2<F: Element>(
    cos: Var<'_, F>,
    bias: Var<'_, F>,
    labels: &Labels,
    loss: &SphereFace2,
    weights: Option<&[f64]>,
    op: &str,
) -> Result<(usize, Vec<f64>), Error> {
    let bias_shape = bias.shape();
    assert!(
        bias_shape.iter().product::<usize>() == 1,
        "{op}: the bias must have one element, found shape {bias_shape:?}"
    );
    check_rows(cos, labels, || loss.validate(), weights, op)
}

impl<F: Element> CustomOp<F> for SphereFace2Op<F> {
    fn name(&self) -> &'static str {
        "sphereface2 loss"
    }

    /// `∂/∂c` row by row (see the module's formula), `∂/∂b = Σ_i k_i ∂L_i/∂b` from the
    /// forward pass's per-row values; `k_i` is the output's gradient times the row's weight.
    fn backward(
        &self,
        inputs: &[&Tensor<F>],
        _output: &Tensor<F>,
        g: &[F],
        grads: &mut [Option<InputGrad<'_, F>>],
    ) {
        let coef = row_coefficients(g, &self.row_weight, self.reduction);
        let (cos, bias) = (inputs[0], inputs[1].data()[0]);
        if let Some(dcos) = &mut grads[0] {
            let cols = cos.shape()[1];
            let overwrite = dcos.is_fresh();
            with_exponent!(self.kernel.whole_t, N => for_row_blocks(
                dcos.data(),
                cols,
                #[inline(always)]
                |r0, block| {
                    for (i, d_row) in block.chunks_mut(cols).enumerate() {
                        let r = r0 + i;
                        let row = &cos.data()[r * cols..(r + 1) * cols];
                        let (y, k) = (self.labels[r], coef[r]);
                        self.kernel.row_grad::<N>(row, Some(y), bias, k, d_row, overwrite);
                    }
                },
            ));
        }
        if let Some(dbias) = &mut grads[1] {
            let total = coef
                .iter()
                .zip(&self.dbias)
                .fold(F::ZERO, |acc, (&k, &d)| acc + k * d);
            dbias.store(0, total);
        }
    }
}
