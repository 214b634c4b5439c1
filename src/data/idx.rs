//! The IDX format of MNIST: big-endian; bytes 0-1 zero, byte 2 the element type (0x08 =
//! unsigned byte), byte 3 the number of dimensions, one u32 per dimension, then the data.
//! Files may be gzip-compressed (detected by their magic bytes), in one member or several.
//!
//! Nothing a file claims is trusted before it is checked. The header is read first and
//! checked; the element count its dimensions claim (their product, which must not overflow)
//! is checked against the file's size for a raw file, and against the most that a gzip file
//! of its size can inflate to; then the data are read through a reader limited to the claimed
//! count and one byte more (to see trailing data), into a buffer that grows only as data
//! arrive. A small gzip file claiming gigabytes costs only what it really inflates to.

use super::Dataset;
use crate::files::{self, Arrived, OpenError, PREALLOCATE_LIMIT};
use crate::{Error, Tensor};
use flate2::read::MultiGzDecoder;
use std::io::{self, Cursor, Read};
use std::path::Path;

/// The largest MNIST pixel value: features are pixels divided by it.
pub(super) const MNIST_PIXEL_MAX: f32 = 255.0;

/// The most bytes deflate inflates to per compressed byte: a 258-byte match coded in 2 bits.
const MAX_INFLATE_RATIO: u64 = 1032;

/// An IDX array of unsigned bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdxArray {
    /// The dimensions.
    pub dims: Vec<usize>,
    /// The elements, row-major.
    pub data: Vec<u8>,
}

/// Parses IDX bytes (raw or gzip, in one member or several). `source` names the data in
/// errors.
///
/// # Errors
/// [`Error::Format`] for a bad magic, an element type other than unsigned byte, a header cut
/// short, dimensions whose product overflows, a data length that differs from the product of
/// the dimensions, or a gzip stream that is corrupt or cut short.
pub fn parse_idx(bytes: &[u8], source: &str) -> Result<IdxArray, Error> {
    read_idx(bytes, bytes.len() as u64, source)
}

/// Reads an IDX file (raw or gzip, in one member or several) without trusting it: see the
/// module's description. Errors name the file by `path`.
///
/// # Errors
/// [`Error::Io`] for a file that cannot be read or is not a regular file (a directory, a
/// named pipe, a device); every error of [`parse_idx`].
pub fn load_idx(path: &Path) -> Result<IdxArray, Error> {
    let source = path.display().to_string();
    let (file, len) = files::open_regular(path).map_err(|e| Error::Io {
        source: source.clone(),
        message: match e {
            OpenError::Io(e) => e.to_string(),
            OpenError::NotRegular(kind) => format!("it is {kind}, not a regular file"),
        },
    })?;
    read_idx(file, len, &source)
}

/// Reads IDX from `input`, which holds `len` bytes, raw or gzip.
fn read_idx(mut input: impl Read, len: u64, source: &str) -> Result<IdxArray, Error> {
    let mut magic = Vec::with_capacity(2);
    files::read_prefix(&mut input, 2, &mut magic).map_err(|e| Error::Io {
        source: source.to_string(),
        message: e.to_string(),
    })?;
    let gzip = magic == [0x1f, 0x8b];
    let input = Cursor::new(magic).chain(input);
    if gzip {
        let reader = IdxReader {
            source,
            gzip: Some(len),
        };
        reader.read_array(
            MultiGzDecoder::new(input),
            len.saturating_mul(MAX_INFLATE_RATIO),
        )
    } else {
        let reader = IdxReader { source, gzip: None };
        reader.read_array(input, len)
    }
}

/// Reads one IDX array from a stream of its bytes.
struct IdxReader<'a> {
    /// Names the data in errors.
    source: &'a str,
    /// For a gzip file, its compressed size.
    gzip: Option<u64>,
}

impl IdxReader<'_> {
    fn bad(&self, location: &str, message: String) -> Error {
        Error::Format {
            source: self.source.to_string(),
            location: location.to_string(),
            message,
        }
    }

    /// A read error: the gzip stream's (corrupt, cut short) as [`Error::Format`] with `what`
    /// said of it, the system's as [`Error::Io`].
    fn failed(&self, e: io::Error, what: impl FnOnce() -> String) -> Error {
        let stream = matches!(
            e.kind(),
            io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidInput | io::ErrorKind::InvalidData
        );
        if self.gzip.is_some() && stream {
            let how = if e.kind() == io::ErrorKind::UnexpectedEof {
                "ends early (a truncated file?)"
            } else {
                "is corrupt"
            };
            self.bad("gzip stream", format!("the stream {how} {}: {e}", what()))
        } else {
            Error::Io {
                source: self.source.to_string(),
                message: e.to_string(),
            }
        }
    }

    /// Reads the array from `input`, which holds `len` bytes of IDX (after inflating, at most
    /// `len`).
    fn read_array(&self, mut input: impl Read, len: u64) -> Result<IdxArray, Error> {
        let mut header = Vec::with_capacity(4);
        files::read_prefix(&mut input, 4, &mut header)
            .map_err(|e| self.failed(e, || "within the header".into()))?;
        if header.len() < 4 {
            return Err(self.bad(
                "header",
                format!("expected 4 magic bytes, found {}", header.len()),
            ));
        }
        if header[0] != 0 || header[1] != 0 {
            return Err(self.bad(
                "magic",
                format!(
                    "expected bytes 0-1 to be zero, found {:#04x} {:#04x}",
                    header[0], header[1]
                ),
            ));
        }
        if header[2] != 0x08 {
            return Err(self.bad(
                "magic",
                format!(
                    "expected element type 0x08 (unsigned byte), found {:#04x}",
                    header[2]
                ),
            ));
        }
        let rank = header[3] as usize;
        let header_len = 4 + 4 * rank;
        files::read_prefix(&mut input, 4 * rank as u64, &mut header)
            .map_err(|e| self.failed(e, || "within the header".into()))?;
        if header.len() < header_len {
            return Err(self.bad(
                "header",
                format!(
                    "{rank} dimensions need {header_len} header bytes, found {}",
                    header.len()
                ),
            ));
        }
        let dims: Vec<usize> = header[4..]
            .chunks(4)
            .map(|c| u32::from_be_bytes(c.try_into().expect("4 bytes")) as usize)
            .collect();
        let after_header = len.saturating_sub(header_len as u64);
        // the element count the header claims: `None` when it overflows
        let claimed = dims.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        let Some(need) = claimed.map(|n| n as u64) else {
            return Err(self.bad(
                "data",
                format!(
                    "dimensions {dims:?} hold more elements than a {}-bit count reaches (their \
                     product overflows): no file holds that many bytes",
                    usize::BITS
                ),
            ));
        };
        let size_error = |found: String| {
            self.bad(
                "data",
                format!("dimensions {dims:?} need {need} bytes, found {found}"),
            )
        };
        let preallocate = match self.gzip {
            None if need != after_header => return Err(size_error(after_header.to_string())),
            None => need,
            Some(compressed) if need > after_header => {
                return Err(self.bad(
                    "data",
                    format!(
                        "dimensions {dims:?} need {need} bytes, more than a gzip file of \
                         {compressed} bytes can inflate to ({after_header} after the header \
                         at most)"
                    ),
                ));
            }
            Some(_) => need.min(PREALLOCATE_LIMIT),
        };
        let mut data = Vec::new();
        match files::read_claimed(&mut input, need, preallocate, &mut data) {
            Ok(Arrived::Exactly) => Ok(IdxArray { dims, data }),
            Ok(Arrived::Short(found)) => Err(size_error(found.to_string())),
            Ok(Arrived::More) => Err(size_error("more: the data go on past them".to_string())),
            Err(e) => {
                let got = data.len();
                Err(self.failed(e, || {
                    if got as u64 == need {
                        format!(
                            "after all {need} data bytes, where its trailer or a next member \
                             should be"
                        )
                    } else {
                        format!("after {got} of the {need} data bytes")
                    }
                }))
            }
        }
    }
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
/// features `[N, 784]` scaled to `[0, 1]`, labels `0..10`. Each file is read as [`load_idx`]
/// reads it: header first, nothing allocated by a claim that is not checked.
///
/// # Errors
/// [`Error::Io`] for a missing or unreadable file, or one that is not a regular file (a
/// directory, a named pipe, a device); [`Error::Format`] for a malformed one (as
/// [`parse_idx`]), images that are not `[N, 28, 28]`, or image and label counts that differ;
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
        Ok((load_idx(&path)?, path.display().to_string()))
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
    let features: Vec<f32> = images
        .data
        .iter()
        .map(|&p| p as f32 / MNIST_PIXEL_MAX)
        .collect();
    let features = Tensor::from_vec(features, &[n, 784])?;
    Dataset::new(
        features,
        labels.data.iter().map(|&l| l as usize).collect(),
        10,
    )
}
