//! Where the key state lives beyond this process's memory: STATE_FILE (one instance, across
//! restarts) and the shared store (several instances, SHARED_STATE_URL). The request path reads
//! and writes memory only; these keep memory and the outside in step.

pub mod file;
pub mod shared;
