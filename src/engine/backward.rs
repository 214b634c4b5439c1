//! The reverse loop: every gradient rule of the engine, in one `match` (a fused op recorded
//! through [`CustomOp`](super::CustomOp) brings its own).
//!
//! Nodes are visited from the output back to the first. Each node's gradient is taken (and so
//! dropped) as soon as its rule has passed it on to the node's inputs. The first rule to reach
//! an input writes its gradient buffer (a fresh one, never zeroed first); later rules add into
//! it, so a node used twice receives the sum of both gradients. Elementwise ops take their
//! local derivative from `elementwise.rs`, where it sits beside the op's value.

use super::custom::InputGrad;
use super::elementwise::BinaryOp;
use super::graph::{Along, Graph, Node, Op, Reduce};
use crate::kernels::{self, Broadcast, MatRef};
use crate::{Element, ParamId, Tensor, Var, profile};
use std::collections::HashMap;
use std::rc::Rc;

/// Gradients returned by [`Var::backward`]: by parameter id, and by leaf handle.
#[derive(Clone, Debug, Default)]
pub struct Gradients<F: Element = f32> {
    /// The graph backward ran on (0 for an empty set).
    graph: u64,
    params: Vec<Option<Tensor<F>>>,
    leaves: HashMap<usize, Tensor<F>>,
}

impl<F: Element> Gradients<F> {
    /// The gradient of parameter `id`, or `None` when the output does not depend on it.
    pub fn param(&self, id: ParamId) -> Option<&Tensor<F>> {
        self.params.get(id.index()).and_then(Option::as_ref)
    }

    /// The gradient of a leaf made with [`Graph::leaf`], or `None` when the output does not
    /// depend on it.
    ///
    /// # Panics
    /// When `leaf` belongs to another graph than the one backward ran on (its position there
    /// would name some other node).
    #[track_caller]
    pub fn wrt(&self, leaf: Var<'_, F>) -> Option<&Tensor<F>> {
        assert!(
            leaf.graph().id() == self.graph,
            "Gradients::wrt: {leaf:?} belongs to another graph than the one backward ran on"
        );
        self.leaves.get(&leaf.id())
    }

    /// Every parameter gradient present, in id order.
    pub fn params(&self) -> impl Iterator<Item = (ParamId, &Tensor<F>)> {
        self.params
            .iter()
            .enumerate()
            .filter_map(|(i, g)| g.as_ref().map(|g| (ParamId(i), g)))
    }

    /// Every parameter gradient present, in id order, to change in place (to average them over
    /// the processes of a distributed run, say).
    pub fn params_mut(&mut self) -> impl Iterator<Item = (ParamId, &mut Tensor<F>)> {
        self.params
            .iter_mut()
            .enumerate()
            .filter_map(|(i, g)| g.as_mut().map(|g| (ParamId(i), g)))
    }

    /// Checks that every gradient is finite.
    ///
    /// # Errors
    /// [`Error::NonFinite`](crate::Error::NonFinite) naming the first gradient that is not.
    pub fn ensure_finite(&self) -> Result<(), crate::Error> {
        for (id, g) in self.params() {
            g.ensure_finite(&format!("gradient of parameter #{}", id.index()))?;
        }
        for (id, g) in &self.leaves {
            g.ensure_finite(&format!("gradient of leaf #{id}"))?;
        }
        Ok(())
    }

    /// Multiplies every gradient by `factor` (gradient clipping).
    pub fn scale(&mut self, factor: F) {
        let all = self
            .params
            .iter_mut()
            .flatten()
            .chain(self.leaves.values_mut());
        for g in all {
            g.data_mut().iter_mut().for_each(|v| *v *= factor);
        }
    }

    fn accumulate_param(&mut self, id: ParamId, g: Tensor<F>) {
        if self.params.len() <= id.index() {
            self.params.resize_with(id.index() + 1, || None);
        }
        match &mut self.params[id.index()] {
            Some(sum) => sum
                .data_mut()
                .iter_mut()
                .zip(g.data())
                .for_each(|(s, &v)| *s += v),
            slot => *slot = Some(g),
        }
    }
}

/// The gradient buffers of the nodes still to visit.
struct Pending<'a, F: Element> {
    nodes: &'a [Rc<Node<F>>],
    grads: Vec<Option<Tensor<F>>>,
}

impl<F: Element> Pending<'_, F> {
    /// The gradient buffer of node `id` (zeros when first asked for), or `None` when that node
    /// needs no gradient.
    fn slot(&mut self, id: usize) -> Option<&mut [F]> {
        let (grad, fresh) = self.slot_fresh(id)?;
        if fresh {
            grad.fill(F::ZERO);
        }
        Some(grad)
    }

    /// As [`Pending::slot`], and whether the buffer is fresh. A fresh buffer is *not* zeroed:
    /// the caller must overwrite every element of it (and add into it when it is not fresh).
    /// This saves a pass over memory for every gradient a kernel can write directly.
    fn slot_fresh(&mut self, id: usize) -> Option<(&mut [F], bool)> {
        let node = &self.nodes[id];
        if !node.requires_grad {
            return None;
        }
        let fresh = self.grads[id].is_none();
        let grad = self.grads[id].get_or_insert_with(|| Tensor::for_overwrite(node.value.shape()));
        Some((grad.data_mut(), fresh))
    }
}

impl<F: Element> Pending<'_, F> {
    /// The gradient buffers of two different nodes at once (as [`Pending::slot`] each).
    fn two_slots(&mut self, a: usize, b: usize) -> (Option<&mut [F]>, Option<&mut [F]>) {
        assert_ne!(a, b, "two_slots takes two different nodes");
        for id in [a, b] {
            let _ = self.slot(id); // allocates the buffer when the node needs a gradient
        }
        let (low, high) = (a.min(b), a.max(b));
        let (left, right) = self.grads.split_at_mut(high);
        let (first, second) = (left[low].as_mut(), right[0].as_mut());
        let (first, second) = (first.map(|t| t.data_mut()), second.map(|t| t.data_mut()));
        if a < b {
            (first, second)
        } else {
            (second, first)
        }
    }
}

impl<F: Element> Pending<'_, F> {
    /// The gradient buffers of several different nodes at once, as a custom op receives them:
    /// `None` for a node that needs no gradient.
    fn input_grads(&mut self, ids: &[usize]) -> Vec<Option<InputGrad<'_, F>>> {
        let fresh: Vec<Option<bool>> = ids
            .iter()
            .map(|&id| self.slot_fresh(id).map(|(_, fresh)| fresh))
            .collect();
        let mut buffers: Vec<Option<&mut [F]>> = (0..ids.len()).map(|_| None).collect();
        for (id, grad) in self.grads.iter_mut().enumerate() {
            if let Some(k) = ids.iter().position(|&i| i == id) {
                buffers[k] = grad.as_mut().map(|t| t.data_mut());
            }
        }
        buffers
            .into_iter()
            .zip(fresh)
            .map(|(data, fresh)| Some(InputGrad::new(data?, fresh?)))
            .collect()
    }
}

/// Runs backward from node `output`, seeded with `seed` (the gradient of the output).
pub(crate) fn run<F: Element>(graph: &Graph<F>, output: usize, seed: Tensor<F>) -> Gradients<F> {
    let nodes = graph.nodes();
    let mut pending = Pending {
        nodes: &nodes[..=output],
        grads: (0..=output).map(|_| None).collect(),
    };
    pending.grads[output] = Some(seed);
    let mut result = Gradients {
        graph: graph.id(),
        ..Gradients::default()
    };
    for id in (0..=output).rev() {
        let Some(grad) = pending.grads[id].take() else {
            continue;
        };
        let node = Rc::clone(&nodes[id]);
        match node.op {
            Op::Leaf => {
                result.leaves.insert(id, grad);
                continue;
            }
            Op::Param(pid) => {
                result.accumulate_param(pid, grad);
                continue;
            }
            _ => {}
        }
        let started = profile::enabled().then(std::time::Instant::now);
        let g = grad.data();
        let y = node.value.data();
        let value = |i: usize| &*nodes[i].value;
        match &node.op {
            Op::Constant | Op::Leaf | Op::Param(_) => {}
            &Op::MatMul {
                a,
                b,
                trans_a,
                trans_b,
            } => {
                // C = op(A)·op(B):  ∂A = G·op(B)ᵀ (stored transposed when A is read transposed),
                //                    ∂B = op(A)ᵀ·G (likewise).
                let (av, bv) = (value(a), value(b));
                let (ar, ac) = av.matrix_dims().expect("rank 2");
                let (br, bc) = bv.matrix_dims().expect("rank 2");
                let (m, n) = node.value.matrix_dims().expect("rank 2");
                // A fresh gradient buffer is overwritten (beta = 0), otherwise added to.
                let gm = MatRef::new(g, m, n, false);
                let gt = MatRef::new(g, m, n, true);
                let beta = |fresh: bool| if fresh { F::ZERO } else { F::ONE };
                if let Some((da, fresh)) = pending.slot_fresh(a) {
                    if trans_a {
                        // Aᵀ stored: ∂A = op(B)·Gᵀ
                        let bm = MatRef::new(bv.data(), br, bc, trans_b);
                        kernels::gemm(F::ONE, bm, gt, beta(fresh), da);
                    } else {
                        let bt = MatRef::new(bv.data(), br, bc, !trans_b);
                        kernels::gemm(F::ONE, gm, bt, beta(fresh), da);
                    }
                }
                if let Some((db, fresh)) = pending.slot_fresh(b) {
                    if trans_b {
                        // Bᵀ stored: ∂B = Gᵀ·op(A)
                        let am = MatRef::new(av.data(), ar, ac, trans_a);
                        kernels::gemm(F::ONE, gt, am, beta(fresh), db);
                    } else {
                        let at = MatRef::new(av.data(), ar, ac, !trans_a);
                        kernels::gemm(F::ONE, at, gm, beta(fresh), db);
                    }
                }
            }
            Op::Unary { op, x } => {
                // ∂x = g ⊙ f′(x)
                if let Some(dx) = pending.slot(*x) {
                    op.backward(g, value(*x).data(), y, dx);
                }
            }
            &Op::Binary { op, a, b, bcast } => {
                // ∂a = g ⊙ ∂f/∂a;  ∂b = g ⊙ ∂f/∂b, summed over the dimension b was repeated along
                let (av, bv) = (value(a), value(b));
                let cols = av.shape().last().copied().unwrap_or(1);
                let (ad, bd) = (av.data(), bv.data());
                if let Some(da) = pending.slot(a) {
                    super::elementwise::with_binary!(op, k => {
                        kernels::binary_grad(g, ad, bd, y, bcast, cols, da, |a, b, y| {
                            k.partial_a(a, b, y)
                        })
                    });
                }
                if let Some(db) = pending.slot(b) {
                    super::elementwise::with_binary!(op, k => {
                        let partial_b = |a: F, b: F, y: F| k.partial_b(a, b, y);
                        match (bcast, op) {
                            (Broadcast::Same, _) => {
                                kernels::binary_grad(g, ad, bd, y, bcast, cols, db, partial_b)
                            }
                            // ∂f/∂b = ±1: sum g itself over the repeated dimension
                            (_, BinaryOp::Add | BinaryOp::Sub) => {
                                let sum_into = |out: &mut [F]| {
                                    if bcast == Broadcast::Row {
                                        kernels::sum_cols_acc(g, cols, out);
                                    } else {
                                        kernels::sum_rows_acc(g, cols, out);
                                    }
                                };
                                if op == BinaryOp::Add {
                                    sum_into(db);
                                } else {
                                    let mut sums = vec![F::ZERO; db.len()];
                                    sum_into(&mut sums);
                                    db.iter_mut().zip(&sums).for_each(|(d, &s)| *d -= s);
                                }
                            }
                            _ => {
                                let mut full = vec![F::ZERO; ad.len()];
                                kernels::binary_grad(g, ad, bd, y, bcast, cols, &mut full, partial_b);
                                if bcast == Broadcast::Row {
                                    kernels::sum_cols_acc(&full, cols, db);
                                } else {
                                    kernels::sum_rows_acc(&full, cols, db);
                                }
                            }
                        }
                    });
                }
            }
            &Op::AddRelu { x, b } => {
                // with z = g where y > 0 (else 0): ∂x = z, ∂b = Σ_rows z
                let cols = node.value.shape()[1];
                let (dx, db) = pending.two_slots(x, b);
                kernels::add_relu_grad(g, y, cols, dx, db);
            }
            &Op::Sum { x, over, scale } => {
                // ∂x = scale · g, repeated over what was summed
                let cols = value(x).shape().last().copied().unwrap_or(1);
                if let Some(dx) = pending.slot(x) {
                    match over {
                        Reduce::All => dx.iter_mut().for_each(|d| *d += scale * g[0]),
                        Reduce::Dim1 => {
                            kernels::add_broadcast_acc(g, Broadcast::Col, cols, scale, dx)
                        }
                        Reduce::Dim0 => {
                            kernels::add_broadcast_acc(g, Broadcast::Row, cols, scale, dx)
                        }
                    }
                }
            }
            Op::Normalize {
                x,
                along,
                eps,
                norms,
            } => {
                // ∂x = (g − y⟨g, y⟩) / ‖x‖ per row (or column); g / eps where the norm was floored
                let cols = node.value.shape()[1];
                if let Some((dx, fresh)) = pending.slot_fresh(*x) {
                    match along {
                        Along::Rows => {
                            kernels::normalize_rows_grad(g, y, norms, cols, *eps, dx, fresh)
                        }
                        Along::Cols => {
                            kernels::normalize_cols_grad(g, y, norms, cols, *eps, dx, fresh)
                        }
                    }
                }
            }
            &Op::LogSoftmax { x } => {
                // ∂x = g − softmax(x)·Σ g, per row
                let cols = node.value.shape()[1];
                if let Some(dx) = pending.slot(x) {
                    kernels::log_softmax_rows_grad(g, y, cols, dx);
                }
            }
            Op::Pick { x, labels } => {
                // ∂x[r, labels[r]] = g[r]; zero elsewhere
                let cols = value(*x).shape()[1];
                if let Some(dx) = pending.slot(*x) {
                    for (r, &label) in labels.iter().enumerate() {
                        dx[r * cols + label] += g[r];
                    }
                }
            }
            Op::Custom { op, inputs } => {
                // the op's own rule
                let values: Vec<&Tensor<F>> = inputs.iter().map(|&i| value(i)).collect();
                let mut grads = pending.input_grads(inputs);
                op.backward(&values, &node.value, g, &mut grads);
            }
            &Op::Reshape { x } => {
                // same elements, same order
                match pending.slot_fresh(x) {
                    Some((dx, true)) => dx.copy_from_slice(g),
                    Some((dx, false)) => dx.iter_mut().zip(g).for_each(|(d, &g)| *d += g),
                    None => {}
                }
            }
            &Op::Transpose { x } => {
                // ∂x = gᵀ
                let (rows, cols) = node.value.matrix_dims().expect("rank 2");
                match pending.slot_fresh(x) {
                    // a fresh buffer takes the transpose directly; otherwise add it in
                    Some((dx, true)) => kernels::transpose(g, rows, cols, dx),
                    Some((dx, false)) => {
                        let mut gt = vec![F::ZERO; g.len()];
                        kernels::transpose(g, rows, cols, &mut gt);
                        dx.iter_mut().zip(&gt).for_each(|(d, &g)| *d += g);
                    }
                    None => {}
                }
            }
        }
        if let Some(started) = started {
            profile::record(
                node.op.category(),
                profile::Phase::Backward,
                started.elapsed(),
            );
        }
    }
    result
}
