//! Bidirectional streams (docs/PROTOCOL.md, "Streams"): [`ClientStream`] and
//! [`ServerStream`].
//!
//! A client opens a stream with [`RpcClient::stream`](crate::RpcClient::stream);
//! the first server to claim it (or, for multi and single-server methods,
//! every server that hears it) runs its stream handler, registered with
//! [`RpcServer::stream_route`](crate::RpcServer::stream_route).
//! After that both ends are alike:
//!
//! * `send(msg)` returns once the peer has *accepted* the message into its
//!   receive buffer (it acknowledges it), or fails at the per-message timeout
//!   (the stream's timeout, or `send_timeout`);
//! * `recv()` returns the messages the peer sent, in order (`Ok(Some(msg))`),
//!   then, once every buffered message was read, how the stream ended:
//!   `Ok(None)` for a clean close (either end's `close()`; a Go peer that
//!   closes without an error sends the same `canceled` "stream closed"),
//!   `Err(cause)` for anything else (the peer's error, a shutdown, a dead
//!   peer, the caller's context, a malformed message, ...). The
//!   `futures::Stream` impl yields `Result<R>` items the same way;
//! * `close()` ends the stream cleanly for both; `close_with(cause)` ends
//!   it with `cause`, which the peer's `recv` returns;
//! * `split()` gives a [`StreamSender`] and a [`StreamReceiver`] to use
//!   from different tasks (`sender()` another sender); the stream is
//!   closed when every handle of it is dropped.
//!
//! # How a stream ends
//!
//! Whatever ends a stream goes through one close path, once: the receive
//! buffer ends (after the messages in it are read), pending and later sends
//! fail with the cause, the stream's context is canceled, the peer is told
//! (unless it is the one that closed), and every interceptor that saw the
//! open (the metrics middleware among them) sees the end in `stream_close`, with
//! its [`CloseReason`]: `close`/`close_with` or a returning handler
//! ([`Closed`](CloseReason::Closed)), every handle dropped
//! ([`Dropped`](CloseReason::Dropped)), the peer's close
//! ([`Peer`](CloseReason::Peer)), the client's context
//! ([`Context`](CloseReason::Context)), a message that does not decode
//! ([`Malformed`](CloseReason::Malformed)), a dead peer
//! ([`PeerGone`](CloseReason::PeerGone)), the server's shutdown, kill or
//! deregistration ([`Shutdown`](CloseReason::Shutdown),
//! [`Kill`](CloseReason::Kill), [`Deregistered`](CloseReason::Deregistered)),
//! the client's close ([`ClientClosed`](CloseReason::ClientClosed)).
//!
//! # Slow receivers
//!
//! Each end buffers up to `channel_size` (default 100) received messages
//! that the application has not read yet. A message is acknowledged when it
//! enters that buffer. A message that arrives while the buffer is full is
//! held, unacknowledged (at most `channel_size` more are held, in order),
//! until the application makes room; it is then buffered and acknowledged,
//! so a momentarily slow reader only slows the sender's `send` down. If
//! there is no room before the message expires (the sender's send timeout),
//! or the holding area is full as well, the message is discarded and never
//! acknowledged: the sender's `send` fails with `deadline_exceeded`, and the
//! sender decides what to do, as a Go peer expects. Memory never
//! grows past twice the buffer.
//!
//! # Server side
//!
//! The handler owns its [`ServerStream`]. When the handler returns, the
//! stream is closed with the handler's error (or cleanly on `Ok`), unless the
//! handler called [`ServerStream::hijack`]: the application then keeps the
//! stream and closes it itself (dropping every handle of a hijacked stream
//! closes it). `shutdown()` and `kill()` of the server (and dropping its
//! last clone) close every open stream with `unavailable` "EOF".
//!
//! # Dead peers
//!
//! A peer that dies without closing (killed, crashed, cut off from the
//! broker) sends no close. So that neither end waits for it forever, each
//! end watches the other while the stream is open, through the bus's count
//! of subscribers ([`MessageBus::listeners`](crate::MessageBus::listeners)),
//! which never delivers anything to the peer:
//!
//! * each end of a Rust stream subscribes a *presence channel* of its own
//!   from a quarter interval after the open until the stream ends (Redis channel
//!   `<service>|<stream id>|CLI|LIVE` or `...|SRV|LIVE`, NATS subject
//!   `PSRPC_LIVE.<service>.<stream id>.CLI` or `.SRV`); nobody publishes
//!   there, so it costs one subscription per stream end;
//! * every [`StreamLiveness::interval`] (default 1 s) an end asks the bus
//!   how many subscribers the peer's presence channel has, and, where the
//!   bus can count without publishing (Redis `PUBSUB NUMSUB`, the local
//!   bus's own table), the peer's stream channel too;
//! * a channel seen with a subscriber that then has none for
//!   [`StreamLiveness::dead_after`] (default 4 s), or whose count cannot be
//!   had (broker unreachable) for that long, ends the stream with
//!   `unavailable`: `recv` returns it as the error, pending and
//!   later sends fail with it. The close message is sent as for any close.
//!
//! So a client learns that its server process died, and a server that its
//! client died, within `dead_after` plus one interval of the last look
//! that saw it (measured on loopback from the SIGKILL of the peer process
//! to the end of the stream, with the defaults: 3.0 to 4.5 s on Redis and
//! NATS, 3.5 to 4 s on the local bus).
//!
//! Watching costs nothing on the bus while a stream is young: each end
//! subscribes its presence channel a quarter of an interval after the open
//! (250 ms with the defaults) and takes its first look half an interval
//! after it, so a stream that ends sooner (a short call made as a stream)
//! costs a timer, no subscription and no look. A live Rust peer has
//! subscribed by the time of the first look, at the latest by the next. A
//! peer whose presence channel is empty at every look is never taken for
//! dead: it may be a Go peer. So on NATS (where only presence channels
//! can be counted) a peer that dies before this end's first look that
//! finds it (half an interval after the open, 500 ms with the defaults,
//! or the next look if the peer subscribed late) is not noticed.
//!
//! How each bus counts:
//!
//! * local bus: its own table of subscriptions;
//! * Redis: `PUBSUB NUMSUB` on the command connection (with the bus's
//!   prefix). In a Redis Cluster that command only counts the subscribers
//!   of the node asked, so the cluster bus reports that it cannot tell, and
//!   streams there are not watched;
//! * NATS: core NATS has no way to ask for a subject's interest without
//!   publishing to it (the server's subscription lists are for the system
//!   account only). The bus therefore only counts presence subjects, and
//!   does it with a request carrying an empty payload: the server answers
//!   "no responders" at once when nobody subscribes (needs headers, on by
//!   default since nats-server 2.2); otherwise the presence subscription
//!   takes the request and ignores it, and the probe's silence (500 ms)
//!   counts as present, as does a probe while the connection is down.
//!   Nothing reaches a psrpc channel.
//!
//! With a Go peer nothing changes on the wire: a Go process never
//! subscribes presence channels, so its presence is never seen and never
//! missed. On Redis and the local bus its death is still noticed through
//! its stream channel: a Go client's own, or, for a Go server, the
//! method's stream channel once no server of the method listens any more.
//! On NATS a Go peer is not watched (as before: `send` fails at its timeout,
//! `recv` waits). Configure it with `ClientOptions::stream_liveness` and
//! `ServerOptions::stream_liveness`; [`StreamLiveness::disabled`] turns it
//! off.

mod end;
mod handle;
mod liveness;
mod shared;

use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};

use bytes::Bytes;
use futures::future::BoxFuture;

use crate::bus::DynBus;
use crate::channels::Channel;
use crate::error::{Error, Result};
use crate::id;
use crate::wire;

pub use crate::outcome::CloseReason;
pub(crate) use end::is_clean;
pub use handle::{ClientStream, ServerStream, StreamReceiver, StreamSender};
pub use liveness::{
    DEFAULT_DEAD_AFTER, DEFAULT_LIVENESS_INTERVAL, PRESENCE_SUBJECT_PREFIX, StreamLiveness,
    presence_channel,
};
pub(crate) use shared::{Shared, StreamParams};

/// The open streams of a client, or of one server stream handler, by id.
pub(crate) type StreamTable = Mutex<id::IdBytesMap<Arc<dyn StreamEntry>>>;

/// A stream as the table holds it, without its message types.
pub(crate) trait StreamEntry: Send + Sync {
    /// Handles an incoming message of this stream (never an open): `m`
    /// read in place from `payload`.
    fn on_stream(self: Arc<Self>, payload: &Bytes, m: wire::StreamView<'_>);
    /// Closes the stream with `cause` for `reason` and returns the publish
    /// of the close message (`None` when it was closed already).
    fn close_now(
        &self,
        cause: Error,
        reason: CloseReason,
    ) -> Option<BoxFuture<'static, Result<()>>>;
}

/// Routes an incoming stream message to its stream. Messages of unknown
/// streams are dropped.
pub(crate) fn dispatch(table: &StreamTable, payload: &Bytes, m: wire::StreamView<'_>) {
    match lookup(table, m.stream_id) {
        Some(e) => e.on_stream(payload, m),
        None => {
            tracing::trace!(stream_id = %String::from_utf8_lossy(m.stream_id), "psrpc stream: message for unknown stream dropped")
        }
    }
}

/// Reads the stream message `payload` in place and runs `f` on it. A
/// message prost reads but this reader does not (fields repeated or in an
/// unusual form) is decoded by prost and re-encoded plainly first; one that
/// is not a `Stream` at all is dropped, counted and logged as at any read.
pub(crate) fn with_stream<T>(
    bus: &(impl crate::bus::MessageBus + ?Sized),
    channel: impl FnOnce() -> String,
    payload: Bytes,
    f: impl FnOnce(&Bytes, wire::StreamView<'_>) -> T,
) -> Option<T> {
    if let Some(v) = wire::read_stream(&payload) {
        return Some(f(&payload, v));
    }
    let m: wire::Stream = crate::bus::decode_payload(bus, channel, payload)?;
    let plain = wire::encode(&m);
    let v = wire::read_stream(&plain)?;
    Some(f(&plain, v))
}

/// The open stream `stream_id` of `table`.
pub(crate) fn lookup(table: &StreamTable, stream_id: &[u8]) -> Option<Arc<dyn StreamEntry>> {
    lock(table).get(stream_id).cloned()
}

/// Closes every stream of `table` with `cause` for `reason`; returns the
/// publishes.
pub(crate) fn close_all(
    table: &StreamTable,
    cause: &Error,
    reason: CloseReason,
) -> Vec<BoxFuture<'static, Result<()>>> {
    let entries: Vec<_> = lock(table).drain().map(|(_, e)| e).collect();
    entries
        .into_iter()
        .filter_map(|e| e.close_now(cause.clone(), reason))
        .collect()
}

/// Runs a publish in the background (in the current tokio runtime, if any).
pub(crate) fn spawn_publish(f: BoxFuture<'static, Result<()>>) {
    match tokio::runtime::Handle::try_current() {
        Ok(h) => {
            h.spawn(async move {
                if let Err(e) = f.await {
                    tracing::warn!(error = %e, "psrpc stream: publish failed");
                }
            });
        }
        Err(_) => tracing::warn!("psrpc stream: publish dropped, no tokio runtime"),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Publishes without making the caller wait: the publish is polled once
/// right here (the local bus completes at once) and only moved to a task
/// when it has to wait.
pub(crate) fn publish_detached(bus: &DynBus, ch: &Arc<Channel>, msg: Bytes) {
    let (bus, ch) = (bus.clone(), ch.clone());
    let mut fut: BoxFuture<'static, Result<()>> =
        Box::pin(async move { (*bus).publish(&ch, msg).await });
    let mut cx = TaskContext::from_waker(futures::task::noop_waker_ref());
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(Err(e)) => tracing::warn!(error = %e, "psrpc stream: publish failed"),
        Poll::Ready(Ok(())) => {}
        Poll::Pending => spawn_publish(fut),
    }
}
