//! The in-process transport and [`LocalBus`].

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

#[cfg(doc)]
use super::MessageBus;
use super::{Bus, Channel, CompressionOptions, Inbox, Listening, Sink, Transport};
use crate::drops::Drops;
use crate::error::Result;

/// The in-process bus: every client and server in one process that share a
/// `LocalBus` (clones share it) reach each other.
///
/// Messages are encoded to bytes as on every other bus, so nothing is shared
/// between peers but the bytes.
///
/// # Slow consumers
///
/// Every subscription has a bounded buffer (`size` messages); the policy is
/// every psrpc bus's (see [`Sink`]), with one difference: publishing is
/// synchronous here, so instead of an overflow the *publisher* waits for a
/// full subscriber to make room, for at most the *slow-consumer timeout*
/// (default 100 ms, see [`LocalBus::with_slow_consumer_timeout`]) counted
/// from when that subscriber last read. Publishing first offers the message
/// to every subscriber without waiting, so subscribers with room get it at
/// once whatever the others do; no lock is held while waiting, so other
/// publishers and other channels are never held up. A subscriber that has
/// not read for the timeout is *stuck*: what does not fit its buffer is
/// dropped for it at once (counted in [`MessageBus::drops`], logged
/// rate-limited), so a stuck subscriber costs its publishers one timeout,
/// not one per message, and holds at most `size` messages. A consumer that
/// keeps reading loses nothing. (The Go local bus blocks the publisher for
/// as long as the subscriber is full; this bus bounds that wait.)
///
/// A queue message goes to the members in turn (round-robin); a full member is
/// skipped in favour of one with room before any waiting happens.
///
/// Runtime handlers ([`MessageBus::subscribe_handler`]) are called in the
/// publisher's task and have no buffer.
pub type LocalBus = Bus<LocalTransport>;

/// The transport of a [`LocalBus`]: delivers in the publisher's task to the
/// bus's own subscribers.
pub struct LocalTransport {
    listeners: Arc<Table>,
    next_id: AtomicU64,
    drops: Arc<Drops>,
    slow_timeout: Duration,
    rr: AtomicUsize,
}

/// Who listens on each local channel, by flat name.
type Table = RwLock<crate::id::IdMap<Arc<Listeners>>>;

/// Who listens on one local channel: normally one inbox (the bus's), for
/// fan-out, for its queue, or both.
#[derive(Default, Clone)]
struct Listeners {
    fanout: Vec<(u64, Inbox)>,
    queue: Vec<(u64, Inbox)>,
}

impl std::fmt::Debug for LocalTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalTransport")
            .field("slow_timeout", &self.slow_timeout)
            .finish()
    }
}

impl Default for LocalBus {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalBus {
    /// A new, empty bus.
    pub fn new() -> Self {
        Self::with_slow_consumer_timeout(Duration::from_millis(100))
    }

    /// A new bus whose publishers give a full subscriber up to `timeout`
    /// since it last read to make room, before it counts as stuck and
    /// messages are dropped for it.
    pub fn with_slow_consumer_timeout(timeout: Duration) -> Self {
        Bus::from_transport(
            LocalTransport {
                listeners: Arc::default(),
                next_id: AtomicU64::new(1),
                drops: Arc::default(),
                slow_timeout: timeout,
                rr: AtomicUsize::new(0),
            },
            CompressionOptions::DEFAULT,
        )
    }

    /// A handle on the same bus whose peers publish and read with
    /// `compression` (see [`crate::codec`]). Other handles keep their own
    /// options, so peers of one local bus can differ, as on a network.
    pub fn with_compression(&self, compression: CompressionOptions) -> Self {
        let mut bus = self.clone();
        bus.compression = compression;
        bus
    }
}

/// Changes who listens on `key`.
fn update(table: &Table, key: &str, f: impl FnOnce(&mut Listeners)) {
    let mut map = table.write().unwrap_or_else(|e| e.into_inner());
    let mut l = map.get(key).map(|l| (**l).clone()).unwrap_or_default();
    f(&mut l);
    if l.fanout.is_empty() && l.queue.is_empty() {
        map.remove(key);
    } else {
        map.insert(key.to_owned(), Arc::new(l));
    }
}

impl LocalTransport {
    fn get(&self, key: &str) -> Option<Arc<Listeners>> {
        self.listeners
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
    }
}

impl Transport for LocalTransport {
    async fn publish(&self, channel: &Channel, payload: Bytes) -> Result<()> {
        let Some(l) = self.get(&channel.legacy) else {
            return Ok(());
        };
        let queue = match l.queue.len() {
            0 => None,
            1 => Some(&l.queue[0].1),
            n => Some(&l.queue[self.rr.fetch_add(1, Ordering::Relaxed) % n].1),
        };
        let mut pending = Vec::new();
        match (&l.fanout[..], queue) {
            // The usual case: one bus listens, for one or both kinds.
            ([(_, f)], Some(q)) if f.same(q) => pending.extend(f.offer(payload, true, true)),
            (fanout, queue) => {
                for (_, f) in fanout {
                    pending.extend(f.offer(payload.clone(), true, false));
                }
                if let Some(q) = queue {
                    pending.extend(q.offer(payload, false, true));
                }
            }
        }
        if !pending.is_empty() {
            // Boxed: the common path's future stays small.
            Box::pin(async move {
                for p in pending {
                    p.wait().await;
                }
            })
            .await;
        }
        Ok(())
    }

    async fn listen(&self, channel: &Channel, queue: bool, inbox: Inbox) -> Result<Listening> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let key = channel.legacy.clone();
        update(&self.listeners, &key, |l| {
            if queue {
                l.queue.push((id, inbox));
            } else {
                l.fanout.push((id, inbox));
            }
        });
        let table = Arc::downgrade(&self.listeners);
        Ok(Listening::new(move || {
            if let Some(table) = table.upgrade() {
                update(&table, &key, |l| {
                    l.fanout.retain(|(i, _)| *i != id);
                    l.queue.retain(|(i, _)| *i != id);
                });
            }
        }))
    }

    fn drops(&self) -> &Arc<Drops> {
        &self.drops
    }

    /// The subscriptions this bus holds for `channel` (every peer of a
    /// local bus is in it).
    async fn listeners(&self, channel: &Channel) -> Result<Option<usize>> {
        let n = self.get(&channel.legacy).map_or(0, |l| {
            let mut inboxes: Vec<&Inbox> = Vec::new();
            for (_, i) in l.fanout.iter().chain(&l.queue) {
                if !inboxes.iter().any(|s| s.same(i)) {
                    inboxes.push(i);
                }
            }
            inboxes.iter().map(|i| i.len()).sum()
        });
        Ok(Some(n))
    }

    /// No overflow: the publisher waits for room instead, up to the
    /// slow-consumer timeout.
    fn buffer(&self, size: usize) -> (Sink, mpsc::Receiver<Bytes>) {
        Sink::new(size, 0, self.slow_timeout)
    }

    fn calls_handlers_inline(&self) -> bool {
        true
    }
}
