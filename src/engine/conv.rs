//! Convolutions, `conv2d` over NCHW and `conv1d` over NCL (the same op on planes of height 1),
//! each recorded as a [`CustomOp`] whose backward is the two transposed products.
//!
//! Forward: `y[n, o] = b[o] + Σ_{c ∈ group(o), i, j} w[o, c, i, j]·x[n, c, s·oy + d·i − p,
//! s·ox + d·j − p]` (zero outside the input), run as one GEMM per item and group on the
//! im2col matrix of the item's receptive fields. Backward: `∂w = Σ_n ∂y_n · colₙᵀ`; `∂x`, with
//! stride 1, the convolution of `∂y` with the flipped, transposed weights, otherwise
//! `col2im(wᵀ · ∂y)`; `∂b[o] = Σ ∂y[·, o, ·]`. Column buffers come from the pool, so a
//! training step reuses the previous step's.

use super::{CustomOp, InputGrad, Var};
use crate::kernels::{self, ConvShape, Window};
use crate::{Element, Tensor};
use serde::{Deserialize, Serialize};

/// Stride, padding, dilation and groups of a 2-D convolution, as PyTorch's `conv2d` takes them
/// (`[rows, cols]`; the builder methods set both axes).
///
/// ```
/// use margrad::Conv2dOptions;
/// let o = Conv2dOptions::new().stride(2).padding(1);
/// assert_eq!((o.stride, o.padding, o.dilation, o.groups), ([2, 2], [1, 1], [1, 1], 1));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conv2dOptions {
    /// The step between windows.
    pub stride: [usize; 2],
    /// Zeros added on both sides of each axis.
    pub padding: [usize; 2],
    /// The spacing of the kernel's taps.
    pub dilation: [usize; 2],
    /// Channels split into this many independent groups (`C` for a depthwise convolution).
    pub groups: usize,
}

impl Default for Conv2dOptions {
    fn default() -> Self {
        Conv2dOptions {
            stride: [1, 1],
            padding: [0, 0],
            dilation: [1, 1],
            groups: 1,
        }
    }
}

impl Conv2dOptions {
    /// Stride 1, no padding, no dilation, one group.
    pub fn new() -> Self {
        Self::default()
    }
    /// The same with stride `s` on both axes.
    pub fn stride(self, s: usize) -> Self {
        Conv2dOptions {
            stride: [s, s],
            ..self
        }
    }
    /// The same with padding `p` on both axes.
    pub fn padding(self, p: usize) -> Self {
        Conv2dOptions {
            padding: [p, p],
            ..self
        }
    }
    /// The same with dilation `d` on both axes.
    pub fn dilation(self, d: usize) -> Self {
        Conv2dOptions {
            dilation: [d, d],
            ..self
        }
    }
    /// The same with `groups` groups.
    pub fn groups(self, groups: usize) -> Self {
        Conv2dOptions { groups, ..self }
    }
}

/// Stride, padding, dilation and groups of a 1-D convolution (PyTorch's `conv1d`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conv1dOptions {
    /// The step between windows.
    pub stride: usize,
    /// Zeros added on both sides.
    pub padding: usize,
    /// The spacing of the kernel's taps.
    pub dilation: usize,
    /// Channels split into this many independent groups.
    pub groups: usize,
}

impl Default for Conv1dOptions {
    fn default() -> Self {
        Conv1dOptions {
            stride: 1,
            padding: 0,
            dilation: 1,
            groups: 1,
        }
    }
}

impl Conv1dOptions {
    /// The 2-D options of the same convolution over planes of height 1.
    fn as_2d(self) -> Conv2dOptions {
        Conv2dOptions {
            stride: [1, self.stride],
            padding: [0, self.padding],
            dilation: [1, self.dilation],
            groups: self.groups,
        }
    }
}

/// A buffer of `len` elements lent from the pool (or fresh), given back after `f`.
pub(super) fn with_scratch<F: Element, R>(len: usize, f: impl FnOnce(&mut [F]) -> R) -> R {
    let mut buf = crate::pool::take(len).unwrap_or_else(|| vec![F::ZERO; len]);
    let result = f(&mut buf);
    crate::pool::give(buf);
    result
}

/// The recorded convolution: its shape; inputs are `[x, w]` or `[x, w, b]`.
struct Conv {
    name: &'static str,
    shape: ConvShape,
}

impl<F: Element> CustomOp<F> for Conv {
    fn name(&self) -> &'static str {
        self.name
    }

    fn backward(
        &self,
        inputs: &[&Tensor<F>],
        _output: &Tensor<F>,
        g: &[F],
        grads: &mut [Option<InputGrad<'_, F>>],
    ) {
        let (x, w) = (inputs[0].data(), inputs[1].data());
        let shape = &self.shape;
        if let Some(dx) = &mut grads[0] {
            let fresh = dx.is_fresh();
            with_scratch(shape.grad_input_scratch(), |s| {
                kernels::conv2d_grad_input(shape, g, w, dx.data(), fresh, s)
            });
        }
        if let Some(dw) = &mut grads[1] {
            let fresh = dw.is_fresh();
            with_scratch(shape.grad_weight_scratch(), |s| {
                kernels::conv2d_grad_weight(shape, g, x, dw.data(), fresh, s)
            });
        }
        if let Some(Some(db)) = grads.get_mut(2) {
            let fresh = db.is_fresh();
            kernels::conv2d_grad_bias(shape, g, db.data(), fresh);
        }
    }
}

impl<'g, F: Element> Var<'g, F> {
    /// 2-D convolution (cross-correlation, as PyTorch's `conv2d`) of an `[N, C, H, W]` input
    /// with `[O, C/groups, kh, kw]` weights and an optional `[O]` bias, giving
    /// `[N, O, OH, OW]` with `OH = ⌊(H + 2p − d(kh − 1) − 1)/s⌋ + 1` (likewise `OW`):
    /// `y[n, o] = b[o] + Σ_{c ∈ group(o), i, j} w[o, c, i, j]·x[n, c, s·oy + d·i − p, s·ox + d·j − p]`.
    ///
    /// # Panics
    /// When the input or weight is not rank 4, the bias is not `[O]`, the groups do not divide
    /// both channel counts, the weight's channels are not `C/groups`, or the (dilated) kernel
    /// is larger than the padded input; the message names the op and the shapes.
    #[track_caller]
    pub fn conv2d(
        self,
        weight: Var<'g, F>,
        bias: Option<Var<'g, F>>,
        options: Conv2dOptions,
    ) -> Var<'g, F> {
        let (xs, ws) = (self.shape(), weight.shape());
        let (Some([n, c, h, w]), Some([o, cg, kh, kw])) = (dims4(&xs), dims4(&ws)) else {
            panic!(
                "shape mismatch in conv2d: input {xs:?}, weight {ws:?} (both must be rank 4: [N, C, H, W] and [O, C/groups, kh, kw])"
            )
        };
        let window = Window {
            input: [h, w],
            kernel: [kh, kw],
            stride: options.stride,
            padding: options.padding,
            dilation: options.dilation,
        };
        let shape = conv_shape("conv2d", &xs, &ws, n, c, o, cg, window, options.groups);
        let [oh, ow] = window.output().expect("checked");
        self.conv_impl("conv2d", weight, bias, shape, &[n, o, oh, ow])
    }

    /// 1-D convolution (PyTorch's `conv1d`) of an `[N, C, L]` input with `[O, C/groups, k]`
    /// weights and an optional `[O]` bias, giving `[N, O, OL]`: [`Var::conv2d`]'s kernels on
    /// planes of height 1.
    ///
    /// # Panics
    /// As [`Var::conv2d`], for rank-3 input and weight.
    #[track_caller]
    pub fn conv1d(
        self,
        weight: Var<'g, F>,
        bias: Option<Var<'g, F>>,
        options: Conv1dOptions,
    ) -> Var<'g, F> {
        let (xs, ws) = (self.shape(), weight.shape());
        let (&[n, c, l], &[o, cg, k]) = (&xs[..], &ws[..]) else {
            panic!(
                "shape mismatch in conv1d: input {xs:?}, weight {ws:?} (both must be rank 3: [N, C, L] and [O, C/groups, k])"
            )
        };
        let o2 = options.as_2d();
        let window = Window {
            input: [1, l],
            kernel: [1, k],
            stride: o2.stride,
            padding: o2.padding,
            dilation: o2.dilation,
        };
        let shape = conv_shape("conv1d", &xs, &ws, n, c, o, cg, window, options.groups);
        let [_, ol] = window.output().expect("checked");
        self.conv_impl("conv1d", weight, bias, shape, &[n, o, ol])
    }

    #[track_caller]
    fn conv_impl(
        self,
        name: &'static str,
        weight: Var<'g, F>,
        bias: Option<Var<'g, F>>,
        shape: ConvShape,
        out_shape: &[usize],
    ) -> Var<'g, F> {
        if let Some(b) = bias {
            let bs = b.shape();
            assert!(
                bs == [shape.out_channels],
                "shape mismatch in {name}: weight {:?}, bias {bs:?} (the bias must be [{}])",
                weight.shape(),
                shape.out_channels
            );
        }
        let mut out = Tensor::for_overwrite(out_shape);
        {
            let (x, w) = (self.value(), weight.value());
            let b = bias.map(|b| b.value());
            with_scratch(shape.forward_scratch(), |s| {
                kernels::conv2d(
                    &shape,
                    x.data(),
                    w.data(),
                    b.as_ref().map(|b| b.data()),
                    out.data_mut(),
                    s,
                )
            });
        }
        let inputs: Vec<Var<'g, F>> = [self, weight].into_iter().chain(bias).collect();
        self.graph().custom(Conv { name, shape }, &inputs, out)
    }
}

/// `[a, b, c, d]` of a rank-4 shape.
pub(super) fn dims4(shape: &[usize]) -> Option<[usize; 4]> {
    shape.try_into().ok()
}

/// Checks channels, groups and the window of a convolution, panicking at the caller's line.
#[track_caller]
#[allow(clippy::too_many_arguments)]
fn conv_shape(
    op: &str,
    xs: &[usize],
    ws: &[usize],
    batch: usize,
    c: usize,
    o: usize,
    cg: usize,
    window: Window,
    groups: usize,
) -> ConvShape {
    assert!(
        groups > 0 && c.is_multiple_of(groups) && o.is_multiple_of(groups),
        "shape mismatch in {op}: input {xs:?}, weight {ws:?}: groups = {groups} must divide the \
         input channels ({c}) and the output channels ({o})"
    );
    assert!(
        cg == c / groups,
        "shape mismatch in {op}: input {xs:?}, weight {ws:?}: the weight takes {cg} channels \
         per group, the input gives {} ({c} channels in {groups} groups)",
        c / groups
    );
    assert!(
        window.output().is_some(),
        "shape mismatch in {op}: input {xs:?}, weight {ws:?}: the kernel {:?} (dilation {:?}) is \
         larger than the input padded by {:?}, or a stride is zero (stride {:?})",
        window.kernel,
        window.dilation,
        window.padding,
        window.stride
    );
    ConvShape {
        batch,
        in_channels: c,
        out_channels: o,
        groups,
        window,
    }
}
