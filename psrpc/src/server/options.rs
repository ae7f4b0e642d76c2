//! [`ServerOptions`]: the options of an [`RpcServer`](super::RpcServer).

use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::interceptor::ServerInterceptor;
use crate::stream::StreamLiveness;

/// Default server timeout (stream sends, stream close expiry).
pub const DEFAULT_SERVER_TIMEOUT: Duration = Duration::from_secs(3);

/// Options of an [`RpcServer`](super::RpcServer).
#[derive(Clone)]
pub struct ServerOptions {
    /// The server id; a fresh `SRV_` id when `None`.
    pub(crate) server_id: Option<String>,
    /// The server timeout (3 s).
    pub(crate) timeout: Duration,
    /// Buffer size of the server's subscriptions and of each stream (100).
    pub(crate) channel_size: usize,
    /// Wrap every handler and stream, and see the bus events, first outermost.
    pub(crate) interceptors: Vec<Arc<dyn ServerInterceptor>>,
    /// Asked once per request that advertises it: whether this server
    /// announces a queue request instead of bidding for it (claim skip).
    /// `None` (the default): never.
    pub(crate) skip_claim: Option<SkipClaimFn>,
    /// How accepted streams watch their client for a death without a
    /// close (probe every 1 s, end after 4 s; see [`crate::stream`]).
    pub(crate) stream_liveness: StreamLiveness,
    /// Answering discovery (on by default; see [`crate::discovery`]).
    pub(crate) discovery: crate::discovery::DiscoveryOptions,
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
            .field("skip_claim", &self.skip_claim.is_some())
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
            channel_size: crate::bus::DEFAULT_CHANNEL_SIZE,
            interceptors: Vec::new(),
            skip_claim: None,
            stream_liveness: StreamLiveness::default(),
            discovery: Default::default(),
        }
    }
}

impl ServerOptions {
    /// `invalid_argument` when an option cannot work (checked by
    /// [`RpcServer::new`](super::RpcServer::new)).
    pub(crate) fn validate(&self) -> Result<()> {
        if let Some(id) = &self.server_id {
            crate::channels::check_server_id(id)?;
        }
        if self.channel_size == 0 {
            return Err(Error::invalid_argument("server channel_size must not be 0"));
        }
        if self.timeout.is_zero() {
            return Err(Error::invalid_argument("server timeout must not be 0"));
        }
        Ok(())
    }

    /// Sets the server id. [`RpcServer::new`](super::RpcServer::new)
    /// refuses ids that [`check_server_id`](crate::channels::check_server_id)
    /// refuses.
    pub fn server_id(mut self, id: impl Into<String>) -> Self {
        self.server_id = Some(id.into());
        self
    }
    /// Sets the server timeout.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }
    /// Sets the buffer size of the server's subscriptions and of each
    /// stream (100); [`RpcServer::new`](super::RpcServer::new) refuses 0.
    pub fn channel_size(mut self, n: usize) -> Self {
        self.channel_size = n;
        self
    }
    /// Sets how the server answers discovery (on by default; see
    /// [`crate::discovery`]).
    pub fn discovery(mut self, d: crate::discovery::DiscoveryOptions) -> Self {
        self.discovery = d;
        self
    }
    /// Adds an interceptor of every handler and stream, inside those added
    /// before (see [`crate::interceptor`]); the shipped middleware installs
    /// this way too.
    pub fn interceptor(mut self, i: impl ServerInterceptor) -> Self {
        self.interceptors.push(Arc::new(i));
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
    /// Sets how streams watch their client ([`StreamLiveness::disabled`]: not at all).
    pub fn stream_liveness(mut self, l: StreamLiveness) -> Self {
        self.stream_liveness = l;
        self
    }
}
