//! A stream peer that dies without closing: the other end must learn it
//! within a bounded time and end the stream with `unavailable`.
//!
//! On a networked bus the peer is a child process (this test binary run
//! again, see [`spawn_child`] and [`child_main`]) killed with SIGKILL; on
//! the local bus the peer runs on a runtime of its own that is dropped
//! without closing anything ([`local_server_killed`]).

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use psrpc::bus::DynBus;
use psrpc::{ErrorCode, Method, RpcClient, RpcServer, ServerOptions, ServerStream};
use tokio::sync::mpsc;

use crate::Num;
use crate::stream_ends::Ends;

/// The service of these tests.
pub const SERVICE: &str = "liveness";
/// A claimed stream method.
pub static LIVE: Method<Num, Num> = Method::queue("Live");

/// The generous bound of every wait here (the default detection is ~5 s).
const DEADLINE: Duration = Duration::from_secs(20);

/// The bus of the end that watches, noting when a look at the peer's
/// presence found it. Watching is armed by the first look that finds the
/// peer; on NATS a peer that dies before that is not noticed (it cannot
/// be told from a Go peer, which never shows), so the tests kill the peer
/// only once [`Looks::armed`] says so.
struct Looks {
    bus: DynBus,
    found: Arc<AtomicBool>,
}

impl Looks {
    /// `bus`, watched; the flag turns true at the first look that finds a peer.
    fn wrap(bus: DynBus) -> (DynBus, Arc<AtomicBool>) {
        let found = Arc::new(AtomicBool::new(false));
        let looks = Looks {
            bus,
            found: found.clone(),
        };
        (Arc::new(looks), found)
    }

    /// Waits until a look found the peer.
    async fn armed(found: &AtomicBool) {
        crate::eventually("a look at the peer found it", DEADLINE, || {
            found.load(Ordering::SeqCst)
        })
        .await;
    }
}

#[psrpc::async_trait]
impl psrpc::MessageBus for Looks {
    async fn publish(&self, channel: &psrpc::Channel, msg: bytes::Bytes) -> psrpc::Result<()> {
        self.bus.publish(channel, msg).await
    }
    async fn subscribe(
        &self,
        channel: &psrpc::Channel,
        size: usize,
    ) -> psrpc::Result<psrpc::bus::RawSubscription> {
        self.bus.subscribe(channel, size).await
    }
    async fn subscribe_queue(
        &self,
        channel: &psrpc::Channel,
        size: usize,
    ) -> psrpc::Result<psrpc::bus::RawSubscription> {
        self.bus.subscribe_queue(channel, size).await
    }
    async fn subscribe_handler(
        &self,
        channel: &psrpc::Channel,
        size: usize,
        queue: bool,
        handler: psrpc::bus::Handler,
    ) -> psrpc::Result<psrpc::bus::HandlerSubscription> {
        self.bus
            .subscribe_handler(channel, size, queue, handler)
            .await
    }
    async fn subscribe_inline(
        &self,
        channel: &psrpc::Channel,
        size: usize,
        handler: psrpc::bus::Handler,
    ) -> psrpc::Result<psrpc::bus::HandlerSubscription> {
        self.bus.subscribe_inline(channel, size, handler).await
    }
    fn drops(&self) -> &psrpc::drops::Drops {
        self.bus.drops()
    }
    fn compression(&self) -> &psrpc::CompressionOptions {
        self.bus.compression()
    }
    fn check_channel(&self, channel: &psrpc::Channel) -> psrpc::Result<()> {
        self.bus.check_channel(channel)
    }
    async fn listeners(&self, channel: &psrpc::Channel) -> psrpc::Result<Option<usize>> {
        let n = self.bus.listeners(channel).await;
        if matches!(n, Ok(Some(n)) if n > 0) {
            self.found.store(true, Ordering::SeqCst);
        }
        n
    }
}

/// The environment variable naming the child's role (`server`/`client`).
pub const ROLE_VAR: &str = "PSRPC_LIVENESS_ROLE";
/// The environment variable holding the child's broker URL.
pub const URL_VAR: &str = "PSRPC_LIVENESS_URL";

/// A child process, SIGKILLed when dropped.
pub struct Peer(Child);

impl Peer {
    /// Kills it with SIGKILL and reaps it.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs the test `child_test` of the current test binary in a new process
/// as peer `role` on the broker at `url`; that test calls [`child_main`].
pub fn spawn_child(child_test: &str, role: &str, url: &str) -> Peer {
    let exe = std::env::current_exe().expect("test binary");
    let child = Command::new(exe)
        .args([child_test, "--exact", "--nocapture", "--test-threads=1"])
        .env(ROLE_VAR, role)
        .env(URL_VAR, url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the peer process");
    Peer(child)
}

/// The role and URL when this process is a peer started by [`spawn_child`].
pub fn child_role() -> Option<(String, String)> {
    Some((std::env::var(ROLE_VAR).ok()?, std::env::var(URL_VAR).ok()?))
}

/// The peer's life: `server` serves [`LIVE`] (sends one message on each
/// stream, then echoes), `client` opens a stream and sends one message;
/// both then wait to be killed.
pub async fn child_main(bus: DynBus, role: &str) {
    match role {
        "server" => {
            let s = RpcServer::new(bus, SERVICE, ServerOptions::default())
                .await
                .unwrap();
            register_pusher(&s, None).await;
            std::future::pending::<()>().await;
        }
        "client" => {
            let c = RpcClient::new(bus, SERVICE, Default::default())
                .await
                .expect("client");
            let st = open(&c).await;
            st.send(Num {
                n: 1,
                text: "hello".into(),
            })
            .await
            .expect("send");
            std::future::pending::<()>().await;
        }
        other => panic!("unknown role {other}"),
    }
}

/// What the [`LIVE`] handler reports.
enum Event {
    /// A message from the client arrived (the stream is up).
    Got,
    /// The stream ended: its error, and when.
    Ended(Option<psrpc::Error>, Instant),
}

/// Registers the [`LIVE`] handler: sends `n = 0`, then echoes; reports on
/// `events`.
async fn register_pusher(s: &RpcServer, events: Option<mpsc::UnboundedSender<Event>>) {
    s.stream_route(&LIVE)
        .handle(move |mut st: ServerStream<Num, Num>| {
            let events = events.clone();
            let report = move |e: Event| {
                if let Some(tx) = &events {
                    let _ = tx.send(e);
                }
            };
            async move {
                let _ = st
                    .send(Num {
                        n: 0,
                        text: "hello".into(),
                    })
                    .await;
                let end = loop {
                    match st.recv().await {
                        Ok(Some(m)) => {
                            report(Event::Got);
                            let _ = st.send(m).await;
                        }
                        Ok(None) => break None,
                        Err(e) => break Some(e),
                    }
                };
                report(Event::Ended(end, Instant::now()));
                Ok(())
            }
        })
        .await
        .expect("register stream handler");
}

/// Opens a [`LIVE`] stream, retrying until a server takes it.
async fn open(c: &RpcClient) -> psrpc::ClientStream<Num, Num> {
    let start = Instant::now();
    loop {
        match c.stream(&LIVE, ()).await {
            Ok(st) => return st,
            Err(e) => assert!(start.elapsed() < DEADLINE, "no server took the stream: {e}"),
        }
    }
}

/// The client holds a stream whose server process is then SIGKILLed; it
/// only receives. Its `recv` must end with `unavailable` within the bound,
/// and `is_closed()` be true; its interceptors and metrics see the end as
/// [`CloseReason::PeerGone`](psrpc::CloseReason::PeerGone). Returns the
/// time from the kill to the end.
pub async fn client_learns_server_killed(bus: DynBus, mut server: Peer) -> Duration {
    let (bus, found) = Looks::wrap(bus);
    let ends = Arc::new(Ends::default());
    let c = RpcClient::new(bus, SERVICE, ends.client(Default::default()))
        .await
        .expect("client");
    let mut st = open(&c).await;
    let first = tokio::time::timeout(DEADLINE, st.recv())
        .await
        .expect("first message in time")
        .expect("first message")
        .expect("a message");
    assert_eq!(first.n, 0);
    Looks::armed(&found).await;
    server.kill();
    let killed = Instant::now();
    let end = tokio::time::timeout(DEADLINE, st.recv())
        .await
        .expect("the client learns that its server died");
    let took = killed.elapsed();
    let err = end.expect_err("nothing more from a dead server");
    assert!(st.is_closed());
    assert_eq!(err.code(), ErrorCode::Unavailable, "{err}");
    // And a send fails at once with that cause.
    let sent = st.send(Num::default()).await.expect_err("closed");
    assert_eq!(sent.code(), ErrorCode::Unavailable);
    assert_peer_gone(&ends, "client").await;
    took
}

/// `ends` saw one stream end, for a dead peer, with `unavailable`.
async fn assert_peer_gone(ends: &Ends, side: &str) {
    let end = ends.one_end(side).await;
    assert_eq!(
        (end.reason, end.code),
        (psrpc::CloseReason::PeerGone, ErrorCode::Unavailable),
        "{end:?}"
    );
}

/// A server holds a stream whose client process is then SIGKILLed: the
/// handler's `recv` must end with `unavailable` within the bound. Returns
/// the time from the kill to the end.
pub async fn server_learns_client_killed(
    bus: DynBus,
    spawn_client: impl FnOnce() -> Peer,
) -> Duration {
    let (bus, found) = Looks::wrap(bus);
    let ends = Arc::new(Ends::default());
    let s = RpcServer::new(bus, SERVICE, ends.server(ServerOptions::default()))
        .await
        .unwrap();
    let (events_tx, mut events) = mpsc::unbounded_channel();
    register_pusher(&s, Some(events_tx)).await;
    let mut client = spawn_client();
    let took = server_sees_end(&mut events, &found, || client.kill()).await;
    assert_peer_gone(&ends, "server").await;
    s.shutdown().await;
    took
}

/// Waits for the client's message, runs `kill`, then waits for the end of
/// the stream, which must be `unavailable`; returns the time it took.
async fn server_sees_end(
    events: &mut mpsc::UnboundedReceiver<Event>,
    found: &AtomicBool,
    kill: impl FnOnce(),
) -> Duration {
    let got = tokio::time::timeout(DEADLINE, events.recv())
        .await
        .expect("the client opens and sends in time");
    assert!(matches!(got, Some(Event::Got)));
    Looks::armed(found).await;
    kill();
    let killed = Instant::now();
    let ended = tokio::time::timeout(DEADLINE, events.recv())
        .await
        .expect("the server learns that its client died");
    let Some(Event::Ended(err, at)) = ended else {
        panic!("the stream should have ended");
    };
    let err = err.expect("a cause");
    assert_eq!(err.code(), ErrorCode::Unavailable, "{err}");
    at.saturating_duration_since(killed)
}

/// A bus whose runtime handlers run in tasks of the runtime that
/// subscribed (the trait's default), so that dropping that runtime takes
/// every subscription of the peer with it, as a process exit does.
struct OwnTasks(DynBus);

#[psrpc::async_trait]
impl psrpc::MessageBus for OwnTasks {
    async fn publish(&self, channel: &psrpc::Channel, msg: bytes::Bytes) -> psrpc::Result<()> {
        self.0.publish(channel, msg).await
    }
    async fn subscribe(
        &self,
        channel: &psrpc::Channel,
        size: usize,
    ) -> psrpc::Result<psrpc::bus::RawSubscription> {
        self.0.subscribe(channel, size).await
    }
    async fn subscribe_queue(
        &self,
        channel: &psrpc::Channel,
        size: usize,
    ) -> psrpc::Result<psrpc::bus::RawSubscription> {
        self.0.subscribe_queue(channel, size).await
    }
    async fn listeners(&self, channel: &psrpc::Channel) -> psrpc::Result<Option<usize>> {
        self.0.listeners(channel).await
    }
}

/// A runtime of its own for a peer on the local bus.
fn peer_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// Drops `rt` without running anything more on it: the peer "dies".
fn kill_runtime(rt: tokio::runtime::Runtime) {
    std::thread::spawn(move || rt.shutdown_background())
        .join()
        .unwrap();
}

/// The local bus, server side dies: the server runs on a runtime of its
/// own, with handlers run in its own tasks; the runtime is dropped with the server leaked,
/// so no close is sent, and the client must still end the stream.
pub async fn local_server_killed(bus: DynBus) -> Duration {
    // Both ends run their handlers in their own tasks: the local bus would
    // call them in the publisher's task, i.e. on the other end's runtime.
    let bus: DynBus = std::sync::Arc::new(OwnTasks(bus));
    let rt = peer_runtime();
    let server_bus = bus.clone();
    rt.spawn(async move {
        let s = RpcServer::new(server_bus, SERVICE, ServerOptions::default())
            .await
            .unwrap();
        register_pusher(&s, None).await;
        std::mem::forget(s);
    })
    .await
    .expect("server up");
    let (bus, found) = Looks::wrap(bus);
    let ends = Arc::new(Ends::default());
    let c = RpcClient::new(bus, SERVICE, ends.client(Default::default()))
        .await
        .expect("client");
    let mut st = open(&c).await;
    assert_eq!(st.recv().await.expect("first").expect("a message").n, 0);
    Looks::armed(&found).await;
    kill_runtime(rt);
    let killed = Instant::now();
    let end = tokio::time::timeout(DEADLINE, st.recv())
        .await
        .expect("the client learns that its server died");
    let took = killed.elapsed();
    let err = end.expect_err("nothing more from a dead server");
    assert!(st.is_closed());
    assert_eq!(err.code(), ErrorCode::Unavailable);
    assert_peer_gone(&ends, "client").await;
    took
}

/// The local bus, client side dies: the client runs on a runtime of its
/// own; its stream and itself are leaked (dropping them would close the
/// stream) and the runtime is dropped. The server must end the stream.
pub async fn local_client_killed(bus: DynBus) -> Duration {
    let bus: DynBus = std::sync::Arc::new(OwnTasks(bus));
    let (server_bus, found) = Looks::wrap(bus.clone());
    let ends = Arc::new(Ends::default());
    let s = RpcServer::new(server_bus, SERVICE, ends.server(ServerOptions::default()))
        .await
        .unwrap();
    let (events_tx, mut events) = mpsc::unbounded_channel();
    register_pusher(&s, Some(events_tx)).await;
    let rt = peer_runtime();
    let client_bus = bus;
    let (leaked_tx, leaked) = tokio::sync::oneshot::channel();
    rt.spawn(async move {
        let c = RpcClient::new(client_bus, SERVICE, Default::default())
            .await
            .expect("client");
        let st = open(&c).await;
        st.send(Num::default()).await.expect("send");
        std::mem::forget(st);
        std::mem::forget(c);
        let _ = leaked_tx.send(());
    });
    // Killed before it leaks them, the client's stream would be dropped
    // and say goodbye (`canceled`), which is not what a dead process does.
    tokio::time::timeout(DEADLINE, leaked)
        .await
        .expect("the client leaks its stream in time")
        .expect("the client task ran");
    let took = server_sees_end(&mut events, &found, || kill_runtime(rt)).await;
    assert_peer_gone(&ends, "server").await;
    s.shutdown().await;
    took
}

/// Fast watching, for the tests that check what watching does not do.
pub fn fast() -> psrpc::StreamLiveness {
    psrpc::StreamLiveness::new(Duration::from_millis(100), Duration::from_millis(500))
}

/// A [`LIVE`] stream from a client that watches fast to a server that
/// watches as `server` says, open and its first message read.
async fn fast_watched_stream(
    bus: DynBus,
    server: psrpc::StreamLiveness,
) -> (RpcServer, RpcClient, psrpc::ClientStream<Num, Num>) {
    watched_stream(bus, server, fast()).await
}

/// A [`LIVE`] stream whose ends watch as `server` and `client` say, open
/// and its first message read.
async fn watched_stream(
    bus: DynBus,
    server: psrpc::StreamLiveness,
    client: psrpc::StreamLiveness,
) -> (RpcServer, RpcClient, psrpc::ClientStream<Num, Num>) {
    let s = RpcServer::new(
        bus.clone(),
        SERVICE,
        ServerOptions::default().stream_liveness(server),
    )
    .await
    .unwrap();
    register_pusher(&s, None).await;
    let c = RpcClient::new(
        bus,
        SERVICE,
        psrpc::ClientOptions::default().stream_liveness(client),
    )
    .await
    .expect("client");
    let mut st = open(&c).await;
    assert_eq!(st.recv().await.expect("first").expect("a message").n, 0);
    (s, c, st)
}

/// A peer that never subscribes a presence channel (as a Go peer: here a
/// server with watching off) is never taken for dead: after many times
/// `dead_after`, the stream still works both ways. The client watches
/// fast. Proving an absence needs a wait: 3 s, six times `dead_after`.
pub async fn peer_without_presence_is_kept(bus: DynBus) {
    let (s, _c, mut st) = fast_watched_stream(bus, psrpc::StreamLiveness::disabled()).await;
    // Nothing would tell us that the client decided not to end the stream.
    crate::quiet_for(Duration::from_secs(3)).await;
    assert!(!st.is_closed(), "the stream ended");
    st.send(Num {
        n: 7,
        text: String::new(),
    })
    .await
    .expect("send");
    let echo = tokio::time::timeout(DEADLINE, st.recv())
        .await
        .expect("echo in time")
        .expect("echo")
        .expect("a message");
    assert_eq!(echo.n, 7);
    st.close().await.expect("close");
    s.shutdown().await;
}

/// Runs one stream for 2 s with both ends watching fast, then closes it:
/// what a bus spy sees of it must be only psrpc envelopes.
pub async fn one_watched_stream(bus: DynBus) {
    let (s, _c, st) = fast_watched_stream(bus, fast()).await;
    // The stream runs, both ends watching, long enough for many rounds of
    // watching traffic (twenty intervals) and four times `dead_after`.
    crate::quiet_for(Duration::from_secs(2)).await;
    assert!(!st.is_closed(), "the stream ended");
    st.close().await.expect("close");
    s.shutdown().await;
}

/// Watching costs a young stream nothing on the bus: with a long interval
/// neither end has subscribed its presence channel once the stream is open
/// (and a message has travelled both ways); with a short one both have,
/// soon after. The long interval (60 s) puts the subscriptions 15 s after
/// the open, far beyond any stall of the test.
pub async fn young_streams_subscribe_no_presence(bus: DynBus) {
    let presence = |st: &psrpc::ClientStream<Num, Num>, client_end: bool| {
        psrpc::stream::presence_channel(SERVICE, st.stream_id(), client_end)
    };
    let slow = psrpc::StreamLiveness::new(Duration::from_secs(60), Duration::from_secs(240));
    for (liveness, subscribed) in [(slow, 0), (fast(), 1)] {
        let (s, _c, st) = watched_stream(bus.clone(), liveness, liveness).await;
        for client_end in [true, false] {
            let ch = presence(&st, client_end);
            let side = if client_end { "client" } else { "server" };
            if subscribed == 0 {
                let n = bus.listeners(&ch).await.expect("count");
                assert_eq!(n, Some(0), "the {side}'s presence of a young stream");
            } else {
                let start = Instant::now();
                while bus.listeners(&ch).await.expect("count") != Some(1) {
                    assert!(
                        start.elapsed() < DEADLINE,
                        "the {side} never subscribed its presence"
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        st.close().await.expect("close");
        s.shutdown().await;
    }
}

/// Checks one message a spy saw on a psrpc channel: a `Msg` envelope of a
/// psrpc type, as Go peers expect.
pub fn assert_psrpc_envelope(channel: &str, payload: &[u8]) {
    let msg = psrpc::protocol::wire::decode_msg(bytes::Bytes::copy_from_slice(payload))
        .unwrap_or_else(|e| panic!("not a psrpc envelope on {channel}: {e}"));
    assert!(
        msg.type_url
            .starts_with(psrpc::protocol::wire::TYPE_URL_PREFIX),
        "unexpected message on {channel}: type {:?}",
        msg.type_url
    );
}
