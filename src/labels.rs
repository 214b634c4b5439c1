//! Class labels, checked once against the number of classes so that ops can trust them.

use crate::Error;

/// A batch of class labels, each known to lie in `0..classes`.
///
/// Labels come from data, so they are validated where they enter ([`Labels::new`] returns an
/// error); ops that take `&Labels` then only check that the class count fits their input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Labels {
    values: Vec<usize>,
    classes: usize,
}

impl Labels {
    /// Checks every label against `classes`.
    ///
    /// # Errors
    /// [`Error::LabelOutOfRange`] for the first label `>= classes`.
    pub fn new(values: Vec<usize>, classes: usize) -> Result<Self, Error> {
        check_within(&values, classes)?;
        Ok(Labels { values, classes })
    }

    /// Checks every label against `classes` (fewer than the labels were made with, say: a
    /// head's or a shard's).
    ///
    /// # Errors
    /// [`Error::LabelOutOfRange`] for the first label `>= classes`.
    pub fn check_within(&self, classes: usize) -> Result<(), Error> {
        check_within(&self.values, classes)
    }

    /// The labels.
    pub fn values(&self) -> &[usize] {
        &self.values
    }

    /// The number of classes the labels were checked against.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// The number of labels.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether there are no labels.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

/// [`Error::LabelOutOfRange`] for the first of `values` `>= classes`.
fn check_within(values: &[usize], classes: usize) -> Result<(), Error> {
    match values.iter().position(|&label| label >= classes) {
        Some(index) => Err(Error::LabelOutOfRange {
            index,
            label: values[index],
            classes,
        }),
        None => Ok(()),
    }
}
