//! Layers and heads.

mod cosine_head;

pub use cosine_head::CosineHead;

/// The floor of every L2 norm taken by the heads (as `F.normalize`'s default).
pub const NORM_EPS: f64 = 1e-12;
