//! Batch normalisation over dimension 1 of an `[N, C, …]` input (`[N, C]`, `[N, C, L]`,
//! `[N, C, H, W]`), one fused [`CustomOp`] with its closed-form backward.
//!
//! With `x̂ = (x − μ_c)·r_c`, `r_c = 1/√(σ²_c + eps)`: `y = γ_c·x̂ + β_c`. Training uses the
//! batch's mean and biased variance over the `M = N·(H·W)` elements of each channel, and its
//! backward carries the statistics' own dependence on `x`:
//! `∂x = γ_c·r_c·(g − Σg/M − x̂·Σ(g·x̂)/M)`. Evaluation uses given (running) statistics, so
//! `∂x = γ_c·r_c·g`. In both, `∂γ_c = Σ g·x̂` and `∂β_c = Σ g`.

use super::{CustomOp, InputGrad, Var};
use crate::kernels;
use crate::{Element, Tensor};

/// A batch's per-channel statistics, as [`Var::batch_norm_train`] measured them.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchStatistics<F: Element> {
    /// Each channel's mean, `[C]`.
    pub mean: Tensor<F>,
    /// Each channel's biased variance (divided by `M`), `[C]`.
    pub var: Tensor<F>,
    /// The elements per channel, `M = N·H·W`.
    pub count: usize,
}

/// The recorded normalisation: the statistics used and whether they were the batch's.
struct BatchNorm<F> {
    mean: Vec<F>,
    rstd: Vec<F>,
    batch: usize,
    inner: usize,
    training: bool,
}

impl<F: Element> CustomOp<F> for BatchNorm<F> {
    fn name(&self) -> &'static str {
        "batch_norm"
    }

    fn backward(
        &self,
        inputs: &[&Tensor<F>],
        _: &Tensor<F>,
        g: &[F],
        grads: &mut [Option<InputGrad<'_, F>>],
    ) {
        let (x, gamma) = (inputs[0].data(), inputs[1].data());
        let channels = self.mean.len();
        let (mut sum_g, mut sum_gx) = (vec![F::ZERO; channels], vec![F::ZERO; channels]);
        kernels::channel_grad_sums(
            g,
            x,
            self.batch,
            self.inner,
            &self.mean,
            &self.rstd,
            &mut sum_g,
            &mut sum_gx,
        );
        if let Some(dx) = &mut grads[0] {
            let m = F::from_f64((self.batch * self.inner).max(1) as f64);
            let a: Vec<F> = gamma.iter().zip(&self.rstd).map(|(&g, &r)| g * r).collect();
            let (b, d): (Vec<F>, Vec<F>) = if self.training {
                let b = (0..channels).map(|c| -a[c] * self.rstd[c] * sum_gx[c] / m);
                let d = (0..channels).map(|c| -a[c] * sum_g[c] / m);
                (b.collect(), d.collect())
            } else {
                (vec![F::ZERO; channels], vec![F::ZERO; channels])
            };
            let fresh = dx.is_fresh();
            kernels::channel_affine_grad(
                g,
                x,
                self.inner,
                &a,
                &b,
                &self.mean,
                &d,
                dx.data(),
                fresh,
            );
        }
        for (slot, sums) in [(1, &sum_gx), (2, &sum_g)] {
            if let Some(d) = &mut grads[slot] {
                for (c, &s) in sums.iter().enumerate() {
                    d.store(c, s);
                }
            }
        }
    }
}

impl<'g, F: Element> Var<'g, F> {
    /// Batch normalisation with the batch's statistics, per channel (dimension 1) over every
    /// other dimension: `y = γ_c·(x − μ_c)/√(σ²_c + eps) + β_c`, with `μ_c` and the biased
    /// variance `σ²_c` over the batch. Returns the output and the statistics (for running
    /// averages).
    ///
    /// # Panics
    /// When `self` has rank below 2, `weight` or `bias` is not `[C]`, or `eps ≤ 0`.
    #[track_caller]
    pub fn batch_norm_train(
        self,
        weight: Var<'g, F>,
        bias: Var<'g, F>,
        eps: F,
    ) -> (Var<'g, F>, BatchStatistics<F>) {
        let (batch, channels, inner) = self.norm_dims(weight, bias, eps);
        let (mut mean, mut var) = (vec![F::ZERO; channels], vec![F::ZERO; channels]);
        kernels::channel_mean_var(self.value().data(), batch, inner, &mut mean, &mut var);
        let y = self.batch_norm_with(weight, bias, mean.clone(), &var, eps, true);
        let stats = BatchStatistics {
            mean: Tensor::from_vec(mean, &[channels]).expect("one per channel"),
            var: Tensor::from_vec(var, &[channels]).expect("one per channel"),
            count: batch * inner,
        };
        (y, stats)
    }

    /// Batch normalisation with given statistics (the running ones, when evaluating):
    /// `y = γ_c·(x − mean_c)/√(var_c + eps) + β_c`; the statistics receive no gradient.
    ///
    /// # Panics
    /// As [`Var::batch_norm_train`], and when `mean` or `var` is not `[C]`.
    #[track_caller]
    pub fn batch_norm_eval(
        self,
        weight: Var<'g, F>,
        bias: Var<'g, F>,
        mean: &Tensor<F>,
        var: &Tensor<F>,
        eps: F,
    ) -> Var<'g, F> {
        let (_, channels, _) = self.norm_dims(weight, bias, eps);
        assert!(
            mean.shape() == [channels] && var.shape() == [channels],
            "shape mismatch in batch_norm: input {:?}, mean {:?}, var {:?} (both must be [{channels}])",
            self.shape(),
            mean.shape(),
            var.shape()
        );
        self.batch_norm_with(weight, bias, mean.data().to_vec(), var.data(), eps, false)
    }

    /// `(N, C, inner)` of the input, its parameters checked.
    #[track_caller]
    fn norm_dims(self, weight: Var<'g, F>, bias: Var<'g, F>, eps: F) -> (usize, usize, usize) {
        let xs = self.shape();
        assert!(
            xs.len() >= 2,
            "shape mismatch in batch_norm: input {xs:?} (must be [N, C, …], rank 2 or more)"
        );
        let (ws, bs) = (weight.shape(), bias.shape());
        assert!(
            ws == [xs[1]] && bs == [xs[1]],
            "shape mismatch in batch_norm: input {xs:?}, weight {ws:?}, bias {bs:?} (both must be [{}])",
            xs[1]
        );
        assert!(
            eps > F::ZERO,
            "batch_norm: eps must be positive, found {eps}"
        );
        (xs[0], xs[1], xs[2..].iter().product())
    }

    fn batch_norm_with(
        self,
        weight: Var<'g, F>,
        bias: Var<'g, F>,
        mean: Vec<F>,
        var: &[F],
        eps: F,
        training: bool,
    ) -> Var<'g, F> {
        let xs = self.shape();
        let (batch, inner) = (xs[0], xs[2..].iter().product());
        let rstd: Vec<F> = var.iter().map(|&v| F::ONE / (v + eps).sqrt()).collect();
        let (gamma, beta) = (weight.value(), bias.value());
        let scale: Vec<F> = gamma
            .data()
            .iter()
            .zip(&rstd)
            .map(|(&g, &r)| g * r)
            .collect();
        let shift: Vec<F> = (0..mean.len())
            .map(|c| beta.data()[c] - mean[c] * scale[c])
            .collect();
        let mut out = Tensor::for_overwrite(&xs);
        kernels::channel_affine(self.value().data(), inner, &scale, &shift, out.data_mut());
        let op = BatchNorm {
            mean,
            rstd,
            batch,
            inner,
            training,
        };
        self.graph().custom(op, &[self, weight, bias], out)
    }
}
