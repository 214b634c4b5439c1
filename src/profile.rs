//! Where the time goes: an opt-in profile of forward and backward time per kind of op.
//!
//! Off by default (one relaxed atomic load per op). When on, each node's forward time is the
//! time since the previous node was recorded (so it includes the kernel, the output allocation
//! and the tape's bookkeeping), and each node's backward time is the time its gradient rule
//! took (including its gradient buffers). A training step adds the time of its finite check and
//! of the optimiser's update.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

static ENABLED: AtomicBool = AtomicBool::new(false);
/// Time and node count per (category, phase).
type Totals = BTreeMap<(&'static str, Phase), (Duration, u64)>;

static TOTALS: Mutex<Totals> = Mutex::new(BTreeMap::new());

/// Forward or backward.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    /// Building the tape and running the op.
    Forward,
    /// The op's gradient rule.
    Backward,
    /// A training step's work after backward: its finite check and the optimiser's update
    /// ([`train_step`](crate::train::train_step)).
    Update,
}

/// One line of a profile.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// The kind of op ("matmul", "elementwise", ...).
    pub category: &'static str,
    /// Forward or backward.
    pub phase: Phase,
    /// Time spent.
    pub total: Duration,
    /// Nodes timed.
    pub count: u64,
}

/// Turns profiling on or off (process-wide).
pub fn enable(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether profiling is on.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Everything recorded since the last call, and a fresh start.
pub fn take() -> Vec<Entry> {
    let mut totals = TOTALS.lock().unwrap_or_else(|e| e.into_inner());
    std::mem::take(&mut *totals)
        .into_iter()
        .map(|((category, phase), (total, count))| Entry {
            category,
            phase,
            total,
            count,
        })
        .collect()
}

pub(crate) fn record(category: &'static str, phase: Phase, elapsed: Duration) {
    let mut totals = TOTALS.lock().unwrap_or_else(|e| e.into_inner());
    let slot = totals.entry((category, phase)).or_default();
    slot.0 += elapsed;
    slot.1 += 1;
}
