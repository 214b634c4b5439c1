//! Data sets: the UCI 8x8 digits shipped inside the crate, MNIST's IDX files, a synthetic
//! open-set generator, and the type every loader returns, with seeded batching and splits.

mod augment;
mod digits;
mod idx;
mod synthetic;

pub use augment::Augment;
pub use digits::{digits, parse_digits_csv};
pub use idx::{IdxArray, MnistSplit, load_idx, load_mnist, parse_idx};
pub use synthetic::{
    BatchSampler, IdentitiesConfig, SyntheticConfig, SyntheticIdentities, synthetic,
};

use crate::{Error, Labels, Tensor};
use rand::Rng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

/// How a loader turns raw samples into a model's input features: `x = raw / divide_by`. A
/// model trained on one loader's features expects its inputs scaled the same way, so an
/// export records it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InputScaling {
    /// What a raw sample is.
    pub raw: String,
    /// The divisor applied to every raw value.
    pub divide_by: f64,
}

impl InputScaling {
    /// The embedded digits: pixel values `0..=16`, divided by 16 ([`digits`]).
    pub fn digits() -> Self {
        InputScaling {
            raw: "UCI 8x8 digits: 64 pixel values in 0..=16, row by row".to_string(),
            divide_by: f64::from(digits::PIXEL_MAX),
        }
    }

    /// MNIST: pixel values `0..=255`, divided by 255 ([`load_mnist`]).
    pub fn mnist() -> Self {
        InputScaling {
            raw: "MNIST: 784 pixel values in 0..=255, row by row".to_string(),
            divide_by: f64::from(idx::MNIST_PIXEL_MAX),
        }
    }

    /// Features used as given (the synthetic data, or features scaled by their user).
    pub fn none() -> Self {
        InputScaling {
            raw: "features used as given".to_string(),
            divide_by: 1.0,
        }
    }
}

/// Samples as rows of a feature matrix, with one class label per row.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// `[N, D]` features.
    pub features: Tensor<f32>,
    /// `N` labels in `0..classes`.
    pub labels: Vec<usize>,
    /// The number of classes.
    pub classes: usize,
}

impl Dataset {
    /// Checks that features are `[N, D]` with `N` labels, each below `classes`, all finite.
    ///
    /// # Errors
    /// [`Error::DataLength`] when counts disagree, [`Error::LabelOutOfRange`],
    /// [`Error::NonFinite`].
    pub fn new(features: Tensor<f32>, labels: Vec<usize>, classes: usize) -> Result<Self, Error> {
        let rows = features.matrix_dims().map_or(0, |(r, _)| r);
        if features.rank() != 2 || rows != labels.len() {
            return Err(Error::DataLength {
                shape: features.shape().to_vec(),
                expected: labels.len(),
                found: rows,
            });
        }
        Labels::new(labels.clone(), classes)?;
        features.ensure_finite("features")?;
        Ok(Dataset {
            features,
            labels,
            classes,
        })
    }

    /// The number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The feature dimension `D`.
    pub fn dim(&self) -> usize {
        self.features.shape()[1]
    }

    /// The samples at `indices`, in that order, as a feature matrix and checked labels.
    pub fn batch(&self, indices: &[usize]) -> (Tensor<f32>, Labels) {
        let d = self.dim();
        let src = self.features.data();
        let mut data = Vec::with_capacity(indices.len() * d);
        for &i in indices {
            data.extend_from_slice(&src[i * d..(i + 1) * d]);
        }
        let labels = indices.iter().map(|&i| self.labels[i]).collect();
        (
            Tensor::from_vec(data, &[indices.len(), d]).expect("rows of width d"),
            Labels::new(labels, self.classes).expect("labels were checked on construction"),
        )
    }

    /// The samples of classes `keep` (relabelled `0..keep.len()` in that order).
    pub fn select_classes(&self, keep: &[usize]) -> Dataset {
        let mut relabel = vec![None; self.classes];
        for (new, &old) in keep.iter().enumerate() {
            relabel[old] = Some(new);
        }
        let indices: Vec<usize> = (0..self.len())
            .filter(|&i| relabel[self.labels[i]].is_some())
            .collect();
        let (features, _) = self.batch(&indices);
        Dataset {
            features,
            labels: indices
                .iter()
                .map(|&i| relabel[self.labels[i]].expect("kept"))
                .collect(),
            classes: keep.len(),
        }
    }

    /// An open-set split by class: `(known, unseen)`, the last `holdout` classes unseen. Both
    /// are relabelled from 0 (unseen class `C − holdout + j` becomes `j`).
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] unless `0 < holdout < classes`.
    pub fn split_classes(&self, holdout: usize) -> Result<(Dataset, Dataset), Error> {
        if holdout == 0 || holdout >= self.classes {
            return Err(Error::InvalidSetting {
                name: "holdout classes",
                value: holdout as f64,
                requirement: "between 1 and the number of classes minus 1",
            });
        }
        let known: Vec<usize> = (0..self.classes - holdout).collect();
        let unseen: Vec<usize> = (self.classes - holdout..self.classes).collect();
        Ok((self.select_classes(&known), self.select_classes(&unseen)))
    }

    /// Batches of at most `size` samples in a seeded random order, covering every sample once.
    pub fn shuffled_batches<R: Rng + ?Sized>(
        &self,
        size: usize,
        rng: &mut R,
    ) -> impl Iterator<Item = (Tensor<f32>, Labels)> + '_ {
        let mut order: Vec<usize> = (0..self.len()).collect();
        order.shuffle(rng);
        let batches: Vec<Vec<usize>> = order.chunks(size.max(1)).map(<[usize]>::to_vec).collect();
        batches.into_iter().map(move |idx| self.batch(&idx))
    }

    /// A seeded random split: `(train, test)` with `test_fraction` of the samples in test.
    pub fn split<R: Rng + ?Sized>(&self, test_fraction: f64, rng: &mut R) -> (Dataset, Dataset) {
        let mut order: Vec<usize> = (0..self.len()).collect();
        order.shuffle(rng);
        let test_len = ((self.len() as f64) * test_fraction).round() as usize;
        let (test, train) = order.split_at(test_len);
        let subset = |idx: &[usize]| {
            let (features, labels) = self.batch(idx);
            Dataset {
                features,
                labels: labels.values().to_vec(),
                classes: self.classes,
            }
        };
        (subset(train), subset(test))
    }
}
