//! Storage and shape: a contiguous, row-major buffer of elements.

use crate::{Element, Error};
use rand::Rng;
use rand_distr::{Distribution, StandardNormal, Uniform};
use serde::{Deserialize, Serialize};

/// A dense, row-major, contiguous array of `F` with a shape of any rank (0 is a scalar).
///
/// Matrix ops (matmul, normalisation, softmax, per-dimension reductions) take rank-2 tensors;
/// elementwise ops take any shape.
///
/// Deserialising checks that the data's length is the product of the shape, so a tensor read
/// from a file is as sound as one built in memory.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(bound = "F: Element", try_from = "RawTensor<F>")]
pub struct Tensor<F: Element = f32> {
    shape: Vec<usize>,
    data: Vec<F>,
}

/// A tensor as read from a file, before its shape is checked against its data.
#[derive(Deserialize)]
#[serde(bound = "F: Element")]
struct RawTensor<F: Element> {
    shape: Vec<usize>,
    #[serde(deserialize_with = "crate::files::read_elements")]
    data: Vec<F>,
}

impl<F: Element> TryFrom<RawTensor<F>> for Tensor<F> {
    type Error = Error;
    fn try_from(raw: RawTensor<F>) -> Result<Self, Error> {
        let expected = raw
            .shape
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .unwrap_or(usize::MAX);
        if expected != raw.data.len() {
            return Err(Error::DataLength {
                shape: raw.shape,
                expected,
                found: raw.data.len(),
            });
        }
        Ok(Tensor {
            shape: raw.shape,
            data: raw.data,
        })
    }
}

/// Number of elements a shape holds (1 for the scalar shape `[]`); `usize::MAX` when the product
/// overflows, a count no buffer can match.
pub fn numel(shape: &[usize]) -> usize {
    shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .unwrap_or(usize::MAX)
}

/// The element count of a tensor about to be allocated.
///
/// # Panics
/// When the count overflows, naming the shape (an overflowing product would otherwise wrap to a
/// small buffer in a release build, or fail with a bare "capacity overflow").
#[track_caller]
fn allocation_len(shape: &[usize]) -> usize {
    match shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)) {
        Some(len) => len,
        None => panic!("a tensor of shape {shape:?} holds more elements than a usize can count"),
    }
}

impl<F: Element> Drop for Tensor<F> {
    /// Large buffers go back to this thread's shelf for the next step (see `pool`).
    fn drop(&mut self) {
        crate::pool::give(std::mem::take(&mut self.data));
    }
}

impl<F: Element> Tensor<F> {
    /// A tensor of `shape` filled with `value`.
    #[track_caller]
    pub fn full(shape: &[usize], value: F) -> Self {
        let len = allocation_len(shape);
        let data = match crate::pool::take(len) {
            Some(mut buf) => {
                buf.fill(value);
                buf
            }
            None => vec![value; len],
        };
        Tensor {
            shape: shape.to_vec(),
            data,
        }
    }

    /// A tensor of `shape` whose elements are all about to be overwritten by a kernel: a
    /// lent buffer as it is (its old values are never read), or fresh zeros.
    #[track_caller]
    pub(crate) fn for_overwrite(shape: &[usize]) -> Self {
        let len = allocation_len(shape);
        Tensor {
            shape: shape.to_vec(),
            data: crate::pool::take(len).unwrap_or_else(|| vec![F::ZERO; len]),
        }
    }

    /// A tensor of zeros.
    #[track_caller]
    pub fn zeros(shape: &[usize]) -> Self {
        Self::full(shape, F::ZERO)
    }

    /// A tensor of ones.
    #[track_caller]
    pub fn ones(shape: &[usize]) -> Self {
        Self::full(shape, F::ONE)
    }

    /// A rank-0 tensor holding one value.
    pub fn scalar(value: F) -> Self {
        Self::full(&[], value)
    }

    /// Wraps `data` (row-major) as a tensor of `shape`.
    ///
    /// # Errors
    /// [`Error::DataLength`] when `data.len()` is not the product of `shape`.
    pub fn from_vec(data: Vec<F>, shape: &[usize]) -> Result<Self, Error> {
        let expected = numel(shape);
        if data.len() != expected {
            return Err(Error::DataLength {
                shape: shape.to_vec(),
                expected,
                found: data.len(),
            });
        }
        Ok(Tensor {
            shape: shape.to_vec(),
            data,
        })
    }

    /// Builds a tensor from `f(flat_index)`.
    #[track_caller]
    pub fn from_fn(shape: &[usize], f: impl FnMut(usize) -> F) -> Self {
        Tensor {
            shape: shape.to_vec(),
            data: (0..allocation_len(shape)).map(f).collect(),
        }
    }

    /// Samples each element from N(mean, std²). Samples are drawn in f64, so an `f32` and an
    /// `f64` tensor from the same seed hold the same values up to rounding.
    pub fn randn<R: Rng + ?Sized>(shape: &[usize], mean: f64, std: f64, rng: &mut R) -> Self {
        Self::from_fn(shape, |_| {
            let z: f64 = StandardNormal.sample(rng);
            F::from_f64(mean + std * z)
        })
    }

    /// Samples each element uniformly from `[low, high)`.
    ///
    /// # Panics
    /// When `low >= high` or either bound is not finite.
    #[track_caller]
    pub fn rand_uniform<R: Rng + ?Sized>(
        shape: &[usize],
        low: f64,
        high: f64,
        rng: &mut R,
    ) -> Self {
        let dist = match Uniform::new(low, high) {
            Ok(dist) => dist,
            Err(e) => panic!("rand_uniform: invalid range [{low}, {high}): {e}"),
        };
        Self::from_fn(shape, |_| F::from_f64(dist.sample(rng)))
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The number of dimensions.
    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// The number of elements.
    pub fn numel(&self) -> usize {
        self.data.len()
    }

    /// The elements, row-major.
    pub fn data(&self) -> &[F] {
        &self.data
    }

    /// The elements, row-major, mutable (the shape stays).
    pub fn data_mut(&mut self) -> &mut [F] {
        &mut self.data
    }

    /// Gives up the buffer.
    pub fn into_vec(mut self) -> Vec<F> {
        std::mem::take(&mut self.data)
    }

    /// `(rows, cols)` of a rank-2 tensor, `None` for any other rank.
    pub fn matrix_dims(&self) -> Option<(usize, usize)> {
        match self.shape[..] {
            [r, c] => Some((r, c)),
            _ => None,
        }
    }

    /// The value of a one-element tensor.
    ///
    /// # Panics
    /// When the tensor does not hold exactly one element.
    #[track_caller]
    pub fn item(&self) -> F {
        assert!(
            self.data.len() == 1,
            "item: tensor of shape {:?} holds {} elements, expected 1",
            self.shape,
            self.data.len()
        );
        self.data[0]
    }

    /// The same data under another shape with as many elements.
    ///
    /// # Panics
    /// When the element counts differ.
    #[track_caller]
    pub fn reshape(mut self, shape: &[usize]) -> Self {
        assert!(
            numel(shape) == self.data.len(),
            "shape mismatch in reshape: from {:?} to {:?}",
            self.shape,
            shape
        );
        self.shape = shape.to_vec();
        self
    }

    /// The transpose of a rank-2 tensor.
    ///
    /// # Panics
    /// When the tensor is not rank 2.
    #[track_caller]
    pub fn transpose(&self) -> Self {
        let Some((rows, cols)) = self.matrix_dims() else {
            panic!(
                "transpose: expected a rank-2 tensor, found shape {:?}",
                self.shape
            )
        };
        let mut out = Tensor::for_overwrite(&[cols, rows]);
        crate::kernels::transpose(&self.data, rows, cols, &mut out.data);
        out
    }

    /// Converts every element to another element type.
    pub fn cast<G: Element>(&self) -> Tensor<G> {
        Tensor {
            shape: self.shape.clone(),
            data: self.data.iter().map(|v| G::from_f64(v.to_f64())).collect(),
        }
    }

    /// The column of each row's largest element (the first, on ties).
    ///
    /// # Panics
    /// When the tensor is not rank 2 or has no columns.
    #[track_caller]
    pub fn argmax_rows(&self) -> Vec<usize> {
        let Some((_, cols)) = self.matrix_dims().filter(|&(_, c)| c > 0) else {
            panic!(
                "argmax_rows: expected [R, C] with C > 0, found shape {:?}",
                self.shape
            )
        };
        self.data
            .chunks(cols)
            .map(|row| (1..cols).fold(0, |best, j| if row[j] > row[best] { j } else { best }))
            .collect()
    }

    /// Checks that every element is finite.
    ///
    /// # Errors
    /// [`Error::NonFinite`] naming `what` and the first NaN or infinity.
    pub fn ensure_finite(&self, what: &str) -> Result<(), Error> {
        match crate::kernels::first_non_finite(&self.data) {
            None => Ok(()),
            Some(index) => Err(Error::NonFinite {
                what: what.to_string(),
                index,
                value: self.data[index].to_f64(),
            }),
        }
    }

    /// The largest absolute elementwise difference to `other`.
    ///
    /// # Panics
    /// When the shapes differ.
    #[track_caller]
    pub fn max_abs_diff(&self, other: &Tensor<F>) -> f64 {
        assert!(
            self.shape == other.shape,
            "shape mismatch in max_abs_diff: lhs {:?}, rhs {:?}",
            self.shape,
            other.shape
        );
        self.data
            .iter()
            .zip(&other.data)
            .map(|(a, b)| (a.to_f64() - b.to_f64()).abs())
            .fold(0.0, f64::max)
    }
}
