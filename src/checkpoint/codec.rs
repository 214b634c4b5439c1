//! The body codec: the only file that knows bincode, so swapping it (bincode 3.0 on the
//! registry is a deliberate compile error) touches nothing else. The header's format version
//! says which codec wrote a body.
//!
//! A body is read part by part with a [`Reader`]: bincode lays a struct out as its fields one
//! after another, with no framing, and a sequence as its length then its items, so reading the
//! fields in order, each from where the last ended, reads the same bytes as decoding the whole;
//! and a failure can say which part failed and from which byte.
//!
//! Decoding never allocates by a length it has not checked: it borrows from the byte slice
//! (strings read through `files::read_str` are bounds-checked slices of it, never buffers
//! sized by a claimed length), and serde preallocates at most 1 MiB for a sequence before its
//! elements have actually been read.

use bincode::error::{AllowedEnumVariants, DecodeError};
use serde::{Deserialize, Serialize};

/// bincode's standard configuration: little-endian, variable-length integers.
fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Encodes `value`.
pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(value, config()).expect("encoding to memory cannot fail")
}

/// Why a part of a body does not decode.
#[derive(Debug)]
pub(crate) struct PartError {
    /// The part ("the model configuration", "tensor \"embed.0.weight\"").
    pub(crate) part: String,
    /// The body byte at which the part begins.
    pub(crate) offset: u64,
    /// What is wrong, as a sentence.
    pub(crate) message: String,
}

/// Reads a body's parts in order, each from where the last ended.
pub(crate) struct Reader<'de> {
    bytes: &'de [u8],
    at: usize,
}

impl<'de> Reader<'de> {
    /// A reader at the start of `bytes`.
    pub(crate) fn new(bytes: &'de [u8]) -> Self {
        Reader { bytes, at: 0 }
    }

    /// Decodes the next value, a `T`; `part` names it for an error.
    pub(crate) fn read<T: Deserialize<'de>>(
        &mut self,
        part: impl FnOnce() -> String,
    ) -> Result<T, PartError> {
        let rest = &self.bytes[self.at..];
        match bincode::serde::borrow_decode_from_slice(rest, config()) {
            Ok((value, read)) => {
                self.at += read;
                Ok(value)
            }
            Err(e) => Err(PartError {
                part: part(),
                offset: self.at as u64,
                message: sentence(e),
            }),
        }
    }

    /// Decodes the length that precedes a sequence's items.
    pub(crate) fn read_len(&mut self, part: impl FnOnce() -> String) -> Result<u64, PartError> {
        self.read::<u64>(part)
    }

    /// Checks that every byte was read.
    pub(crate) fn finish(self) -> Result<(), PartError> {
        if self.at == self.bytes.len() {
            return Ok(());
        }
        Err(PartError {
            part: "the end of the body".to_string(),
            offset: self.at as u64,
            message: format!(
                "{} bytes follow the last part, of {} in all",
                self.bytes.len() - self.at,
                self.bytes.len()
            ),
        })
    }
}

/// bincode's error as a sentence (its own `Display` is its `Debug`: `UnexpectedEnd {
/// additional: 3 }`).
fn sentence(e: DecodeError) -> String {
    match e {
        DecodeError::UnexpectedEnd { .. } | DecodeError::Io { .. } => {
            "the body ends in the middle of it".to_string()
        }
        DecodeError::LimitExceeded => "it is larger than the decoder allows".to_string(),
        DecodeError::InvalidIntegerType { .. } | DecodeError::OutsideUsizeRange(_) => {
            "a number is stored in a form too wide for its field".to_string()
        }
        DecodeError::NonZeroTypeIsZero { .. } => "a number that cannot be zero is zero".to_string(),
        DecodeError::UnexpectedVariant {
            allowed: AllowedEnumVariants::Range { min, max },
            found,
            ..
        } => kind_number(found, u64::from(*max) - u64::from(*min) + 1, *min),
        DecodeError::Utf8 { .. } | DecodeError::InvalidCharEncoding(_) => {
            "a text is not valid UTF-8".to_string()
        }
        DecodeError::InvalidBooleanValue(v) => {
            format!("a yes-or-no field holds {v}, where only 0 and 1 mean anything")
        }
        DecodeError::ArrayLengthMismatch { required, found } => {
            format!("a list holds {found} items, where its field holds {required}")
        }
        DecodeError::Other(message) => message.to_string(),
        DecodeError::OtherString(message) => serde_sentence(message),
        _ => "the bytes do not form a value of the type stored there".to_string(),
    }
}

/// A choice among `count` kinds (an enum's variants, an option's absent or present) stored as
/// a number none of them has.
fn kind_number(found: impl std::fmt::Display, count: impl std::fmt::Display, first: u32) -> String {
    format!(
        "a field with {count} possible kinds holds kind number {found} (they are numbered from \
         {first})"
    )
}

/// serde's message for an enum's unknown variant, "invalid value: integer `7`, expected
/// variant index 0 <= i < 3", in words; other messages (a type's own checks, serde's "invalid
/// length 2, expected …") as they are.
fn serde_sentence(message: String) -> String {
    let variant = message
        .strip_prefix("invalid value: integer `")
        .and_then(|rest| rest.split_once("`, expected variant index 0 <= i < "));
    match variant {
        Some((found, count)) => kind_number(found, count, 0),
        None => message,
    }
}
