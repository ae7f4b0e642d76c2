//! Unary calls: [`UnaryCall`] and the unary path.

use std::future::IntoFuture;
use std::marker::PhantomData;
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use prost::Message;

use super::{CallOptions, Interceptors, RpcClient, SendFn, call_deadline};
use crate::bus::MessageBus;
use crate::error::{Error, ErrorCode, Result};
use crate::id;
use crate::info::{Context, Metadata, MethodInfo};
use crate::interceptor::Unary;
use crate::method::Method;
use crate::select::{
    Incoming, SelectFlags, Selected, SelectionOptions, cancelled_opt, select_server,
};
use crate::topic::Topic;
use crate::wire::{self, ClaimResponse, Request};

impl RpcClient {
    /// Starts a unary call of `method` on `topic` (`()` for none) with
    /// `req`; set options on the returned builder and `.await` it for the
    /// method's response type.
    pub fn unary<'a, Req, Res>(
        &'a self,
        method: &'a Method<Req, Res>,
        topic: impl Into<Topic>,
        req: Req,
    ) -> UnaryCall<'a, Req, Res>
    where
        Req: Message + 'static,
        Res: Message + Default + 'static,
    {
        UnaryCall {
            client: self,
            method: &method.info,
            topic: topic.into().into_parts(),
            req,
            opts: CallOptions::default(),
            interceptors: Vec::new(),
            _res: PhantomData,
        }
    }

    /// One unary call on raw request bytes; returns the raw response bytes.
    pub(crate) async fn call_unary_raw(
        &self,
        method: &MethodInfo,
        topic: &[String],
        raw_request: Bytes,
        opts: &CallOptions,
    ) -> Result<Bytes> {
        if self.is_closed() {
            return Err(Error::client_closed());
        }
        if method.queue
            && opts.selection.as_ref().is_some_and(|s| {
                s.selection_fn.is_some() || s.minimum_affinity > 0.0 || s.maximum_affinity > 0.0
            })
        {
            // One server hears a queue request: there is nothing to choose.
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                format!(
                    "{}: affinity selection is not valid on a queue rpc",
                    method.name
                ),
            ));
        }
        let t = self.timeout(opts);
        let now_ns = wire::now_ns();
        let mut expiry = now_ns.saturating_add(t.as_nanos() as i64);
        if let Some(rem) = opts.context.remaining() {
            // Clamp the expiry to the caller's deadline (Go HEAD 220fe5f).
            expiry = expiry.min(now_ns.saturating_add(rem.as_nanos() as i64));
        }
        // Encoded here, so that the call's future does not hold the request.
        let (request_id, request) = {
            let req = Request {
                request_id: id::new_request_id(),
                client_id: self.inner.id.clone(),
                sent_at: now_ns,
                expiry,
                multi: false,
                metadata: opts.metadata.clone(),
                raw_request,
                // Advertises that this client understands announcements (claim
                // skip), on every unary request of a queue method, as Go does.
                skip_claim: method.queue,
                ..Default::default()
            };
            let bytes = self.inner.bus.compression().encode(&req);
            (req.request_id, bytes)
        };
        let (mut rx, _guard) = self.register(&request_id)?;
        let chans = self.method_channels(method, topic);
        let deadline = call_deadline(t, opts);
        self.publish_bytes(&chans.request, request, deadline)
            .await?;

        let cancel = opts.context.cancel_token();

        if method.require_claim {
            let flags = SelectFlags {
                announcements: method.queue,
                responses: true,
                errors_final: method.queue,
            };
            // Boxed, with the default options it may need: the selection's
            // timers and state would otherwise be room in every call's
            // future, over a kilobyte.
            let selection = Box::pin(async {
                let defaults;
                let sel = match &opts.selection {
                    Some(s) => s,
                    None => {
                        let timeout = self.inner.opts.selection_timeout;
                        defaults = if method.affinity_enabled {
                            SelectionOptions::affinity_defaults(timeout)
                        } else {
                            SelectionOptions::queue_defaults(timeout)
                        };
                        &defaults
                    }
                };
                select_server(&mut rx, sel, Some(deadline), cancel, flags).await
            });
            match selection.await? {
                Selected::Server(server_id) => {
                    let claim = ClaimResponse {
                        request_id: request_id.clone(),
                        server_id,
                    };
                    self.publish(&chans.claim_response, &claim, deadline)
                        .await?;
                }
                // The server is handling it: wait for its response, under
                // the request timeout (no grant is sent).
                Selected::Announced(server_id) => {
                    tracing::trace!(%request_id, %server_id, "psrpc client: server announced");
                }
                Selected::Response(r) => {
                    return if r.error.is_empty() {
                        Ok(r.raw_response)
                    } else {
                        Err(r.into_error())
                    };
                }
            }
        }

        loop {
            let ev = tokio::select! {
                biased;
                ev = rx.recv() => ev,
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(if opts.context.is_canceled() { Error::request_canceled() } else { Error::request_timed_out() });
                }
                _ = cancelled_opt(cancel) => return Err(Error::request_canceled()),
            };
            match ev {
                None => return Err(Error::client_closed()),
                Some(Incoming::Claim(_)) => continue,
                Some(Incoming::Response(r)) => {
                    if !r.error.is_empty() {
                        return Err(r.into_error());
                    }
                    return Ok(r.raw_response);
                }
            }
        }
    }
}

/// A unary call being built; `.await` sends it.
#[must_use = "a call does nothing until awaited"]
pub struct UnaryCall<'a, Req, Res> {
    client: &'a RpcClient,
    method: &'a MethodInfo,
    topic: Vec<String>,
    req: Req,
    opts: CallOptions,
    interceptors: Interceptors,
    _res: PhantomData<fn() -> Res>,
}

impl<Req, Res> UnaryCall<'_, Req, Res> {
    call_builder_methods!();
    call_interceptor_method!();
}

impl<'a, Req, Res> IntoFuture for UnaryCall<'a, Req, Res>
where
    Req: Message + 'static,
    Res: Message + Default + 'static,
{
    type Output = Result<Res>;
    type IntoFuture = BoxFuture<'a, Result<Res>>;

    fn into_future(self) -> Self::IntoFuture {
        let (client, method, topic, request, opts, interceptors) = encoded_call_parts!(self);
        let f = client.unary_bytes(method, topic, request, opts, interceptors);
        Box::pin(f.map(|r| r.and_then(decode_response::<Res>)))
    }
}

impl RpcClient {
    /// One unary call on encoded bytes, through the interceptors when
    /// there are any.
    pub(crate) async fn unary_bytes(
        &self,
        method: &MethodInfo,
        topic: Vec<String>,
        request: Bytes,
        opts: CallOptions,
        interceptors: Interceptors,
    ) -> Result<Bytes> {
        match self.chain(interceptors) {
            None => self.call_unary_raw(method, &topic, request, &opts).await,
            Some(chain) => {
                let send: SendFn<Unary> = |t, request, opts| {
                    Box::pin(async move {
                        t.client
                            .call_unary_raw(&t.method, &t.topic, request, &opts)
                            .await
                    })
                };
                self.intercepted::<Unary>(chain, method, &topic, request, opts, send)
                    .await
            }
        }
    }
}

pub(super) fn decode_response<Res: Message + Default>(b: Bytes) -> Result<Res> {
    Res::decode(b).map_err(|e| Error::wrap(ErrorCode::MalformedResponse, e))
}
