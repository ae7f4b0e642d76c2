//! The generic server runtime ([`RpcServer`]): handlers per method and topic,
//! the server side of the claim handshake, deadlines, drain on shutdown, kill,
//! and publishing for subscription methods.

use std::collections::HashMap;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use prost::Message;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::{TaskTracker, task_tracker::TaskTrackerToken};

use crate::bus::{DynBus, Handler, HandlerSubscription, MessageBus};
use crate::channels::{self, Channel};
use crate::error::{Error, ErrorCode, Result};
use crate::id;
use crate::info::{BoxMessage, Context, IncomingHeader, MethodInfo, RpcInfo, downcast_message};
use crate::interceptor::{ServerInterceptor, ServerNext, StreamInterceptor, to_chain};
use crate::stream::{self, ServerStream, StreamAffinityFn, StreamParams, StreamTable};
use crate::wire::{self, ClaimRequest, ClaimResponse, Request, Response, StreamAck, StreamBody};

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
    /// Answering discovery (on by default; see [`crate::discovery`]).
    pub discovery: crate::discovery::DiscoveryOptions,
}

impl std::fmt::Debug for ServerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerOptions")
            .field("server_id", &self.server_id)
            .field("timeout", &self.timeout)
            .field("channel_size", &self.channel_size)
            .field("interceptors", &self.interceptors.len())
            .field("stream_interceptors", &self.stream_interceptors.len())
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
}

/// Scores a request for an affinity method: higher is better; a negative
/// score means "do not claim" (the server stays silent); zero is a valid
/// claim that the default selector never picks. It runs where the request
/// arrives, before any task is started for it: keep it quick and never
/// block in it.
pub type AffinityFn<Req> = Arc<dyn Fn(&Req) -> f32 + Send + Sync>;

/// What every handler task of a server shares.
struct Core {
    bus: DynBus,
    service: String,
    id: String,
    /// Claim waiters by request id: the claim-response dispatcher completes them.
    claims: Mutex<ClaimTable>,
    /// Response and claim-request channels by client id.
    client_channels: Mutex<HashMap<String, Arc<ClientChannels>>>,
    interceptors: Arc<[Arc<dyn ServerInterceptor>]>,
    stream_interceptors: Arc<[Arc<dyn StreamInterceptor>]>,
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
    fn client_channels(&self, client_id: &str) -> Arc<ClientChannels> {
        let mut cache = self
            .client_channels
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(c) = cache.get(client_id) {
            return c.clone();
        }
        if cache.len() >= CLIENT_CHANNEL_CACHE {
            cache.clear();
        }
        let c = Arc::new(ClientChannels {
            response: channels::response_channel(&self.service, client_id),
            claim: Arc::new(channels::claim_request_channel(&self.service, client_id)),
            stream: Arc::new(channels::stream_channel(&self.service, client_id)),
        });
        cache.insert(client_id.to_owned(), c.clone());
        c
    }
}

/// Fewest waiters before an insert sweeps the expired ones.
const MIN_SWEEP: usize = 1024;

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
#[derive(Default)]
struct ClaimTable {
    waiters: HashMap<String, ClaimWaiter>,
    /// The number of waiters at which the next insert first gives up the
    /// expired ones (twice what was left after the last sweep): amortised
    /// constant time, and memory bounded by the claims really pending.
    sweep_at: usize,
    decided: HashMap<String, String>,
    order: std::collections::VecDeque<(Instant, String)>,
}

/// A claim made and not yet decided: what to run if this server wins. No
/// task waits for the decision: the claim-response handler runs `then`.
struct ClaimWaiter {
    then: Box<dyn FnOnce() + Send>,
    /// When the request expires: the claim is given up then.
    deadline: Instant,
    /// Counts as in flight for `shutdown`, which drains claims too.
    _token: TaskTrackerToken,
}

impl ClaimTable {
    /// Gives up the claims whose requests expired.
    fn sweep(&mut self, now: Instant) {
        self.waiters.retain(|_, w| w.deadline > now);
        self.sweep_at = (self.waiters.len() * 2).max(MIN_SWEEP);
    }

    fn insert(&mut self, request_id: String, waiter: ClaimWaiter) {
        if self.waiters.len() >= self.sweep_at {
            self.sweep(Instant::now());
        }
        self.waiters.insert(request_id, waiter);
    }

    fn remember(&mut self, request_id: String, winner: String) {
        let now = Instant::now();
        while let Some((t, _)) = self.order.front() {
            if now.duration_since(*t) < DECIDED_TTL {
                break;
            }
            if let Some((_, id)) = self.order.pop_front() {
                self.decided.remove(&id);
            }
        }
        self.order.push_back((now, request_id.clone()));
        self.decided.insert(request_id, winner);
    }
}

impl Core {
    async fn publish<M: wire::Envelope>(&self, ch: &Channel, m: &M) {
        if let Err(e) = self.bus.publish(ch, wire::encode_msg(m)).await {
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
    /// "EOF"; returns the publishes of the close messages.
    fn stop(&self) -> Vec<futures::future::BoxFuture<'static, Result<()>>> {
        self.stop.cancel();
        match &self.streams {
            Some(t) => stream::close_all(t, &Error::stream_eof()),
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

/// A server of one service: serves the handlers registered on it. Cheap to
/// clone; clones share the server. Dropping the last clone stops serving at
/// once, like [`kill`](RpcServer::kill); call [`shutdown`](RpcServer::shutdown)
/// first to drain.
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
        let mut interceptors = opts.interceptors.clone();
        interceptors.extend(discovery.as_ref().map(|d| d.interceptor()));
        RpcServer {
            inner: Arc::new(ServerInner {
                core: Arc::new(Core {
                    bus: Arc::new(bus),
                    service,
                    id,
                    claims: Mutex::new(ClaimTable::default()),
                    client_channels: Mutex::new(HashMap::new()),
                    interceptors: to_chain(&interceptors),
                    stream_interceptors: to_chain(&opts.stream_interceptors),
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

    /// Registers `handler` for `method` on `topic` (empty: no topic) and
    /// returns once its subscriptions are in effect. `affinity` scores
    /// requests of affinity methods; without it a server claims with 1.0.
    ///
    /// Fails with `canceled` "server is closed" after shutdown, and with
    /// `already_exists` "handler already exists" when the method and topic
    /// are registered already.
    pub async fn register_handler<Req, Res, H, Fut>(
        &self,
        method: &MethodInfo,
        topic: &[String],
        handler: H,
        affinity: Option<AffinityFn<Req>>,
    ) -> Result<()>
    where
        Req: Message + Default + Clone + 'static,
        Res: Message + Clone + 'static,
        H: Fn(Context, Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Res>> + Send + 'static,
    {
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
        let h = Arc::new(UnaryHandler {
            core: core.clone(),
            method: method.clone(),
            info: self.rpc_info(method, topic),
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
        let req_ch = channels::rpc_channel(&core.service, &method.name, topic, method.queue);
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
    /// (empty: no topic) and returns once its subscriptions are in effect.
    /// The handler gets a [`ServerStream`] that sends `S` and receives `R`.
    /// `affinity` decides, per open, whether and how eagerly this server
    /// claims a stream (claimed methods only; default 1.0, negative: no claim).
    ///
    /// Errors as [`register_handler`](Self::register_handler).
    pub async fn register_stream_handler<S, R, H, Fut>(
        &self,
        method: &MethodInfo,
        topic: &[String],
        handler: H,
        affinity: Option<StreamAffinityFn>,
    ) -> Result<()>
    where
        S: Message + Clone + 'static,
        R: Message + Default + Clone + 'static,
        H: Fn(ServerStream<S, R>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        let key = self.reserve(&method.name, topic)?;
        let core = &self.inner.core;
        let streams: Arc<StreamTable> = Arc::new(Mutex::new(HashMap::new()));
        let stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        let h = Arc::new(StreamHandler {
            core: core.clone(),
            method: method.clone(),
            info: self.rpc_info(method, topic),
            handler,
            affinity,
            streams: streams.clone(),
            timeout: self.inner.opts.timeout,
            buffer: self.inner.opts.channel_size,
            stop: stop.clone(),
            _p: PhantomData::<fn(S) -> R>,
        });
        let on_message: Handler = {
            let (stop, tracker) = (stop.clone(), tracker.clone());
            Arc::new(move |bytes| {
                let m = match wire::decode_envelope::<wire::Stream>(bytes) {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(error = %e, "psrpc server: dropped malformed stream message");
                        return;
                    }
                };
                if matches!(m.body, Some(StreamBody::Open(_))) {
                    // Opens are handled concurrently; none while draining.
                    if !stop.is_cancelled() {
                        h.on_open(m, &tracker);
                    }
                } else {
                    // Everything else in arrival order.
                    stream::dispatch(&h.streams, m);
                }
            })
        };
        let ch = channels::stream_server_channel(&core.service, &method.name, topic);
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
                let core = core.clone();
                let on_claim: Handler =
                    Arc::new(move |bytes| on_claim_response(&core, bytes, remember));
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
    pub fn deregister(&self, method: &str, topic: &[String]) {
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
            for f in e.stop() {
                stream::spawn_publish(f);
            }
        }
    }

    /// Publishes `msg` for the subscription method `method` on `topic`: every
    /// subscriber (multi) or one subscriber (queue) receives it.
    pub async fn publish<T: Message + prost::Name>(
        &self,
        method: &MethodInfo,
        topic: &[String],
        msg: &T,
    ) -> Result<()> {
        let core = &self.inner.core;
        let ch = channels::rpc_channel(&core.service, &method.name, topic, method.queue);
        let bytes = wire::encode_msg_raw(&wire::type_url_of::<T>(), &msg.encode_to_vec());
        core.bus.publish(&ch, bytes).await
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
            for r in futures::future::join_all(e.stop()).await {
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
    /// Go, quirk Q9: the caller then gets its answer rather than a timeout),
    /// but a request still waiting for its claim is given up.
    pub fn kill(&self) {
        for e in self.close_all() {
            for f in e.stop() {
                stream::spawn_publish(f);
            }
        }
        // Requests still waiting for their claim give up now.
        self.inner
            .core
            .claims
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .waiters
            .clear();
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
    handler: Arc<H>,
    /// The interceptor chain ending in `handler`, when there are interceptors.
    chain: Option<ServerNext>,
    affinity: Option<AffinityFn<Req>>,
    _p: PhantomData<fn() -> Res>,
}

fn on_claim_response(core: &Core, bytes: Bytes, remember: bool) {
    let claim = match wire::decode_envelope::<ClaimResponse>(bytes) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "psrpc server: dropped malformed claim response");
            return;
        }
    };
    let mut table = core.claims.lock().unwrap_or_else(|e| e.into_inner());
    match table.waiters.remove(&claim.request_id) {
        Some(w) => {
            drop(table);
            if claim.server_id == core.id {
                (w.then)();
            }
        }
        None if remember => table.remember(claim.request_id, claim.server_id),
        None => {}
    }
}

impl Core {
    /// The server's side of the claim handshake for `request_id`: claims
    /// with `affinity` on `claim_channel` and, if this server is chosen
    /// before `deadline`, runs `then` (where the request's work starts).
    /// Nothing waits meanwhile; a lost or expired claim just goes away.
    fn claim_then(
        &self,
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
            let mut table = self.claims.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(winner) = table.decided.remove(&request_id) {
                // Decided before we could claim: it was not us.
                tracing::trace!(%request_id, %winner, "psrpc server: claim already decided");
                return;
            }
            table.insert(
                request_id.clone(),
                ClaimWaiter {
                    then: Box::new(then),
                    deadline,
                    _token: token,
                },
            );
        }
        let claim = ClaimRequest {
            request_id,
            server_id: self.id.clone(),
            affinity,
            handling: false,
        };
        stream::publish_detached(&self.bus, claim_channel, wire::encode_msg(&claim));
    }

    /// Gives up expired claims until the future is dropped (shutdown runs it
    /// while it waits, so a claim nobody answers cannot hold it up).
    async fn sweep_claims(&self) {
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            self.claims
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .sweep(Instant::now());
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
        let req = match wire::decode_envelope::<Request>(bytes) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(
                    method = %self.method.name,
                    error = %e,
                    "psrpc server: dropped malformed request"
                );
                return;
            }
        };
        let now = wire::now_ns();
        if req.expiry <= now {
            tracing::debug!(request_id = %req.request_id, "psrpc server: dropped expired request");
            return;
        }
        let deadline = Instant::now() + Duration::from_nanos((req.expiry - now) as u64);
        let chans = self.core.client_channels(&req.client_id);
        let msg = match Req::decode(req.raw_request.clone()) {
            Ok(m) => m,
            Err(e) => {
                // Answered before any claim, as Go does.
                let err = Error::wrap(ErrorCode::MalformedRequest, e);
                let h = self.clone();
                tracker.spawn(async move {
                    let r = h.response(&req, Err(err));
                    h.core.publish(&chans.response, &r).await;
                });
                return;
            }
        };
        if self.method.require_claim {
            let affinity = self.affinity.as_ref().map_or(1.0, |f| f(&msg));
            let claim = chans.claim.clone();
            let (h, t) = (self.clone(), tracker.clone());
            self.core.claim_then(
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

    /// Runs the handler for a request this server has, and answers.
    async fn run(
        self: Arc<Self>,
        mut req: Request,
        msg: Req,
        deadline: Instant,
        chans: Arc<ClientChannels>,
    ) {
        let core = &*self.core;
        let header = IncomingHeader {
            remote_id: req.client_id.clone(),
            sent_at: UNIX_EPOCH + Duration::from_nanos(req.sent_at.max(0) as u64),
            metadata: std::mem::take(&mut req.metadata),
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
        core.publish(&chans.response, &self.response(&req, result))
            .await;
    }

    fn response(&self, req: &Request, result: Result<Bytes>) -> Response {
        let mut r = Response {
            request_id: req.request_id.clone(),
            server_id: self.core.id.clone(),
            sent_at: wire::now_ns(),
            ..Default::default()
        };
        match result {
            Ok(res) => r.raw_response = res,
            Err(e) => {
                // An error never travels as code "" (that reads as no code),
                // nor with an empty message (that reads as success, Q7).
                let code = match e.code() {
                    ErrorCode::Ok => &ErrorCode::Unknown,
                    c => c,
                };
                r.code = code.as_str().to_owned();
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
    handler: H,
    affinity: Option<StreamAffinityFn>,
    streams: Arc<StreamTable>,
    timeout: Duration,
    buffer: usize,
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
    /// Takes one open off the bus (WIRE.md 10.3, server side): claims it
    /// if the method is claimed, and accepts it once this server has it.
    fn on_open(self: &Arc<Self>, m: wire::Stream, tracker: &TaskTracker) {
        let now = wire::now_ns();
        if m.expiry <= now {
            tracing::debug!(stream_id = %m.stream_id, "psrpc server: dropped expired stream open");
            return;
        }
        let Some(StreamBody::Open(open)) = &m.body else {
            return;
        };
        let chans = self.core.client_channels(&open.node_id);
        if self.method.require_claim {
            let deadline = Instant::now() + Duration::from_nanos((m.expiry - now) as u64);
            let affinity = self.affinity.as_ref().map_or(1.0, |f| f());
            let claim = chans.claim.clone();
            let (h, t) = (self.clone(), tracker.clone());
            self.core.claim_then(
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
            t.insert(m.stream_id.clone(), shared.clone());
        }
        let ack = wire::Stream {
            stream_id: m.stream_id,
            request_id: m.request_id,
            sent_at: m.sent_at,
            expiry: m.expiry,
            body: Some(StreamBody::Ack(StreamAck {})),
        };
        core.publish(&out, &ack).await;
        shared.open_interceptors();
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
        let result =
            (self.handler)(ServerStream::new(shared.clone(), rx, ctx, hijacked.clone())).await;
        if !hijacked.load(Ordering::Acquire) {
            // Err when the stream was closed already: nothing to do.
            let _ = shared.close(result.err()).await;
        }
    }
}
