//! The safetensors export and import: a model's tensors in the layout and under the names
//! PyTorch gives them, with what is needed to use them recorded in the file's metadata; and a
//! safetensors file (margrad's, or one PyTorch saved) read back into a [`Model`].
//!
//! A file is parsed by the `safetensors` crate, which validates its header (offsets that cover
//! the data exactly, sizes that fit each shape and element type, no overflow); it is read
//! bounded (the header first, checked against the file's size, before the tensor data). It is
//! written here, with every key of the header sorted, so that one model always gives the same
//! bytes: the crate's writer orders the metadata by a randomly seeded hash map.

use super::{Checkpoint, CheckpointError, io_error, rebuild, write_atomically};
use crate::data::InputScaling;
use crate::files::{self, Arrived, OpenError};
use crate::nn::{
    BatchNorm1d, BatchNorm1dConfig, BatchNorm2d, BatchNorm2dConfig, CosineHead, EMBEDDER_PREFIX,
    HEAD_PREFIX, HeadConfig, LayerRegistry, LayerSpec, Model, ModelConfig, NORM_EPS,
    SequentialConfig,
};
use crate::{Element, Params, Tensor};
use ::safetensors::tensor::{Metadata, TensorInfo};
use ::safetensors::{Dtype, SafeTensors};
use serde_json::json;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::Path;

/// The version of the export's layout and metadata ([`safetensors_bytes`] gives the table);
/// recorded as `margrad.export_version`. An import refuses a file of a later version.
pub const EXPORT_VERSION: u32 = 1;

/// The largest safetensors header read: the `safetensors` crate's own limit (100 MB).
const MAX_HEADER_LEN: u64 = 100_000_000;
/// The metadata key of the model configuration.
const MODEL_KEY: &str = "margrad.model";
/// The metadata key of the export version.
const VERSION_KEY: &str = "margrad.export_version";

/// The safetensors bytes of a model: every parameter and buffer of `params` under its
/// `state_dict` name, in PyTorch's layout, and metadata saying how to use them.
///
/// # Layout
///
/// Each tensor has the shape its PyTorch module gives it: a Linear layer's `weight` is
/// `[out, in]` (`nn.Linear`), a BatchNorm1d layer's `weight`, `bias`, `running_mean` and
/// `running_var` are `[D]`, and a cosine head's class centres `head.weight` are `[C, D]`, one
/// centre per row, as InsightFace's CosFace and ArcFace heads keep them (margrad keeps them
/// `[D, C]` inside; the export transposes them, the import transposes them back). Elements are
/// `F32` for an `f32` model, `F64` for an `f64` one.
///
/// # Metadata
///
/// Every value is a string (safetensors' rule); the `margrad.*` values are JSON.
///
/// | key | value |
/// |---|---|
/// | `format` | `pt`: the tensors are PyTorch's (what `transformers` and `safe_open` look for) |
/// | `producer` | `margrad` |
/// | `producer_version` | the crate version that wrote the file (`0.1.0`) |
/// | `margrad.export_version` | [`EXPORT_VERSION`] |
/// | `margrad.model` | the [`ModelConfig`]: the embedder's layers in order, each `{"kind", "config"}` (`linear`: `inputs`, `outputs`, `bias`; `batch_norm1d`: `features`, `eps`, `momentum`; `relu`, `dropout`: `p`, …), and the head (`{"Cosine": {"classes", "loss"}}` or `{"Linear": {"classes"}}`) |
/// | `margrad.input_scaling` | an [`InputScaling`]: `{"raw": …, "divide_by": 16.0}`: the model's inputs are the raw values divided by `divide_by` |
/// | `margrad.embedding` | `{"normalize": "l2", "eps": 1e-12, "pair_score": "cosine"}`: the embedder's output `e` is scaled to `e / max(‖e‖₂, eps)` (`F.normalize`) before two embeddings are compared by their dot product |
/// | `margrad.batch_norm` | each BatchNorm1d layer's `{"eps", "momentum"}` by name (`{"embed.1": {"eps": 1e-5, "momentum": 0.1}}`, `{}` without one): PyTorch's conventions, running statistics `r ← (1 − momentum)·r + momentum·batch` |
/// | `margrad.head` | `{"kind": "cosine", "weight": "[classes, dim]", "scores": …}` or `{"kind": "linear", …}`: how the head scores an embedding |
pub fn safetensors_bytes<F: Element>(
    model: &Model<F>,
    params: &Params<F>,
    input: &InputScaling,
) -> Vec<u8> {
    let transposed = transposed_names(model.config());
    let (dtype, width) = (dtype_name::<F>(), dtype::<F>().bitsize() / 8);
    let mut header = serde_json::Map::new();
    header.insert(
        "__metadata__".to_string(),
        json!(export_metadata(model.config(), input)),
    );
    let mut data = Vec::new();
    for id in params.ids() {
        let name = params.name(id);
        let tensor = params.get(id);
        let tensor = if transposed.contains(name) {
            Cow::Owned(tensor.transpose())
        } else {
            Cow::Borrowed(tensor)
        };
        let begin = data.len();
        data.reserve(tensor.data().len() * width);
        for &v in tensor.data() {
            match width {
                4 => data.extend_from_slice(&(v.to_f64() as f32).to_le_bytes()),
                _ => data.extend_from_slice(&v.to_f64().to_le_bytes()),
            }
        }
        let entry =
            json!({"dtype": dtype, "shape": tensor.shape(), "data_offsets": [begin, data.len()]});
        header.insert(name.to_string(), entry);
    }
    // keys in sorted order (serde_json maps are BTreeMaps), padded with spaces to 8 bytes
    let mut json = serde_json::Value::Object(header).to_string().into_bytes();
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut bytes = Vec::with_capacity(8 + json.len() + data.len());
    bytes.extend_from_slice(&(json.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&json);
    bytes.extend_from_slice(&data);
    bytes
}

/// Writes [`safetensors_bytes`] to `path` atomically.
///
/// # Errors
/// [`CheckpointError::NonFinite`] when a tensor holds a NaN or an infinity;
/// [`CheckpointError::Io`] when the file cannot be written.
pub fn save_safetensors<F: Element>(
    path: &Path,
    model: &Model<F>,
    params: &Params<F>,
    input: &InputScaling,
) -> Result<(), CheckpointError> {
    params.ensure_finite().map_err(CheckpointError::NonFinite)?;
    let bytes = safetensors_bytes(model, params, input);
    write_atomically(path, |file| file.write_all(&bytes))
}

/// The metadata [`safetensors_bytes`] writes, by key.
pub fn export_metadata(config: &ModelConfig, input: &InputScaling) -> BTreeMap<String, String> {
    let batch_norm: serde_json::Map<String, serde_json::Value> = layers(config)
        .into_iter()
        .filter_map(|(name, spec)| {
            let (eps, momentum) = if spec.kind == BatchNorm1d::KIND {
                let c = spec.settings::<BatchNorm1dConfig>().ok()?;
                (c.eps, c.momentum)
            } else if spec.kind == BatchNorm2d::KIND {
                let c = spec.settings::<BatchNorm2dConfig>().ok()?;
                (c.eps, c.momentum)
            } else {
                return None;
            };
            Some((name, json!({"eps": eps, "momentum": momentum})))
        })
        .collect();
    let head = match config.head {
        HeadConfig::Cosine { .. } | HeadConfig::Centres { .. } => json!({
            "kind": "cosine",
            "weight": "[classes, dim]",
            "scores": "cosine of the L2-normalised embedding and each L2-normalised row of \
                       head.weight; no margin at inference",
        }),
        HeadConfig::Extended { ref loss, .. } => json!({
            "kind": "cosine",
            "weight": "[classes · subcenters, dim]",
            "subcenters": loss.subcenters(),
            "scores": "for each class, the largest cosine of the L2-normalised embedding and \
                       the L2-normalised rows of head.weight of its sub-centres (rows \
                       class·subcenters .. class·subcenters + subcenters); no margin at inference",
        }),
        HeadConfig::Linear { .. } => json!({
            "kind": "linear",
            "weight": "[classes, dim]",
            "scores": "logits e Wᵀ + b of the embedding before normalisation",
        }),
    };
    [
        ("format", "pt".to_string()),
        ("producer", "margrad".to_string()),
        ("producer_version", env!("CARGO_PKG_VERSION").to_string()),
        (VERSION_KEY, EXPORT_VERSION.to_string()),
        (MODEL_KEY, json_text(config)),
        ("margrad.input_scaling", json_text(input)),
        (
            "margrad.embedding",
            json!({"normalize": "l2", "eps": NORM_EPS, "pair_score": "cosine"}).to_string(),
        ),
        (
            "margrad.batch_norm",
            serde_json::Value::from(batch_norm).to_string(),
        ),
        ("margrad.head", head.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// A configuration as JSON text.
fn json_text<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("configurations serialise")
}

/// Reads a safetensors file's bytes into a model, building its layers with the crate's kinds
/// ([`LayerRegistry::standard`]): see [`decode_safetensors_with`].
///
/// # Errors
/// As [`decode_safetensors_with`].
pub fn decode_safetensors<F: Element>(
    bytes: &[u8],
    config: Option<&ModelConfig>,
) -> Result<Checkpoint<F>, CheckpointError> {
    decode_safetensors_with(bytes, config, &LayerRegistry::standard())
}

/// Reads a safetensors file's bytes into a model, its layers built through `registry`.
///
/// The configuration is the file's own (`margrad.model`, written by [`save_safetensors`]); a
/// file without one (saved by `safetensors.torch.save_file` from a PyTorch `state_dict`) is
/// read with `config`. Every tensor is then checked against the configuration: its name (none
/// missing, none left over), its element type (`F32` for an `f32` model, `F64` for `f64`) and
/// its shape, in the export's layout (a cosine head's `head.weight` `[C, D]`). PyTorch's
/// `num_batches_tracked` counter of a batch norm (1-D, 2-D, or inside a residual block),
/// which margrad has no use for, is skipped. The model comes back without training state.
///
/// # Errors
/// [`CheckpointError::Safetensors`] for bytes that are not a safetensors file;
/// [`CheckpointError::Metadata`] for a configuration that does not decode, no configuration at
/// all, or a file of a later [`EXPORT_VERSION`]; [`CheckpointError::MissingTensor`],
/// [`CheckpointError::UnexpectedTensor`], [`CheckpointError::TensorDtype`] and
/// [`CheckpointError::TensorShape`] for tensors that do not fit the configuration;
/// [`CheckpointError::Invalid`] for a configuration the registry refuses;
/// [`CheckpointError::NonFinite`] for a NaN or an infinity in a tensor.
pub fn decode_safetensors_with<F: Element>(
    bytes: &[u8],
    config: Option<&ModelConfig>,
    registry: &LayerRegistry<F>,
) -> Result<Checkpoint<F>, CheckpointError> {
    let invalid = |e: ::safetensors::SafeTensorError| CheckpointError::Safetensors(e.to_string());
    let (header_len, header) = SafeTensors::read_metadata(bytes).map_err(invalid)?;
    let config = file_config(&header, config)?;
    // PyTorch's batch norms (1-D, 2-D, inside a residual block alike) store a step counter
    // beside their running statistics, which margrad does not keep
    let mut entries: Vec<_> = header.tensors().into_iter().collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let names: HashSet<&str> = entries.iter().map(|(name, _)| name.as_str()).collect();
    let is_counter = |name: &str| {
        name.strip_suffix(".num_batches_tracked")
            .is_some_and(|layer| names.contains(format!("{layer}.running_mean").as_str()))
    };
    let data = &bytes[8 + header_len..];
    let mut tensors = Vec::new();
    for (name, info) in &entries {
        if !is_counter(name) {
            tensors.push((name.clone(), read_tensor::<F>(name, info, data)?));
        }
    }
    let transposed = transposed_names(&config);
    let (model, params) = rebuild(config, registry, tensors, transposed, None)?;
    // what a save refuses, a load refuses too: a model with a NaN or an infinity in it
    params.ensure_finite().map_err(CheckpointError::NonFinite)?;
    Ok(Checkpoint {
        model,
        params,
        training: None,
    })
}

/// Loads a safetensors file into a model, its layers built with the crate's kinds: see
/// [`decode_safetensors_with`].
///
/// The file is read bounded: it must be a regular file; its 8-byte header length is checked
/// against the file's size (and the 100 MB limit) before the header is read, and the header's
/// tensors must cover exactly the rest of the file before the tensor data is read.
///
/// # Errors
/// [`CheckpointError::Io`] when the file cannot be read, [`CheckpointError::NotRegularFile`]
/// for a directory, a named pipe or a device, [`CheckpointError::Truncated`] and
/// [`CheckpointError::TrailingBytes`] for a size that is not the header's, and every error of
/// [`decode_safetensors_with`].
pub fn load_safetensors<F: Element>(
    path: &Path,
    config: Option<&ModelConfig>,
) -> Result<Checkpoint<F>, CheckpointError> {
    load_safetensors_with(path, config, &LayerRegistry::standard())
}

/// Loads a safetensors file into a model, its layers built through `registry`: see
/// [`load_safetensors`].
///
/// # Errors
/// As [`load_safetensors`].
pub fn load_safetensors_with<F: Element>(
    path: &Path,
    config: Option<&ModelConfig>,
    registry: &LayerRegistry<F>,
) -> Result<Checkpoint<F>, CheckpointError> {
    decode_safetensors_with(&read_file(path)?, config, registry)
}

/// A safetensors file's bytes, read without trusting the lengths it claims.
fn read_file(path: &Path) -> Result<Vec<u8>, CheckpointError> {
    let (file, len) = files::open_regular(path).map_err(|e| match e {
        OpenError::Io(e) => io_error(path, e),
        OpenError::NotRegular(kind) => CheckpointError::NotRegularFile {
            path: path.to_path_buf(),
            kind,
        },
    })?;
    let truncated = |part, expected: u64, found| CheckpointError::Truncated {
        part,
        expected,
        found,
    };
    let mut bytes = Vec::with_capacity(8);
    files::read_prefix(&file, 8, &mut bytes).map_err(|e| io_error(path, e))?;
    let Ok(prefix) = <[u8; 8]>::try_from(&bytes[..]) else {
        return Err(truncated("header", 8, bytes.len() as u64));
    };
    let header_len = u64::from_le_bytes(prefix);
    if header_len > MAX_HEADER_LEN {
        return Err(CheckpointError::Safetensors(format!(
            "its header claims {header_len} bytes, more than the {MAX_HEADER_LEN} allowed"
        )));
    }
    let rest = len.saturating_sub(8);
    if header_len > rest {
        return Err(truncated("header", header_len, rest));
    }
    let arrived =
        files::read_prefix(&file, header_len, &mut bytes).map_err(|e| io_error(path, e))?;
    if arrived < header_len {
        return Err(truncated("header", header_len, arrived));
    }
    let header: Metadata = serde_json::from_slice(&bytes[8..])
        .map_err(|e| CheckpointError::Safetensors(format!("its header: {e}")))?;
    let (declared, present) = (header.data_len() as u64, rest - header_len);
    if present < declared {
        return Err(truncated("tensor data", declared, present));
    }
    if present > declared {
        return Err(CheckpointError::TrailingBytes {
            expected: declared,
            found: present,
        });
    }
    // the claim now matches the file's size; the file may still change while it is read
    match files::read_claimed(&file, declared, declared, &mut bytes) {
        Ok(Arrived::Exactly) => Ok(bytes),
        Ok(Arrived::Short(found)) => Err(truncated("tensor data", declared, found)),
        Ok(Arrived::More) => Err(CheckpointError::TrailingBytes {
            expected: declared,
            found: file.metadata().map_or(declared.saturating_add(1), |m| {
                m.len().saturating_sub(8 + header_len)
            }),
        }),
        Err(e) => Err(io_error(path, e)),
    }
}

/// The configuration a file is read with: its own, else the caller's.
fn file_config(
    header: &Metadata,
    given: Option<&ModelConfig>,
) -> Result<ModelConfig, CheckpointError> {
    let metadata = header.metadata().as_ref();
    let value = |key: &str| metadata.and_then(|m| m.get(key));
    if let Some(version) = value(VERSION_KEY) {
        match version.parse::<u32>() {
            Ok(v) if v <= EXPORT_VERSION => {}
            _ => {
                return Err(CheckpointError::Metadata {
                    key: VERSION_KEY,
                    message: format!(
                        "export version {version:?}, but this margrad reads versions up to \
                         {EXPORT_VERSION}: it was written by a newer margrad"
                    ),
                });
            }
        }
    }
    match (value(MODEL_KEY), given) {
        (Some(text), _) => serde_json::from_str(text).map_err(|e| CheckpointError::Metadata {
            key: MODEL_KEY,
            message: format!("does not decode as a model configuration: {e}"),
        }),
        (None, Some(config)) => Ok(config.clone()),
        (None, None) => Err(CheckpointError::Metadata {
            key: MODEL_KEY,
            message: "the file has no model configuration (it was not written by margrad): \
                      give the model's configuration"
                .to_string(),
        }),
    }
}

/// One tensor of a file as a `Tensor<F>`, its element type checked.
fn read_tensor<F: Element>(
    name: &str,
    info: &TensorInfo,
    data: &[u8],
) -> Result<Tensor<F>, CheckpointError> {
    let expected = dtype::<F>();
    if info.dtype != expected {
        return Err(CheckpointError::TensorDtype {
            name: name.to_string(),
            expected: dtype_name::<F>(),
            found: info.dtype.to_string(),
        });
    }
    // offsets and sizes were checked against the shape and the data by the header's parser
    let bytes = &data[info.data_offsets.0..info.data_offsets.1];
    let values: Vec<F> = match expected {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| F::from_f64(f32::from_le_bytes(b.try_into().expect("4 bytes")).into()))
            .collect(),
        _ => bytes
            .chunks_exact(8)
            .map(|b| F::from_f64(f64::from_le_bytes(b.try_into().expect("8 bytes"))))
            .collect(),
    };
    Tensor::from_vec(values, &info.shape).map_err(|e| CheckpointError::Safetensors(e.to_string()))
}

/// The safetensors element type of `F`.
fn dtype<F: Element>() -> Dtype {
    match F::NAME {
        "f32" => Dtype::F32,
        _ => Dtype::F64,
    }
}

fn dtype_name<F: Element>() -> &'static str {
    match F::NAME {
        "f32" => "F32",
        _ => "F64",
    }
}

/// Every layer of the embedder that is not a Sequential, with its name (`embed.1`), nested
/// Sequentials opened (`embed.2.0`).
fn layers(config: &ModelConfig) -> Vec<(String, LayerSpec)> {
    fn walk(prefix: &str, sequence: &SequentialConfig, out: &mut Vec<(String, LayerSpec)>) {
        for (i, spec) in sequence.layers.iter().enumerate() {
            let name = format!("{prefix}.{i}");
            let nested = (spec.kind == SequentialConfig::KIND)
                .then(|| spec.settings::<SequentialConfig>().ok())
                .flatten();
            match nested {
                Some(inner) => walk(&name, &inner, out),
                None => out.push((name, spec.clone())),
            }
        }
    }
    let mut out = Vec::new();
    walk(EMBEDDER_PREFIX, &config.embedder, &mut out);
    out
}

/// The tensors the export stores as the transpose of margrad's layout: the centres of every
/// cosine head (`[D, C]` inside, `[C, D]` in the file).
fn transposed_names(config: &ModelConfig) -> HashSet<String> {
    let mut names: HashSet<String> = layers(config)
        .into_iter()
        .filter(|(_, spec)| spec.kind == CosineHead::KIND)
        .map(|(name, _)| format!("{name}.weight"))
        .collect();
    if let HeadConfig::Cosine { .. } | HeadConfig::Extended { .. } = config.head {
        names.insert(format!("{HEAD_PREFIX}.weight"));
    }
    names
}
