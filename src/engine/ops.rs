//! The elementwise ops, each with its value and its local derivative side by side.
//!
//! The chain rule that uses these derivatives, and the gradient rules of every structural op
//! (matmul, reductions, normalisation, softmax), are in [`backward`](crate::engine::backward).

use crate::Element;

/// A one-input elementwise op `y = f(x)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum UnaryOp<F> {
    /// `−x`
    Neg,
    /// `eˣ`
    Exp,
    /// `ln x`
    Log,
    /// `√x`
    Sqrt,
    /// `xᵖ`
    Powf(F),
    /// `|x|`
    Abs,
    /// `max(x, 0)`
    Relu,
    /// `x` for `x > 0`, `slope·x` otherwise
    LeakyRelu(F),
    /// `tanh x`
    Tanh,
    /// `1 / (1 + e⁻ˣ)`
    Sigmoid,
    /// `cos x`
    Cos,
    /// `arccos x`, for `x` in `[−1, 1]`
    Acos,
    /// `x + c`
    AddScalar(F),
    /// `c·x`
    MulScalar(F),
}

impl<F: Element> UnaryOp<F> {
    /// `f(x)`.
    #[inline(always)]
    pub fn value(self, x: F) -> F {
        match self {
            UnaryOp::Neg => -x,
            UnaryOp::Exp => x.exp(),
            UnaryOp::Log => x.ln(),
            UnaryOp::Sqrt => x.sqrt(),
            UnaryOp::Powf(p) => x.powf(p),
            UnaryOp::Abs => x.abs(),
            UnaryOp::Relu => x.max(F::ZERO),
            UnaryOp::LeakyRelu(slope) => {
                if x > F::ZERO {
                    x
                } else {
                    slope * x
                }
            }
            UnaryOp::Tanh => x.tanh(),
            UnaryOp::Sigmoid => F::ONE / (F::ONE + (-x).exp()),
            UnaryOp::Cos => x.cos(),
            UnaryOp::Acos => x.acos(),
            UnaryOp::AddScalar(c) => x + c,
            UnaryOp::MulScalar(c) => c * x,
        }
    }

    /// `f′(x)`, given `y = f(x)` so that exp, sqrt, tanh and sigmoid reuse their value.
    /// At the kinks the convention is PyTorch's: relu′(0) = 0, abs′(0) = 0, leaky′(0) = slope.
    #[inline(always)]
    pub fn derivative(self, x: F, y: F) -> F {
        match self {
            UnaryOp::Neg => -F::ONE,
            UnaryOp::Exp => y,
            UnaryOp::Log => F::ONE / x,
            UnaryOp::Sqrt => F::from_f64(0.5) / y,
            UnaryOp::Powf(p) => p * x.powf(p - F::ONE),
            UnaryOp::Abs => {
                if x > F::ZERO {
                    F::ONE
                } else if x < F::ZERO {
                    -F::ONE
                } else {
                    F::ZERO
                }
            }
            UnaryOp::Relu => {
                if x > F::ZERO {
                    F::ONE
                } else {
                    F::ZERO
                }
            }
            UnaryOp::LeakyRelu(slope) => {
                if x > F::ZERO {
                    F::ONE
                } else {
                    slope
                }
            }
            UnaryOp::Tanh => F::ONE - y * y,
            UnaryOp::Sigmoid => y * (F::ONE - y),
            UnaryOp::Cos => -x.sin(),
            UnaryOp::Acos => -F::ONE / (F::ONE - x * x).sqrt(),
            UnaryOp::AddScalar(_) => F::ONE,
            UnaryOp::MulScalar(c) => c,
        }
    }
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

/// Runs `$body` with `$k` bound to the unary op `$op` as a constant of its variant, so that once
/// inlined, `$k.value(x)` and `$k.derivative(x, y)` compile to that op's formula alone instead
/// of a `match` per element: the kernels' loops then vectorise.
macro_rules! with_unary {
    ($op:expr, $k:ident => $body:expr) => {
        match $op {
            $crate::engine::ops::UnaryOp::Neg => {
                let $k = $crate::engine::ops::UnaryOp::Neg;
                $body
            }
            $crate::engine::ops::UnaryOp::Exp => {
                let $k = $crate::engine::ops::UnaryOp::Exp;
                $body
            }
            $crate::engine::ops::UnaryOp::Log => {
                let $k = $crate::engine::ops::UnaryOp::Log;
                $body
            }
            $crate::engine::ops::UnaryOp::Sqrt => {
                let $k = $crate::engine::ops::UnaryOp::Sqrt;
                $body
            }
            $crate::engine::ops::UnaryOp::Powf(p) => {
                let $k = $crate::engine::ops::UnaryOp::Powf(p);
                $body
            }
            $crate::engine::ops::UnaryOp::Abs => {
                let $k = $crate::engine::ops::UnaryOp::Abs;
                $body
            }
            $crate::engine::ops::UnaryOp::Relu => {
                let $k = $crate::engine::ops::UnaryOp::Relu;
                $body
            }
            $crate::engine::ops::UnaryOp::LeakyRelu(a) => {
                let $k = $crate::engine::ops::UnaryOp::LeakyRelu(a);
                $body
            }
            $crate::engine::ops::UnaryOp::Tanh => {
                let $k = $crate::engine::ops::UnaryOp::Tanh;
                $body
            }
            $crate::engine::ops::UnaryOp::Sigmoid => {
                let $k = $crate::engine::ops::UnaryOp::Sigmoid;
                $body
            }
            $crate::engine::ops::UnaryOp::Cos => {
                let $k = $crate::engine::ops::UnaryOp::Cos;
                $body
            }
            $crate::engine::ops::UnaryOp::Acos => {
                let $k = $crate::engine::ops::UnaryOp::Acos;
                $body
            }
            $crate::engine::ops::UnaryOp::AddScalar(c) => {
                let $k = $crate::engine::ops::UnaryOp::AddScalar(c);
                $body
            }
            $crate::engine::ops::UnaryOp::MulScalar(c) => {
                let $k = $crate::engine::ops::UnaryOp::MulScalar(c);
                $body
            }
        }
    };
}

/// [`with_unary!`] for binary ops.
macro_rules! with_binary {
    ($op:expr, $k:ident => $body:expr) => {
        match $op {
            $crate::engine::ops::BinaryOp::Add => {
                let $k = $crate::engine::ops::BinaryOp::Add;
                $body
            }
            $crate::engine::ops::BinaryOp::Sub => {
                let $k = $crate::engine::ops::BinaryOp::Sub;
                $body
            }
            $crate::engine::ops::BinaryOp::Mul => {
                let $k = $crate::engine::ops::BinaryOp::Mul;
                $body
            }
            $crate::engine::ops::BinaryOp::Div => {
                let $k = $crate::engine::ops::BinaryOp::Div;
                $body
            }
        }
    };
}

pub(crate) use {with_binary, with_unary};
