//! The generic server runtime ([`RpcServer`]): handlers per method and topic,
//! the server side of the claim handshake, deadlines, drain on shutdown, kill,
//! and publishing for subscription methods.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use prost::Message;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::{TaskTracker, task_tracker::TaskTrackerToken};

use crate::bus::{DynBus, Handler, HandlerSubscription, MessageBus};
use crate::channels::{self, Channel};
use crate::drops::{DropReason, Truncated};
use crate::error::{Error, ErrorCode, Result};
use crate::id;
use crate::info::{BoxMessage, Context, IncomingHeader, MethodInfo, RpcInfo, downcast_message};
use crate::interceptor::{ServerInterceptor, ServerNext, StreamInterceptor, to_chain};
use crate::method::Method;
use crate::route::{OpenAffinityFn, RequestAffinityFn, Route, StreamOpen, StreamRoute};
use crate::stream::{self, CloseReason, ServerStream, StreamLiveness, StreamParams, StreamTable};
use crate::topic::Topic;
use crate::wire::{
    self, ClaimRequest, ClaimResponse, Envelope, Request, Response, StreamAck, StreamBody,
};

/// Default server timeout (stream sends, stream close expiry).
pub const DEFAULT_SERVER_TIMEOUT: Duration = Duration::from_secs(3);

/// Options of an [`RpcServer`].
#[derive(Clone)]
pub struct ServerOptions {
    /// The server id; a fresh `SRV_` id when `None`.
    pub server_id: Option<String>,
    /// The server timeout (3 s).
    pub timeout: Duration,
    /// Buffer size of the server's subscriptions and of each stream (100).
    pub channel_size: usize,
    /// Wrap every unary and multi handler, first outermost.
    pub interceptors: Vec<Arc<dyn ServerInterceptor>>,
    /// See every stream the server accepts, first outermost.
    pub stream_interceptors: Vec<Arc<dyn StreamInterceptor>>,
    /// Asked once per request that advertises it: whether this server
    /// announces a queue request instead of bidding for it (claim skip).
    /// `None` (the default): never.
    pub skip_claim: Option<SkipClaimFn>,
    /// Told of every request received, expired and claimed.
    pub observers: Vec<Arc<dyn RequestObserver>>,
    /// How accepted streams watch their client for a death without a
    /// close (probe every 1 s, end after 4 s; see [`crate::stream`]).
    pub stream_liveness: StreamLiveness,
    /// Answering discovery (on by default; see [`crate::discovery`]).
    pub discovery: crate::discovery::DiscoveryOptions,
}

/// The operator's run-time switch for claim skip (see
/// [`ServerOptions::skip_claim`]).
pub type SkipClaimFn = Arc<dyn Fn() -> bool + Send + Sync>;

impl std::fmt::Debug for ServerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerOptions")
            .field("server_id", &self.server_id)
            .field("timeout", &self.timeout)
            .field("channel_size", &self.channel_size)
            .field("interceptors", &self.interceptors.len())
            .field("stream_interceptors", &self.stream_interceptors.len())
            .field("skip_claim", &self.skip_claim.is_some())
            .field("observers", &self.observers.len())
            .field("stream_liveness", &self.stream_liveness)
            .field("discovery", &self.discovery)
            .finish()
    }
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            server_id: None,
            timeout: DEFAULT_SERVER_TIMEOUT,
            channel_size: crate::client::DEFAULT_CHANNEL_SIZE,
            interceptors: Vec::new(),
            stream_interceptors: Vec::new(),
            skip_claim: None,
            observers: Vec::new(),
            stream_liveness: StreamLiveness::default(),
            discovery: Default::default(),
        }
    }
}

impl ServerOptions {
    /// Sets the server id.
    pub fn server_id(mut self, id: impl Into<String>) -> Self {
        self.server_id = Some(id.into());
        self
    }
    /// Sets the server timeout.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }
    /// Sets the subscription buffer size (values of 0 are ignored, as in Go).
    pub fn channel_size(mut self, n: usize) -> Self {
        if n > 0 {
            self.channel_size = n;
        }
        self
    }
    /// Adds a handler interceptor (inside those added before).
    pub fn interceptor(mut self, i: impl ServerInterceptor) -> Self {
        self.interceptors.push(Arc::new(i));
        self
    }
    /// Adds a stream interceptor.
    pub fn stream_interceptor(mut self, i: impl StreamInterceptor) -> Self {
        self.stream_interceptors.push(Arc::new(i));
        self
    }
    /// Opts in to claim skip on queue methods, per request: when a request
    /// advertises that its caller understands announcements (every unary
    /// request of a queue method from this port or Go psrpc v0.7.5+) and
    /// `f` returns true, the server announces that it is handling the
    /// request and runs the handler at once, instead of bidding and waiting
    /// for the caller's grant: one bus round trip less per call.
    ///
    /// `f` is called once per such request, so it can be flipped at run
    /// time. Only sound where a queue request reaches exactly one server
    /// of the method: true for every bus of this crate family.
    pub fn skip_claim(mut self, f: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        self.skip_claim = Some(Arc::new(f));
        self
    }
    /// Adds a [`RequestObserver`].
    pub fn observer(mut self, o: Arc<dyn RequestObserver>) -> Self {
        self.observers.push(o);
        self
    }
    /// Sets how streams watch their client ([`StreamLiveness::disabled`]: not at all).
    pub fn stream_liveness(mut self, l: StreamLiveness) -> Self {
        self.stream_liveness = l;
        self
    }
}

/// How a server's claim for a request settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClaimOutcome {
    /// The caller chose this server.
    Granted,
    /// The caller chose another server.
    LostToPeer,
    /// No decision arrived before the request expired (or the server was
    /// killed while waiting).
    TimedOut,
    /// The server announced and ran the request without a grant (claim skip).
    Skipped,
}

impl ClaimOutcome {
    /// A short stable name: `granted`, `lost_to_peer`, `timed_out`, `skipped`.
    pub fn as_str(self) -> &'static str {
        match self {
            ClaimOutcome::Granted => "granted",
            ClaimOutcome::LostToPeer => "lost_to_peer",
            ClaimOutcome::TimedOut => "timed_out",
            ClaimOutcome::Skipped => "skipped",
        }
    }
}

impl std::fmt::Display for ClaimOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Sees the requests (and stream opens) a server reads off the bus. Every
/// method is called on the bus's delivery path or a request's task: it must
/// return quickly and never block. A server without observers pays one
/// emptiness check per event.
pub trait RequestObserver: Send + Sync + 'static {
    /// A request was read off the bus (before the expiry check).
    fn on_request_received(&self, _info: &RpcInfo) {}
    /// A request arrived after its expiry, `late_by` late; it is dropped.
    fn on_request_expired(&self, _info: &RpcInfo, _late_by: Duration) {}
    /// This server's claim for a request settled, `wait` after the bid was
    /// sent (zero for [`ClaimOutcome::Skipped`]). Not called when the
    /// server did not bid (negative affinity) or the bid was not sent.
    fn on_claim(&self, _info: &RpcInfo, _outcome: ClaimOutcome, _wait: Duration) {}
}

/// What every handler task of a server shares.
struct Core {
    bus: DynBus,
    service: String,
    id: String,
    /// Claim waiters by request id: the claim-response dispatcher completes them.
    claims: Mutex<ClaimTable>,
    /// Response and claim-request channels by client id.
    client_channels: Mutex<id::IdMap<Arc<ClientChannels>>>,
    interceptors: Arc<[Arc<dyn ServerInterceptor>]>,
    stream_interceptors: Arc<[Arc<dyn StreamInterceptor>]>,
    /// The claim-skip opt-in.
    skip_claim: Option<SkipClaimFn>,
    observers: Arc<[Arc<dyn RequestObserver>]>,
    clock: ClockCheck,
    /// Counts calls for discovery (when it is on).
    discovery: Option<Arc<crate::discovery::Registry>>,
    /// The channels of topic-less publishes by method (with its queue flag).
    publish_channels: Mutex<id::IdMap<(bool, Arc<Channel>)>>,
}

/// How far a request may look off (arrived this long after its expiry, or
/// sent this long in the future) before the clocks are suspected rather
/// than the bus: no bus delivers a message this late and still works.
pub const CLOCK_SKEW_TOLERANCE: Duration = Duration::from_secs(1);

/// Requests whose times only a skewed clock explains: counted, and warned
/// about at most once per [`crate::drops::LOG_INTERVAL`].
#[derive(Default)]
struct ClockCheck {
    suspected: AtomicU64,
    warned: crate::drops::Throttle,
}

impl ClockCheck {
    fn suspect(&self, channel: &str, what: std::fmt::Arguments<'_>) {
        let total = self.suspected.fetch_add(1, Ordering::Relaxed) + 1;
        let Some(since) = self.warned.due(total) else {
            return;
        };
        tracing::warn!(
            channel = %Truncated(channel),
            suspected_since_last_warning = since,
            suspected_total = total,
            "psrpc server: {what}: this server's clock or the caller's is off; \
             psrpc needs the clocks of all peers synchronised (NTP)"
        );
    }
}

/// The channels a server answers a client on.
struct ClientChannels {
    response: Channel,
    claim: Arc<Channel>,
    stream: Arc<Channel>,
}

/// Bound of the per-client channel cache; past it the cache starts over.
const CLIENT_CHANNEL_CACHE: usize = 4096;

impl Core {
    /// The channels to answer `client_id` on; `None` (the request dropped,
    /// counted and logged) when the bus could not carry them: a client id
    /// too long for the broker's names or one it reads as syntax.
    fn client_channels(&self, client_id: &str) -> Option<Arc<ClientChannels>> {
        let mut cache = self
            .client_channels
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(c) = cache.get(client_id) {
            return Some(c.clone());
        }
        if cache.len() >= CLIENT_CHANNEL_CACHE {
            cache.clear();
        }
        let c = Arc::new(ClientChannels {
            response: channels::response_channel(&self.service, client_id),
            claim: Arc::new(channels::claim_request_channel(&self.service, client_id)),
            stream: Arc::new(channels::stream_channel(&self.service, client_id)),
        });
        for ch in [&c.response, &c.claim, &c.stream] {
            if let Err(e) = self.bus.check_channel(ch) {
                let reason = crate::drops::DropReason::InvalidChannel;
                self.bus.drops().record(reason, &ch.legacy, &e);
                return None;
            }
        }
        cache.insert(client_id.to_owned(), c.clone());
        Some(c)
    }
}

/// How often expired claims and old decisions are given up while any
/// are held: what a request holds is released at most this long after its
/// expiry, whether or not anything else arrives.
const SWEEP_INTERVAL: Duration = Duration::from_millis(100);

/// How long a claim response that found no waiter is remembered.
const DECIDED_TTL: Duration = Duration::from_secs(1);

/// The server's side of the claim handshake.
///
/// When every server hears a request (affinity methods), the client may pick
/// a winner before a slower server has even registered its claim. Go's server
/// then waits for a claim response that already passed, until the request
/// expires, holding the request the whole time. Here the claim-response loop
/// remembers, for a short while, the decisions nobody here waited for, and a
/// late server reads the decision instead of waiting.
///
/// Everything here is released on time: a sweeper task runs while the table
/// holds anything and gives up each waiter at its request's expiry and each
/// remembered decision after [`DECIDED_TTL`]. It scans the undecided claims
/// (normally a handful: a claim is decided within a round trip), so a claim
/// costs nothing beyond its entry while it is pending.
#[derive(Default)]
struct ClaimTable {
    waiters: id::IdMap<ClaimWaiter>,
    decided: id::IdMap<String>,
    order: VecDeque<(Instant, String)>,
    /// Whether the sweeper task is running.
    sweeping: bool,
}

/// A claim made and not yet decided: what to run if this server wins. No
/// task waits for the decision: the claim-response handler runs `then`.
struct ClaimWaiter {
    then: Box<dyn FnOnce() + Send>,
    /// When the request expires: the claim is given up then.
    deadline: Instant,
    /// When the bid was made, for the observer's wait.
    bid_at: Instant,
    info: Arc<RpcInfo>,
    /// Counts as in flight for `shutdown`, which drains claims too.
    _token: TaskTrackerToken,
}

impl ClaimTable {
    /// Gives up the claims whose requests expired (returned, to be dropped
    /// and reported outside the lock) and forgets old decisions.
    fn sweep(&mut self, now: Instant) -> Vec<ClaimWaiter> {
        let ids: Vec<String> = self
            .waiters
            .iter()
            .filter(|(_, w)| w.deadline <= now)
            .map(|(id, _)| id.clone())
            .collect();
        let expired = ids
            .iter()
            .filter_map(|id| self.waiters.remove(id))
            .collect();
        while self
            .order
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) >= DECIDED_TTL)
        {
            if let Some((_, id)) = self.order.pop_front() {
                self.decided.remove(&id);
            }
        }
        expired
    }

    /// Whether nothing is held (the sweeper may stop).
    fn is_idle(&self) -> bool {
        self.waiters.is_empty() && self.order.is_empty()
    }

    /// Every entry held, in every structure.
    fn entries(&self) -> usize {
        self.waiters.len() + self.decided.len() + self.order.len()
    }

    fn insert(&mut self, request_id: String, waiter: ClaimWaiter) {
        self.waiters.insert(request_id, waiter);
    }

    fn remember(&mut self, request_id: String, winner: String) {
        self.order.push_back((Instant::now(), request_id.clone()));
        self.decided.insert(request_id, winner);
    }
}

impl Core {
    async fn publish<M: wire::Envelope>(&self, ch: &Channel, m: &M) {
        if let Err(e) = (*self.bus)
            .publish(ch, self.bus.compression().encode(m))
            .await
        {
            tracing::warn!(channel = %ch.legacy, error = %e, "psrpc server: publish failed");
        }
    }
}

struct HandlerEntry {
    stop: CancellationToken,
    tracker: TaskTracker,
    requests: HandlerSubscription,
    claims: Option<HandlerSubscription>,
    /// A stream handler's open streams.
    streams: Option<Arc<StreamTable>>,
}

/// A handler being registered, before its subscriptions exist.
struct HandlerParts {
    key: String,
    stop: CancellationToken,
    tracker: TaskTracker,
    streams: Option<Arc<StreamTable>>,
}

impl HandlerEntry {
    /// Stops taking requests and closes every open stream with `unavailable`
    /// "EOF" (for `reason`); returns the publishes of the close messages.
    fn stop(&self, reason: CloseReason) -> Vec<futures::future::BoxFuture<'static, Result<()>>> {
        self.stop.cancel();
        match &self.streams {
            Some(t) => stream::close_all(t, &Error::stream_eof(), reason),
            None => Vec::new(),
        }
    }
}

struct ServerInner {
    core: Arc<Core>,
    opts: ServerOptions,
    handlers: Mutex<HashMap<String, Option<HandlerEntry>>>,
    closed: AtomicBool,
    discovery: Option<Arc<crate::discovery::Registry>>,
}

impl Drop for ServerInner {
    /// The last clone went: open streams end as at a kill (their handlers
    /// may still run; the peers are told).
    fn drop(&mut self) {
        let hs = self.handlers.get_mut().unwrap_or_else(|e| e.into_inner());
        for e in hs.values().flatten() {
            for f in e.stop(CloseReason::Kill) {
                stream::spawn_publish(f);
            }
        }
    }
}

/// A server of one service: serves the handlers registered on it. Cheap to
/// clone; clones share the server. Dropping the last clone stops serving at
/// once, like [`kill`](RpcServer::kill); call [`shutdown`](RpcServer::shutdown)
/// first to drain.
#[must_use = "a server stops serving when its last handle is dropped"]
#[derive(Clone)]
pub struct RpcServer {
    inner: Arc<ServerInner>,
}

impl std::fmt::Debug for RpcServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcServer")
            .field("service", &self.inner.core.service)
            .field("id", &self.inner.core.id)
            .finish()
    }
}

impl RpcServer {
    /// A server of `service` on `bus`. It serves nothing until handlers are registered.
    pub fn new(bus: impl MessageBus, service: impl Into<String>, opts: ServerOptions) -> Self {
        let id = opts
            .server_id
            .clone()
            .unwrap_or_else(|| id::new_id(id::SERVER_PREFIX));
        let service = service.into();
        let discovery = crate::discovery::Registry::new(&opts.discovery, &service, &id);
        RpcServer {
            inner: Arc::new(ServerInner {
                core: Arc::new(Core {
                    bus: Arc::new(bus),
                    service,
                    id,
                    claims: Mutex::new(ClaimTable::default()),
                    client_channels: Mutex::default(),
                    interceptors: to_chain(&opts.interceptors),
                    discovery: discovery.clone(),
                    stream_interceptors: to_chain(&opts.stream_interceptors),
                    skip_claim: opts.skip_claim.clone(),
                    observers: opts.observers.iter().cloned().collect(),
                    clock: ClockCheck::default(),
                    publish_channels: Mutex::default(),
                }),
                opts,
                handlers: Mutex::new(HashMap::new()),
                closed: AtomicBool::new(false),
                discovery,
            }),
        }
    }

    /// The server id.
    pub fn id(&self) -> &str {
        &self.inner.core.id
    }

    /// The service name.
    pub fn service(&self) -> &str {
        &self.inner.core.service
    }

    /// The server's options.
    pub fn options(&self) -> &ServerOptions {
        &self.inner.opts
    }

    /// Whether the server was shut down or killed.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    /// The claims this server made that wait for the caller's decision.
    /// Each is given up by its request's expiry.
    pub fn pending_claims(&self) -> usize {
        self.inner.core.lock_claims().waiters.len()
    }

    /// Every entry the claim handshake holds (waiters, their expiry index,
    /// remembered decisions): zero once every request seen has expired and
    /// the remembered decisions have aged out. For tests and diagnostics.
    #[doc(hidden)]
    pub fn claim_table_entries(&self) -> usize {
        self.inner.core.lock_claims().entries()
    }

    /// How many requests arrived with times only a skewed clock explains:
    /// expired more than [`CLOCK_SKEW_TOLERANCE`] before they arrived, or
    /// sent more than that in the future. Each such request is also warned
    /// about (at most once per interval).
    pub fn clock_skew_suspected(&self) -> u64 {
        self.inner.core.clock.suspected.load(Ordering::Relaxed)
    }

    /// Starts registering a handler for the unary or multi method `method`:
    /// set the topic and affinity function on the returned [`Route`], then
    /// `.handle(handler).await` it. The handler takes the method's request
    /// type and answers its response type.
    ///
    /// ```
    /// # use psrpc::{LocalBus, Method, RpcServer, ServerOptions, Context};
    /// # #[derive(Clone, PartialEq, prost::Message)]
    /// # struct Job { #[prost(uint32, tag = "1")] size: u32 }
    /// static PLACE: Method<Job, Job> = Method::affinity("Place");
    /// # #[tokio::main] async fn main() -> psrpc::Result<()> {
    /// # let server = RpcServer::new(LocalBus::new(), "Jobs", ServerOptions::default());
    /// server
    ///     .route(&PLACE)
    ///     .topic("eu")
    ///     .affinity(|job: &Job| 1.0 / (1 + job.size) as f32)
    ///     .handle(|_ctx: Context, job: Job| async move { Ok(job) })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn route<'a, Req, Res>(&'a self, method: &'a Method<Req, Res>) -> Route<'a, Req, Res>
    where
        Req: Message + Default + Clone + 'static,
        Res: Message + Clone + 'static,
    {
        Route::new(self, method)
    }

    /// Starts registering a stream handler for `method` (client messages
    /// `Req`, server messages `Res`): set the topic and affinity function on
    /// the returned [`StreamRoute`], then `.handle(handler).await` it.
    pub fn stream_route<'a, Req, Res>(
        &'a self,
        method: &'a Method<Req, Res>,
    ) -> StreamRoute<'a, Req, Res>
    where
        Req: Message + Default + Clone + 'static,
        Res: Message + Clone + 'static,
    {
        StreamRoute::new(self, method)
    }

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
        Req: Message + Default + Clone + 'static,
        Res: Message + Clone + 'static,
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
            let terminal: crate::interceptor::ServerTerminal =
                Arc::new(move |ctx: Context, req: BoxMessage| {
                    let handler = handler.clone();
                    Box::pin(async move {
                        let req = downcast_message::<Req>(req)?;
                        let res = handler(ctx, req).await?;
                        Ok(Box::new(res) as BoxMessage)
                    })
                });
            ServerNext::new(core.interceptors.clone(), terminal)
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

    /// Tells discovery of a registration.
    fn discovered(&self, method: &MethodInfo, topic: &[String], stream: bool) {
        if let Some(d) = &self.inner.discovery {
            d.registered(&self.inner.core.bus, method, topic, stream);
        }
    }

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
                    crate::codec::receive_payload(bus, name, wire::Stream::TYPE_URL, bytes)
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
                        crate::codec::decode_payload::<wire::Stream>(bus, name, payload.clone());
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

    fn rpc_info(&self, method: &MethodInfo, topic: &[String]) -> Arc<RpcInfo> {
        Arc::new(RpcInfo {
            service: self.inner.core.service.clone(),
            method: method.name.to_string(),
            topic: topic.to_vec(),
            multi: method.multi,
        })
    }

    /// Subscribes a reserved handler's channel (and its claim-response
    /// channel for claimed methods) and installs it.
    async fn subscribe_method(
        &self,
        method: &MethodInfo,
        topic: &[String],
        ch: &Channel,
        queue: bool,
        on_message: Handler,
        parts: HandlerParts,
    ) -> Result<()> {
        let core = &self.inner.core;
        let size = self.inner.opts.channel_size;
        let subscribed = async {
            let requests = core
                .bus
                .subscribe_handler(ch, size, queue, on_message)
                .await?;
            let claims = if method.require_claim {
                let ch = channels::claim_response_channel(&core.service, &method.name, topic);
                // Only servers that hear every request can be too late for
                // the decision; a queue member hears only its own requests.
                let remember = !queue;
                let (core, name) = (core.clone(), ch.legacy.clone());
                let on_claim: Handler =
                    Arc::new(move |bytes| core.on_claim_response(|| name.clone(), bytes, remember));
                Some(
                    self.inner
                        .core
                        .bus
                        .subscribe_handler(&ch, size, false, on_claim)
                        .await?,
                )
            } else {
                None
            };
            Ok::<_, Error>((requests, claims))
        }
        .await;
        let (requests, claims) = match subscribed {
            Ok(s) => s,
            Err(e) => {
                self.unreserve(&parts.key);
                return Err(e);
            }
        };
        let entry = HandlerEntry {
            stop: parts.stop,
            tracker: parts.tracker,
            requests,
            claims,
            streams: parts.streams,
        };
        self.install(&parts.key, entry);
        Ok(())
    }

    /// Stops serving `method` on `topic`, without waiting for its in-flight
    /// requests (like [`kill`](Self::kill), for one handler). Unknown
    /// handlers are ignored.
    pub fn deregister<Req, Res>(&self, method: &Method<Req, Res>, topic: impl Into<Topic>) {
        self.deregister_name(method.name(), topic.into().parts());
    }

    /// [`deregister`](Self::deregister) by wire name.
    pub(crate) fn deregister_name(&self, method: &str, topic: &[String]) {
        if let Some(d) = &self.inner.discovery {
            d.deregistered(method, topic);
        }
        let key = channels::handler_key(method, topic);
        let entry = {
            let mut hs = self
                .inner
                .handlers
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            match hs.get(&key) {
                Some(Some(_)) => hs.remove(&key).flatten(),
                _ => None,
            }
        };
        if let Some(e) = entry {
            for f in e.stop(CloseReason::Deregistered) {
                stream::spawn_publish(f);
            }
        }
    }

    /// Publishes `msg` for the subscription method `method` on `topic`: every
    /// subscriber (multi) or one subscriber (queue) receives it.
    pub async fn publish<Req, T: Message + prost::Name>(
        &self,
        method: &Method<Req, T>,
        topic: impl Into<Topic>,
        msg: &T,
    ) -> Result<()> {
        let (method, topic) = (&method.info, topic.into());
        let topic = topic.parts();
        let core = &self.inner.core;
        let make = || channels::rpc_channel(&core.service, &method.name, topic, method.queue);
        let ch = if topic.is_empty() {
            // Without a topic, the channel is computed once per method.
            let mut cache = core
                .publish_channels
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            match cache.get(method.name.as_ref()) {
                Some((queue, ch)) if *queue == method.queue => ch.clone(),
                _ => {
                    let ch = Arc::new(make());
                    cache.insert(method.name.to_string(), (method.queue, ch.clone()));
                    ch
                }
            }
        } else {
            Arc::new(make())
        };
        let name = T::full_name();
        let url = [wire::TYPE_URL_PREFIX, name.as_str()];
        let bytes = core.bus.compression().encode_message(&url, msg);
        (*core.bus).publish(&ch, bytes).await
    }

    /// Stops taking requests, closes every open stream with `unavailable`
    /// "EOF", waits for every in-flight handler (and the claims they wait
    /// for) to finish, then leaves every channel. Later
    /// registrations fail with "server is closed".
    pub async fn shutdown(&self) {
        let entries = self.close_all();
        let core = &self.inner.core;
        futures::future::join_all(entries.into_iter().map(|e| async move {
            // Stop taking requests, close the open streams (the peers are
            // told before we leave), wait for the requests in flight (their
            // claim responses still arrive), then leave the claim channel.
            for r in futures::future::join_all(e.stop(CloseReason::Shutdown)).await {
                if let Err(err) = r {
                    tracing::warn!(error = %err, "psrpc server: stream close not sent");
                }
            }
            drop(e.requests);
            e.tracker.close();
            tokio::select! {
                _ = e.tracker.wait() => {}
                _ = core.sweep_claims() => {}
            }
            drop(e.claims);
        }))
        .await;
    }

    /// Leaves every channel at once and returns without waiting; open
    /// streams are closed with `unavailable` "EOF" (the peers are told in
    /// the background). Handlers already running are not canceled: they finish and still answer (as in
    /// Go: the caller then gets its answer rather than a timeout),
    /// but a request still waiting for its claim is given up.
    pub fn kill(&self) {
        for e in self.close_all() {
            for f in e.stop(CloseReason::Kill) {
                stream::spawn_publish(f);
            }
        }
        // Requests still waiting for their claim give up now.
        let core = &self.inner.core;
        let given_up: Vec<ClaimWaiter> = {
            let mut t = core.lock_claims();
            t.waiters.drain().map(|(_, w)| w).collect()
        };
        core.timed_out(given_up);
    }

    fn close_all(&self) -> Vec<HandlerEntry> {
        self.inner.closed.store(true, Ordering::Release);
        if let Some(d) = &self.inner.discovery {
            d.stop();
        }
        let mut hs = self
            .inner
            .handlers
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        hs.drain().filter_map(|(_, e)| e).collect()
    }

    /// Claims `(method, topic)` in the handler table before subscribing, so
    /// two registrations cannot race.
    fn reserve(&self, method: &str, topic: &[String]) -> Result<String> {
        let key = channels::handler_key(method, topic);
        let mut hs = self
            .inner
            .handlers
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if self.is_closed() {
            return Err(Error::server_closed());
        }
        if hs.contains_key(&key) {
            return Err(Error::new(
                ErrorCode::AlreadyExists,
                "handler already exists",
            ));
        }
        hs.insert(key.clone(), None);
        Ok(key)
    }

    fn unreserve(&self, key: &str) {
        let mut hs = self
            .inner
            .handlers
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if matches!(hs.get(key), Some(None)) {
            hs.remove(key);
        }
    }

    fn install(&self, key: &str, entry: HandlerEntry) {
        let mut hs = self
            .inner
            .handlers
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // Shut down (or deregistered) while subscribing: stop at once.
        if self.is_closed() || !matches!(hs.get(key), Some(None)) {
            drop(hs);
            entry.stop.cancel();
            return;
        }
        hs.insert(key.to_owned(), Some(entry));
    }
}

struct UnaryHandler<Req, Res, H> {
    core: Arc<Core>,
    method: MethodInfo,
    info: Arc<RpcInfo>,
    /// The request channel (legacy name), for drop reports.
    channel: String,
    handler: Arc<H>,
    /// The interceptor chain ending in `handler`, when there are interceptors.
    chain: Option<ServerNext>,
    affinity: Option<RequestAffinityFn<Req>>,
    _p: PhantomData<fn() -> Res>,
}

impl Core {
    fn lock_claims(&self) -> std::sync::MutexGuard<'_, ClaimTable> {
        self.claims.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn observe(&self, f: impl Fn(&dyn RequestObserver)) {
        for o in self.observers.iter() {
            f(&**o);
        }
    }

    /// Reports and drops claims given up (outside the table lock: they own
    /// the request and its handler).
    fn timed_out(&self, given_up: Vec<ClaimWaiter>) {
        if given_up.is_empty() {
            return;
        }
        if !self.observers.is_empty() {
            let now = Instant::now();
            for w in &given_up {
                let wait = now.saturating_duration_since(w.bid_at);
                self.observe(|o| o.on_claim(&w.info, ClaimOutcome::TimedOut, wait));
            }
        }
        drop(given_up);
    }

    /// Starts the sweeper if the table holds anything and none runs. It
    /// stops once the table is empty, and with the server.
    fn ensure_sweeper(self: &Arc<Self>, table: &mut ClaimTable) {
        if table.sweeping || table.is_idle() {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            // Not in a runtime (requests are read off a bus inside one):
            // the next claim made from a runtime starts it.
            return;
        };
        table.sweeping = true;
        let core = Arc::downgrade(self);
        rt.spawn(async move {
            loop {
                tokio::time::sleep(SWEEP_INTERVAL).await;
                let Some(core) = core.upgrade() else {
                    return;
                };
                let (expired, idle) = {
                    let mut t = core.lock_claims();
                    let expired = t.sweep(Instant::now());
                    let idle = t.is_idle();
                    if idle {
                        t.sweeping = false;
                    }
                    (expired, idle)
                };
                core.timed_out(expired);
                if idle {
                    return;
                }
            }
        });
    }

    fn on_claim_response(
        self: &Arc<Self>,
        channel: impl Fn() -> String,
        bytes: Bytes,
        remember: bool,
    ) {
        let bus = &*self.bus;
        let Some(payload) =
            crate::codec::receive_payload(bus, &channel, ClaimResponse::TYPE_URL, bytes)
        else {
            return;
        };
        // Read in place: every server of the method hears every claim
        // response, and most find no claim of theirs.
        let decoded: ClaimResponse;
        let (request_id, server_id) = match wire::peek_claim_response(&payload) {
            Some(ids) => ids,
            None => {
                let Some(c) = crate::codec::decode_payload(bus, &channel, payload.clone()) else {
                    return;
                };
                decoded = c;
                (decoded.request_id.as_str(), decoded.server_id.as_str())
            }
        };
        let mut table = self.lock_claims();
        match table.waiters.remove(request_id) {
            Some(w) => {
                drop(table);
                let wait = w.bid_at.elapsed();
                if server_id == self.id {
                    self.observe(|o| o.on_claim(&w.info, ClaimOutcome::Granted, wait));
                    (w.then)();
                } else {
                    self.observe(|o| o.on_claim(&w.info, ClaimOutcome::LostToPeer, wait));
                }
            }
            None if remember => {
                table.remember(request_id.to_owned(), server_id.to_owned());
                self.ensure_sweeper(&mut table);
            }
            None => {}
        }
    }

    /// Checks a request's times on arrival (after reporting it received):
    /// `None` when it expired (dropped, counted, reported), else how long
    /// its handler may take: until the expiry, and never longer than the
    /// caller asked for (`expiry - sent_at`), whatever our clock says.
    fn arrived(
        &self,
        info: &RpcInfo,
        channel: &str,
        id: &str,
        sent_at: i64,
        expiry: i64,
    ) -> Option<Duration> {
        self.observe(|o| o.on_request_received(info));
        let now = wire::now_ns();
        let tolerance = CLOCK_SKEW_TOLERANCE.as_nanos() as i64;
        if expiry <= now {
            let late = Duration::from_nanos(now.saturating_sub(expiry) as u64);
            self.observe(|o| o.on_request_expired(info, late));
            self.bus.drops().record(
                DropReason::Expired,
                channel,
                &format_args!(
                    "request {} arrived {late:?} after its expiry",
                    Truncated(id)
                ),
            );
            if late.as_nanos() as i64 > tolerance {
                self.clock.suspect(
                    channel,
                    format_args!("a request arrived {late:?} after its expiry"),
                );
            }
            return None;
        }
        if sent_at.saturating_sub(now) > tolerance {
            let ahead = Duration::from_nanos((sent_at - now) as u64);
            self.clock.suspect(
                channel,
                format_args!("a request was sent {ahead:?} in the future"),
            );
        }
        let mut budget = expiry - now;
        if sent_at > 0 && expiry > sent_at {
            budget = budget.min(expiry - sent_at);
        }
        Some(Duration::from_nanos(budget as u64))
    }

    /// The server's side of the claim handshake for `request_id`: claims
    /// with `affinity` on `claim_channel` and, if this server is chosen
    /// before `deadline`, runs `then` (where the request's work starts).
    /// Nothing waits meanwhile; a lost or expired claim just goes away.
    #[allow(clippy::too_many_arguments)]
    fn claim_then(
        self: &Arc<Self>,
        info: &Arc<RpcInfo>,
        request_id: String,
        claim_channel: &Arc<Channel>,
        affinity: f32,
        deadline: Instant,
        token: TaskTrackerToken,
        then: impl FnOnce() + Send + 'static,
    ) {
        // Negative (or NaN): this server does not want the request.
        if affinity.is_nan() || affinity < 0.0 {
            return;
        }
        {
            let mut table = self.lock_claims();
            if let Some(winner) = table.decided.remove(&request_id) {
                // Decided before we could claim: it was not us.
                drop(table);
                tracing::trace!(%request_id, %winner, "psrpc server: claim already decided");
                self.observe(|o| o.on_claim(info, ClaimOutcome::LostToPeer, Duration::ZERO));
                return;
            }
            table.insert(
                request_id.clone(),
                ClaimWaiter {
                    then: Box::new(then),
                    deadline,
                    bid_at: Instant::now(),
                    info: info.clone(),
                    _token: token,
                },
            );
            self.ensure_sweeper(&mut table);
        }
        let claim = ClaimRequest {
            request_id,
            server_id: self.id.clone(),
            affinity,
            handling: false,
        };
        stream::publish_detached(
            &self.bus,
            claim_channel,
            self.bus.compression().encode(&claim),
        );
    }

    /// Gives up expired claims until the future is dropped (shutdown runs it
    /// while it waits, so a claim nobody answers cannot hold it up).
    async fn sweep_claims(&self) {
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let expired = self.lock_claims().sweep(Instant::now());
            self.timed_out(expired);
        }
    }
}

impl<Req, Res, H, Fut> UnaryHandler<Req, Res, H>
where
    Req: Message + Default + Clone + 'static,
    Res: Message + Clone + 'static,
    H: Fn(Context, Req) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Res>> + Send + 'static,
{
    /// Takes one request off the bus (in the bus's handler: nothing here
    /// waits): checks it, claims it if the method is claimed, and starts
    /// its handler task once this server has it.
    fn on_request(self: &Arc<Self>, bytes: Bytes, tracker: &TaskTracker) {
        let name = || {
            let i = &self.info;
            channels::rpc_channel(&i.service, &self.method.name, &i.topic, self.method.queue).legacy
        };
        let Some(req) = crate::codec::receive_envelope::<Request>(&*self.core.bus, name, bytes)
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
                move || {
                    t.spawn(h.run(req, msg, deadline, chans));
                },
            );
        } else {
            tracker.spawn(self.clone().run(req, msg, deadline, chans));
        }
    }

    /// Claim skip: tells the caller this server is handling the request
    /// (no grant awaited), then runs it. If the announcement cannot be
    /// published the handler does not run: the caller will time out and
    /// may retry, and must not find the request already run here.
    async fn announce_and_run(
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
            .observe(|o| o.on_claim(&self.info, ClaimOutcome::Skipped, Duration::ZERO));
        self.run(req, msg, deadline, chans).await;
    }

    /// Runs the handler for a request this server has, and answers.
    async fn run(
        self: Arc<Self>,
        req: Request,
        msg: Req,
        deadline: Instant,
        chans: Arc<ClientChannels>,
    ) {
        let core = &*self.core;
        let _counted = core.discovery.as_ref().map(|d| d.call_started());
        // Only the request id is kept while the handler runs.
        let Request {
            request_id,
            client_id,
            sent_at,
            metadata,
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
            Some(next) => next
                .clone()
                .run(ctx, Box::new(msg))
                .await
                .map(|r| Bytes::from(r.to_bytes())),
        };
        let (request_id, bytes) = {
            let response = self.response(request_id, result);
            let bytes = core.bus.compression().encode(&response);
            (response.request_id, bytes)
        };
        match (*core.bus).publish(&chans.response, bytes).await {
            Ok(()) => {}
            // A response the bus cannot carry: the caller gets that error
            // at once rather than waiting for its deadline.
            Err(e) if e.code() == ErrorCode::ResourceExhausted => {
                let err = Error::new(
                    ErrorCode::ResourceExhausted,
                    format!("the response cannot be sent: {}", e.message()),
                );
                core.publish(&chans.response, &self.response(request_id, Err(err)))
                    .await;
            }
            Err(e) => {
                tracing::warn!(channel = %chans.response.legacy, error = %e, "psrpc server: publish failed");
            }
        }
    }

    fn response(&self, request_id: String, result: Result<Bytes>) -> Response {
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
                // nor with an empty message (that reads as success, Q7).
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

/// One registered stream handler: accepts opens, runs the handler per stream.
struct StreamHandler<S, R, H> {
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
    fn on_open(self: &Arc<Self>, m: wire::Stream, tracker: &TaskTracker) {
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
                move || {
                    t.spawn(h.accept(m, chans));
                },
            );
        } else {
            tracker.spawn(self.clone().accept(m, chans));
        }
    }

    /// Accepts a stream this server has: acks the open and runs the handler.
    async fn accept(self: Arc<Self>, m: wire::Stream, chans: Arc<ClientChannels>) {
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
            interceptors: core.stream_interceptors.clone(),
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
        // This end's presence is subscribed while the ack travels (as the
        // client does with the open): no extra round trip on the open's
        // path, and the presence is in place by the client's first look.
        let (presence, ()) = tokio::join!(
            shared.presence(self.liveness, false),
            core.publish(&out, &ack)
        );
        shared.watch_peer(self.liveness, false, presence);
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::bus::{LocalBus, Subscription};
    use crate::client::{ClientOptions, RpcClient};

    /// The local bus, except that nothing can be published to a client's
    /// claim channel (as when the broker refuses the publish).
    struct NoClaims(LocalBus);

    #[async_trait::async_trait]
    impl MessageBus for NoClaims {
        async fn publish(&self, channel: &Channel, msg: Bytes) -> Result<()> {
            if channel.legacy.ends_with("|CLAIM") {
                return Err(Error::new(ErrorCode::Unavailable, "publish refused"));
            }
            self.0.publish(channel, msg).await
        }
        async fn subscribe(&self, channel: &Channel, size: usize) -> Result<Subscription> {
            self.0.subscribe(channel, size).await
        }
        async fn subscribe_queue(&self, channel: &Channel, size: usize) -> Result<Subscription> {
            self.0.subscribe_queue(channel, size).await
        }
        async fn subscribe_handler(
            &self,
            channel: &Channel,
            size: usize,
            queue: bool,
            handler: Handler,
        ) -> Result<HandlerSubscription> {
            self.0
                .subscribe_handler(channel, size, queue, handler)
                .await
        }
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct N {
        #[prost(int64, tag = "1")]
        n: i64,
    }

    /// An announcement that cannot be published means the handler does not
    /// run: the caller, which never heard of it, may retry elsewhere.
    #[tokio::test]
    async fn failed_announcement_runs_nothing() {
        static M: Method<N, N> = Method::queue("M");
        let bus = LocalBus::new();
        let s = RpcServer::new(
            NoClaims(bus.clone()),
            "S",
            ServerOptions::default().skip_claim(|| true),
        );
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
}
