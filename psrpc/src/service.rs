//! The runtime side of generated services: their method tables and the one
//! place that registers an implementation's methods on an [`RpcServer`].
//!
//! `psrpc-build` generates, per service, a table of [`MethodDesc`]s (the
//! `METHODS` static of its `<service>_methods` module), an implementation of
//! [`Service`] for `dyn <Service>ServerImpl` (a `match` from a method name to
//! a one-line adapter), and a thin server type wrapping a [`ServiceServer`].
//! The table is public so tools can list a service's methods:
//!
//! ```
//! use psrpc::service::{MethodDesc, MethodKind};
//! use psrpc::{Method, Routing};
//! # #[derive(Clone, PartialEq, prost::Message)] struct Key {}
//! # #[derive(Clone, PartialEq, prost::Message)] struct Value {}
//!
//! static GET: Method<Key, Value> = Method::queue("Get");
//! static WATCH: Method<Key, Value> = Method::multi("Watch");
//! static METHODS: &[MethodDesc] = &[
//!     MethodDesc::new(&GET, MethodKind::Unary, &[]),
//!     MethodDesc::new(&WATCH, MethodKind::Subscription, &["room"]),
//! ];
//!
//! for m in METHODS {
//!     println!("{} {:?} {:?} topics {:?}", m.name(), m.kind, m.routing(), m.topic_params);
//! }
//! assert_eq!(METHODS[1].routing(), Routing::Multi);
//! assert!(METHODS[1].has_topics());
//! ```

use std::sync::Arc;

use prost::Message;

use crate::info::MethodInfo;

use crate::{
    Context, Error, MessageBus, Method, Result, RpcServer, ServerOptions, ServerStream, StreamOpen,
    Topic,
};

/// A boxed future that is `Send` (the return type of [`Service::register`]).
pub use futures::future::BoxFuture;

/// What kind of call a method is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MethodKind {
    /// One request, one response from one server.
    Unary,
    /// One request, one response from every server.
    Multi,
    /// A bidirectional stream with one server.
    Stream,
    /// Messages servers publish to subscribed clients.
    Subscription,
}

pub use crate::method::Routing;

/// One method of a generated service: its wire description, its kind and
/// its topic parameters. Generated tables list every method of the service,
/// in proto order.
#[derive(Debug, Clone, Copy)]
pub struct MethodDesc {
    /// The wire name and routing flags of the method's static.
    info: &'static MethodInfo,
    /// What kind of call the method is.
    pub kind: MethodKind,
    /// The names of its topic parameters, in order, as written in the proto
    /// (`topic` for `topics = true` without `topic_params.names`); empty for
    /// a method without topics.
    pub topic_params: &'static [&'static str],
}

impl MethodDesc {
    /// A description of `method` (generated code builds these in a `static`).
    pub const fn new<Req, Res>(
        method: &'static Method<Req, Res>,
        kind: MethodKind,
        topic_params: &'static [&'static str],
    ) -> Self {
        MethodDesc {
            info: &method.info,
            kind,
            topic_params,
        }
    }

    /// The method name on the wire.
    pub fn name(&self) -> &'static str {
        let info: &'static MethodInfo = self.info;
        &info.name
    }

    /// How its requests (or updates) find their servers (or subscribers).
    pub fn routing(&self) -> Routing {
        self.info.routing()
    }

    /// Whether it skips the claim handshake (`topic_params.single_server`):
    /// the one registered server answers directly.
    pub fn single_server(&self) -> bool {
        !self.info.multi && !self.info.require_claim
    }

    /// Whether it is served per topic (`topics = true`): its server
    /// registers it with `register_<method>_topic`, not at construction.
    pub fn has_topics(&self) -> bool {
        !self.topic_params.is_empty()
    }

    /// Whether servers register a handler for it (not a subscription).
    pub fn has_handler(&self) -> bool {
        self.kind != MethodKind::Subscription
    }
}

/// A generated service, implemented for `dyn <Service>ServerImpl`: its
/// name, method table and how to register one of its methods.
pub trait Service: Send + Sync + 'static {
    /// The service name on the wire.
    const NAME: &'static str;
    /// Every method, in proto order.
    const METHODS: &'static [MethodDesc];
    /// The encoded `FileDescriptorSet` of the service's proto files, for discovery.
    const FILE_DESCRIPTOR_SET: &'static [u8];

    /// Registers the method `r` names, through [`Registration::rpc`] or
    /// [`Registration::stream`] with the implementation's function for it.
    fn register(r: Registration<'_, Self>) -> BoxFuture<'_, Result<()>>;
}

/// The handler of a unary or multi method: the implementation's trait method.
pub type RpcFn<S, Req, Res> = for<'s> fn(&'s S, Context, Req) -> BoxFuture<'s, Result<Res>>;

/// The handler of a stream method: the implementation's trait method.
pub type StreamFn<S, Out, In> =
    for<'s> fn(&'s S, ServerStream<Out, In>) -> BoxFuture<'s, Result<()>>;

/// One registration in progress: a method of an implementation on a topic
/// of a server. [`Service::register`] finishes it with the method's handler.
pub struct Registration<'a, S: ?Sized> {
    server: &'a RpcServer,
    svc: &'a Arc<S>,
    method: &'a MethodDesc,
    topic: &'a [String],
}

impl<S: ?Sized> std::fmt::Debug for Registration<'_, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("method", &self.method.name())
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl<'a, S: ?Sized + Send + Sync + 'static> Registration<'a, S> {
    /// The method to register.
    pub fn method(&self) -> &'a MethodDesc {
        self.method
    }

    /// Registers a unary or multi method served by `handler`, scoring
    /// requests with `affinity` (affinity methods only).
    pub fn rpc<Req, Res>(
        self,
        handler: RpcFn<S, Req, Res>,
        affinity: Option<fn(&S, &Req) -> f32>,
    ) -> BoxFuture<'a, Result<()>>
    where
        Req: Message + Default + Clone + 'static,
        Res: Message + Clone + 'static,
    {
        let svc = Arc::clone(self.svc);
        let serve = move |ctx: Context, req: Req| {
            let svc = Arc::clone(&svc);
            async move { handler(&*svc, ctx, req).await }
        };
        let affinity = affinity.map(|a| {
            let svc = Arc::clone(self.svc);
            Arc::new(move |req: &Req| a(&*svc, req)) as crate::server::RequestAffinityFn<Req>
        });
        Box::pin(
            self.server
                .register_unary(self.method.info, self.topic, serve, affinity),
        )
    }

    /// Registers a stream method served by `handler`, claiming streams
    /// with `affinity`, which sees each open (affinity methods only).
    pub fn stream<Out, In>(
        self,
        handler: StreamFn<S, Out, In>,
        affinity: Option<fn(&S, &StreamOpen<'_>) -> f32>,
    ) -> BoxFuture<'a, Result<()>>
    where
        Out: Message + Clone + 'static,
        In: Message + Default + Clone + 'static,
    {
        let svc = Arc::clone(self.svc);
        let serve = move |stream: ServerStream<Out, In>| {
            let svc = Arc::clone(&svc);
            async move { handler(&*svc, stream).await }
        };
        let affinity = affinity.map(|a| {
            let svc = Arc::clone(self.svc);
            Arc::new(move |open: &StreamOpen<'_>| a(&*svc, open)) as crate::server::OpenAffinityFn
        });
        Box::pin(
            self.server
                .register_stream(self.method.info, self.topic, serve, affinity),
        )
    }

    /// Fails: the service has no handler for this method (a generated
    /// `register` answers this for names outside its table).
    pub fn unknown(self) -> BoxFuture<'a, Result<()>> {
        let e = Error::internal(format!(
            "{}: the service has no handler for this method",
            self.method.name()
        ));
        Box::pin(std::future::ready(Err(e)))
    }
}

/// A server of a generated service: an [`RpcServer`] with the implementation
/// `S` registered on it. Generated `<Service>Server` types wrap one; it is
/// public for tools that serve any generated service.
///
/// Clones share the server; dropping the last one stops it at once (call
/// [`shutdown`](Self::shutdown) first to drain).
#[must_use = "a server stops serving when its last handle is dropped"]
pub struct ServiceServer<S: ?Sized> {
    server: RpcServer,
    svc: Arc<S>,
}

impl<S: ?Sized> Clone for ServiceServer<S> {
    fn clone(&self) -> Self {
        ServiceServer {
            server: self.server.clone(),
            svc: Arc::clone(&self.svc),
        }
    }
}

impl<S: ?Sized> std::fmt::Debug for ServiceServer<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceServer")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl<S: ?Sized + Service> ServiceServer<S> {
    /// Serves `svc` on `bus` with `options` (their discovery descriptor set
    /// defaults to the service's); returns once every method without topics
    /// is served. When one registration fails, the server leaves the bus and
    /// its error is returned.
    pub async fn start(svc: Arc<S>, bus: impl MessageBus, options: ServerOptions) -> Result<Self> {
        let mut options = options;
        options
            .discovery
            .file_descriptor_set
            .get_or_insert(S::FILE_DESCRIPTOR_SET);
        let this = ServiceServer {
            server: RpcServer::new(bus, S::NAME, options).await?,
            svc,
        };
        for method in S::METHODS {
            if method.has_handler() && !method.has_topics() {
                if let Err(e) = this.register_desc(method, &[]).await {
                    this.server.kill();
                    return Err(e);
                }
            }
        }
        Ok(this)
    }

    /// The generic server this one wraps.
    pub fn rpc_server(&self) -> &RpcServer {
        &self.server
    }

    /// The implementation being served.
    pub fn implementation(&self) -> &Arc<S> {
        &self.svc
    }

    fn desc(name: &str) -> Result<&'static MethodDesc> {
        S::METHODS.iter().find(|m| m.name() == name).ok_or_else(|| {
            Error::not_found(format!("{name}: no such method in service {}", S::NAME))
        })
    }

    async fn register_desc(&self, method: &MethodDesc, topic: &[String]) -> Result<()> {
        if !method.has_handler() {
            return Err(Error::invalid_argument(format!(
                "{}: a subscription has no handler to register",
                method.name()
            )));
        }
        S::register(Registration {
            server: &self.server,
            svc: &self.svc,
            method,
            topic,
        })
        .await
    }

    /// Serves `method` on `topic` (`()`: no topic); returns once requests
    /// on it reach this server. Fails with `already_exists` when it is
    /// served already, `not_found` when the service has no such method.
    pub async fn register<Req, Res>(
        &self,
        method: &Method<Req, Res>,
        topic: impl Into<Topic>,
    ) -> Result<()> {
        let topic = topic.into();
        self.register_desc(Self::desc(method.name())?, topic.parts())
            .await
    }

    /// Stops serving `method` on `topic`, without waiting for the requests
    /// in flight.
    pub fn deregister<Req, Res>(&self, method: &Method<Req, Res>, topic: impl Into<Topic>) {
        self.server.deregister(method, topic);
    }

    /// Serves every one of the methods named `methods` (wire names) on
    /// `topic`, all or nothing: when one registration fails, those already
    /// made are undone and its error is returned.
    pub async fn register_all(&self, methods: &[&str], topic: impl Into<Topic>) -> Result<()> {
        let topic = topic.into();
        for (k, name) in methods.iter().enumerate() {
            let done = match Self::desc(name) {
                Ok(m) => self.register_desc(m, topic.parts()).await,
                Err(e) => Err(e),
            };
            if let Err(e) = done {
                for done in methods[..k].iter().rev() {
                    self.server.deregister_name(done, topic.parts());
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// Stops serving every one of the methods named `methods` on `topic`.
    pub fn deregister_all(&self, methods: &[&str], topic: impl Into<Topic>) {
        let topic = topic.into();
        for name in methods {
            self.server.deregister_name(name, topic.parts());
        }
    }

    /// Publishes `msg` for the subscription `method` on `topic`.
    pub async fn publish<Req, T: Message + prost::Name>(
        &self,
        method: &Method<Req, T>,
        topic: impl Into<Topic>,
        msg: &T,
    ) -> Result<()> {
        self.server.publish(method, topic, msg).await
    }

    /// Stops taking requests, waits for those in flight, then leaves the bus.
    pub async fn shutdown(&self) {
        self.server.shutdown().await;
    }

    /// Leaves the bus at once, without waiting for requests in flight.
    pub fn kill(&self) {
        self.server.kill();
    }
}
