//! Stream handlers: [`StreamHandler`] accepts opens and runs the handler per stream.

use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, UNIX_EPOCH};

use prost::Message;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::registry::HandlerParts;
use super::route::{OpenAffinityFn, StreamOpen};
use super::{ClientChannels, Core, RpcServer};
use crate::bus::Handler;
use crate::channels;
use crate::error::{Error, Result};
use crate::info::{Context, IncomingHeader, MethodInfo, RpcInfo};
use crate::interceptor::streams::StreamInterceptors;
use crate::stream::{self, CloseReason, ServerStream, StreamLiveness, StreamParams, StreamTable};
use crate::wire::{self, Envelope, StreamAck, StreamBody};

impl RpcServer {
    /// Registers the stream handler `handler` for `method` on `topic`
    /// (empty: no topic) and returns once its subscriptions are in effect
    /// (see [`StreamRoute`]).
    pub(crate) async fn register_stream<S, R, H, Fut>(
        &self,
        method: &MethodInfo,
        topic: &[String],
        handler: H,
        affinity: Option<OpenAffinityFn>,
    ) -> Result<()>
    where
        S: Message + Clone + 'static,
        R: Message + Default + Clone + 'static,
        H: Fn(ServerStream<S, R>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        let key = self.reserve(&method.name, topic)?;
        let core = &self.inner.core;
        let streams: Arc<StreamTable> = Arc::default();
        let stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        let ch = channels::stream_server_channel(&core.service, &method.name, topic);
        let h = Arc::new(StreamHandler {
            core: core.clone(),
            method: method.clone(),
            info: self.rpc_info(method, topic),
            channel: ch.legacy.clone(),
            handler,
            affinity,
            streams: streams.clone(),
            timeout: self.inner.opts.timeout,
            buffer: self.inner.opts.channel_size,
            liveness: self.inner.opts.stream_liveness,
            stop: stop.clone(),
            _p: PhantomData::<fn(S) -> R>,
        });
        let on_message: Handler = {
            let (stop, tracker) = (stop.clone(), tracker.clone());
            Arc::new(move |bytes| {
                let name = || {
                    let (c, i) = (&h.core, &h.info);
                    channels::stream_server_channel(&c.service, &h.method.name, &i.topic).legacy
                };
                let bus = &*h.core.bus;
                let Some(payload) =
                    crate::bus::receive_payload(bus, name, wire::Stream::TYPE_URL, bytes)
                else {
                    return;
                };
                // Every server of the method hears every message of every
                // stream: those of streams this server does not hold are
                // passed over once their stream id is read.
                stream::with_stream(bus, name, payload, |payload, v| {
                    if v.body != wire::STREAM_OPEN_TAG {
                        // In arrival order.
                        match stream::lookup(&h.streams, v.stream_id) {
                            Some(entry) => entry.on_stream(payload, v),
                            None => {
                                tracing::trace!(stream_id = %String::from_utf8_lossy(v.stream_id), "psrpc stream: message for unknown stream dropped")
                            }
                        }
                        return;
                    }
                    // Opens are handled concurrently; none while draining.
                    let open =
                        crate::bus::decode_payload::<wire::Stream>(bus, name, payload.clone());
                    if let Some(m) = open
                        && !stop.is_cancelled()
                    {
                        h.on_open(m, &tracker);
                    }
                });
            })
        };
        let parts = HandlerParts {
            key,
            stop,
            tracker,
            streams: Some(streams),
        };
        self.subscribe_method(method, topic, &ch, false, on_message, parts)
            .await?;
        self.discovered(method, topic, true);
        Ok(())
    }
}

/// One registered stream handler: accepts opens, runs the handler per stream.
pub(super) struct StreamHandler<S, R, H> {
    core: Arc<Core>,
    method: MethodInfo,
    info: Arc<RpcInfo>,
    /// The stream channel (legacy name), for drop reports.
    channel: String,
    handler: H,
    affinity: Option<OpenAffinityFn>,
    streams: Arc<StreamTable>,
    timeout: Duration,
    buffer: usize,
    liveness: StreamLiveness,
    stop: CancellationToken,
    _p: PhantomData<fn(S) -> R>,
}

impl<S, R, H, Fut> StreamHandler<S, R, H>
where
    S: Message + Clone + 'static,
    R: Message + Default + Clone + 'static,
    H: Fn(ServerStream<S, R>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    /// Takes one open off the bus (server side): claims it
    /// if the method is claimed, and accepts it once this server has it.
    pub(super) fn on_open(self: &Arc<Self>, m: wire::Stream, tracker: &TaskTracker) {
        let Some(budget) =
            self.core
                .arrived(&self.info, &self.channel, &m.stream_id, m.sent_at, m.expiry)
        else {
            return;
        };
        let Some(StreamBody::Open(open)) = &m.body else {
            return;
        };
        let Some(chans) = self.core.client_channels(&open.node_id) else {
            return;
        };
        if self.method.require_claim {
            let deadline = Instant::now() + budget;
            let affinity = self.affinity.as_ref().map_or(1.0, |f| {
                f(&StreamOpen {
                    remote_id: &open.node_id,
                    metadata: &open.metadata,
                    topic: &self.info.topic,
                })
            });
            let claim = chans.claim.clone();
            let (h, t) = (self.clone(), tracker.clone());
            self.core.claim_then(
                &self.info,
                m.request_id.clone(),
                &claim,
                affinity,
                deadline,
                tracker.token(),
                // Boxed, as a unary request's task is: the future is large.
                move || {
                    t.spawn(Box::pin(h.accept(m, chans)));
                },
            );
        } else {
            tracker.spawn(Box::pin(self.clone().accept(m, chans)));
        }
    }

    /// Accepts a stream this server has: acks the open and runs the handler.
    pub(super) async fn accept(self: Arc<Self>, m: wire::Stream, chans: Arc<ClientChannels>) {
        let Some(StreamBody::Open(open)) = m.body else {
            return;
        };
        let core = &*self.core;
        let out = chans.stream.clone();
        let (shared, rx) = stream::Shared::<R>::new(StreamParams {
            stream_id: m.stream_id.clone(),
            info: self.info.clone(),
            bus: core.bus.clone(),
            out: out.clone(),
            timeout: self.timeout,
            buffer: self.buffer,
            table: Arc::downgrade(&self.streams),
            interceptors: StreamInterceptors::Server(core.interceptors.clone()),
        });
        {
            // Under the table lock: a shutdown either sees this stream or
            // has stopped the handler before it was added.
            let mut t = self.streams.lock().unwrap_or_else(|e| e.into_inner());
            if self.stop.is_cancelled() {
                return;
            }
            t.insert(m.stream_id.as_bytes().into(), shared.clone());
        }
        // Before the ack: the client may send at once, and a message that
        // ends the stream (a malformed one) must find the open reported,
        // so that the interceptors see that end too.
        shared.open_interceptors();
        let ack = wire::Stream {
            stream_id: m.stream_id,
            request_id: m.request_id,
            sent_at: m.sent_at,
            expiry: m.expiry,
            body: Some(StreamBody::Ack(StreamAck {})),
        };
        core.publish(&out, &ack).await;
        shared.watch_peer(self.liveness, false);
        let header = IncomingHeader {
            remote_id: open.node_id,
            sent_at: UNIX_EPOCH + Duration::from_nanos(m.sent_at.max(0) as u64),
            metadata: open.metadata,
        };
        // No deadline: the stream's context ends when the stream does.
        let ctx = Context::new()
            .with_cancel(shared.done().clone())
            .with_incoming(header, self.info.clone());
        let hijacked = Arc::new(AtomicBool::new(false));
        // A stream counts for discovery as one call, while its handler runs.
        let _counted = core.discovery.as_ref().map(|d| d.call_started());
        let result =
            (self.handler)(ServerStream::new(shared.clone(), rx, ctx, hijacked.clone())).await;
        if !hijacked.load(Ordering::Acquire) {
            // Err when the stream was closed already: nothing to do.
            let cause = result.err().unwrap_or_else(Error::stream_closed);
            let _ = shared.close(cause, CloseReason::Closed).await;
        }
    }
}
