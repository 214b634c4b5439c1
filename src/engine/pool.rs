//! Pooling over the planes of an `[N, C, H, W]` input: `max_pool2d`, `avg_pool2d` and the
//! global average, each recorded as a [`CustomOp`] with its backward beside it.

use super::conv::dims4;
use super::{CustomOp, InputGrad, Var};
use crate::kernels::{self, Window};
use crate::{Element, Tensor};
use serde::{Deserialize, Serialize};

/// Window, stride and padding of a 2-D pooling (`[rows, cols]`), as PyTorch's `max_pool2d` and
/// `avg_pool2d` take them; the stride defaults to the window.
///
/// ```
/// use margrad::Pool2dOptions;
/// let o = Pool2dOptions::new(3).stride(2).padding(1);
/// assert_eq!((o.kernel, o.stride, o.padding), ([3, 3], [2, 2], [1, 1]));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pool2dOptions {
    /// The window.
    pub kernel: [usize; 2],
    /// The step between windows.
    pub stride: [usize; 2],
    /// Added on both sides of each axis (at most half the window).
    pub padding: [usize; 2],
}

impl Pool2dOptions {
    /// A `k×k` window moved by `k` (non-overlapping), no padding.
    pub fn new(k: usize) -> Self {
        Pool2dOptions {
            kernel: [k, k],
            stride: [k, k],
            padding: [0, 0],
        }
    }
    /// The same with stride `s` on both axes.
    pub fn stride(self, s: usize) -> Self {
        Pool2dOptions {
            stride: [s, s],
            ..self
        }
    }
    /// The same with padding `p` on both axes.
    pub fn padding(self, p: usize) -> Self {
        Pool2dOptions {
            padding: [p, p],
            ..self
        }
    }
}

/// The window over `[N, C, H, W]` input `xs`, checked (panics at the caller's line).
#[track_caller]
fn pool_window(op: &str, xs: &[usize], options: Pool2dOptions) -> ([usize; 4], Window) {
    let Some([n, c, h, w]) = dims4(xs) else {
        panic!("shape mismatch in {op}: input {xs:?} (must be rank 4: [N, C, H, W])")
    };
    let window = Window {
        input: [h, w],
        kernel: options.kernel,
        stride: options.stride,
        padding: options.padding,
        dilation: [1, 1],
    };
    let Some([oh, ow]) = window.output() else {
        panic!(
            "shape mismatch in {op}: input {xs:?}: the window {:?} is larger than the input \
             padded by {:?}, or a stride is zero (stride {:?})",
            options.kernel, options.padding, options.stride
        )
    };
    assert!(
        (0..2).all(|i| options.padding[i] <= options.kernel[i] / 2),
        "{op}: padding {:?} must be at most half the window {:?} (input {xs:?})",
        options.padding,
        options.kernel
    );
    ([n, c, oh, ow], window)
}

/// The recorded max pooling; the backward finds each output's element again from the input
/// and the output, so nothing per element is kept.
struct MaxPool {
    window: Window,
}

impl<F: Element> CustomOp<F> for MaxPool {
    fn name(&self) -> &'static str {
        "max_pool2d"
    }

    fn backward(
        &self,
        inputs: &[&Tensor<F>],
        output: &Tensor<F>,
        g: &[F],
        grads: &mut [Option<InputGrad<'_, F>>],
    ) {
        if let Some(dx) = &mut grads[0] {
            let fresh = dx.is_fresh();
            let (x, y) = (inputs[0].data(), output.data());
            kernels::max_pool2d_grad(&self.window, x, y, g, dx.data(), fresh);
        }
    }
}

/// The recorded average pooling.
struct AvgPool {
    window: Window,
}

impl<F: Element> CustomOp<F> for AvgPool {
    fn name(&self) -> &'static str {
        "avg_pool2d"
    }

    fn backward(
        &self,
        _: &[&Tensor<F>],
        _: &Tensor<F>,
        g: &[F],
        grads: &mut [Option<InputGrad<'_, F>>],
    ) {
        if let Some(dx) = &mut grads[0] {
            let fresh = dx.is_fresh();
            kernels::avg_pool2d_grad(&self.window, g, dx.data(), fresh);
        }
    }
}

/// The recorded global average pooling: the plane size.
struct GlobalAvgPool {
    plane: usize,
}

impl<F: Element> CustomOp<F> for GlobalAvgPool {
    fn name(&self) -> &'static str {
        "global_avg_pool2d"
    }

    fn backward(
        &self,
        _: &[&Tensor<F>],
        _: &Tensor<F>,
        g: &[F],
        grads: &mut [Option<InputGrad<'_, F>>],
    ) {
        if let Some(dx) = &mut grads[0] {
            let fresh = dx.is_fresh();
            kernels::plane_means_grad(g, self.plane, dx.data(), fresh);
        }
    }
}

impl<'g, F: Element> Var<'g, F> {
    /// Max pooling of an `[N, C, H, W]` input over `k×k` windows:
    /// `y[n, c, oy, ox] = max_{i, j} x[n, c, s·oy + i − p, s·ox + j − p]`, the padding never
    /// chosen. The gradient goes to the element taken: on ties the first in scan order (row by
    /// row), so the result is deterministic; a NaN counts as the maximum and propagates.
    ///
    /// # Panics
    /// When the input is not rank 4, the window is larger than the padded input, a stride is
    /// zero, or the padding exceeds half the window.
    #[track_caller]
    pub fn max_pool2d(self, options: Pool2dOptions) -> Var<'g, F> {
        let xs = self.shape();
        let (out_shape, window) = pool_window("max_pool2d", &xs, options);
        let mut out = Tensor::for_overwrite(&out_shape);
        kernels::max_pool2d(&window, self.value().data(), out.data_mut());
        self.graph().custom(MaxPool { window }, &[self], out)
    }

    /// Average pooling of an `[N, C, H, W]` input over `k×k` windows:
    /// `y[n, c, oy, ox] = (1/(kh·kw)) Σ_{i, j} x[n, c, s·oy + i − p, s·ox + j − p]`. The padding
    /// counts as zeros in the average: the divisor is always `kh·kw`, as PyTorch's default
    /// `count_include_pad=True`.
    ///
    /// # Panics
    /// As [`Var::max_pool2d`].
    #[track_caller]
    pub fn avg_pool2d(self, options: Pool2dOptions) -> Var<'g, F> {
        let xs = self.shape();
        let (out_shape, window) = pool_window("avg_pool2d", &xs, options);
        let mut out = Tensor::for_overwrite(&out_shape);
        kernels::avg_pool2d(&window, self.value().data(), out.data_mut());
        self.graph().custom(AvgPool { window }, &[self], out)
    }

    /// Global average pooling: `[N, C, H, W] → [N, C]`, `y[n, c] = mean_{h, w} x[n, c, h, w]`
    /// (PyTorch's `adaptive_avg_pool2d(x, 1)` flattened).
    ///
    /// # Panics
    /// When the input is not rank 4.
    #[track_caller]
    pub fn global_avg_pool2d(self) -> Var<'g, F> {
        let xs = self.shape();
        let Some([n, c, h, w]) = dims4(&xs) else {
            panic!(
                "shape mismatch in global_avg_pool2d: input {xs:?} (must be rank 4: [N, C, H, W])"
            )
        };
        let mut out = Tensor::for_overwrite(&[n, c]);
        kernels::plane_means(self.value().data(), h * w, out.data_mut());
        self.graph()
            .custom(GlobalAvgPool { plane: h * w }, &[self], out)
    }
}
