//! The body codec: the only file that knows bincode, so swapping it (bincode 3.0 on the
//! registry is a deliberate compile error) touches nothing else. The header's format version
//! says which codec wrote a body.
//!
//! A body is written straight to its file ([`encode_into`]), each tensor from its own buffer,
//! and read part by part with a [`Reader`] as it streams from the file: bincode lays a struct
//! out as its fields one after another, with no framing, and a sequence as its length then its
//! items, so reading the fields in order, each from where the last ended, reads the same bytes
//! as decoding the whole; and a failure can say which part failed and from which byte. Every
//! byte that passes is counted and goes into the CRC-32 the header is checked against.
//!
//! Decoding never allocates by a length it has not checked. Small parts (the configuration,
//! the names) are decoded from a window of the bytes that have arrived, borrowing from it
//! (strings read through `files::read_str` are bounds-checked slices of it, never buffers
//! sized by a claimed length), the window growing only as bytes arrive and never past
//! [`WINDOW_LIMIT`]. A tensor's elements are read straight into its buffer, allocated once its
//! length is checked against its shape and against the bytes the body has left. The training
//! state (numbers and tensors, no text) is decoded from the stream by serde, each tensor's
//! elements into a buffer allocated once at the length claimed if the body's bytes left can
//! hold it (`files::read_elements`), else grown as they arrive.

use crate::{Element, Tensor};
use bincode::error::{AllowedEnumVariants, DecodeError, EncodeError};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::io::{self, Read, Write};
use std::ops::Range;

/// bincode's standard configuration: little-endian, variable-length integers.
fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Encodes `value` into `writer`, streaming: nothing of it is copied whole.
pub(crate) fn encode_into<T: Serialize, W: Write>(value: &T, writer: &mut W) -> io::Result<()> {
    match bincode::serde::encode_into_std_write(value, writer, config()) {
        Ok(_) => Ok(()),
        Err(EncodeError::Io { inner, .. }) => Err(inner),
        Err(e) => Err(io::Error::other(format!("{e:?}"))),
    }
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

/// The most bytes a small part (a configuration, a name) may take: 64 MiB. A part that claims
/// more is refused when the window reaches it, before anything is sized by the claim.
pub(crate) const WINDOW_LIMIT: usize = 64 << 20;

/// The bytes pulled from a source at a time.
const CHUNK: usize = 1 << 20;

/// Reads a body of known length from `source` part by part, hashing every byte.
pub(crate) struct Reader<R> {
    source: R,
    /// The body's length.
    len: u64,
    /// Body bytes not yet pulled from `source`.
    unread: u64,
    /// Bytes pulled and not yet consumed: `window[at..]`.
    window: Vec<u8>,
    at: usize,
    /// Body bytes consumed by the parts read.
    consumed: u64,
    hasher: crc32fast::Hasher,
}

/// How a body ended, once every byte of it was pulled: its CRC-32 and the bytes that were
/// there, fewer than declared when the source ended first.
pub(crate) struct Ending {
    pub(crate) crc: u32,
    pub(crate) found: u64,
}

impl<R: Read> Reader<R> {
    /// A reader of the `len` body bytes that `source` begins with.
    pub(crate) fn new(source: R, len: u64) -> Self {
        Reader {
            source,
            len,
            unread: len,
            window: Vec::new(),
            at: 0,
            consumed: 0,
            hasher: crc32fast::Hasher::new(),
        }
    }

    /// Pulls up to `n` more body bytes into `out` (appended), hashing them; returns how many
    /// arrived (fewer when the source ends).
    fn pull(&mut self, n: usize, out: &mut Vec<u8>) -> io::Result<usize> {
        let n = n.min(usize::try_from(self.unread).unwrap_or(usize::MAX));
        let start = out.len();
        (&mut self.source).take(n as u64).read_to_end(out)?;
        let got = out.len() - start;
        self.hasher.update(&out[start..]);
        self.unread -= got as u64;
        Ok(got)
    }

    /// Decodes the next small part with `decode` (given the window, it returns the value and
    /// the bytes it took), growing the window as bytes arrive.
    fn small<T>(
        &mut self,
        part: impl FnOnce() -> String,
        decode: impl Fn(&[u8]) -> Result<(T, usize), DecodeError>,
    ) -> Result<T, PartError> {
        let mut want = CHUNK;
        loop {
            let error = match decode(&self.window[self.at..]) {
                Ok((value, read)) => {
                    self.at += read;
                    self.consumed += read as u64;
                    return Ok(value);
                }
                Err(e) => e,
            };
            let held = self.window.len() - self.at;
            let more = matches!(
                error,
                DecodeError::UnexpectedEnd { .. } | DecodeError::Io { .. }
            );
            if !more || self.unread == 0 || held >= WINDOW_LIMIT {
                let message = if more && held >= WINDOW_LIMIT {
                    format!("it claims more than {WINDOW_LIMIT} bytes, the most such a part takes")
                } else {
                    sentence(error)
                };
                return Err(self.error(part(), message));
            }
            self.window.drain(..self.at);
            self.at = 0;
            want = want.max(held * 2).min(WINDOW_LIMIT);
            let mut window = std::mem::take(&mut self.window);
            let pulled = self.pull(want - held, &mut window);
            self.window = window;
            match pulled {
                Ok(0) => {
                    let message = "the body ends in the middle of it".to_string();
                    return Err(self.error(part(), message));
                }
                Ok(_) => {}
                Err(e) => {
                    let message = format!("the file could not be read: {e}");
                    return Err(self.error(part(), message));
                }
            }
        }
    }

    /// The body bytes consumed by the parts read.
    pub(crate) fn consumed(&self) -> u64 {
        self.consumed
    }

    fn error(&self, part: String, message: String) -> PartError {
        PartError {
            part,
            offset: self.consumed,
            message,
        }
    }

    /// Decodes the next value, a `T`, from the window (for small parts: a configuration, a
    /// count); `part` names it for an error.
    pub(crate) fn read<T: DeserializeOwned>(
        &mut self,
        part: impl FnOnce() -> String,
    ) -> Result<T, PartError> {
        self.small(part, |bytes| {
            bincode::serde::borrow_decode_from_slice(bytes, config())
        })
    }

    /// Decodes the next text, borrowed from the window and copied once its length is checked.
    pub(crate) fn read_text(&mut self, part: impl FnOnce() -> String) -> Result<String, PartError> {
        self.small(part, |bytes| {
            bincode::serde::borrow_decode_from_slice::<&str, _>(bytes, config())
                .map(|(text, read)| (text.to_string(), read))
        })
    }

    /// Decodes the length that precedes a sequence's items.
    pub(crate) fn read_len(&mut self, part: impl FnOnce() -> String) -> Result<u64, PartError> {
        self.read::<u64>(part)
    }

    /// Reads a tensor (its shape, then its elements), the elements straight into the tensor's
    /// buffer, allocated once their count is checked against the shape and the body's bytes.
    pub(crate) fn read_tensor<F: Element>(
        &mut self,
        part: impl Fn() -> String,
    ) -> Result<Tensor<F>, PartError> {
        Ok(self.read_rows(part, None)?.0)
    }

    /// Reads a tensor as [`Reader::read_tensor`] does, keeping of its elements only those of
    /// the rows `rows` of its first dimension when given (the others pass through the checksum
    /// and are dropped, a chunk at a time): the tensor `[rows.len(), …]` and the shape stored.
    /// An empty tensor (an optimiser's unused moment) is kept as it is.
    pub(crate) fn read_rows<F: Element>(
        &mut self,
        part: impl Fn() -> String,
        rows: Option<Range<usize>>,
    ) -> Result<(Tensor<F>, Vec<usize>), PartError> {
        let start = self.consumed;
        let shape: Vec<usize> = self.read(&part)?;
        let len = self.read_len(&part)?;
        let size = std::mem::size_of::<F>();
        let left = self.unread + (self.window.len() - self.at) as u64;
        let fits = len
            .checked_mul(size as u64)
            .is_some_and(|bytes| bytes <= left);
        let elements = crate::numel(&shape);
        let fail = |message: String| PartError {
            part: part(),
            offset: start,
            message,
        };
        if elements as u64 != len {
            let mismatch = crate::Error::DataLength {
                shape: shape.clone(),
                expected: elements,
                found: usize::try_from(len).unwrap_or(usize::MAX),
            };
            return Err(fail(mismatch.to_string()));
        }
        if !fits {
            return Err(fail(format!(
                "its {len} elements of {size} bytes need more than the {left} bytes left: the \
                 body ends in the middle of it"
            )));
        }
        let (kept, kept_shape) = match rows {
            Some(rows) if elements > 0 => {
                let Some(&count) = shape.first() else {
                    return Err(fail("it is a scalar, not rows".into()));
                };
                if rows.start > rows.end || rows.end > count {
                    return Err(fail(format!(
                        "it has {count} rows, and rows {}..{} were asked for",
                        rows.start, rows.end
                    )));
                }
                let per_row = elements / count;
                let mut kept_shape = shape.clone();
                kept_shape[0] = rows.len();
                (rows.start * per_row..rows.end * per_row, kept_shape)
            }
            _ => (0..elements, shape.clone()),
        };
        let mut data = vec![F::ZERO; kept.len()];
        let per_chunk = CHUNK / size;
        let mut bytes = Vec::with_capacity(CHUNK.min(elements * size));
        for first in (0..elements).step_by(per_chunk) {
            let chunk = first..(first + per_chunk).min(elements);
            bytes.clear();
            let need = chunk.len() * size;
            let held = (self.window.len() - self.at).min(need);
            bytes.extend_from_slice(&self.window[self.at..self.at + held]);
            self.at += held;
            if bytes.len() < need {
                match self.pull(need - bytes.len(), &mut bytes) {
                    Ok(_) if bytes.len() == need => {}
                    Ok(_) => return Err(fail("the body ends in the middle of it".into())),
                    Err(e) => return Err(fail(format!("the file could not be read: {e}"))),
                }
            }
            let from = chunk.start.max(kept.start);
            let to = chunk.end.min(kept.end);
            if from < to {
                let out = &mut data[from - kept.start..to - kept.start];
                let src = &bytes[(from - chunk.start) * size..(to - chunk.start) * size];
                for (x, b) in out.iter_mut().zip(src.chunks_exact(size)) {
                    *x = F::from_le_slice(b);
                }
            }
            self.consumed += need as u64;
        }
        let tensor = Tensor::from_vec(data, &kept_shape).map_err(|e| fail(e.to_string()))?;
        Ok((tensor, shape))
    }

    /// Decodes the next value, a `T` holding no text, straight from the stream (for large
    /// parts made of numbers and tensors: the training state).
    pub(crate) fn read_stream<T: DeserializeOwned>(
        &mut self,
        part: impl FnOnce() -> String,
    ) -> Result<T, PartError> {
        let start = self.consumed;
        let left = self.unread + (self.window.len() - self.at) as u64;
        let mut stream = Stream { reader: self };
        // the body's size is checked against the file's: a sequence of the bytes left is
        // there to be read, and is allocated at once
        let decoded = crate::files::with_sequence_allowance(left, || {
            bincode::serde::decode_from_std_read(&mut stream, config())
        });
        match decoded {
            Ok(value) => Ok(value),
            Err(e) => Err(PartError {
                part: part(),
                offset: start,
                message: sentence(e),
            }),
        }
    }

    /// Checks that every byte was read.
    pub(crate) fn finish(&self) -> Result<(), PartError> {
        let left = self.unread + (self.window.len() - self.at) as u64;
        if left == 0 {
            return Ok(());
        }
        Err(PartError {
            part: "the end of the body".to_string(),
            offset: self.consumed,
            message: format!(
                "{left} bytes follow the last part, of {} in all",
                self.consumed + left
            ),
        })
    }

    /// Pulls (and hashes) whatever of the body is left unread, and says how it ended.
    pub(crate) fn end(mut self) -> io::Result<(Ending, R)> {
        let mut scratch = Vec::with_capacity(CHUNK);
        while self.unread > 0 {
            scratch.clear();
            if self.pull(CHUNK, &mut scratch)? == 0 {
                break;
            }
        }
        let found = self.len - self.unread;
        Ok((
            Ending {
                crc: self.hasher.finalize(),
                found,
            },
            self.source,
        ))
    }
}

/// The stream of a [`Reader`]'s bytes, for serde: the window first, then the source.
struct Stream<'r, R> {
    reader: &'r mut Reader<R>,
}

impl<R: Read> Read for Stream<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let r = &mut *self.reader;
        if r.at == r.window.len() {
            let mut window = std::mem::take(&mut r.window);
            window.clear();
            r.at = 0;
            let pulled = r.pull(CHUNK.max(buf.len()), &mut window);
            r.window = window;
            pulled?;
        }
        let n = buf.len().min(r.window.len() - r.at);
        buf[..n].copy_from_slice(&r.window[r.at..r.at + n]);
        r.at += n;
        r.consumed += n as u64;
        Ok(n)
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
pub(crate) fn kind_number(
    found: impl std::fmt::Display,
    count: impl std::fmt::Display,
    first: u32,
) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Tensor;

    #[test]
    fn rows_asked_of_a_scalar_are_an_error_not_a_panic() {
        let mut body = Vec::new();
        encode_into(&Tensor::scalar(1.5f32), &mut body).unwrap();
        let reader = || Reader::new(body.as_slice(), body.len() as u64);
        for rows in [0..0, 0..1, 1..1] {
            let err = reader()
                .read_rows::<f32>(|| "tensor \"s\"".into(), Some(rows))
                .unwrap_err();
            assert!(
                err.message.contains("a scalar, not rows"),
                "{}",
                err.message
            );
        }
        let whole = reader()
            .read_tensor::<f32>(|| "tensor \"s\"".into())
            .unwrap();
        assert_eq!(whole.data(), [1.5]);
    }
}
