//! The MPI backend of [`World`](super::World): the `mpi` crate (rsmpi) over the system's MPI
//! library. Only the thread that initialised MPI calls it (`MPI_THREAD_FUNNELED`); the
//! arithmetic between collectives runs on rayon's threads as anywhere else.
//!
//! While the world lives, a panic on the thread that initialised MPI aborts every rank. A
//! panic on another thread (a rayon worker) does not call MPI there: rayon carries it to the
//! thread that started the parallel work, where it panics again and aborts the run. When the
//! world is dropped the previous panic hook is restored before MPI is finalised.

use super::{Reduce, Wire};
use crate::Error;
use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator, CommunicatorCollectives, Root};
use std::panic::PanicHookInfo;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, ThreadId};

/// A panic hook, shareable between the hook installed and the world that restores it.
type Hook = Arc<dyn Fn(&PanicHookInfo<'_>) + Send + Sync>;

pub(super) struct MpiWorld {
    comm: SimpleCommunicator,
    rank: usize,
    size: usize,
    /// The panic hook found at initialisation, put back when the world is dropped.
    previous_hook: Hook,
    /// Whether the hook installed may still call MPI: cleared when the world is dropped.
    hook_active: Arc<AtomicBool>,
    /// Finalises MPI when dropped (after `comm`, which is declared first).
    _universe: Universe,
}

impl MpiWorld {
    pub(super) fn init() -> Result<Self, Error> {
        let (universe, _) =
            mpi::initialize_with_threading(mpi::Threading::Funneled).ok_or_else(|| {
                Error::Distributed {
                    message: "MPI is already initialised in this process: create one World only"
                        .into(),
                }
            })?;
        let comm = universe.world();
        let (rank, size) = (comm.rank() as usize, comm.size() as usize);
        // a panic on one rank would leave the others waiting in their next collective: abort
        // the whole run instead, after the panic's message is printed
        // (on the thread that initialised MPI: the only one allowed to call it)
        let previous_hook: Hook = Arc::from(std::panic::take_hook());
        let previous = Arc::clone(&previous_hook);
        let mpi_thread: ThreadId = thread::current().id();
        let hook_active = Arc::new(AtomicBool::new(true));
        let active = Arc::clone(&hook_active);
        std::panic::set_hook(Box::new(move |info| {
            previous(info);
            let on_mpi_thread = thread::current().id() == mpi_thread;
            if size > 1 && on_mpi_thread && active.load(Ordering::SeqCst) {
                eprintln!("rank {rank} of {size} panicked: aborting every rank");
                SimpleCommunicator::world().abort(101);
            }
        }));
        Ok(MpiWorld {
            comm,
            rank,
            size,
            previous_hook,
            hook_active,
            _universe: universe,
        })
    }

    pub(super) fn rank(&self) -> usize {
        self.rank
    }

    pub(super) fn size(&self) -> usize {
        self.size
    }

    pub(super) fn all_reduce_into<T: Wire>(&self, send: &[T], receive: &mut [T], op: Reduce) {
        let op = match op {
            Reduce::Sum => SystemOperation::sum(),
            Reduce::Max => SystemOperation::max(),
        };
        self.comm.all_reduce_into(send, receive, op);
    }

    pub(super) fn all_gather<T: Wire>(&self, local: &[T]) -> Vec<T> {
        let mut out = vec![T::default(); local.len() * self.size];
        self.comm.all_gather_into(local, &mut out[..]);
        out
    }

    pub(super) fn gather<T: Wire>(&self, local: &[T], root: usize) -> Option<Vec<T>> {
        let root_process = self.comm.process_at_rank(root as i32);
        if self.rank == root {
            let mut out = vec![T::default(); local.len() * self.size];
            root_process.gather_into_root(local, &mut out[..]);
            Some(out)
        } else {
            root_process.gather_into(local);
            None
        }
    }

    pub(super) fn broadcast<T: Wire>(&self, data: &mut [T], root: usize) {
        self.comm.process_at_rank(root as i32).broadcast_into(data);
    }

    pub(super) fn barrier(&self) {
        self.comm.barrier();
    }
}

impl Drop for MpiWorld {
    /// Disarms the panic hook installed and puts back the one found at initialisation (MPI
    /// is finalised right after, when the fields are dropped: a later panic must not call
    /// `MPI_Abort`). While unwinding from a panic the hook cannot be replaced; it stays,
    /// disarmed.
    fn drop(&mut self) {
        self.hook_active.store(false, Ordering::SeqCst);
        if !thread::panicking() {
            let previous = Arc::clone(&self.previous_hook);
            std::panic::set_hook(Box::new(move |info| previous(info)));
        }
    }
}
