//! Routers: one NATS subscription per (subject, queue or not) shared by
//! the bus's channels on that subject, each message handed to the channel
//! named by its `Msg.channel` (field 3), the one place the transport looks
//! inside a payload.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use psrpc::CancellationToken;
use psrpc::bus::Inbox;
use psrpc::drops::DropReason;

use crate::handback::HandBack;
use crate::slot::{Slot, next_message};

/// The channels of one subject (fan-out or queue) in a bus, by
/// `Msg.channel`: the bus's inbox of each, with the id of the listening
/// that put it there.
pub(crate) struct Router {
    pub(crate) subject: String,
    pub(crate) queue: bool,
    routes: RwLock<HashMap<String, (u64, Inbox)>>,
    pub(crate) nats: Slot,
    pub(crate) stop: CancellationToken,
}

impl Router {
    /// A router of `subject` reading `nats`, with no channel yet.
    pub(crate) fn new(subject: String, queue: bool, nats: Slot) -> Router {
        Router {
            subject,
            queue,
            routes: RwLock::new(HashMap::new()),
            nats,
            stop: CancellationToken::new(),
        }
    }

    /// Routes the messages whose `Msg.channel` is `local` to `inbox`.
    pub(crate) fn add(&self, local: &str, id: u64, inbox: Inbox) {
        let mut routes = self.routes.write().unwrap_or_else(|e| e.into_inner());
        routes.insert(local.to_owned(), (id, inbox));
    }

    /// Removes the route `id` put in for `local`; true when the router has
    /// none left.
    pub(crate) fn remove(&self, local: &str, id: u64) -> bool {
        let mut routes = self.routes.write().unwrap_or_else(|e| e.into_inner());
        if routes.get(local).is_some_and(|(i, _)| *i == id) {
            routes.remove(local);
        }
        routes.is_empty()
    }

    fn route(&self, local: &str) -> Option<Inbox> {
        self.routes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(local)
            .map(|(_, inbox)| inbox.clone())
    }

    /// Hands `payload` to the inbox of its `Msg.channel`, without waiting;
    /// a queue message nobody here takes is handed back to the group.
    async fn dispatch(&self, hand: &HandBack, payload: Bytes) {
        let route = match read_local(&payload) {
            Ok(local) => self.route(&local),
            Err(e) => {
                hand.drops()
                    .record(DropReason::Malformed, &self.subject, &e);
                return;
            }
        };
        let Some(inbox) = route else {
            if self.queue {
                hand.hand_back(&self.subject, payload, "no local subscriber of its method")
                    .await;
            } else {
                tracing::trace!(subject = %self.subject, "nats bus: no route, dropped");
            }
            return;
        };
        if !self.queue {
            inbox.deliver_fanout(payload);
        } else if let Err(msg) = inbox.deliver_queue(payload) {
            hand.hand_back(&self.subject, msg, "closed queue subscription")
                .await;
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
                return psrpc::protocol::wire::read_channel(msg)
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
        let good = psrpc::protocol::wire::append_channel(
            &psrpc::protocol::wire::encode_msg_raw("type.googleapis.com/x", b"\x08\x01"),
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
            let want = psrpc::protocol::wire::read_channel(&c).ok();
            let got = read_local(&c).ok().map(|s| s.into_owned());
            assert_eq!(got, want, "{c:02x?}");
        }
    }
}
