//! Seeded image augmentation for training: random translation and random erasing.

use crate::{Error, Tensor, seeded_rng};
use rand::{Rng, RngExt};
use serde::{Deserialize, Serialize};

/// Random changes to training images, drawn anew for every batch: each image is shifted by a
/// whole number of pixels `(dy, dx)`, each uniform in `[−translate, translate]`, the uncovered
/// border filled with zeros (the background of scaled MNIST or digits); then, with probability
/// `erase`, one rectangle of it is set to zero (random erasing, Zhong et al., AAAI 2020: an
/// area of 2-40% of the image, an aspect ratio between 0.3 and 1/0.3, log-uniform).
///
/// The draws of a batch come from a generator seeded by `(seed, epoch, step)` alone
/// ([`Augment::apply`]): the same on any number of threads, and a resumed run draws what the
/// uninterrupted run drew, with no generator state to save.
///
/// ```
/// use margrad::Tensor;
/// use margrad::data::Augment;
/// let images = Tensor::ones(&[4, 28 * 28]);
/// let augment = Augment { translate: 2, erase: 0.5 };
/// let a = augment.apply(&images, [1, 28, 28], 0, 1, 1);
/// assert_eq!(a, augment.apply(&images, [1, 28, 28], 0, 1, 1)); // seeded
/// assert_eq!(a.shape(), images.shape());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Augment {
    /// The largest shift, in pixels, along each axis.
    pub translate: usize,
    /// The probability that an image has a rectangle erased.
    pub erase: f64,
}

/// The erased rectangle's area, as a fraction of the image: uniform in this range.
const ERASE_AREA: (f64, f64) = (0.02, 0.4);
/// The erased rectangle's aspect ratio (height / width): log-uniform in `[r, 1/r]`.
const ERASE_ASPECT: f64 = 0.3;
/// Draws of a rectangle before giving up on one that does not fit the image.
const ERASE_TRIES: usize = 10;

impl Augment {
    /// Checks the settings for images of shape `image` (`[C, H, W]`).
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] for a shift as large as the image's smaller side (nothing of
    /// it would be left) or an erasing probability outside `[0, 1]`.
    pub fn validate(&self, image: [usize; 3]) -> Result<(), Error> {
        let side = image[1].min(image[2]);
        Error::check(
            "translate",
            self.translate as f64,
            self.translate < side,
            "smaller than the image's side",
        )?;
        Error::check(
            "erase",
            self.erase,
            (0.0..=1.0).contains(&self.erase),
            "a probability in [0, 1]",
        )
    }

    /// The batch `x` (`[N, C·H·W]`, rows of `[C, H, W]` images) augmented: each image shifted,
    /// then perhaps erased, with draws seeded by `(seed, epoch, step)`.
    ///
    /// # Panics
    /// When `x`'s rows are not images of shape `image`.
    #[track_caller]
    pub fn apply(
        &self,
        x: &Tensor<f32>,
        image: [usize; 3],
        seed: u64,
        epoch: u64,
        step: u64,
    ) -> Tensor<f32> {
        let [c, h, w] = image;
        let size = c * h * w;
        assert!(
            x.rank() == 2 && x.shape()[1] == size,
            "Augment::apply: rows of {size} pixels ({c}×{h}×{w}) expected, found {:?}",
            x.shape()
        );
        let mut rng = seeded_rng(batch_seed(seed, epoch, step));
        let mut out = Tensor::zeros(x.shape());
        let t = self.translate as i64;
        for (from, to) in x.data().chunks(size).zip(out.data_mut().chunks_mut(size)) {
            let (dy, dx) = (rng.random_range(-t..=t), rng.random_range(-t..=t));
            for (plane_in, plane_out) in from.chunks(h * w).zip(to.chunks_mut(h * w)) {
                shift(plane_in, plane_out, [h, w], [dy, dx]);
            }
            if self.erase > 0.0
                && rng.random_bool(self.erase)
                && let Some([y0, x0, eh, ew]) = erased_rectangle(&mut rng, [h, w])
            {
                for plane in to.chunks_mut(h * w) {
                    for row in plane.chunks_mut(w).skip(y0).take(eh) {
                        row[x0..x0 + ew].fill(0.0);
                    }
                }
            }
        }
        out
    }
}

/// A generator seed of its own for each batch of the run (SplitMix64's finaliser over the
/// three), so that no two batches draw the same shifts.
fn batch_seed(seed: u64, epoch: u64, step: u64) -> u64 {
    let mix = |mut z: u64| {
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    mix(mix(mix(seed ^ 0x0061_7567_6d65_6e74) ^ epoch) ^ step)
}

/// `to[y, x] = from[y − dy, x − dx]`, zero where that falls outside; `to` starts at zero.
fn shift(from: &[f32], to: &mut [f32], [h, w]: [usize; 2], [dy, dx]: [i64; 2]) {
    for y in 0..h as i64 {
        let sy = y - dy;
        if !(0..h as i64).contains(&sy) {
            continue;
        }
        let (x0, x1) = ((dx).max(0), (w as i64 + dx).min(w as i64));
        if x0 >= x1 {
            continue;
        }
        let (x0, x1, sy, y) = (x0 as usize, x1 as usize, sy as usize, y as usize);
        let sx0 = (x0 as i64 - dx) as usize;
        to[y * w + x0..y * w + x1].copy_from_slice(&from[sy * w + sx0..sy * w + sx0 + (x1 - x0)]);
    }
}

/// A random rectangle `[y, x, height, width]` inside an `h×w` image, of an area and aspect in
/// the ranges of random erasing; `None` when no draw fits.
fn erased_rectangle(rng: &mut impl Rng, [h, w]: [usize; 2]) -> Option<[usize; 4]> {
    let area = (h * w) as f64;
    for _ in 0..ERASE_TRIES {
        let target = area * rng.random_range(ERASE_AREA.0..ERASE_AREA.1);
        let log_ratio = rng.random_range(ERASE_ASPECT.ln()..-ERASE_ASPECT.ln());
        let ratio = log_ratio.exp();
        let eh = (target * ratio).sqrt().round() as usize;
        let ew = (target / ratio).sqrt().round() as usize;
        if (1..h).contains(&eh) && (1..w).contains(&ew) {
            let y = rng.random_range(0..=h - eh);
            let x = rng.random_range(0..=w - ew);
            return Some([y, x, eh, ew]);
        }
    }
    None
}
