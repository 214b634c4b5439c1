//! The context a forward pass runs in: its graph, the parameters, and the training mode.

use crate::{Element, Graph, ParamId, Params, SeededRng, Tensor, Var};

/// Where a module's forward pass reads its parameters, whether it is training (dropout on,
/// batch statistics) or evaluating, and where it leaves buffer updates (BatchNorm's running
/// statistics), applied with [`Params::apply`] once the graph is gone.
pub struct Forward<'g, 'p, F: Element> {
    graph: &'g Graph<F>,
    params: &'p Params<F>,
    rng: Option<&'p mut SeededRng>,
    updates: Vec<(ParamId, Tensor<F>)>,
    overrides: Vec<(ParamId, Var<'g, F>)>,
}

/// Buffer values computed by a training forward pass, to store with [`Params::apply`].
#[derive(Debug, Default)]
#[must_use = "buffer updates do nothing until applied with Params::apply"]
pub struct BufferUpdates<F: Element>(Vec<(ParamId, Tensor<F>)>);

impl<'g, 'p, F: Element> Forward<'g, 'p, F> {
    /// A training pass: dropout draws its masks from `rng`, BatchNorm uses batch statistics.
    pub fn train(graph: &'g Graph<F>, params: &'p Params<F>, rng: &'p mut SeededRng) -> Self {
        Forward {
            graph,
            params,
            rng: Some(rng),
            updates: Vec::new(),
            overrides: Vec::new(),
        }
    }

    /// An evaluation pass: no dropout, BatchNorm uses its running statistics.
    pub fn eval(graph: &'g Graph<F>, params: &'p Params<F>) -> Self {
        Forward {
            graph,
            params,
            rng: None,
            updates: Vec::new(),
            overrides: Vec::new(),
        }
    }

    /// The graph the pass records on.
    pub fn graph(&self) -> &'g Graph<F> {
        self.graph
    }

    /// The parameters.
    pub fn params(&self) -> &'p Params<F> {
        self.params
    }

    /// Parameter `id`, entered into the graph (or the value it was overridden with).
    pub fn param(&self, id: ParamId) -> Var<'g, F> {
        match self.overrides.iter().find(|(o, _)| *o == id) {
            Some(&(_, value)) => value,
            None => self.graph.param(self.params, id),
        }
    }

    /// A buffer's current value, as a constant (shared, not copied; no gradient).
    pub fn buffer(&self, id: ParamId) -> Var<'g, F> {
        self.graph.param(self.params, id)
    }

    /// Makes [`param`](Forward::param) return `value` for `id` in this pass instead of the
    /// stored parameter. Modules run unchanged, and their output becomes a function of
    /// `value`: the way to [`gradcheck`](crate::gradcheck()) a module with respect to its
    /// own parameters, taking each as a leaf.
    ///
    /// # Panics
    /// When `value`'s shape is not the parameter's.
    #[track_caller]
    pub fn override_param(&mut self, id: ParamId, value: Var<'g, F>) {
        let stored = self.params.get(id).shape();
        assert!(
            value.shape() == stored,
            "shape mismatch in Forward::override_param of {:?}: parameter {stored:?}, value {:?}",
            self.params.name(id),
            value.shape()
        );
        self.overrides.retain(|(o, _)| *o != id);
        self.overrides.push((id, value));
    }

    /// Whether this is a training pass.
    pub fn is_training(&self) -> bool {
        self.rng.is_some()
    }

    /// The generator of a training pass (`None` when evaluating).
    pub fn rng(&mut self) -> Option<&mut SeededRng> {
        self.rng.as_deref_mut()
    }

    /// Records a new value for buffer `id`.
    pub fn update_buffer(&mut self, id: ParamId, value: Tensor<F>) {
        self.updates.push((id, value));
    }

    /// The buffer updates of this pass.
    pub fn into_updates(self) -> BufferUpdates<F> {
        BufferUpdates(self.updates)
    }
}

impl<F: Element> BufferUpdates<F> {
    /// The number of buffer values recorded.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the pass recorded none (an evaluation pass, or a model without BatchNorm).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<F: Element> IntoIterator for BufferUpdates<F> {
    type Item = (ParamId, Tensor<F>);
    type IntoIter = std::vec::IntoIter<(ParamId, Tensor<F>)>;

    /// The `(buffer, new value)` pairs, in the order the pass recorded them.
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}
