//! The IDX format of MNIST: big-endian; bytes 0-1 zero, byte 2 the element type (0x08 =
//! unsigned byte), byte 3 the number of dimensions, one u32 per dimension, then the data.
//! Files may be gzip-compressed (detected by their magic bytes).

use super::Dataset;
use crate::{Error, Tensor};
use flate2::read::GzDecoder;
use std::io::Read;
use std::path::Path;

/// An IDX array of unsigned bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdxArray {
    /// The dimensions.
    pub dims: Vec<usize>,
    /// The elements, row-major.
    pub data: Vec<u8>,
}

/// Parses IDX bytes (raw or gzip). `source` names the data in errors.
///
/// # Errors
/// [`Error::Format`] for a bad magic, an element type other than unsigned byte, or a data
/// length that differs from the product of the dimensions.
pub fn parse_idx(bytes: &[u8], source: &str) -> Result<IdxArray, Error> {
    let bad = |location: &str, message: String| Error::Format {
        source: source.to_string(),
        location: location.to_string(),
        message,
    };
    let inflated;
    let bytes = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        GzDecoder::new(bytes)
            .read_to_end(&mut out)
            .map_err(|e| bad("gzip stream", e.to_string()))?;
        inflated = out;
        &inflated[..]
    } else {
        bytes
    };
    if bytes.len() < 4 {
        return Err(bad(
            "header",
            format!("expected 4 magic bytes, found {}", bytes.len()),
        ));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(bad(
            "magic",
            format!(
                "expected bytes 0-1 to be zero, found {:#04x} {:#04x}",
                bytes[0], bytes[1]
            ),
        ));
    }
    if bytes[2] != 0x08 {
        return Err(bad(
            "magic",
            format!(
                "expected element type 0x08 (unsigned byte), found {:#04x}",
                bytes[2]
            ),
        ));
    }
    let rank = bytes[3] as usize;
    let header = 4 + 4 * rank;
    if bytes.len() < header {
        return Err(bad(
            "header",
            format!(
                "{rank} dimensions need {header} header bytes, found {}",
                bytes.len()
            ),
        ));
    }
    let dims: Vec<usize> = bytes[4..header]
        .chunks(4)
        .map(|c| u32::from_be_bytes(c.try_into().expect("4 bytes")) as usize)
        .collect();
    let expected = dims.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
    let found = bytes.len() - header;
    if expected != Some(found) {
        return Err(bad(
            "data",
            format!("dimensions {dims:?} need {expected:?} bytes, found {found}"),
        ));
    }
    Ok(IdxArray {
        dims,
        data: bytes[header..].to_vec(),
    })
}

/// Which MNIST files to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MnistSplit {
    /// `train-*` (60,000 images).
    Train,
    /// `t10k-*` (10,000 images).
    Test,
}

/// Reads an MNIST split from `dir` (the original file names, with or without `.gz`):
/// features `[N, 784]` scaled to `[0, 1]`, labels `0..10`.
///
/// # Errors
/// [`Error::Io`] for a missing or unreadable file; [`Error::Format`] for a malformed one,
/// images that are not `[N, 28, 28]`, or image and label counts that differ;
/// [`Error::LabelOutOfRange`] for a label above 9.
pub fn load_mnist(dir: &Path, split: MnistSplit) -> Result<Dataset, Error> {
    let prefix = match split {
        MnistSplit::Train => "train",
        MnistSplit::Test => "t10k",
    };
    let read = |kind: &str| -> Result<(IdxArray, String), Error> {
        let base = dir.join(format!(
            "{prefix}-{kind}-idx{}-ubyte",
            if kind == "images" { 3 } else { 1 }
        ));
        let gz = base.with_extension("gz");
        let path = if gz.exists() { gz } else { base };
        let source = path.display().to_string();
        let bytes = std::fs::read(&path).map_err(|e| Error::Io {
            source: source.clone(),
            message: e.to_string(),
        })?;
        Ok((parse_idx(&bytes, &source)?, source))
    };
    let (images, image_source) = read("images")?;
    let (labels, label_source) = read("labels")?;
    let [n, 28, 28] = images.dims[..] else {
        return Err(Error::Format {
            source: image_source,
            location: "dimensions".into(),
            message: format!("expected [N, 28, 28], found {:?}", images.dims),
        });
    };
    if labels.dims != [n] {
        return Err(Error::Format {
            source: label_source,
            location: "dimensions".into(),
            message: format!(
                "expected [{n}] labels to match {n} images, found {:?}",
                labels.dims
            ),
        });
    }
    let features: Vec<f32> = images.data.iter().map(|&p| p as f32 / 255.0).collect();
    let features = Tensor::from_vec(features, &[n, 784])?;
    Dataset::new(
        features,
        labels.data.iter().map(|&l| l as usize).collect(),
        10,
    )
}
