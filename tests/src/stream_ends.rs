//! Every way a stream can end goes through one close path: each test here
//! ends a stream one way and checks that, on both sides, a stream
//! interceptor and the metrics middleware saw that stream end exactly once,
//! with the right [`CloseReason`] and cause, and that `recv` reports it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use psrpc::interceptor::{ClientInterceptor, Role, ServerInterceptor};
use psrpc::middleware::metrics::{Metrics, MetricsObserver};
use psrpc::{
    ClientOptions, ClientStream, CloseReason, Context, Error, ErrorCode, RpcClient, RpcInfo,
    RpcServer, ServerStream,
};

use crate::streams::{PING_PONG, num};
use crate::suite::settle;
use crate::{BusFactory, Num};

const WAIT: Duration = Duration::from_secs(20);

/// How one stream ended, as one observer saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct End {
    /// What ended it.
    pub reason: CloseReason,
    /// The cause's code and message.
    pub code: ErrorCode,
    /// The cause's message.
    pub message: String,
}

impl End {
    /// A clean close (`canceled` "stream closed") for `reason`.
    pub fn clean(reason: CloseReason) -> Self {
        End::new(reason, &Error::stream_closed())
    }

    /// `cause` for `reason`.
    pub fn new(reason: CloseReason, cause: &Error) -> Self {
        End {
            reason,
            code: cause.code(),
            message: cause.message().to_owned(),
        }
    }
}

/// Records the stream opens and ends one side's stream interceptor and its
/// metrics observer see (install both with [`Ends::client`] or
/// [`Ends::server`]).
#[derive(Default)]
pub struct Ends {
    opens: [AtomicUsize; 2],
    ends: [Mutex<Vec<End>>; 2],
}

const INTERCEPTOR: usize = 0;
const METRICS: usize = 1;

/// The stream interceptor half of [`Ends`].
struct Tap(Arc<Ends>);

impl Tap {
    fn open(&self) {
        self.0.opens[INTERCEPTOR].fetch_add(1, Ordering::SeqCst);
    }
    fn close(&self, reason: CloseReason, cause: &Error) {
        self.0.ends[INTERCEPTOR]
            .lock()
            .unwrap()
            .push(End::new(reason, cause));
    }
}

impl ClientInterceptor for Tap {
    fn stream_open(&self, _: &RpcInfo) {
        self.open();
    }
    fn stream_close(&self, _: &RpcInfo, reason: CloseReason, cause: &Error) {
        self.close(reason, cause);
    }
}

impl ServerInterceptor for Tap {
    fn stream_open(&self, _: &RpcInfo) {
        self.open();
    }
    fn stream_close(&self, _: &RpcInfo, reason: CloseReason, cause: &Error) {
        self.close(reason, cause);
    }
}

impl MetricsObserver for Ends {
    fn on_unary_request(
        &self,
        _: Role,
        _: &RpcInfo,
        _: Duration,
        _: Option<&Error>,
        _: usize,
        _: usize,
    ) {
    }
    fn on_multi_request(
        &self,
        _: Role,
        _: &RpcInfo,
        _: Duration,
        _: usize,
        _: usize,
        _: usize,
        _: usize,
    ) {
    }
    fn on_stream_send(&self, _: Role, _: &RpcInfo, _: Duration, _: Option<&Error>, _: usize) {}
    fn on_stream_recv(&self, _: Role, _: &RpcInfo, _: usize) {}
    fn on_stream_open(&self, _: Role, _: &RpcInfo) {
        self.opens[METRICS].fetch_add(1, Ordering::SeqCst);
    }
    fn on_stream_close(&self, _: Role, _: &RpcInfo, reason: CloseReason, cause: &Error) {
        self.ends[METRICS]
            .lock()
            .unwrap()
            .push(End::new(reason, cause));
    }
}

impl Ends {
    /// Client options with this recorder's interceptor and metrics.
    pub fn client(self: &Arc<Self>, opts: ClientOptions) -> ClientOptions {
        opts.interceptor(Tap(self.clone()))
            .interceptor(Metrics::new(self.clone()))
    }

    /// Server options with this recorder's interceptor and metrics.
    pub fn server(self: &Arc<Self>, opts: psrpc::ServerOptions) -> psrpc::ServerOptions {
        opts.interceptor(Tap(self.clone()))
            .interceptor(Metrics::new(self.clone()))
    }

    /// Waits until both the interceptor and the metrics saw one stream end,
    /// checks that each saw exactly one open and one end, the same, and
    /// returns it.
    pub async fn one_end(&self, side: &str) -> End {
        crate::eventually(&format!("the {side} saw the stream end"), WAIT, || {
            self.ends.iter().all(|e| !e.lock().unwrap().is_empty())
        })
        .await;
        let [a, b] = [INTERCEPTOR, METRICS].map(|i| self.ends[i].lock().unwrap().clone());
        assert_eq!(a.len(), 1, "{side}: one end for the interceptor: {a:?}");
        assert_eq!(a, b, "{side}: the metrics saw the same end");
        for (i, via) in ["interceptor", "metrics"].iter().enumerate() {
            let opens = self.opens[i].load(Ordering::SeqCst);
            assert_eq!(opens, 1, "{side}: one open for the {via}");
        }
        a[0].clone()
    }
}

/// A server (recording on `server_ends`) whose `PING_PONG` handler echoes
/// until the stream ends, except when the first message's text says:
/// "fail" (the handler returns an error) or "hijack" (it hijacks the
/// stream and drops it).
async fn serve(f: &dyn BusFactory, service: &str, server_ends: &Arc<Ends>) -> RpcServer {
    let s = RpcServer::new(
        f.connect().await,
        service,
        server_ends.server(f.server_options()),
    )
    .await
    .unwrap();
    s.stream_route(&PING_PONG)
        .handle(|mut st: ServerStream<Num, Num>| async move {
            while let Some(m) = st.recv().await? {
                match m.text.as_str() {
                    "fail" => return Err(Error::failed_precondition("handler refused")),
                    "hijack" => {
                        st.hijack();
                        drop(st);
                        return Ok(());
                    }
                    _ => st.send(num(m.n, "PONG")).await?,
                }
            }
            Ok(())
        })
        .await
        .expect("register");
    s
}

/// A server and a client (both recording) and one open stream, after one
/// echo went both ways.
struct Setup {
    server: RpcServer,
    client: RpcClient,
    ends: Recorded,
    st: ClientStream<Num, Num>,
}

/// A server and a client, both recording, with nothing open yet.
async fn parts(f: &dyn BusFactory, service: &str) -> (RpcServer, RpcClient, Recorded) {
    let (server_ends, client_ends) = (Arc::new(Ends::default()), Arc::new(Ends::default()));
    let server = serve(f, service, &server_ends).await;
    let client = RpcClient::new(
        f.connect().await,
        service,
        client_ends.client(ClientOptions::default()),
    )
    .await
    .expect("client");
    settle(f).await;
    let ends = Recorded {
        server: server_ends,
        client: client_ends,
    };
    (server, client, ends)
}

async fn setup(f: &dyn BusFactory, service: &str, ctx: Option<Context>) -> Setup {
    let (server, client, ends) = parts(f, service).await;
    let mut open = client.stream(&PING_PONG, ());
    if let Some(ctx) = &ctx {
        open = open.context(ctx);
    }
    let mut st = open.await.expect("open");
    st.send(num(1, "ping")).await.expect("send");
    let pong = tokio::time::timeout(WAIT, st.recv())
        .await
        .expect("in time");
    assert_eq!(pong.expect("a pong").expect("a message").n, 1);
    Setup {
        server,
        client,
        ends,
        st,
    }
}

/// Reads `st` to its end.
async fn end_of(st: &mut ClientStream<Num, Num>) -> Result<(), Error> {
    loop {
        match tokio::time::timeout(WAIT, st.recv())
            .await
            .expect("ends in time")
        {
            Ok(Some(_)) => {}
            Ok(None) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
}

/// `close()`: a clean close, by this end; the peer's `recv` ends with
/// `Ok(None)`.
pub async fn stream_end_explicit_close(f: &dyn BusFactory) {
    let mut t = setup(f, "end_close", None).await;
    t.st.close().await.expect("close");
    t.ends
        .both(
            End::clean(CloseReason::Peer),
            End::clean(CloseReason::Closed),
        )
        .await;
    // Reading after one's own clean close: a clean end.
    end_of(&mut t.st).await.expect("clean");
    t.server.shutdown().await;
}

/// `close_with(e)`: the peer sees `e`, and so does this end's `recv`.
pub async fn stream_end_close_with_error(f: &dyn BusFactory) {
    let mut t = setup(f, "end_close_with", None).await;
    let cause = Error::resource_exhausted("client is done");
    t.st.close_with(cause.clone()).await.expect("close");
    t.ends
        .both(
            End::new(CloseReason::Peer, &cause),
            End::new(CloseReason::Closed, &cause),
        )
        .await;
    let e = end_of(&mut t.st).await.expect_err("ended with the cause");
    assert_eq!(e.message(), "client is done");
    t.server.shutdown().await;
}

/// The handler returns an error: the server closes with it, the client's
/// `recv` returns it.
pub async fn stream_end_handler_error(f: &dyn BusFactory) {
    let mut t = setup(f, "end_handler", None).await;
    t.st.send(num(2, "fail")).await.expect("send");
    let e = end_of(&mut t.st).await.expect_err("the handler's error");
    assert_eq!(e.code(), ErrorCode::FailedPrecondition);
    let cause = Error::failed_precondition("handler refused");
    t.ends
        .both(
            End::new(CloseReason::Closed, &cause),
            End::new(CloseReason::Peer, &cause),
        )
        .await;
    t.server.shutdown().await;
}

/// What the server's and the client's interceptors recorded.
struct Recorded {
    server: Arc<Ends>,
    client: Arc<Ends>,
}

impl Recorded {
    /// Waits until both ends reported one end each, and checks them.
    async fn both(&self, server: End, client: End) {
        assert_eq!(self.server.one_end("server").await, server);
        assert_eq!(self.client.one_end("client").await, client);
    }
}

/// Dropping the client stream closes it cleanly.
pub async fn stream_end_client_drop(f: &dyn BusFactory) {
    let t = setup(f, "end_drop", None).await;
    drop(t.st);
    t.ends
        .both(
            End::clean(CloseReason::Peer),
            End::clean(CloseReason::Dropped),
        )
        .await;
    t.server.shutdown().await;
}

/// The halves of a split stream: dropping the receiver keeps the stream
/// open for the sender; dropping the sender too closes it.
pub async fn stream_end_split_halves_drop(f: &dyn BusFactory) {
    let t = setup(f, "end_split", None).await;
    let (tx, rx) = t.st.split();
    drop(rx);
    assert!(!tx.is_closed(), "the sender alone keeps the stream open");
    tx.send(num(2, "still open"))
        .await
        .expect("the sender works alone");
    drop(tx);
    t.ends
        .both(
            End::clean(CloseReason::Peer),
            End::clean(CloseReason::Dropped),
        )
        .await;
    t.server.shutdown().await;
}

/// A hijacked server stream whose handles are all dropped closes cleanly.
pub async fn stream_end_hijacked_drop(f: &dyn BusFactory) {
    let mut t = setup(f, "end_hijack", None).await;
    t.st.send(num(2, "hijack")).await.expect("send");
    end_of(&mut t.st).await.expect("a clean end");
    t.ends
        .both(
            End::clean(CloseReason::Dropped),
            End::clean(CloseReason::Peer),
        )
        .await;
    t.server.shutdown().await;
}

async fn server_stopped(f: &dyn BusFactory, service: &str, reason: CloseReason) {
    let mut t = setup(f, service, None).await;
    match reason {
        CloseReason::Shutdown => t.server.shutdown().await,
        CloseReason::Kill => t.server.kill(),
        CloseReason::Deregistered => t.server.deregister(&PING_PONG, ()),
        _ => unreachable!(),
    }
    let e = end_of(&mut t.st).await.expect_err("EOF");
    assert_eq!((e.code(), e.message()), (ErrorCode::Unavailable, "EOF"));
    let eof = Error::stream_eof();
    t.ends
        .both(End::new(reason, &eof), End::new(CloseReason::Peer, &eof))
        .await;
    t.server.shutdown().await;
}

/// The server's shutdown ends its streams with `unavailable` "EOF".
pub async fn stream_end_server_shutdown(f: &dyn BusFactory) {
    server_stopped(f, "end_shutdown", CloseReason::Shutdown).await;
}

/// The server's kill ends its streams with `unavailable` "EOF".
pub async fn stream_end_server_kill(f: &dyn BusFactory) {
    server_stopped(f, "end_kill", CloseReason::Kill).await;
}

/// Deregistering the method ends its streams with `unavailable` "EOF".
pub async fn stream_end_deregister(f: &dyn BusFactory) {
    server_stopped(f, "end_dereg", CloseReason::Deregistered).await;
}

/// Dropping the last clone of the server ends its streams as a kill does.
pub async fn stream_end_server_dropped(f: &dyn BusFactory) {
    let mut t = setup(f, "end_server_drop", None).await;
    drop(t.server);
    let e = end_of(&mut t.st).await.expect_err("EOF");
    assert_eq!(e.message(), "EOF");
    let eof = Error::stream_eof();
    t.ends
        .both(
            End::new(CloseReason::Kill, &eof),
            End::new(CloseReason::Peer, &eof),
        )
        .await;
}

/// The caller's context: canceled, then (another stream) its deadline.
pub async fn stream_end_context(f: &dyn BusFactory) {
    for deadline in [false, true] {
        let token = psrpc::CancellationToken::new();
        let ctx = if deadline {
            Context::new().with_timeout(Duration::from_secs(3))
        } else {
            Context::new().with_cancel(token.clone())
        };
        let mut t = setup(f, "end_ctx", Some(ctx)).await;
        token.cancel();
        let e = end_of(&mut t.st).await.expect_err("ended by the context");
        let want = if deadline {
            "context deadline exceeded"
        } else {
            "context canceled"
        };
        assert_eq!(e.message(), want);
        let cause = Error::unknown(want);
        t.ends
            .both(
                End::new(CloseReason::Peer, &cause),
                End::new(CloseReason::Context, &cause),
            )
            .await;
        t.server.shutdown().await;
    }
}

/// A message that does not decode as the server's receive type.
pub async fn stream_end_malformed(f: &dyn BusFactory) {
    /// Field 2 as a number: a `Num`'s text (a string) does not decode as it.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Wrong {
        #[prost(int64, tag = "2")]
        x: i64,
    }
    let (server, client, ends) = parts(f, "end_malformed").await;
    // The wire name of PING_PONG, with a request type its server does not take.
    static WRONG: psrpc::Method<Wrong, Num> = psrpc::Method::queue("PingPong");
    let mut bad = client.stream(&WRONG, ()).await.expect("open");
    let _ = bad
        .send_timeout(Wrong { x: 1 }, Duration::from_secs(2))
        .await;
    let e = loop {
        match tokio::time::timeout(WAIT, bad.recv())
            .await
            .expect("in time")
        {
            Ok(Some(_)) => {}
            Ok(None) => panic!("a malformed message is not a clean end"),
            Err(e) => break e,
        }
    };
    assert_eq!(e.code(), ErrorCode::MalformedRequest, "{e}");
    let seen = ends.server.one_end("server").await;
    assert_eq!(
        (seen.reason, seen.code),
        (CloseReason::Malformed, ErrorCode::MalformedRequest)
    );
    let seen = ends.client.one_end("client").await;
    assert_eq!(
        (seen.reason, seen.code),
        (CloseReason::Peer, ErrorCode::MalformedRequest)
    );
    drop(client);
    server.shutdown().await;
}

/// Closing the client ends its streams cleanly.
pub async fn stream_end_client_close(f: &dyn BusFactory) {
    let mut t = setup(f, "end_client_close", None).await;
    t.client.close();
    end_of(&mut t.st).await.expect("a clean end");
    t.ends
        .both(
            End::clean(CloseReason::Peer),
            End::clean(CloseReason::ClientClosed),
        )
        .await;
    t.server.shutdown().await;
}
