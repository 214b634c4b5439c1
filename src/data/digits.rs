//! The UCI 8x8 handwritten digits: 1,797 images, shipped inside the crate.

use super::Dataset;
use crate::{Error, Tensor};
use flate2::read::GzDecoder;
use std::io::Read;

const DIGITS_GZ: &[u8] = include_bytes!("../../data/digits.csv.gz");

/// Pixels per image (8x8).
const PIXELS: usize = 64;
/// The largest pixel value in the data set.
pub(super) const PIXEL_MAX: f32 = 16.0;

/// The embedded UCI digits: features `[1797, 64]` scaled to `[0, 1]`, labels `0..10`.
pub fn digits() -> Dataset {
    let mut csv = String::new();
    GzDecoder::new(DIGITS_GZ)
        .read_to_string(&mut csv)
        .expect("the embedded digits archive is valid gzip (checked by tests)");
    parse_digits_csv(&csv, "embedded digits").expect("the embedded digits are valid")
}

/// Parses the digits CSV: per line 64 pixel values in `0..=16`, then a label in `0..10`.
///
/// # Errors
/// [`Error::Format`] naming the line and field for a wrong field count, a field that is not an
/// integer, a pixel out of range or a label out of range; [`Error::EmptyBatch`] for no rows.
pub fn parse_digits_csv(text: &str, source: &str) -> Result<Dataset, Error> {
    let mut features = Vec::new();
    let mut labels = Vec::new();
    for (index, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let bad = |message: String| Error::Format {
            source: source.to_string(),
            location: format!("line {}", index + 1),
            message,
        };
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if fields.len() != PIXELS + 1 {
            return Err(bad(format!(
                "expected {} comma-separated fields, found {}",
                PIXELS + 1,
                fields.len()
            )));
        }
        for (column, field) in fields.iter().enumerate() {
            let value: u32 = field.parse().map_err(|_| {
                bad(format!(
                    "field {} is {field:?}, expected an integer",
                    column + 1
                ))
            })?;
            if column < PIXELS {
                if value > PIXEL_MAX as u32 {
                    return Err(bad(format!(
                        "pixel {} is {value}, expected 0..={PIXEL_MAX}",
                        column + 1
                    )));
                }
                features.push(value as f32 / PIXEL_MAX);
            } else if value >= 10 {
                return Err(bad(format!("label is {value}, expected 0..10")));
            } else {
                labels.push(value as usize);
            }
        }
    }
    if labels.is_empty() {
        return Err(Error::EmptyBatch);
    }
    let features = Tensor::from_vec(features, &[labels.len(), PIXELS]).expect("64 per row");
    Dataset::new(features, labels, 10)
}
