//! The shape layers around convolutions: max and average pooling, global average pooling,
//! and the two reshapes between a batch of feature rows `[N, D]` and a batch of planes
//! `[N, C, H, W]` ([`Unflatten`] in, [`Flatten`] out).

use super::module::item_dims;
use super::registry::NoSettings;
use super::{Forward, LayerSpec, Module};
use crate::kernels::Window;
use crate::{Element, Error, Pool2dOptions, Var};
use serde::{Deserialize, Serialize};

/// The item shape a pooling with `options` gives from `input` (`[C, H, W]`).
fn pooled_shape(options: &Pool2dOptions, input: &[usize]) -> Result<Vec<usize>, String> {
    let [c, h, w] = item_dims(input, "planes [C, H, W]")?;
    let window = Window {
        input: [h, w],
        kernel: options.kernel,
        stride: options.stride,
        padding: options.padding,
        dilation: [1, 1],
    };
    match window.output() {
        Some([oh, ow]) => Ok(vec![c, oh, ow]),
        _ => Err(format!(
            "its window {:?} is larger than its {h}×{w} input padded by {:?}",
            options.kernel, options.padding
        )),
    }
}

/// Checks pooling settings.
fn validate_pool(name: &'static str, o: &Pool2dOptions) -> Result<(), Error> {
    for axis in 0..2 {
        let (k, s, p) = (o.kernel[axis], o.stride[axis], o.padding[axis]);
        Error::check(name, k as f64, k > 0, "a positive window")?;
        Error::check(name, s as f64, s > 0, "a positive stride")?;
        Error::check(
            name,
            p as f64,
            p <= k / 2,
            "padding at most half the window",
        )?;
    }
    Ok(())
}

/// Max pooling over `k×k` windows ([`Var::max_pool2d`]); kind `max_pool2d`, its settings
/// the [`Pool2dOptions`] (`{"kernel": [2, 2], "stride": [2, 2], "padding": [0, 0]}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MaxPool2d(pub Pool2dOptions);

impl MaxPool2d {
    /// The kind name a [`LayerRegistry`](super::LayerRegistry) knows it by.
    pub const KIND: &'static str = "max_pool2d";

    /// Checks the window.
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] for a zero window or stride, or padding over half the window.
    pub fn validate(&self) -> Result<(), Error> {
        validate_pool("MaxPool2d", &self.0)
    }

    /// The stored form of the layer.
    pub fn spec(&self) -> LayerSpec {
        LayerSpec::new(Self::KIND, self)
    }
}

impl<F: Element> Module<F> for MaxPool2d {
    /// # Panics
    /// As [`Var::max_pool2d`], when `x` does not fit.
    #[track_caller]
    fn forward<'g>(&self, _cx: &mut Forward<'g, '_, F>, x: Var<'g, F>) -> Var<'g, F> {
        x.max_pool2d(self.0)
    }
    fn spec(&self) -> LayerSpec {
        MaxPool2d::spec(self)
    }
    /// `[C, H, W] → [C, OH, OW]`.
    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>, String> {
        pooled_shape(&self.0, input)
    }
}

/// Average pooling over `k×k` windows, the padding counted as zeros ([`Var::avg_pool2d`],
/// PyTorch's `count_include_pad=True`); kind `avg_pool2d`, settings as [`MaxPool2d`]'s.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AvgPool2d(pub Pool2dOptions);

impl AvgPool2d {
    /// The kind name a [`LayerRegistry`](super::LayerRegistry) knows it by.
    pub const KIND: &'static str = "avg_pool2d";

    /// Checks the window.
    ///
    /// # Errors
    /// As [`MaxPool2d::validate`].
    pub fn validate(&self) -> Result<(), Error> {
        validate_pool("AvgPool2d", &self.0)
    }

    /// The stored form of the layer.
    pub fn spec(&self) -> LayerSpec {
        LayerSpec::new(Self::KIND, self)
    }
}

impl<F: Element> Module<F> for AvgPool2d {
    /// # Panics
    /// As [`Var::avg_pool2d`], when `x` does not fit.
    #[track_caller]
    fn forward<'g>(&self, _cx: &mut Forward<'g, '_, F>, x: Var<'g, F>) -> Var<'g, F> {
        x.avg_pool2d(self.0)
    }
    fn spec(&self) -> LayerSpec {
        AvgPool2d::spec(self)
    }
    /// `[C, H, W] → [C, OH, OW]`.
    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>, String> {
        pooled_shape(&self.0, input)
    }
}

/// The mean of each plane, `[N, C, H, W] → [N, C]` ([`Var::global_avg_pool2d`]); kind
/// `global_avg_pool`, no settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GlobalAvgPool;

impl GlobalAvgPool {
    /// The kind name a [`LayerRegistry`](super::LayerRegistry) knows it by.
    pub const KIND: &'static str = "global_avg_pool";
}

impl<F: Element> Module<F> for GlobalAvgPool {
    /// # Panics
    /// When `x` is not rank 4.
    #[track_caller]
    fn forward<'g>(&self, _cx: &mut Forward<'g, '_, F>, x: Var<'g, F>) -> Var<'g, F> {
        x.global_avg_pool2d()
    }
    fn spec(&self) -> LayerSpec {
        LayerSpec::new(Self::KIND, &NoSettings {})
    }
    /// `[C, H, W] → [C]`.
    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>, String> {
        let [c, _, _] = item_dims(input, "planes [C, H, W]")?;
        Ok(vec![c])
    }
}

/// `[N, d1, d2, …] → [N, d1·d2·…]`: each item's elements as one row, in their order (PyTorch's
/// `nn.Flatten`); kind `flatten`, no settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flatten;

impl Flatten {
    /// The kind name a [`LayerRegistry`](super::LayerRegistry) knows it by.
    pub const KIND: &'static str = "flatten";
}

impl<F: Element> Module<F> for Flatten {
    /// # Panics
    /// When `x` is a scalar.
    #[track_caller]
    fn forward<'g>(&self, _cx: &mut Forward<'g, '_, F>, x: Var<'g, F>) -> Var<'g, F> {
        let shape = x.shape();
        assert!(
            !shape.is_empty(),
            "flatten: expected [N, …], found a scalar"
        );
        x.reshape(&[shape[0], shape[1..].iter().product()])
    }
    fn spec(&self) -> LayerSpec {
        LayerSpec::new(Self::KIND, &NoSettings {})
    }
    /// `[d₁, d₂, …] → [d₁·d₂·…]`.
    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>, String> {
        Ok(vec![input.iter().product()])
    }
}

/// `[N, D] → [N, …shape]` with `D` the product of `shape`: rows of features as planes (PyTorch's
/// `nn.Unflatten(1, shape)`); kind `unflatten`, settings `{"shape": [1, 28, 28]}`. A
/// convolutional embedder fed with feature rows (the data sets' form) starts with one, which
/// also fixes its input width.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Unflatten {
    /// Each item's shape, `[C, H, W]` for planes.
    pub shape: Vec<usize>,
}

impl Unflatten {
    /// The kind name a [`LayerRegistry`](super::LayerRegistry) knows it by.
    pub const KIND: &'static str = "unflatten";

    /// Checks the shape.
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] for no dimensions, a zero one, or an element count that
    /// overflows.
    pub fn validate(&self) -> Result<(), Error> {
        let len = self.shape.len();
        Error::check("Unflatten rank", len as f64, len > 0, "at least 1")?;
        let count = self.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        let ok = count.is_some_and(|n| n > 0);
        Error::check(
            "Unflatten shape",
            len as f64,
            ok,
            "dimensions positive, product representable",
        )
    }

    /// The stored form of the layer.
    pub fn spec(&self) -> LayerSpec {
        LayerSpec::new(Self::KIND, self)
    }

    fn width(&self) -> usize {
        self.shape.iter().product()
    }
}

impl<F: Element> Module<F> for Unflatten {
    /// # Panics
    /// When `x` is not `[N, D]` with `D` the product of the shape.
    #[track_caller]
    fn forward<'g>(&self, _cx: &mut Forward<'g, '_, F>, x: Var<'g, F>) -> Var<'g, F> {
        let xs = x.shape();
        assert!(
            xs.len() == 2 && xs[1] == self.width(),
            "shape mismatch in unflatten: input {xs:?}, item shape {:?} (expected [N, {}])",
            self.shape,
            self.width()
        );
        let shape: Vec<usize> = std::iter::once(xs[0])
            .chain(self.shape.iter().copied())
            .collect();
        x.reshape(&shape)
    }
    fn spec(&self) -> LayerSpec {
        Unflatten::spec(self)
    }
    fn input_shape(&self) -> Option<Vec<usize>> {
        Some(vec![self.width()])
    }
    /// `[d₁·d₂·…] → [d₁, d₂, …]`.
    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>, String> {
        super::layers::rows_of(self.width(), input)?;
        Ok(self.shape.clone())
    }
}
