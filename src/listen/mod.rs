//! The front end: one listener thread owns accepting and every connection that is idle or still
//! sending its head (epoll, one-shot); complete requests go through a bounded queue to a pool of
//! worker threads that block on ordinary socket I/O, and come back when answered.

mod answer;
mod chunked;
mod conn;
mod head;
mod listener;
mod poller;
mod queue;
mod socket;

pub use crate::head_error::{HeadError, MAX_HEAD_BYTES, MAX_HEADERS};
pub(crate) use listener::READ_SIZE;
pub use listener::{Front, FrontSettings, run};
pub use socket::{raise_fd_limit, widen_backlog};

pub(crate) use answer::{log_gone_while_queued, refusal};
pub(crate) use chunked::ChunkedDecoder;
pub(crate) use conn::{Conn, Phase};
pub(crate) use head::{Head, parse_head};
pub(crate) use poller::Interest;
pub(crate) use queue::Job;
pub(crate) use socket::{peer_gone, recv_now, wait_readable};
