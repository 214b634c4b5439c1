//! Checkpoints of a parameter that no process holds whole: a class-parallel head's centres,
//! each rank holding a shard of their rows. [`save_streamed`] writes the file a single process
//! writes, the parameter's rows and its momentum's arriving chunk by chunk as they are written;
//! [`load_rows`] reads some rows of them, the others passing through the checksum and dropped.
//!
//! The training state is written and read here part by part (the optimiser's method, groups,
//! schedule factor, each parameter's state, then the epoch, the generator and the history), as
//! bincode lays out the structs' fields one after another: the bytes are those that encoding
//! the whole state writes, so that the streamed parameter's moment can stream too.

use super::codec::{self, PartError, Reader};
use super::{Checkpoint, CheckpointError, Parts, TrainingState};
use crate::nn::LayerRegistry;
use crate::optim::{Group, Method, OptimizerState, ParamState};
use crate::{Element, ParamId, Params, SeededRng};
use std::io::{self, Read, Write};
use std::ops::Range;
use std::path::Path;

/// Hands a tensor's elements, in order and in chunks, to the sink it is given, and returns the
/// sink's first error (after which it calls the sink no more).
pub type RowStream<'a, F> =
    &'a mut dyn FnMut(&mut dyn FnMut(&[F]) -> io::Result<()>) -> io::Result<()>;

/// A `[rows, cols]` parameter written from the streams of its elements and of its first
/// moment (SGD's momentum) rather than from the store: in the parameters and in the training
/// state's moment it is an empty stand-in, and its second moment must be empty (SGD's).
pub struct StreamedParam<'a, F> {
    /// The parameter.
    pub id: ParamId,
    /// Its shape, written as given: the model's shape for the parameter is the caller's to
    /// pass (the empty stand-in in the store cannot be checked against it), and a file written
    /// with another is refused when it is loaded.
    pub shape: [usize; 2],
    /// Its elements.
    pub value: RowStream<'a, F>,
    /// Its first moment's elements (written only when the training state holds a state for
    /// the parameter).
    pub moment: RowStream<'a, F>,
}

/// Saves a checkpoint as [`save`](super::save) does, atomically and with its checks, but for
/// the parameter `streamed`, whose elements and momentum are written as its streams hand them
/// over (each chunk checked to be finite): the file is the one [`save`](super::save) writes of
/// the same model, byte for byte.
///
/// # Errors
/// As [`save`](super::save); [`CheckpointError::Io`] also when a stream fails, hands over a
/// NaN or an infinity, or more or fewer elements than the shape holds.
pub fn save_streamed<F: Element>(
    path: &Path,
    model: &crate::nn::Model<F>,
    params: &Params<F>,
    training: &TrainingState<F>,
    mut streamed: StreamedParam<'_, F>,
) -> Result<(), CheckpointError> {
    params.ensure_finite().map_err(CheckpointError::NonFinite)?;
    training
        .validate(params)
        .map_err(CheckpointError::UnsoundTrainingState)?;
    super::write_atomically(path, |file| {
        super::write_checkpoint(file, model, params, Some(training), Some(&mut streamed))
    })
}

/// Loads a checkpoint as [`load`](super::load) does, holding of the matrix `name` (a
/// parameter `[C, …]`) only its rows `rows`, and likewise of its optimiser's moments: the
/// returned parameters hold `[rows.len(), …]` under `name`, and so does its state in the
/// training state. The file streams through, every byte into the checksum; no more than the
/// rows kept and a bounded buffer is held of the matrix and its moments.
///
/// # Errors
/// As [`load`](super::load); [`CheckpointError::MissingTensor`] when the file holds no tensor
/// `name`; [`CheckpointError::Body`] when it, or a moment of it, has fewer rows than
/// `rows.end`.
pub fn load_rows<F: Element>(
    path: &Path,
    name: &str,
    rows: Range<usize>,
) -> Result<Checkpoint<F>, CheckpointError> {
    let (parts, shape) = super::read_file(path, Parts::Rows { name, rows })?;
    let shape = shape.ok_or_else(|| CheckpointError::MissingTensor(name.to_string()))?;
    super::assemble(
        parts,
        Some((name.to_string(), shape)),
        &LayerRegistry::standard(),
    )
}

/// Writes a `[rows, cols]` tensor named `name` as bincode encodes a [`Tensor`] (its shape,
/// its element count, its elements) from the stream of its elements.
pub(super) fn write_rows<F: Element, W: Write>(
    out: &mut W,
    name: &str,
    [rows, cols]: [usize; 2],
    stream: &mut RowStream<'_, F>,
) -> io::Result<()> {
    let len = rows * cols;
    codec::encode_into(&vec![rows, cols], out)?; // a sequence, as a tensor's shape is
    codec::encode_into(&(len as u64), out)?;
    let mut written = 0;
    stream(&mut |chunk: &[F]| {
        if written + chunk.len() > len {
            return Err(io::Error::other(format!(
                "{name}: its stream hands over more than the {len} elements of its shape"
            )));
        }
        if let Some(i) = chunk.iter().position(|x| !x.is_finite()) {
            return Err(io::Error::other(format!(
                "refusing to save {name}: element {} is {:?}",
                written + i,
                chunk[i]
            )));
        }
        chunk.iter().try_for_each(|x| codec::encode_into(x, out))?;
        written += chunk.len();
        Ok(())
    })?;
    if written < len {
        return Err(io::Error::other(format!(
            "{name}: its stream ended after {written} of its {len} elements"
        )));
    }
    Ok(())
}

/// Writes `training` as bincode encodes it whole, but for the first moment of `param`, which
/// is written from its stream.
pub(super) fn write_training_state<F: Element, W: Write>(
    out: &mut W,
    training: &TrainingState<F>,
    param: &mut StreamedParam<'_, F>,
) -> io::Result<()> {
    let optimizer = &training.optimizer;
    codec::encode_into(&optimizer.method, out)?;
    codec::encode_into(&optimizer.groups, out)?;
    codec::encode_into(&optimizer.lr_factor, out)?;
    codec::encode_into(&(optimizer.per_param.len() as u64), out)?;
    for (index, state) in optimizer.per_param.iter().enumerate() {
        match state {
            Some(state) if index == param.id.index() => {
                codec::encode_into(&1u8, out)?; // an option's tag: present
                codec::encode_into(&state.steps, out)?;
                write_rows(out, "the momentum", param.shape, &mut param.moment)?;
                codec::encode_into(&state.second, out)?;
            }
            state => codec::encode_into(state, out)?,
        }
    }
    codec::encode_into(&training.epoch, out)?;
    codec::encode_into(&training.rng, out)?;
    codec::encode_into(&training.history, out)
}

/// Reads an optional training state part by part, keeping of the moments of parameter
/// `moments.0` only the rows `moments.1`.
pub(super) fn read_training_state<F: Element, R: Read>(
    reader: &mut Reader<R>,
    moments: Option<(usize, Range<usize>)>,
) -> Result<Option<TrainingState<F>>, PartError> {
    let part = || "the training state".to_string();
    if !read_tag(reader, &part)? {
        return Ok(None);
    }
    let method: Method = reader.read(part)?;
    let groups: Vec<Group> = reader.read(part)?;
    let lr_factor: f64 = reader.read(part)?;
    let count = reader.read_len(part)?;
    // no capacity by the count: each state takes bytes, so the loop ends with the body
    let mut per_param = Vec::new();
    for index in 0..count {
        let state = match read_tag(reader, &part)? {
            false => None,
            true => {
                let rows = match &moments {
                    Some((kept, rows)) if *kept as u64 == index => Some(rows.clone()),
                    _ => None,
                };
                let state = || format!("the training state's parameter #{index}");
                Some(ParamState {
                    steps: reader.read(state)?,
                    first: reader.read_rows(state, rows.clone())?.0,
                    second: reader.read_rows(state, rows)?.0,
                })
            }
        };
        per_param.push(state);
    }
    Ok(Some(TrainingState {
        optimizer: OptimizerState {
            method,
            groups,
            lr_factor,
            per_param,
        },
        epoch: reader.read(part)?,
        rng: reader.read::<SeededRng>(part)?,
        history: reader.read(part)?,
    }))
}

/// Reads an option's tag: whether a value follows.
fn read_tag<R: Read>(
    reader: &mut Reader<R>,
    part: &impl Fn() -> String,
) -> Result<bool, PartError> {
    match reader.read::<u8>(part)? {
        0 => Ok(false),
        1 => Ok(true),
        found => Err(PartError {
            part: part(),
            offset: reader.consumed(),
            message: codec::kind_number(found, 2, 0),
        }),
    }
}
