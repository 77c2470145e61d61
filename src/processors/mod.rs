//! The built-in processors, one module each.

mod allowed_ids;
mod force_token;

pub use allowed_ids::{AllowedIds, AllowedMode};
pub use force_token::ForceToken;
