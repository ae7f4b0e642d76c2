//! What a call is: the routing flags the runtime reads off a
//! [`Method`](crate::Method), [`RpcInfo`] (one call's
//! service, method and topic), [`Context`] (deadline, cancellation, incoming
//! metadata).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio_util::sync::CancellationToken;

/// Request metadata: string keys and values, sent in `Request.metadata`.
pub type Metadata = BTreeMap<String, String>;

/// How a method is routed on the wire (docs/PROTOCOL.md): the flags a
/// [`Method`](crate::Method) carries for the runtime. Both peers must agree
/// on them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MethodInfo {
    /// The method name on the wire (CamelCase of the proto name).
    pub(crate) name: Cow<'static, str>,
    /// Servers score each request with an affinity function.
    pub(crate) affinity_enabled: bool,
    /// Every server answers.
    pub(crate) multi: bool,
    /// The claim handshake picks one server.
    pub(crate) require_claim: bool,
    /// Requests go to a bus queue (one server receives each).
    pub(crate) queue: bool,
}

impl MethodInfo {
    /// A queue-routed method (the default kind).
    pub(crate) const fn queue(name: &'static str) -> Self {
        MethodInfo {
            name: Cow::Borrowed(name),
            affinity_enabled: false,
            multi: false,
            require_claim: true,
            queue: true,
        }
    }

    /// An affinity-routed method.
    pub(crate) const fn affinity(name: &'static str) -> Self {
        MethodInfo {
            name: Cow::Borrowed(name),
            affinity_enabled: true,
            multi: false,
            require_claim: true,
            queue: false,
        }
    }

    /// A multi method: every server answers.
    pub(crate) const fn multi(name: &'static str) -> Self {
        MethodInfo {
            name: Cow::Borrowed(name),
            affinity_enabled: false,
            multi: true,
            require_claim: false,
            queue: false,
        }
    }
}

/// One call: service, method and topic. Interceptors and handlers see it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RpcInfo {
    /// The service name on the wire.
    pub service: String,
    /// The method name on the wire.
    pub method: String,
    /// The topic, empty when the method has none.
    pub topic: Vec<String>,
    /// Whether the method is a multi method.
    pub multi: bool,
}

/// What a server knows of an incoming request's sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingHeader {
    /// The caller's client id (for streams, the node id).
    pub remote_id: String,
    /// When the caller sent the request, by its clock.
    pub sent_at: SystemTime,
    /// The metadata the caller attached.
    pub metadata: Metadata,
}

/// The context of a call: its deadline, a cancellation signal and, in a
/// handler, the incoming header and the call's [`RpcInfo`].
///
/// A handler that calls another psrpc service passes its context on with the
/// call builder's `.context(&ctx)`, so the deadline and cancellation carry
/// over.
#[derive(Debug, Clone, Default)]
pub struct Context {
    deadline: Option<Instant>,
    cancel: Option<CancellationToken>,
    header: Option<Arc<IncomingHeader>>,
    info: Option<Arc<RpcInfo>>,
    traceparent: Option<Arc<str>>,
}

impl Context {
    /// An empty context: no deadline, never canceled.
    pub fn new() -> Self {
        Self::default()
    }

    /// This context with a deadline (the earlier of the existing one and `deadline`).
    pub fn with_deadline(mut self, deadline: Instant) -> Self {
        self.deadline = Some(self.deadline.map_or(deadline, |d| d.min(deadline)));
        self
    }

    /// This context with a deadline `timeout` from now.
    pub fn with_timeout(self, timeout: Duration) -> Self {
        self.with_deadline(Instant::now() + timeout)
    }

    /// This context canceled when `token` is.
    pub fn with_cancel(mut self, token: CancellationToken) -> Self {
        self.cancel = Some(token);
        self
    }

    pub(crate) fn with_incoming(mut self, header: IncomingHeader, info: Arc<RpcInfo>) -> Self {
        self.header = Some(Arc::new(header));
        self.info = Some(info);
        self
    }

    /// The deadline, if any.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Time left until the deadline (zero once past), if there is one.
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// The cancellation token, if the context has one.
    pub fn cancel_token(&self) -> Option<&CancellationToken> {
        self.cancel.as_ref()
    }

    /// Whether the context was canceled.
    pub fn is_canceled(&self) -> bool {
        self.cancel.as_ref().is_some_and(|c| c.is_cancelled())
    }

    /// Resolves when the context is canceled (never, without a token).
    pub async fn canceled(&self) {
        match &self.cancel {
            Some(c) => c.cancelled().await,
            None => std::future::pending().await,
        }
    }

    /// In a handler: who sent the request, when, with which metadata.
    pub fn incoming(&self) -> Option<&IncomingHeader> {
        self.header.as_deref()
    }

    /// In a handler: the request's metadata (empty when there is none).
    pub fn metadata(&self) -> &Metadata {
        static EMPTY: Metadata = BTreeMap::new();
        self.header.as_ref().map_or(&EMPTY, |h| &h.metadata)
    }

    /// This context as part of the W3C trace `traceparent` (a header value
    /// such as `00-<trace id>-<span id>-01`): calls made with it continue
    /// that trace. The tracing middleware sets it in the handlers it wraps.
    pub fn with_traceparent(mut self, traceparent: impl Into<Arc<str>>) -> Self {
        self.traceparent = Some(traceparent.into());
        self
    }

    /// The W3C `traceparent` of the span this context belongs to, if any.
    pub fn traceparent(&self) -> Option<&str> {
        self.traceparent.as_deref()
    }

    /// In a handler: the call being served.
    pub fn info(&self) -> Option<&RpcInfo> {
        self.info.as_deref()
    }
}
