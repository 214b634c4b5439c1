//! Training over several processes: a communicator ([`World`]) and what training builds on it.
//!
//! A [`World`] is the set of processes (ranks `0..size`) of one run. Two backends:
//!
//! - [`World::single`]: a world of one process. Every collective is the identity; this is the
//!   default and needs nothing beyond the crate.
//! - `World::mpi` (cargo feature `mpi`): the processes `mpirun` started, talking through the
//!   system's MPI library (Open MPI, through the `mpi` crate). See `docs/distributed.md`.
//!
//! On top of it:
//!
//! - data parallelism ([`Shard`], [`reduce_gradients`], [`parameter_checksum`]): each rank
//!   trains on its own disjoint, seeded part of the data, and the gradients are summed or
//!   averaged over the ranks in one flat buffer, so that the parameters stay the same on every
//!   rank;
//! - class parallelism ([`ClassParallelHead`]): each rank holds a contiguous shard of the
//!   class centres of a margin head (Partial FC's model-parallel pattern); the features and
//!   labels are gathered, the softmax's row statistics are combined by all-reduce, and the
//!   features' gradients go back to the ranks that own the samples;
//! - agreement ([`World::agree`], [`World::check_same_config`]): a rank that fails makes every
//!   rank stop with its message, and ranks started with different configurations are refused
//!   before the first step.
//!
//! **Collectives are called by every rank in the same order** (as MPI requires): each method
//! of [`World`] that communicates says so. A collective that a rank skips would leave the
//! others waiting: what can differ between ranks at run time (the configuration, a rank's
//! data, the gradients' layout) is checked with a small collective first, so that a mismatch
//! is an error on every rank rather than a hang; the lengths passed to each collective are
//! checked the same way in debug builds. Under MPI a panic on one rank aborts the whole run.

mod class_parallel;
mod data_parallel;
#[cfg(feature = "mpi")]
mod mpi_world;

pub use class_parallel::{ClassParallelHead, Sampling};
pub use data_parallel::{Shard, parameter_checksum, reduce_gradients};

use crate::Error;
use std::cell::{Cell, RefCell, RefMut};
use std::fmt::Debug;
use std::marker::PhantomData;
use std::time::{Duration, Instant};

/// The element types that cross between ranks: `f32`, `f64`, `u64`, `i32`.
#[cfg(not(feature = "mpi"))]
pub trait Wire:
    Copy + Default + PartialOrd + Debug + Send + Sync + 'static + sealed::Sealed
{
}

/// The element types that cross between ranks: `f32`, `f64`, `u64`, `i32`.
#[cfg(feature = "mpi")]
pub trait Wire:
    Copy
    + Default
    + PartialOrd
    + Debug
    + Send
    + Sync
    + 'static
    + sealed::Sealed
    + ::mpi::traits::Equivalence
{
}

mod sealed {
    pub trait Sealed {}
}

macro_rules! wire {
    ($($t:ty),*) => {$(
        impl sealed::Sealed for $t {}
        impl Wire for $t {}
        // [`words_as`] lays them over `u64`s
        const _: () = assert!(std::mem::align_of::<$t>() <= std::mem::align_of::<u64>());
    )*};
}
wire!(f32, f64, u64, i32);

/// The first `len` elements of `T` laid over `words`, grown (never shrunk) to hold them.
///
/// # Panics
/// When `len` elements of `T` would not fit in the address space.
#[track_caller]
fn words_as<T: Wire>(words: &mut Vec<u64>, len: usize) -> &mut [T] {
    let bytes = len
        .checked_mul(std::mem::size_of::<T>())
        .filter(|&bytes| bytes <= isize::MAX as usize)
        .unwrap_or_else(|| panic!("a buffer of {len} elements is beyond the address space"));
    let needed = bytes.div_ceil(8);
    if words.len() < needed {
        words.resize(needed, 0);
    }
    // SAFETY: `Wire` is sealed to f32, f64, u64 and i32: plain data, every bit pattern a value,
    // aligned to at most a `u64`'s alignment (asserted above); `words` holds at least
    // `len · size_of::<T>()` initialised bytes, borrowed mutably for the slice's lifetime.
    unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<T>(), len) }
}

/// The processes of one run, and the collectives between them: see the
/// [module documentation](self).
///
/// Every rank must pass slices of the same length to a collective; debug builds check it with
/// one more small collective per call and panic on every rank when they differ.
pub struct World {
    backend: Backend,
    traffic: Cell<Traffic>,
    /// The send and receive buffers of [`World::staged_sum`], kept from one call to
    /// the next: an all-reduce of a megabyte into fresh pages each step spends more time
    /// faulting the pages in and pinning them for the copy between processes than moving the
    /// data (measured with Open MPI: 0.8–1.1 ms against 0.13–0.16 ms into reused buffers).
    staging: RefCell<[Vec<u64>; 2]>,
}

/// What this rank has handed to collectives since the world began (or since
/// [`World::take_traffic`]): the calls, the bytes of their payloads, and the time spent in
/// them (waiting for the other ranks included).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Traffic {
    /// Collectives called (the small checks of lengths and errors included).
    pub calls: u64,
    /// Bytes of this rank's payloads: the elements passed to each collective times their
    /// size (an all-gather counts what it sends, not what it receives).
    pub bytes: u64,
    /// Wall time inside the collectives.
    pub time: Duration,
}

/// The reductions of [`World::all_reduce_sum`] and [`World::all_reduce_max`].
#[derive(Clone, Copy, Debug)]
enum Reduce {
    Sum,
    Max,
}

enum Backend {
    Single,
    #[cfg(feature = "mpi")]
    Mpi(mpi_world::MpiWorld),
}

impl std::fmt::Debug for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let backend = match self.backend {
            Backend::Single => "single",
            #[cfg(feature = "mpi")]
            Backend::Mpi(_) => "mpi",
        };
        write!(
            f,
            "World({backend}, rank {} of {})",
            self.rank(),
            self.size()
        )
    }
}

impl World {
    /// A world of one process: rank 0 of 1, every collective the identity.
    pub fn single() -> World {
        World {
            backend: Backend::Single,
            traffic: Cell::default(),
            staging: RefCell::default(),
        }
    }

    /// The world of the processes `mpirun` started (a world of one when the program was not
    /// started by `mpirun`). Initialises MPI, which is finalised when the `World` is dropped;
    /// from then on a panic on any rank aborts every rank (`MPI_Abort`) instead of leaving
    /// them waiting.
    ///
    /// # Errors
    /// [`Error::Distributed`] when MPI was already initialised in this process.
    #[cfg(feature = "mpi")]
    pub fn mpi() -> Result<World, Error> {
        Ok(World {
            backend: Backend::Mpi(mpi_world::MpiWorld::init()?),
            traffic: Cell::default(),
            staging: RefCell::default(),
        })
    }

    /// This process's rank, `0..size`.
    pub fn rank(&self) -> usize {
        match &self.backend {
            Backend::Single => 0,
            #[cfg(feature = "mpi")]
            Backend::Mpi(m) => m.rank(),
        }
    }

    /// The number of processes.
    pub fn size(&self) -> usize {
        match &self.backend {
            Backend::Single => 1,
            #[cfg(feature = "mpi")]
            Backend::Mpi(m) => m.size(),
        }
    }

    /// Whether this is rank 0, the one that prints and writes the run's shared outputs.
    pub fn is_root(&self) -> bool {
        self.rank() == 0
    }

    /// `data[i] ← Σ_ranks data[i]`, on every rank (collective). The sum is taken in an order
    /// MPI chooses (the same result on every rank, not necessarily the sequential sum's bits).
    ///
    /// # Panics
    /// When the ranks pass slices of different lengths (checked in debug builds; see
    /// [`World`]).
    #[track_caller]
    pub fn all_reduce_sum<T: Wire>(&self, data: &mut [T]) {
        self.check_same_len("all_reduce_sum", data.len());
        self.reduce(data, Reduce::Sum);
    }

    /// A buffer of `len` elements for a sum over the ranks that allocates nothing: this rank's
    /// part is written into [`StagedSum::local`], and [`StagedSum::sum`] (collective) returns
    /// the sum, on every rank. The world keeps the buffer from call to call, which is what a
    /// large payload sent step after step (the gradients) wants: reused memory is much cheaper
    /// for MPI to move than fresh pages. One at a time: the world's other collectives may be
    /// called while it lives, but not this method.
    ///
    /// # Panics
    /// When a `StagedSum` of this world is still alive; from [`StagedSum::local`] or
    /// [`StagedSum::sum`] when `len` elements would not fit in the address space.
    pub fn staged_sum<T: Wire>(&self, len: usize) -> StagedSum<'_, T> {
        let buffers = self
            .staging
            .try_borrow_mut()
            .expect("World::staged_sum: the previous StagedSum is still alive");
        StagedSum {
            world: self,
            buffers,
            len,
            element: PhantomData,
        }
    }

    /// `data[i] ← max_ranks data[i]`, on every rank (collective).
    ///
    /// # Panics
    /// When the ranks pass slices of different lengths (checked in debug builds; see
    /// [`World`]).
    #[track_caller]
    pub fn all_reduce_max<T: Wire>(&self, data: &mut [T]) {
        self.check_same_len("all_reduce_max", data.len());
        self.reduce(data, Reduce::Max);
    }

    /// Every rank's `local`, concatenated in rank order, on every rank (collective): a vector of
    /// `size · local.len()` elements.
    ///
    /// # Panics
    /// When the ranks pass slices of different lengths (checked in debug builds; see
    /// [`World`]).
    #[track_caller]
    pub fn all_gather<T: Wire>(&self, local: &[T]) -> Vec<T> {
        self.check_same_len("all_gather", local.len());
        let _timer = self.count(local);
        match &self.backend {
            Backend::Single => local.to_vec(),
            #[cfg(feature = "mpi")]
            Backend::Mpi(m) => m.all_gather(local),
        }
    }

    /// Every rank's `local`, concatenated in rank order, on `root` only (collective): `Some`
    /// there, `None` on the other ranks.
    ///
    /// # Panics
    /// When `root` is not a rank, or the ranks pass slices of different lengths (checked in
    /// debug builds).
    #[track_caller]
    pub fn gather<T: Wire>(&self, local: &[T], root: usize) -> Option<Vec<T>> {
        assert!(
            root < self.size(),
            "gather: root {root} is not a rank of a world of {}",
            self.size()
        );
        self.check_same_len("gather", local.len());
        let _timer = self.count(local);
        match &self.backend {
            Backend::Single => Some(local.to_vec()),
            #[cfg(feature = "mpi")]
            Backend::Mpi(m) => m.gather(local, root),
        }
    }

    /// `data ← root's data`, on every rank (collective).
    ///
    /// # Panics
    /// When `root` is not a rank, or the ranks pass slices of different lengths (checked in
    /// debug builds).
    #[track_caller]
    pub fn broadcast<T: Wire>(&self, data: &mut [T], root: usize) {
        assert!(
            root < self.size(),
            "broadcast: root {root} is not a rank of a world of {}",
            self.size()
        );
        self.check_same_len("broadcast", data.len());
        let _timer = self.count(data);
        match &self.backend {
            Backend::Single => {}
            #[cfg(feature = "mpi")]
            Backend::Mpi(m) => m.broadcast(data, root),
        }
    }

    /// Waits until every rank has called it (collective).
    pub fn barrier(&self) {
        let _timer = self.count::<u64>(&[]);
        match &self.backend {
            Backend::Single => {}
            #[cfg(feature = "mpi")]
            Backend::Mpi(m) => m.barrier(),
        }
    }

    /// What this rank handed to collectives since the last call (or since the world began),
    /// and a fresh count from now on.
    pub fn take_traffic(&self) -> Traffic {
        self.traffic.take()
    }

    /// Counts one collective over `payload`; its time runs until the guard is dropped.
    fn count<T>(&self, payload: &[T]) -> TrafficTimer<'_> {
        let mut t = self.traffic.get();
        t.calls += 1;
        t.bytes += std::mem::size_of_val(payload) as u64;
        self.traffic.set(t);
        TrafficTimer {
            traffic: &self.traffic,
            start: Instant::now(),
        }
    }

    /// In debug builds, panics on every rank (at the caller's line) unless every rank passes
    /// the same `len` (a collective over slices of different lengths is a mistake in the
    /// program, which MPI reports as a truncation and aborts). Release builds skip the check:
    /// it would double the number of round trips of the small collectives of a step.
    #[track_caller]
    fn check_same_len(&self, op: &str, len: usize) {
        if self.size() == 1 || !cfg!(debug_assertions) {
            return;
        }
        let (lo, hi) = self.min_max(len as u64);
        assert!(
            lo == hi,
            "{op}: the ranks pass slices of different lengths ({lo} to {hi} elements); every \
             rank must pass the same length"
        );
    }

    /// The minimum and maximum of `value` over the ranks (collective).
    fn min_max(&self, value: u64) -> (u64, u64) {
        let mut both = [u64::MAX - value, value];
        self.reduce(&mut both, Reduce::Max);
        (u64::MAX - both[0], both[1])
    }

    /// `data ← op over the ranks of data`, with no check of the lengths. MPI reads the ranks'
    /// parts from the world's send buffer, reused from call to call (`staging`),
    /// or from a fresh copy while a [`StagedSum`] holds it.
    fn reduce<T: Wire>(&self, data: &mut [T], op: Reduce) {
        let _timer = self.count(data);
        match &self.backend {
            Backend::Single => {
                let _ = (data, op);
            }
            #[cfg(feature = "mpi")]
            Backend::Mpi(m) => match self.staging.try_borrow_mut() {
                Ok(mut staging) => {
                    let send = words_as::<T>(&mut staging[0], data.len());
                    send.copy_from_slice(data);
                    m.all_reduce_into(send, data, op);
                }
                Err(_) => {
                    let send = data.to_vec();
                    m.all_reduce_into(&send, data, op);
                }
            },
        }
    }

    /// Every rank's outcome of a step, agreed (collective): `Ok` on every rank when every rank
    /// succeeded; otherwise an error on every rank, carrying the message of the lowest failing
    /// rank (a failing rank returns its own error unchanged). Call it after each part of a step
    /// that can fail on one rank alone (reading its data, a non-finite loss), before the next
    /// collective, so that no rank is left waiting for one that has stopped.
    ///
    /// # Errors
    /// The rank's own error, or [`Error::Distributed`] naming the rank that failed and its
    /// message.
    pub fn agree<T>(&self, local: Result<T, Error>) -> Result<T, Error> {
        self.agree_on(local, "", 0)
    }

    /// [`World::agree`], and in the same round trip a check that every rank holds the same
    /// `value` (collective): when every rank succeeded but the values differ, an
    /// [`Error::Distributed`] on every rank naming `what` and the smallest and largest value.
    pub(crate) fn agree_on<T>(
        &self,
        local: Result<T, Error>,
        what: &str,
        value: u64,
    ) -> Result<T, Error> {
        if self.size() == 1 {
            return local;
        }
        // the lowest failing rank, as the maximum of (size − rank) over the failing ranks, and
        // the largest and (as u64::MAX minus the largest of u64::MAX − value) smallest value
        let mut first = [
            match &local {
                Ok(_) => 0u64,
                Err(_) => (self.size() - self.rank()) as u64,
            },
            value,
            u64::MAX - value,
        ];
        self.all_reduce_max(&mut first);
        let (lo, hi) = (u64::MAX - first[2], first[1]);
        if first[0] == 0 && lo != hi {
            return Err(Error::Distributed {
                message: format!(
                    "the ranks hold different {what}: {lo} to {hi}; every rank must hold the same"
                ),
            });
        }
        if first[0] == 0 {
            return local;
        }
        let failed = self.size() - first[0] as usize;
        // the failing rank's message (an `Error::Distributed`'s without its own preamble)
        let mut message = match &local {
            Err(Error::Distributed { message }) if self.rank() == failed => {
                message.clone().into_bytes()
            }
            Err(e) if self.rank() == failed => e.to_string().into_bytes(),
            _ => Vec::new(),
        };
        let mut len = [message.len() as u64];
        self.broadcast(&mut len, failed);
        message.resize(len[0] as usize, 0);
        let mut words: Vec<u64> = message.iter().map(|&b| u64::from(b)).collect();
        self.broadcast(&mut words, failed);
        match local {
            Err(e) => Err(e),
            Ok(_) => {
                let text: Vec<u8> = words.iter().map(|&w| w as u8).collect();
                Err(Error::Distributed {
                    message: format!(
                        "rank {failed} of {} failed: {}",
                        self.size(),
                        String::from_utf8_lossy(&text)
                    ),
                })
            }
        }
    }

    /// Checks that every rank was started with the same configuration (collective): compares
    /// a 64-bit hash (FNV-1a) of `config`'s bytes, any serialisation of the settings that must
    /// agree (the model, the loss, the optimiser, the batch size, the seed).
    ///
    /// # Errors
    /// [`Error::Distributed`] on every rank, naming `what` and the ranks whose configuration
    /// differs from rank 0's.
    pub fn check_same_config(&self, what: &str, config: &[u8]) -> Result<(), Error> {
        let hashes = self.all_gather(&[fnv1a(config)]);
        let differing: Vec<String> = hashes
            .iter()
            .enumerate()
            .filter(|&(_, &h)| h != hashes[0])
            .map(|(rank, _)| rank.to_string())
            .collect();
        if differing.is_empty() {
            return Ok(());
        }
        Err(Error::Distributed {
            message: format!(
                "the ranks were started with different {what}: rank(s) {} differ from rank 0 \
                 (start every rank with the same flags)",
                differing.join(", ")
            ),
        })
    }
}

/// A sum over the ranks through buffers its [`World`] keeps: see [`World::staged_sum`].
pub struct StagedSum<'w, T> {
    world: &'w World,
    buffers: RefMut<'w, [Vec<u64>; 2]>,
    len: usize,
    element: PhantomData<T>,
}

impl<T: Wire> StagedSum<'_, T> {
    /// This rank's part, to be written before [`StagedSum::sum`] (its contents are left over
    /// from earlier use: write every element).
    pub fn local(&mut self) -> &mut [T] {
        words_as(&mut self.buffers[0], self.len)
    }

    /// `Σ_ranks local`, on every rank (collective).
    ///
    /// # Panics
    /// When the ranks' buffers are of different lengths (checked in debug builds; see
    /// [`World`]).
    #[track_caller]
    pub fn sum(&mut self) -> &[T] {
        let world = self.world;
        world.check_same_len("staged_sum", self.len);
        let [send, receive] = &mut *self.buffers;
        let send: &mut [T] = words_as(send, self.len);
        let _timer = world.count(send);
        match &world.backend {
            Backend::Single => {
                let _ = receive;
                send
            }
            #[cfg(feature = "mpi")]
            Backend::Mpi(m) => {
                let receive = words_as(receive, self.len);
                m.all_reduce_into(send, receive, Reduce::Sum);
                receive
            }
        }
    }
}

/// Adds the time since `start` to `traffic` when dropped.
struct TrafficTimer<'a> {
    traffic: &'a Cell<Traffic>,
    start: Instant,
}

impl Drop for TrafficTimer<'_> {
    fn drop(&mut self) {
        let mut t = self.traffic.get();
        t.time += self.start.elapsed();
        self.traffic.set(t);
    }
}

/// The 64-bit FNV-1a hash of `bytes`.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_world_of_one_is_the_identity() {
        let world = World::single();
        assert_eq!((world.rank(), world.size(), world.is_root()), (0, 1, true));
        let mut data = [1.5f32, -2.0];
        world.all_reduce_sum(&mut data);
        world.all_reduce_max(&mut data);
        world.broadcast(&mut data, 0);
        world.barrier();
        assert_eq!(data, [1.5, -2.0]);
        assert_eq!(world.all_gather(&[3u64, 4]), [3, 4]);
        let traffic = world.take_traffic();
        assert_eq!((traffic.calls, traffic.bytes), (5, 8 + 8 + 8 + 16));
        assert_eq!(world.take_traffic().calls, 0);
        assert!(world.check_same_config("settings", b"abc").is_ok());
        let failed: Result<(), Error> = Err(Error::EmptyBatch);
        assert_eq!(world.agree(failed), Err(Error::EmptyBatch));
    }

    #[test]
    fn a_staged_sum_reuses_its_buffer_and_is_counted_as_a_collective() {
        let world = World::single();
        let mut staged = world.staged_sum::<f32>(3);
        staged.local().copy_from_slice(&[1.0, -2.5, 3.0]);
        assert_eq!(staged.sum(), [1.0, -2.5, 3.0]);
        drop(staged);
        // a longer payload grows the buffer; a shorter one of another type reuses it
        let mut staged = world.staged_sum::<f64>(5);
        staged.local().copy_from_slice(&[0.5; 5]);
        assert_eq!(staged.sum(), [0.5; 5]);
        drop(staged);
        let mut staged = world.staged_sum::<u64>(2);
        staged.local().copy_from_slice(&[7, 9]);
        assert_eq!(staged.sum(), [7, 9]);
        drop(staged);
        let grown = world.staging.borrow()[0].as_ptr();
        let mut staged = world.staged_sum::<f32>(4);
        staged.local().copy_from_slice(&[1.0; 4]);
        let _ = staged.sum();
        drop(staged);
        assert_eq!(
            world.staging.borrow()[0].as_ptr(),
            grown,
            "the buffer was reused"
        );
        let traffic = world.take_traffic();
        assert_eq!((traffic.calls, traffic.bytes), (4, 12 + 40 + 16 + 16));
    }

    #[test]
    #[should_panic(expected = "beyond the address space")]
    fn a_staged_sum_too_large_for_memory_panics_instead_of_overrunning() {
        let world = World::single();
        let mut staged = world.staged_sum::<f32>(1 << 62);
        let _ = staged.local();
    }

    #[test]
    #[should_panic(expected = "the previous StagedSum is still alive")]
    fn two_staged_sums_at_once_are_refused() {
        let world = World::single();
        let _first = world.staged_sum::<f32>(2);
        let _second = world.staged_sum::<f32>(2);
    }

    #[test]
    fn the_configuration_hash_tells_configurations_apart() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_ne!(fnv1a(b"lr=0.1"), fnv1a(b"lr=0.2"));
    }
}
