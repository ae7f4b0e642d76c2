//! Handing a queue message back to its group: the same bytes republished
//! on the same subject, so that NATS picks a member again (see the
//! [crate docs](crate#deliberate-choices), "no route").

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::Client;
use bytes::Bytes;
use psrpc::drops::{DropReason, Drops};

use crate::lock;

/// How long a handed-back message is remembered.
const BOUNCE_MEMORY: Duration = Duration::from_secs(5);

/// The most handed-back messages remembered at once; past that, a message
/// with no route is dropped rather than handed back.
const BOUNCE_LIMIT: usize = 65_536;

/// Hands queue messages back (or drops them, when off), remembering what it
/// handed back lately.
pub(crate) struct HandBack {
    on: bool,
    client: Client,
    drops: Arc<Drops>,
    /// The queue messages handed back lately (by hash), and when.
    bounces: Mutex<HashMap<u64, Instant>>,
}

impl HandBack {
    /// Hands back on `client` when `on`, counting what it drops in `drops`.
    pub(crate) fn new(on: bool, client: Client, drops: Arc<Drops>) -> HandBack {
        HandBack {
            on,
            client,
            drops,
            bounces: Mutex::new(HashMap::new()),
        }
    }

    /// Where the bus counts its drops.
    pub(crate) fn drops(&self) -> &Drops {
        &self.drops
    }

    /// Hands a queue message this bus will not handle back to NATS (the
    /// same bytes on the same subject), so that the group picks a member
    /// again. Only a psrpc request is handed back (someone waits for its
    /// answer), and only once per message and bus within
    /// [`BOUNCE_MEMORY`], so that a message is never re-published more
    /// times in total than its group has members; anything else is dropped
    /// and counted.
    pub(crate) async fn hand_back(&self, subject: &str, payload: Bytes, why: &str) {
        let drop = |reason, detail: &dyn std::fmt::Display| {
            self.drops
                .record(reason, subject, &format_args!("{why}: {detail}"));
        };
        match psrpc::protocol::wire::decode_msg(payload.clone()) {
            Err(e) => return drop(DropReason::Malformed, &e),
            Ok(m) => {
                let request =
                    <psrpc::protocol::wire::Request as psrpc::protocol::wire::Envelope>::TYPE_URL;
                if psrpc::protocol::wire::check_type(&m.type_url, request).is_err() {
                    return drop(DropReason::NoRoute, &"not a request, not handed back");
                }
            }
        }
        if !self.on {
            return drop(DropReason::NoRoute, &"hand-back off");
        }
        if !self.first_time(&payload) {
            return drop(DropReason::NoRoute, &"handed back once already");
        }
        tracing::debug!(subject, "nats bus: queue message handed back ({why})");
        if let Err(e) = self.client.publish(subject.to_owned(), payload).await {
            drop(DropReason::Broker, &format_args!("hand-back failed: {e}"));
        }
    }

    /// Whether `payload` was not handed back within [`BOUNCE_MEMORY`] (and
    /// there is room to remember it); remembers it.
    fn first_time(&self, payload: &Bytes) -> bool {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        payload.hash(&mut h);
        let key = h.finish();
        let mut b = lock(&self.bounces);
        let now = Instant::now();
        if b.len() >= BOUNCE_LIMIT {
            b.retain(|_, t| now.duration_since(*t) < BOUNCE_MEMORY);
        }
        match b.get(&key) {
            Some(t) if now.duration_since(*t) < BOUNCE_MEMORY => false,
            _ if b.len() >= BOUNCE_LIMIT => false,
            _ => {
                b.insert(key, now);
                true
            }
        }
    }
}
