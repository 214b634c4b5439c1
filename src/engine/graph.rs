//! The tape: a list of nodes in the order they were made (already topological), handles to
//! them, and the forward constructor of every op.
//!
//! Each constructor checks shapes (panicking at the caller's line with the op and both shapes),
//! runs a kernel from [`kernels`](crate::kernels), and records what its backward needs. The
//! gradient rules are in [`backward`](crate::engine::backward).

use super::backward::{self, Gradients};
use super::custom::CustomOp;
use super::elementwise::{BinaryOp, UnaryRule, relu};
use crate::kernels::{self, Broadcast, MatRef};
use crate::{Element, Labels, ParamId, Params, Tensor, profile};
use std::cell::{Cell, RefCell};
use std::fmt;
use std::ops::Deref;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// What a node's backward needs to know about how it was made.
pub(crate) enum Op<F: Element> {
    /// A value with no gradient: a constant, or any node of an inference graph.
    Constant,
    /// A leaf whose gradient backward returns ([`Gradients::wrt`]).
    Leaf,
    /// A parameter, whose gradient backward returns by id ([`Gradients::param`]).
    Param(ParamId),
    /// `op(a)·op(b)`, `op` being the transpose where the flag is set.
    MatMul {
        a: usize,
        b: usize,
        trans_a: bool,
        trans_b: bool,
    },
    /// A one-input elementwise op (see `elementwise.rs`).
    Unary {
        op: Box<dyn UnaryRule<F>>,
        x: usize,
    },
    Binary {
        op: BinaryOp,
        a: usize,
        b: usize,
        bcast: Broadcast,
    },
    /// `scale · Σ x` over everything or along one dimension (mean is a sum with scale 1/n).
    Sum {
        x: usize,
        over: Reduce,
        scale: F,
    },
    /// Rows (or columns) divided by their floored L2 norms; keeps the raw norms.
    Normalize {
        x: usize,
        along: Along,
        eps: F,
        norms: Vec<F>,
    },
    LogSoftmax {
        x: usize,
    },
    /// One element per row, at the row's label.
    Pick {
        x: usize,
        labels: Vec<usize>,
    },
    /// `max(x + b, 0)` with `b` a row vector, in one pass.
    AddRelu {
        x: usize,
        b: usize,
    },
    /// A fused op defined outside the engine ([`CustomOp`]), with its inputs.
    Custom {
        op: Box<dyn CustomOp<F>>,
        inputs: Vec<usize>,
    },
    Reshape {
        x: usize,
    },
    Transpose {
        x: usize,
    },
}

impl<F: Element> Op<F> {
    /// The kind of op, as the profile groups them.
    pub(crate) fn category(&self) -> &'static str {
        match self {
            Op::Constant | Op::Leaf | Op::Param(_) => "inputs",
            Op::MatMul { .. } => "matmul",
            Op::Unary { .. } | Op::Binary { .. } | Op::AddRelu { .. } => "elementwise",
            Op::Sum { .. } => "reductions",
            Op::Normalize { .. } => "normalisation",
            Op::LogSoftmax { .. } | Op::Pick { .. } => "softmax",
            Op::Custom { op, .. } => op.name(),
            Op::Reshape { .. } | Op::Transpose { .. } => "shape",
        }
    }
}

/// What a sum runs over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reduce {
    /// Every element, to a scalar.
    All,
    /// Along dimension 0 (down the columns), `[R, C] → [1, C]`.
    Dim0,
    /// Along dimension 1 (across each row), `[R, C] → [R, 1]`.
    Dim1,
}

/// Whether a normalisation works on rows or columns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Along {
    Rows,
    Cols,
}

/// A node's value: computed by the graph, or a parameter shared with its store.
pub(crate) enum Value<F: Element> {
    Owned(Tensor<F>),
    Shared(Arc<Tensor<F>>),
}

impl<F: Element> Deref for Value<F> {
    type Target = Tensor<F>;
    fn deref(&self) -> &Tensor<F> {
        match self {
            Value::Owned(t) => t,
            Value::Shared(t) => t,
        }
    }
}

pub(crate) struct Node<F: Element> {
    pub(crate) value: Value<F>,
    pub(crate) op: Op<F>,
    pub(crate) requires_grad: bool,
}

/// A reverse-mode tape, built fresh for each step and dropped after backward.
///
/// Ops are methods on [`Var`], the handle to a node. A recording graph ([`Graph::new`]) keeps
/// what backward needs; an inference graph ([`Graph::inference`]) runs the same kernels and
/// records nothing.
///
/// ```
/// use margrad::{Graph, Tensor};
/// let g = Graph::<f64>::new();
/// let x = g.leaf(Tensor::from_vec(vec![1.0, 2.0, 3.0], &[1, 3]).unwrap());
/// let y = (x * x).sum(); // Σ x²
/// let grads = y.backward();
/// assert_eq!(grads.wrt(x).unwrap().data(), &[2.0, 4.0, 6.0]);
/// ```
pub struct Graph<F: Element = f32> {
    /// Unique among the graphs of this process, so that gradients know their graph.
    id: u64,
    nodes: RefCell<Vec<Rc<Node<F>>>>,
    recording: bool,
    backward_done: Cell<bool>,
    /// When the last node was recorded, while profiling.
    last_push: Cell<Option<std::time::Instant>>,
}

impl<F: Element> Default for Graph<F> {
    fn default() -> Self {
        Self::new()
    }
}

impl<F: Element> fmt::Debug for Graph<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Graph")
            .field("nodes", &self.len())
            .field("recording", &self.recording)
            .finish()
    }
}

impl<F: Element> Graph<F> {
    /// A graph that records ops for backward.
    pub fn new() -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Graph {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            nodes: RefCell::new(Vec::new()),
            recording: true,
            backward_done: Cell::new(false),
            last_push: Cell::new(profile::enabled().then(std::time::Instant::now)),
        }
    }

    /// A graph that records nothing: the same kernels, for prediction. Backward on it panics.
    pub fn inference() -> Self {
        Graph {
            recording: false,
            ..Self::new()
        }
    }

    /// This graph's identity, unique in the process (never 0).
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Whether ops are recorded for backward.
    pub fn is_recording(&self) -> bool {
        self.recording
    }

    /// The number of nodes so far.
    pub fn len(&self) -> usize {
        self.nodes.borrow().len()
    }

    /// Whether the graph has no nodes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The number of elements each node holds, in tape order: what the graph keeps alive.
    pub fn node_sizes(&self) -> Vec<usize> {
        self.nodes
            .borrow()
            .iter()
            .map(|n| n.value.numel())
            .collect()
    }

    /// A value that receives no gradient (input data).
    pub fn constant(&self, value: Tensor<F>) -> Var<'_, F> {
        self.push_node(Value::Owned(value), Op::Constant, false)
    }

    /// A value whose gradient [`Var::backward`] returns ([`Gradients::wrt`]).
    pub fn leaf(&self, value: Tensor<F>) -> Var<'_, F> {
        self.push_node(Value::Owned(value), Op::Leaf, true)
    }

    /// Parameter `id` of `params`, shared with the store (no copy). Its gradient is returned by
    /// id ([`Gradients::param`]); taking the same parameter twice accumulates both gradients.
    /// A buffer ([`Params::add_buffer`]) enters the same way but as a constant: no gradient.
    pub fn param(&self, params: &Params<F>, id: ParamId) -> Var<'_, F> {
        let value = Value::Shared(params.shared(id));
        if params.is_trainable(id) {
            self.push_node(value, Op::Param(id), true)
        } else {
            self.push_node(value, Op::Constant, false)
        }
    }

    fn push_node(&self, value: Value<F>, op: Op<F>, requires_grad: bool) -> Var<'_, F> {
        if let Some(last) = self.last_push.get() {
            let now = std::time::Instant::now();
            profile::record(op.category(), profile::Phase::Forward, now - last);
            self.last_push.set(Some(now));
        }
        let (op, requires_grad) = if self.recording {
            (op, requires_grad)
        } else {
            (Op::Constant, false)
        };
        let mut nodes = self.nodes.borrow_mut();
        nodes.push(Rc::new(Node {
            value,
            op,
            requires_grad,
        }));
        Var {
            graph: self,
            id: nodes.len() - 1,
        }
    }

    /// Records an op's output; it needs a gradient when any of its inputs does.
    pub(crate) fn push(&self, value: Tensor<F>, op: Op<F>, inputs: &[Var<'_, F>]) -> Var<'_, F> {
        let nodes = self.nodes.borrow();
        let requires_grad = inputs.iter().any(|v| nodes[v.id].requires_grad);
        drop(nodes);
        self.push_node(Value::Owned(value), op, requires_grad)
    }

    /// Records the output of a fused op computed outside the engine: `output` is its value,
    /// already computed from `inputs`' values; backward calls `op`'s [`CustomOp::backward`].
    /// This is how a fused kernel (the margin losses) joins the tape without the engine
    /// knowing it.
    ///
    /// # Panics
    /// When an input belongs to another graph, or when an input appears twice.
    #[track_caller]
    pub fn custom<'g>(
        &'g self,
        op: impl CustomOp<F>,
        inputs: &[Var<'g, F>],
        output: Tensor<F>,
    ) -> Var<'g, F> {
        let name = op.name();
        for (i, v) in inputs.iter().enumerate() {
            assert!(
                std::ptr::eq(self, v.graph),
                "{name}: input {i} belongs to another graph"
            );
            assert!(
                !inputs[..i].iter().any(|u| u.id == v.id),
                "{name}: input {i} is also an earlier input; pass each node once"
            );
        }
        let op = Op::Custom {
            op: Box::new(op),
            inputs: inputs.iter().map(|v| v.id).collect(),
        };
        self.push(output, op, inputs)
    }

    pub(crate) fn node(&self, id: usize) -> Rc<Node<F>> {
        Rc::clone(&self.nodes.borrow()[id])
    }

    pub(crate) fn nodes(&self) -> std::cell::Ref<'_, Vec<Rc<Node<F>>>> {
        self.nodes.borrow()
    }
}

/// A handle to a node of a [`Graph`]: small, `Copy`, and unable to outlive its graph.
///
/// The arithmetic operators `+ − * /` work elementwise between handles (`a * b + c`) and with
/// scalars (`x * 2.0`). The right operand of a handle–handle operator may have the left one's
/// shape, or, when the left is an `[R, C]` matrix, be a row vector `[C]` or `[1, C]` repeated
/// down the rows (a bias) or a column vector `[R, 1]` repeated across the columns (a per-row
/// scale). Any other pair of shapes panics at the caller's line, naming the op and both shapes.
#[derive(Clone, Copy)]
pub struct Var<'g, F: Element = f32> {
    graph: &'g Graph<F>,
    id: usize,
}

impl<F: Element> fmt::Debug for Var<'_, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Var(#{}, shape {:?})", self.id, self.shape())
    }
}

/// A read-only view of a node's value, as [`Var::value`] returns it.
pub struct ValueRef<F: Element>(Rc<Node<F>>);

impl<F: Element> Deref for ValueRef<F> {
    type Target = Tensor<F>;
    fn deref(&self) -> &Tensor<F> {
        &self.0.value
    }
}

impl<'g, F: Element> Var<'g, F> {
    /// The graph this handle belongs to.
    pub fn graph(&self) -> &'g Graph<F> {
        self.graph
    }

    /// The node's position on the tape.
    pub fn id(&self) -> usize {
        self.id
    }

    /// The node's value (cheap: shares the node).
    pub fn value(&self) -> ValueRef<F> {
        ValueRef(self.graph.node(self.id))
    }

    /// A copy of the node's value.
    pub fn to_tensor(&self) -> Tensor<F> {
        (*self.value()).clone()
    }

    /// The node's shape.
    pub fn shape(&self) -> Vec<usize> {
        self.value().shape().to_vec()
    }

    /// The value of a one-element node.
    ///
    /// # Panics
    /// When the node does not hold exactly one element.
    #[track_caller]
    pub fn item(&self) -> F {
        self.value().item()
    }

    /// Gradients of this scalar with respect to every parameter and leaf it depends on.
    ///
    /// # Panics
    /// When this node is not a single element, when the graph records nothing
    /// ([`Graph::inference`]), or when backward already ran on this graph.
    #[track_caller]
    pub fn backward(self) -> Gradients<F> {
        let shape = self.shape();
        assert!(
            shape.iter().product::<usize>() == 1,
            "backward: the output must be a scalar, found shape {shape:?} (use backward_with to \
             seed a non-scalar output)"
        );
        self.backward_with(Tensor::ones(&shape))
    }

    /// Vector-Jacobian product: gradients of `⟨seed, self⟩`, for an output of any shape.
    ///
    /// # Panics
    /// When `seed`'s shape differs from this node's, when the graph records nothing, or when
    /// backward already ran on this graph.
    #[track_caller]
    pub fn backward_with(self, seed: Tensor<F>) -> Gradients<F> {
        let shape = self.shape();
        assert!(
            seed.shape() == shape.as_slice(),
            "shape mismatch in backward_with: output {shape:?}, seed {:?}",
            seed.shape()
        );
        assert!(
            self.graph.recording,
            "backward: this graph was made with Graph::inference and recorded nothing"
        );
        assert!(
            !self.graph.backward_done.replace(true),
            "backward: already ran on this graph; build a new graph for each step"
        );
        backward::run(self.graph, self.id, seed)
    }

    #[track_caller]
    fn same_graph(self, other: Var<'g, F>, op: &str) {
        assert!(
            std::ptr::eq(self.graph, other.graph),
            "{op}: the operands belong to different graphs"
        );
    }

    #[track_caller]
    fn matrix_dims(self, op: &str) -> (usize, usize) {
        let value = self.value();
        let Some(dims) = value.matrix_dims() else {
            panic!(
                "{op}: expected a rank-2 tensor, found shape {:?}",
                value.shape()
            )
        };
        dims
    }

    // ---- matrix products ----

    /// `self · rhs`: `[m, k] · [k, n] → [m, n]`.
    ///
    /// # Panics
    /// When either operand is not rank 2 or the inner dimensions differ.
    #[track_caller]
    pub fn matmul(self, rhs: Var<'g, F>) -> Var<'g, F> {
        self.matmul_impl(rhs, false, false, "matmul")
    }

    /// `self · rhsᵀ`: `[m, k] · [n, k]ᵀ → [m, n]`, without copying a transpose.
    ///
    /// # Panics
    /// When either operand is not rank 2 or the inner dimensions differ.
    #[track_caller]
    pub fn matmul_nt(self, rhs: Var<'g, F>) -> Var<'g, F> {
        self.matmul_impl(rhs, false, true, "matmul_nt")
    }

    /// `selfᵀ · rhs`: `[k, m]ᵀ · [k, n] → [m, n]`, without copying a transpose.
    ///
    /// # Panics
    /// When either operand is not rank 2 or the inner dimensions differ.
    #[track_caller]
    pub fn matmul_tn(self, rhs: Var<'g, F>) -> Var<'g, F> {
        self.matmul_impl(rhs, true, false, "matmul_tn")
    }

    #[track_caller]
    fn matmul_impl(self, rhs: Var<'g, F>, trans_a: bool, trans_b: bool, op: &str) -> Var<'g, F> {
        self.same_graph(rhs, op);
        let (a, b) = (self.value(), rhs.value());
        let (Some((ar, ac)), Some((br, bc))) = (a.matrix_dims(), b.matrix_dims()) else {
            panic!(
                "shape mismatch in {op}: lhs {:?}, rhs {:?} (both must be rank 2)",
                a.shape(),
                b.shape()
            )
        };
        let am = MatRef::new(a.data(), ar, ac, trans_a);
        let bm = MatRef::new(b.data(), br, bc, trans_b);
        let ((m, k), (k2, n)) = (am.dims(), bm.dims());
        assert!(
            k == k2,
            "shape mismatch in {op}: lhs {:?}, rhs {:?}",
            a.shape(),
            b.shape()
        );
        let mut out = Tensor::for_overwrite(&[m, n]);
        kernels::gemm(F::ONE, am, bm, F::ZERO, out.data_mut());
        let op = Op::MatMul {
            a: self.id,
            b: rhs.id,
            trans_a,
            trans_b,
        };
        self.graph.push(out, op, &[self, rhs])
    }

    // ---- elementwise ----

    /// Records a one-input elementwise op (the table in `elementwise.rs` calls this).
    pub(super) fn unary(self, op: impl UnaryRule<F> + 'static) -> Var<'g, F> {
        let x = self.value();
        let mut out = Tensor::for_overwrite(x.shape());
        op.forward(x.data(), out.data_mut());
        let op = Op::Unary {
            op: Box::new(op),
            x: self.id,
        };
        self.graph.push(out, op, &[self])
    }

    #[track_caller]
    fn binary(self, rhs: Var<'g, F>, op: BinaryOp) -> Var<'g, F> {
        self.same_graph(rhs, op.name());
        let (a, b) = (self.value(), rhs.value());
        let Some(bcast) = Broadcast::between(a.shape(), b.shape()) else {
            panic!(
                "shape mismatch in {}: lhs {:?}, rhs {:?} (rhs must have lhs's shape, be a row \
                 [C] or [1, C], or a column [R, 1])",
                op.name(),
                a.shape(),
                b.shape()
            )
        };
        let cols = a.shape().last().copied().unwrap_or(1);
        let mut out = Tensor::for_overwrite(a.shape());
        super::elementwise::with_binary!(op, k => {
            kernels::binary(a.data(), b.data(), bcast, cols, out.data_mut(), |x, y| k.value(x, y))
        });
        let node = Op::Binary {
            op,
            a: self.id,
            b: rhs.id,
            bcast,
        };
        self.graph.push(out, node, &[self, rhs])
    }

    /// `max(self + bias, 0)` for an `[R, C]` input and a row-vector bias (`[C]` or `[1, C]`):
    /// the hidden layer of an MLP, fused. The same as `(self + bias).relu()` (derivative 0 at
    /// 0), in one pass over memory forward and one backward, with no intermediate tensor.
    ///
    /// # Panics
    /// When `bias` is not a row vector of `self`'s width.
    #[track_caller]
    pub fn add_relu(self, bias: Var<'g, F>) -> Var<'g, F> {
        self.same_graph(bias, "add_relu");
        let (x, b) = (self.value(), bias.value());
        let fits = match x.shape() {
            &[_, c] => b.shape() == [c] || b.shape() == [1, c],
            _ => false,
        };
        if !fits {
            panic!(
                "shape mismatch in add_relu: input {:?}, bias {:?} (the bias must be [C] or [1, C])",
                x.shape(),
                b.shape()
            )
        }
        if self.id == bias.id {
            // a one-row input as its own bias: the composed form keeps the two gradients apart
            return (self + bias).relu();
        }
        let cols = x.shape()[1];
        let mut out = Tensor::for_overwrite(x.shape());
        kernels::binary(
            x.data(),
            b.data(),
            Broadcast::Row,
            cols,
            out.data_mut(),
            |x, b| relu(x + b),
        );
        let op = Op::AddRelu {
            x: self.id,
            b: bias.id,
        };
        self.graph.push(out, op, &[self, bias])
    }

    // ---- reductions ----

    fn sum_impl(self, over: Reduce, scale_by_count: bool, op: &str) -> Var<'g, F>
    where
        F: Element,
    {
        let x = self.value();
        let (out, count) = match over {
            Reduce::All => (Tensor::scalar(kernels::sum_all(x.data())), x.numel()),
            Reduce::Dim0 | Reduce::Dim1 => {
                let Some((rows, cols)) = x.matrix_dims() else {
                    panic!(
                        "{op}: expected a rank-2 tensor, found shape {:?}",
                        x.shape()
                    )
                };
                if over == Reduce::Dim1 {
                    let mut out = Tensor::zeros(&[rows, 1]);
                    kernels::sum_rows_acc(x.data(), cols, out.data_mut());
                    (out, cols)
                } else {
                    let mut out = Tensor::zeros(&[1, cols]);
                    kernels::sum_cols_acc(x.data(), cols, out.data_mut());
                    (out, rows)
                }
            }
        };
        let scale = if scale_by_count {
            F::ONE / F::from_f64(count.max(1) as f64)
        } else {
            F::ONE
        };
        let mut out = out;
        if scale != F::ONE {
            out.data_mut().iter_mut().for_each(|v| *v *= scale);
        }
        let node = Op::Sum {
            x: self.id,
            over,
            scale,
        };
        self.graph.push(out, node, &[self])
    }

    /// `Σ x` over every element, to a scalar (shape `[]`).
    pub fn sum(self) -> Var<'g, F> {
        self.sum_impl(Reduce::All, false, "sum")
    }

    /// The mean of every element, to a scalar (shape `[]`).
    pub fn mean(self) -> Var<'g, F> {
        self.sum_impl(Reduce::All, true, "mean")
    }

    /// Sum along `dim` of a rank-2 tensor, keeping it: `dim = 0` gives `[1, C]` (column sums),
    /// `dim = 1` gives `[R, 1]` (row sums).
    ///
    /// # Panics
    /// When the tensor is not rank 2 or `dim > 1`.
    #[track_caller]
    pub fn sum_dim(self, dim: usize) -> Var<'g, F> {
        self.sum_impl(reduce_dim(dim, "sum_dim"), false, "sum_dim")
    }

    /// Mean along `dim` of a rank-2 tensor, keeping it, as [`Var::sum_dim`].
    ///
    /// # Panics
    /// When the tensor is not rank 2 or `dim > 1`.
    #[track_caller]
    pub fn mean_dim(self, dim: usize) -> Var<'g, F> {
        self.sum_impl(reduce_dim(dim, "mean_dim"), true, "mean_dim")
    }

    // ---- fused row-wise ops ----

    #[track_caller]
    fn normalize(self, along: Along, eps: F, op: &str) -> Var<'g, F> {
        let (rows, cols) = self.matrix_dims(op);
        assert!(eps > F::ZERO, "{op}: eps must be positive, found {eps}");
        let x = self.value();
        let mut out = Tensor::for_overwrite(&[rows, cols]);
        let mut norms = vec![F::ZERO; if along == Along::Rows { rows } else { cols }];
        match along {
            Along::Rows => kernels::normalize_rows(x.data(), cols, eps, out.data_mut(), &mut norms),
            Along::Cols => kernels::normalize_cols(x.data(), cols, eps, out.data_mut(), &mut norms),
        }
        let node = Op::Normalize {
            x: self.id,
            along,
            eps,
            norms,
        };
        self.graph.push(out, node, &[self])
    }

    /// Each row divided by its L2 norm floored at `eps`: `y_r = x_r / max(‖x_r‖, eps)`.
    ///
    /// # Panics
    /// When the tensor is not rank 2 or `eps <= 0`.
    #[track_caller]
    pub fn normalize_rows(self, eps: F) -> Var<'g, F> {
        self.normalize(Along::Rows, eps, "normalize_rows")
    }

    /// Each column divided by its L2 norm floored at `eps`: `y_c = x_c / max(‖x_c‖, eps)`.
    ///
    /// # Panics
    /// When the tensor is not rank 2 or `eps <= 0`.
    #[track_caller]
    pub fn normalize_cols(self, eps: F) -> Var<'g, F> {
        self.normalize(Along::Cols, eps, "normalize_cols")
    }

    /// Log-softmax of each row, `y_rc = x_rc − log Σ_j exp(x_rj)`, computed after subtracting
    /// the row's maximum so that large logits do not overflow.
    ///
    /// # Panics
    /// When the tensor is not rank 2.
    #[track_caller]
    pub fn log_softmax(self) -> Var<'g, F> {
        let (rows, cols) = self.matrix_dims("log_softmax");
        let x = self.value();
        let mut out = Tensor::for_overwrite(&[rows, cols]);
        kernels::log_softmax_rows(x.data(), cols, out.data_mut());
        self.graph.push(out, Op::LogSoftmax { x: self.id }, &[self])
    }

    /// `y_r = x[r, labels[r]]`, one element per row, `[R, C] → [R, 1]` (the pick of NLL).
    ///
    /// # Panics
    /// When the tensor is not rank 2, or the labels are not one per row or were checked
    /// against a class count other than `C`.
    #[track_caller]
    pub fn pick(self, labels: &Labels) -> Var<'g, F> {
        let (rows, cols) = self.matrix_dims("pick");
        assert!(
            labels.len() == rows && labels.classes() == cols,
            "shape mismatch in pick: input [{rows}, {cols}], labels: {} for {} classes",
            labels.len(),
            labels.classes()
        );
        let x = self.value();
        let labels = labels.values().to_vec();
        let data = labels
            .iter()
            .enumerate()
            .map(|(r, &l)| x.data()[r * cols + l])
            .collect();
        let out = Tensor::from_vec(data, &[rows, 1]).expect("one value per row");
        self.graph
            .push(out, Op::Pick { x: self.id, labels }, &[self])
    }

    // ---- shape ----

    /// The same elements under another shape with as many elements.
    ///
    /// # Panics
    /// When the element counts differ.
    #[track_caller]
    pub fn reshape(self, shape: &[usize]) -> Var<'g, F> {
        let out = (*self.value()).clone().reshape(shape);
        self.graph.push(out, Op::Reshape { x: self.id }, &[self])
    }

    /// The transpose of a rank-2 tensor.
    ///
    /// # Panics
    /// When the tensor is not rank 2.
    #[track_caller]
    pub fn transpose(self) -> Var<'g, F> {
        self.matrix_dims("transpose");
        let out = self.value().transpose();
        self.graph.push(out, Op::Transpose { x: self.id }, &[self])
    }
}

#[track_caller]
fn reduce_dim(dim: usize, op: &str) -> Reduce {
    match dim {
        0 => Reduce::Dim0,
        1 => Reduce::Dim1,
        _ => panic!("{op}: dim must be 0 or 1 for a rank-2 tensor, found {dim}"),
    }
}

/// `lhs ∘ rhs` elementwise for the four arithmetic operators, `rhs` broadcast as [`Var`] says;
/// and `lhs ∘ c` with a scalar.
macro_rules! operator {
    ($trait:ident, $method:ident, $op:expr, $scalar:expr) => {
        impl<'g, F: Element> std::ops::$trait for Var<'g, F> {
            type Output = Var<'g, F>;
            /// # Panics
            /// When the shapes fit none of the broadcasting rules (see [`Var`]).
            #[track_caller]
            fn $method(self, rhs: Var<'g, F>) -> Var<'g, F> {
                self.binary(rhs, $op)
            }
        }
        impl<'g, F: Element> std::ops::$trait<F> for Var<'g, F> {
            type Output = Var<'g, F>;
            fn $method(self, c: F) -> Var<'g, F> {
                let scalar_op: fn(Var<'g, F>, F) -> Var<'g, F> = $scalar;
                scalar_op(self, c)
            }
        }
    };
}

operator!(Add, add, BinaryOp::Add, Var::add_scalar);
operator!(Sub, sub, BinaryOp::Sub, |x, c| x.add_scalar(-c));
operator!(Mul, mul, BinaryOp::Mul, Var::mul_scalar);
operator!(Div, div, BinaryOp::Div, |x, c| x.mul_scalar(F::ONE / c));

/// `−x`.
impl<'g, F: Element> std::ops::Neg for Var<'g, F> {
    type Output = Var<'g, F>;
    fn neg(self) -> Var<'g, F> {
        self.negate()
    }
}
