//! The crate's one random generator, for everything that must come out the same from a seed:
//! initialisation, shuffling, dropout, synthetic data, verification pairs.

use rand::SeedableRng;

/// The crate's seeded random generator (xoshiro256++): fast, the same stream on every
/// platform and version, and serialisable, so a checkpoint can resume a run exactly.
pub type SeededRng = rand::rngs::Xoshiro256PlusPlus;

/// A [`SeededRng`] from a 64-bit seed.
pub fn seeded_rng(seed: u64) -> SeededRng {
    SeededRng::seed_from_u64(seed)
}
