//! The plug-in point for fused ops: a kernel written outside the engine joins the tape with its
//! own gradient rule, as candle's `CustomOp` does. The margin losses use it, so the engine never
//! names a loss.

use crate::{Element, Tensor};

/// A fused op with a hand-written backward, recorded with [`Graph::custom`](crate::Graph::custom).
///
/// The caller computes the op's output from its inputs' values and records it; what backward
/// needs later (row statistics, labels, settings) lives in the implementing value. A gradcheck
/// ([`gradcheck`](crate::gradcheck())) of the op's output checks the rule like any other.
///
/// ```
/// use margrad::{CustomOp, Graph, InputGrad, Tensor};
///
/// /// `y = x³`, elementwise.
/// struct Cube;
/// impl CustomOp<f64> for Cube {
///     fn name(&self) -> &'static str {
///         "cube"
///     }
///     fn backward(&self, inputs: &[&Tensor<f64>], _y: &Tensor<f64>, g: &[f64], grads: &mut [Option<InputGrad<'_, f64>>]) {
///         if let Some(dx) = &mut grads[0] {
///             for (i, (&x, &g)) in inputs[0].data().iter().zip(g).enumerate() {
///                 dx.store(i, 3.0 * x * x * g); // ∂x = 3x²·g
///             }
///         }
///     }
/// }
///
/// let g = Graph::<f64>::new();
/// let x = g.leaf(Tensor::from_vec(vec![1.0, 2.0], &[2]).unwrap());
/// let y = g.custom(Cube, &[x], Tensor::from_vec(vec![1.0, 8.0], &[2]).unwrap());
/// let grads = y.sum().backward();
/// assert_eq!(grads.wrt(x).unwrap().data(), &[3.0, 12.0]);
/// ```
pub trait CustomOp<F: Element>: 'static {
    /// A short name: profiles group ops by it, and panics name it.
    fn name(&self) -> &'static str;

    /// Passes `grad`, the gradient of the output (laid out as `output`), on to the inputs.
    /// `grads[i]` is input `i`'s gradient buffer, `None` when that input needs no gradient.
    fn backward(
        &self,
        inputs: &[&Tensor<F>],
        output: &Tensor<F>,
        grad: &[F],
        grads: &mut [Option<InputGrad<'_, F>>],
    );
}

/// The gradient buffer of one input of a [`CustomOp`], laid out as that input.
///
/// A node's first gradient is written into a *fresh* buffer whose old contents are never read
/// (it is lent from an earlier step); later ones add to it. [`InputGrad::store`] does whichever
/// applies; a kernel that writes every element itself can branch on [`InputGrad::is_fresh`]
/// once, outside its loop.
pub struct InputGrad<'a, F> {
    data: &'a mut [F],
    fresh: bool,
}

impl<'a, F: Element> InputGrad<'a, F> {
    pub(crate) fn new(data: &'a mut [F], fresh: bool) -> Self {
        InputGrad { data, fresh }
    }

    /// Whether this is the node's first gradient: every element must then be written (its
    /// contents are unspecified), not added to.
    pub fn is_fresh(&self) -> bool {
        self.fresh
    }

    /// The buffer, to write (when fresh) or add to (otherwise).
    pub fn data(&mut self) -> &mut [F] {
        self.data
    }

    /// Contributes `v` to element `i`: writes it into a fresh buffer, adds it otherwise. A
    /// fresh buffer must receive a value for every element.
    #[inline]
    pub fn store(&mut self, i: usize, v: F) {
        crate::kernels::store_grad(&mut self.data[i], v, self.fresh);
    }
}
