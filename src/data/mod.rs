//! Data sets: the UCI 8x8 digits shipped inside the crate, and the type every loader returns.

mod digits;

pub use digits::{digits, parse_digits_csv};

use crate::{Error, Labels, Tensor};
use rand::Rng;
use rand::seq::SliceRandom;

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
