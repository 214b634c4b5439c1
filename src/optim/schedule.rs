//! Learning-rate schedules: a factor per step (or epoch) that scales every group's rate.

use serde::{Deserialize, Serialize};

/// The shape of the decay after warm-up.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Schedule {
    /// Factor 1 throughout.
    Constant,
    /// Multiplied by `gamma` at each milestone passed: `gamma^(#milestones ≤ t)`.
    MultiStep {
        /// Steps at which the rate drops.
        milestones: Vec<usize>,
        /// The drop factor.
        gamma: f64,
    },
    /// Cosine annealing from 1 down to `min_factor` over `total` steps, then flat.
    Cosine {
        /// Steps of the annealing.
        total: usize,
        /// The final factor.
        min_factor: f64,
    },
}

/// A schedule with an optional linear warm-up: for `t < warmup` the factor is multiplied by
/// `(t + 1)/warmup`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    /// The decay.
    pub schedule: Schedule,
    /// Warm-up steps (0 = none).
    pub warmup: usize,
}

impl LrSchedule {
    /// The factor at step `t` (counting from 0).
    pub fn factor(&self, t: usize) -> f64 {
        let decay = match &self.schedule {
            Schedule::Constant => 1.0,
            Schedule::MultiStep { milestones, gamma } => {
                gamma.powi(milestones.iter().filter(|&&m| m <= t).count() as i32)
            }
            Schedule::Cosine { total, min_factor } => {
                let progress = (t as f64 / (*total).max(1) as f64).min(1.0);
                min_factor
                    + (1.0 - min_factor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
            }
        };
        let warm = if t < self.warmup {
            (t + 1) as f64 / self.warmup as f64
        } else {
            1.0
        };
        decay * warm
    }
}
