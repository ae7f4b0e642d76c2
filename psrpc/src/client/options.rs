//! [`ClientOptions`]: the options of an [`RpcClient`](super::RpcClient).

use std::sync::Arc;
use std::time::Duration;

use crate::bus::DEFAULT_CHANNEL_SIZE;
use crate::error::{Error, Result};
use crate::interceptor::ClientInterceptor;
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
    /// Wrap every call and stream, first outermost.
    pub(crate) interceptors: Vec<Arc<dyn ClientInterceptor>>,
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
            interceptors: Vec::new(),
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
            .field("interceptors", &self.interceptors.len())
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
    /// Adds an interceptor of every call and stream, inside those added
    /// before (see [`crate::interceptor`]); the shipped middleware installs
    /// this way too.
    pub fn interceptor(mut self, i: impl ClientInterceptor) -> Self {
        self.interceptors.push(Arc::new(i));
        self
    }
    /// Sets how streams watch their server ([`StreamLiveness::disabled`]: not at all).
    pub fn stream_liveness(mut self, l: StreamLiveness) -> Self {
        self.stream_liveness = l;
        self
    }
}
