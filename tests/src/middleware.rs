//! Interceptor and middleware behaviours, as Go psrpc's tests check them, and
//! streams over the laggy and unreliable test buses, each a function over a
//! [`BusFactory`].

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use psrpc::interceptor::{
    self, ClientCall, ClientInterceptor, Handle, Multi, Next, Replies, Role, ServerCall,
    ServerInterceptor, Unary,
};
use psrpc::middleware::metrics::{Metrics, MetricsObserver};
use psrpc::middleware::recovery::Recovery;
use psrpc::middleware::retry::{Retry, RetryOptions};
use psrpc::middleware::trace::{TRACEPARENT, TraceParent, Tracing};
use psrpc::testing::{FailureRate, LaggyBus, UnreliableBus};
use psrpc::{
    ClientOptions, Context, Error, ErrorCode, Method, RpcClient, RpcInfo, RpcServer, ServerStream,
};

use crate::streams::{PING_PONG, num};
use crate::suite::settle;
use crate::{BusFactory, Num};

const WAIT: Duration = Duration::from_secs(3);

static UNARY: Method<Num, Num> = Method::queue("Unary");
static MULTI: Method<Num, Num> = Method::multi("Multi");

type Trace = Arc<Mutex<String>>;

fn push(t: &Trace, s: &str) {
    t.lock().unwrap().push_str(s);
}

/// A server interceptor that records `key` before and after `next`.
fn server_tracer(trace: &Trace, key: &'static str) -> impl ServerInterceptor {
    let trace = trace.clone();
    interceptor::handle_fn(move |call: ServerCall, next: Next<Handle>| {
        let trace = trace.clone();
        async move {
            push(&trace, key);
            let r = next.run(call).await;
            push(&trace, key);
            r
        }
    })
}

/// A client interceptor that records `key` around `next` and adds a
/// metadata entry `key` (the "context value" of the Go test).
fn client_tracer(trace: &Trace, key: &'static str) -> impl ClientInterceptor {
    let trace = trace.clone();
    interceptor::unary_fn(move |mut call: ClientCall, next: Next<Unary>| {
        let trace = trace.clone();
        async move {
            push(&trace, key);
            call.options_mut()
                .metadata
                .insert(format!("k{key}"), key.into());
            let r = next.run(call).await;
            push(&trace, key);
            r
        }
    })
}

/// I1: five server interceptors run outermost-first around a handler that
/// panics; recovery (innermost) turns the panic into `internal`, which the
/// outer logger observes; the server keeps serving.
pub async fn interceptors_server_order_and_recovery(f: &dyn BusFactory) {
    let trace: Trace = Default::default();
    let logged: Arc<Mutex<Option<ErrorCode>>> = Default::default();
    let logger = {
        let logged = logged.clone();
        interceptor::handle_fn(move |call: ServerCall, next: Next<Handle>| {
            let logged = logged.clone();
            async move {
                let r = next.run(call).await;
                *logged.lock().unwrap() = r.as_ref().err().map(|e| e.code());
                r
            }
        })
    };
    let opts = f
        .server_options()
        .interceptor(logger)
        .interceptor(server_tracer(&trace, "1"))
        .interceptor(server_tracer(&trace, "2"))
        .interceptor(server_tracer(&trace, "3"))
        .interceptor(Recovery);
    let s = RpcServer::new(f.connect().await, "icpt_server", opts)
        .await
        .unwrap();
    let t = trace.clone();
    s.route(&UNARY)
        .handle(move |_ctx: Context, req: Num| {
            let t = t.clone();
            async move {
                push(&t, "4");
                if req.n == 1 {
                    panic!("handler panics on purpose");
                }
                Ok(num(req.n, "fine"))
            }
        })
        .await
        .unwrap();
    let c = RpcClient::new(f.connect().await, "icpt_server", ClientOptions::default())
        .await
        .unwrap();
    settle(f).await;
    let e = c
        .unary(&UNARY, (), num(1, ""))
        .await
        .expect_err("the panic is an error");
    assert_eq!(e.code(), ErrorCode::Internal);
    assert!(e.message().starts_with("Caught server panic"), "{e}");
    assert!(e.message().contains("handler panics on purpose"), "{e}");
    assert_eq!(*trace.lock().unwrap(), "1234321");
    assert_eq!(*logged.lock().unwrap(), Some(ErrorCode::Internal));
    // The server survived and serves the next call.
    let ok = c.unary(&UNARY, (), num(2, "")).await.unwrap();
    assert_eq!(ok.text, "fine");
    s.shutdown().await;
}

/// I2: client interceptors run outermost-first, per-call ones inside them;
/// each one's metadata reaches the server; the server's error comes back
/// unchanged through the chain.
pub async fn interceptors_client_order(f: &dyn BusFactory) {
    let trace: Trace = Default::default();
    let s = RpcServer::new(f.connect().await, "icpt_client", f.server_options())
        .await
        .unwrap();
    let t = trace.clone();
    s.route(&UNARY)
        .handle(move |ctx: Context, _req: Num| {
            let t = t.clone();
            async move {
                push(&t, "4");
                let keys: Vec<_> = ctx.metadata().keys().cloned().collect();
                Err::<Num, _>(Error::new(
                    ErrorCode::NotFound,
                    format!("no response; saw {}", keys.join(",")),
                ))
            }
        })
        .await
        .unwrap();
    let opts = ClientOptions::default()
        .interceptor(client_tracer(&trace, "1"))
        .interceptor(client_tracer(&trace, "2"));
    let c = RpcClient::new(f.connect().await, "icpt_client", opts)
        .await
        .unwrap();
    settle(f).await;
    let e = c
        .unary(&UNARY, (), num(0, ""))
        .interceptor(client_tracer(&trace, "3"))
        .await
        .expect_err("the server's error");
    assert_eq!(*trace.lock().unwrap(), "1234321");
    assert_eq!(e.code(), ErrorCode::NotFound);
    assert_eq!(e.message(), "no response; saw k1,k2,k3");
    s.shutdown().await;
}

/// Records `key` on send (before forwarding) and on every result (after
/// forwarding), adding metadata `key` to the request.
struct MultiTracer(Trace, &'static str);

impl ClientInterceptor for MultiTracer {
    fn multi<'a>(
        &'a self,
        mut call: ClientCall,
        next: Next<Multi>,
    ) -> futures::future::BoxFuture<'a, psrpc::Result<Replies>> {
        push(&self.0, self.1);
        call.options_mut()
            .metadata
            .insert(format!("k{}", self.1), self.1.into());
        let (trace, key) = (self.0.clone(), self.1);
        Box::pin(async move {
            let replies = next.run(call).await?;
            // After the inner interceptors saw the result: the outer one
            // sees it after this one records.
            Ok(Replies::new(replies.inspect(move |_| push(&trace, key))))
        })
    }
}

/// I3: multi interceptors wrap the send outermost-first and see each result
/// innermost-first; they can change a result.
pub async fn interceptors_multi_order(f: &dyn BusFactory) {
    let trace: Trace = Default::default();
    let s = RpcServer::new(f.connect().await, "icpt_multi", f.server_options())
        .await
        .unwrap();
    let t = trace.clone();
    s.route(&MULTI)
        .handle(move |ctx: Context, _req: Num| {
            let t = t.clone();
            async move {
                push(&t, "4");
                Ok(num(ctx.metadata().len() as i64, "from server"))
            }
        })
        .await
        .unwrap();
    // Rewrites every result's text, typed through the method.
    let rewrite = interceptor::multi_fn(|call: ClientCall, next: Next<Multi>| async move {
        let replies = next.run(call).await?;
        Ok(Replies::new(replies.map(|item| {
            let mut n = MULTI.decode_response(&item?)?;
            n.text = "rewritten".into();
            Ok(MULTI.encode_response(&n))
        })))
    });
    let opts = ClientOptions::default()
        .interceptor(MultiTracer(trace.clone(), "1"))
        .interceptor(MultiTracer(trace.clone(), "2"))
        .interceptor(rewrite);
    let c = RpcClient::new(f.connect().await, "icpt_multi", opts)
        .await
        .unwrap();
    settle(f).await;
    let mut results = c
        .multi(&MULTI, (), num(0, ""))
        .interceptor(MultiTracer(trace.clone(), "3"))
        .timeout(Duration::from_millis(500))
        .await
        .unwrap();
    let first = results.next().await.expect("one result").unwrap();
    assert_eq!(first.n, 3, "the server saw all three metadata entries");
    assert_eq!(first.text, "rewritten");
    assert_eq!(*trace.lock().unwrap(), "1234321");
    assert!(results.next().await.is_none());
    s.shutdown().await;
}

/// Interceptors can change the request, answer without calling `next`, and
/// replace the response; a response that does not decode is
/// `malformed_response`, not a panic.
pub async fn interceptors_modify_and_short_circuit(f: &dyn BusFactory) {
    let s = RpcServer::new(
        f.connect().await,
        "icpt_modify",
        f.server_options().interceptor(interceptor::handle_fn(
            |call: ServerCall, next: Next<Handle>| async move {
                let res = next.run(call).await?;
                let mut n = UNARY.decode_response(&res)?;
                n.text.push_str("+server-interceptor");
                Ok(UNARY.encode_response(&n))
            },
        )),
    )
    .await
    .unwrap();
    s.route(&UNARY)
        .handle(|_ctx: Context, req: Num| async move { Ok(num(req.n * 10, "handler")) })
        .await
        .unwrap();
    let c = RpcClient::new(f.connect().await, "icpt_modify", ClientOptions::default())
        .await
        .unwrap();
    settle(f).await;
    // Changes the request on the way out.
    let doubled = c
        .unary(&UNARY, (), num(2, ""))
        .interceptor(interceptor::unary_fn(
            |mut call: ClientCall, next: Next<Unary>| async move {
                if let Some(req) = call.request_of(&UNARY) {
                    let mut n = req?;
                    n.n *= 2;
                    call.set_request(UNARY.encode_request(&n));
                }
                next.run(call).await
            },
        ))
        .await
        .unwrap();
    assert_eq!(doubled.n, 40);
    assert_eq!(doubled.text, "handler+server-interceptor");
    // Answers from a cache: no server involved (another method, unserved).
    static UNSERVED: Method<Num, Num> = Method::queue("Unserved");
    let cached = c
        .unary(&UNSERVED, (), num(1, ""))
        .interceptor(interceptor::unary_fn(
            |_call: ClientCall, _next: Next<Unary>| async move {
                Ok(UNSERVED.encode_response(&num(99, "cached")))
            },
        ))
        .await
        .unwrap();
    assert_eq!((cached.n, cached.text.as_str()), (99, "cached"));
    // A response that is not the method's type is caught, not a panic.
    let e = c
        .unary(&UNSERVED, (), num(1, ""))
        .interceptor(interceptor::unary_fn(
            |_call: ClientCall, _next: Next<Unary>| async move {
                Ok(Bytes::from_static(&[0xff, 0xff, 0xff]))
            },
        ))
        .await
        .expect_err("not a Num");
    assert_eq!(e.code(), ErrorCode::MalformedResponse);
    s.shutdown().await;
}

/// Stream interceptors: a client's `stream_send` can rewrite what it sends
/// (typed through the method), and a server's `stream_recv` can refuse a
/// message, which is then neither delivered nor acknowledged (the sender's
/// send times out) while the stream goes on.
pub async fn interceptors_on_streams(f: &dyn BusFactory) {
    struct RefuseNegative;
    impl ServerInterceptor for RefuseNegative {
        fn stream_recv(&self, _info: &RpcInfo, msg: &Bytes) -> psrpc::Result<()> {
            match PING_PONG.decode_request(msg)? {
                m if m.n < 0 => Err(Error::invalid_argument("negative")),
                _ => Ok(()),
            }
        }
    }
    struct Tag;
    impl ClientInterceptor for Tag {
        fn stream_send<'a>(
            &'a self,
            mut msg: psrpc::interceptor::StreamMessage,
            next: Next<psrpc::interceptor::ClientSend>,
        ) -> futures::future::BoxFuture<'a, psrpc::Result<()>> {
            Box::pin(async move {
                let mut m = PING_PONG.decode_request(msg.message())?;
                m.text = format!("tagged {}", m.text);
                msg.set_message(PING_PONG.encode_request(&m));
                next.run(msg).await
            })
        }
    }
    let server_bus = f.connect().await;
    let s = RpcServer::new(
        server_bus.clone(),
        "icpt_stream",
        f.server_options().interceptor(RefuseNegative),
    )
    .await
    .unwrap();
    s.stream_route(&PING_PONG)
        .handle(|mut st: ServerStream<Num, Num>| async move {
            while let Some(m) = st.recv().await? {
                st.send(m).await?;
            }
            Ok(())
        })
        .await
        .unwrap();
    let c = RpcClient::new(
        f.connect().await,
        "icpt_stream",
        ClientOptions::default().interceptor(Tag),
    )
    .await
    .unwrap();
    settle(f).await;
    let mut st = c.stream(&PING_PONG, ()).await.unwrap();
    st.send(num(1, "one")).await.unwrap();
    let echo = st.recv().await.unwrap().expect("an echo");
    assert_eq!((echo.n, echo.text.as_str()), (1, "tagged one"));
    let refused = st
        .send_timeout(num(-1, "refused"), Duration::from_millis(300))
        .await
        .expect_err("refused by the server's interceptor: never acknowledged");
    assert_eq!(refused.code(), ErrorCode::DeadlineExceeded);
    let refusals = server_bus.drops().count(psrpc::drops::DropReason::Refused);
    assert_eq!(refusals, 1, "the refusal is counted");
    st.send(num(2, "two")).await.unwrap();
    let echo = st.recv().await.unwrap().expect("the stream goes on");
    assert_eq!((echo.n, echo.text.as_str()), (2, "tagged two"));
    st.close().await.unwrap();
    s.shutdown().await;
}

/// Retry: an `unavailable` answer is retried up to the bound and the last
/// error returned; a call that succeeds on the second attempt succeeds;
/// a non-retryable error is not retried.
pub async fn middleware_retry_bound(f: &dyn BusFactory) {
    let s = RpcServer::new(f.connect().await, "mw_retry", f.server_options())
        .await
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let c2 = calls.clone();
    s.route(&UNARY)
        .handle(move |_ctx: Context, req: Num| {
            let n = c2.fetch_add(1, Ordering::SeqCst);
            async move {
                match req.text.as_str() {
                    "always" => Err(Error::new(ErrorCode::Unavailable, "busy")),
                    "once" if n.is_multiple_of(2) => {
                        Err(Error::new(ErrorCode::Unavailable, "busy"))
                    }
                    "fatal" => Err(Error::new(ErrorCode::InvalidArgument, "bad")),
                    _ => Ok(num(req.n, "ok")),
                }
            }
        })
        .await
        .unwrap();
    let c = RpcClient::new(
        f.connect().await,
        "mw_retry",
        ClientOptions::default().interceptor(Retry::new(RetryOptions {
            max_attempts: 3,
            timeout: Duration::from_millis(800),
            backoff: Duration::from_millis(100),
            ..Default::default()
        })),
    )
    .await
    .unwrap();
    settle(f).await;
    let e = c
        .unary(&UNARY, (), num(1, "always"))
        .await
        .expect_err("gives up");
    assert_eq!((e.code(), e.message()), (ErrorCode::Unavailable, "busy"));
    assert_eq!(calls.swap(0, Ordering::SeqCst), 3, "exactly the bound");
    let ok = c
        .unary(&UNARY, (), num(2, "once"))
        .await
        .expect("second attempt");
    assert_eq!(ok.n, 2);
    assert_eq!(calls.swap(0, Ordering::SeqCst), 2);
    let e = c.unary(&UNARY, (), num(3, "fatal")).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::InvalidArgument);
    assert_eq!(calls.load(Ordering::SeqCst), 1, "not retried");
    s.shutdown().await;
}

/// One observed measurement.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    Unary {
        role: Role,
        method: String,
        error: Option<String>,
        request_bytes: usize,
        response_bytes: usize,
    },
    Multi {
        role: Role,
        method: String,
        responses: usize,
        errors: usize,
        request_bytes: usize,
        response_bytes: usize,
    },
    StreamOpen(Role),
    StreamSend(Role, usize, bool),
    StreamRecv(Role, usize),
    /// The stream ended: for what reason, and whether cleanly.
    StreamClose(Role, psrpc::CloseReason, bool),
}

#[derive(Default)]
struct Recorder(Mutex<Vec<Seen>>);

impl Recorder {
    fn take(&self) -> Vec<Seen> {
        std::mem::take(&mut self.0.lock().unwrap())
    }
}

impl MetricsObserver for Recorder {
    fn on_unary_request(
        &self,
        role: Role,
        info: &RpcInfo,
        _d: Duration,
        error: Option<&Error>,
        request_bytes: usize,
        response_bytes: usize,
    ) {
        assert_eq!(info.service, "mw_metrics");
        self.0.lock().unwrap().push(Seen::Unary {
            role,
            method: info.method.clone(),
            error: error.map(|e| e.code().as_str().to_owned()),
            request_bytes,
            response_bytes,
        });
    }
    fn on_multi_request(
        &self,
        role: Role,
        info: &RpcInfo,
        _d: Duration,
        responses: usize,
        errors: usize,
        request_bytes: usize,
        response_bytes: usize,
    ) {
        self.0.lock().unwrap().push(Seen::Multi {
            role,
            method: info.method.clone(),
            responses,
            errors,
            request_bytes,
            response_bytes,
        });
    }
    fn on_stream_send(&self, role: Role, _i: &RpcInfo, _d: Duration, e: Option<&Error>, b: usize) {
        self.0
            .lock()
            .unwrap()
            .push(Seen::StreamSend(role, b, e.is_none()));
    }
    fn on_stream_recv(&self, role: Role, _i: &RpcInfo, b: usize) {
        self.0.lock().unwrap().push(Seen::StreamRecv(role, b));
    }
    fn on_stream_open(&self, role: Role, _i: &RpcInfo) {
        self.0.lock().unwrap().push(Seen::StreamOpen(role));
    }
    fn on_stream_close(&self, role: Role, _i: &RpcInfo, reason: psrpc::CloseReason, e: &Error) {
        let clean = (e.code(), e.message()) == (ErrorCode::Canceled, "stream closed");
        self.0
            .lock()
            .unwrap()
            .push(Seen::StreamClose(role, reason, clean));
    }
}

/// Metrics: one record per call with the right role, method, outcome and
/// sizes (request and response sizes are not swapped on either side);
/// streams report open, every send and receive, and their end (a local
/// close on the client, the peer's close on the server).
pub async fn middleware_metrics_labels(f: &dyn BusFactory) {
    let (server_rec, client_rec) = (Arc::new(Recorder::default()), Arc::new(Recorder::default()));
    let s = RpcServer::new(
        f.connect().await,
        "mw_metrics",
        f.server_options()
            .interceptor(Metrics::new(server_rec.clone())),
    )
    .await
    .unwrap();
    s.route(&UNARY)
        .handle(|_ctx: Context, req: Num| async move {
            if req.n < 0 {
                return Err(Error::new(ErrorCode::OutOfRange, "negative"));
            }
            // A response of a different size than the request.
            Ok(num(req.n, "a much longer response text"))
        })
        .await
        .unwrap();
    s.route(&MULTI)
        .handle(|_ctx: Context, req: Num| async move { Ok(num(req.n, "multi answer")) })
        .await
        .unwrap();
    s.stream_route(&PING_PONG)
        .handle(|mut st: ServerStream<Num, Num>| async move {
            while let Some(m) = st.recv().await? {
                st.send(num(m.n, "pong!")).await?;
            }
            Ok(())
        })
        .await
        .unwrap();
    let c = RpcClient::new(
        f.connect().await,
        "mw_metrics",
        ClientOptions::default().interceptor(Metrics::new(client_rec.clone())),
    )
    .await
    .unwrap();
    settle(f).await;

    let req = num(7, "q");
    let (req_len, res_len) = (
        prost::Message::encoded_len(&req),
        prost::Message::encoded_len(&num(7, "a much longer response text")),
    );
    assert_ne!(req_len, res_len);
    c.unary(&UNARY, (), req.clone()).await.unwrap();
    let _ = c.unary(&UNARY, (), num(-1, "q")).await;
    let unary = |role, error: Option<&str>, response_bytes| Seen::Unary {
        role,
        method: "Unary".into(),
        error: error.map(str::to_owned),
        request_bytes: if error.is_some() {
            prost::Message::encoded_len(&num(-1, "q"))
        } else {
            req_len
        },
        response_bytes,
    };
    // The server reports before its answer leaves, so it is complete here.
    assert_eq!(
        server_rec.take(),
        vec![
            unary(Role::Server, None, res_len),
            unary(Role::Server, Some("out_of_range"), 0)
        ]
    );
    assert_eq!(
        client_rec.take(),
        vec![
            unary(Role::Client, None, res_len),
            unary(Role::Client, Some("out_of_range"), 0)
        ]
    );

    let results: Vec<_> = c
        .multi(&MULTI, (), req.clone())
        .timeout(Duration::from_millis(300))
        .await
        .unwrap()
        .collect()
        .await;
    assert_eq!(results.len(), 1);
    let multi_res = prost::Message::encoded_len(&num(7, "multi answer"));
    let multi = |role| Seen::Multi {
        role,
        method: "Multi".into(),
        responses: 1,
        errors: 0,
        request_bytes: req_len,
        response_bytes: multi_res,
    };
    assert_eq!(server_rec.take(), vec![multi(Role::Server)]);
    assert_eq!(client_rec.take(), vec![multi(Role::Client)]);

    let mut st = c.stream(&PING_PONG, ()).await.unwrap();
    st.send(req.clone()).await.unwrap();
    st.recv().await.unwrap().unwrap();
    st.close().await.unwrap();
    let pong = prost::Message::encoded_len(&num(7, "pong!"));
    let client_side = client_rec.take();
    assert_eq!(client_side.len(), 4, "{client_side:?}");
    assert_eq!(client_side[0], Seen::StreamOpen(Role::Client));
    assert_eq!(
        client_side[3],
        Seen::StreamClose(Role::Client, psrpc::CloseReason::Closed, true)
    );
    // The pong may arrive before the send's own ack is seen: any order.
    assert!(client_side[1..3].contains(&Seen::StreamSend(Role::Client, req_len, true)));
    assert!(client_side[1..3].contains(&Seen::StreamRecv(Role::Client, pong)));
    // The server's stream ends with the client's close: reported too.
    crate::eventually(
        "the server saw open, recv, send and the peer's close",
        Duration::from_secs(20),
        || server_rec.0.lock().unwrap().len() >= 4,
    )
    .await;
    let server_side = server_rec.take();
    assert_eq!(server_side.len(), 4, "{server_side:?}");
    // The open is reported by the handler's task and the message on its
    // arrival, the close where it arrives: under load the order varies.
    for seen in [
        Seen::StreamOpen(Role::Server),
        Seen::StreamRecv(Role::Server, req_len),
        Seen::StreamSend(Role::Server, pong, true),
        Seen::StreamClose(Role::Server, psrpc::CloseReason::Peer, true),
    ] {
        assert!(server_side.contains(&seen), "{seen:?} in {server_side:?}");
    }
    s.shutdown().await;
}

/// Tracing: the client sends its span's W3C `traceparent`; the server's
/// span continues the same trace with the client's span as parent, runs
/// the handler inside it, and hands it on through the handler's context.
pub async fn middleware_trace_crosses_call(f: &dyn BusFactory) {
    /// The handler's span name, incoming traceparent and context traceparent.
    type Seen = Option<(String, Option<String>, Option<String>)>;
    let seen: Arc<Mutex<Seen>> = Default::default();
    let s = RpcServer::new(
        f.connect().await,
        "mw_trace",
        f.server_options().interceptor(Tracing),
    )
    .await
    .unwrap();
    let seen2 = seen.clone();
    s.route(&UNARY)
        .handle(move |ctx: Context, _req: Num| {
            let seen = seen2.clone();
            async move {
                let span = tracing::Span::current()
                    .metadata()
                    .map(|m| m.name().to_owned())
                    .unwrap_or_default();
                *seen.lock().unwrap() = Some((
                    span,
                    ctx.metadata().get(TRACEPARENT).cloned(),
                    ctx.traceparent().map(str::to_owned),
                ));
                Ok(num(0, ""))
            }
        })
        .await
        .unwrap();
    let sent: Arc<Mutex<Option<String>>> = Default::default();
    let sent2 = sent.clone();
    let c = RpcClient::new(
        f.connect().await,
        "mw_trace",
        ClientOptions::default()
            .interceptor(Tracing)
            // Inside the tracing interceptor: sees what goes on the wire.
            .interceptor(interceptor::unary_fn(
                move |call: ClientCall, next: Next<Unary>| {
                    *sent2.lock().unwrap() = call.options().metadata.get(TRACEPARENT).cloned();
                    next.run(call)
                },
            )),
    )
    .await
    .unwrap();
    settle(f).await;
    // The caller is itself part of a trace (e.g. a handler's context).
    let caller = TraceParent::root();
    let ctx = Context::new().with_traceparent(caller.to_string());
    c.unary(&UNARY, (), num(0, "")).context(&ctx).await.unwrap();
    let client_span = TraceParent::parse(&sent.lock().unwrap().clone().expect("sent")).unwrap();
    let (span_name, incoming, server_ctx) = seen.lock().unwrap().clone().expect("served");
    assert!(
        span_name.is_empty() || span_name == "psrpc.server",
        "handler runs in the server span (or spans are disabled): {span_name}"
    );
    assert_eq!(
        client_span.trace_id, caller.trace_id,
        "the caller's trace continues"
    );
    assert_ne!(client_span.span_id, caller.span_id, "a new client span");
    let incoming = TraceParent::parse(&incoming.expect("traceparent arrives")).unwrap();
    assert_eq!(
        incoming, client_span,
        "the remote parent is the client span"
    );
    let server_span = TraceParent::parse(&server_ctx.expect("handler context")).unwrap();
    assert_eq!(server_span.trace_id, caller.trace_id);
    assert_ne!(server_span.span_id, client_span.span_id);
    s.shutdown().await;
}

/// Streams over the laggy bus: every link adds its latency, and a round
/// trip (message + ack, reply + ack) pays it; order is kept.
pub async fn stream_over_laggy_bus(f: &dyn BusFactory) {
    const LAG: Duration = Duration::from_millis(15);
    let latency = |_from: &str, _to: &str| LAG;
    let s = RpcServer::new(
        LaggyBus::new(f.connect().await, "server", latency),
        "laggy_stream",
        f.server_options(),
    )
    .await
    .unwrap();
    s.stream_route(&PING_PONG)
        .handle(|mut st: ServerStream<Num, Num>| async move {
            while let Some(m) = st.recv().await? {
                st.send(num(m.n, "pong")).await?;
            }
            Ok(())
        })
        .await
        .unwrap();
    let c = RpcClient::new(
        LaggyBus::new(f.connect().await, "client", latency),
        "laggy_stream",
        ClientOptions::default(),
    )
    .await
    .unwrap();
    settle(f).await;
    let mut st = c.stream(&PING_PONG, ()).await.unwrap();
    for i in 0..5 {
        let started = Instant::now();
        st.send(num(i, "ping")).await.unwrap();
        let m = tokio::time::timeout(WAIT, st.recv())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(m.n, i, "in order");
        // The message and its ack: two links at least.
        assert!(started.elapsed() >= LAG * 2, "{:?}", started.elapsed());
    }
    st.close().await.unwrap();
    s.shutdown().await;
}

/// Streams over the unreliable bus: with messages lost, every send still
/// ends (acknowledged, or `deadline_exceeded` at its timeout), nothing
/// hangs; once the loss stops, the same stream works again.
pub async fn stream_over_unreliable_bus(f: &dyn BusFactory) {
    let rate = Arc::new(FailureRate::new(0.0));
    let s = RpcServer::new(
        UnreliableBus::new(f.connect().await, rate.clone()),
        "lossy_stream",
        f.server_options(),
    )
    .await
    .unwrap();
    s.stream_route(&PING_PONG)
        .handle(|mut st: ServerStream<Num, Num>| async move {
            while st.recv().await?.is_some() {}
            Ok(())
        })
        .await
        .unwrap();
    let c = RpcClient::new(
        UnreliableBus::new(f.connect().await, rate.clone()),
        "lossy_stream",
        ClientOptions::default(),
    )
    .await
    .unwrap();
    settle(f).await;
    let st = c.stream(&PING_PONG, ()).await.unwrap();
    rate.set(0.5);
    let (mut acked, mut timed_out) = (0, 0);
    for i in 0..20 {
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            // Long enough for an ack on a loaded machine.
            st.send_timeout(num(i, ""), Duration::from_millis(500)),
        )
        .await
        .expect("a send never hangs");
        match r {
            Ok(()) => acked += 1,
            Err(e) => {
                assert_eq!(e.code(), ErrorCode::DeadlineExceeded, "{e}");
                timed_out += 1;
            }
        }
    }
    assert!(
        acked > 0 && timed_out > 0,
        "acked {acked}, timed out {timed_out}"
    );
    rate.set(0.0);
    for i in 0..5 {
        st.send(num(100 + i, "")).await.expect("healthy again");
    }
    st.close().await.unwrap();
    s.shutdown().await;
}
