//! Multi calls: [`MultiCall`], [`MultiResponses`] and [`RawMultiResponses`].

use std::future::{Future, IntoFuture};
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use prost::Message;

use super::unary::decode_response;
use super::{CallOptions, Interceptors, PendingGuard, RpcClient, SendFn, call_deadline};
use crate::error::{Error, Result};
use crate::id;
use crate::info::{Context, Metadata, MethodInfo};
use crate::interceptor::{Multi, Replies};
use crate::method::Method;
use crate::select::{CallReceiver, Incoming, SelectionOptions, cancelled_opt, sleep_until_opt};
use crate::topic::Topic;
use crate::wire::{self, Request};

impl RpcClient {
    /// Starts a multi call of `method` on `topic` (`()` for none): every
    /// server answers. Awaiting it sends the request and gives a stream of
    /// per-server results.
    pub fn multi<'a, Req, Res>(
        &'a self,
        method: &'a Method<Req, Res>,
        topic: impl Into<Topic>,
        req: Req,
    ) -> MultiCall<'a, Req, Res>
    where
        Req: Message + 'static,
        Res: Message + Default + 'static,
    {
        MultiCall {
            client: self,
            method: &method.info,
            topic: topic.into().into_parts(),
            req,
            opts: CallOptions::default(),
            interceptors: Vec::new(),
            _res: PhantomData,
        }
    }

    /// Sends one multi request on raw bytes; the stream yields raw results.
    pub(crate) async fn call_multi_raw(
        &self,
        method: &MethodInfo,
        topic: &[String],
        raw_request: Bytes,
        opts: &CallOptions,
    ) -> Result<RawMultiResponses> {
        if self.is_closed() {
            return Err(Error::client_closed());
        }
        let t = self.timeout(opts);
        let now_ns = wire::now_ns();
        let (request_id, request) = {
            let req = Request {
                request_id: id::new_request_id(),
                client_id: self.inner.id.clone(),
                sent_at: now_ns,
                // Multi requests are not clamped, as in Go.
                expiry: now_ns.saturating_add(t.as_nanos() as i64),
                multi: true,
                metadata: opts.metadata.clone(),
                raw_request,
                ..Default::default()
            };
            let bytes = self.inner.bus.compression().encode(&req);
            (req.request_id, bytes)
        };
        let (rx, guard) = self.register(&request_id)?;
        // As in Go, the client cannot know how many servers exist, so the
        // stream ends when the timeout (from the send) or the context ends.
        let deadline = call_deadline(t, opts);
        let chans = self.method_channels(method, topic);
        self.publish_bytes(&chans.request, request, deadline)
            .await?;
        let cancel = opts.context.cancel_token().cloned();
        Ok(RawMultiResponses {
            rx,
            _guard: guard,
            end: Box::pin(async move {
                tokio::select! {
                    _ = sleep_until_opt(Some(deadline)) => {}
                    _ = cancelled_opt(cancel.as_ref()) => {}
                }
            }),
            done: false,
        })
    }
}

/// A multi call being built; `.await` sends it and gives the result stream.
#[must_use = "a call does nothing until awaited"]
pub struct MultiCall<'a, Req, Res> {
    client: &'a RpcClient,
    method: &'a MethodInfo,
    topic: Vec<String>,
    req: Req,
    opts: CallOptions,
    interceptors: Interceptors,
    _res: PhantomData<fn() -> Res>,
}

impl<Req, Res> MultiCall<'_, Req, Res> {
    call_builder_methods!();
    call_interceptor_method!();
}

impl<'a, Req, Res> IntoFuture for MultiCall<'a, Req, Res>
where
    Req: Message + 'static,
    Res: Message + Default + 'static,
{
    type Output = Result<MultiResponses<Res>>;
    type IntoFuture = BoxFuture<'a, Result<MultiResponses<Res>>>;

    fn into_future(self) -> Self::IntoFuture {
        let (client, method, topic, request, opts, interceptors) = encoded_call_parts!(self);
        let f = client.multi_bytes(method, topic, request, opts, interceptors);
        Box::pin(f.map(|r| {
            r.map(|replies| MultiResponses {
                replies,
                _res: PhantomData,
            })
        }))
    }
}

impl RpcClient {
    /// One multi call on encoded bytes, through the interceptors when
    /// there are any.
    pub(crate) async fn multi_bytes(
        &self,
        method: &MethodInfo,
        topic: Vec<String>,
        request: Bytes,
        opts: CallOptions,
        interceptors: Interceptors,
    ) -> Result<MultiSource> {
        Ok(match self.chain(interceptors) {
            None => MultiSource::Raw(self.call_multi_raw(method, &topic, request, &opts).await?),
            Some(chain) => {
                let send: SendFn<Multi> = |t, request, opts| {
                    Box::pin(async move {
                        let raw = t.client.call_multi_raw(&t.method, &t.topic, request, &opts);
                        Ok(Replies::new(raw.await?))
                    })
                };
                let replies = self.intercepted::<Multi>(chain, method, &topic, request, opts, send);
                MultiSource::Intercepted(replies.await?)
            }
        })
    }
}

/// The raw results of a multi call: one item per server response, until the
/// call's timeout (or the caller's context) ends it.
pub struct RawMultiResponses {
    rx: CallReceiver,
    _guard: PendingGuard,
    end: Pin<Box<dyn Future<Output = ()> + Send>>,
    done: bool,
}

impl futures::Stream for RawMultiResponses {
    type Item = Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        loop {
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(Incoming::Response(r))) => {
                    return Poll::Ready(Some(if r.error.is_empty() {
                        Ok(r.raw_response)
                    } else {
                        Err(r.into_error())
                    }));
                }
                Poll::Ready(Some(Incoming::Claim(_))) => continue,
                Poll::Ready(None) => {
                    // The client was closed while the call was pending.
                    self.done = true;
                    return Poll::Ready(Some(Err(Error::client_closed())));
                }
                Poll::Pending => break,
            }
        }
        match self.end.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The typed results of a multi call: a `futures::Stream` of one
/// `Result<Res>` per server that answered; it ends at the call's timeout.
pub struct MultiResponses<Res> {
    replies: MultiSource,
    _res: PhantomData<fn() -> Res>,
}

/// The encoded results, straight from the bus or through the interceptors.
pub(crate) enum MultiSource {
    Raw(RawMultiResponses),
    Intercepted(Replies),
}

impl MultiSource {
    /// The results as interceptors see them.
    pub(crate) fn into_replies(self) -> Replies {
        match self {
            MultiSource::Raw(r) => Replies::new(r),
            MultiSource::Intercepted(r) => r,
        }
    }
}

impl<Res> std::fmt::Debug for MultiResponses<Res> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let intercepted = matches!(self.replies, MultiSource::Intercepted(_));
        f.debug_struct("MultiResponses")
            .field("intercepted", &intercepted)
            .finish()
    }
}

impl<Res: Message + Default> futures::Stream for MultiResponses<Res> {
    type Item = Result<Res>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        let item = match &mut self.replies {
            MultiSource::Raw(r) => std::task::ready!(Pin::new(r).poll_next(cx)),
            MultiSource::Intercepted(r) => std::task::ready!(Pin::new(r).poll_next(cx)),
        };
        Poll::Ready(item.map(|r| r.and_then(decode_response::<Res>)))
    }
}
