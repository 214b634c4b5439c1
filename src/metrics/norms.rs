//! The norms of the features before L2 normalisation: what MagFace and AdaFace read as a
//! sample's quality, measured on the test split.
//!
//! A cosine head sees only the direction of a feature `f`; its norm `‖f‖` is free. MagFace
//! (Meng et al. 2021) ties its margin to the norm and claims that the norm then grows with how
//! easy and clean a sample is; AdaFace reads the norm, against its running statistics, as an
//! image-quality proxy. [`FeatureNorms`] gives the norms' distribution and the mean norm of the
//! samples the model classifies correctly and of those it gets wrong: the measurement of that
//! claim (a larger norm for the correct ones). [`MagFaceNorms`] adds where MagFace's clamped
//! range `[l_a, u_a]` cuts the norms and the margin `m(a)` they get.

use crate::loss::MagFace;
use crate::{Element, Error, Tensor};
use serde::{Deserialize, Serialize};

/// The distribution of the norms `‖f_i‖` of `N` features, and its split by correct and wrong
/// classification. Quantiles interpolate linearly between the sorted norms (NumPy's default:
/// the `q`-quantile sits at position `q·(N − 1)`); the standard deviation is the population's
/// (`np.std`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FeatureNorms {
    /// `N`, the features measured.
    pub samples: usize,
    /// The mean norm.
    pub mean: f64,
    /// The population standard deviation of the norms.
    pub std: f64,
    /// The smallest norm.
    pub min: f64,
    /// The 5% quantile.
    pub p5: f64,
    /// The 25% quantile.
    pub p25: f64,
    /// The median.
    pub median: f64,
    /// The 75% quantile.
    pub p75: f64,
    /// The 95% quantile.
    pub p95: f64,
    /// The largest norm.
    pub max: f64,
    /// The features whose sample is classified correctly.
    pub correct: usize,
    /// Their mean norm (`null` when there is none).
    pub mean_correct: Option<f64>,
    /// The mean norm of the features whose sample is classified wrongly (`null` when there is
    /// none).
    pub mean_wrong: Option<f64>,
}

/// `‖f_i‖₂` of each row of `features` (`[N, D]`), summed in f64.
///
/// # Panics
/// When `features` is not a matrix.
#[track_caller]
pub fn row_norms<F: Element>(features: &Tensor<F>) -> Vec<f64> {
    let (n, d) = features.matrix_dims().unwrap_or_else(|| {
        panic!(
            "row_norms: features must be [N, D], found {:?}",
            features.shape()
        )
    });
    if d == 0 {
        return vec![0.0; n];
    }
    features
        .data()
        .chunks(d)
        .map(|row| {
            row.iter()
                .map(|v| v.to_f64() * v.to_f64())
                .sum::<f64>()
                .sqrt()
        })
        .collect()
}

/// The `q`-quantile of `sorted` (ascending, not empty), interpolated linearly.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let position = q * (sorted.len() - 1) as f64;
    let (below, fraction) = (position.floor() as usize, position.fract());
    let above = (below + 1).min(sorted.len() - 1);
    sorted[below] + fraction * (sorted[above] - sorted[below])
}

/// The mean of `values`, `None` when there is none.
fn mean(values: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, count) = values.fold((0.0, 0usize), |(s, c), v| (s + v, c + 1));
    (count > 0).then(|| sum / count as f64)
}

/// `Ok` when `norms` can be summarised: [`Error::EmptyData`] for no norm (a distribution of
/// nothing has no mean to report), [`Error::NonFinite`] naming the first NaN or infinite one
/// (a mean or quantile of it would be no number to report).
fn check_norms(norms: &[f64]) -> Result<(), Error> {
    if norms.is_empty() {
        return Err(Error::EmptyData {
            what: "features to measure the norms of".to_string(),
        });
    }
    match norms.iter().position(|a| !a.is_finite()) {
        Some(index) => Err(Error::NonFinite {
            what: "feature norm".into(),
            index,
            value: norms[index],
        }),
        None => Ok(()),
    }
}

/// The [`FeatureNorms`] of `norms`, sample `i` classified correctly when `correct[i]`.
///
/// # Errors
/// [`Error::EmptyData`] for no norm, [`Error::NonFinite`] for a NaN or infinite one.
///
/// # Panics
/// When the slices differ in length.
#[track_caller]
pub fn feature_norms(norms: &[f64], correct: &[bool]) -> Result<FeatureNorms, Error> {
    assert_eq!(
        norms.len(),
        correct.len(),
        "feature_norms: one correctness per norm"
    );
    check_norms(norms)?;
    let n = norms.len() as f64;
    let average = norms.iter().sum::<f64>() / n;
    let variance = norms.iter().map(|a| (a - average).powi(2)).sum::<f64>() / n;
    let mut sorted = norms.to_vec();
    sorted.sort_by(f64::total_cmp);
    let of = |right: bool| {
        mean(
            norms
                .iter()
                .zip(correct)
                .filter(|&(_, &c)| c == right)
                .map(|(&a, _)| a),
        )
    };
    Ok(FeatureNorms {
        samples: norms.len(),
        mean: average,
        std: variance.sqrt(),
        min: sorted[0],
        p5: quantile(&sorted, 0.05),
        p25: quantile(&sorted, 0.25),
        median: quantile(&sorted, 0.5),
        p75: quantile(&sorted, 0.75),
        p95: quantile(&sorted, 0.95),
        max: sorted[sorted.len() - 1],
        correct: correct.iter().filter(|&&c| c).count(),
        mean_correct: of(true),
        mean_wrong: of(false),
    })
}

/// Where MagFace's norm range `[l_a, u_a]` cuts a set of norms, and the margin they get.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MagFaceNorms {
    /// `l_a`, below which the norm is clamped (its margin is `l_m`, its gradient 0).
    pub lower_norm: f64,
    /// `u_a`, above which the norm is clamped (its margin is `u_m`, its gradient 0).
    pub upper_norm: f64,
    /// The share of the norms at or below `l_a`.
    pub at_or_below_lower: f64,
    /// The share of the norms at or above `u_a`.
    pub at_or_above_upper: f64,
    /// The mean adaptive margin `m(a)` (radians) over the norms.
    pub mean_margin: f64,
}

/// The [`MagFaceNorms`] of `norms` under `loss`'s range and margins ([`MagFace::margin`]).
///
/// # Errors
/// [`Error::EmptyData`] for no norm, [`Error::NonFinite`] for a NaN or infinite one.
pub fn magface_norms(norms: &[f64], loss: &MagFace) -> Result<MagFaceNorms, Error> {
    check_norms(norms)?;
    let (la, ua) = (loss.lower_norm, loss.upper_norm);
    let share = |keep: &dyn Fn(f64) -> bool| {
        norms.iter().filter(|&&a| keep(a)).count() as f64 / norms.len() as f64
    };
    Ok(MagFaceNorms {
        lower_norm: la,
        upper_norm: ua,
        at_or_below_lower: share(&|a| a <= la),
        at_or_above_upper: share(&|a| a >= ua),
        mean_margin: mean(norms.iter().map(|&a| loss.margin(a).0)).expect("not empty"),
    })
}
