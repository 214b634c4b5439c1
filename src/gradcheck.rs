//! Checking analytic gradients against finite differences, in `f64`.
//!
//! The contract is PyTorch's `gradcheck`, and then some:
//! - central differences with step `eps = 1e-6`; an element passes when
//!   `|analytic − numeric| ≤ atol + rtol·|numeric|` (`atol = 1e-5`, `rtol = 1e-3`);
//! - the function may return any shape: what is checked is the vector-Jacobian product with a
//!   seeded random cotangent `v`, i.e. the gradient of `φ(x) = ⟨v, f(x)⟩`, which is wrong for
//!   almost every `v` when any Jacobian entry is wrong;
//! - backward run twice gives bitwise the same gradients; a zero cotangent gives zero
//!   gradients; every gradient has its input's shape;
//! - a failure names the input, the element (or direction), the analytic and numeric values;
//! - every probe also compares the one-sided slopes (free: the value at the point is shared),
//!   and a disagreement is examined at a quarter of the step: one-sided slopes that stay apart
//!   mean a kink (ReLU or |x| at 0, a tie), even where the central difference happens to match
//!   the analytic value; central differences that do not settle mean a singular point (a
//!   zero-norm row); both are reported as [`GradcheckError::NonDifferentiable`] with the
//!   reason, never as a mysterious mismatch;
//! - a fast mode ([`GradcheckOptions::directions`]) checks random directional derivatives
//!   instead of every element, for big inputs.

use crate::{Graph, Tensor, Var};
use rand::SeedableRng;
use rand::rngs::Xoshiro256PlusPlus;
use std::fmt;

/// Tolerances and mode of [`gradcheck_with`].
#[derive(Clone, Debug, PartialEq)]
pub struct GradcheckOptions {
    /// Finite-difference step.
    pub eps: f64,
    /// Absolute tolerance.
    pub atol: f64,
    /// Relative tolerance (relative to the numeric value).
    pub rtol: f64,
    /// Seed of the random cotangent (and of the directions in fast mode).
    pub seed: u64,
    /// `None`: check every element of every input. `Some(n)`: check `n` random directional
    /// derivatives per input (fast mode for large inputs).
    pub directions: Option<usize>,
}

impl Default for GradcheckOptions {
    fn default() -> Self {
        GradcheckOptions {
            eps: 1e-6,
            atol: 1e-5,
            rtol: 1e-3,
            seed: 0,
            directions: None,
        }
    }
}

/// Where a check looked: one element of an input, or one random direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// A flat element index.
    Element(usize),
    /// The index of a random direction (fast mode).
    Direction(usize),
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Probe::Element(i) => write!(f, "element {i}"),
            Probe::Direction(i) => write!(f, "direction {i}"),
        }
    }
}

/// What a passing check covered.
#[derive(Clone, Debug, PartialEq)]
pub struct GradcheckReport {
    /// Elements or directions compared.
    pub checked: usize,
    /// The largest `|analytic − numeric|` seen.
    pub max_abs_error: f64,
}

/// Why a gradient check failed.
#[derive(Clone, Debug, PartialEq)]
pub enum GradcheckError {
    /// A gradient's shape differs from its input's.
    GradientShape {
        /// Input position.
        input: usize,
        /// The input's shape.
        expected: Vec<usize>,
        /// The gradient's shape.
        found: Vec<usize>,
    },
    /// Two backward runs gave different gradients.
    NotReentrant {
        /// Input position.
        input: usize,
        /// Flat element index.
        element: usize,
        /// First run's value.
        first: f64,
        /// Second run's value.
        second: f64,
    },
    /// A zero cotangent gave a non-zero gradient.
    ZeroSeedNonzero {
        /// Input position.
        input: usize,
        /// Flat element index.
        element: usize,
        /// The gradient found.
        value: f64,
    },
    /// The function is not finite at the point or next to it.
    NonFiniteOutput {
        /// Input position and probe, or `None` at the unperturbed point.
        at: Option<(usize, Probe)>,
    },
    /// Analytic and numeric gradients disagree at a point where the function is smooth.
    Mismatch {
        /// Input position.
        input: usize,
        /// Element or direction.
        probe: Probe,
        /// From backward.
        analytic: f64,
        /// From central differences.
        numeric: f64,
    },
    /// The function has no derivative at the point, so no gradient can be checked there.
    NonDifferentiable {
        /// Input position.
        input: usize,
        /// Element or direction.
        probe: Probe,
        /// Why: "kink" (one-sided slopes differ) or "singular" (differences do not converge).
        reason: &'static str,
        /// Slope from the left.
        left: f64,
        /// Slope from the right.
        right: f64,
        /// From backward.
        analytic: f64,
    },
}

impl fmt::Display for GradcheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use GradcheckError::*;
        match self {
            GradientShape {
                input,
                expected,
                found,
            } => write!(
                f,
                "gradcheck: gradient of input {input} has shape {found:?}, the input {expected:?}"
            ),
            NotReentrant {
                input,
                element,
                first,
                second,
            } => write!(
                f,
                "gradcheck: backward is not reentrant: input {input} element {element} was \
                 {first:e}, then {second:e}"
            ),
            ZeroSeedNonzero {
                input,
                element,
                value,
            } => write!(
                f,
                "gradcheck: zero output gradient gave input {input} element {element} = {value:e}"
            ),
            NonFiniteOutput { at: None } => {
                write!(
                    f,
                    "gradcheck: the function is not finite at the given inputs"
                )
            }
            NonFiniteOutput {
                at: Some((input, probe)),
            } => write!(
                f,
                "gradcheck: the function is not finite next to input {input} {probe}"
            ),
            Mismatch {
                input,
                probe,
                analytic,
                numeric,
            } => write!(
                f,
                "gradcheck: gradient mismatch at input {input} {probe}: analytic {analytic:e}, \
                 numeric {numeric:e} (difference {:e})",
                analytic - numeric
            ),
            NonDifferentiable {
                input,
                probe,
                reason,
                left,
                right,
                analytic,
            } => write!(
                f,
                "gradcheck: not differentiable at input {input} {probe} ({reason}): slope \
                 {left:e} from the left, {right:e} from the right, analytic {analytic:e}; move \
                 the point off the {}",
                if *reason == "kink" {
                    "kink"
                } else {
                    "singularity"
                }
            ),
        }
    }
}

impl std::error::Error for GradcheckError {}

/// [`gradcheck_with`] at the default tolerances (PyTorch's), checking every element.
///
/// ```
/// use margrad::{Tensor, gradcheck};
/// let x = Tensor::from_vec(vec![0.3, -1.2, 2.0, 0.7], &[2, 2]).unwrap();
/// gradcheck(&[x], |_, v| v[0].tanh().matmul(v[0]).sum()).unwrap();
/// ```
///
/// # Errors
/// The first failed check, as a [`GradcheckError`].
pub fn gradcheck<Func>(inputs: &[Tensor<f64>], f: Func) -> Result<GradcheckReport, GradcheckError>
where
    Func: for<'g> Fn(&'g Graph<f64>, &[Var<'g, f64>]) -> Var<'g, f64>,
{
    gradcheck_with(inputs, &GradcheckOptions::default(), f)
}

/// Checks the gradients that backward gives `f` with respect to every input against central
/// finite differences. `f` receives a graph and one leaf per input and returns the output.
///
/// # Errors
/// The first failed check, as a [`GradcheckError`].
pub fn gradcheck_with<Func>(
    inputs: &[Tensor<f64>],
    options: &GradcheckOptions,
    f: Func,
) -> Result<GradcheckReport, GradcheckError>
where
    Func: for<'g> Fn(&'g Graph<f64>, &[Var<'g, f64>]) -> Var<'g, f64>,
{
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(options.seed);
    let output = evaluate(&f, inputs);
    output
        .ensure_finite("gradcheck output")
        .map_err(|_| GradcheckError::NonFiniteOutput { at: None })?;
    let cotangent = Tensor::<f64>::randn(output.shape(), 0.0, 1.0, &mut rng);
    let phi = |xs: &[Tensor<f64>]| -> f64 {
        let y = evaluate(&f, xs);
        y.data()
            .iter()
            .zip(cotangent.data())
            .map(|(a, b)| a * b)
            .sum()
    };

    let grads = analytic(&f, inputs, &cotangent);
    for (input, (x, g)) in inputs.iter().zip(&grads).enumerate() {
        if x.shape() != g.shape() {
            return Err(GradcheckError::GradientShape {
                input,
                expected: x.shape().to_vec(),
                found: g.shape().to_vec(),
            });
        }
    }
    let again = analytic(&f, inputs, &cotangent);
    for (input, (first, second)) in grads.iter().zip(&again).enumerate() {
        let differs = first.data().iter().zip(second.data());
        if let Some((element, (a, b))) = differs.enumerate().find(|(_, (a, b))| a != b) {
            return Err(GradcheckError::NotReentrant {
                input,
                element,
                first: *a,
                second: *b,
            });
        }
    }
    let zero = analytic(&f, inputs, &Tensor::zeros(output.shape()));
    for (input, g) in zero.iter().enumerate() {
        if let Some((element, &value)) = g.data().iter().enumerate().find(|(_, v)| **v != 0.0) {
            return Err(GradcheckError::ZeroSeedNonzero {
                input,
                element,
                value,
            });
        }
    }

    let center = phi(inputs);
    let mut report = GradcheckReport {
        checked: 0,
        max_abs_error: 0.0,
    };
    for (input, (x, grad)) in inputs.iter().zip(&grads).enumerate() {
        let probes: Vec<(Probe, Tensor<f64>)> = match options.directions {
            None => (0..x.numel())
                .map(|k| {
                    let mut e = Tensor::zeros(x.shape());
                    e.data_mut()[k] = 1.0;
                    (Probe::Element(k), e)
                })
                .collect(),
            Some(n) => (0..n)
                .map(|d| {
                    let u = Tensor::randn(x.shape(), 0.0, 1.0, &mut rng);
                    (Probe::Direction(d), u)
                })
                .collect(),
        };
        for (probe, direction) in probes {
            let shifted = |t: f64| -> f64 {
                let mut xs = inputs.to_vec();
                let target = xs[input].data_mut();
                target
                    .iter_mut()
                    .zip(direction.data())
                    .for_each(|(v, u)| *v += t * u);
                phi(&xs)
            };
            let analytic: f64 = grad
                .data()
                .iter()
                .zip(direction.data())
                .map(|(g, u)| g * u)
                .sum();
            let h = options.eps;
            let (plus, minus) = (shifted(h), shifted(-h));
            let numeric = (plus - minus) / (2.0 * h);
            if !numeric.is_finite() {
                return Err(GradcheckError::NonFiniteOutput {
                    at: Some((input, probe)),
                });
            }
            let error = (analytic - numeric).abs();
            report.checked += 1;
            report.max_abs_error = report.max_abs_error.max(error);
            let tolerance = options.atol + options.rtol * numeric.abs();
            let (left, right) = ((center - minus) / h, (plus - center) / h);
            if error <= tolerance && (right - left).abs() <= tolerance {
                continue;
            }
            // Examine the point at a quarter of the step: a smooth function's one-sided slopes
            // close in on each other and its central differences settle; a kink's do not close,
            // a singularity's do not settle.
            let q = h / 4.0;
            let (plus_q, minus_q) = (shifted(q), shifted(-q));
            let gap_q = ((plus_q - center) / q - (center - minus_q) / q).abs();
            let central_q = (plus_q - minus_q) / (2.0 * q);
            let reason = if gap_q > tolerance && gap_q > 0.5 * (right - left).abs() {
                Some("kink")
            } else if error > tolerance && (central_q - numeric).abs() > tolerance {
                Some("singular")
            } else {
                None
            };
            match reason {
                Some(reason) => {
                    return Err(GradcheckError::NonDifferentiable {
                        input,
                        probe,
                        reason,
                        left,
                        right,
                        analytic,
                    });
                }
                None if error > tolerance => {
                    return Err(GradcheckError::Mismatch {
                        input,
                        probe,
                        analytic,
                        numeric,
                    });
                }
                None => {}
            }
        }
    }
    Ok(report)
}

/// `f` at `inputs` on an inference graph.
fn evaluate<Func>(f: &Func, inputs: &[Tensor<f64>]) -> Tensor<f64>
where
    Func: for<'g> Fn(&'g Graph<f64>, &[Var<'g, f64>]) -> Var<'g, f64>,
{
    let graph = Graph::inference();
    let vars: Vec<_> = inputs.iter().map(|x| graph.leaf(x.clone())).collect();
    f(&graph, &vars).to_tensor()
}

/// The gradients of `⟨cotangent, f⟩` with respect to each input (zeros where it has none).
fn analytic<Func>(f: &Func, inputs: &[Tensor<f64>], cotangent: &Tensor<f64>) -> Vec<Tensor<f64>>
where
    Func: for<'g> Fn(&'g Graph<f64>, &[Var<'g, f64>]) -> Var<'g, f64>,
{
    let graph = Graph::new();
    let vars: Vec<_> = inputs.iter().map(|x| graph.leaf(x.clone())).collect();
    let grads = f(&graph, &vars).backward_with(cotangent.clone());
    vars.iter()
        .zip(inputs)
        .map(|(&v, x)| {
            grads
                .wrt(v)
                .cloned()
                .unwrap_or_else(|| Tensor::zeros(x.shape()))
        })
        .collect()
}
