//! PReLU, `y = x` for `x > 0` and `a_c·x` otherwise, with a learned slope per channel
//! (dimension 1) or one shared: a [`CustomOp`] with its backward,
//! `∂x = g` (x > 0) or `a_c·g`, and `∂a_c = Σ_{x ≤ 0} g·x`.

use super::{CustomOp, InputGrad, Var};
use crate::kernels;
use crate::{Element, Tensor};

/// The recorded PReLU: how the input splits into channels.
struct Prelu {
    batch: usize,
    channels: usize,
    inner: usize,
}

impl<F: Element> CustomOp<F> for Prelu {
    fn name(&self) -> &'static str {
        "prelu"
    }

    fn backward(
        &self,
        inputs: &[&Tensor<F>],
        _: &Tensor<F>,
        g: &[F],
        grads: &mut [Option<InputGrad<'_, F>>],
    ) {
        let (x, a) = (inputs[0].data(), inputs[1].data());
        let Prelu {
            batch,
            channels,
            inner,
        } = *self;
        if let Some(dx) = &mut grads[0] {
            let fresh = dx.is_fresh();
            kernels::prelu_grad_input(g, x, channels, inner, a, dx.data(), fresh);
        }
        if let Some(da) = &mut grads[1] {
            let fresh = da.is_fresh();
            kernels::prelu_grad_slope(g, x, batch, channels, inner, da.data(), fresh);
        }
    }
}

impl<'g, F: Element> Var<'g, F> {
    /// PReLU: `y = x` where `x > 0`, `a_c·x` elsewhere, with `slope` of shape `[C]` (one per
    /// channel, dimension 1 of an `[N, C, …]` input) or `[1]` (shared, any input).
    ///
    /// # Panics
    /// When `slope` is neither `[1]` nor `[C]` of a rank-2-or-more input.
    #[track_caller]
    pub fn prelu(self, slope: Var<'g, F>) -> Var<'g, F> {
        let (xs, a) = (self.shape(), slope.shape());
        let op = if a == [1] {
            Prelu {
                batch: xs.iter().product(),
                channels: 1,
                inner: 1,
            }
        } else {
            assert!(
                xs.len() >= 2 && a == [xs[1]],
                "shape mismatch in prelu: input {xs:?}, slope {a:?} (the slope must be [1] or \
                 [C] for an [N, C, …] input)"
            );
            Prelu {
                batch: xs[0],
                channels: xs[1],
                inner: xs[2..].iter().product(),
            }
        };
        let mut out = Tensor::for_overwrite(&xs);
        kernels::prelu(
            self.value().data(),
            op.channels,
            op.inner,
            slope.value().data(),
            out.data_mut(),
        );
        self.graph().custom(op, &[self, slope], out)
    }
}
