//! One end of a stream as the bus side sees it: its state, the receive
//! buffer (with its holding area for slow readers), sends and their acks,
//! and the one close path every end of a stream goes through.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use prost::Message;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{CloseReason, StreamEntry, StreamTable, lock, publish_detached};
use crate::bus::DynBus;
use crate::channels::Channel;
use crate::error::{Error, ErrorCode, Result};
use crate::id;
use crate::info::RpcInfo;
use crate::interceptor::streams::StreamInterceptors;
use crate::wire::{self, StreamAck, StreamBody, StreamClose, StreamMessage};

struct State<R> {
    /// Why the stream ended; `None` while open.
    cause: Option<Error>,
    /// The receive buffer; dropped when the stream closes.
    tx: Option<mpsc::Sender<R>>,
    /// Messages waiting for room in the receive buffer, in arrival order,
    /// not yet acknowledged.
    overflow: std::collections::VecDeque<(R, AckOf)>,
    /// A task is moving `overflow` into the buffer.
    draining: bool,
    /// The interceptors saw the open: they see the close too.
    opened: bool,
}

/// What the ack of a message echoes.
struct AckOf {
    request_id: String,
    sent_at: i64,
    expiry: i64,
}

/// Held messages are given up this long before their expiry, so that one
/// is never accepted after its sender stopped waiting for it.
const OVERFLOW_MARGIN: Duration = Duration::from_millis(5);

/// What both ends of one stream share with the bus side.
pub(crate) struct Shared<R> {
    pub(super) stream_id: String,
    pub(super) info: Arc<RpcInfo>,
    pub(super) bus: DynBus,
    /// Where this end's messages go.
    pub(super) out: Arc<Channel>,
    /// Default send timeout, and the expiry of the close message.
    timeout: Duration,
    acks: Mutex<id::IdBytesMap<oneshot::Sender<()>>>,
    state: Mutex<State<R>>,
    /// Canceled when the stream closes (wakes pending sends; ends the
    /// server handler's context).
    pub(super) done: CancellationToken,
    table: Weak<StreamTable>,
    pub(super) interceptors: StreamInterceptors,
}

/// Everything needed to make one end of a stream.
pub(crate) struct StreamParams {
    pub(crate) stream_id: String,
    pub(crate) info: Arc<RpcInfo>,
    pub(crate) bus: DynBus,
    pub(crate) out: Arc<Channel>,
    pub(crate) timeout: Duration,
    pub(crate) buffer: usize,
    pub(crate) table: Weak<StreamTable>,
    pub(crate) interceptors: StreamInterceptors,
}

impl<R: Message + Default + Clone + 'static> Shared<R> {
    pub(crate) fn new(p: StreamParams) -> (Arc<Self>, mpsc::Receiver<R>) {
        let (tx, rx) = mpsc::channel(p.buffer.max(1));
        let shared = Arc::new(Shared {
            stream_id: p.stream_id,
            info: p.info,
            bus: p.bus,
            out: p.out,
            timeout: p.timeout,
            acks: Mutex::default(),
            state: Mutex::new(State {
                cause: None,
                tx: Some(tx),
                overflow: Default::default(),
                draining: false,
                opened: false,
            }),
            done: CancellationToken::new(),
            table: p.table,
            interceptors: p.interceptors,
        });
        (shared, rx)
    }

    pub(crate) fn done(&self) -> &CancellationToken {
        &self.done
    }

    /// Waits for the ack of `request_id` (the open's, pre-seeded).
    pub(crate) fn expect_ack(&self, request_id: &str) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        lock(&self.acks).insert(request_id.as_bytes().into(), tx);
        rx
    }

    pub(crate) fn forget_ack(&self, request_id: &str) {
        lock(&self.acks).remove(request_id.as_bytes());
    }

    /// Whether the stream has ended.
    pub(crate) fn is_ended(&self) -> bool {
        lock(&self.state).cause.is_some()
    }

    /// Why the stream ended, if it has.
    pub(crate) fn cause(&self) -> Option<Error> {
        lock(&self.state).cause.clone()
    }

    /// Tells the interceptors that the stream is open, once, unless it has
    /// ended already; from then on they see its end too. Whether the stream
    /// is still open.
    pub(crate) fn open_interceptors(&self) -> bool {
        if self.interceptors.is_empty() {
            return true;
        }
        {
            let mut st = lock(&self.state);
            if st.cause.is_some() {
                return false;
            }
            if std::mem::replace(&mut st.opened, true) {
                return true;
            }
        }
        self.interceptors.open(&self.info);
        true
    }

    /// The one close path, whatever ended the stream: marks it closed with
    /// `cause` (the receive buffer ends, pending sends wake with `cause`,
    /// the stream leaves its table, its context is canceled), tells the
    /// interceptors once, with `reason`, if they saw the open, and returns
    /// the close message to send the peer (`None` when the peer closed it).
    /// `Err(earlier cause)` when the stream had ended already.
    fn finish(
        &self,
        cause: Error,
        reason: CloseReason,
    ) -> std::result::Result<Option<Bytes>, Error> {
        let msg = (reason != CloseReason::Peer).then(|| self.close_message(&cause));
        let report = {
            let mut st = lock(&self.state);
            if let Some(prev) = &st.cause {
                return Err(prev.clone());
            }
            let report = st.opened.then(|| cause.clone());
            st.cause = Some(cause);
            st.tx = None;
            st.overflow.clear();
            report
        };
        if let Some(t) = self.table.upgrade() {
            let mut t = lock(&t);
            // Only this stream's own entry (ids are unique, but be exact).
            if t.get(self.stream_id.as_bytes()).is_some() {
                t.remove(self.stream_id.as_bytes());
            }
        }
        self.done.cancel();
        if let Some(cause) = report {
            self.interceptors.close(&self.info, reason, &cause);
        }
        Ok(msg)
    }

    fn close_message(&self, cause: &Error) -> Bytes {
        let now = wire::now_ns();
        let code = match cause.code() {
            ErrorCode::Ok => ErrorCode::Unknown.as_str().to_owned(),
            _ => cause.wire_code().to_owned(),
        };
        self.bus.compression().encode(&wire::Stream {
            stream_id: self.stream_id.clone(),
            request_id: id::new_request_id(),
            sent_at: now,
            expiry: now.saturating_add(self.timeout.as_nanos() as i64),
            body: Some(StreamBody::Close(StreamClose {
                error: cause.message().to_owned(),
                code,
            })),
        })
    }

    /// Closes the stream with `cause` (see [`finish`](Self::finish)) and
    /// tells the peer. When it had ended already, returns the earlier
    /// cause as the error and sends nothing.
    pub(crate) async fn close(&self, cause: Error, reason: CloseReason) -> Result<()> {
        match self.finish(cause, reason)? {
            Some(msg) => (*self.bus).publish(&self.out, msg).await,
            None => Ok(()),
        }
    }

    /// [`close`](Self::close) without waiting for the publish.
    pub(crate) fn close_detached(&self, cause: Error, reason: CloseReason) {
        if let Ok(Some(msg)) = self.finish(cause, reason) {
            publish_detached(&self.bus, &self.out, msg);
        }
    }

    /// Sends one encoded message and waits for its ack.
    pub(crate) async fn send_raw(&self, raw: Bytes, timeout: Option<Duration>) -> Result<()> {
        if let Some(c) = self.cause() {
            return Err(c);
        }
        let t = timeout.filter(|t| !t.is_zero()).unwrap_or(self.timeout);
        let deadline = Instant::now() + t;
        let request_id = id::new_request_id();
        let ack = self.expect_ack(&request_id);
        let _guard = AckGuard {
            acks: &self.acks,
            request_id: &request_id,
        };
        let now = wire::now_ns();
        let msg = self.bus.compression().encode(&wire::Stream {
            stream_id: self.stream_id.clone(),
            request_id: request_id.clone(),
            sent_at: now,
            expiry: now.saturating_add(t.as_nanos() as i64),
            body: Some(StreamBody::Message(StreamMessage {
                raw_message: raw,
                ..Default::default()
            })),
        });
        (*self.bus).publish(&self.out, msg).await?;
        tokio::select! {
            biased;
            r = ack => match r {
                Ok(()) => Ok(()),
                Err(_) => Err(self.cause().unwrap_or_else(Error::stream_closed)),
            },
            _ = self.done.cancelled() => Err(self.cause().unwrap_or_else(Error::stream_closed)),
            _ = tokio::time::sleep_until(deadline) => {
                Err(self.cause().unwrap_or_else(Error::request_timed_out))
            }
        }
    }

    fn ack(&self, request_id: &str, sent_at: i64, expiry: i64) {
        let ack = self.bus.compression().encode(&wire::Stream {
            stream_id: self.stream_id.clone(),
            request_id: request_id.to_owned(),
            sent_at,
            expiry,
            body: Some(StreamBody::Ack(StreamAck {})),
        });
        publish_detached(&self.bus, &self.out, ack);
    }

    /// Moves held messages into the receive buffer as room appears, in
    /// order, acknowledging each; gives up on one at its expiry.
    async fn drain_overflow(self: Arc<Self>) {
        loop {
            let (tx, msg, ack) = {
                let mut guard = lock(&self.state);
                let st = &mut *guard;
                let next = match (&st.tx, st.overflow.pop_front()) {
                    (Some(tx), Some((msg, ack))) => Some((tx.clone(), msg, ack)),
                    _ => None,
                };
                match next {
                    Some(n) => n,
                    None => {
                        st.draining = false;
                        return;
                    }
                }
            };
            let left =
                Duration::from_nanos(ack.expiry.saturating_sub(wire::now_ns()).max(0) as u64);
            let deadline = Instant::now() + left.saturating_sub(OVERFLOW_MARGIN);
            let permit = tokio::select! {
                p = tx.reserve_owned() => p.ok(),
                _ = tokio::time::sleep_until(deadline) => None,
                _ = self.done.cancelled() => None,
            };
            match permit {
                Some(p) => {
                    let st = lock(&self.state);
                    if st.cause.is_none() {
                        // The sender clone goes right away: a close must end the buffer.
                        drop(p.send(msg));
                        self.ack(&ack.request_id, ack.sent_at, ack.expiry);
                    }
                }
                None => {
                    if !self.done.is_cancelled() {
                        let why = format_args!(
                            "stream {}: receive buffer stayed full until the message expired; not acknowledged",
                            self.stream_id
                        );
                        let reason = crate::drops::DropReason::SlowConsumer;
                        self.bus
                            .drops()
                            .record(reason, "(stream receive buffer)", &why);
                    }
                }
            }
        }
    }
}

struct AckGuard<'a> {
    acks: &'a Mutex<id::IdBytesMap<oneshot::Sender<()>>>,
    request_id: &'a str,
}

impl Drop for AckGuard<'_> {
    fn drop(&mut self) {
        lock(self.acks).remove(self.request_id.as_bytes());
    }
}

impl<R: Message + Default + Clone + 'static> StreamEntry for Shared<R> {
    fn on_stream(self: Arc<Self>, payload: &Bytes, m: wire::StreamView<'_>) {
        match m.body {
            wire::STREAM_ACK_TAG => {
                if let Some(w) = lock(&self.acks).remove(m.request_id) {
                    let _ = w.send(());
                }
            }
            wire::STREAM_MESSAGE_TAG => {
                let body = match StreamMessage::decode(payload.slice(m.body_bytes.clone())) {
                    Ok(b) => b,
                    Err(e) => {
                        let why = format_args!("stream {}: {e}", self.stream_id);
                        let reason = crate::drops::DropReason::Malformed;
                        self.bus.drops().record(reason, "(stream)", &why);
                        return;
                    }
                };
                let raw = body.raw_message;
                let seen = (!self.interceptors.is_empty()).then(|| raw.clone());
                let msg = match R::decode(raw) {
                    Ok(msg) => msg,
                    Err(e) => {
                        if self.cause().is_none() {
                            let why =
                                format_args!("stream {}: {e}; closing the stream", self.stream_id);
                            let reason = crate::drops::DropReason::Malformed;
                            self.bus.drops().record(reason, "(stream)", &why);
                            let cause = Error::wrap(ErrorCode::MalformedRequest, e);
                            self.close_detached(cause, CloseReason::Malformed);
                        }
                        return;
                    }
                };
                if let Some(raw) = seen {
                    // A message can overtake the open's report on the
                    // client (it follows the ack at once): the open is
                    // reported first. A stream that has ended sees nothing.
                    if !self.open_interceptors() {
                        return;
                    }
                    if let Err(e) = self.interceptors.recv(&self.info, &raw) {
                        let why = format_args!(
                            "stream {}: refused by an interceptor: {e}",
                            self.stream_id
                        );
                        let reason = crate::drops::DropReason::Refused;
                        self.bus.drops().record(reason, "(stream)", &why);
                        return;
                    }
                }
                let Some(request_id) = m.request_id_str() else {
                    let why = format_args!("stream {}: request id not UTF-8", self.stream_id);
                    let reason = crate::drops::DropReason::Malformed;
                    self.bus.drops().record(reason, "(stream)", &why);
                    return;
                };
                {
                    // Under the state lock, so a concurrent close either
                    // happens before (the message is ignored) or after.
                    let mut st = lock(&self.state);
                    let Some(tx) = &st.tx else { return };
                    let msg = if st.draining {
                        msg
                    } else {
                        match tx.try_send(msg) {
                            Ok(()) => {
                                // Acknowledged before the lock is released,
                                // so a close that follows is published after
                                // the ack.
                                self.ack(request_id, m.sent_at(), m.expiry());
                                return;
                            }
                            Err(mpsc::error::TrySendError::Full(msg)) => msg,
                            Err(mpsc::error::TrySendError::Closed(_)) => return,
                        }
                    };
                    // The buffer is full (or others wait already): hold the
                    // message, bounded, until there is room.
                    if st.overflow.len() >= tx.max_capacity() {
                        let why = format_args!(
                            "stream {}: receive buffer full, message not acknowledged",
                            self.stream_id
                        );
                        let reason = crate::drops::DropReason::SlowConsumer;
                        self.bus
                            .drops()
                            .record(reason, "(stream receive buffer)", &why);
                        return;
                    }
                    let ack = AckOf {
                        request_id: request_id.to_owned(),
                        sent_at: m.sent_at(),
                        expiry: m.expiry(),
                    };
                    st.overflow.push_back((msg, ack));
                    if st.draining {
                        return;
                    }
                    st.draining = true;
                }
                tokio::spawn(self.clone().drain_overflow());
            }
            wire::STREAM_CLOSE_TAG => {
                let c = match StreamClose::decode(payload.slice(m.body_bytes.clone())) {
                    Ok(c) => c,
                    Err(e) => {
                        let why = format_args!("stream {}: {e}", self.stream_id);
                        let reason = crate::drops::DropReason::Malformed;
                        self.bus.drops().record(reason, "(stream)", &why);
                        return;
                    }
                };
                let code = if c.code.is_empty() {
                    ErrorCode::Unknown.as_str()
                } else {
                    &c.code
                };
                let cause = Error::from_wire(code, c.error, Vec::new());
                let _ = self.finish(cause, CloseReason::Peer);
            }
            _ => {}
        }
    }

    fn close_now(
        &self,
        cause: Error,
        reason: CloseReason,
    ) -> Option<BoxFuture<'static, Result<()>>> {
        let msg = self.finish(cause, reason).ok()??;
        let (bus, out) = (self.bus.clone(), self.out.clone());
        Some(Box::pin(async move { (*bus).publish(&out, msg).await }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LocalBus;

    /// A stream end on a bus where nobody listens: publishes succeed and
    /// nothing is ever acknowledged (the fake adapter of the Go unit tests).
    fn lonely(buffer: usize) -> (Arc<Shared<wire::Response>>, mpsc::Receiver<wire::Response>) {
        Shared::new(StreamParams {
            stream_id: "STR_test".into(),
            info: Arc::new(RpcInfo::default()),
            bus: Arc::new(LocalBus::new()),
            out: Arc::new(crate::channels::stream_channel("svc", "CLI_nobody")),
            timeout: Duration::from_secs(3),
            buffer,
            table: Weak::new(),
            interceptors: StreamInterceptors::none(),
        })
    }

    /// Watching with an interval too large to add to a time (a caller's
    /// `Duration::MAX`) waits for the stream's end instead of panicking.
    #[tokio::test]
    async fn huge_liveness_intervals_wait_for_the_end() {
        let (s, _rx) = lonely(1);
        let w = tokio::spawn({
            let s = s.clone();
            async move { s.open_until(Instant::now(), Duration::MAX).await }
        });
        s.close_detached(Error::stream_closed(), CloseReason::Closed);
        assert!(!w.await.expect("no panic"), "the stream had ended");
    }

    /// Hands `m` to `s` as the bus would.
    fn deliver(s: Arc<Shared<wire::Response>>, m: wire::Stream) {
        let b = wire::encode(&m);
        s.on_stream(&b, wire::read_stream(&b).expect("a plain Stream"));
    }

    fn incoming(body: StreamBody) -> wire::Stream {
        wire::Stream {
            stream_id: "STR_test".into(),
            request_id: id::new_request_id(),
            sent_at: wire::now_ns(),
            expiry: wire::now_ns() + 3_000_000_000,
            body: Some(body),
        }
    }

    /// A remote close releases a pending send with the remote cause,
    /// long before the send's own timeout.
    #[tokio::test]
    async fn close_releases_pending_send() {
        let (s, _rx) = lonely(10);
        let sending = {
            let s = s.clone();
            tokio::spawn(async move { s.send_raw(Bytes::new(), None).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        deliver(
            s.clone(),
            incoming(StreamBody::Close(StreamClose {
                error: "stream closed".into(),
                code: "canceled".into(),
            })),
        );
        let started = std::time::Instant::now();
        let err = sending.await.unwrap().expect_err("released by the close");
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(err.code(), Error::stream_closed().code());
        assert_eq!(err.message(), Error::stream_closed().message());
    }

    /// A local close racing an incoming message never panics; the
    /// message is delivered or dropped, and the buffer ends either way.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn close_racing_a_message_never_panics() {
        let payload = Bytes::from(
            wire::Response {
                request_id: "x".into(),
                ..Default::default()
            }
            .encode_to_vec(),
        );
        for _ in 0..1000 {
            let (s, mut rx) = lonely(1);
            let msg = incoming(StreamBody::Message(StreamMessage {
                raw_message: payload.clone(),
                ..Default::default()
            }));
            let feeder = {
                let s = s.clone();
                tokio::spawn(async move { deliver(s, msg) })
            };
            let closer = {
                let s = s.clone();
                tokio::spawn(
                    async move { s.close(Error::stream_closed(), CloseReason::Closed).await },
                )
            };
            feeder.await.unwrap();
            closer.await.unwrap().unwrap();
            // Whatever was delivered is readable, then the buffer ends.
            while let Some(r) = rx.recv().await {
                assert_eq!(r.request_id, "x");
            }
            assert_eq!(s.cause().unwrap().message(), "stream closed");
        }
    }

    /// A full buffer holds the next message unacknowledged and delivers it
    /// when the reader makes room; past the holding area, messages are
    /// dropped.
    #[tokio::test]
    async fn full_buffer_holds_then_delivers_in_order() {
        let (s, mut rx) = lonely(1);
        for n in 0..3 {
            let m = wire::Response {
                request_id: n.to_string(),
                ..Default::default()
            };
            deliver(
                s.clone(),
                incoming(StreamBody::Message(StreamMessage {
                    raw_message: Bytes::from(m.encode_to_vec()),
                    ..Default::default()
                })),
            );
        }
        // One buffered, one held, one dropped (holding area = buffer size).
        for want in ["0", "1"] {
            let got = tokio::time::timeout(Duration::from_secs(1), rx.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(got.request_id, want);
        }
        assert!(
            tokio::time::timeout(Duration::from_millis(100), rx.recv())
                .await
                .is_err()
        );
    }

    /// A peer's close as the receiver reads it: a close with `canceled`
    /// "stream closed" (what Go and this crate send for a plain close) is a
    /// clean end, `Ok(None)`, again and again; any other cause is the
    /// error. The `futures::Stream` yields the error once, then ends.
    #[tokio::test]
    async fn peer_close_read_as_clean_end_or_error() {
        use futures::StreamExt;
        for (code, message, clean) in [
            ("canceled", "stream closed", true),
            ("canceled", "something else", false),
            ("unavailable", "stream closed", false),
            ("", "no code", false),
        ] {
            let (s, rx) = lonely(4);
            let mut st = super::super::ClientStream::<wire::Response, wire::Response>::new(
                s.clone(),
                rx,
                crate::Context::new(),
            );
            let msg = wire::Response {
                request_id: "m".into(),
                ..Default::default()
            };
            deliver(
                s.clone(),
                incoming(StreamBody::Message(StreamMessage {
                    raw_message: Bytes::from(msg.encode_to_vec()),
                    ..Default::default()
                })),
            );
            deliver(
                s.clone(),
                incoming(StreamBody::Close(StreamClose {
                    error: message.into(),
                    code: code.into(),
                })),
            );
            // What was buffered before the close is read first.
            assert_eq!(st.recv().await.unwrap().unwrap().request_id, "m");
            for _ in 0..2 {
                match st.recv().await {
                    Ok(None) => assert!(clean, "{code} {message}: not a clean end"),
                    Ok(Some(m)) => panic!("a message after the close: {m:?}"),
                    Err(e) => {
                        assert!(!clean, "{code} {message}: a clean end read as {e}");
                        assert_eq!(e.message(), message);
                    }
                }
            }
            match st.next().await {
                None => assert!(clean),
                Some(Err(e)) => assert_eq!((clean, e.message()), (false, message)),
                Some(Ok(m)) => panic!("a message after the close: {m:?}"),
            }
            assert!(st.next().await.is_none(), "the stream has ended");
        }
    }
}
