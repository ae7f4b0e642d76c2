//! Simulated link latency between nodes, as Go psrpc's laggy test bus.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use prost::Message;
use tokio::time::{Instant, sleep_until};

use super::{RawStream, TestBus, delegate_bus};
use crate::bus::MessageBus;
use crate::wire;

#[allow(missing_docs, unreachable_pub, clippy::all)]
mod pb {
    include!(concat!(env!("OUT_DIR"), "/testutils.rs"));
}

pub use pb::LaggyMessage;

/// The type URL of [`LaggyMessage`] on the bus, as Go psrpc's testutils
/// writes it.
pub const LAGGY_TYPE_URL: &str = "type.googleapis.com/testutils.LaggyMessage";

impl prost::Name for LaggyMessage {
    const NAME: &'static str = "LaggyMessage";
    const PACKAGE: &'static str = "testutils";

    fn type_url() -> String {
        LAGGY_TYPE_URL.to_owned()
    }
}

/// The latency of the link from one node to another: called as
/// `latency(origin, receiver)` with the two node ids.
pub type LatencyFn = Arc<dyn Fn(&str, &str) -> Duration + Send + Sync>;

/// A bus on which every message takes the latency of its link to arrive
/// (as Go psrpc's laggy test bus): [`TestBus::laggy`] as a type of its own.
///
/// Every node (client or server) gets its own `LaggyBus` with its own id
/// around the shared bus; every node on the bus must use one, since the
/// messages are wrapped. A message published by node `a` reaches a
/// subscriber on node `b` `latency(a, b)` after it was sent: the wrapper
/// publishes it as a [`LaggyMessage`] stamped with the sender's id and the
/// wall-clock time, and the receiving side holds it until it is due,
/// releasing messages in due-time order, so messages from nodes with
/// different latencies can overtake each other. Nothing is lost.
///
/// The wire form is Go psrpc's (`testutils.LaggyMessage`, type URL
/// [`LAGGY_TYPE_URL`]): Rust and Go nodes with laggy wrappers interoperate.
#[derive(Clone, Debug)]
pub struct LaggyBus(TestBus);

impl LaggyBus {
    /// Wraps `bus` for the node `node_id`; `latency(origin, receiver)` gives
    /// each link's latency.
    pub fn new(
        bus: impl MessageBus,
        node_id: impl Into<String>,
        latency: impl Fn(&str, &str) -> Duration + Send + Sync + 'static,
    ) -> Self {
        LaggyBus(TestBus::new(bus).laggy(node_id, latency))
    }
}

delegate_bus!(LaggyBus);

impl TestBus {
    /// Adds the laggy bus's interceptors (see [`LaggyBus`]) for the node
    /// `node_id`, after those added before: publishes are wrapped in a
    /// [`LaggyMessage`], and subscriptions hold each message until
    /// `sent_at + latency(origin, node_id)`.
    ///
    /// On the subscribe side, a message that is not a `LaggyMessage` ends the
    /// subscription (as in Go); so does the end of the wrapped subscription,
    /// at once: messages not yet due are discarded.
    ///
    /// Messages in flight are held in memory until due. While the subscriber
    /// does not make room for a due message, nothing more is read from the
    /// wrapped subscription, whose own slow-consumer policy then applies.
    pub fn laggy(
        self,
        node_id: impl Into<String>,
        latency: impl Fn(&str, &str) -> Duration + Send + Sync + 'static,
    ) -> Self {
        let node: Arc<str> = node_id.into().into();
        let latency: LatencyFn = Arc::new(latency);
        let origin = node.clone();
        self.publish_interceptor(move |channel, msg, next| {
            next.publish(channel, wrap(&origin, msg, wire::now_ns()))
        })
        .subscribe_interceptor(move |_info, raw| delay(raw, node.clone(), latency.clone()))
    }
}

/// The bus form of `body` sent by `origin` at `sent_at`: a `Msg` carrying a
/// `LaggyMessage`. `body` is itself the encoded `Msg` the runtime publishes,
/// whose fields 1 and 2 are those of `google.protobuf.Any`, so it is the
/// serialized `Any` Go puts there.
fn wrap(origin: &str, body: Bytes, sent_at: i64) -> Bytes {
    let laggy = LaggyMessage {
        origin: origin.to_owned(),
        sent_at,
        body,
    };
    wire::encode_msg_raw(LAGGY_TYPE_URL, &laggy.encode_to_vec())
}

/// The `LaggyMessage` in `raw`, if it is one.
fn unwrap(raw: Bytes) -> Option<LaggyMessage> {
    let msg = wire::decode_msg(raw).ok()?;
    wire::check_type(&msg.type_url, LAGGY_TYPE_URL).ok()?;
    LaggyMessage::decode(msg.value).ok()
}

/// A held message: due time, arrival order (ties release in order), body
/// (`None`: the end of the stream).
type Held = Reverse<(Instant, u64, Option<Bytes>)>;

struct Delayer {
    raw: Option<RawStream>,
    held: BinaryHeap<Held>,
    seq: u64,
    node: Arc<str>,
    latency: LatencyFn,
}

fn delay(raw: RawStream, node: Arc<str>, latency: LatencyFn) -> RawStream {
    let d = Delayer {
        raw: Some(raw),
        held: BinaryHeap::new(),
        seq: 0,
        node,
        latency,
    };
    futures::stream::unfold(d, |mut d| async move {
        let body = d.next().await?;
        Some((body, d))
    })
    .boxed()
}

async fn next_raw(raw: &mut Option<RawStream>) -> Option<Bytes> {
    match raw {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

impl Delayer {
    fn hold(&mut self, due: Instant, body: Option<Bytes>) {
        self.seq += 1;
        self.held.push(Reverse((due, self.seq, body)));
    }

    /// When a message sent by `origin` at `sent_at` (wall clock) is due here.
    /// The wait is measured on the wall clock and scheduled on tokio's, so
    /// paused test time works too.
    fn due(&self, origin: &str, sent_at: i64) -> Instant {
        let latency = (self.latency)(origin, &self.node);
        let due_ns = i128::from(sent_at) + latency.as_nanos() as i128;
        let wait = (due_ns - i128::from(wire::now_ns())).clamp(0, i128::from(u64::MAX));
        Instant::now() + Duration::from_nanos(wait as u64)
    }

    /// The next body once due; `None` at the end of the stream.
    async fn next(&mut self) -> Option<Bytes> {
        loop {
            let due = self.held.peek().map(|Reverse((t, _, _))| *t);
            let reading = self.raw.is_some();
            tokio::select! {
                biased;
                () = sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                    let Reverse((_, _, body)) = self.held.pop()?;
                    return body;
                }
                raw = next_raw(&mut self.raw), if reading => {
                    match raw.and_then(unwrap) {
                        Some(m) => {
                            let due = self.due(&m.origin, m.sent_at);
                            self.hold(due, Some(m.body));
                        }
                        None => {
                            self.raw = None;
                            self.hold(Instant::now(), None);
                        }
                    }
                }
                else => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrap_and_unwrap() {
        let body = wire::encode_msg_raw("type.googleapis.com/x.Y", b"payload");
        let raw = wrap("node", body.clone(), 42);
        let m = unwrap(raw.clone()).expect("laggy");
        assert_eq!(m.origin, "node");
        assert_eq!(m.sent_at, 42);
        assert_eq!(m.body, body);
        // The envelope is a Msg (an Any) with the Go type URL.
        let msg = wire::decode_msg(raw).unwrap();
        assert_eq!(msg.type_url, LAGGY_TYPE_URL);
        assert_eq!(
            <LaggyMessage as prost::Name>::type_url(),
            wire::type_url_of::<LaggyMessage>()
        );
        assert!(unwrap(body).is_none());
    }
}
