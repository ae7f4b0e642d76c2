//! Registering handlers: [`RpcServer::route`] and [`RpcServer::stream_route`]
//! start a [`Route`] or a [`StreamRoute`]; set the topic and the affinity
//! function on it, then `.handle(handler).await`.

use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;

use prost::Message;

use super::RpcServer;
use crate::error::Result;
use crate::info::{Context, Metadata, MethodInfo};
use crate::method::Method;
use crate::stream::ServerStream;
use crate::topic::Topic;

/// Scores a request for an affinity method (crate-internal form of the
/// function given to [`Route::affinity`]).
pub(crate) type RequestAffinityFn<Req> = Arc<dyn Fn(&Req) -> f32 + Send + Sync>;

/// Scores a stream open (crate-internal form of the function given to
/// [`StreamRoute::affinity`]).
pub(crate) type OpenAffinityFn = Arc<dyn Fn(&StreamOpen<'_>) -> f32 + Send + Sync>;

/// A stream open as a server's affinity function sees it: who opens, with
/// which metadata, on which topic.
#[derive(Debug, Clone, Copy)]
pub struct StreamOpen<'a> {
    pub(crate) remote_id: &'a str,
    pub(crate) metadata: &'a Metadata,
    pub(crate) topic: &'a [String],
}

impl<'a> StreamOpen<'a> {
    /// The opening client's node id.
    pub fn remote_id(&self) -> &'a str {
        self.remote_id
    }

    /// The metadata the client opened the stream with.
    pub fn metadata(&self) -> &'a Metadata {
        self.metadata
    }

    /// The topic the stream is opened on (empty without one).
    pub fn topic(&self) -> &'a [String] {
        self.topic
    }
}

/// A unary or multi handler registration in progress (see
/// [`RpcServer::route`]): set its topic and affinity function, then
/// [`handle`](Self::handle) it.
#[must_use = "nothing is registered until `.handle(handler).await`"]
pub struct Route<'a, Req, Res> {
    server: &'a RpcServer,
    method: &'a MethodInfo,
    topic: Topic,
    affinity: Option<RequestAffinityFn<Req>>,
    _res: PhantomData<fn() -> Res>,
}

impl<'a, Req, Res> Route<'a, Req, Res>
where
    Req: Message + Default + 'static,
    Res: Message + 'static,
{
    pub(crate) fn new(server: &'a RpcServer, method: &'a Method<Req, Res>) -> Self {
        Route {
            server,
            method: &method.info,
            topic: Topic::none(),
            affinity: None,
            _res: PhantomData,
        }
    }

    /// Serves the method on `topic` only (default: no topic).
    pub fn topic(mut self, topic: impl Into<Topic>) -> Self {
        self.topic = topic.into();
        self
    }

    /// Scores each request of an affinity method: higher is better; a
    /// negative score means "do not claim" (the server stays silent); zero
    /// is a claim the default selector never picks. Without one, this
    /// server claims with 1.0. It runs where the request arrives, before any
    /// task is started for it: keep it quick and never block in it.
    ///
    /// Registering fails with `invalid_argument` on a queue method, where
    /// one server hears each request and a score means nothing.
    pub fn affinity(mut self, f: impl Fn(&Req) -> f32 + Send + Sync + 'static) -> Self {
        self.affinity = Some(Arc::new(f));
        self
    }

    /// Registers `handler` and returns once its subscriptions are in
    /// effect.
    ///
    /// Fails with `canceled` "server is closed" after shutdown, and with
    /// `already_exists` "handler already exists" when the method and topic
    /// are registered already.
    pub async fn handle<H, Fut>(self, handler: H) -> Result<()>
    where
        H: Fn(Context, Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Res>> + Send + 'static,
    {
        self.server
            .register_unary(self.method, self.topic.parts(), handler, self.affinity)
            .await
    }
}

/// A stream handler registration in progress (see
/// [`RpcServer::stream_route`]): set its topic and affinity function, then
/// [`handle`](Self::handle) it.
#[must_use = "nothing is registered until `.handle(handler).await`"]
pub struct StreamRoute<'a, Req, Res> {
    server: &'a RpcServer,
    method: &'a MethodInfo,
    topic: Topic,
    affinity: Option<OpenAffinityFn>,
    _types: PhantomData<fn(Req) -> Res>,
}

impl<'a, Req, Res> StreamRoute<'a, Req, Res>
where
    Req: Message + Default + Clone + 'static,
    Res: Message + Clone + 'static,
{
    pub(crate) fn new(server: &'a RpcServer, method: &'a Method<Req, Res>) -> Self {
        StreamRoute {
            server,
            method: &method.info,
            topic: Topic::none(),
            affinity: None,
            _types: PhantomData,
        }
    }

    /// Serves the method on `topic` only (default: no topic).
    pub fn topic(mut self, topic: impl Into<Topic>) -> Self {
        self.topic = topic.into();
        self
    }

    /// Decides, per open, whether and how eagerly this server claims a
    /// stream (methods with the claim handshake only): higher is better,
    /// negative means "do not claim"; default 1.0. It sees the open (the
    /// client, its metadata, the topic) and runs where the open arrives:
    /// keep it quick.
    pub fn affinity(mut self, f: impl Fn(&StreamOpen<'_>) -> f32 + Send + Sync + 'static) -> Self {
        self.affinity = Some(Arc::new(f));
        self
    }

    /// Registers `handler`, run once per accepted stream with a
    /// [`ServerStream`] that sends `Res` and receives `Req`, and returns
    /// once its subscriptions are in effect. The stream closes when the
    /// handler returns (with its error, if any), unless it was hijacked.
    ///
    /// Errors as [`Route::handle`].
    pub async fn handle<H, Fut>(self, handler: H) -> Result<()>
    where
        H: Fn(ServerStream<Res, Req>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        self.server
            .register_stream(self.method, self.topic.parts(), handler, self.affinity)
            .await
    }
}

impl<Req, Res> std::fmt::Debug for Route<'_, Req, Res> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route")
            .field("method", &self.method.name)
            .field("topic", &self.topic)
            .field("affinity", &self.affinity.is_some())
            .finish()
    }
}

impl<Req, Res> std::fmt::Debug for StreamRoute<'_, Req, Res> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamRoute")
            .field("method", &self.method.name)
            .field("topic", &self.topic)
            .field("affinity", &self.affinity.is_some())
            .finish()
    }
}
