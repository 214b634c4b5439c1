//! The body codec: the only file that knows bincode, so swapping it (bincode 3.0 on the
//! registry is a deliberate compile error) touches nothing else. The header's format version
//! says which codec wrote a body.
//!
//! Decoding never allocates by a length it has not checked: it borrows from the byte slice
//! (strings read through [`read_str`] are bounds-checked slices of it, never buffers sized by
//! a claimed length), and serde preallocates at most 1 MiB for a sequence before its elements
//! have actually been read.

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};
use std::fmt;

/// bincode's standard configuration: little-endian, variable-length integers.
fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Encodes `value`.
pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(value, config()).expect("encoding to memory cannot fail")
}

/// Decodes a `T` that must fill `bytes` exactly.
pub(crate) fn decode<'de, T: Deserialize<'de>>(bytes: &'de [u8]) -> Result<T, String> {
    let (value, read) =
        bincode::serde::borrow_decode_from_slice(bytes, config()).map_err(|e| e.to_string())?;
    if read != bytes.len() {
        return Err(format!(
            "the body holds {} bytes after its end ({} of {} read)",
            bytes.len() - read,
            read,
            bytes.len()
        ));
    }
    Ok(value)
}

/// Deserialises a `String` through `deserialize_str`, so that a decoder borrowing from its
/// input reads a bounds-checked slice instead of allocating the length a file claims. Use it
/// (`#[serde(deserialize_with = ...)]`) on every `String` that a checkpoint stores.
pub(crate) fn read_str<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    struct StrVisitor;
    impl Visitor<'_> for StrVisitor {
        type Value = String;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_string<E: de::Error>(self, v: String) -> Result<String, E> {
            Ok(v)
        }
    }
    deserializer.deserialize_str(StrVisitor)
}
