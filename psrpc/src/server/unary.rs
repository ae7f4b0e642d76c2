//! Unary and multi handlers: [`UnaryHandler`] and its serving of requests.

use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use prost::Message;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::registry::HandlerParts;
use super::route::RequestAffinityFn;
use super::{ClaimOutcome, ClientChannels, Core, RpcServer};
use crate::bus::{Handler, MessageBus};
use crate::channels;
use crate::error::{Error, ErrorCode, Result};
use crate::info::{Context, IncomingHeader, MethodInfo, RpcInfo};
use crate::interceptor::{Handle, Next, ServerCall, Terminal};
use crate::wire::{self, ClaimRequest, Request, Response};

impl RpcServer {
    /// Registers `handler` for `method` on `topic` (empty: no topic) and
    /// returns once its subscriptions are in effect (see [`Route`]).
    pub(crate) async fn register_unary<Req, Res, H, Fut>(
        &self,
        method: &MethodInfo,
        topic: &[String],
        handler: H,
        affinity: Option<RequestAffinityFn<Req>>,
    ) -> Result<()>
    where
        Req: Message + Default + 'static,
        Res: Message + 'static,
        H: Fn(Context, Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Res>> + Send + 'static,
    {
        if method.queue && affinity.is_some() {
            // Only one server hears a queue request: a score means nothing.
            return Err(Error::new(
                ErrorCode::InvalidArgument,
                format!(
                    "{}: affinity function is not valid on a queue rpc",
                    method.name
                ),
            ));
        }
        let key = self.reserve(&method.name, topic)?;
        let core = &self.inner.core;
        let handler = Arc::new(handler);
        let chain = (!core.interceptors.is_empty()).then(|| {
            let handler = handler.clone();
            let terminal: Terminal<Handle> = Arc::new(move |call: ServerCall| {
                let handler = handler.clone();
                Box::pin(async move {
                    let (ctx, request, decoded) = call.into_parts();
                    let req = match decoded.and_then(|d| d.downcast::<Req>().ok()) {
                        Some(req) => *req,
                        None => Req::decode(request)
                            .map_err(|e| Error::wrap(ErrorCode::MalformedRequest, e))?,
                    };
                    let res = handler(ctx, req).await?;
                    Ok(Bytes::from(res.encode_to_vec()))
                })
            });
            Next::<Handle>::new(core.interceptors.clone(), terminal)
        });
        let req_ch = channels::rpc_channel(&core.service, &method.name, topic, method.queue);
        let h = Arc::new(UnaryHandler {
            core: core.clone(),
            method: method.clone(),
            info: self.rpc_info(method, topic),
            channel: req_ch.legacy.clone(),
            handler,
            chain,
            affinity,
            _p: PhantomData,
        });
        let stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        let on_request: Handler = {
            let (stop, tracker) = (stop.clone(), tracker.clone());
            Arc::new(move |bytes| {
                if !stop.is_cancelled() {
                    h.on_request(bytes, &tracker);
                }
            })
        };
        let parts = HandlerParts {
            key,
            stop,
            tracker,
            streams: None,
        };
        self.subscribe_method(method, topic, &req_ch, method.queue, on_request, parts)
            .await?;
        self.discovered(method, topic, false);
        Ok(())
    }
}

pub(super) struct UnaryHandler<Req, Res, H> {
    core: Arc<Core>,
    method: MethodInfo,
    info: Arc<RpcInfo>,
    /// The request channel (legacy name), for drop reports.
    channel: String,
    handler: Arc<H>,
    /// The interceptor chain ending in `handler`, when there are interceptors.
    chain: Option<Next<Handle>>,
    affinity: Option<RequestAffinityFn<Req>>,
    _p: PhantomData<fn() -> Res>,
}

impl<Req, Res, H, Fut> UnaryHandler<Req, Res, H>
where
    Req: Message + Default + 'static,
    Res: Message + 'static,
    H: Fn(Context, Req) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Res>> + Send + 'static,
{
    /// Takes one request off the bus (in the bus's handler: nothing here
    /// waits): checks it, claims it if the method is claimed, and starts
    /// its handler task once this server has it.
    pub(super) fn on_request(self: &Arc<Self>, bytes: Bytes, tracker: &TaskTracker) {
        let name = || {
            let i = &self.info;
            channels::rpc_channel(&i.service, &self.method.name, &i.topic, self.method.queue).legacy
        };
        let Some(req) = crate::bus::receive_envelope::<Request>(&*self.core.bus, name, bytes)
        else {
            return;
        };
        let Some(budget) = self.core.arrived(
            &self.info,
            &self.channel,
            &req.request_id,
            req.sent_at,
            req.expiry,
        ) else {
            return;
        };
        let deadline = Instant::now() + budget;
        let Some(chans) = self.core.client_channels(&req.client_id) else {
            return;
        };
        let msg = match Req::decode(req.raw_request.clone()) {
            Ok(m) => m,
            Err(e) => {
                // Answered before any claim, as Go does.
                let err = Error::wrap(ErrorCode::MalformedRequest, e);
                let h = self.clone();
                tracker.spawn(async move {
                    let r = h.response(req.request_id, Err(err));
                    h.core.publish(&chans.response, &r).await;
                });
                return;
            }
        };
        if self.method.require_claim {
            // Claim skip: only a caller that advertises it gets an
            // announcement, only on a queue method (one server hears the
            // request), and only while the operator's switch says so.
            if req.skip_claim
                && self.method.queue
                && self.core.skip_claim.as_ref().is_some_and(|f| f())
            {
                tracker.spawn(self.clone().announce_and_run(req, msg, deadline, chans));
                return;
            }
            let affinity = self.affinity.as_ref().map_or(1.0, |f| f(&msg));
            let claim = chans.claim.clone();
            let (h, t) = (self.clone(), tracker.clone());
            self.core.claim_then(
                &self.info,
                req.request_id.clone(),
                &claim,
                affinity,
                deadline,
                tracker.token(),
                // Boxed: the request's future is large, and a task's
                // future is moved several times on its way into the task
                // and through its stages; a box moves as a pointer.
                move || {
                    t.spawn(Box::pin(h.run(req, msg, deadline, chans)));
                },
            );
        } else {
            // Boxed, as above.
            tracker.spawn(Box::pin(self.clone().run(req, msg, deadline, chans)));
        }
    }

    /// Claim skip: tells the caller this server is handling the request
    /// (no grant awaited), then runs it. If the announcement cannot be
    /// published the handler does not run: the caller will time out and
    /// may retry, and must not find the request already run here.
    pub(super) async fn announce_and_run(
        self: Arc<Self>,
        req: Request,
        msg: Req,
        deadline: Instant,
        chans: Arc<ClientChannels>,
    ) {
        let announcement = ClaimRequest {
            request_id: req.request_id.clone(),
            server_id: self.core.id.clone(),
            affinity: 1.0,
            handling: true,
        };
        let sent = tokio::time::timeout_at(
            deadline,
            (*self.core.bus).publish(
                &chans.claim,
                self.core.bus.compression().encode(&announcement),
            ),
        )
        .await;
        match sent {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(channel = %chans.claim.legacy, error = %e, "psrpc server: announcement not sent, request not handled");
                return;
            }
            Err(_) => {
                tracing::warn!(channel = %chans.claim.legacy, "psrpc server: announcement not sent before the request expired, request not handled");
                return;
            }
        }
        self.core
            .observe(|o| o.claim_settled(&self.info, ClaimOutcome::Skipped, Duration::ZERO));
        self.run(req, msg, deadline, chans).await;
    }

    /// Runs the handler for a request this server has, and answers.
    pub(super) async fn run(
        self: Arc<Self>,
        req: Request,
        msg: Req,
        deadline: Instant,
        chans: Arc<ClientChannels>,
    ) {
        let core = &*self.core;
        let _counted = core.discovery.as_ref().map(|d| d.call_started());
        let Request {
            request_id,
            client_id,
            sent_at,
            metadata,
            raw_request,
            ..
        } = req;
        let header = IncomingHeader {
            remote_id: client_id,
            sent_at: UNIX_EPOCH + Duration::from_nanos(sent_at.max(0) as u64),
            metadata,
        };
        let ctx = Context::new()
            .with_deadline(deadline.into_std())
            .with_incoming(header, self.info.clone());
        let result = match &self.chain {
            None => (self.handler)(ctx, msg)
                .await
                .map(|r| Bytes::from(r.encode_to_vec())),
            Some(next) => {
                // The interceptors see the request as it arrived; the
                // handler gets what was decoded on arrival, unless an
                // interceptor replaced the bytes.
                let call = ServerCall::new(self.info.clone(), ctx, raw_request)
                    .with_decoded(Box::new(msg));
                next.clone().run(call).await
            }
        };
        let (request_id, bytes) = {
            let response = self.response(request_id, result);
            let bytes = core.bus.compression().encode(&response);
            (response.request_id, bytes)
        };
        if let Err(e) = (*core.bus).publish(&chans.response, bytes).await {
            // Boxed: what this rare path holds would otherwise be room in
            // every request's future, and a future over a kilobyte misses
            // the allocator's per-thread cache.
            Box::pin(self.publish_failed(request_id, &chans, e)).await;
        }
    }

    /// A response could not be published: one the bus cannot carry is
    /// answered at once with that error rather than left to the caller's
    /// deadline; any other failure is logged.
    async fn publish_failed(&self, request_id: String, chans: &ClientChannels, e: Error) {
        if e.code() == ErrorCode::ResourceExhausted {
            let err = Error::new(
                ErrorCode::ResourceExhausted,
                format!("the response cannot be sent: {}", e.message()),
            );
            let r = self.response(request_id, Err(err));
            self.core.publish(&chans.response, &r).await;
        } else {
            tracing::warn!(channel = %chans.response.legacy, error = %e, "psrpc server: publish failed");
        }
    }

    pub(super) fn response(&self, request_id: String, result: Result<Bytes>) -> Response {
        let mut r = Response {
            request_id,
            server_id: self.core.id.clone(),
            sent_at: wire::now_ns(),
            ..Default::default()
        };
        match result {
            Ok(res) => r.raw_response = res,
            Err(e) => {
                // An error never travels as code "" (that reads as no code),
                // nor with an empty message (a Go client reads a response
                // with an empty error as a success).
                r.code = match e.code() {
                    ErrorCode::Ok => ErrorCode::Unknown.as_str(),
                    _ => e.wire_code(),
                }
                .to_owned();
                r.error = if e.message().is_empty() {
                    r.code.clone()
                } else {
                    e.message().to_owned()
                };
                r.error_details = e.details().to_vec();
            }
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::bus::{LocalBus, MessageBus};
    use crate::client::{ClientOptions, RpcClient};
    use crate::drops::DropReason;
    use crate::method::Method;
    use crate::server::ServerOptions;
    use crate::testing::TestBus;
    use crate::wire::Envelope;

    /// The local bus, except that nothing can be published to a client's
    /// claim channel (as when the broker refuses the publish).
    fn no_claims(bus: LocalBus) -> TestBus {
        TestBus::new(bus).publish_interceptor(|channel, msg, next| async move {
            if channel.legacy.ends_with("|CLAIM") {
                return Err(Error::new(ErrorCode::Unavailable, "publish refused"));
            }
            next.publish(channel, msg).await
        })
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct N {
        #[prost(int64, tag = "1")]
        n: i64,
    }

    /// Claim responses are read in place, and one whose ids are not UTF-8
    /// (prost refuses it) is counted as malformed and changes nothing: not
    /// a claim of this server's, not the decisions it remembers (on a
    /// method every server hears). Good ones settle a claim, or are
    /// remembered when nobody here waited.
    #[tokio::test]
    async fn claim_responses_are_checked_before_used() {
        static A: Method<N, N> = Method::affinity("A");
        let bus = LocalBus::new();
        let s = RpcServer::new(bus.clone(), "S", ServerOptions::default())
            .await
            .unwrap();
        s.route(&A)
            .affinity(|_: &N| 1.0)
            .handle(|_ctx: Context, req: N| async move { Ok(req) })
            .await
            .unwrap();
        let url = wire::ClaimResponse::TYPE_URL;
        let response = |ids: &[u8]| wire::encode_msg_raw(url, ids);
        let ch = crate::channels::claim_response_channel("S", "A", &[]);
        let malformed = || bus.drops().count(DropReason::Malformed);
        let before = malformed();
        // The local bus runs the server's handlers in the publish: each
        // message below has been dealt with when its publish returns.

        // A claim of this server's: a request published by hand.
        let now = wire::now_ns();
        let request = wire::Request {
            request_id: "REQ_pending".into(),
            client_id: "CLI_x".into(),
            sent_at: now,
            expiry: now + 20_000_000_000,
            raw_request: prost::Message::encode_to_vec(&N { n: 1 }).into(),
            ..Default::default()
        };
        let req_ch = crate::channels::rpc_channel("S", "A", &[], false);
        bus.publish(&req_ch, wire::encode_msg(&request))
            .await
            .unwrap();
        assert_eq!(s.pending_claims(), 1, "no claim made");
        // Its request id with a server id that is not UTF-8: counted, the
        // claim still waits.
        let bad_server = response(b"\x0a\x0bREQ_pending\x12\x01\xff");
        bus.publish(&ch, bad_server).await.unwrap();
        assert_eq!(malformed(), before + 1);
        assert_eq!(
            s.pending_claims(),
            1,
            "a malformed response settled a claim"
        );
        // Another server won it.
        bus.publish(&ch, response(b"\x0a\x0bREQ_pending\x12\x01x"))
            .await
            .unwrap();
        assert_eq!(s.pending_claims(), 0);

        // Nobody waited: a request id that is not UTF-8 is counted, a good
        // one remembered.
        let table = s.claim_table_entries();
        bus.publish(&ch, response(b"\x0a\x02\xff\xfe\x12\x01x"))
            .await
            .unwrap();
        assert_eq!(malformed(), before + 2);
        bus.publish(&ch, response(b"\x0a\x02ok\x12\x01x"))
            .await
            .unwrap();
        assert_eq!(
            s.claim_table_entries(),
            table + 2,
            "one decision, in two entries"
        );
        assert_eq!(malformed(), before + 2);
        s.shutdown().await;
    }

    /// An announcement that cannot be published means the handler does not
    /// run: the caller, which never heard of it, may retry elsewhere.
    #[tokio::test]
    async fn failed_announcement_runs_nothing() {
        static M: Method<N, N> = Method::queue("M");
        let bus = LocalBus::new();
        let s = RpcServer::new(
            no_claims(bus.clone()),
            "S",
            ServerOptions::default().skip_claim(|| true),
        )
        .await
        .unwrap();
        let ran = Arc::new(AtomicUsize::new(0));
        let r = ran.clone();
        s.route(&M)
            .handle(move |_ctx: Context, req: N| {
                r.fetch_add(1, Ordering::SeqCst);
                async move { Ok(req) }
            })
            .await
            .unwrap();
        let c = RpcClient::new(bus, "S", ClientOptions::default())
            .await
            .unwrap();
        let e = c
            .unary(&M, (), N { n: 1 })
            .timeout(Duration::from_secs(2))
            .await
            .expect_err("nobody announced");
        assert_eq!(e.code(), ErrorCode::Unavailable);
        assert_eq!(ran.load(Ordering::SeqCst), 0, "the handler ran unannounced");
        s.shutdown().await;
    }

    /// With an interceptor installed the handler gets the request decoded
    /// on arrival; one that replaces the bytes has its request handled.
    #[tokio::test]
    async fn handler_gets_what_interceptors_pass_on() {
        use crate::interceptor::{self, Handle, Next, ServerCall};
        static M: Method<N, N> = Method::queue("M");
        let bus = LocalBus::new();
        // Doubles odd requests; passes even ones on untouched.
        let double =
            interceptor::handle_fn(|mut call: ServerCall, next: Next<Handle>| async move {
                let n = M.decode_request(call.request())?.n;
                if n % 2 == 1 {
                    call.set_request(M.encode_request(&N { n: n * 2 }));
                }
                next.run(call).await
            });
        let s = RpcServer::new(
            bus.clone(),
            "S",
            ServerOptions::default().interceptor(double),
        )
        .await
        .unwrap();
        s.route(&M)
            .handle(|_ctx: Context, req: N| async move { Ok(req) })
            .await
            .unwrap();
        let c = RpcClient::new(bus, "S", ClientOptions::default())
            .await
            .unwrap();
        assert_eq!(c.unary(&M, (), N { n: 3 }).await.unwrap().n, 6);
        assert_eq!(c.unary(&M, (), N { n: 4 }).await.unwrap().n, 4);
        s.shutdown().await;
    }
}
