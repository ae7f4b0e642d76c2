//! The generic server runtime ([`RpcServer`]): handlers per method and topic,
//! the server side of the claim handshake, deadlines, drain on shutdown, kill,
//! and publishing for subscription methods.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use prost::Message;

use crate::bus::{DynBus, MessageBus};
use crate::channels::{self, Channel};
use crate::error::Result;
use crate::id;
use crate::interceptor::{Chain, ServerInterceptor, to_chain};
use crate::method::Method;
use crate::outcome::CloseReason;
use crate::topic::Topic;
use crate::wire;

mod claim;
mod observer;
mod options;
mod registry;
mod route;
mod stream;
mod unary;

pub use crate::outcome::ClaimOutcome;
pub use claim::CLOCK_SKEW_TOLERANCE;
use claim::{ClaimTable, ClaimWaiter, ClockCheck};
pub use options::{DEFAULT_SERVER_TIMEOUT, ServerOptions, SkipClaimFn};
use registry::HandlerEntry;
pub(crate) use route::{OpenAffinityFn, RequestAffinityFn};
pub use route::{Route, StreamOpen, StreamRoute};

/// What every handler task of a server shares.
struct Core {
    bus: DynBus,
    service: String,
    id: String,
    /// Claim waiters by request id: the claim-response dispatcher completes them.
    claims: Mutex<ClaimTable>,
    /// Response and claim-request channels by client id.
    client_channels: Mutex<id::IdMap<Arc<ClientChannels>>>,
    interceptors: Chain<dyn ServerInterceptor>,
    /// The claim-skip opt-in.
    skip_claim: Option<SkipClaimFn>,
    clock: ClockCheck,
    /// Counts calls for discovery (when it is on).
    discovery: Option<Arc<crate::discovery::Registry>>,
    /// The channels of topic-less publishes by method (with its queue flag).
    publish_channels: Mutex<id::IdMap<(bool, Arc<Channel>)>>,
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
                crate::stream::spawn_publish(f);
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
    /// A server of `service` on `bus`. It serves nothing until handlers are
    /// registered. Fails with `invalid_argument` when `service` or an
    /// option cannot work: an empty or ill-formed service name or server id
    /// (see [`check_server_id`](crate::channels::check_server_id)), a zero
    /// `channel_size` or timeout.
    pub async fn new(
        bus: impl MessageBus,
        service: impl Into<String>,
        opts: ServerOptions,
    ) -> Result<Self> {
        let service = service.into();
        channels::check_service_name(&service)?;
        opts.validate()?;
        let id = opts
            .server_id
            .clone()
            .unwrap_or_else(|| id::new_id(id::SERVER_PREFIX));
        let discovery = crate::discovery::Registry::new(&opts.discovery, &service, &id);
        Ok(RpcServer {
            inner: Arc::new(ServerInner {
                core: Arc::new(Core {
                    bus: Arc::new(bus),
                    service,
                    id,
                    claims: Mutex::new(ClaimTable::default()),
                    client_channels: Mutex::default(),
                    interceptors: to_chain(&opts.interceptors),
                    discovery: discovery.clone(),
                    skip_claim: opts.skip_claim.clone(),
                    clock: ClockCheck::default(),
                    publish_channels: Mutex::default(),
                }),
                opts,
                handlers: Mutex::new(HashMap::new()),
                closed: AtomicBool::new(false),
                discovery,
            }),
        })
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
    /// # let server = RpcServer::new(LocalBus::new(), "Jobs", ServerOptions::default()).await?;
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
                crate::stream::spawn_publish(f);
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
}
