//! Connections to the shared store. The background threads hold their own; requests that must
//! reach the store (an id to write before its answer is relayed, an id nobody here has seen)
//! borrow one from a small pool, with a timeout short enough that a hung store adds only a
//! few milliseconds to such a request.

use std::sync::Mutex;
use std::time::Duration;

use redis::{Client, Connection, RedisResult};

/// How long a request waits for the store.
pub const REQUEST_TIMEOUT: Duration = Duration::from_millis(20);

/// How long a background thread waits for the store (connect, a command).
pub const BACKGROUND_TIMEOUT: Duration = Duration::from_secs(1);

/// Most connections kept for requests.
const MAX_REQUEST_LINKS: usize = 8;

/// Opens a connection that gives up after `timeout` at every step, and checks it answers.
pub fn connect(client: &Client, timeout: Duration) -> RedisResult<Connection> {
    let mut connection = client.get_connection_with_timeout(timeout)?;
    connection.set_read_timeout(Some(timeout))?;
    connection.set_write_timeout(Some(timeout))?;
    redis::cmd("PING").query::<String>(&mut connection)?;
    Ok(connection)
}

/// The connections requests borrow.
#[derive(Default)]
pub struct RequestLinks {
    idle: Mutex<Vec<Connection>>,
    open: Mutex<usize>,
}

impl RequestLinks {
    /// Runs `work` on a pooled connection (opening one if fewer than the most are open);
    /// `None` when none could be had. A connection that failed is dropped.
    pub fn with<T>(
        &self,
        client: &Client,
        work: impl FnOnce(&mut Connection) -> RedisResult<T>,
    ) -> Option<RedisResult<T>> {
        let taken = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut connection = match taken {
            Some(connection) => connection,
            None => {
                {
                    let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
                    if *open >= MAX_REQUEST_LINKS {
                        return None;
                    }
                    *open += 1;
                }
                match connect(client, REQUEST_TIMEOUT) {
                    Ok(connection) => connection,
                    Err(err) => {
                        self.closed();
                        return Some(Err(err));
                    }
                }
            }
        };
        let result = work(&mut connection);
        if result.is_ok() {
            self.idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(connection);
        } else {
            self.closed();
        }
        Some(result)
    }

    /// Drops every idle connection (the store went away).
    pub fn clear(&self) {
        let dropped = std::mem::take(&mut *self.idle.lock().unwrap_or_else(|p| p.into_inner()));
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        *open = open.saturating_sub(dropped.len());
    }

    fn closed(&self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        *open = open.saturating_sub(1);
    }
}
