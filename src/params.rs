//! Parameters: named tensors that live outside any graph and enter one without being copied.

use crate::{Element, Tensor};
use std::collections::HashMap;
use std::sync::Arc;

/// A copy of every tensor: the clone shares nothing with the original (so each can be updated
/// in place on its own).
impl<F: Element> Clone for Params<F> {
    fn clone(&self) -> Self {
        Params {
            names: self.names.clone(),
            by_name: self.by_name.clone(),
            values: self
                .values
                .iter()
                .map(|v| Arc::new((**v).clone()))
                .collect(),
            trainable: self.trainable.clone(),
        }
    }
}

/// The index of a parameter in its [`Params`] store. Gradients and optimiser state are keyed by it.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct ParamId(pub(crate) usize);

impl ParamId {
    /// The position of the parameter in its store (0, 1, 2, ... in order of `add`).
    pub fn index(self) -> usize {
        self.0
    }
}

/// A store of named parameter tensors.
///
/// A graph takes a parameter by reference count ([`Graph::param`](crate::Graph::param)), so the
/// data is never copied; after the graph is dropped, [`Params::get_mut`] updates it in place.
///
/// Besides trainable parameters it holds *buffers* ([`Params::add_buffer`]): named tensors
/// that are saved and restored with the model but never trained (BatchNorm's running
/// statistics), as in a PyTorch `state_dict`.
#[derive(Debug, Default)]
pub struct Params<F: Element = f32> {
    names: Vec<String>,
    /// The id of each name, so that finding and adding take constant time (a checkpoint of
    /// 160,000 tensors would otherwise load in quadratic time).
    by_name: HashMap<String, ParamId>,
    values: Vec<Arc<Tensor<F>>>,
    trainable: Vec<bool>,
}

impl<F: Element> Params<F> {
    /// An empty store.
    pub fn new() -> Self {
        Params {
            names: Vec::new(),
            by_name: HashMap::new(),
            values: Vec::new(),
            trainable: Vec::new(),
        }
    }

    /// Adds a parameter under a unique name ("embed.0.weight") and returns its id.
    ///
    /// # Panics
    /// When the name is already taken.
    #[track_caller]
    pub fn add(&mut self, name: impl Into<String>, value: Tensor<F>) -> ParamId {
        self.insert(name.into(), value, true)
    }

    /// Adds a buffer: saved and restored like a parameter, never trained.
    ///
    /// # Panics
    /// When the name is already taken.
    #[track_caller]
    pub fn add_buffer(&mut self, name: impl Into<String>, value: Tensor<F>) -> ParamId {
        self.insert(name.into(), value, false)
    }

    #[track_caller]
    fn insert(&mut self, name: String, value: Tensor<F>, trainable: bool) -> ParamId {
        assert!(
            self.find(&name).is_none(),
            "Params::add: a parameter named {name:?} already exists"
        );
        self.by_name.insert(name.clone(), ParamId(self.names.len()));
        self.names.push(name);
        self.values.push(Arc::new(value));
        self.trainable.push(trainable);
        ParamId(self.values.len() - 1)
    }

    /// Whether `id` is trained (a parameter) rather than only saved (a buffer).
    pub fn is_trainable(&self, id: ParamId) -> bool {
        self.trainable[id.0]
    }

    /// Replaces the value of `id`; buffer updates go through here.
    ///
    /// # Panics
    /// When the new value's shape differs from the old one's.
    #[track_caller]
    pub fn set(&mut self, id: ParamId, value: Tensor<F>) {
        let old = self.get(id).shape();
        assert!(
            old == value.shape(),
            "shape mismatch in Params::set of {:?}: has {old:?}, given {:?}",
            self.names[id.0],
            value.shape()
        );
        self.values[id.0] = Arc::new(value);
    }

    /// The parameter's value.
    pub fn get(&self, id: ParamId) -> &Tensor<F> {
        &self.values[id.0]
    }

    /// The parameter's value, for an in-place update.
    ///
    /// # Panics
    /// When a graph that took this parameter (or a value taken from such a graph) is still
    /// alive: updating in place would change what that graph computed with, and copying
    /// silently would double the memory. Drop the graph first, or use [`Params::set`].
    #[track_caller]
    pub fn get_mut(&mut self, id: ParamId) -> &mut Tensor<F> {
        let name = &self.names[id.0];
        match Arc::get_mut(&mut self.values[id.0]) {
            Some(value) => value,
            None => panic!(
                "Params::get_mut: {name:?} is still held by a live graph; drop the graph (and \
                 any value taken from it) before updating parameters in place"
            ),
        }
    }

    /// A shared handle on the value, as a graph holds it.
    pub(crate) fn shared(&self, id: ParamId) -> Arc<Tensor<F>> {
        Arc::clone(&self.values[id.0])
    }

    /// The parameter's name.
    pub fn name(&self, id: ParamId) -> &str {
        &self.names[id.0]
    }

    /// The id of the parameter called `name`.
    pub fn find(&self, name: &str) -> Option<ParamId> {
        self.by_name.get(name).copied()
    }

    /// Every id, in order of addition.
    pub fn ids(&self) -> impl Iterator<Item = ParamId> + use<F> {
        (0..self.values.len()).map(ParamId)
    }

    /// The number of parameter tensors.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Checks that every tensor (parameters and buffers) is finite.
    ///
    /// # Errors
    /// [`Error::NonFinite`](crate::Error::NonFinite) naming the first tensor that is not, and
    /// its first NaN or infinity.
    pub fn ensure_finite(&self) -> Result<(), crate::Error> {
        self.ids()
            .try_for_each(|id| self.get(id).ensure_finite(self.name(id)))
    }

    /// The total number of trainable scalars (buffers not counted).
    pub fn count(&self) -> usize {
        self.ids()
            .filter(|&id| self.is_trainable(id))
            .map(|id| self.get(id).numel())
            .sum()
    }

    /// Stores new values for several tensors at once: the buffer updates a training pass
    /// computed ([`BufferUpdates`](crate::nn::BufferUpdates) is such an iterator), applied
    /// once its graph is gone. Later values of the same id overwrite earlier ones.
    ///
    /// # Panics
    /// When a value's shape differs from its tensor's.
    #[track_caller]
    pub fn apply(&mut self, updates: impl IntoIterator<Item = (ParamId, Tensor<F>)>) {
        for (id, value) in updates {
            self.set(id, value);
        }
    }
}
