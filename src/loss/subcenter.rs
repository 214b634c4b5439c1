//! Sub-centres: `K` centres per class, the class's cosine the best of its `K` (sub-center
//! ArcFace, Deng et al. 2020), and the dominant sub-centre of each class, by which noisy
//! samples are found.
//!
//! The cosines to all `C·K` sub-centres come class-major, as the reference implementations lay
//! out their `[C·K, D]` (or `[D, C·K]`) weight: columns `j·K .. j·K + K` are class `j`'s.
//! [`max_over_subcenters`] reduces them to `[B, C]`, in front of any margin loss:
//!
//! ```
//! use margrad::loss::{ArcFallback, MarginLoss, margin_cross_entropy, max_over_subcenters};
//! use margrad::{Graph, Labels, Tensor};
//!
//! let g = Graph::<f64>::new();
//! // two samples, two classes, K = 3 sub-centres each
//! let cos = g.leaf(Tensor::from_vec(vec![0.1, 0.7, 0.2, -0.3, 0.0, 0.4,
//!                                        0.5, 0.1, 0.2, 0.9, 0.3, 0.3], &[2, 6]).unwrap());
//! let class_cos = max_over_subcenters(cos, 3).unwrap();
//! assert_eq!(class_cos.to_tensor().data(), &[0.7, 0.4, 0.5, 0.9]);
//! let arcface = MarginLoss::arcface(64.0, 0.5, ArcFallback::Threshold).unwrap();
//! let labels = Labels::new(vec![0, 1], 2).unwrap();
//! let loss = margin_cross_entropy(class_cos, &labels, &arcface).unwrap();
//! let grads = loss.backward(); // only the winning sub-centre of each class gets a gradient
//! assert_eq!(grads.wrt(cos).unwrap().data()[0], 0.0);
//! ```

use crate::kernels::for_row_blocks;
use crate::{CustomOp, Element, Error, InputGrad, Labels, Tensor, Var};

/// Checks a sub-centre count.
///
/// # Errors
/// [`Error::InvalidSetting`] when `k` is 0.
pub fn check_subcenters(k: usize) -> Result<(), Error> {
    Error::check("sub-centres per class K", k as f64, k > 0, "at least 1")
}

/// Which of the values in `group` is largest: the first of equal maxima; a NaN wins (so that
/// it reaches the loss and is reported there rather than hidden). Branch-free: the winner's
/// place is random, which a branch would mispredict half the time.
#[inline(always)]
pub(super) fn argmax_in_group<F: Element>(group: &[F]) -> usize {
    let (mut best, mut top) = (0, group[0]);
    for (a, &v) in group.iter().enumerate().skip(1) {
        let top_is_number = top.partial_cmp(&top).is_some();
        let v_is_nan = v.partial_cmp(&v).is_none();
        let wins = (v > top) | (top_is_number & v_is_nan);
        best = if wins { a } else { best };
        top = if wins { v } else { top };
    }
    best
}

/// The recorded max: the winners are found again from the input in backward, so nothing of
/// size `B×C` is stored.
struct SubcenterMax {
    k: usize,
}

impl<F: Element> CustomOp<F> for SubcenterMax {
    fn name(&self) -> &'static str {
        "max over sub-centres"
    }

    /// `∂/∂c_{i, jK+a} = g_ij` for the winning `a`, 0 for the other `K − 1`.
    fn backward(
        &self,
        inputs: &[&Tensor<F>],
        _output: &Tensor<F>,
        g: &[F],
        grads: &mut [Option<InputGrad<'_, F>>],
    ) {
        let Some(dcos) = &mut grads[0] else { return };
        let (k, cos) = (self.k, inputs[0].data());
        let fresh = dcos.is_fresh();
        let cols = inputs[0].shape()[1];
        for_row_blocks(
            dcos.data(),
            cols,
            #[inline(always)]
            |r0, block| {
                let start = r0 * cols;
                let groups = block.chunks_mut(k).zip(cos[start..].chunks(k));
                for ((d, c), &g) in groups.zip(&g[start / k..]) {
                    let win = argmax_in_group(c);
                    if fresh {
                        d.fill(F::ZERO);
                    }
                    d[win] += g;
                }
            },
        );
    }
}

/// `c_ij = max_a c_{i, jK+a}`: each class's cosine, the best of its `k` sub-centres (`[B, C·k]`
/// → `[B, C]`). The gradient goes to the winning sub-centre only; of equal maxima the first
/// wins. With `k = 1` it is the identity.
///
/// # Errors
/// [`Error::InvalidSetting`] when `k` is 0.
///
/// # Panics
/// When `cos` is not rank 2 or its width is not a multiple of `k` (a mistake in composing ops).
#[track_caller]
pub fn max_over_subcenters<F: Element>(cos: Var<'_, F>, k: usize) -> Result<Var<'_, F>, Error> {
    check_subcenters(k)?;
    let (rows, classes) = class_dims(&cos.shape(), k, "max_over_subcenters");
    let mut out = Tensor::zeros(&[rows, classes]);
    {
        let x = cos.value();
        let cos_data = x.data();
        for_row_blocks(
            out.data_mut(),
            classes,
            #[inline(always)]
            |r0, block| {
                let groups = cos_data[r0 * classes * k..].chunks(k);
                for (o, c) in block.iter_mut().zip(groups) {
                    *o = c[argmax_in_group(c)];
                }
            },
        );
    }
    Ok(cos.graph().custom(SubcenterMax { k }, &[cos], out))
}

/// `(B, C)` of a `[B, C·k]` shape; panics (at the caller's line) naming `op` otherwise.
#[track_caller]
pub(crate) fn class_dims(shape: &[usize], k: usize, op: &str) -> (usize, usize) {
    let [rows, cols] = shape[..] else {
        panic!("{op}: expected [B, C·K] cosines, found shape {shape:?}")
    };
    assert!(
        cols % k == 0,
        "{op}: {cols} columns are not a whole number of classes of K = {k} sub-centres"
    );
    (rows, cols / k)
}

/// The sub-centre (`0..k`) each sample picks in its own class: the argmax over its label's `k`
/// columns of `cos` (`[N, C·k]`, class-major), first of equal maxima.
///
/// # Errors
/// [`Error::InvalidSetting`] for `k = 0`; [`Error::DataLength`] when there are not `N` labels;
/// [`Error::LabelOutOfRange`] for a label not below `C`.
///
/// # Panics
/// When `cos` is not rank 2 or its width is not a multiple of `k`.
#[track_caller]
pub fn chosen_subcenters<F: Element>(
    cos: &Tensor<F>,
    labels: &Labels,
    k: usize,
) -> Result<Vec<usize>, Error> {
    check_subcenters(k)?;
    let (rows, classes) = class_dims(cos.shape(), k, "chosen_subcenters");
    if labels.len() != rows {
        return Err(Error::DataLength {
            shape: vec![rows],
            expected: rows,
            found: labels.len(),
        });
    }
    let row_len = classes * k;
    labels
        .values()
        .iter()
        .enumerate()
        .map(|(i, &y)| {
            if y >= classes {
                return Err(Error::LabelOutOfRange {
                    index: i,
                    label: y,
                    classes,
                });
            }
            let start = i * row_len + y * k;
            Ok(argmax_in_group(&cos.data()[start..start + k]))
        })
        .collect()
}

/// Each class's dominant sub-centre: the one most of its samples pick
/// ([`chosen_subcenters`]); of equally popular ones the first; `None` for a class with no
/// sample. After training, the paper keeps this sub-centre per class and drops the samples far
/// from it (see [`far_from_dominant`]).
///
/// # Errors
/// As [`chosen_subcenters`].
#[track_caller]
pub fn dominant_subcenters<F: Element>(
    cos: &Tensor<F>,
    labels: &Labels,
    k: usize,
) -> Result<Vec<Option<usize>>, Error> {
    let chosen = chosen_subcenters(cos, labels, k)?;
    let (_, classes) = class_dims(cos.shape(), k, "dominant_subcenters");
    let mut votes = vec![0usize; classes * k];
    for (&y, &a) in labels.values().iter().zip(&chosen) {
        votes[y * k + a] += 1;
    }
    Ok(votes
        .chunks(k)
        .map(|v| {
            let most = *v.iter().max().expect("k ≥ 1");
            (most > 0).then(|| {
                v.iter()
                    .position(|&n| n == most)
                    .expect("the maximum is there")
            })
        })
        .collect())
}

/// The samples whose angle to their class's dominant sub-centre is at least `max_angle`
/// (radians; the paper drops those at 75° and beyond, `75f64.to_radians()`), i.e. whose cosine
/// is at most `cos(max_angle)`: the likely label noise, by index.
///
/// # Errors
/// As [`chosen_subcenters`], and [`Error::InvalidSetting`] unless `max_angle` is in `[0, π]`.
#[track_caller]
pub fn far_from_dominant<F: Element>(
    cos: &Tensor<F>,
    labels: &Labels,
    k: usize,
    max_angle: f64,
) -> Result<Vec<usize>, Error> {
    Error::check(
        "maximum angle to the dominant sub-centre",
        max_angle,
        (0.0..=std::f64::consts::PI).contains(&max_angle),
        "in [0, π] (radians)",
    )?;
    let dominant = dominant_subcenters(cos, labels, k)?;
    let row_len = cos.shape()[1];
    // compared as cosines, as the reference drop script does: kept where cos > cos(max_angle)
    let min_cos = max_angle.cos();
    Ok(labels
        .values()
        .iter()
        .enumerate()
        .filter(|&(i, &y)| {
            let a = dominant[y].expect("a class with a sample has a dominant sub-centre");
            cos.data()[i * row_len + y * k + a].to_f64() <= min_cos
        })
        .map(|(i, _)| i)
        .collect())
}
