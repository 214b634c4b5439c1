//! Checkpoints: a model's configuration, every named tensor, and optionally the training
//! state, in one file that is checked before it is trusted; and safetensors files for PyTorch,
//! written and read ([`save_safetensors`], [`load_safetensors`]).
//!
//! # The checkpoint format (version 4)
//!
//! | bytes | content |
//! |---|---|
//! | 0..8 | magic `MARGRAD\0` |
//! | 8..12 | format version, u32 little-endian (4) |
//! | 12..16 | element type, ASCII, zero-padded (`f32`, `f64`) |
//! | 16..32 | version of the crate that wrote it, ASCII, zero-padded |
//! | 32..40 | body length in bytes, u64 little-endian |
//! | 40..44 | CRC-32 (IEEE) of the body, u32 little-endian |
//! | 44..48 | reserved, zero |
//! | 48.. | body: the model configuration, the named tensors, the training state (bincode 2) |
//!
//! What each header field decides:
//! - the magic says the file is a margrad checkpoint at all: a file that does not begin with
//!   it is "not a margrad checkpoint" whatever its length (and the error says what it looks
//!   like when that is plain: JSON, safetensors, a PyTorch zip or pickle, gzip);
//! - the format version alone says how the rest is laid out, and only versions
//!   [`OLDEST_READABLE_VERSION`] to [`FORMAT_VERSION`] are read: a lower one was written by an
//!   older margrad, a higher one by a newer margrad, and 0 by none (versions count from 1);
//! - the crate version is for people, not for the reader: it is named in the messages (a file
//!   from a newer margrad says which), and must be one or more printable ASCII characters then
//!   zero bytes, else the header is damaged;
//! - the element type must be the one asked for;
//! - the body length must be the file's, and the checksum the body's;
//! - the reserved bytes must be zero: a later format version that gives them a meaning bumps
//!   the format version, so a reader of this version never meets them otherwise.
//!
//! The model configuration is the embedder's layers, in order, each as its kind name and its
//! settings as JSON text (`"linear"`, `{"bias":true,"init":"KaimingNormal","inputs":64,…}`),
//! then the head's configuration. Version 4 adds a head kind (class centres stored one per
//! row, [`HeadConfig::Centres`](crate::nn::HeadConfig::Centres)) and nothing else, so a body of
//! version 3 is read as one of version 4. Version 2 stores the embedder this way, as an open list that
//! any registered layer kind can stand in; version 1 stored the MLP's fixed fields.
//!
//! The header is read by hand and checked field by field (magic, version, reserved bytes,
//! crate version, element type, body length against the file's) before the body is read.
//! [`load`] reads the header
//! alone first, from a file it has seen to be a regular one (never a FIFO or a device), and
//! reads the body only when the file's size is exactly what the header declares, so a file can
//! make it neither allocate by a claimed length nor wait. The body streams from the file into
//! the tensors, each allocated once and filled as its bytes arrive, while its checksum is
//! computed; a body that then fails the checksum is refused as corrupt whatever it decoded
//! to, and nothing of it is returned. A save streams the other way, from each tensor's own
//! buffer through a bounded one, and writes the body's length and checksum into the header at
//! the end. So a head of a million classes is never held twice: `examples/checkpoint_large.rs`
//! measures it. A matrix that no process holds whole (a class-parallel head's centres, each
//! rank holding some rows) is written to the same file from streams of its rows and of its
//! momentum's ([`save_streamed`]), and read some rows at a time, the rest streaming through
//! the checksum ([`load_rows`]). [`load_head`] decodes the model's tensors and skips the
//! training state (its bytes still go into the checksum). The model is then rebuilt
//! from its configuration by the same constructors that made it, each taking its tensor from the
//! file by name and shape, so a file can neither leave a parameter out nor smuggle one in.
//! Writes go to a temporary file that is flushed, synced and renamed over the target: a crash
//! mid-save leaves the previous checkpoint intact.

mod codec;
mod rows;
mod safetensors;

pub use self::rows::{RowStream, StreamedParam, load_rows, save_streamed};
pub use self::safetensors::{
    EXPORT_VERSION, decode_safetensors, decode_safetensors_with, export_metadata, load_safetensors,
    load_safetensors_with, safetensors_bytes, save_safetensors,
};
use crate::files::{self, OpenError};

use crate::error::{Quoted, Shape};
use crate::metrics::EpochRecord;
use crate::nn::{Fill, LayerRegistry, Model, ModelConfig, ParamSource, TrainedHead};
use crate::optim::OptimizerState;
use crate::{Element, Error, Params, SeededRng, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The first eight bytes of every checkpoint.
pub const MAGIC: [u8; 8] = *b"MARGRAD\0";
/// The format version this crate writes and the newest it reads. Any change to the body's
/// layout (a field added to a stored configuration, a type changed) bumps it: the body is
/// decoded by position, so an old file read as new would be misread. `tests/checkpoint.rs`
/// holds a committed file of this version and fails when the layout moves without a bump.
pub const FORMAT_VERSION: u32 = 4;
/// The oldest format version this crate reads: every body of a version from it up to
/// [`FORMAT_VERSION`] is laid out as one of [`FORMAT_VERSION`] (a later version only added
/// kinds to a stored choice, which an older body never uses).
pub const OLDEST_READABLE_VERSION: u32 = 3;
/// Bytes before the body.
pub const HEADER_LEN: usize = 48;

/// What is needed to continue training exactly where it stopped.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(bound = "F: Element")]
pub struct TrainingState<F: Element> {
    /// The optimiser's state (moments, step counts, groups, schedule factor).
    pub optimizer: OptimizerState<F>,
    /// Epochs completed (a large-head run, which has no epochs, keeps its settings'
    /// fingerprint here: [`LargeHeadConfig::fingerprint`](crate::train::LargeHeadConfig::fingerprint)).
    pub epoch: u64,
    /// The generator as it stood (shuffling, dropout).
    pub rng: SeededRng,
    /// One record per completed epoch, for a resumed run's history (empty when the loop that
    /// saved the state keeps none).
    pub history: Vec<EpochRecord>,
}

impl<F: Element> TrainingState<F> {
    /// Checks the state against the parameters it goes with: the optimiser's
    /// ([`OptimizerState::validate`]), and a generator that can draw (xoshiro256++'s all-zero
    /// state, which no seed gives, draws 0 for ever: every shuffle and dropout mask the same).
    ///
    /// # Errors
    /// As [`OptimizerState::validate`]; [`Error::Format`] at `rng` for the all-zero state.
    pub fn validate(&self, params: &Params<F>) -> Result<(), Error> {
        self.optimizer.validate(params)?;
        let mut rng = self.rng.clone();
        // a live state draws four zeros running once in 2^256
        if (0..4).all(|_| rand::Rng::next_u64(&mut rng) == 0) {
            return Err(Error::Format {
                source: "training state".to_string(),
                location: "rng".to_string(),
                message: "the generator's state is all zeros, which xoshiro256++ never leaves \
                          (every draw would be 0) and no seed gives"
                    .to_string(),
            });
        }
        Ok(())
    }
}

/// A loaded checkpoint: the rebuilt model, its parameters, and the training state if saved.
#[derive(Debug)]
pub struct Checkpoint<F: Element> {
    /// The model, rebuilt from its stored configuration.
    pub model: Model<F>,
    /// Every parameter and buffer, by name.
    pub params: Params<F>,
    /// The training state, if the checkpoint has one (checked against `params`).
    pub training: Option<TrainingState<F>>,
}

/// Why a checkpoint could not be read or written. Each says what was expected and found.
#[derive(Clone, Debug, PartialEq)]
pub enum CheckpointError {
    /// The file system refused.
    Io {
        /// The path.
        path: PathBuf,
        /// The system's message.
        message: String,
    },
    /// The path names no regular file (following symbolic links): a directory, a named pipe,
    /// a device such as `/dev/zero`. Refused before anything is read from it.
    NotRegularFile {
        /// The path.
        path: PathBuf,
        /// What it is, with its article: "a directory", "a named pipe (FIFO)", "a character
        /// device", ...
        kind: &'static str,
    },
    /// The file ends before its header or its declared body does.
    Truncated {
        /// "header" or "body".
        part: &'static str,
        /// Bytes the part needs.
        expected: u64,
        /// Bytes there are.
        found: u64,
    },
    /// More bytes follow the declared body.
    TrailingBytes {
        /// The declared body length.
        expected: u64,
        /// The bytes after the header.
        found: u64,
    },
    /// Not a margrad checkpoint: the file does not begin with [`MAGIC`].
    BadMagic {
        /// Its first bytes (up to eight).
        found: Vec<u8>,
        /// What the file looks like instead, when that is plain from its first bytes: "JSON
        /// text", "a safetensors file (...)", "a zip archive (...)", "a Python pickle (...)",
        /// "gzip-compressed data (...)".
        looks_like: Option<&'static str>,
    },
    /// Written in a format version this crate cannot read.
    UnsupportedVersion {
        /// The file's version.
        found: u32,
        /// The one this crate reads and writes ([`FORMAT_VERSION`]).
        supported: u32,
        /// The version of the crate that wrote the file, when its header field reads as one.
        written_by: Option<String>,
    },
    /// Written with another element type.
    ElementType {
        /// The type asked for.
        expected: &'static str,
        /// The file's (its bytes in hex when they are not a type name).
        found: String,
    },
    /// A header field that the format fixes holds something else: the reserved bytes are not
    /// zero, or the writer's crate version is not printable ASCII padded with zeros. The
    /// header is damaged, or was not written by margrad.
    HeaderField {
        /// The field: "crate version", "reserved".
        field: &'static str,
        /// Its first byte in the header.
        start: usize,
        /// The bytes found there.
        found: Vec<u8>,
        /// What the format requires of them.
        requirement: &'static str,
    },
    /// The body's checksum does not match: the file is corrupt.
    Checksum {
        /// The header's checksum.
        expected: u32,
        /// The body's.
        found: u32,
    },
    /// A part of the body does not decode.
    Body {
        /// The part: "the model configuration", "the tensor count", "tensor #2's name",
        /// "tensor \"embed.0.weight\"", "the training state", "the end of the body".
        part: String,
        /// The body byte at which the part begins (the file byte less [`HEADER_LEN`]).
        offset: u64,
        /// What is wrong, as a sentence.
        message: String,
    },
    /// The configuration needs a tensor the file does not hold.
    MissingTensor(String),
    /// The file holds a tensor the configuration does not use (or holds it twice).
    UnexpectedTensor(String),
    /// A tensor's shape is not the one the configuration gives it.
    TensorShape {
        /// The tensor's name.
        name: String,
        /// From the configuration.
        expected: Vec<usize>,
        /// In the file.
        found: Vec<usize>,
    },
    /// A tensor's element type is not the one asked for (a safetensors file's `dtype`).
    TensorDtype {
        /// The tensor's name.
        name: String,
        /// The type asked for (`F32`, `F64`).
        expected: &'static str,
        /// The file's (`F16`, `I64`, …).
        found: String,
    },
    /// The bytes are not a safetensors file: its header, its offsets or its size.
    Safetensors(String),
    /// A safetensors file's metadata (`__metadata__`) cannot say what is needed.
    Metadata {
        /// The key.
        key: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The stored configuration or training state is invalid.
    Invalid(Error),
    /// A save was refused: a tensor holds a NaN or an infinity.
    NonFinite(Error),
    /// A save was refused: the training state would not load ([`TrainingState::validate`]).
    UnsoundTrainingState(Error),
}

impl fmt::Display for CheckpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use CheckpointError::*;
        match self {
            Io { path, message } => write!(f, "{}: {message}", path.display()),
            NotRegularFile { path, kind } => write!(
                f,
                "{} is {kind}, not a regular file: a checkpoint is read from a file only",
                path.display()
            ),
            Truncated {
                part,
                expected,
                found,
            } => write!(
                f,
                "truncated checkpoint: the {part} needs {expected} bytes, the file has {found}"
            ),
            TrailingBytes { expected, found } => write!(
                f,
                "checkpoint has {found} bytes after its header, but its body is {expected}"
            ),
            BadMagic { found, looks_like } => {
                write!(f, "not a margrad checkpoint: ")?;
                if let Some(kind) = looks_like {
                    write!(f, "it looks like {kind}; ")?;
                }
                write!(
                    f,
                    "it begins with the bytes {}, where a checkpoint begins with {} \
                     (\"MARGRAD\" and a zero byte)",
                    hex(found),
                    hex(&MAGIC)
                )
            }
            UnsupportedVersion {
                found,
                supported,
                written_by,
            } => {
                write!(
                    f,
                    "checkpoint format version {found}, but this margrad reads versions \
                     {OLDEST_READABLE_VERSION} to {supported} only: "
                )?;
                let by = written_by
                    .as_ref()
                    .map(|v| format!(" ({v})"))
                    .unwrap_or_default();
                if *found == 0 {
                    write!(
                        f,
                        "0 is not a version margrad ever wrote; the header is damaged or the \
                         file was not written by margrad"
                    )
                } else if found > supported {
                    write!(
                        f,
                        "it was written by a newer margrad{by}; upgrade to read it"
                    )
                } else {
                    write!(
                        f,
                        "it was written by an older margrad{by}; load it there and train or \
                         save again with this one"
                    )
                }
            }
            ElementType { expected, found } => {
                write!(f, "checkpoint holds {found} tensors, expected {expected}")
            }
            HeaderField {
                field,
                start,
                found,
                requirement,
            } => write!(
                f,
                "damaged checkpoint header: bytes {start}..{} ({field}) are {}, but must be \
                 {requirement}",
                start + found.len(),
                hex(found)
            ),
            Checksum { expected, found } => write!(
                f,
                "corrupt checkpoint: body checksum {found:#010x}, header says {expected:#010x}"
            ),
            Body {
                part,
                offset,
                message,
            } => write!(
                f,
                "checkpoint body does not decode: {part}, from body byte {offset}: {message}"
            ),
            MissingTensor(name) => write!(
                f,
                "checkpoint lacks tensor {}, which its configuration needs",
                Quoted(name)
            ),
            UnexpectedTensor(name) => write!(
                f,
                "checkpoint holds tensor {}, which its configuration does not use (or holds it \
                 twice)",
                Quoted(name)
            ),
            TensorShape {
                name,
                expected,
                found,
            } => write!(
                f,
                "checkpoint tensor {} has shape {}, its configuration says {}",
                Quoted(name),
                Shape(found),
                Shape(expected)
            ),
            TensorDtype {
                name,
                expected,
                found,
            } => write!(
                f,
                "tensor {name:?} holds {found} elements, expected {expected}"
            ),
            Safetensors(message) => write!(f, "not a valid safetensors file: {message}"),
            Metadata { key, message } => write!(f, "safetensors metadata {key:?}: {message}"),
            Invalid(e) => write!(f, "checkpoint holds an invalid configuration: {e}"),
            NonFinite(e) => write!(f, "refusing to save a model with {e}"),
            UnsoundTrainingState(e) => write!(
                f,
                "refusing to save a training state that would not load back: {e}"
            ),
        }
    }
}

impl std::error::Error for CheckpointError {}

impl From<codec::PartError> for CheckpointError {
    fn from(e: codec::PartError) -> Self {
        CheckpointError::Body {
            part: e.part,
            offset: e.offset,
            message: e.message,
        }
    }
}

/// A checkpoint's bytes: header and body.
pub fn encode<F: Element>(
    model: &Model<F>,
    params: &Params<F>,
    training: Option<&TrainingState<F>>,
) -> Vec<u8> {
    let mut bytes = std::io::Cursor::new(Vec::new());
    write_checkpoint(&mut bytes, model, params, training, None)
        .expect("writing to memory cannot fail");
    bytes.into_inner()
}

/// Writes a checkpoint to `out` from its current position: the header, then the body,
/// streamed from each tensor's own buffer through a bounded buffer (never a second copy of a
/// tensor in memory), or from the rows of a `streamed` parameter as they arrive; the body's
/// length and CRC-32, known at its end, are then written into the header.
///
/// The body is the model configuration, the tensors (their count, then each one's name and
/// tensor) and the training state (an option), in that order: bincode lays out a struct as its
/// fields one after another, so writing them part by part writes the bytes the whole would.
fn write_checkpoint<F: Element, W: Write + Seek>(
    out: &mut W,
    model: &Model<F>,
    params: &Params<F>,
    training: Option<&TrainingState<F>>,
    mut streamed: Option<&mut StreamedParam<'_, F>>,
) -> std::io::Result<()> {
    let start = out.stream_position()?;
    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(&MAGIC);
    header.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    header.extend_from_slice(&padded::<4>(F::NAME));
    header.extend_from_slice(&padded::<16>(env!("CARGO_PKG_VERSION")));
    header.extend_from_slice(&[0; 16]); // body length, CRC-32, reserved: filled in below
    out.write_all(&header)?;
    let mut hashed = Hashed {
        inner: &mut *out,
        hasher: crc32fast::Hasher::new(),
        len: 0,
    };
    let mut body = BufWriter::with_capacity(1 << 20, &mut hashed);
    codec::encode_into(model.config(), &mut body)?;
    codec::encode_into(&(params.len() as u64), &mut body)?;
    for id in params.ids() {
        codec::encode_into(&params.name(id), &mut body)?;
        match streamed.as_deref_mut() {
            Some(param) if param.id == id => {
                rows::write_rows(&mut body, params.name(id), param.shape, &mut param.value)?
            }
            _ => codec::encode_into(params.get(id), &mut body)?,
        }
    }
    match (training, streamed) {
        (Some(training), Some(param)) => {
            codec::encode_into(&1u8, &mut body)?; // an option's tag: present
            rows::write_training_state(&mut body, training, param)?;
        }
        (training, _) => codec::encode_into(&training, &mut body)?,
    }
    body.flush()?;
    drop(body);
    let (len, crc) = (hashed.len, hashed.hasher.finalize());
    out.seek(SeekFrom::Start(start + 32))?;
    out.write_all(&len.to_le_bytes())?;
    out.write_all(&crc.to_le_bytes())?;
    out.seek(SeekFrom::Start(start + HEADER_LEN as u64 + len))?;
    Ok(())
}

/// A writer that counts and hashes what passes through it.
struct Hashed<W> {
    inner: W,
    hasher: crc32fast::Hasher,
    len: u64,
}

impl<W: Write> Write for Hashed<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

fn padded<const N: usize>(text: &str) -> [u8; N] {
    let mut out = [0; N];
    let n = text.len().min(N);
    out[..n].copy_from_slice(&text.as_bytes()[..n]);
    out
}

fn field<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    bytes[at..at + N]
        .try_into()
        .expect("inside the checked header")
}

/// Checks the header at the start of `bytes` (which may hold nothing more): the magic first
/// (a file that does not begin with it is not a checkpoint, whatever its length), then its
/// length, version, reserved bytes, the writer's crate version and the element type. Returns
/// the body length it declares.
fn checked_header<F: Element>(bytes: &[u8]) -> Result<u64, CheckpointError> {
    let start = &bytes[..bytes.len().min(MAGIC.len())];
    if start != &MAGIC[..start.len()] {
        return Err(CheckpointError::BadMagic {
            found: start.to_vec(),
            looks_like: looks_like(bytes),
        });
    }
    if bytes.len() < HEADER_LEN {
        return Err(CheckpointError::Truncated {
            part: "header",
            expected: HEADER_LEN as u64,
            found: bytes.len() as u64,
        });
    }
    let written_by = padded_text(&field::<16>(bytes, 16));
    let version = u32::from_le_bytes(field(bytes, 8));
    if !(OLDEST_READABLE_VERSION..=FORMAT_VERSION).contains(&version) {
        return Err(CheckpointError::UnsupportedVersion {
            found: version,
            supported: FORMAT_VERSION,
            written_by,
        });
    }
    let reserved = field::<4>(bytes, 44);
    if reserved != [0; 4] {
        return Err(CheckpointError::HeaderField {
            field: "reserved",
            start: 44,
            found: reserved.to_vec(),
            requirement: "zero",
        });
    }
    if written_by.is_none() {
        return Err(CheckpointError::HeaderField {
            field: "crate version",
            start: 16,
            found: bytes[16..32].to_vec(),
            requirement: "the version of the crate that wrote the file: printable ASCII, then \
                          zero bytes to the end of the field",
        });
    }
    let element = field::<4>(bytes, 12);
    if element != padded::<4>(F::NAME) {
        return Err(CheckpointError::ElementType {
            expected: F::NAME,
            found: padded_text(&element).unwrap_or_else(|| format!("bytes {}", hex(&element))),
        });
    }
    Ok(u64::from_le_bytes(field(bytes, 32)))
}

/// The text of a zero-padded ASCII field (the writer's crate version, the element type): one
/// or more printable ASCII characters, then zero bytes only. `None` for anything else.
fn padded_text(field: &[u8]) -> Option<String> {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    let (text, padding) = field.split_at(end);
    let printable = !text.is_empty() && text.iter().all(|b| b.is_ascii_graphic());
    (printable && padding.iter().all(|&b| b == 0))
        .then(|| String::from_utf8_lossy(text).into_owned())
}

/// Bytes as hex pairs: `50 4b 03 04`.
fn hex(bytes: &[u8]) -> String {
    let pairs: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
    pairs.join(" ")
}

/// What a file that is not a checkpoint looks like, from its first bytes, when that is plain:
/// the files most often given by mistake (the run's `metrics.json`, a safetensors export, a
/// PyTorch checkpoint, a gzip-compressed file).
fn looks_like(bytes: &[u8]) -> Option<&'static str> {
    let text = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes); // a UTF-8 byte-order mark
    let first_visible = text.iter().find(|b| !b.is_ascii_whitespace());
    if matches!(first_visible, Some(b'{' | b'[')) {
        return Some("JSON text");
    }
    if bytes.len() > 8 && bytes[8] == b'{' {
        // safetensors: an 8-byte little-endian header length, then the JSON header
        return Some("a safetensors file (load it with a safetensors reader)");
    }
    match bytes {
        [b'P', b'K', 3, 4, ..] => Some(
            "a zip archive (a PyTorch .pt or .pth file saved by torch.save is one; margrad \
             reads only its own checkpoints)",
        ),
        [0x80, 2..=5, ..] => Some("a Python pickle (an older PyTorch .pt or .pth file is one)"),
        [0x1f, 0x8b, ..] => Some("gzip-compressed data (decompress it first)"),
        [0x93, b'N', b'U', b'M', b'P', b'Y', ..] => Some("a NumPy .npy file"),
        _ => None,
    }
}

/// Checks the body length the header declares against the bytes `present` after the header.
fn check_body_len(declared: u64, present: u64) -> Result<(), CheckpointError> {
    if present < declared {
        return Err(CheckpointError::Truncated {
            part: "body",
            expected: declared,
            found: present,
        });
    }
    if present > declared {
        return Err(CheckpointError::TrailingBytes {
            expected: declared,
            found: present,
        });
    }
    Ok(())
}

/// Tensors read from a file, handed to the model's constructors by name.
struct Stored<F: Element> {
    tensors: HashMap<String, Tensor<F>>,
    /// Names the file stores as the transpose of the model's layout (the safetensors export's
    /// `[C, D]` class centres): their shape is checked transposed, and they are handed over
    /// transposed back.
    transposed: HashSet<String>,
    /// The tensor read as some of its rows ([`load_rows`]), with the shape the file stores:
    /// that shape is checked, and the rows are handed over.
    cut: Option<(String, Vec<usize>)>,
    error: Option<CheckpointError>,
}

impl<F: Element> ParamSource<F> for Stored<F> {
    fn tensor(&mut self, name: &str, shape: &[usize], _fill: Fill) -> Tensor<F> {
        let transposed = self.transposed.contains(name) && shape.len() == 2;
        let expected: Vec<usize> = if transposed {
            shape.iter().rev().copied().collect()
        } else {
            shape.to_vec()
        };
        let stored_shape = |t: &Tensor<F>| match &self.cut {
            Some((cut, shape)) if cut == name => shape.clone(),
            _ => t.shape().to_vec(),
        };
        match self.tensors.remove(name) {
            Some(t) if stored_shape(&t) == expected && transposed => t.transpose(),
            Some(t) if stored_shape(&t) == expected => t,
            found => {
                let error = match &found {
                    Some(t) => CheckpointError::TensorShape {
                        name: name.to_string(),
                        expected,
                        found: stored_shape(t),
                    },
                    None => CheckpointError::MissingTensor(name.to_string()),
                };
                self.error.get_or_insert(error);
                // a stand-in, never sized by the configuration; the load fails anyway
                found.unwrap_or_else(|| Tensor::zeros(&[0]))
            }
        }
    }
}

/// Rebuilds the model `config` describes through `registry`, each layer taking its tensors
/// from `tensors` by name and shape (those named in `transposed` stored transposed; the one
/// `cut` to some of its rows checked by the shape stored). Every tensor the configuration
/// needs must be there, and no other.
fn rebuild<F: Element>(
    config: ModelConfig,
    registry: &LayerRegistry<F>,
    tensors: impl IntoIterator<Item = (String, Tensor<F>)>,
    transposed: HashSet<String>,
    cut: Option<(String, Vec<usize>)>,
) -> Result<(Model<F>, Params<F>), CheckpointError> {
    let mut stored = Stored {
        tensors: HashMap::new(),
        transposed,
        cut,
        error: None,
    };
    for (name, tensor) in tensors {
        if stored.tensors.contains_key(&name) {
            return Err(CheckpointError::UnexpectedTensor(name));
        }
        stored.tensors.insert(name, tensor);
    }
    let mut params = Params::new();
    let model = Model::new_with(config, registry, &mut params, &mut stored)
        .map_err(CheckpointError::Invalid)?;
    if let Some(error) = stored.error {
        return Err(error);
    }
    if let Some(name) = stored.tensors.into_keys().min() {
        return Err(CheckpointError::UnexpectedTensor(name));
    }
    Ok((model, params))
}

/// Reads a checkpoint from its bytes, building its layers with the crate's kinds
/// ([`LayerRegistry::standard`]).
///
/// # Errors
/// A [`CheckpointError`] for anything that is not a whole, consistent checkpoint of
/// element type `F`; [`CheckpointError::Invalid`] with [`Error::UnknownLayerKind`] for a
/// layer kind the crate does not know (use [`decode_with`]).
pub fn decode<F: Element>(bytes: &[u8]) -> Result<Checkpoint<F>, CheckpointError> {
    decode_with(bytes, &LayerRegistry::standard())
}

/// Reads a checkpoint from its bytes, building its layers through `registry` (which knows
/// your own layer kinds).
///
/// # Errors
/// As [`decode`].
pub fn decode_with<F: Element>(
    bytes: &[u8],
    registry: &LayerRegistry<F>,
) -> Result<Checkpoint<F>, CheckpointError> {
    let declared = checked_header::<F>(bytes)?;
    check_body_len(declared, (bytes.len() - HEADER_LEN) as u64)?;
    let crc = u32::from_le_bytes(field(bytes, 40));
    let ((parts, _), _) = read_body(&bytes[HEADER_LEN..], declared, crc, Parts::All, |e| {
        unreachable!("reading memory cannot fail: {e}")
    })?;
    assemble(parts, None, registry)
}

/// A checkpoint from its decoded parts: the model rebuilt through `registry` (the tensor `cut`
/// to some of its rows checked by the shape stored), the training state checked against its
/// parameters.
fn assemble<F: Element>(
    (config, tensors, training): BodyParts<F>,
    cut: Option<(String, Vec<usize>)>,
    registry: &LayerRegistry<F>,
) -> Result<Checkpoint<F>, CheckpointError> {
    let (model, params) = rebuild(config, registry, tensors, HashSet::new(), cut)?;
    if let Some(training) = &training {
        training
            .validate(&params)
            .map_err(CheckpointError::Invalid)?;
    }
    Ok(Checkpoint {
        model,
        params,
        training,
    })
}

/// A body's parts, in the order [`write_checkpoint`] writes them: the configuration, the
/// tensors by name (a name given twice is refused as an unexpected tensor), the training state.
type BodyParts<F> = (
    ModelConfig,
    HashMap<String, Tensor<F>>,
    Option<TrainingState<F>>,
);

/// A body's parts read with [`Parts::Rows`]: the parts, and the shape the file stores of the
/// tensor cut to some of its rows (`None` when the body holds no tensor of that name).
type CutParts<F> = (BodyParts<F>, Option<Vec<usize>>);

/// Which parts of a body to decode.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Parts<'a> {
    /// Every part.
    All,
    /// The configuration and the tensors; the training state's bytes are only checked
    /// against the checksum.
    Model,
    /// Every part, but of the tensor `name` and of its optimiser's moments only the rows
    /// `rows` ([`load_rows`]).
    Rows {
        /// The tensor's name.
        name: &'a str,
        /// The rows kept.
        rows: std::ops::Range<usize>,
    },
}

/// Reads the `declared` bytes of a body from `source` as they stream, each tensor straight
/// into its buffer, and checks them against the header's `crc`: a body whose bytes do not
/// match is [`CheckpointError::Checksum`] whatever its parts decoded to, and one that ends
/// early is [`CheckpointError::Truncated`]. Returns the parts and the source, after the body.
fn read_body<F: Element, R: Read>(
    source: R,
    declared: u64,
    crc: u32,
    parts: Parts<'_>,
    io_error: impl FnOnce(std::io::Error) -> CheckpointError,
) -> Result<(CutParts<F>, R), CheckpointError> {
    let mut reader = codec::Reader::new(source, declared);
    let decoded = read_parts(&mut reader, parts);
    let (ending, source) = reader.end().map_err(io_error)?;
    if ending.found < declared {
        return Err(CheckpointError::Truncated {
            part: "body",
            expected: declared,
            found: ending.found,
        });
    }
    if ending.crc != crc {
        return Err(CheckpointError::Checksum {
            expected: crc,
            found: ending.crc,
        });
    }
    Ok((decoded?, source))
}

fn read_parts<F: Element, R: Read>(
    reader: &mut codec::Reader<R>,
    parts: Parts<'_>,
) -> Result<CutParts<F>, CheckpointError> {
    let config = reader.read(|| "the model configuration".to_string())?;
    let count = reader.read_len(|| "the tensor count".to_string())?;
    // no capacity by the count: each tensor takes bytes, so the loop ends with the body
    let mut tensors = HashMap::new();
    // the cut tensor's position (its parameter's index, whose moments are cut too) and shape
    let mut cut = None;
    for i in 0..count {
        let name = reader.read_text(|| format!("tensor #{i}'s name"))?;
        let part = || format!("tensor {}", Quoted(&name));
        let tensor = match &parts {
            Parts::Rows { name: kept, rows } if *kept == name => {
                let (tensor, shape) = reader.read_rows(part, Some(rows.clone()))?;
                cut = Some((i as usize, shape));
                tensor
            }
            _ => reader.read_tensor(part)?,
        };
        if tensors.contains_key(&name) {
            return Err(CheckpointError::UnexpectedTensor(name));
        }
        tensors.insert(name, tensor);
    }
    let training = match parts {
        Parts::All => reader.read_stream(|| "the training state".to_string())?,
        Parts::Model => return Ok(((config, tensors, None), None)),
        Parts::Rows { rows, .. } => {
            let moments = cut.as_ref().map(|(index, _)| (*index, rows));
            rows::read_training_state(reader, moments)?
        }
    };
    reader.finish()?;
    Ok(((config, tensors, training), cut.map(|(_, shape)| shape)))
}

/// Saves a checkpoint atomically (temporary file, flush, sync, rename). What it writes, it
/// reads back: the checks [`load`] makes of the weights and the training state are made first.
///
/// # Errors
/// [`CheckpointError::NonFinite`] when a parameter or buffer holds a NaN or an infinity (a
/// checkpoint is never a diverged model); [`CheckpointError::UnsoundTrainingState`] when the
/// training state fails [`TrainingState::validate`] (an Adam moment that overflowed, say);
/// [`CheckpointError::Io`] when the file cannot be written. Either way the previous file, if
/// any, is left as it was.
pub fn save<F: Element>(
    path: &Path,
    model: &Model<F>,
    params: &Params<F>,
    training: Option<&TrainingState<F>>,
) -> Result<(), CheckpointError> {
    params.ensure_finite().map_err(CheckpointError::NonFinite)?;
    if let Some(training) = training {
        training
            .validate(params)
            .map_err(CheckpointError::UnsoundTrainingState)?;
    }
    write_atomically(path, |file| {
        write_checkpoint(file, model, params, training, None)
    })
}

/// Loads a checkpoint, building its layers with the crate's kinds
/// ([`LayerRegistry::standard`]).
///
/// The file is checked as it is read: it must be a regular file (a symbolic link counts as its
/// target); its header is read and checked (magic, version, element type) before anything
/// else; its body is read only when the file's size is exactly the header's declared length,
/// so no claimed length is allocated before the file is seen to hold it.
///
/// # Errors
/// [`CheckpointError::Io`] when the file cannot be read, [`CheckpointError::NotRegularFile`]
/// for a directory, a named pipe or a device, and every error of [`decode`].
pub fn load<F: Element>(path: &Path) -> Result<Checkpoint<F>, CheckpointError> {
    load_with(path, &LayerRegistry::standard())
}

/// Loads a checkpoint, building its layers through `registry` (which knows your own layer
/// kinds).
///
/// # Errors
/// As [`load`].
pub fn load_with<F: Element>(
    path: &Path,
    registry: &LayerRegistry<F>,
) -> Result<Checkpoint<F>, CheckpointError> {
    assemble(read_file(path, Parts::All)?.0, None, registry)
}

/// A checkpoint file's parts, read without trusting them: see [`load`]. The body streams
/// from the file into the tensors, never held whole.
fn read_file<F: Element>(path: &Path, parts: Parts<'_>) -> Result<CutParts<F>, CheckpointError> {
    let (file, len) = files::open_regular(path).map_err(|e| match e {
        OpenError::Io(e) => io_error(path, e),
        OpenError::NotRegular(kind) => CheckpointError::NotRegularFile {
            path: path.to_path_buf(),
            kind,
        },
    })?;
    let mut header = Vec::with_capacity(HEADER_LEN);
    files::read_prefix(&file, HEADER_LEN as u64, &mut header).map_err(|e| io_error(path, e))?;
    let declared = checked_header::<F>(&header)?;
    check_body_len(declared, len.saturating_sub(HEADER_LEN as u64))?;
    // the claim now matches the file's size; the file may still change while it is read
    let crc = u32::from_le_bytes(field(&header, 40));
    let (parts, mut rest) = read_body(&file, declared, crc, parts, |e| io_error(path, e))?;
    if rest.read(&mut [0; 1]).map_err(|e| io_error(path, e))? > 0 {
        return Err(CheckpointError::TrailingBytes {
            expected: declared,
            found: file.metadata().map_or(declared.saturating_add(1), |m| {
                m.len().saturating_sub(HEADER_LEN as u64)
            }),
        });
    }
    Ok(parts)
}

fn io_error(path: &Path, e: std::io::Error) -> CheckpointError {
    CheckpointError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// [`files::write_atomically`](crate::files), with the failure as a checkpoint error.
pub(crate) fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut File) -> std::io::Result<()>,
) -> Result<(), CheckpointError> {
    crate::files::write_atomically(path, write).map_err(|e| io_error(path, e))
}

/// Loads only the head of a checkpoint: its centres (or linear classifier) and loss. The
/// training state is not decoded (its bytes are checked against the checksum), and the
/// centres are moved into the head, not copied: loading a head of `C×D` centres holds them
/// once.
///
/// # Errors
/// As [`load`].
pub fn load_head<F: Element>(path: &Path) -> Result<TrainedHead<F>, CheckpointError> {
    load_head_with(path, &LayerRegistry::standard())
}

/// Loads only the head of a checkpoint whose embedder has layer kinds of your own.
///
/// # Errors
/// As [`load_with`].
pub fn load_head_with<F: Element>(
    path: &Path,
    registry: &LayerRegistry<F>,
) -> Result<TrainedHead<F>, CheckpointError> {
    let ((config, tensors, _), _) = read_file::<F>(path, Parts::Model)?;
    let (model, params) = rebuild(config, registry, tensors, HashSet::new(), None)?;
    Ok(TrainedHead::take(&model, params))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::{HeadConfig, MlpConfig};
    use std::fs;

    #[test]
    fn a_failed_save_leaves_the_previous_checkpoint_intact() {
        let dir = std::env::temp_dir().join(format!("margrad-atomic-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("checkpoint.margrad");
        let mut params = Params::<f32>::new();
        let config = ModelConfig {
            embedder: MlpConfig::new(&[3, 4]).sequential().unwrap(),
            head: HeadConfig::Linear { classes: 2 },
        };
        let model = Model::new(config, &mut params, &mut crate::seeded_rng(0)).unwrap();
        save(&path, &model, &params, None).unwrap();
        let before = fs::read(&path).unwrap();
        // a crash half-way through the next save: half the bytes written, then an error
        let bytes = encode(&model, &params, None);
        let err = write_atomically(&path, |file| {
            file.write_all(&bytes[..bytes.len() / 2])?;
            Err(std::io::Error::other("simulated crash"))
        })
        .unwrap_err();
        assert!(err.to_string().contains("simulated crash"));
        assert_eq!(fs::read(&path).unwrap(), before);
        load::<f32>(&path).unwrap();
        let leftovers = fs::read_dir(&dir).unwrap().count();
        assert_eq!(leftovers, 1, "the temporary file is removed");
        fs::remove_dir_all(&dir).unwrap();
    }
}
