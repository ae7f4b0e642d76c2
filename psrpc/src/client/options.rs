//! [`ClientOptions`]: the options of an [`RpcClient`](super::RpcClient).

use std::sync::Arc;
use std::time::Duration;

use crate::bus::DEFAULT_CHANNEL_SIZE;
use crate::error::{Error, Result};
use crate::info::{DynMessage, RequestHook, ResponseHook, RpcInfo};
use crate::interceptor::{ClientInterceptor, MultiInterceptor, StreamInterceptor};
use crate::select::DEFAULT_SELECTION_TIMEOUT;
use crate::stream::StreamLiveness;

/// Default request timeout when neither the client, the context nor the call gives one.
pub const DEFAULT_CLIENT_TIMEOUT: Duration = Duration::from_secs(3);

/// Options of an [`RpcClient`](super::RpcClient).
#[derive(Clone)]
pub struct ClientOptions {
    /// The client id; a fresh `CLI_` id when `None`.
    pub(crate) client_id: Option<String>,
    /// Request timeout for every call; `None`: the context's deadline or 3 s.
    pub(crate) timeout: Option<Duration>,
    /// How long claim selection waits by default (1 s).
    pub(crate) selection_timeout: Duration,
    /// Buffer size of subscriptions and pending calls (100).
    pub(crate) channel_size: usize,
    /// Run before every call.
    pub(crate) request_hooks: Vec<RequestHook>,
    /// Run after every call and every multi-call item.
    pub(crate) response_hooks: Vec<ResponseHook>,
    /// Wrap every unary call, first outermost.
    pub(crate) interceptors: Vec<Arc<dyn ClientInterceptor>>,
    /// Wrap every multi call, first outermost.
    pub(crate) multi_interceptors: Vec<Arc<dyn MultiInterceptor>>,
    /// See every stream, first outermost.
    pub(crate) stream_interceptors: Vec<Arc<dyn StreamInterceptor>>,
    /// How streams watch their server for a death without a close
    /// (probe every 1 s, end after 4 s; see [`crate::stream`]).
    pub(crate) stream_liveness: StreamLiveness,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            client_id: None,
            timeout: None,
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
    /// `invalid_argument` when an option cannot work (checked by
    /// [`RpcClient::new`](super::RpcClient::new)).
    pub(crate) fn validate(&self) -> Result<()> {
        if self.channel_size == 0 {
            return Err(Error::invalid_argument("client channel_size must not be 0"));
        }
        if self.timeout == Some(Duration::ZERO) {
            return Err(Error::invalid_argument("client timeout must not be 0"));
        }
        if self.selection_timeout.is_zero() {
            return Err(Error::invalid_argument(
                "client selection_timeout must not be 0",
            ));
        }
        Ok(())
    }

    /// Sets the client id. [`RpcClient::new`](super::RpcClient::new) refuses an empty id and one
    /// with `.`, `*`, `>`, whitespace or control characters (see
    /// [`channels::check_client_id`](crate::channels::check_client_id)).
    pub fn client_id(mut self, id: impl Into<String>) -> Self {
        self.client_id = Some(id.into());
        self
    }
    /// Sets the request timeout of every call (unset: the context's
    /// deadline or 3 s). [`RpcClient::new`](super::RpcClient::new) refuses
    /// a zero timeout.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }
    /// Sets the default selection timeout.
    pub fn selection_timeout(mut self, t: Duration) -> Self {
        self.selection_timeout = t;
        self
    }
    /// Sets the buffer size of subscriptions and calls (100);
    /// [`RpcClient::new`](super::RpcClient::new) refuses 0.
    pub fn channel_size(mut self, n: usize) -> Self {
        self.channel_size = n;
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
