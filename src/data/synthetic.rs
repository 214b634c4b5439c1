//! A synthetic open-set problem with the shape of face verification, at any scale.
//!
//! Each identity `k` has a prototype `z_k ~ N(0, I)` in a latent space. A sample of it is
//! `x = tanh(A (z_k + σ_w ε) + b) + σ_o η` (ε, η standard normal): a fixed random nonlinear map
//! of the prototype, with within-identity variation `σ_w` before the map and observation noise
//! `σ_o` after it. Identities are classes; the last ones can be held out as unseen identities
//! ([`Dataset::split_classes`](super::Dataset::split_classes)).
//!
//! [`synthetic`] draws every prototype and sample from one stream and stores them.
//! [`SyntheticIdentities`] makes the same kind of problem with nothing stored: identity `k`'s
//! prototype is drawn from a generator seeded by `(seed, k)` and its sample `j` from one seeded
//! by `(seed, k, j)`, so any sample of any of millions of identities is made on demand, the
//! same bits in any order and on any number of threads. [`BatchSampler`] draws the
//! `(identity, sample)` pairs of training step `t` from `(seed, t)`.

use super::Dataset;
use crate::{Error, SeededRng, Tensor, seeded_rng};
use rand::RngExt;
use rand_distr::{Distribution, StandardNormal};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::ops::Range;

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

/// Checks that every count is positive and both spreads non-negative and finite.
fn check_settings(counts: &[(&'static str, usize)], within: f64, noise: f64) -> Result<(), Error> {
    for &(name, value) in counts {
        Error::check(name, value as f64, value > 0, "positive")?;
    }
    for (name, value) in [("within-identity spread", within), ("noise", noise)] {
        Error::check(name, value, value >= 0.0, "non-negative and finite")?;
    }
    Ok(())
}

/// The map every identity of a seed shares: `x = tanh(A z + b)`, `A` `[input, latent]` with
/// entries `N(0, 1.5²/latent)`, `b` `N(0, 0.3²)`.
#[derive(Clone, Debug)]
struct Observation {
    map: Tensor<f64>,
    offset: Tensor<f64>,
    latent: usize,
}

impl Observation {
    /// Draws `A` then `b` from `rng`.
    fn draw(latent: usize, input: usize, rng: &mut SeededRng) -> Self {
        let map = Tensor::<f64>::randn(&[input, latent], 0.0, 1.5 / (latent as f64).sqrt(), rng);
        let offset = Tensor::<f64>::randn(&[input], 0.0, 0.3, rng);
        Observation {
            map,
            offset,
            latent,
        }
    }

    /// `out = tanh(A (z + σ_w ε) + b) + σ_o η` for the prototype `z`: the `latent` draws of ε
    /// first, then one draw of η per output, from `rng`.
    fn sample(&self, z: &[f64], within: f64, noise: f64, rng: &mut SeededRng, out: &mut [f32]) {
        let z: Vec<f64> = z
            .iter()
            .map(|&z| {
                let e: f64 = StandardNormal.sample(rng);
                z + within * e
            })
            .collect();
        let rows = self.map.data().chunks(self.latent);
        for ((x, row), b) in out.iter_mut().zip(rows).zip(self.offset.data()) {
            let pre: f64 = row.iter().zip(&z).map(|(a, z)| a * z).sum::<f64>();
            let e: f64 = StandardNormal.sample(rng);
            *x = ((pre + b).tanh() + noise * e) as f32;
        }
    }
}

/// Generates `(train, test)`: the same identities, different samples.
///
/// # Errors
/// [`Error::InvalidSetting`] for zero identities, samples or dimensions, or negative noise.
pub fn synthetic(config: &SyntheticConfig) -> Result<(Dataset, Dataset), Error> {
    check_settings(
        &[
            ("identities", config.identities),
            ("train samples per identity", config.train_per_identity),
            ("test samples per identity", config.test_per_identity),
            ("latent dimension", config.latent_dim),
            ("input dimension", config.input_dim),
        ],
        config.within,
        config.noise,
    )?;
    let mut rng = seeded_rng(config.seed);
    let observation = Observation::draw(config.latent_dim, config.input_dim, &mut rng);
    let (l, d) = (config.latent_dim, config.input_dim);
    let prototypes = Tensor::<f64>::randn(&[config.identities, l], 0.0, 1.0, &mut rng);
    let sample = |k: usize, rng: &mut SeededRng| -> Vec<f32> {
        let mut x = vec![0.0; d];
        let prototype = &prototypes.data()[k * l..(k + 1) * l];
        observation.sample(prototype, config.within, config.noise, rng, &mut x);
        x
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

/// The settings of [`SyntheticIdentities`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IdentitiesConfig {
    /// Identities trained on: ids `0..trained`.
    pub trained: usize,
    /// Identities never trained on, for verification: ids `trained..trained + unseen`.
    pub unseen: usize,
    /// Training samples per trained identity: sample indices `0..train_samples`. Indices from
    /// `train_samples` on are never drawn for training (held-out samples of trained identities).
    pub train_samples: u64,
    /// Latent (prototype) dimension.
    pub latent_dim: usize,
    /// Observed feature dimension.
    pub input_dim: usize,
    /// σ_w, the within-identity spread in the latent space.
    pub within: f64,
    /// σ_o, the observation noise.
    pub noise: f64,
    /// The seed of the map, the prototypes and the samples.
    pub seed: u64,
}

impl Default for IdentitiesConfig {
    /// The settings of [`SyntheticConfig::default`], with 1,000 trained identities and 100
    /// unseen ones.
    fn default() -> Self {
        let stored = SyntheticConfig::default();
        IdentitiesConfig {
            trained: 1000,
            unseen: 100,
            train_samples: stored.train_per_identity as u64,
            latent_dim: stored.latent_dim,
            input_dim: stored.input_dim,
            within: stored.within,
            noise: stored.noise,
            seed: stored.seed,
        }
    }
}

/// The tags that keep the seeds of prototypes, samples and batches apart.
const PROTOTYPE: u64 = 1;
const SAMPLE: u64 = 2;
const BATCH: u64 = 3;

/// A seed from several numbers: each folded in through splitmix64's finaliser, so that
/// neighbouring ids give unrelated streams.
fn mix(parts: &[u64]) -> u64 {
    parts.iter().fold(0x9e37_79b9_7f4a_7c15, |h: u64, &p| {
        let mut z = (h ^ p).wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

/// The synthetic open-set problem made on demand (see the [module documentation](self)):
/// identity `k`'s prototype `z_k ~ N(0, I)` from a generator seeded by `(seed, k)`, its sample
/// `j` from one seeded by `(seed, k, j)`, through the map `A`, `b` drawn from `seed`. Nothing
/// per identity is stored.
#[derive(Clone, Debug)]
pub struct SyntheticIdentities {
    config: IdentitiesConfig,
    observation: Observation,
}

impl SyntheticIdentities {
    /// The generator of `config`.
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] for zero identities (trained or unseen), samples or
    /// dimensions, a negative or non-finite spread, or more identities than a `u64` counts.
    pub fn new(config: IdentitiesConfig) -> Result<Self, Error> {
        check_settings(
            &[
                ("trained identities", config.trained),
                ("unseen identities", config.unseen),
                ("latent dimension", config.latent_dim),
                ("input dimension", config.input_dim),
            ],
            config.within,
            config.noise,
        )?;
        Error::check(
            "training samples per identity",
            config.train_samples as f64,
            config.train_samples > 0,
            "positive",
        )?;
        let total = config.trained.checked_add(config.unseen);
        Error::check(
            "unseen identities",
            config.unseen as f64,
            total.is_some(),
            "small enough that trained + unseen identities fit a usize",
        )?;
        let mut rng = seeded_rng(config.seed);
        let observation = Observation::draw(config.latent_dim, config.input_dim, &mut rng);
        Ok(SyntheticIdentities {
            config,
            observation,
        })
    }

    /// The settings.
    pub fn config(&self) -> &IdentitiesConfig {
        &self.config
    }

    /// The ids of the identities trained on.
    pub fn trained(&self) -> Range<usize> {
        0..self.config.trained
    }

    /// The ids of the identities never trained on.
    pub fn unseen(&self) -> Range<usize> {
        self.config.trained..self.config.trained + self.config.unseen
    }

    /// The feature dimension of a sample.
    pub fn input_dim(&self) -> usize {
        self.config.input_dim
    }

    /// Identity `k`'s prototype `z_k` (`latent_dim` values).
    pub fn prototype(&self, identity: usize) -> Vec<f64> {
        let mut rng = seeded_rng(mix(&[self.config.seed, PROTOTYPE, identity as u64]));
        (0..self.config.latent_dim)
            .map(|_| StandardNormal.sample(&mut rng))
            .collect()
    }

    /// The noise-free image of identity `k`'s prototype, `tanh(A z_k + b)`: the centre its
    /// samples scatter about when `σ_w = 0`.
    pub fn centre(&self, identity: usize) -> Vec<f32> {
        let mut out = vec![0.0; self.config.input_dim];
        let mut unused = seeded_rng(0);
        let z = self.prototype(identity);
        self.observation.sample(&z, 0.0, 0.0, &mut unused, &mut out);
        out
    }

    /// Writes sample `index` of identity `identity` into `out` (`input_dim` values).
    ///
    /// # Panics
    /// When `out` is not `input_dim` long.
    #[track_caller]
    pub fn sample_into(&self, identity: usize, index: u64, out: &mut [f32]) {
        assert_eq!(
            out.len(),
            self.config.input_dim,
            "SyntheticIdentities::sample_into: a sample has {} features, the buffer {}",
            self.config.input_dim,
            out.len()
        );
        let z = self.prototype(identity);
        let mut rng = seeded_rng(mix(&[self.config.seed, SAMPLE, identity as u64, index]));
        let (within, noise) = (self.config.within, self.config.noise);
        self.observation.sample(&z, within, noise, &mut rng, out);
    }

    /// The samples `(identity, index)` as rows `[N, input_dim]`, made in parallel (each row
    /// from its own seed, so the same bits on any number of threads).
    pub fn features(&self, pairs: &[(usize, u64)]) -> Tensor<f32> {
        let d = self.config.input_dim;
        let mut data = vec![0.0f32; pairs.len() * d];
        data.par_chunks_mut(d)
            .zip(pairs)
            .for_each(|(row, &(identity, index))| self.sample_into(identity, index, row));
        Tensor::from_vec(data, &[pairs.len(), d]).expect("rows of width input_dim")
    }

    /// `per_identity` samples of each identity of `identities`, from sample index `first` on,
    /// labelled by position in `identities` (identity `identities[i]` is class `i`).
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] for no identities or no samples.
    pub fn dataset(
        &self,
        identities: Range<usize>,
        first: u64,
        per_identity: u64,
    ) -> Result<Dataset, Error> {
        Error::check(
            "samples per identity",
            per_identity as f64,
            per_identity > 0,
            "positive",
        )?;
        let classes = identities.len();
        Error::check("identities", classes as f64, classes > 0, "at least 1")?;
        let pairs: Vec<(usize, u64)> = identities
            .flat_map(|k| (first..first + per_identity).map(move |j| (k, j)))
            .collect();
        let labels = (0..classes)
            .flat_map(|c| std::iter::repeat_n(c, per_identity as usize))
            .collect();
        Dataset::new(self.features(&pairs), labels, classes)
    }
}

/// The `(identity, sample index)` pairs of each training step, drawn uniformly (identities in
/// `0..identities`, indices in `0..samples`) from a generator seeded by `(seed, step)`: the
/// same batch for the same step whatever came before, so a resumed run draws what the
/// uninterrupted one would have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchSampler {
    identities: usize,
    samples: u64,
    batch: usize,
    seed: u64,
}

impl BatchSampler {
    /// Batches of `batch` pairs over `identities` identities of `samples` samples each.
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] for zero identities, samples or batch size.
    pub fn new(identities: usize, samples: u64, batch: usize, seed: u64) -> Result<Self, Error> {
        Error::check("identities", identities as f64, identities > 0, "positive")?;
        Error::check(
            "samples per identity",
            samples as f64,
            samples > 0,
            "positive",
        )?;
        Error::check("batch size", batch as f64, batch > 0, "positive")?;
        Ok(BatchSampler {
            identities,
            samples,
            batch,
            seed,
        })
    }

    /// The pairs of step `step`.
    pub fn batch(&self, step: u64) -> Vec<(usize, u64)> {
        let mut rng = seeded_rng(mix(&[self.seed, BATCH, step]));
        (0..self.batch)
            .map(|_| {
                (
                    rng.random_range(0..self.identities),
                    rng.random_range(0..self.samples),
                )
            })
            .collect()
    }
}
