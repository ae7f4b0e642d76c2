//! The generic client runtime ([`RpcClient`]): unary calls with queue or
//! affinity routing, multi calls, and subscriptions. Generated clients are
//! thin typed wrappers over it.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::bus::{DynBus, MessageBus};
use crate::channels;
use crate::error::{Error, Result};
use crate::id;
use crate::info::{MethodInfo, RpcInfo};
use crate::interceptor::{Chain, ClientCall, ClientInterceptor, Hop, Next, Terminal, to_chain};
use crate::stream::{StreamTable, spawn_publish};
use crate::wire::{self, ClaimRequest, Response};

/// The `interceptor` setter of the unary and multi call builders.
macro_rules! call_interceptor_method {
    () => {
        /// Adds an interceptor for this call only, inside the client's own.
        pub fn interceptor(mut self, i: impl $crate::interceptor::ClientInterceptor) -> Self {
            self.interceptors.push(std::sync::Arc::new(i));
            self
        }
    };
}

/// A unary or multi call builder taken apart, its request encoded:
/// `(client, method, topic, request, options, interceptors)`. Done before
/// the call's future is made, so that what the call sends is not held twice
/// in that future.
macro_rules! encoded_call_parts {
    ($call:expr) => {{
        let call = $call;
        let request = ::bytes::Bytes::from(::prost::Message::encode_to_vec(&call.req));
        let (opts, interceptors) = (call.opts, call.interceptors);
        (
            call.client,
            call.method,
            call.topic,
            request,
            opts,
            interceptors,
        )
    }};
}

/// The option setters every call builder has ([`UnaryCall`], [`MultiCall`],
/// [`StreamCall`]); defined before the modules that expand it.
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

mod multi;
mod options;
mod pending;
mod stream;
mod subscription;
mod unary;

pub use crate::bus::DEFAULT_CHANNEL_SIZE;
pub use crate::call::CallOptions;
pub use multi::{MultiCall, MultiResponses, RawMultiResponses};
pub use options::{ClientOptions, DEFAULT_CLIENT_TIMEOUT};
use pending::{PendingGuard, Shared, router};
pub use stream::StreamCall;
pub use subscription::Subscription;
pub use unary::UnaryCall;

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
    interceptors: Chain<dyn ClientInterceptor>,
}

impl ClientInner {
    /// Closes the client: see [`RpcClient::close`].
    fn close(&self) {
        self.closed.cancel();
        drop(std::mem::take(
            &mut *self.subs.lock().unwrap_or_else(|e| e.into_inner()),
        ));
        // Dropping the senders wakes every waiting call with "closed".
        drop(self.shared.pending.drain());
        // Open streams end with "stream closed"; the peers are told.
        for f in crate::stream::close_all(
            &self.streams,
            &Error::stream_closed(),
            crate::stream::CloseReason::ClientClosed,
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
#[must_use = "a client closes when its last handle is dropped"]
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
    /// claim channels, and returns once they are in effect. Fails with
    /// `invalid_argument` when `service` or an option cannot work: an empty
    /// or ill-formed service name or client id (see
    /// [`check_client_id`](crate::channels::check_client_id)), a zero
    /// `channel_size`, timeout or selection timeout.
    pub async fn new(
        bus: impl MessageBus,
        service: impl Into<String>,
        opts: ClientOptions,
    ) -> Result<Self> {
        let bus: DynBus = Arc::new(bus);
        let service = service.into();
        channels::check_service_name(&service)?;
        opts.validate()?;
        let id = opts
            .client_id
            .clone()
            .unwrap_or_else(|| id::new_id(id::CLIENT_PREFIX));
        channels::check_client_id(&id)?;
        let shared = Arc::new(Shared {
            pending: Default::default(),
        });
        let closed = CancellationToken::new();
        let size = opts.channel_size;
        let response_ch = channels::response_channel(&service, &id);
        let claim_ch = channels::claim_request_channel(&service, &id);
        let on_response = router::<Response>(&shared, &bus, &response_ch);
        let on_claim = router::<ClaimRequest>(&shared, &bus, &claim_ch);
        let subs = vec![
            bus.subscribe_inline(&response_ch, size, on_response)
                .await?,
            bus.subscribe_inline(&claim_ch, size, on_claim).await?,
        ];
        Ok(RpcClient {
            inner: Arc::new(ClientInner {
                subs: Mutex::new(subs),
                channel_cache: Mutex::default(),
                bus,
                service,
                id,
                interceptors: to_chain(&opts.interceptors),
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
        let mut t = self.inner.opts.timeout.unwrap_or(Duration::ZERO);
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
        // bus): those need no timer. (This is `bus::ready_or_until` written
        // out: through it, a call's future is 24 bytes larger, which
        // counted 800 to 1,000 more instructions per multi call.)
        if let Poll::Ready(r) = futures::poll!(sent.as_mut()) {
            return r;
        }
        // Boxed: the timer would otherwise be room in every call's future.
        match Box::pin(tokio::time::timeout_at(deadline, sent)).await {
            // The bus's error as it is: `unavailable` when the bus is down,
            // `invalid_argument` or `resource_exhausted` over its limits.
            Ok(r) => r,
            Err(_) => Err(Error::request_timed_out()),
        }
    }
}

impl RpcClient {
    /// The client's interceptors with a call's own appended (inside), or
    /// `None` when there are none at all (the call then takes the direct path).
    fn chain(&self, call: Interceptors) -> Option<Chain<dyn ClientInterceptor>> {
        let client = &self.inner.interceptors;
        match (client.is_empty(), call.is_empty()) {
            (true, true) => None,
            (_, true) => Some(client.clone()),
            _ => Some(client.iter().cloned().chain(call).collect()),
        }
    }

    /// A call of `method` on `topic` with `request` through `chain`,
    /// ending in `send` (once per attempt, when an interceptor retries).
    fn intercepted<H>(
        &self,
        chain: Chain<dyn ClientInterceptor>,
        method: &MethodInfo,
        topic: &[String],
        request: Bytes,
        opts: CallOptions,
        send: SendFn<H>,
    ) -> BoxFuture<'static, H::Output>
    where
        H: Hop<Interceptor = dyn ClientInterceptor, Input = ClientCall>,
    {
        let info = Arc::new(self.info(method, topic));
        let target = Arc::new(Target {
            client: self.clone(),
            method: method.clone(),
            topic: topic.to_vec(),
        });
        let terminal: Terminal<H> = Arc::new(move |call: ClientCall| {
            let (request, opts) = call.into_parts();
            send(target.clone(), request, opts)
        });
        Next::<H>::new(chain, terminal).run(ClientCall::new(info, request, opts))
    }
}

/// A call's own interceptors, set on its builder.
pub(crate) type Interceptors = Vec<Arc<dyn ClientInterceptor>>;

/// What an intercepted call ends in: a call of a method on a topic, on
/// this client, made once per attempt.
struct Target {
    client: RpcClient,
    method: MethodInfo,
    topic: Vec<String>,
}

/// The call at the end of a client's chain.
type SendFn<H> = fn(Arc<Target>, Bytes, CallOptions) -> BoxFuture<'static, <H as Hop>::Output>;

/// When a call sent now with timeout `t` ends: `t` from now, or the caller's
/// deadline if that is earlier.
fn call_deadline(t: Duration, opts: &CallOptions) -> Instant {
    let deadline = Instant::now() + t;
    opts.context
        .deadline()
        .map_or(deadline, |d| deadline.min(Instant::from_std(d)))
}
