//! Class centres stored in bfloat16: half the memory of f32 and half the bytes a head step
//! streams, widened to f32 (exactly) block by block, so that every product and sum runs in
//! f32. Rounding back after an update is to nearest even, with AVX-512 BF16 where the CPU has
//! it.

use super::blocked::CentreRows;
use crate::kernels::{has_avx512_bf16, narrow_bf16, widen_bf16};
use crate::{Error, Tensor};
use std::ops::Range;

/// A `[rows, D]` matrix of centres in bfloat16 (each value the upper half of an f32's bits).
#[derive(Clone, Debug, PartialEq)]
pub struct Bf16Centres {
    bits: Vec<u16>,
    shape: [usize; 2],
}

impl Bf16Centres {
    /// The f32 matrix `centres` (`[rows, D]`) rounded to bfloat16, to nearest even.
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] when `centres` is not a matrix.
    pub fn from_f32(centres: &Tensor<f32>) -> Result<Self, Error> {
        let &[rows, cols] = centres.shape() else {
            return Err(Error::InvalidSetting {
                name: "bf16 centres rank",
                value: centres.shape().len() as f64,
                requirement: "2 (a [C, D] matrix)",
            });
        };
        let mut bits = vec![0; rows * cols];
        narrow_bf16(centres.data(), &mut bits);
        Ok(Bf16Centres {
            bits,
            shape: [rows, cols],
        })
    }

    /// The centres widened to f32 (exactly).
    pub fn to_f32(&self) -> Tensor<f32> {
        let mut out = Tensor::zeros(&self.shape);
        widen_bf16(&self.bits, out.data_mut());
        out
    }

    /// `[rows, D]`.
    pub fn shape(&self) -> [usize; 2] {
        self.shape
    }

    /// The stored bits, row-major.
    pub fn bits(&self) -> &[u16] {
        &self.bits
    }

    /// Whether rounding to bfloat16 runs on AVX-512 BF16 here (else the portable code, with
    /// the same results).
    pub fn uses_avx512_bf16() -> bool {
        has_avx512_bf16()
    }

    /// Bytes held by the values: 2 per element.
    pub fn bytes(&self) -> usize {
        2 * self.bits.len()
    }
}

impl CentreRows<f32> for Bf16Centres {
    type Stored = u16;

    fn direct(&self, _: Range<usize>) -> Option<&[f32]> {
        None
    }

    fn copy_to(&self, range: Range<usize>, out: &mut [f32]) {
        widen_bf16(&self.bits[range], out);
    }

    fn stored_mut(&mut self, range: Range<usize>) -> &mut [u16] {
        &mut self.bits[range]
    }
}
