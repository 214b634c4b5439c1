//! Export to safetensors, the format the PyTorch and Hugging Face ecosystem reads: an 8-byte
//! little-endian header length, a JSON header (name → dtype, shape, byte offsets; plus
//! `__metadata__`), then every tensor's raw little-endian bytes, back to back.

use super::{CheckpointError, write_atomically};
use crate::{Element, Params};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

/// The safetensors bytes of every tensor of `params` (parameters and buffers), under their
/// names, with string `metadata`.
pub fn safetensors_bytes<F: Element>(
    params: &Params<F>,
    metadata: &BTreeMap<String, String>,
) -> Vec<u8> {
    let (dtype, width) = match F::NAME {
        "f32" => ("F32", 4),
        _ => ("F64", 8),
    };
    let mut header = Map::new();
    header.insert("__metadata__".to_string(), json!(metadata));
    let mut data = Vec::new();
    for id in params.ids() {
        let t = params.get(id);
        let begin = data.len();
        for &v in t.data() {
            if width == 4 {
                data.extend_from_slice(&(v.to_f64() as f32).to_le_bytes());
            } else {
                data.extend_from_slice(&v.to_f64().to_le_bytes());
            }
        }
        let entry =
            json!({"dtype": dtype, "shape": t.shape(), "data_offsets": [begin, data.len()]});
        header.insert(params.name(id).to_string(), entry);
    }
    let mut json = Value::Object(header).to_string().into_bytes();
    while !json.len().is_multiple_of(8) {
        json.push(b' ');
    }
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
    params: &Params<F>,
    metadata: &BTreeMap<String, String>,
) -> Result<(), CheckpointError> {
    params.ensure_finite().map_err(CheckpointError::NonFinite)?;
    let bytes = safetensors_bytes(params, metadata);
    write_atomically(path, |file| file.write_all(&bytes))
}
