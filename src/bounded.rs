//! Reading what a file claims without trusting it: the helpers that keep a decoder from
//! allocating by a length it has not checked.

use serde::de::{self, Deserializer, Visitor};
use std::fmt;

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
