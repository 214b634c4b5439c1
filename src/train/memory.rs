//! The memory a run will hold, counted from its settings before anything is allocated, so that
//! a flag too large for the machine is an error naming it rather than an abort or a panic.
//!
//! The count is of the large buffers, in checked 64-bit arithmetic: the data sets (features and
//! labels), the verification pairs and their scores, the parameters with their gradients,
//! optimiser moments and the checkpoint's encoded copy, a step's and the evaluation's
//! activations, and the program itself. The parameters and activations are those of the model
//! the run builds, walked layer by layer ([`Footprint::of_run`]). It is an estimate, meant to
//! refuse what cannot fit, not to predict the peak to the byte. Counted against the peak
//! resident memory (`/usr/bin/time -v`, one epoch, batch 128, two threads):
//!
//! | run | counted | peak |
//! |---|---|---|
//! | MLP 128-4096-4096-512 (20 M parameters, Adam), default synthetic data | 1745 MiB | 1735 MiB |
//! | MLP on the digits (the default run) | 33 MiB | 21 MiB |
//! | LeNet++ on 2,000 MNIST images (500 test) | 1023 MiB | 652 MiB |
//! | ResNet on 2,000 MNIST images (500 test) | 655 MiB | 594 MiB |
//! | ResNet on MNIST (60,000 images) | 900 MiB | 648 MiB |
//!
//! The last peaked at 1262 MiB while the buffer pool kept every batch copied out of the data
//! set and every evaluation chunk (buffers it never lent, so nothing took them back): a batch
//! per step, up to 1 GiB per thread. The pool now keeps only buffers of lengths it has lent
//! (`tests/footprint.rs` checks a run of 2,000 steps against its count).

use super::{DataSettings, DataSource, MethodName, PreparedData, TrainConfig};
use crate::metrics::Pair;
use crate::nn::{EVAL_ROWS, Fill, Model, Module, ParamSource};
use crate::{Error, Params, Tensor};

/// The sizes of a run's data, which with its settings fix the memory it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataShape {
    /// Training samples.
    pub train: usize,
    /// Test samples.
    pub test: usize,
    /// Samples verified.
    pub verify: usize,
    /// Input features per sample.
    pub input_dim: usize,
    /// Trained classes.
    pub classes: usize,
}

impl DataShape {
    /// The shape of prepared data.
    pub fn of(data: &PreparedData) -> DataShape {
        DataShape {
            train: data.train.len(),
            test: data.test.len(),
            verify: data.verify.len(),
            input_dim: data.train.dim(),
            classes: data.train.classes,
        }
    }
}

/// One share of the memory: `bytes`, sized mostly by `setting = value`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Share {
    setting: &'static str,
    value: u64,
    bytes: u64,
}

/// The bytes a run will hold, share by share, each named by the setting that sizes it most.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Footprint {
    shares: Vec<Share>,
}

const F32: u64 = 4;
/// The program itself (its code, the allocator's arenas, the threads' stacks): the default run
/// on the digits, whose data and model take a few MiB, peaks at 21 MiB.
const PROGRAM: u64 = 16 << 20;
const LABEL: u64 = std::mem::size_of::<usize>() as u64;

impl Footprint {
    /// An empty count.
    pub fn new() -> Footprint {
        Footprint::default()
    }

    /// Adds `bytes_each` times the product of `factors` (each a setting and its value), named
    /// by the largest factor.
    ///
    /// # Errors
    /// [`Error::TooLarge`] naming the largest factor when the product overflows 64 bits.
    pub fn add(&mut self, bytes_each: u64, factors: &[(&'static str, usize)]) -> Result<(), Error> {
        let largest = factors
            .iter()
            .copied()
            .max_by_key(|&(_, value)| value)
            .unwrap_or(("", 0));
        let bytes = factors
            .iter()
            .try_fold(bytes_each, |acc, &(_, v)| acc.checked_mul(v as u64));
        self.add_named(largest, bytes)
    }

    /// Adds `bytes` (`None`: more than 64 bits count) named by `setting`.
    fn add_named(
        &mut self,
        setting: (&'static str, usize),
        bytes: Option<u64>,
    ) -> Result<(), Error> {
        let (setting, value) = (setting.0, setting.1 as u64);
        let bytes = bytes.ok_or(Error::TooLarge {
            setting,
            value,
            needed: None,
            available: None,
        })?;
        self.shares.push(Share {
            setting,
            value,
            bytes,
        });
        Ok(())
    }

    /// The largest share by setting (shares of the same setting and value added up).
    fn largest(&self) -> Option<(&'static str, u64, u128)> {
        let mut sums: Vec<(&'static str, u64, u128)> = Vec::new();
        for s in &self.shares {
            match sums
                .iter_mut()
                .find(|(name, value, _)| (*name, *value) == (s.setting, s.value))
            {
                Some(sum) => sum.2 += u128::from(s.bytes),
                None => sums.push((s.setting, s.value, u128::from(s.bytes))),
            }
        }
        sums.into_iter().max_by_key(|&(_, _, bytes)| bytes)
    }

    /// The total in bytes.
    ///
    /// # Errors
    /// [`Error::TooLarge`] naming the largest share when the total overflows 64 bits.
    pub fn bytes(&self) -> Result<u64, Error> {
        self.shares
            .iter()
            .try_fold(0u64, |acc, s| acc.checked_add(s.bytes))
            .ok_or_else(|| self.too_large(None, None))
    }

    fn too_large(&self, needed: Option<u64>, available: Option<u64>) -> Error {
        let (setting, value, _) = self.largest().unwrap_or(("", 0, 0));
        Error::TooLarge {
            setting,
            value,
            needed,
            available,
        }
    }

    /// Checks the total against `available` bytes (`None`: only that it can be counted);
    /// returns the total.
    ///
    /// # Errors
    /// [`Error::TooLarge`] naming the setting of the largest share, the bytes needed and
    /// available, when the total overflows or exceeds `available`.
    pub fn check(&self, available: Option<u64>) -> Result<u64, Error> {
        let needed = self.bytes()?;
        match available {
            Some(available) if needed > available => {
                Err(self.too_large(Some(needed), Some(available)))
            }
            _ => Ok(needed),
        }
    }

    /// The data a run loads or generates before its size is known from the data itself, and
    /// the verification pairs: for synthetic data its samples, prototypes and map; for any
    /// source the pairs, their scores and the ROC curve over them.
    ///
    /// # Errors
    /// [`Error::TooLarge`] when a share overflows.
    pub fn of_data_settings(settings: &DataSettings) -> Result<Footprint, Error> {
        let mut footprint = Footprint::new();
        footprint.add_pairs(settings)?;
        if let DataSource::Synthetic(c) = &settings.source {
            let identities = ("identities", c.identities);
            let input = ("synthetic input_dim", c.input_dim);
            for per_identity in [
                ("train_per_identity", c.train_per_identity),
                // the test samples, and the copy of them verified
                ("test_per_identity", c.test_per_identity),
                ("test_per_identity", c.test_per_identity),
            ] {
                footprint.add(F32, &[identities, per_identity, input])?;
                footprint.add(LABEL, &[identities, per_identity])?;
            }
            footprint.add(8, &[identities, ("synthetic latent_dim", c.latent_dim)])?;
            footprint.add(8, &[input, ("synthetic latent_dim", c.latent_dim)])?;
        }
        Ok(footprint)
    }

    fn add_pairs(&mut self, settings: &DataSettings) -> Result<(), Error> {
        // each pair, its score and label, its key in the set that keeps pairs distinct, and
        // its point of the ROC curve
        let per_pair = std::mem::size_of::<Pair>() as u64 + 8 + 1 + 32 + 16;
        self.add(per_pair, &[("pairs", settings.pairs)])
    }

    /// A training run of `config` on data of `shape`: the data held, the pairs, the model's
    /// parameters with their gradients, optimiser moments and encoded checkpoint, a step's
    /// activations and the evaluation's.
    ///
    /// The model counted is the one the run builds ([`model_config`](super::model_config)),
    /// MLP or convolutional alike: its layers are built against a source that hands out empty
    /// tensors and notes the size of each one asked for, so the parameters are counted exactly
    /// and nothing of their size is allocated; then each layer's per-sample output shape
    /// ([`Module::output_shape`]), from the embedder's input to the head's scores, sizes what a
    /// step holds for it (times the batch) and what the evaluation holds (times
    /// [`EVAL_ROWS`], the rows it takes through the embedder at once).
    ///
    /// # Errors
    /// [`Error::TooLarge`] when a share overflows; what [`model_config`](super::model_config)
    /// and [`Model::new`] return for a model that cannot be built on such data.
    pub fn of_run(config: &TrainConfig, shape: &DataShape) -> Result<Footprint, Error> {
        let mut footprint = Footprint::new();
        footprint.add_pairs(&config.data)?;
        let input = ("input features", shape.input_dim);
        for samples in [
            ("training samples", shape.train),
            ("test samples", shape.test),
            ("verification samples", shape.verify),
        ] {
            footprint.add(F32, &[samples, input])?;
            footprint.add(LABEL, &[samples])?;
        }
        let model_config = super::model_config(config, shape.input_dim, shape.classes)?;
        let mut sizes = SizeCounter::default();
        let mut params = Params::<f32>::new();
        let model = Model::new(model_config, &mut params, &mut sizes)?;
        // per parameter: its value, gradient and moments; and while a checkpoint is saved after
        // each epoch, a copy of the moments in the training state, and about five copies of
        // value and moments in the body, its encoding as it grows, and the file's bytes (what
        // the peak resident memory of a run of 20 M parameters showed)
        let moments = match config.optimizer {
            MethodName::Adam | MethodName::AdamW => 2,
            MethodName::Sgd if config.momentum > 0.0 => 1,
            MethodName::Sgd => 0,
        };
        let per_parameter = F32 * (2 + 2 * moments + 5 * (1 + moments));
        // per activation: the value, its gradient, a mask and a pooled buffer
        let per_activation = F32 * 4;
        let batch = ("batch", config.batch.min(shape.train));
        let chunk = ("test samples", shape.test.min(EVAL_ROWS));
        let threads = match config.threads {
            Some(n) if n > 0 => n,
            _ => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        let named = |numel: usize| -> Option<(&'static str, usize)> {
            [
                ("embed_dim", config.embed_dim),
                ("classes", shape.classes),
                ("input features", shape.input_dim),
            ]
            .into_iter()
            .chain(config.hidden.iter().map(|&w| ("hidden", w)))
            .find(|&(_, value)| value == numel)
        };
        let layers = model
            .embedder()
            .layers()
            .iter()
            .map(|l| &**l as &dyn Module<f32>);
        let mut item = model.input_shape().to_vec();
        let mut largest_columns = 0;
        for layer in layers.chain([model.head() as &dyn Module<f32>]) {
            let output = layer
                .output_shape(&item)
                .map_err(|message| Error::LayerSettings {
                    layer: "model".to_string(),
                    kind: layer.spec().kind,
                    message,
                })?;
            let (from, to): (usize, usize) = (item.iter().product(), output.iter().product());
            let ids = layer.parameters().into_iter().chain(layer.buffers());
            let weights = ids.fold(0usize, |n, id| n.saturating_add(sizes.of(params.name(id))));
            let width = named(from.max(to)).unwrap_or(("model parameters", weights));
            footprint.add_named(width, product(&[per_parameter, weights as u64]))?;
            // about one tensor of the output's size per parameter tensor (a convolution's or
            // Linear's output, a BatchNorm's normalised input, a residual block's inner steps),
            // at least one (an activation's output, a pooling's)
            let tensors = layer.parameters().len().max(1) as u64;
            let by = |rows: (&'static str, usize)| match named(to) {
                Some(out) if out.1 > rows.1 => out,
                _ => rows,
            };
            let (to, rows) = (to as u64, batch.1 as u64);
            footprint.add_named(by(batch), product(&[per_activation, tensors, rows, to]))?;
            // the evaluation keeps each layer's output for a chunk of rows
            footprint.add_named(by(chunk), product(&[F32 * 2, chunk.1 as u64, to]))?;
            // a convolution's columns: each receptive field of each output position, about
            // `weights / channels` values, per thread for the forward pass, the input's and the
            // weights' gradients
            if let [channels, plane @ ..] = &output[..]
                && !plane.is_empty()
            {
                let positions: usize = plane.iter().product();
                let columns = (weights / channels.max(&1)).saturating_mul(positions);
                largest_columns = largest_columns.max(columns as u64);
            }
            item = output;
        }
        footprint.add_named(
            ("threads", threads),
            product(&[F32 * 3, largest_columns, threads as u64]),
        )?;
        // the program itself: its code, the allocator's and the threads' own memory
        footprint.add_named(("", 0), Some(PROGRAM))?;
        // the embeddings and scores of the whole test split, stacked from the chunks, and the
        // embeddings verified
        let embedding = ("embed_dim", model.embedding_dim());
        footprint.add(F32 * 2, &[("test samples", shape.test), embedding])?;
        footprint.add(
            F32,
            &[("test samples", shape.test), ("classes", shape.classes)],
        )?;
        footprint.add(F32, &[("verification samples", shape.verify), embedding])?;
        Ok(footprint)
    }
}

/// The product of `factors`, `None` when it overflows 64 bits.
fn product(factors: &[u64]) -> Option<u64> {
    factors.iter().try_fold(1u64, |acc, &f| acc.checked_mul(f))
}

/// A [`ParamSource`] that notes the element count of each tensor asked for and hands out an
/// empty one: a model built from it states its layers' shapes and parameter counts without
/// holding its parameters.
#[derive(Default)]
struct SizeCounter {
    elements: std::collections::HashMap<String, usize>,
}

impl SizeCounter {
    /// The elements of the tensor called `name`.
    fn of(&self, name: &str) -> usize {
        self.elements.get(name).copied().unwrap_or(0)
    }
}

impl ParamSource<f32> for SizeCounter {
    fn tensor(&mut self, name: &str, shape: &[usize], _fill: Fill) -> Tensor<f32> {
        let numel = shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        self.elements
            .insert(name.to_string(), numel.unwrap_or(usize::MAX));
        Tensor::zeros(&[0])
    }
}

impl Footprint {
    /// The stacks of a pool of `threads` threads (`None` or 0: one per core, not counted),
    /// 2 MiB each (the standard library's default): a thread count too large for the machine
    /// is refused before the pool is started.
    ///
    /// # Errors
    /// [`Error::TooLarge`] when the count overflows.
    pub fn of_threads(threads: Option<usize>) -> Result<Footprint, Error> {
        let mut footprint = Footprint::new();
        footprint.add(2 << 20, &[("threads", threads.unwrap_or(0))])?;
        Ok(footprint)
    }
}

/// The memory available to a new allocation: `MemAvailable` of `/proc/meminfo` where it exists
/// (Linux), `None` elsewhere.
pub fn available_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}
