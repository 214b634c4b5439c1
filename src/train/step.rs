//! One training step: forward in a training context, the loss, backward, a check that the loss
//! and the gradients are finite, the buffer updates (BatchNorm's running statistics), and the
//! optimiser's update.
//!
//! [`train_step`] takes the forward pass as a closure, so that any computation (a [`Model`], or
//! hand-written ops on raw [`Params`]) trains through the same checks and updates;
//! [`model_step`] is the step of a [`Model`] on a batch, as the trainer runs it.

use crate::nn::{Forward, Model};
use crate::optim::Optimizer;
use crate::profile::{self, Phase};
use crate::{Element, Error, Gradients, Graph, Labels, ParamId, Params, SeededRng, Tensor, Var};
use std::fmt;
use std::time::Instant;

/// What one training step measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepOutcome {
    /// The batch's loss, before the update.
    pub loss: f64,
    /// The samples whose margin-free scores rank their own class first (`None` when the
    /// forward pass returned no scores).
    pub correct: Option<usize>,
}

/// Why a training step left the parameters, the buffers and the optimiser as they were.
#[derive(Clone, Debug, PartialEq)]
pub enum StepError {
    /// The forward pass refused the batch (a label out of range, an empty batch, ...).
    Forward(Error),
    /// The loss or a gradient holds a NaN or an infinity.
    NonFinite {
        /// What is not finite: "the loss", or "the gradient of" a parameter, by name.
        what: String,
        /// The first offending value.
        value: f64,
    },
}

impl fmt::Display for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StepError::Forward(e) => write!(f, "{e}"),
            StepError::NonFinite { what, value } => write!(f, "{what} is {value}"),
        }
    }
}

impl std::error::Error for StepError {}

impl From<Error> for StepError {
    fn from(e: Error) -> Self {
        StepError::Forward(e)
    }
}

/// One training step whose forward pass `forward` computes.
///
/// `forward` runs in a training [`Forward`] context on a fresh graph (dropout draws from `rng`,
/// BatchNorm uses batch statistics) and returns the batch's scalar loss and, optionally, its
/// class scores without margin, which are counted against `labels` for the training accuracy.
/// The step then runs backward, checks that the loss and every parameter gradient are finite,
/// stores the buffer updates the pass recorded, and applies `optimizer`'s update. The graph is
/// gone before the parameters change, so no tensor is copied on write.
///
/// With profiling on ([`profile::enable`]), the finite check and the update are recorded in
/// [`Phase::Update`] as "finite check" and "optimizer".
///
/// # Errors
/// [`StepError::Forward`] for what `forward` returns; [`StepError::NonFinite`] naming the loss or
/// the first parameter (by name) whose gradient is not finite, in which cases nothing is
/// updated; and [`StepError::NonFinite`] naming a parameter or buffer that the update itself
/// made non-finite (finite gradients and an overflowing step): the parameters then hold it, and
/// a caller stops, as the trainer does, keeping its last checkpoint (saves refuse non-finite
/// weights, so that one is finite).
///
/// # Panics
/// When the loss is not a single element, or the scores are not `[B, C]` with one row per label.
pub fn train_step<F, L>(
    params: &mut Params<F>,
    optimizer: &mut Optimizer<F>,
    rng: &mut SeededRng,
    labels: &Labels,
    forward: L,
) -> Result<StepOutcome, StepError>
where
    F: Element,
    L: for<'g, 'p> FnOnce(
        &mut Forward<'g, 'p, F>,
    ) -> Result<(Var<'g, F>, Option<Var<'g, F>>), Error>,
{
    combined_step(params, optimizer, rng, labels, forward, |local| local)
}

/// What one process computed in a step before the update: the gradients (checked finite),
/// the buffer updates and the outcome.
pub(crate) struct LocalStep<F: Element> {
    pub grads: Gradients<F>,
    pub updates: Vec<(ParamId, Tensor<F>)>,
    pub outcome: StepOutcome,
}

/// [`train_step`], with `combine` between backward and the update: it receives this process's
/// result (or its error) and returns what the update applies. The trainer over several
/// processes combines the ranks' results there; [`train_step`] passes them through.
pub(crate) fn combined_step<F, L, C>(
    params: &mut Params<F>,
    optimizer: &mut Optimizer<F>,
    rng: &mut SeededRng,
    labels: &Labels,
    forward: L,
    combine: C,
) -> Result<StepOutcome, StepError>
where
    F: Element,
    L: for<'g, 'p> FnOnce(
        &mut Forward<'g, 'p, F>,
    ) -> Result<(Var<'g, F>, Option<Var<'g, F>>), Error>,
    C: FnOnce(Result<LocalStep<F>, StepError>) -> Result<LocalStep<F>, StepError>,
{
    let local = local_step(params, rng, labels, forward);
    let LocalStep {
        grads,
        updates,
        outcome,
    } = combine(local)?;
    let started = profile::enabled().then(Instant::now);
    params.apply(updates);
    let stepped = optimizer.step(params, &grads);
    if let Some(started) = started {
        profile::record("optimizer", Phase::Update, started.elapsed());
    }
    match stepped {
        Ok(()) => Ok(outcome),
        Err(Error::NonFinite { what, value, .. }) => Err(StepError::NonFinite { what, value }),
        Err(other) => Err(StepError::Forward(other)),
    }
}

/// Forward, backward and the finite checks of [`train_step`]; nothing is updated.
fn local_step<F, L>(
    params: &Params<F>,
    rng: &mut SeededRng,
    labels: &Labels,
    forward: L,
) -> Result<LocalStep<F>, StepError>
where
    F: Element,
    L: for<'g, 'p> FnOnce(
        &mut Forward<'g, 'p, F>,
    ) -> Result<(Var<'g, F>, Option<Var<'g, F>>), Error>,
{
    let (grads, updates, outcome) = {
        let graph = Graph::new();
        let mut cx = Forward::train(&graph, params, rng);
        let (loss, scores) = forward(&mut cx)?;
        let value = loss.item().to_f64();
        if !value.is_finite() {
            return Err(StepError::NonFinite {
                what: "the loss".to_string(),
                value,
            });
        }
        let correct = scores.map(|scores| {
            let predicted = scores.value().argmax_rows();
            assert_eq!(
                predicted.len(),
                labels.len(),
                "train_step: {} rows of scores for {} labels",
                predicted.len(),
                labels.len()
            );
            predicted
                .iter()
                .zip(labels.values())
                .filter(|(p, l)| p == l)
                .count()
        });
        let outcome = StepOutcome {
            loss: value,
            correct,
        };
        (loss.backward(), cx.into_updates(), outcome)
    };
    let started = profile::enabled().then(Instant::now);
    for (id, g) in grads.params() {
        if let Some(index) = crate::kernels::first_non_finite(g.data()) {
            return Err(StepError::NonFinite {
                what: format!("the gradient of {}", params.name(id)),
                value: g.data()[index].to_f64(),
            });
        }
    }
    if let Some(started) = started {
        profile::record("finite check", Phase::Update, started.elapsed());
    }
    Ok(LocalStep {
        grads,
        updates: updates.into_iter().collect(),
        outcome,
    })
}

/// One training step of `model` on the batch `x` (`[B, features]`) with `labels`: its training
/// loss, and the training accuracy from its margin-free scores ([`Model::loss_and_logits`]),
/// through [`train_step`].
///
/// # Errors
/// As [`train_step`].
pub fn model_step<F: Element>(
    model: &Model<F>,
    params: &mut Params<F>,
    optimizer: &mut Optimizer<F>,
    rng: &mut SeededRng,
    x: Tensor<F>,
    labels: &Labels,
) -> Result<StepOutcome, StepError> {
    combined_model_step(model, params, optimizer, rng, x, labels, |local| local)
}

/// [`model_step`] through [`combined_step`].
pub(crate) fn combined_model_step<F: Element>(
    model: &Model<F>,
    params: &mut Params<F>,
    optimizer: &mut Optimizer<F>,
    rng: &mut SeededRng,
    x: Tensor<F>,
    labels: &Labels,
    combine: impl FnOnce(Result<LocalStep<F>, StepError>) -> Result<LocalStep<F>, StepError>,
) -> Result<StepOutcome, StepError> {
    combined_step(
        params,
        optimizer,
        rng,
        labels,
        |cx| {
            let x = cx.graph().constant(x);
            let (loss, scores) = model.loss_and_logits(cx, x, labels)?;
            Ok((loss, Some(scores)))
        },
        combine,
    )
}
