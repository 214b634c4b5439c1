//! The MPI backend of [`World`](super::World): the `mpi` crate (rsmpi) over the system's MPI
//! library. Only the thread that initialised MPI calls it (`MPI_THREAD_FUNNELED`); the
//! arithmetic between collectives runs on rayon's threads as anywhere else.

use super::{Reduce, Wire};
use crate::Error;
use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator, CommunicatorCollectives, Root};

pub(super) struct MpiWorld {
    comm: SimpleCommunicator,
    rank: usize,
    size: usize,
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
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            previous(info);
            if size > 1 {
                eprintln!("rank {rank} of {size} panicked: aborting every rank");
                SimpleCommunicator::world().abort(101);
            }
        }));
        Ok(MpiWorld {
            comm,
            rank,
            size,
            _universe: universe,
        })
    }

    pub(super) fn rank(&self) -> usize {
        self.rank
    }

    pub(super) fn size(&self) -> usize {
        self.size
    }

    pub(super) fn all_reduce<T: Wire>(&self, data: &mut [T], op: Reduce) {
        let send = data.to_vec();
        let op = match op {
            Reduce::Sum => SystemOperation::sum(),
            Reduce::Max => SystemOperation::max(),
        };
        self.comm.all_reduce_into(&send[..], data, op);
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
