//! What the transport's tasks share: the inbox of each subscribed Redis
//! channel, the queue lock connection, the connection state and the drop
//! tally.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use psrpc::bus::Inbox;
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::locks::Locks;

/// Locks `m`, ignoring poisoning (no code panics while holding these locks).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where the reader delivers the messages of one Redis channel, and as
/// what: the bus's inbox of the channel, listening to every message, as a
/// queue member, or both.
#[derive(Clone)]
pub(crate) struct Target {
    pub(crate) inbox: Inbox,
    pub(crate) fanout: bool,
    pub(crate) queue: bool,
}

/// What the reader, the manager and the transport need.
pub(crate) struct Shared {
    /// What is listened to, by full Redis channel name: the channels the
    /// pub/sub connection is to be subscribed to.
    channels: Mutex<HashMap<String, Target>>,
    pub(crate) drops: Arc<psrpc::drops::Drops>,
    pub(crate) locks: Locks,
    /// The largest message published or delivered.
    pub(crate) max_message: usize,
    /// Whether the pub/sub connection is up.
    pub(crate) connected: tokio::sync::watch::Sender<bool>,
    pub(crate) reconnects: AtomicU64,
    /// Why the connection is down (the last error seen).
    last_error: Mutex<Error>,
    /// Cancelled when the bus closes.
    pub(crate) closed: CancellationToken,
}

impl Shared {
    pub(crate) fn new(locks: Locks, max_message: usize) -> Self {
        Shared {
            channels: Mutex::new(HashMap::new()),
            drops: Arc::default(),
            locks,
            max_message,
            connected: tokio::sync::watch::Sender::new(true),
            reconnects: AtomicU64::new(0),
            last_error: Mutex::new(Error::ConnectionLost),
            closed: CancellationToken::new(),
        }
    }

    /// The pub/sub connection is down: logs it and tells the watchers.
    pub(crate) fn lost(&self, why: Error) {
        tracing::debug!(error = %why, "redis bus: connection down");
        let text = why.to_string();
        *lock(&self.last_error) = why;
        if self
            .connected
            .send_if_modified(|v| std::mem::replace(v, false))
        {
            tracing::warn!(error = text, "redis bus: connection lost, reconnecting");
        }
    }

    /// The pub/sub connection is back, its channels subscribed again.
    pub(crate) fn restored(&self) {
        if self
            .connected
            .send_if_modified(|v| !std::mem::replace(v, true))
        {
            let n = self.reconnects.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::warn!(reconnects = n, "redis bus: reconnected");
        }
    }

    /// Why the connection is down.
    pub(crate) fn last_error(&self) -> Error {
        lock(&self.last_error).clone()
    }

    pub(crate) fn routes(&self) -> MutexGuard<'_, HashMap<String, Target>> {
        lock(&self.channels)
    }

    pub(crate) fn get(&self, channel: &str) -> Option<Target> {
        self.routes().get(channel).cloned()
    }

    pub(crate) fn contains(&self, channel: &str) -> bool {
        self.routes().contains_key(channel)
    }

    pub(crate) fn keys(&self) -> Vec<String> {
        self.routes().keys().cloned().collect()
    }
}
