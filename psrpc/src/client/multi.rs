//! Multi calls: [`MultiCall`], [`MultiResponses`] and [`RawMultiResponses`].

use std::future::{Future, IntoFuture};
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use prost::Message;

use super::unary::{decode_boxed, decode_response};
use super::{
    CallOptions, PendingGuard, RpcClient, call_deadline, run_request_hooks, run_response_hooks,
    with_call_interceptors,
};
use crate::error::{Error, Result};
use crate::id;
use crate::info::{
    BoxMessage, Context, DynMessage, Metadata, MethodInfo, RpcInfo, downcast_message,
};
use crate::interceptor::{
    MultiCallInterceptor, MultiInterceptor, MultiSendNext, MultiTerminal, multi_recv,
};
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
        Req: Message + Clone + 'static,
        Res: Message + Default + Clone + 'static,
    {
        MultiCall {
            client: self,
            method: &method.info,
            topic: topic.into().into_parts(),
            req,
            opts: CallOptions::default(),
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
    /// A multi call's send through the interceptor chains.
    async fn intercepted_multi(
        &self,
        method: &MethodInfo,
        topic: &[String],
        req: BoxMessage,
        mut opts: CallOptions,
    ) -> Result<(Option<RawMultiResponses>, MultiIntercept)> {
        let chain = with_call_interceptors(&self.inner.chains.multi, &mut opts.multi_interceptors);
        let info = self.info(method, topic);
        let mut intercept = MultiIntercept {
            calls: chain.iter().map(|i| i.begin(&info)).collect(),
            ready: Default::default(),
            closed: false,
        };
        let slot = Arc::new(Mutex::new(None));
        let terminal: MultiTerminal = {
            let (client, method, topic, slot) =
                (self.clone(), method.clone(), topic.to_vec(), slot.clone());
            Arc::new(move |req: BoxMessage, opts: CallOptions| {
                let (client, method, topic, slot) =
                    (client.clone(), method.clone(), topic.clone(), slot.clone());
                Box::pin(async move {
                    let raw = Bytes::from(req.to_bytes());
                    let res = client.call_multi_raw(&method, &topic, raw, &opts).await?;
                    *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(res);
                    Ok(())
                })
            })
        };
        MultiSendNext::new(&mut intercept.calls, &terminal)
            .run(req, opts)
            .await?;
        let raw = slot.lock().unwrap_or_else(|e| e.into_inner()).take();
        Ok((raw, intercept))
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
    _res: PhantomData<fn() -> Res>,
}

impl<Req, Res> MultiCall<'_, Req, Res> {
    call_builder_methods!();

    /// Adds a multi interceptor for this call only, inside the client's own.
    pub fn interceptor(mut self, i: impl MultiInterceptor) -> Self {
        self.opts.multi_interceptors.push(Arc::new(i));
        self
    }
}

impl<'a, Req, Res> IntoFuture for MultiCall<'a, Req, Res>
where
    Req: Message + Clone + 'static,
    Res: Message + Default + Clone + 'static,
{
    type Output = Result<MultiResponses<Res>>;
    type IntoFuture = BoxFuture<'a, Result<MultiResponses<Res>>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let c = self.client;
            let hooks =
                !c.inner.opts.request_hooks.is_empty() || !c.inner.opts.response_hooks.is_empty();
            let info = hooks.then(|| c.info(self.method, &self.topic));
            run_request_hooks(c, &info, &self.req);
            let sent = if c.inner.chains.multi.is_empty() && self.opts.multi_interceptors.is_empty()
            {
                let raw = Bytes::from(self.req.encode_to_vec());
                c.call_multi_raw(self.method, &self.topic, raw, &self.opts)
                    .await
                    .map(|raw| (Some(raw), None))
            } else {
                c.intercepted_multi(
                    self.method,
                    &self.topic,
                    Box::new(self.req.clone()),
                    self.opts,
                )
                .await
                .map(|(raw, i)| (raw, Some(i)))
            };
            match sent {
                Ok((raw, intercept)) => Ok(MultiResponses {
                    raw,
                    hooks: info.map(|i| (c.clone(), i, Box::new(self.req) as Box<dyn DynMessage>)),
                    intercept,
                    _res: PhantomData,
                }),
                Err(e) => {
                    run_response_hooks(c, &info, &self.req, Err(&e));
                    Err(e)
                }
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
                        Err(Error::from_response(*r))
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
    /// `None` when an interceptor answered without sending.
    raw: Option<RawMultiResponses>,
    hooks: Option<(RpcClient, RpcInfo, Box<dyn DynMessage>)>,
    intercept: Option<MultiIntercept>,
    _res: PhantomData<fn() -> Res>,
}

/// The per-call interceptors of a multi call and the results they let through.
struct MultiIntercept {
    calls: Vec<Box<dyn MultiCallInterceptor>>,
    ready: std::collections::VecDeque<Result<BoxMessage>>,
    closed: bool,
}

impl MultiIntercept {
    fn close(&mut self) {
        if !self.closed {
            self.closed = true;
            for c in &mut self.calls {
                c.close();
            }
        }
    }
}

impl Drop for MultiIntercept {
    fn drop(&mut self) {
        self.close();
    }
}

impl<Res> std::fmt::Debug for MultiResponses<Res> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MultiResponses")
            .field("done", &self.raw.as_ref().is_none_or(|r| r.done))
            .finish()
    }
}

impl<Res: Message + Default + Clone + 'static> MultiResponses<Res> {
    fn next_item(&mut self, cx: &mut TaskContext<'_>) -> Poll<Option<Result<Res>>> {
        let Some(i) = &mut self.intercept else {
            return match self
                .raw
                .as_mut()
                .map(|r| futures::Stream::poll_next(Pin::new(r), cx))
            {
                Some(Poll::Ready(Some(r))) => Poll::Ready(Some(r.and_then(decode_response::<Res>))),
                Some(Poll::Pending) => Poll::Pending,
                Some(Poll::Ready(None)) | None => Poll::Ready(None),
            };
        };
        loop {
            if let Some(item) = i.ready.pop_front() {
                return Poll::Ready(Some(item.and_then(downcast_message::<Res>)));
            }
            let polled = match self.raw.as_mut() {
                Some(r) => futures::Stream::poll_next(Pin::new(r), cx),
                None => Poll::Ready(None),
            };
            match polled {
                Poll::Ready(Some(r)) => {
                    let item = r.and_then(decode_boxed::<Res>);
                    let ready = &mut i.ready;
                    multi_recv(&mut i.calls, item, &mut |it| ready.push_back(it));
                }
                Poll::Ready(None) => {
                    i.close();
                    return Poll::Ready(None);
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<Res: Message + Default + Clone + 'static> futures::Stream for MultiResponses<Res> {
    type Item = Result<Res>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        let item = match self.next_item(cx) {
            Poll::Ready(Some(item)) => item,
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => return Poll::Pending,
        };
        if let Some((c, info, req)) = &self.hooks {
            for h in &c.inner.opts.response_hooks {
                h(
                    info,
                    req.as_ref(),
                    item.as_ref().map(|r| r as &dyn DynMessage),
                );
            }
        }
        Poll::Ready(Some(item))
    }
}
