//! A synthetic open-set problem with the shape of face verification, at any scale.
//!
//! Each identity `k` has a prototype `z_k ~ N(0, I)` in a latent space. A sample of it is
//! `x = tanh(A (z_k + σ_w ε) + b) + σ_o η` (ε, η standard normal): a fixed random nonlinear map
//! of the prototype, with within-identity variation `σ_w` before the map and observation noise
//! `σ_o` after it. Identities are classes; the last ones can be held out as unseen identities
//! ([`Dataset::split_classes`](super::Dataset::split_classes)).

use super::Dataset;
use crate::{Error, SeededRng, Tensor, seeded_rng};
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

/// The generator's settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SyntheticConfig {
    /// Identities (classes).
    pub identities: usize,
    /// Training samples per identity.
    pub train_per_identity: usize,
    /// Test samples per identity.
    pub test_per_identity: usize,
    /// Latent (prototype) dimension.
    pub latent_dim: usize,
    /// Observed feature dimension.
    pub input_dim: usize,
    /// σ_w, the within-identity spread in the latent space.
    pub within: f64,
    /// σ_o, the observation noise.
    pub noise: f64,
    /// The seed of prototypes, map and samples.
    pub seed: u64,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        SyntheticConfig {
            identities: 400,
            train_per_identity: 40,
            test_per_identity: 10,
            latent_dim: 32,
            input_dim: 128,
            within: 0.6,
            noise: 0.2,
            seed: 0,
        }
    }
}

/// Generates `(train, test)`: the same identities, different samples.
///
/// # Errors
/// [`Error::InvalidSetting`] for zero identities, samples or dimensions, or negative noise.
pub fn synthetic(config: &SyntheticConfig) -> Result<(Dataset, Dataset), Error> {
    let positive = [
        ("identities", config.identities),
        ("train samples per identity", config.train_per_identity),
        ("test samples per identity", config.test_per_identity),
        ("latent dimension", config.latent_dim),
        ("input dimension", config.input_dim),
    ];
    for (name, value) in positive {
        if value == 0 {
            return Err(Error::InvalidSetting {
                name,
                value: 0.0,
                requirement: "positive",
            });
        }
    }
    for (name, value) in [
        ("within-identity spread", config.within),
        ("noise", config.noise),
    ] {
        if !(value >= 0.0 && value.is_finite()) {
            return Err(Error::InvalidSetting {
                name,
                value,
                requirement: "non-negative and finite",
            });
        }
    }
    let mut rng = seeded_rng(config.seed);
    let (l, d) = (config.latent_dim, config.input_dim);
    let map = Tensor::<f64>::randn(&[d, l], 0.0, 1.5 / (l as f64).sqrt(), &mut rng);
    let offset = Tensor::<f64>::randn(&[d], 0.0, 0.3, &mut rng);
    let prototypes = Tensor::<f64>::randn(&[config.identities, l], 0.0, 1.0, &mut rng);
    let sample = |k: usize, rng: &mut SeededRng| -> Vec<f32> {
        let z: Vec<f64> = (0..l)
            .map(|j| {
                let e: f64 = StandardNormal.sample(rng);
                prototypes.data()[k * l + j] + config.within * e
            })
            .collect();
        (0..d)
            .map(|i| {
                let row = &map.data()[i * l..(i + 1) * l];
                let pre: f64 = row.iter().zip(&z).map(|(a, z)| a * z).sum::<f64>();
                let e: f64 = StandardNormal.sample(rng);
                ((pre + offset.data()[i]).tanh() + config.noise * e) as f32
            })
            .collect()
    };
    let mut make = |per: usize| -> Result<Dataset, Error> {
        let mut features = Vec::with_capacity(config.identities * per * d);
        let mut labels = Vec::with_capacity(config.identities * per);
        for k in 0..config.identities {
            for _ in 0..per {
                features.extend(sample(k, &mut rng));
                labels.push(k);
            }
        }
        let features = Tensor::from_vec(features, &[labels.len(), d])?;
        Dataset::new(features, labels, config.identities)
    };
    let train = make(config.train_per_identity)?;
    let test = make(config.test_per_identity)?;
    Ok((train, test))
}
