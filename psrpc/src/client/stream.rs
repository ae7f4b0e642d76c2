//! Opening a client stream: [`StreamCall`].

use std::future::IntoFuture;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use prost::Message;
use tokio::time::Instant;

use super::{CallOptions, RpcClient, call_deadline};
use crate::bus::MessageBus;
use crate::channels;
use crate::error::{Error, ErrorCode, Result};
use crate::id;
use crate::info::{Context, Metadata, MethodInfo};
use crate::interceptor::streams::StreamInterceptors;
use crate::method::Method;
use crate::select::{SelectFlags, SelectionOptions, cancelled_opt, select_server, sleep_until_opt};
use crate::stream::{self, ClientStream, StreamParams};
use crate::topic::Topic;
use crate::wire::{self, ClaimResponse, StreamBody, StreamOpen};

impl RpcClient {
    /// Starts opening a stream of `method` on `topic` (`()` for none) that
    /// sends the method's request type `S` and receives its response type
    /// `R`; set options on the returned builder and `.await` it. The call
    /// timeout bounds the open and is the stream's default per-message send
    /// timeout.
    pub fn stream<'a, S, R>(
        &'a self,
        method: &'a Method<S, R>,
        topic: impl Into<Topic>,
    ) -> StreamCall<'a, S, R>
    where
        S: Message + Clone + 'static,
        R: Message + Default + Clone + 'static,
    {
        StreamCall {
            client: self,
            method: &method.info,
            topic: topic.into().into_parts(),
            opts: CallOptions::default(),
            _p: PhantomData,
        }
    }

    /// Subscribes the client's stream channel, once, at the first open.
    pub(super) async fn ensure_stream_channel(&self) -> Result<()> {
        self.inner
            .stream_sub
            .get_or_try_init(|| async {
                let table = self.inner.streams.clone();
                let ch = channels::stream_channel(&self.inner.service, &self.inner.id);
                let (bus, name) = (Arc::downgrade(&self.inner.bus), ch.legacy.clone());
                let on_stream: crate::bus::Handler = Arc::new(move |b| {
                    let Some(bus) = bus.upgrade() else { return };
                    let channel = || name.clone();
                    let url = <wire::Stream as wire::Envelope>::TYPE_URL;
                    if let Some(p) = crate::bus::receive_payload(&*bus, channel, url, b) {
                        stream::with_stream(&*bus, channel, p, |p, m| {
                            stream::dispatch(&table, p, m)
                        });
                    }
                });
                let sub = self
                    .inner
                    .bus
                    .subscribe_handler(&ch, self.inner.opts.channel_size, false, on_stream)
                    .await?;
                let mut subs = self.inner.subs.lock().unwrap_or_else(|e| e.into_inner());
                if self.is_closed() {
                    return Err(Error::client_closed());
                }
                subs.push(sub);
                Ok(())
            })
            .await
            .map(|_| ())
    }

    /// Opens a stream (client side).
    pub(super) async fn open_stream<S, R>(
        &self,
        method: &MethodInfo,
        topic: Vec<String>,
        opts: CallOptions,
    ) -> Result<ClientStream<S, R>>
    where
        S: Message + Clone + 'static,
        R: Message + Default + Clone + 'static,
    {
        if self.is_closed() {
            return Err(Error::client_closed());
        }
        self.ensure_stream_channel().await?;
        let inner = &self.inner;
        let t = self.timeout(&opts);
        let stream_id = id::new_id(id::STREAM_PREFIX);
        let request_id = id::new_request_id();
        let info = Arc::new(self.info(method, &topic));
        let chans = self.method_channels(method, &topic);
        let out = chans
            .stream_server
            .get_or_init(|| {
                Arc::new(channels::stream_server_channel(
                    &inner.service,
                    &method.name,
                    &topic,
                ))
            })
            .clone();
        let (shared, rx) = stream::Shared::<R>::new(StreamParams {
            stream_id: stream_id.clone(),
            info,
            bus: inner.bus.clone(),
            out: out.clone(),
            timeout: t,
            buffer: inner.opts.channel_size,
            table: Arc::downgrade(&inner.streams),
            interceptors: StreamInterceptors::Client(inner.interceptors.clone()),
        });
        let ack = shared.expect_ack(&request_id);
        {
            // Checked under the table lock, so close() cannot miss it.
            let mut table = inner.streams.lock().unwrap_or_else(|e| e.into_inner());
            if self.is_closed() {
                return Err(Error::client_closed());
            }
            table.insert(stream_id.as_bytes().into(), shared.clone());
        }
        let claims = if method.require_claim {
            Some(self.register(&request_id)?)
        } else {
            None
        };
        let now = wire::now_ns();
        let open = wire::Stream {
            stream_id,
            request_id: request_id.clone(),
            sent_at: now,
            expiry: now.saturating_add(t.as_nanos() as i64),
            body: Some(StreamBody::Open(StreamOpen {
                node_id: inner.id.clone(),
                metadata: opts.metadata.clone(),
            })),
        };
        let deadline = call_deadline(t, &opts);
        let cancel = opts.context.cancel_token();
        let opened = async {
            self.publish(&out, &open, deadline).await?;
            if let Some((mut rx, _guard)) = claims {
                let defaults;
                let sel = match &opts.selection {
                    Some(s) => s,
                    None => {
                        defaults = if method.affinity_enabled {
                            SelectionOptions::affinity_defaults(inner.opts.selection_timeout)
                        } else {
                            SelectionOptions::queue_defaults(inner.opts.selection_timeout)
                        };
                        &defaults
                    }
                };
                let selected =
                    select_server(&mut rx, sel, Some(deadline), cancel, SelectFlags::default())
                        .await?;
                let Some(server_id) = selected.server_id() else {
                    return Err(Error::no_response());
                };
                let claim = ClaimResponse {
                    request_id: request_id.clone(),
                    server_id,
                };
                self.publish(&chans.claim_response, &claim, deadline)
                    .await?;
            }
            tokio::select! {
                biased;
                r = ack => r.map_err(|_| shared.cause().unwrap_or_else(Error::stream_closed)),
                _ = tokio::time::sleep_until(deadline) => Err(if opts.context.is_canceled() {
                    Error::request_canceled()
                } else {
                    Error::request_timed_out()
                }),
                _ = cancelled_opt(cancel) => Err(Error::request_canceled()),
            }
        };
        if let Err(e) = opened.await {
            shared.forget_ack(&request_id);
            // Tells the servers in the background: the caller has waited enough.
            // The interceptors did not see an open: nor do they see this.
            shared.close_detached(e.clone(), stream::CloseReason::Closed);
            return Err(e);
        }
        shared.open_interceptors();
        shared.watch_peer(inner.opts.stream_liveness, true);
        watch_context(&shared, &opts.context);
        Ok(ClientStream::new(shared, rx, opts.context))
    }
}

/// Closes a client stream when the caller's context ends (as Go does,
/// "client lifetime coupling").
fn watch_context<R: Message + Default + Clone + 'static>(
    shared: &Arc<stream::Shared<R>>,
    ctx: &Context,
) {
    if ctx.deadline().is_none() && ctx.cancel_token().is_none() {
        return;
    }
    let (shared, ctx) = (shared.clone(), ctx.clone());
    tokio::spawn(async move {
        tokio::select! {
            _ = shared.done().cancelled() => {}
            _ = sleep_until_opt(ctx.deadline().map(Instant::from_std)) => {
                let cause = Error::new(ErrorCode::Unknown, "context deadline exceeded");
                shared.close_detached(cause, stream::CloseReason::Context);
            }
            _ = ctx.canceled() => {
                let cause = Error::new(ErrorCode::Unknown, "context canceled");
                shared.close_detached(cause, stream::CloseReason::Context);
            }
        }
    });
}

/// A stream being opened; `.await` opens it.
#[must_use = "a stream is not opened until awaited"]
pub struct StreamCall<'a, S, R> {
    client: &'a RpcClient,
    method: &'a MethodInfo,
    topic: Vec<String>,
    opts: CallOptions,
    _p: PhantomData<fn(S) -> R>,
}

impl<S, R> StreamCall<'_, S, R> {
    call_builder_methods!();
}

impl<'a, S, R> IntoFuture for StreamCall<'a, S, R>
where
    S: Message + Clone + 'static,
    R: Message + Default + Clone + 'static,
{
    type Output = Result<ClientStream<S, R>>;
    type IntoFuture = BoxFuture<'a, Result<ClientStream<S, R>>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            self.client
                .open_stream(self.method, self.topic, self.opts)
                .await
        })
    }
}
