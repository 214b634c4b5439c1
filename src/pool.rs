//! Buffers lent from one step to the next. A training step allocates the same activations and
//! gradients every time; when a graph and its gradients are dropped, their large buffers go to
//! a per-thread shelf, and the next step's tensors take them back instead of asking the system
//! for fresh pages (which costs a page fault per 4 KiB).
//!
//! A shelf keeps a buffer only while this thread has lent more of its length than came back
//! (`lent` below): a buffer the pool never lent (a tensor made from a `Vec`, such as a batch
//! copied out of a data set) or one lent by another thread is freed when there is no such debt.
//! So what waits on a thread's shelf for a length never exceeds the most buffers of that length
//! the thread has had out at once: what its steps need, whatever the number of steps, rather
//! than growing by a batch per step up to the byte cap.

use crate::Element;
use std::any::{Any, TypeId};
use std::collections::HashMap;

/// Buffers shorter than this are left to the allocator, which is fast for them.
const MIN_LEN: usize = 4096;
/// At most this many bytes wait on one thread's shelves; beyond it, buffers are freed.
const MAX_BYTES: usize = 1 << 30;

/// The buffers of one length: the spare ones, and how many this thread has lent and not had
/// back.
struct Slot<F> {
    spare: Vec<Vec<F>>,
    lent: usize,
}

impl<F> Default for Slot<F> {
    fn default() -> Self {
        Slot {
            spare: Vec::new(),
            lent: 0,
        }
    }
}

/// The slots of one element type, by length.
type Shelf<F> = HashMap<usize, Slot<F>>;

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
/// `None` when the shelf has none; either way the caller's buffer of `len` counts as lent, and
/// the shelf will keep one buffer of that length given back for it.
pub(crate) fn take<F: Element>(len: usize) -> Option<Vec<F>> {
    if len < MIN_LEN {
        return None;
    }
    SHELVES.with(|s| {
        let mut shelves = s.borrow_mut();
        let slot = shelves.of::<F>().entry(len).or_default();
        slot.lent += 1;
        let buf = slot.spare.pop()?;
        shelves.bytes -= len * size_of::<F>();
        Some(buf)
    })
}

/// Keeps `buf` for a later [`take`] when this thread has a buffer of its length out on loan;
/// frees it otherwise, when it is small, or when the shelves are full.
pub(crate) fn give<F: Element>(buf: Vec<F>) {
    let len = buf.len();
    if len < MIN_LEN || buf.capacity() != len {
        return;
    }
    // a thread being torn down has no shelves left: the buffer is simply freed
    let _ = SHELVES.try_with(|s| {
        let mut shelves = s.borrow_mut();
        let bytes = len * size_of::<F>();
        let room = shelves.bytes + bytes <= MAX_BYTES;
        let Some(slot) = shelves.of::<F>().get_mut(&len).filter(|slot| slot.lent > 0) else {
            return;
        };
        slot.lent -= 1;
        if room {
            slot.spare.push(buf);
            shelves.bytes += bytes;
        }
    });
}

/// The bytes waiting on this thread's shelves.
#[cfg(test)]
pub(crate) fn shelved_bytes() -> usize {
    SHELVES.with(|s| s.borrow().bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEN: usize = 2 * MIN_LEN;

    #[test]
    fn a_buffer_given_back_is_lent_again() {
        assert!(take::<f32>(LEN).is_none(), "the shelf starts empty");
        give(vec![0.0f32; LEN]);
        assert_eq!(shelved_bytes(), LEN * 4);
        assert_eq!(take::<f32>(LEN).map(|b| b.len()), Some(LEN));
        assert_eq!(shelved_bytes(), 0);
    }

    #[test]
    fn buffers_the_pool_never_lent_are_freed() {
        // a batch copied out of a data set each step, dropped after it: before, each one stayed
        // on the shelf (nothing takes a buffer of its length), a batch per step up to the cap
        for _ in 0..100 {
            give(vec![0.0f32; LEN]);
        }
        assert_eq!(shelved_bytes(), 0);
    }

    #[test]
    fn the_shelf_holds_at_most_what_was_out_at_once() {
        // each step takes three buffers of one length and drops them with two of its own
        // making: the shelf keeps three, however many steps run
        for _ in 0..100 {
            let lent: Vec<Vec<f32>> = (0..3)
                .map(|_| take(LEN).unwrap_or_else(|| vec![0.0; LEN]))
                .collect();
            let made = vec![vec![0.0f32; LEN], vec![0.0f32; LEN]];
            made.into_iter().chain(lent).for_each(give);
            assert_eq!(shelved_bytes(), 3 * LEN * 4);
        }
    }

    #[test]
    fn buffers_lent_by_another_thread_do_not_pile_up() {
        // each step's buffers are taken on a worker and dropped on this thread (a parallel
        // op's output): this thread lent none of them, so it keeps none
        for _ in 0..50 {
            let buf: Vec<f32> = std::thread::scope(|s| {
                s.spawn(|| take(LEN).unwrap_or_else(|| vec![0.0; LEN]))
                    .join()
                    .expect("the worker returns")
            });
            give(buf);
        }
        assert_eq!(shelved_bytes(), 0);
    }
}
