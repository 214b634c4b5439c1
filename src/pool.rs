//! Buffers lent from one step to the next. A training step allocates the same activations and
//! gradients every time; when a graph and its gradients are dropped, their large buffers go to
//! a per-thread shelf, and the next step's tensors take them back instead of asking the system
//! for fresh pages (which costs a page fault per 4 KiB).

use crate::Element;
use std::any::{Any, TypeId};
use std::collections::HashMap;

/// Buffers shorter than this are left to the allocator, which is fast for them.
const MIN_LEN: usize = 4096;
/// At most this many bytes wait on one thread's shelves; beyond it, buffers are freed.
const MAX_BYTES: usize = 1 << 30;

/// Spare buffers of one element type, by length.
type Shelf<F> = HashMap<usize, Vec<Vec<F>>>;

/// One thread's shelves, one per element type.
#[derive(Default)]
struct Shelves {
    f32: Shelf<f32>,
    f64: Shelf<f64>,
    bytes: usize,
}

impl Shelves {
    /// The shelf of element type `F` (`f32` or `f64`, the only elements).
    fn of<F: Element>(&mut self) -> &mut Shelf<F> {
        let shelf: &mut dyn Any = if TypeId::of::<F>() == TypeId::of::<f32>() {
            &mut self.f32
        } else {
            &mut self.f64
        };
        shelf.downcast_mut().expect("an element is f32 or f64")
    }
}

thread_local! {
    static SHELVES: std::cell::RefCell<Shelves> = std::cell::RefCell::new(Shelves::default());
}

/// A buffer of `len` elements whose contents are unspecified (left from an earlier use), or
/// `None` when the shelf has none.
pub(crate) fn take<F: Element>(len: usize) -> Option<Vec<F>> {
    if len < MIN_LEN {
        return None;
    }
    SHELVES.with(|s| {
        let mut shelves = s.borrow_mut();
        let buf = shelves.of::<F>().get_mut(&len)?.pop()?;
        shelves.bytes -= len * size_of::<F>();
        Some(buf)
    })
}

/// Keeps `buf` for a later [`take`] (or frees it, when small or when the shelves are full).
pub(crate) fn give<F: Element>(buf: Vec<F>) {
    let len = buf.len();
    if len < MIN_LEN || buf.capacity() != len {
        return;
    }
    // a thread being torn down has no shelves left: the buffer is simply freed
    let _ = SHELVES.try_with(|s| {
        let mut shelves = s.borrow_mut();
        let bytes = len * size_of::<F>();
        if shelves.bytes + bytes <= MAX_BYTES {
            shelves.bytes += bytes;
            shelves.of::<F>().entry(len).or_default().push(buf);
        }
    });
}
