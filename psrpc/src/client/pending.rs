//! The table of pending calls: the client's response and claim channels
//! route every message to the call waiting for it.

use std::sync::{Arc, Mutex};

use super::RpcClient;
use crate::bus::DynBus;
use crate::channels;
use crate::error::{Error, Result};
use crate::id;
use crate::select::{CallReceiver, CallSender, Incoming, call_queue};
use crate::wire;

/// How many parts the table of pending calls is split in: every call's
/// task takes its part's lock when it starts and ends, and the response
/// handler for every message; in one lock, calls in flight on several
/// threads wait for each other.
const PENDING_SHARDS: usize = 16;

/// The pending calls, by request id, in [`PENDING_SHARDS`] parts.
#[derive(Default)]
pub(super) struct PendingMap([Mutex<id::IdBytesMap<CallSender>>; PENDING_SHARDS]);

impl PendingMap {
    /// The part holding `request_id`: its last two bytes (ids end in
    /// random characters), mixed (Fibonacci hashing) so that the 62
    /// characters ids use spread evenly over the parts (within 2%). An id
    /// a peer chose only picks which part is searched.
    fn part(&self, request_id: &[u8]) -> std::sync::MutexGuard<'_, id::IdBytesMap<CallSender>> {
        let tail = match request_id {
            [.., a, b] => u32::from(*b) | u32::from(*a) << 8,
            [b] => u32::from(*b),
            [] => 0,
        };
        let i = (tail.wrapping_mul(0x9E37_79B1) >> 28) as usize % PENDING_SHARDS;
        self.0[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes every pending call out of the table.
    pub(super) fn drain(&self) -> Vec<CallSender> {
        self.0
            .iter()
            .flat_map(|m| {
                let mut m = m.lock().unwrap_or_else(|e| e.into_inner());
                m.drain().map(|(_, tx)| tx).collect::<Vec<_>>()
            })
            .collect()
    }
}

pub(super) struct Shared {
    pub(super) pending: PendingMap,
}

impl RpcClient {
    pub(super) fn register(&self, request_id: &str) -> Result<(CallReceiver, PendingGuard)> {
        let (tx, rx) = call_queue(self.inner.opts.channel_size);
        let mut p = self.inner.shared.pending.part(request_id.as_bytes());
        // Checked under the lock, so close() cannot miss this entry.
        if self.is_closed() {
            return Err(Error::client_closed());
        }
        let key = id::IdKey::from(request_id);
        p.insert(key.clone(), tx);
        Ok((
            rx,
            PendingGuard {
                shared: self.inner.shared.clone(),
                request_id: key,
            },
        ))
    }
}

/// Removes a pending call from the table when the call ends.
pub(super) struct PendingGuard {
    shared: Arc<Shared>,
    request_id: id::IdKey,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        let id = self.request_id.as_bytes();
        self.shared.pending.part(id).remove(id);
    }
}

/// A handler that routes every message of a client channel (responses or
/// claims, `M`) to its pending call.
pub(super) fn router<M: wire::Envelope + Into<Incoming> + 'static>(
    shared: &Arc<Shared>,
    bus: &DynBus,
    channel: &channels::Channel,
) -> crate::bus::Handler {
    // Weak: the bus holds this handler; a strong handle would keep the bus
    // alive through its own subscription.
    let (shared, bus, name) = (shared.clone(), Arc::downgrade(bus), channel.legacy.clone());
    Arc::new(move |b| {
        let Some(bus) = bus.upgrade() else { return };
        if let Some(m) = crate::bus::receive_envelope::<M>(&*bus, || name.clone(), b) {
            route(&shared, &*bus, m.into(), M::TYPE_URL)
        }
    })
}

/// Routes one message of a client channel (of type `type_url`) to its
/// pending call.
fn route(shared: &Shared, bus: &dyn crate::bus::MessageBus, ev: Incoming, type_url: &str) {
    let id = ev.request_id().as_bytes();
    let p = shared.pending.part(id);
    if let Some(tx) = p.get(id) {
        // Never block on one call (Go blocks the whole client there, and a
        // late response for a call that stopped reading hangs it): a call whose buffer
        // (channel_size) is full is not being read, so the message is
        // dropped for it, loudly.
        if let Err(ev) = tx.try_send(ev) {
            let why = format_args!("buffer of pending call {} full", ev.request_id());
            bus.drops()
                .record(crate::drops::DropReason::SlowConsumer, type_url, &why);
        }
    }
}
