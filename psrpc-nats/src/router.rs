//! Routers: one NATS subscription per (subject, queue or not) shared by
//! the local subscribers of that subject, each message handed to those
//! registered under its `Msg.channel` (field 3), the one place the bus looks
//! inside a payload.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use psrpc::CancellationToken;
use psrpc::bus::{Members, Sink};
use psrpc::drops::DropReason;

use crate::handback::HandBack;
use crate::slot::{Slot, next_message};

/// The local subscribers of one subject, by `Msg.channel`.
pub(crate) struct Router {
    pub(crate) subject: String,
    pub(crate) queue: bool,
    routes: RwLock<HashMap<String, Arc<Members>>>,
    pub(crate) nats: Slot,
    pub(crate) stop: CancellationToken,
}

impl Router {
    /// A router of `subject` reading `nats`, with no subscriber yet.
    pub(crate) fn new(subject: String, queue: bool, nats: Slot) -> Router {
        Router {
            subject,
            queue,
            routes: RwLock::new(HashMap::new()),
            nats,
            stop: CancellationToken::new(),
        }
    }

    /// Adds a local subscriber of `local`.
    pub(crate) fn add(&self, local: &str, id: u64, sink: Sink) {
        let mut routes = self.routes.write().unwrap_or_else(|e| e.into_inner());
        let mut members = routes.get(local).map(|r| (**r).clone()).unwrap_or_default();
        members.add(id, sink, self.queue);
        routes.insert(local.to_owned(), Arc::new(members));
    }

    /// Removes a local subscriber; true when the router has none left.
    pub(crate) fn remove(&self, local: &str, id: u64) -> bool {
        let mut routes = self.routes.write().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = routes.get(local) {
            let mut members = (**r).clone();
            members.remove(id);
            if members.is_empty() {
                routes.remove(local);
            } else {
                routes.insert(local.to_owned(), Arc::new(members));
            }
        }
        routes.is_empty()
    }

    fn route(&self, local: &str) -> Option<Arc<Members>> {
        self.routes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(local)
            .cloned()
    }

    /// Hands `payload` to the local subscribers of its `Msg.channel`,
    /// without waiting: to every one on a fan-out subject, to exactly one
    /// (in turn) on a queue subject.
    async fn dispatch(&self, hand: &HandBack, payload: Bytes) {
        let route = match read_local(&payload) {
            Ok(local) => self.route(&local),
            Err(e) => {
                hand.drops()
                    .record(DropReason::Malformed, &self.subject, &e);
                return;
            }
        };
        let Some(route) = route else {
            if self.queue {
                hand.hand_back(&self.subject, payload, "no local subscriber of its method")
                    .await;
            } else {
                tracing::trace!(subject = %self.subject, "nats bus: no route, dropped");
            }
            return;
        };
        if self.queue {
            if let Err(msg) = route.deliver_queue(payload, hand.drops(), &self.subject) {
                hand.hand_back(&self.subject, msg, "closed queue subscription")
                    .await;
            }
        } else {
            route.deliver_fanout(&payload, hand.drops(), &self.subject);
        }
    }
}

/// Reads the router's NATS subscription until it is closed or stopped.
pub(crate) async fn run_router(router: Arc<Router>, hand: Arc<HandBack>) {
    let cancelled = router.stop.cancelled();
    tokio::pin!(cancelled);
    loop {
        let msg = tokio::select! {
            biased;
            m = next_message(&router.nats) => match m {
                Some(m) => m,
                None => return,
            },
            _ = &mut cancelled => return,
        };
        router.dispatch(&hand, msg.payload).await;
    }
}

/// `Msg.channel` (field 3) of an envelope without copying it, with the
/// checks of a protobuf decoder: every field well-formed, field 3
/// length-delimited UTF-8, the last occurrence winning. Messages with groups
/// (never produced by psrpc) go through the full decoder.
fn read_local(msg: &[u8]) -> std::result::Result<std::borrow::Cow<'_, str>, String> {
    fn varint(b: &mut &[u8]) -> Option<u64> {
        let mut v = 0u64;
        for i in 0..10 {
            let (&byte, rest) = b.split_first()?;
            *b = rest;
            v |= u64::from(byte & 0x7f) << (7 * i);
            if byte < 0x80 {
                return Some(v);
            }
        }
        None
    }
    let malformed = || "malformed envelope".to_owned();
    let mut b = msg;
    let mut found: &[u8] = b"";
    while !b.is_empty() {
        let key = varint(&mut b).ok_or_else(malformed)?;
        let (field, wire_type) = (key >> 3, key & 7);
        if field == 0 || key > u64::from(u32::MAX) {
            return Err(malformed());
        }
        match wire_type {
            0 => {
                varint(&mut b).ok_or_else(malformed)?;
            }
            1 | 5 => {
                let n = if wire_type == 1 { 8 } else { 4 };
                b = b.get(n..).ok_or_else(malformed)?;
            }
            2 => {
                let len = varint(&mut b).ok_or_else(malformed)?;
                let len = usize::try_from(len).map_err(|_| malformed())?;
                let (value, rest) = b.split_at_checked(len).ok_or_else(malformed)?;
                if field == 3 {
                    found = value;
                }
                b = rest;
            }
            3 | 4 => {
                return psrpc::wire::read_channel(msg)
                    .map(std::borrow::Cow::Owned)
                    .map_err(|e| e.to_string());
            }
            _ => return Err(malformed()),
        }
        if field == 3 && wire_type != 2 {
            return Err(malformed());
        }
    }
    std::str::from_utf8(found)
        .map(std::borrow::Cow::Borrowed)
        .map_err(|_| "Msg.channel is not UTF-8".to_owned())
}

#[cfg(test)]
mod tests {
    use super::read_local;

    /// The scanner agrees with the full decoder on good and bad envelopes.
    #[test]
    fn read_local_matches_the_decoder() {
        let good = psrpc::wire::append_channel(
            &psrpc::wire::encode_msg_raw("type.googleapis.com/x", b"\x08\x01"),
            "M.REQ",
        );
        let mut cases: Vec<Vec<u8>> = vec![
            good.to_vec(),
            Vec::new(),
            b"\x1a\x00".to_vec(),
            b"\x1a\x01a\x1a\x01b".to_vec(),
            b"\xff\xff\xff".to_vec(),
            b"\x1a\x80".to_vec(),
            b"\x1a\x02\xff\xfe".to_vec(),
            b"\x18\x01".to_vec(),
            b"\x0b\x0c\x1a\x01z".to_vec(),
            b"\x09\x01\x02".to_vec(),
            b"\x00\x01".to_vec(),
            vec![0x1a; 300],
        ];
        for cut in 0..good.len() {
            cases.push(good[..cut].to_vec());
        }
        for c in cases {
            let want = psrpc::wire::read_channel(&c).ok();
            let got = read_local(&c).ok().map(|s| s.into_owned());
            assert_eq!(got, want, "{c:02x?}");
        }
    }
}
