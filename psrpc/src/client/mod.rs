//! The generic client runtime ([`RpcClient`]): unary calls with queue or
//! affinity routing, multi calls, and subscriptions. Generated clients are
//! thin typed wrappers over it.

use std::future::{Future, IntoFuture};
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use prost::Message;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::bus::{DynBus, MessageBus};
use crate::channels;
use crate::error::{Error, ErrorCode, Result};
use crate::id;
use crate::info::{
    BoxMessage, Context, DynMessage, Metadata, MethodInfo, RequestHook, ResponseHook, RpcInfo,
    downcast_message,
};
use crate::interceptor::{
    ClientInterceptor, ClientNext, ClientTerminal, MultiCallInterceptor, MultiInterceptor,
    MultiSendNext, MultiTerminal, StreamInterceptor, multi_recv, to_chain,
};
use crate::method::Method;
use crate::select::{
    CallReceiver, CallSender, DEFAULT_SELECTION_TIMEOUT, Incoming, SelectFlags, Selected,
    SelectionOptions, call_queue, cancelled_opt, select_server, sleep_until_opt,
};
use crate::stream::{self, ClientStream, StreamLiveness, StreamParams, StreamTable, spawn_publish};
use crate::topic::Topic;
use crate::wire::{self, ClaimRequest, ClaimResponse, Request, Response, StreamBody, StreamOpen};

/// Default request timeout when neither the client, the context nor the call gives one.
pub const DEFAULT_CLIENT_TIMEOUT: Duration = Duration::from_secs(3);
/// Default buffer size of subscriptions and multi calls.
pub const DEFAULT_CHANNEL_SIZE: usize = 100;

/// Options of an [`RpcClient`].
#[derive(Clone)]
pub struct ClientOptions {
    /// The client id; a fresh `CLI_` id when `None`.
    pub client_id: Option<String>,
    /// Request timeout for every call; zero: the context's deadline or 3 s.
    pub timeout: Duration,
    /// How long claim selection waits by default (1 s).
    pub selection_timeout: Duration,
    /// Buffer size of subscriptions and pending calls (100).
    pub channel_size: usize,
    /// Run before every call.
    pub request_hooks: Vec<RequestHook>,
    /// Run after every call and every multi-call item.
    pub response_hooks: Vec<ResponseHook>,
    /// Wrap every unary call, first outermost.
    pub interceptors: Vec<Arc<dyn ClientInterceptor>>,
    /// Wrap every multi call, first outermost.
    pub multi_interceptors: Vec<Arc<dyn MultiInterceptor>>,
    /// See every stream, first outermost.
    pub stream_interceptors: Vec<Arc<dyn StreamInterceptor>>,
    /// How streams watch their server for a death without a close
    /// (probe every 1 s, end after 4 s; see [`crate::stream`]).
    pub stream_liveness: StreamLiveness,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            client_id: None,
            timeout: Duration::ZERO,
            selection_timeout: DEFAULT_SELECTION_TIMEOUT,
            channel_size: DEFAULT_CHANNEL_SIZE,
            request_hooks: Vec::new(),
            response_hooks: Vec::new(),
            interceptors: Vec::new(),
            multi_interceptors: Vec::new(),
            stream_interceptors: Vec::new(),
            stream_liveness: StreamLiveness::default(),
        }
    }
}

impl std::fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientOptions")
            .field("client_id", &self.client_id)
            .field("timeout", &self.timeout)
            .field("selection_timeout", &self.selection_timeout)
            .field("channel_size", &self.channel_size)
            .field("request_hooks", &self.request_hooks.len())
            .field("response_hooks", &self.response_hooks.len())
            .field("interceptors", &self.interceptors.len())
            .field("multi_interceptors", &self.multi_interceptors.len())
            .field("stream_interceptors", &self.stream_interceptors.len())
            .field("stream_liveness", &self.stream_liveness)
            .finish()
    }
}

impl ClientOptions {
    /// Sets the client id. [`RpcClient::new`] refuses an empty id and one
    /// with `.`, `*`, `>`, whitespace or control characters (see
    /// [`channels::check_client_id`]).
    pub fn client_id(mut self, id: impl Into<String>) -> Self {
        self.client_id = Some(id.into());
        self
    }
    /// Sets the request timeout of every call.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }
    /// Sets the default selection timeout.
    pub fn selection_timeout(mut self, t: Duration) -> Self {
        self.selection_timeout = t;
        self
    }
    /// Sets the buffer size of subscriptions and calls.
    pub fn channel_size(mut self, n: usize) -> Self {
        if n > 0 {
            self.channel_size = n;
        }
        self
    }
    /// Adds a request hook.
    pub fn request_hook(
        mut self,
        hook: impl Fn(&RpcInfo, &dyn DynMessage) + Send + Sync + 'static,
    ) -> Self {
        self.request_hooks.push(Arc::new(hook));
        self
    }
    /// Adds a response hook.
    pub fn response_hook(
        mut self,
        hook: impl Fn(&RpcInfo, &dyn DynMessage, Result<&dyn DynMessage, &Error>)
        + Send
        + Sync
        + 'static,
    ) -> Self {
        self.response_hooks.push(Arc::new(hook));
        self
    }
    /// Adds a unary-call interceptor (after, i.e. inside, those added before).
    pub fn interceptor(mut self, i: impl ClientInterceptor) -> Self {
        self.interceptors.push(Arc::new(i));
        self
    }
    /// Adds a multi-call interceptor.
    pub fn multi_interceptor(mut self, i: impl MultiInterceptor) -> Self {
        self.multi_interceptors.push(Arc::new(i));
        self
    }
    /// Adds a stream interceptor.
    pub fn stream_interceptor(mut self, i: impl StreamInterceptor) -> Self {
        self.stream_interceptors.push(Arc::new(i));
        self
    }
    /// Sets how streams watch their server ([`StreamLiveness::disabled`]: not at all).
    pub fn stream_liveness(mut self, l: StreamLiveness) -> Self {
        self.stream_liveness = l;
        self
    }
}

/// Options of one call, set through the call builders.
#[derive(Clone, Default)]
pub struct CallOptions {
    /// Overrides the request timeout (may exceed the context's deadline;
    /// the request's expiry is still clamped to it).
    pub timeout: Option<Duration>,
    /// Replaces the default selection options as a whole.
    pub selection: Option<SelectionOptions>,
    /// The caller's context: deadline and cancellation.
    pub context: Context,
    /// Metadata sent with the request.
    pub metadata: Metadata,
    /// Unary interceptors of this call, inside the client's own.
    pub interceptors: Vec<Arc<dyn ClientInterceptor>>,
    /// Multi interceptors of this call, inside the client's own.
    pub multi_interceptors: Vec<Arc<dyn MultiInterceptor>>,
}

impl std::fmt::Debug for CallOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallOptions")
            .field("timeout", &self.timeout)
            .field("selection", &self.selection)
            .field("context", &self.context)
            .field("metadata", &self.metadata)
            .field("interceptors", &self.interceptors.len())
            .field("multi_interceptors", &self.multi_interceptors.len())
            .finish()
    }
}

type PendingMap = Mutex<id::IdMap<CallSender>>;

struct Shared {
    pending: PendingMap,
}

/// The server-side channels of a method without topic, computed once.
struct MethodChannels {
    request: channels::Channel,
    claim_response: channels::Channel,
    /// Computed at the first stream open of the method.
    stream_server: std::sync::OnceLock<Arc<channels::Channel>>,
}

struct ClientInner {
    /// The client's channels; dropping them unsubscribes.
    subs: Mutex<Vec<crate::bus::HandlerSubscription>>,
    channel_cache: Mutex<id::IdMap<Arc<MethodChannels>>>,
    bus: DynBus,
    service: String,
    id: String,
    opts: ClientOptions,
    shared: Arc<Shared>,
    closed: CancellationToken,
    /// Open streams by id.
    streams: Arc<StreamTable>,
    /// Set once the client's stream channel is subscribed (at the first open).
    stream_sub: tokio::sync::OnceCell<()>,
    chains: Chains,
}

/// The client's interceptors as shared chains.
struct Chains {
    unary: Arc<[Arc<dyn ClientInterceptor>]>,
    multi: Arc<[Arc<dyn MultiInterceptor>]>,
    stream: Arc<[Arc<dyn StreamInterceptor>]>,
}

impl ClientInner {
    /// Closes the client: see [`RpcClient::close`].
    fn close(&self) {
        self.closed.cancel();
        drop(std::mem::take(
            &mut *self.subs.lock().unwrap_or_else(|e| e.into_inner()),
        ));
        // Dropping the senders wakes every waiting call with "closed".
        let drained: Vec<_> = {
            let mut p = self
                .shared
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            p.drain().collect()
        };
        drop(drained);
        // Open streams end with "stream closed"; the peers are told.
        for f in stream::close_all(
            &self.streams,
            &Error::stream_closed(),
            stream::CloseReason::ClientClosed,
        ) {
            spawn_publish(f);
        }
    }
}

impl Drop for ClientInner {
    fn drop(&mut self) {
        self.close();
    }
}

/// A client of one service: sends calls and joins subscriptions. Cheap to
/// clone; clones share the client. Dropping the last clone closes it.
#[derive(Clone)]
pub struct RpcClient {
    inner: Arc<ClientInner>,
}

impl std::fmt::Debug for RpcClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcClient")
            .field("service", &self.inner.service)
            .field("id", &self.inner.id)
            .finish()
    }
}

impl RpcClient {
    /// Connects a client of `service` to `bus`: subscribes its response and
    /// claim channels, and returns once they are in effect.
    pub async fn new(
        bus: impl MessageBus,
        service: impl Into<String>,
        opts: ClientOptions,
    ) -> Result<Self> {
        let bus: DynBus = Arc::new(bus);
        let service = service.into();
        let id = opts
            .client_id
            .clone()
            .unwrap_or_else(|| id::new_id(id::CLIENT_PREFIX));
        channels::check_client_id(&id)?;
        let shared = Arc::new(Shared {
            pending: Mutex::default(),
        });
        let closed = CancellationToken::new();
        let size = opts.channel_size.max(1);
        let response_ch = channels::response_channel(&service, &id);
        let claim_ch = channels::claim_request_channel(&service, &id);
        let on_response = router::<Response>(&shared, &bus, &response_ch, |r| {
            (r.request_id.clone(), Incoming::Response(Box::new(r)))
        });
        let on_claim = router::<ClaimRequest>(&shared, &bus, &claim_ch, |c| {
            (c.request_id.clone(), Incoming::Claim(Box::new(c)))
        });
        let subs = vec![
            bus.subscribe_handler(&response_ch, size, false, on_response)
                .await?,
            bus.subscribe_handler(&claim_ch, size, false, on_claim)
                .await?,
        ];
        Ok(RpcClient {
            inner: Arc::new(ClientInner {
                subs: Mutex::new(subs),
                channel_cache: Mutex::default(),
                bus,
                service,
                id,
                chains: Chains {
                    unary: to_chain(&opts.interceptors),
                    multi: to_chain(&opts.multi_interceptors),
                    stream: to_chain(&opts.stream_interceptors),
                },
                opts,
                shared,
                closed,
                streams: Arc::default(),
                stream_sub: tokio::sync::OnceCell::new(),
            }),
        })
    }

    /// The client id.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// The service name.
    pub fn service(&self) -> &str {
        &self.inner.service
    }

    /// The bus the client sends on.
    pub fn bus(&self) -> &DynBus {
        &self.inner.bus
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.is_cancelled()
    }

    /// Closes the client: unsubscribes its channels and fails every pending
    /// call at once with `canceled` "client is closed". Later calls fail the
    /// same way. (Go lets pending calls run into their deadline; failing them
    /// at once is what a caller waiting on a closed client wants.)
    pub fn close(&self) {
        self.inner.close();
    }

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
        Req: Message + Clone + 'static,
        Res: Message + Default + Clone + 'static,
    {
        UnaryCall {
            client: self,
            method: &method.info,
            topic: topic.into().into_parts(),
            req,
            opts: CallOptions::default(),
            _res: PhantomData,
        }
    }

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

    /// Starts opening a stream of `method` on `topic` (`()` for none) that
    /// sends the method's request type `S` and receives its response type
    /// `R`; set options on the returned builder and `.await` it. The call
    /// timeout bounds the open and is the stream's default per-message send
    /// timeout.
    pub fn stream<'a, S, R>(
        &'a self,
        method: &'a Method<S, R>,
        topic: impl Into<Topic>,
    ) -> StreamCall<'a, S, R>
    where
        S: Message + Clone + 'static,
        R: Message + Default + Clone + 'static,
    {
        StreamCall {
            client: self,
            method: &method.info,
            topic: topic.into().into_parts(),
            opts: CallOptions::default(),
            _p: PhantomData,
        }
    }

    /// Joins the subscription `method` on `topic` (`()` for none), which
    /// receives the method's update type `T`: a fan-out subscription for
    /// multi methods (every subscriber gets every update), otherwise a queue
    /// subscription (one subscriber gets each update).
    pub async fn subscribe<Req, T>(
        &self,
        method: &Method<Req, T>,
        topic: impl Into<Topic>,
    ) -> Result<Subscription<T>>
    where
        T: Message + prost::Name + Default,
    {
        let (method, topic) = (&method.info, topic.into());
        let topic = topic.parts();
        if self.is_closed() {
            return Err(Error::client_closed());
        }
        let ch = channels::rpc_channel(&self.inner.service, &method.name, topic, method.queue);
        let size = self.inner.opts.channel_size;
        let sub = if method.multi {
            self.inner.bus.subscribe(&ch, size).await
        } else {
            self.inner.bus.subscribe_queue(&ch, size).await
        };
        // The bus's error as it is: it says what happened (bus down, name or
        // message over the bus's limits).
        let sub = sub?;
        Ok(Subscription {
            raw: sub,
            type_url: wire::type_url_of::<T>(),
            channel: ch.legacy,
            bus: self.inner.bus.clone(),
            _t: PhantomData,
        })
    }

    fn info(&self, method: &MethodInfo, topic: &[String]) -> RpcInfo {
        RpcInfo {
            service: self.inner.service.clone(),
            method: method.name.to_string(),
            topic: topic.to_vec(),
            multi: method.multi,
        }
    }

    /// The effective request timeout (as Go computes it) and the context deadline.
    fn timeout(&self, opts: &CallOptions) -> Duration {
        let mut t = self.inner.opts.timeout;
        if let Some(rem) = opts.context.remaining() {
            if t.is_zero() || t > rem {
                t = rem;
            }
        }
        if t.is_zero() {
            t = DEFAULT_CLIENT_TIMEOUT;
        }
        opts.timeout.unwrap_or(t)
    }

    fn method_channels(&self, method: &MethodInfo, topic: &[String]) -> Arc<MethodChannels> {
        let make = || {
            let service = &self.inner.service;
            Arc::new(MethodChannels {
                request: channels::rpc_channel(
                    service,
                    &method.name,
                    topic,
                    method.queue && !method.multi,
                ),
                claim_response: channels::claim_response_channel(service, &method.name, topic),
                stream_server: std::sync::OnceLock::new(),
            })
        };
        if !topic.is_empty() {
            return make();
        }
        let mut cache = self
            .inner
            .channel_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        cache
            .entry(method.name.to_string())
            .or_insert_with(make)
            .clone()
    }

    fn register(&self, request_id: &str) -> Result<(CallReceiver, PendingGuard)> {
        let (tx, rx) = call_queue(self.inner.opts.channel_size);
        let mut p = self
            .inner
            .shared
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        // Checked under the lock, so close() cannot miss this entry.
        if self.is_closed() {
            return Err(Error::client_closed());
        }
        p.insert(request_id.to_owned(), tx);
        Ok((
            rx,
            PendingGuard {
                shared: self.inner.shared.clone(),
                request_id: request_id.to_owned(),
            },
        ))
    }

    /// Publishes `m`, giving up at `deadline`: a bus whose publish waits
    /// (a full buffer, a reconnect) cannot make a call overrun it.
    /// The message is encoded before the returned future, which holds only
    /// its bytes.
    fn publish<'a, M: wire::Envelope>(
        &'a self,
        ch: &'a channels::Channel,
        m: &M,
        deadline: Instant,
    ) -> impl Future<Output = Result<()>> + Send + 'a {
        let bytes = self.inner.bus.compression().encode(m);
        self.publish_bytes(ch, bytes, deadline)
    }

    /// [`publish`](Self::publish) of an encoded message.
    async fn publish_bytes(
        &self,
        ch: &channels::Channel,
        bytes: Bytes,
        deadline: Instant,
    ) -> Result<()> {
        let mut sent = (*self.inner.bus).publish(ch, bytes);
        // Most publishes are done when first polled (always on the local
        // bus): those need no timer.
        if let Poll::Ready(r) = futures::poll!(sent.as_mut()) {
            return r;
        }
        match tokio::time::timeout_at(deadline, sent).await {
            // The bus's error as it is: `unavailable` when the bus is down,
            // `invalid_argument` or `resource_exhausted` over its limits.
            Ok(r) => r,
            Err(_) => Err(Error::request_timed_out()),
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
            let defaults;
            let sel = match &opts.selection {
                Some(s) => s,
                None => {
                    defaults = if method.affinity_enabled {
                        SelectionOptions::affinity_defaults(self.inner.opts.selection_timeout)
                    } else {
                        SelectionOptions::queue_defaults(self.inner.opts.selection_timeout)
                    };
                    &defaults
                }
            };
            let flags = SelectFlags {
                announcements: method.queue,
                responses: true,
                errors_final: method.queue,
            };
            match select_server(&mut rx, sel, Some(deadline), cancel, flags).await? {
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
                        Err(response_error(*r))
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
                        return Err(response_error(*r));
                    }
                    return Ok(r.raw_response);
                }
            }
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

impl RpcClient {
    /// A unary call through the interceptor chains.
    async fn intercepted_unary<Res: Message + Default + Clone + 'static>(
        &self,
        method: &MethodInfo,
        topic: &[String],
        req: BoxMessage,
        mut opts: CallOptions,
    ) -> Result<Res> {
        let chain = with_call_interceptors(&self.inner.chains.unary, &mut opts.interceptors);
        let info = Arc::new(self.info(method, topic));
        let (client, method, topic) = (self.clone(), method.clone(), topic.to_vec());
        let terminal: ClientTerminal = Arc::new(move |req: BoxMessage, opts: CallOptions| {
            let (client, method, topic) = (client.clone(), method.clone(), topic.clone());
            Box::pin(async move {
                let raw = Bytes::from(req.to_bytes());
                let res = client.call_unary_raw(&method, &topic, raw, &opts).await?;
                decode_boxed::<Res>(res)
            })
        });
        let res = ClientNext::new(chain, info, terminal)
            .run(req, opts)
            .await?;
        downcast_message::<Res>(res)
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

    /// Subscribes the client's stream channel, once, at the first open.
    async fn ensure_stream_channel(&self) -> Result<()> {
        self.inner
            .stream_sub
            .get_or_try_init(|| async {
                let table = self.inner.streams.clone();
                let ch = channels::stream_channel(&self.inner.service, &self.inner.id);
                let (bus, name) = (Arc::downgrade(&self.inner.bus), ch.legacy.clone());
                let on_stream: crate::bus::Handler = Arc::new(move |b| {
                    let Some(bus) = bus.upgrade() else { return };
                    let channel = || name.clone();
                    let url = <wire::Stream as wire::Envelope>::TYPE_URL;
                    if let Some(p) = crate::codec::receive_payload(&*bus, channel, url, b) {
                        stream::with_stream(&*bus, channel, p, |p, m| {
                            stream::dispatch(&table, p, m)
                        });
                    }
                });
                let sub = self
                    .inner
                    .bus
                    .subscribe_handler(&ch, self.inner.opts.channel_size, false, on_stream)
                    .await?;
                let mut subs = self.inner.subs.lock().unwrap_or_else(|e| e.into_inner());
                if self.is_closed() {
                    return Err(Error::client_closed());
                }
                subs.push(sub);
                Ok(())
            })
            .await
            .map(|_| ())
    }

    /// Opens a stream (client side).
    async fn open_stream<S, R>(
        &self,
        method: &MethodInfo,
        topic: Vec<String>,
        opts: CallOptions,
    ) -> Result<ClientStream<S, R>>
    where
        S: Message + Clone + 'static,
        R: Message + Default + Clone + 'static,
    {
        if self.is_closed() {
            return Err(Error::client_closed());
        }
        self.ensure_stream_channel().await?;
        let inner = &self.inner;
        let t = self.timeout(&opts);
        let stream_id = id::new_id(id::STREAM_PREFIX);
        let request_id = id::new_request_id();
        let info = Arc::new(self.info(method, &topic));
        let chans = self.method_channels(method, &topic);
        let out = chans
            .stream_server
            .get_or_init(|| {
                Arc::new(channels::stream_server_channel(
                    &inner.service,
                    &method.name,
                    &topic,
                ))
            })
            .clone();
        let (shared, rx) = stream::Shared::<R>::new(StreamParams {
            stream_id: stream_id.clone(),
            info,
            bus: inner.bus.clone(),
            out: out.clone(),
            timeout: t,
            buffer: inner.opts.channel_size,
            table: Arc::downgrade(&inner.streams),
            interceptors: inner.chains.stream.clone(),
        });
        let ack = shared.expect_ack(&request_id);
        {
            // Checked under the table lock, so close() cannot miss it.
            let mut table = inner.streams.lock().unwrap_or_else(|e| e.into_inner());
            if self.is_closed() {
                return Err(Error::client_closed());
            }
            table.insert(stream_id.as_bytes().into(), shared.clone());
        }
        let claims = if method.require_claim {
            Some(self.register(&request_id)?)
        } else {
            None
        };
        let now = wire::now_ns();
        let open = wire::Stream {
            stream_id,
            request_id: request_id.clone(),
            sent_at: now,
            expiry: now.saturating_add(t.as_nanos() as i64),
            body: Some(StreamBody::Open(StreamOpen {
                node_id: inner.id.clone(),
                metadata: opts.metadata.clone(),
            })),
        };
        let deadline = call_deadline(t, &opts);
        let cancel = opts.context.cancel_token();
        let opened = async {
            self.publish(&out, &open, deadline).await?;
            if let Some((mut rx, _guard)) = claims {
                let defaults;
                let sel = match &opts.selection {
                    Some(s) => s,
                    None => {
                        defaults = if method.affinity_enabled {
                            SelectionOptions::affinity_defaults(inner.opts.selection_timeout)
                        } else {
                            SelectionOptions::queue_defaults(inner.opts.selection_timeout)
                        };
                        &defaults
                    }
                };
                let selected =
                    select_server(&mut rx, sel, Some(deadline), cancel, SelectFlags::default())
                        .await?;
                let Some(server_id) = selected.server_id() else {
                    return Err(Error::no_response());
                };
                let claim = ClaimResponse {
                    request_id: request_id.clone(),
                    server_id,
                };
                self.publish(&chans.claim_response, &claim, deadline)
                    .await?;
            }
            tokio::select! {
                biased;
                r = ack => r.map_err(|_| shared.cause().unwrap_or_else(Error::stream_closed)),
                _ = tokio::time::sleep_until(deadline) => Err(if opts.context.is_canceled() {
                    Error::request_canceled()
                } else {
                    Error::request_timed_out()
                }),
                _ = cancelled_opt(cancel) => Err(Error::request_canceled()),
            }
        };
        // This end's presence is subscribed while the open travels: the
        // server looks for it only after claiming and acking (one round
        // trip or more), by when the subscription is in effect.
        let liveness = inner.opts.stream_liveness;
        let (presence, opened) = tokio::join!(shared.presence(liveness, true), opened);
        if let Err(e) = opened {
            shared.forget_ack(&request_id);
            // Tells the servers in the background: the caller has waited enough.
            // The interceptors did not see an open: nor do they see this.
            shared.close_detached(e.clone(), stream::CloseReason::Closed);
            return Err(e);
        }
        shared.open_interceptors();
        shared.watch_peer(liveness, true, presence);
        watch_context(&shared, &opts.context);
        Ok(ClientStream::new(shared, rx, opts.context))
    }
}

/// Closes a client stream when the caller's context ends (as Go does,
/// "client lifetime coupling").
fn watch_context<R: Message + Default + Clone + 'static>(
    shared: &Arc<stream::Shared<R>>,
    ctx: &Context,
) {
    if ctx.deadline().is_none() && ctx.cancel_token().is_none() {
        return;
    }
    let (shared, ctx) = (shared.clone(), ctx.clone());
    tokio::spawn(async move {
        tokio::select! {
            _ = shared.done().cancelled() => {}
            _ = sleep_until_opt(ctx.deadline().map(Instant::from_std)) => {
                let cause = Error::new(ErrorCode::Unknown, "context deadline exceeded");
                shared.close_detached(cause, stream::CloseReason::Context);
            }
            _ = ctx.canceled() => {
                let cause = Error::new(ErrorCode::Unknown, "context canceled");
                shared.close_detached(cause, stream::CloseReason::Context);
            }
        }
    });
}

/// The client's chain with a call's own interceptors appended (inside).
fn with_call_interceptors<T: ?Sized>(
    client: &Arc<[Arc<T>]>,
    call: &mut Vec<Arc<T>>,
) -> Arc<[Arc<T>]> {
    if call.is_empty() {
        client.clone()
    } else {
        client.iter().cloned().chain(call.drain(..)).collect()
    }
}

/// When a call sent now with timeout `t` ends: `t` from now, or the caller's
/// deadline if that is earlier.
fn call_deadline(t: Duration, opts: &CallOptions) -> Instant {
    let deadline = Instant::now() + t;
    opts.context
        .deadline()
        .map_or(deadline, |d| deadline.min(Instant::from_std(d)))
}

/// Removes a pending call from the table when the call ends.
struct PendingGuard {
    shared: Arc<Shared>,
    request_id: String,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        let mut p = self
            .shared
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        p.remove(&self.request_id);
    }
}

/// Rebuilds the error a server sent in a `Response` (see [`Error::from_wire`]-style decoding in `error`).
pub(crate) fn response_error(r: Response) -> Error {
    Error::from_wire(&r.code, r.error, r.error_details)
}

/// A handler that routes every message of a client channel to its pending call.
fn router<M: wire::Envelope + 'static>(
    shared: &Arc<Shared>,
    bus: &DynBus,
    channel: &channels::Channel,
    to_event: fn(M) -> (String, Incoming),
) -> crate::bus::Handler {
    // Weak: the bus holds this handler; a strong handle would keep the bus
    // alive through its own subscription.
    let (shared, bus, name) = (shared.clone(), Arc::downgrade(bus), channel.legacy.clone());
    Arc::new(move |b| {
        let Some(bus) = bus.upgrade() else { return };
        if let Some(m) = crate::codec::receive_envelope::<M>(&*bus, || name.clone(), b) {
            route::<M>(&shared, &*bus, m, to_event)
        }
    })
}

/// Routes one message of a client channel to its pending call.
fn route<M: wire::Envelope>(
    shared: &Shared,
    bus: &dyn crate::bus::MessageBus,
    msg: M,
    route: fn(M) -> (String, Incoming),
) {
    let (request_id, ev) = route(msg);
    let p = shared.pending.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(tx) = p.get(&request_id) {
        // Never block on one call (Go quirks Q8, Q12): a call whose buffer
        // (channel_size) is full is not being read, so the message is
        // dropped for it, loudly.
        if tx.try_send(ev).is_err() {
            let why = format_args!("buffer of pending call {request_id} full");
            bus.drops()
                .record(crate::drops::DropReason::SlowConsumer, M::TYPE_URL, &why);
        }
    }
}

fn run_request_hooks(client: &RpcClient, info: &Option<RpcInfo>, req: &dyn DynMessage) {
    if let Some(info) = info {
        for h in &client.inner.opts.request_hooks {
            h(info, req);
        }
    }
}

fn run_response_hooks(
    client: &RpcClient,
    info: &Option<RpcInfo>,
    req: &dyn DynMessage,
    res: Result<&dyn DynMessage, &Error>,
) {
    if let Some(info) = info {
        for h in &client.inner.opts.response_hooks {
            h(info, req, res);
        }
    }
}

macro_rules! call_builder_methods {
    () => {
        /// Sets the request timeout of this call (overrides the client's and
        /// the context's; the expiry sent is still clamped to the context deadline).
        pub fn timeout(mut self, t: Duration) -> Self {
            self.opts.timeout = Some(t);
            self
        }

        /// Carries the caller's context: its deadline bounds the call and its
        /// cancellation cancels it.
        pub fn context(mut self, ctx: &Context) -> Self {
            self.opts.context = ctx.clone();
            self
        }

        /// Replaces the default selection options of this call.
        pub fn selection(mut self, s: SelectionOptions) -> Self {
            self.opts.selection = Some(s);
            self
        }

        /// Replaces the metadata sent with this call.
        pub fn metadata(mut self, m: Metadata) -> Self {
            self.opts.metadata = m;
            self
        }

        /// Adds one metadata entry (a later entry with the same key wins).
        pub fn metadata_entry(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
            self.opts.metadata.insert(key.into(), value.into());
            self
        }

        /// Replaces every option of this call.
        pub fn options(mut self, opts: CallOptions) -> Self {
            self.opts = opts;
            self
        }
    };
}

/// A unary call being built; `.await` sends it.
#[must_use = "a call does nothing until awaited"]
pub struct UnaryCall<'a, Req, Res> {
    client: &'a RpcClient,
    method: &'a MethodInfo,
    topic: Vec<String>,
    req: Req,
    opts: CallOptions,
    _res: PhantomData<fn() -> Res>,
}

impl<Req, Res> UnaryCall<'_, Req, Res> {
    call_builder_methods!();

    /// Adds an interceptor for this call only, inside the client's own.
    pub fn interceptor(mut self, i: impl ClientInterceptor) -> Self {
        self.opts.interceptors.push(Arc::new(i));
        self
    }
}

impl<'a, Req, Res> IntoFuture for UnaryCall<'a, Req, Res>
where
    Req: Message + Clone + 'static,
    Res: Message + Default + Clone + 'static,
{
    type Output = Result<Res>;
    type IntoFuture = BoxFuture<'a, Result<Res>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let c = self.client;
            let hooks =
                !c.inner.opts.request_hooks.is_empty() || !c.inner.opts.response_hooks.is_empty();
            let info = hooks.then(|| c.info(self.method, &self.topic));
            run_request_hooks(c, &info, &self.req);
            let res = if c.inner.chains.unary.is_empty() && self.opts.interceptors.is_empty() {
                let raw = Bytes::from(self.req.encode_to_vec());
                c.call_unary_raw(self.method, &self.topic, raw, &self.opts)
                    .await
                    .and_then(decode_response::<Res>)
            } else {
                c.intercepted_unary::<Res>(
                    self.method,
                    &self.topic,
                    Box::new(self.req.clone()),
                    self.opts,
                )
                .await
            };
            run_response_hooks(
                c,
                &info,
                &self.req,
                res.as_ref().map(|r| r as &dyn DynMessage),
            );
            res
        })
    }
}

fn decode_response<Res: Message + Default>(b: Bytes) -> Result<Res> {
    Res::decode(b).map_err(|e| Error::wrap(ErrorCode::MalformedResponse, e))
}

fn decode_boxed<Res: Message + Default + Clone + 'static>(b: Bytes) -> Result<BoxMessage> {
    decode_response::<Res>(b).map(|r| Box::new(r) as BoxMessage)
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

/// A stream being opened; `.await` opens it.
#[must_use = "a stream is not opened until awaited"]
pub struct StreamCall<'a, S, R> {
    client: &'a RpcClient,
    method: &'a MethodInfo,
    topic: Vec<String>,
    opts: CallOptions,
    _p: PhantomData<fn(S) -> R>,
}

impl<S, R> StreamCall<'_, S, R> {
    call_builder_methods!();
}

impl<'a, S, R> IntoFuture for StreamCall<'a, S, R>
where
    S: Message + Clone + 'static,
    R: Message + Default + Clone + 'static,
{
    type Output = Result<ClientStream<S, R>>;
    type IntoFuture = BoxFuture<'a, Result<ClientStream<S, R>>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            self.client
                .open_stream(self.method, self.topic, self.opts)
                .await
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
                        Err(response_error(*r))
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

/// A joined subscription: a `futures::Stream` of decoded updates. Updates
/// that do not decode, or carry another type, are dropped and logged.
/// Dropping it (or [`close`](Subscription::close)) leaves the subscription.
#[must_use = "dropping a subscription leaves it"]
pub struct Subscription<T> {
    raw: crate::bus::Subscription,
    type_url: String,
    channel: String,
    /// Decodes the updates (compression) and counts those dropped.
    bus: DynBus,
    _t: PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for Subscription<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("channel", &self.channel)
            .field("type_url", &self.type_url)
            .finish()
    }
}

impl<T: Message + Default> Subscription<T> {
    /// The next update; `None` once the subscription is closed.
    pub async fn recv(&mut self) -> Option<T> {
        loop {
            let b = self.raw.recv().await?;
            if let Some(m) = self.decode(b) {
                return Some(m);
            }
        }
    }

    /// Leaves the subscription; later reads return `None`.
    pub fn close(&mut self) {
        self.raw.close();
    }

    fn decode(&self, b: Bytes) -> Option<T> {
        crate::codec::receive(&*self.bus, || self.channel.clone(), &self.type_url, b)
    }
}

impl<T: Message + Default> futures::Stream for Subscription<T> {
    type Item = T;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<T>> {
        loop {
            match Pin::new(&mut self.raw).poll_next(cx) {
                Poll::Ready(Some(b)) => {
                    if let Some(m) = self.decode(b) {
                        return Poll::Ready(Some(m));
                    }
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
