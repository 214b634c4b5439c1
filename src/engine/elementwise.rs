//! The elementwise ops, each with its value and its local derivative side by side.
//!
//! A one-input op is one row of the [`unary_ops!`] table below: the row makes the op's type,
//! its value `f(x)`, its derivative `f′(x)` and its [`Var`] method, so a new op touches this
//! file only. The kernels run the value over a buffer and backward multiplies the output's
//! gradient by the derivative, both monomorphised per op so that their loops vectorise. The
//! gradient rules of every other op are in [`backward`](super::backward).

use super::Var;
use crate::{Element, kernels};
use std::marker::PhantomData;

/// `max(x, 0)`, with NaN kept as NaN (as PyTorch's relu does): `f32::max` would send NaN to 0
/// and hide a diverged input. The relu row below and the fused bias + ReLU both use it.
#[inline(always)]
pub(crate) fn relu<F: Element>(x: F) -> F {
    if x < F::ZERO { F::ZERO } else { x }
}

/// A one-input elementwise op `y = f(x)`.
pub(crate) trait Unary<F: Element>: Copy + Send + Sync + 'static {
    /// `f(x)`.
    fn value(self, x: F) -> F;
    /// `f′(x)`, given `y = f(x)` (so that exp, sqrt, tanh and sigmoid reuse their value).
    fn derivative(self, x: F, y: F) -> F;
}

/// A one-input op as the tape keeps it: forward and backward over whole buffers.
pub(crate) trait UnaryRule<F: Element> {
    /// `out[i] = f(x[i])`.
    fn forward(&self, x: &[F], out: &mut [F]);
    /// `dx[i] += g[i] · f′(x[i])`.
    fn backward(&self, g: &[F], x: &[F], y: &[F], dx: &mut [F]);
}

impl<F: Element, T: Unary<F>> UnaryRule<F> for T {
    fn forward(&self, x: &[F], out: &mut [F]) {
        let op = *self;
        kernels::map(x, out, move |v| op.value(v));
    }

    fn backward(&self, g: &[F], x: &[F], y: &[F], dx: &mut [F]) {
        let op = *self;
        kernels::map_grad(g, x, y, dx, move |x, y| op.derivative(x, y));
    }
}

/// The table of one-input ops. Each row: the `Var` method's doc, visibility, name and scalar
/// arguments; the op's type; its value in `x` (and the arguments); its derivative in `x` and
/// `y = f(x)`. At kinks the derivative follows PyTorch: relu′(0) = 0, abs′(0) = 0,
/// leaky_relu′(0) = slope.
macro_rules! unary_ops {
    ($(
        $(#[$doc:meta])*
        $vis:vis fn $method:ident($($arg:ident),*) => $Op:ident,
            value |$x:ident| $value:expr,
            derivative |$dx:ident, $dy:ident| $derivative:expr;
    )*) => {
        $(
            #[derive(Clone, Copy)]
            pub(crate) struct $Op<F> {
                $($arg: F,)*
                element: PhantomData<F>,
            }

            impl<F: Element> Unary<F> for $Op<F> {
                #[inline(always)]
                #[allow(unused_variables)]
                fn value(self, $x: F) -> F {
                    let $Op { $($arg,)* .. } = self;
                    $value
                }

                #[inline(always)]
                #[allow(unused_variables)]
                fn derivative(self, $dx: F, $dy: F) -> F {
                    let $Op { $($arg,)* .. } = self;
                    $derivative
                }
            }

            impl<'g, F: Element> Var<'g, F> {
                $(#[$doc])*
                $vis fn $method(self $(, $arg: F)*) -> Var<'g, F> {
                    self.unary($Op { $($arg,)* element: PhantomData })
                }
            }
        )*
    };
}

unary_ops! {
    /// `−x` (the `-` operator).
    pub(crate) fn negate() => Neg,
        value |x| -x,
        derivative |x, y| -F::ONE;
    /// `x + c` (also the `+` and `-` operators with a scalar).
    pub fn add_scalar(c) => AddScalar,
        value |x| x + c,
        derivative |x, y| F::ONE;
    /// `c · x` (also the `*` and `/` operators with a scalar).
    pub fn mul_scalar(c) => MulScalar,
        value |x| c * x,
        derivative |x, y| c;
    /// `eˣ`.
    pub fn exp() => Exp,
        value |x| x.exp(),
        derivative |x, y| y;
    /// `ln x` (NaN for negative x, −∞ at 0, as in IEEE arithmetic).
    pub fn log() => Log,
        value |x| x.ln(),
        derivative |x, y| F::ONE / x;
    /// `√x`.
    pub fn sqrt() => Sqrt,
        value |x| x.sqrt(),
        derivative |x, y| F::from_f64(0.5) / y;
    /// `xᵖ`.
    pub fn powf(p) => Powf,
        value |x| x.powf(p),
        derivative |x, y| p * x.powf(p - F::ONE);
    /// `|x|` (derivative 0 at 0).
    pub fn abs() => Abs,
        value |x| x.abs(),
        derivative |x, y| if x > F::ZERO { F::ONE } else if x < F::ZERO { -F::ONE } else { F::ZERO };
    /// `max(x, 0)` (derivative 0 at 0; NaN stays NaN).
    pub fn relu() => Relu,
        value |x| relu(x),
        derivative |x, y| if x > F::ZERO { F::ONE } else { F::ZERO };
    /// `x` for `x > 0`, `slope·x` otherwise.
    pub fn leaky_relu(slope) => LeakyRelu,
        value |x| if x > F::ZERO { x } else { slope * x },
        derivative |x, y| if x > F::ZERO { F::ONE } else { slope };
    /// `tanh x`.
    pub fn tanh() => Tanh,
        value |x| x.tanh(),
        derivative |x, y| F::ONE - y * y;
    /// `1 / (1 + e⁻ˣ)`.
    pub fn sigmoid() => Sigmoid,
        value |x| F::ONE / (F::ONE + (-x).exp()),
        derivative |x, y| y * (F::ONE - y);
    /// `cos x`.
    pub fn cos() => Cos,
        value |x| x.cos(),
        derivative |x, y| -x.sin();
    /// `arccos x` (NaN outside `[−1, 1]`; the derivative `−1/√(1 − x²)` is infinite at ±1).
    pub fn acos() => Acos,
        value |x| x.acos(),
        derivative |x, y| -F::ONE / (F::ONE - x * x).sqrt();
}

/// A two-input elementwise op `y = f(a, b)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    /// `a + b`
    Add,
    /// `a − b`
    Sub,
    /// `a · b`
    Mul,
    /// `a / b`
    Div,
}

impl BinaryOp {
    /// The op's name, as panics show it.
    pub fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
        }
    }

    /// `f(a, b)`.
    #[inline(always)]
    pub fn value<F: Element>(self, a: F, b: F) -> F {
        match self {
            BinaryOp::Add => a + b,
            BinaryOp::Sub => a - b,
            BinaryOp::Mul => a * b,
            BinaryOp::Div => a / b,
        }
    }

    /// `∂f/∂a`, given `y = f(a, b)`.
    #[inline(always)]
    pub fn partial_a<F: Element>(self, _a: F, b: F, _y: F) -> F {
        match self {
            BinaryOp::Add | BinaryOp::Sub => F::ONE,
            BinaryOp::Mul => b,
            BinaryOp::Div => F::ONE / b,
        }
    }

    /// `∂f/∂b`, given `y = f(a, b)`.
    #[inline(always)]
    pub fn partial_b<F: Element>(self, a: F, b: F, y: F) -> F {
        match self {
            BinaryOp::Add => F::ONE,
            BinaryOp::Sub => -F::ONE,
            BinaryOp::Mul => a,
            BinaryOp::Div => -y / b,
        }
    }
}

/// Runs `$body` with `$k` bound to the binary op `$op` as a constant of its variant, so that
/// once inlined, `$k.value(a, b)` and its partials compile to that op's formula alone instead
/// of a `match` per element: the kernels' loops then vectorise.
macro_rules! with_binary {
    ($op:expr, $k:ident => $body:expr) => {
        match $op {
            $crate::engine::elementwise::BinaryOp::Add => {
                let $k = $crate::engine::elementwise::BinaryOp::Add;
                $body
            }
            $crate::engine::elementwise::BinaryOp::Sub => {
                let $k = $crate::engine::elementwise::BinaryOp::Sub;
                $body
            }
            $crate::engine::elementwise::BinaryOp::Mul => {
                let $k = $crate::engine::elementwise::BinaryOp::Mul;
                $body
            }
            $crate::engine::elementwise::BinaryOp::Div => {
                let $k = $crate::engine::elementwise::BinaryOp::Div;
                $body
            }
        }
    };
}

pub(crate) use with_binary;
