//! The body codec: the only file that knows bincode, so swapping it (bincode 3.0 on the
//! registry is a deliberate compile error) touches nothing else. The header's format version
//! says which codec wrote a body.
//!
//! Decoding never allocates by a length it has not checked: it borrows from the byte slice
//! (strings read through `files::read_str` are bounds-checked slices of it, never buffers
//! sized by a claimed length), and serde preallocates at most 1 MiB for a sequence before its
//! elements have actually been read.

use serde::{Deserialize, Serialize};

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
