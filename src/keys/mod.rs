//! Keys: the pool keys keyrelay injects (masked whenever shown) and the client access tokens it
//! checks.

pub mod access;
pub mod affinity;
pub mod journal;
mod key;
pub mod limits;
mod pool;
pub mod usage;

pub use key::{ApiKey, mask_secret, mask_userinfo};
pub use pool::*;
