//! The crate's error type, for everything that comes from outside: data, files, settings.
//!
//! Mistakes in composing ops (shapes that do not fit) are programmer errors and panic at the
//! caller's line instead; see each op's `# Panics` section.

use std::fmt;

/// What went wrong with input that came from outside the program.
#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// A buffer's length does not match the shape it was given.
    DataLength {
        /// The shape asked for.
        shape: Vec<usize>,
        /// Elements the shape needs.
        expected: usize,
        /// Elements supplied.
        found: usize,
    },
    /// A NaN or infinity where a finite value is required.
    NonFinite {
        /// What was being checked ("loss", "input x", ...).
        what: String,
        /// Flat index of the first offending element.
        index: usize,
        /// The offending value.
        value: f64,
    },
    /// Verification scores (one per pair) that are NaN or infinite: a ROC curve or a
    /// threshold over them means nothing, so none is computed. A finite model's cosine
    /// similarities are in `[-1, 1]`; NaN comes from embeddings that are not finite.
    NonFiniteScores {
        /// How many scores are not finite.
        count: usize,
        /// How many scores there are.
        total: usize,
        /// Index (pair) of the first one.
        first: usize,
        /// Its value.
        value: f64,
    },
    /// A class label not in `0..classes`.
    LabelOutOfRange {
        /// Position of the label in the batch.
        index: usize,
        /// The label found.
        label: usize,
        /// Number of classes.
        classes: usize,
    },
    /// A batch with no samples where at least one is needed.
    EmptyBatch,
    /// A data set (or one split of it) with no samples where a run needs some.
    EmptyData {
        /// Which set ("training samples", "test samples", ...).
        what: String,
    },
    /// A data file that does not follow its format.
    Format {
        /// Which file or data set.
        source: String,
        /// Where in it (a line, a byte offset, a field).
        location: String,
        /// What was expected and what was found.
        message: String,
    },
    /// A file that could not be read.
    Io {
        /// The path or data set.
        source: String,
        /// The operating system's message.
        message: String,
    },
    /// A setting (hyperparameter, flag) outside the range its formula allows.
    InvalidSetting {
        /// The setting's name.
        name: &'static str,
        /// The value given.
        value: f64,
        /// What it must satisfy.
        requirement: &'static str,
    },
    /// A layer kind that the [`LayerRegistry`](crate::nn::LayerRegistry) building a model does
    /// not know (a checkpoint written with a user-defined layer, loaded without its registry).
    UnknownLayerKind {
        /// Where the layer sits ("embed.2").
        layer: String,
        /// The kind asked for.
        kind: String,
        /// The kinds the registry knows, sorted.
        known: Vec<String>,
    },
    /// A layer whose settings do not parse as its kind's, or that does not fit the layers
    /// around it.
    LayerSettings {
        /// Where the layer sits ("embed.2").
        layer: String,
        /// Its kind.
        kind: String,
        /// What is wrong.
        message: String,
    },
    /// Data that the model cannot take: images of another size than its input, features
    /// where it takes images.
    DataDoesNotFit {
        /// The model, as its settings name it ("--model lenet++").
        model: String,
        /// What it takes ("28×28 grey images").
        takes: String,
        /// What the data gives ("--data digits: 8×8 images").
        given: String,
    },
    /// A setting so large that the memory a run would hold cannot be counted in 64 bits, or
    /// exceeds the memory the machine has available: refused before anything is allocated.
    TooLarge {
        /// The setting that sizes the largest share of the memory.
        setting: &'static str,
        /// Its value.
        value: u64,
        /// The bytes the run would hold; `None` when the count overflows.
        needed: Option<u64>,
        /// The bytes available (`MemAvailable`); `None` where it cannot be read.
        available: Option<u64>,
    },
    /// A run over several processes that cannot go on: a rank failed (every rank stops with
    /// its message), or the ranks disagree (started with different configurations).
    Distributed {
        /// What happened, naming the ranks.
        message: String,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::DataDoesNotFit {
                model,
                takes,
                given,
            } => write!(
                f,
                "the data does not fit the model: {model} takes {takes}, {given}"
            ),
            Error::DataLength {
                shape,
                expected,
                found,
            } => write!(
                f,
                "data length mismatch: shape {} needs {expected} elements, found {found}",
                Shape(shape)
            ),
            Error::NonFinite { what, index, value } => {
                write!(f, "non-finite value in {what}: element {index} is {value}")
            }
            Error::NonFiniteScores {
                count,
                total,
                first,
                value,
            } => write!(
                f,
                "{count} of {total} verification scores are not finite (the first, pair {first}, \
                 is {value}): no ROC or threshold is computed over them; are the model's \
                 embeddings finite?"
            ),
            Error::LabelOutOfRange {
                index,
                label,
                classes,
            } => write!(
                f,
                "label out of range: sample {index} has label {label}, expected 0..{classes}"
            ),
            Error::EmptyBatch => write!(f, "empty batch: at least one sample is needed"),
            Error::EmptyData { what } => {
                write!(
                    f,
                    "no {what}: a run needs at least one (is the data set empty?)"
                )
            }
            Error::Format {
                source,
                location,
                message,
            } => write!(f, "malformed {source} at {location}: {message}"),
            Error::Io { source, message } => write!(f, "cannot read {source}: {message}"),
            Error::InvalidSetting {
                name,
                value,
                requirement,
            } => write!(
                f,
                "invalid {name} = {}: must be {requirement}",
                Number(*value)
            ),
            Error::UnknownLayerKind { layer, kind, known } => write!(
                f,
                "unknown layer kind {} at {layer} (the registry knows: {}): register it in a \
                 LayerRegistry and build or load with that registry",
                Quoted(kind),
                known.join(", ")
            ),
            Error::LayerSettings {
                layer,
                kind,
                message,
            } => write!(
                f,
                "invalid settings for layer {layer} ({}): {message}",
                Quoted(kind)
            ),
            Error::TooLarge {
                setting,
                value,
                needed,
                available,
            } => match (needed, available) {
                (None, _) => write!(
                    f,
                    "{setting} = {value} is too large: the memory it needs overflows a 64-bit \
                     count of bytes"
                ),
                (Some(needed), Some(available)) => write!(
                    f,
                    "{setting} = {value} is too large: the run would hold {needed} bytes ({}), \
                     more than the {available} bytes ({}) available",
                    gib(*needed),
                    gib(*available)
                ),
                (Some(needed), None) => write!(
                    f,
                    "{setting} = {value} is too large: the run would hold {needed} bytes ({})",
                    gib(*needed)
                ),
            },
            Error::Distributed { message } => write!(f, "distributed run stopped: {message}"),
        }
    }
}

impl std::error::Error for Error {}

/// `bytes` in GiB, for messages.
fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// A name from outside (a tensor's, a layer kind's) in double quotes, any quote, backslash or
/// control character in it escaped as JSON escapes them (`"a\u0001b"`): what a file holds is
/// shown exactly, and cannot garble a terminal.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Quoted<'a>(pub(crate) &'a str);

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let json = serde_json::to_string(self.0).map_err(|_| fmt::Error)?;
        f.write_str(&json)
    }
}

/// A shape as a list, `[2, 3]`; one read from a file may have any number of dimensions, so past
/// eight only their count is given: `[1, 1, 1, 1, 1, 1, 1, 1, … (100 dimensions)]`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Shape<'a>(pub(crate) &'a [usize]);

impl fmt::Display for Shape<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 8;
        let dims = self.0;
        let shown: Vec<String> = dims.iter().take(SHOWN).map(usize::to_string).collect();
        write!(f, "[{}", shown.join(", "))?;
        if dims.len() > SHOWN {
            write!(f, ", … ({} dimensions)", dims.len())?;
        }
        f.write_str("]")
    }
}

/// A number as a person reads it: `0.001`, `250`, and in scientific notation (`1e-50`,
/// `1e42`) where the plain form would run to dozens of digits.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Number(pub(crate) f64);

impl fmt::Display for Number {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.0;
        if v == 0.0 || !v.is_finite() || (1e-5..1e16).contains(&v.abs()) {
            write!(f, "{v}")
        } else {
            write!(f, "{v:e}")
        }
    }
}

impl Error {
    /// `Ok` when `value` is finite and `ok` holds; otherwise [`Error::InvalidSetting`] naming
    /// the setting and the `requirement` it fails. The one check every setting goes through.
    pub(crate) fn check(
        name: &'static str,
        value: f64,
        ok: bool,
        requirement: &'static str,
    ) -> Result<(), Error> {
        if ok && value.is_finite() {
            Ok(())
        } else {
            Err(Error::InvalidSetting {
                name,
                value,
                requirement,
            })
        }
    }
}
