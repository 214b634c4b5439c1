//! Optimisers, learning-rate schedules and gradient clipping.
//!
//! [`Optimizer`] updates parameters in place from [`Gradients`]; it keeps its state (momentum
//! buffers, Adam's moments, step counts) per [`ParamId`], serialisable so that a checkpoint can
//! resume a run exactly. Parameters fall into groups, each with its own learning rate and
//! weight decay; a [`LrSchedule`] scales every group's rate.

mod schedule;

pub use schedule::{LrSchedule, Schedule};

use crate::error::{Number, Shape};
use crate::{Element, Error, Gradients, ParamId, Params, Tensor};
use serde::{Deserialize, Serialize};

/// The update rule, with PyTorch's equations (see each variant).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Method {
    /// `d = g + λp; b ← μb + d (b = d at the first step); d ← d + μb (Nesterov) or b;
    /// p ← p − η·d`.
    Sgd {
        /// μ, in `[0, 1)`.
        momentum: f64,
        /// Nesterov's look-ahead (needs μ > 0).
        nesterov: bool,
    },
    /// Adam with L2 decay in the gradient: `g ← g + λp; m ← β1 m + (1 − β1) g;
    /// v ← β2 v + (1 − β2) g²; p ← p − η m̂ / (√v̂ + ε)`, `m̂ = m/(1 − β1ᵗ)`,
    /// `v̂ = v/(1 − β2ᵗ)`.
    Adam {
        /// β1.
        beta1: f64,
        /// β2.
        beta2: f64,
        /// ε.
        eps: f64,
    },
    /// AdamW: Adam with decoupled decay, `p ← p (1 − ηλ)` before the Adam step.
    AdamW {
        /// β1.
        beta1: f64,
        /// β2.
        beta2: f64,
        /// ε.
        eps: f64,
    },
}

impl Method {
    /// Adam with β = (0.9, 0.999), ε = 1e-8.
    pub fn adam() -> Self {
        Method::Adam {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }

    /// AdamW with β = (0.9, 0.999), ε = 1e-8.
    pub fn adamw() -> Self {
        Method::AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }

    /// Checks the settings in the element type they will be used in: a β that rounds to 1
    /// (0.99999999 in f32) would freeze a moment, an ε that rounds to 0 (1e-50 in f32) would
    /// divide by zero.
    fn validate<F: Element>(&self) -> Result<(), Error> {
        let below_one = |v: f64| (0.0..1.0).contains(&v) && F::from_f64(v) < F::ONE;
        match *self {
            Method::Sgd { momentum, nesterov } => {
                Error::check(
                    "momentum",
                    momentum,
                    below_one(momentum),
                    "in [0, 1) in the element type",
                )?;
                Error::check(
                    "momentum",
                    momentum,
                    !nesterov || momentum > 0.0,
                    "positive for Nesterov",
                )
            }
            Method::Adam { beta1, beta2, eps } | Method::AdamW { beta1, beta2, eps } => {
                let requirement = "in [0, 1) in the element type";
                Error::check("beta1", beta1, below_one(beta1), requirement)?;
                Error::check("beta2", beta2, below_one(beta2), requirement)?;
                let eps_f = F::from_f64(eps);
                Error::check(
                    "eps",
                    eps,
                    eps_f > F::ZERO && eps_f.is_finite(),
                    "positive and finite in the element type",
                )
            }
        }
    }

    /// Whether the rule keeps a second moment (Adam, AdamW) besides the first.
    fn has_second_moment(&self) -> bool {
        !matches!(self, Method::Sgd { .. })
    }
}

/// A set of parameters sharing a learning rate and a weight decay.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Group {
    /// The parameters.
    pub params: Vec<ParamId>,
    /// η before the schedule's factor.
    pub lr: f64,
    /// λ.
    pub weight_decay: f64,
}

/// What an optimiser remembers about one parameter.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(bound = "F: Element")]
pub struct ParamState<F: Element> {
    /// Updates applied so far (t).
    pub steps: u64,
    /// The momentum buffer, or Adam's first moment.
    pub first: Tensor<F>,
    /// Adam's second moment (empty for SGD).
    pub second: Tensor<F>,
}

/// An optimiser's whole state, as a checkpoint stores it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(bound = "F: Element")]
pub struct OptimizerState<F: Element> {
    /// The rule.
    pub method: Method,
    /// The groups.
    pub groups: Vec<Group>,
    /// The schedule's current factor.
    pub lr_factor: f64,
    /// Each parameter's state, by parameter id (`None`: not updated yet).
    pub per_param: Vec<Option<ParamState<F>>>,
}

/// The most updates a stored parameter state may count: 2⁵³, the last count an `f64` holds
/// exactly. No run makes that many (a step a microsecond for 285 years); a larger count comes
/// from a damaged or crafted file, and would make Adam's bias corrections meaningless.
pub const MAX_STEPS: u64 = 1 << 53;

impl<F: Element> OptimizerState<F> {
    /// Checks a saved state against the parameters it will update.
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] when a setting of the method or a group is out of range;
    /// [`Error::Format`], naming the field (`lr_factor`, `groups[1].params`,
    /// `per_param[3].second`) and the parameter, when a group names a parameter that `params`
    /// does not train or that another group names too, when the schedule's factor is not
    /// finite and non-negative, or when a parameter's state has more than [`MAX_STEPS`]
    /// updates, a moment of another shape than the parameter (Adam keeps two, SGD one and an
    /// empty second), a NaN or an infinity, or a negative second moment.
    pub fn validate(&self, params: &Params<F>) -> Result<(), Error> {
        self.method.validate::<F>()?;
        let bad = |location: String, message: String| Error::Format {
            source: "optimizer state".to_string(),
            location,
            message,
        };
        if !(self.lr_factor >= 0.0 && self.lr_factor.is_finite()) {
            return Err(bad(
                "lr_factor".to_string(),
                format!(
                    "the schedule's factor is {}, where it must be finite and non-negative",
                    Number(self.lr_factor)
                ),
            ));
        }
        let mut grouped = vec![false; params.len()];
        for (g, group) in self.groups.iter().enumerate() {
            check_rate::<F>(group.lr, group.weight_decay)?;
            if !F::from_f64(group.lr * self.lr_factor).is_finite() {
                return Err(bad(
                    format!("groups[{g}].lr"),
                    format!(
                        "the rate {} times the schedule's factor {} is not finite in {}",
                        Number(group.lr),
                        Number(self.lr_factor),
                        F::NAME
                    ),
                ));
            }
            for id in &group.params {
                let i = id.index();
                let location = format!("groups[{g}].params");
                if i >= params.len() || !params.is_trainable(*id) {
                    return Err(bad(
                        location,
                        format!(
                            "the group names parameter #{i}, but the model has {} tensors and \
                             that one is not trainable or absent",
                            params.len()
                        ),
                    ));
                }
                if std::mem::replace(&mut grouped[i], true) {
                    return Err(bad(
                        location,
                        format!(
                            "{} (#{i}) is in two groups, or twice in one: it would be updated \
                             twice a step",
                            params.name(*id)
                        ),
                    ));
                }
            }
        }
        if self.per_param.len() > params.len() {
            return Err(bad(
                "per_param".to_string(),
                format!(
                    "{} parameter states for {} parameters",
                    self.per_param.len(),
                    params.len()
                ),
            ));
        }
        for (i, param_state) in self.per_param.iter().enumerate() {
            let Some(param_state) = param_state else {
                continue;
            };
            let name = params.name(ParamId(i));
            let at = |field: &str| format!("per_param[{i}].{field} ({name})");
            if param_state.steps > MAX_STEPS {
                return Err(bad(
                    at("steps"),
                    format!(
                        "{} updates, more than any run makes (at most 2^53 are read)",
                        param_state.steps
                    ),
                ));
            }
            let expected = params.get(ParamId(i)).shape();
            let second_shape: &[usize] = if self.method.has_second_moment() {
                expected
            } else {
                &[0]
            };
            for (field, moment, shape) in [
                ("first", &param_state.first, expected),
                ("second", &param_state.second, second_shape),
            ] {
                if moment.shape() != shape {
                    return Err(bad(
                        at(field),
                        format!(
                            "the moment has shape {}, where this parameter and method need {}",
                            Shape(moment.shape()),
                            Shape(shape)
                        ),
                    ));
                }
                let data = moment.data();
                if let Some(k) = crate::kernels::first_non_finite(data) {
                    return Err(bad(
                        at(field),
                        format!("element {k} is {}, where a moment must be finite", data[k]),
                    ));
                }
            }
            if let Some(k) = param_state.second.data().iter().position(|&v| v < F::ZERO) {
                return Err(bad(
                    at("second"),
                    format!(
                        "element {k} is {}, where a mean of squares cannot be negative",
                        param_state.second.data()[k]
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Updates parameters from their gradients.
#[derive(Clone, Debug, PartialEq)]
pub struct Optimizer<F: Element = f32> {
    state: OptimizerState<F>,
}

/// Checks a group's rate and decay, finite in the element type they will be used in (1e39 is a
/// finite f64 but an infinite f32).
fn check_rate<F: Element>(lr: f64, weight_decay: f64) -> Result<(), Error> {
    let fits = |v: f64| F::from_f64(v).is_finite();
    Error::check(
        "learning rate",
        lr,
        lr > 0.0 && fits(lr),
        "positive and finite in the element type",
    )?;
    Error::check(
        "weight decay",
        weight_decay,
        weight_decay >= 0.0 && fits(weight_decay),
        "non-negative and finite in the element type",
    )
}

impl<F: Element> Optimizer<F> {
    /// One group holding every trainable parameter of `params`.
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] for a learning rate ≤ 0, a negative weight decay, or a method
    /// setting out of range.
    pub fn new(
        method: Method,
        params: &Params<F>,
        lr: f64,
        weight_decay: f64,
    ) -> Result<Self, Error> {
        method.validate::<F>()?;
        check_rate::<F>(lr, weight_decay)?;
        let ids = params.ids().filter(|&id| params.is_trainable(id)).collect();
        Ok(Optimizer {
            state: OptimizerState {
                method,
                groups: vec![Group {
                    params: ids,
                    lr,
                    weight_decay,
                }],
                lr_factor: 1.0,
                per_param: Vec::new(),
            },
        })
    }

    /// Moves `ids` into a new group of their own (a different rate or decay for the head, say).
    ///
    /// # Errors
    /// As [`Optimizer::new`] for the rate and decay.
    pub fn with_group(
        mut self,
        ids: &[ParamId],
        lr: f64,
        weight_decay: f64,
    ) -> Result<Self, Error> {
        check_rate::<F>(lr, weight_decay)?;
        for group in &mut self.state.groups {
            group.params.retain(|id| !ids.contains(id));
        }
        self.state.groups.push(Group {
            params: ids.to_vec(),
            lr,
            weight_decay,
        });
        Ok(self)
    }

    /// The groups.
    pub fn groups(&self) -> &[Group] {
        &self.state.groups
    }

    /// Scales every group's learning rate by `factor` from now on (what a schedule sets).
    pub fn set_lr_factor(&mut self, factor: f64) {
        self.state.lr_factor = factor;
    }

    /// The learning rate group `index` uses now.
    pub fn lr(&self, index: usize) -> f64 {
        self.state.groups[index].lr * self.state.lr_factor
    }

    /// The whole state, to save.
    pub fn state(&self) -> &OptimizerState<F> {
        &self.state
    }

    /// An optimiser that continues from a saved state, checked against the parameters it
    /// will update.
    ///
    /// # Errors
    /// As [`OptimizerState::validate`].
    pub fn from_state(state: OptimizerState<F>, params: &Params<F>) -> Result<Self, Error> {
        state.validate(params)?;
        Ok(Optimizer { state })
    }

    /// Applies one update to every parameter that has a gradient, and checks that every
    /// updated element is finite (in the same pass, while each chunk is in cache).
    ///
    /// # Errors
    /// [`Error::NonFinite`] naming the first parameter the update made non-finite
    /// (`"embed.0.weight after the update"`): finite gradients times a rate too large for the
    /// element type. Every parameter is updated all the same; the caller stops training.
    ///
    /// # Panics
    /// When a gradient's shape differs from its parameter's.
    #[track_caller]
    pub fn step(&mut self, params: &mut Params<F>, grads: &Gradients<F>) -> Result<(), Error> {
        let mut overflowed = None;
        let OptimizerState {
            method,
            groups,
            lr_factor,
            per_param,
        } = &mut self.state;
        for group in groups.iter() {
            let lr = F::from_f64(group.lr * *lr_factor);
            let decay = F::from_f64(group.weight_decay);
            for &id in &group.params {
                let Some(grad) = grads.param(id) else {
                    continue;
                };
                let p = params.get_mut(id);
                assert!(
                    p.shape() == grad.shape(),
                    "shape mismatch in Optimizer::step: parameter {:?}, gradient {:?}",
                    p.shape(),
                    grad.shape()
                );
                if per_param.len() <= id.index() {
                    per_param.resize_with(id.index() + 1, || None);
                }
                let param_state = per_param[id.index()].get_or_insert_with(|| ParamState {
                    steps: 0,
                    first: Tensor::zeros(p.shape()),
                    second: match method {
                        Method::Sgd { .. } => Tensor::zeros(&[0]),
                        _ => Tensor::zeros(p.shape()),
                    },
                });
                param_state.steps += 1;
                let finite = update(
                    *method,
                    lr,
                    decay,
                    param_state.steps,
                    p.data_mut(),
                    grad.data(),
                    param_state.first.data_mut(),
                    param_state.second.data_mut(),
                );
                if !finite && overflowed.is_none() {
                    overflowed = Some(id);
                }
            }
        }
        match overflowed {
            None => Ok(()),
            Some(id) => {
                let data = params.get(id).data();
                let index = crate::kernels::first_non_finite(data).expect("found by the update");
                Err(Error::NonFinite {
                    what: format!("{} after the update", params.name(id)),
                    index,
                    value: data[index].to_f64(),
                })
            }
        }
    }
}

/// One parameter's update (the equations of [`Method`]), over fixed chunks of its elements,
/// spread over the pool when the parameter is large (each element's update is independent, so
/// the result does not depend on the threads). Returns whether every updated element is finite.
#[allow(clippy::too_many_arguments)]
fn update<F: Element>(
    method: Method,
    lr: F,
    decay: F,
    steps: u64,
    p: &mut [F],
    g: &[F],
    first: &mut [F],
    second: &mut [F],
) -> bool {
    use crate::kernels::{CHUNK, all_finite, parallel, simd};
    use rayon::prelude::*;
    let chunks = p.len().div_ceil(CHUNK);
    let first: Vec<&mut [F]> = first.chunks_mut(CHUNK).collect();
    // SGD keeps no second moment: an empty slice per chunk
    let second: Vec<&mut [F]> = match second {
        [] => (0..chunks).map(|_| Default::default()).collect(),
        all => all.chunks_mut(CHUNK).collect(),
    };
    type Chunk<'a, F> = (((&'a mut [F], &'a [F]), &'a mut [F]), &'a mut [F]);
    let run = |(((p, g), m), v): Chunk<F>| {
        simd(
            #[inline(always)]
            || {
                update_chunk(method, lr, decay, steps, p, g, m, v);
                all_finite(p)
            },
        )
    };
    // every chunk is updated (counting does not stop early), and none may be non-finite
    if parallel(p.len()) {
        p.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .zip(first)
            .zip(second)
            .map(run)
            .filter(|&finite| !finite)
            .count()
            == 0
    } else {
        p.chunks_mut(CHUNK)
            .zip(g.chunks(CHUNK))
            .zip(first)
            .zip(second)
            .map(run)
            .filter(|&finite| !finite)
            .count()
            == 0
    }
}

/// SGD with momentum on a slice outside an [`Optimizer`], for updates fused into a kernel (a
/// [`BlockedHead`](crate::loss::BlockedHead)'s per-block closure): `v ← μ v + g`,
/// `p ← p − η v` ([`Method::Sgd`] without Nesterov or decay), with `velocity` starting at zero;
/// the same arithmetic as [`Optimizer::step`], over the same fixed chunks, so the same bits on
/// any number of threads. Returns whether every updated element is finite.
///
/// # Panics
/// When `p`, `velocity` and `g` differ in length.
#[track_caller]
pub fn sgd_momentum_update<F: Element>(
    p: &mut [F],
    velocity: &mut [F],
    g: &[F],
    lr: f64,
    momentum: f64,
) -> bool {
    assert!(
        p.len() == velocity.len() && p.len() == g.len(),
        "sgd_momentum_update: parameters {}, velocity {} and gradient {} differ in length",
        p.len(),
        velocity.len(),
        g.len()
    );
    let method = Method::Sgd {
        momentum,
        nesterov: false,
    };
    // a count past the first step: the velocity, zero at first, already holds the momentum
    // (at zero, `μ·0 + g` is the first step's `v ← g`)
    let (lr, decay, steps) = (F::from_f64(lr), F::ZERO, 2);
    update(method, lr, decay, steps, p, g, velocity, &mut [])
}

/// [`sgd_momentum_update`] on parameters stored in bfloat16 (a
/// [`Bf16Centres`](crate::loss::Bf16Centres)'s rows) with an f32 velocity: each parameter is
/// widened to f32 (exactly), updated by the same arithmetic, and rounded back to nearest even.
/// An update smaller than half the parameter's bf16 spacing (2⁻⁹ to 2⁻⁸ of its magnitude) is
/// lost in the rounding, and nothing carries the lost part to the next step: the velocity
/// grows to at most `g/(1 − μ)`, so a parameter whose `lr·g/(1 − μ)` stays under half its
/// spacing never moves (stochastic rounding or f32 master weights would). Returns whether
/// every updated element is finite.
///
/// # Panics
/// When `p`, `velocity` and `g` differ in length.
#[track_caller]
pub fn sgd_momentum_update_bf16(
    p: &mut [u16],
    velocity: &mut [f32],
    g: &[f32],
    lr: f64,
    momentum: f64,
) -> bool {
    assert!(
        p.len() == velocity.len() && p.len() == g.len(),
        "sgd_momentum_update_bf16: parameters {}, velocity {} and gradient {} differ in length",
        p.len(),
        velocity.len(),
        g.len()
    );
    const CHUNK: usize = 4096;
    let mut wide = [0.0f32; CHUNK];
    let mut finite = true;
    for start in (0..p.len()).step_by(CHUNK) {
        let end = (start + CHUNK).min(p.len());
        let w = &mut wide[..end - start];
        crate::kernels::widen_bf16(&p[start..end], w);
        let (v, g) = (&mut velocity[start..end], &g[start..end]);
        finite &= sgd_momentum_update(w, v, g, lr, momentum);
        crate::kernels::narrow_bf16(w, &mut p[start..end]);
    }
    finite
}

/// The update of one chunk: parameters `p`, gradients `g`, first and second moments `m`, `v`
/// (`v` empty for SGD), after `steps` updates including this one.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn update_chunk<F: Element>(
    method: Method,
    lr: F,
    decay: F,
    steps: u64,
    p: &mut [F],
    g: &[F],
    m: &mut [F],
    v: &mut [F],
) {
    let f = F::from_f64;
    match method {
        Method::Sgd { momentum, nesterov } => {
            let mu = f(momentum);
            let first_step = steps == 1;
            for ((p, &g), buf) in p.iter_mut().zip(g).zip(m) {
                let d = g + decay * *p;
                let step = if momentum == 0.0 {
                    d
                } else {
                    *buf = if first_step { d } else { mu * *buf + d };
                    if nesterov { d + mu * *buf } else { *buf }
                };
                *p -= lr * step;
            }
        }
        Method::Adam { beta1, beta2, eps } | Method::AdamW { beta1, beta2, eps } => {
            let decoupled = matches!(method, Method::AdamW { .. });
            let (b1, b2) = (f(beta1), f(beta2));
            let step_size = lr / f(bias_correction(beta1, steps));
            let bc2_sqrt = f(bias_correction(beta2, steps).sqrt());
            for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m).zip(v) {
                let grad = if decoupled {
                    *p -= lr * decay * *p;
                    g
                } else {
                    g + decay * *p
                };
                *m = b1 * *m + (F::ONE - b1) * grad;
                *v = b2 * *v + (F::ONE - b2) * grad * grad;
                *p -= step_size * *m / (v.sqrt() / bc2_sqrt + f(eps));
            }
        }
    }
}

/// Adam's bias correction `1 − βᵗ`, for any count `t` (`powi` where it takes `t`, as it always
/// has, so results stay the same bits; `powf` past `i32::MAX`).
fn bias_correction(beta: f64, t: u64) -> f64 {
    1.0 - match i32::try_from(t) {
        Ok(t) => beta.powi(t),
        Err(_) => beta.powf(t as f64),
    }
}

/// Scales all parameter gradients together so that their global L2 norm is at most
/// `max_norm` (as `torch.nn.utils.clip_grad_norm_`, with its 1e-6 guard); returns the norm
/// before clipping.
pub fn clip_grad_norm<F: Element>(grads: &mut Gradients<F>, max_norm: f64) -> f64 {
    let norm = grads
        .params()
        .map(|(_, g)| g.data().iter().map(|v| v.to_f64().powi(2)).sum::<f64>())
        .sum::<f64>()
        .sqrt();
    if norm > max_norm {
        let scale = F::from_f64(max_norm / (norm + 1e-6));
        grads.scale(scale);
    }
    norm
}
