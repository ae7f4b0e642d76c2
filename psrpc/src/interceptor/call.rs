//! What interceptors see: one call, its encoded message, and typed access
//! to the message through the call's [`Method`].

use std::any::Any;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use futures::stream::BoxStream;
use prost::Message;

use crate::call::CallOptions;
use crate::error::Result;
use crate::info::{Context, RpcInfo};
use crate::method::Method;

/// A unary or multi call as a [`ClientInterceptor`](super::ClientInterceptor)
/// sees it: which call it is, the encoded request and the call's options.
#[derive(Clone)]
pub struct ClientCall {
    info: Arc<RpcInfo>,
    request: Bytes,
    options: CallOptions,
}

impl ClientCall {
    /// A call of `info` with the encoded `request` (to test an interceptor).
    pub fn new(info: Arc<RpcInfo>, request: Bytes, options: CallOptions) -> Self {
        ClientCall {
            info,
            request,
            options,
        }
    }

    pub(crate) fn into_parts(self) -> (Bytes, CallOptions) {
        (self.request, self.options)
    }

    /// The call: service, method, topic.
    pub fn info(&self) -> &Arc<RpcInfo> {
        &self.info
    }

    /// The encoded request, as it goes on the wire.
    pub fn request(&self) -> &Bytes {
        &self.request
    }

    /// Replaces the encoded request.
    pub fn set_request(&mut self, request: Bytes) {
        self.request = request;
    }

    /// The request decoded as `method`'s request type, when this is a call
    /// of `method` (`None` for a call of another method). Methods are told
    /// apart by name ([`Method::is_called_by`]): an interceptor shared by
    /// clients of several services checks `info().service` too.
    pub fn request_of<Req: Message + Default, Res>(
        &self,
        method: &Method<Req, Res>,
    ) -> Option<Result<Req>> {
        method
            .is_called_by(&self.info)
            .then(|| method.decode_request(&self.request))
    }

    /// The call's options: timeout, selection, context and metadata.
    pub fn options(&self) -> &CallOptions {
        &self.options
    }

    /// The call's options, to change them for the inner interceptors and
    /// the call itself.
    pub fn options_mut(&mut self) -> &mut CallOptions {
        &mut self.options
    }
}

impl fmt::Debug for ClientCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCall")
            .field("info", &self.info)
            .field("request_bytes", &self.request.len())
            .field("options", &self.options)
            .finish()
    }
}

/// A request as a [`ServerInterceptor`](super::ServerInterceptor) sees it:
/// its context (deadline, cancellation, the caller's header, the call's
/// [`RpcInfo`]) and the encoded request.
pub struct ServerCall {
    info: Arc<RpcInfo>,
    context: Context,
    request: Bytes,
    /// The request as the server decoded it on arrival, while `request` is
    /// what arrived: the handler gets it without a second decode.
    decoded: Option<Box<dyn Any + Send>>,
}

impl Clone for ServerCall {
    /// A copy without the decoded request (a copy's handler decodes it).
    fn clone(&self) -> Self {
        ServerCall::new(
            self.info.clone(),
            self.context.clone(),
            self.request.clone(),
        )
    }
}

impl ServerCall {
    /// A request of `info` served with `context` (to test an interceptor).
    pub fn new(info: Arc<RpcInfo>, context: Context, request: Bytes) -> Self {
        ServerCall {
            info,
            context,
            request,
            decoded: None,
        }
    }

    /// A request the server has already decoded as `decoded`.
    pub(crate) fn with_decoded(mut self, decoded: Box<dyn Any + Send>) -> Self {
        self.decoded = Some(decoded);
        self
    }

    /// The handler's context, the request, and the decoded request when
    /// the bytes are still those it was decoded from.
    pub(crate) fn into_parts(self) -> (Context, Bytes, Option<Box<dyn Any + Send>>) {
        (self.context, self.request, self.decoded)
    }

    /// The call being served.
    pub fn info(&self) -> &Arc<RpcInfo> {
        &self.info
    }

    /// The handler's context: deadline, cancellation, the incoming header.
    pub fn context(&self) -> &Context {
        &self.context
    }

    /// The handler's context, to change it for the inner interceptors and
    /// the handler.
    pub fn context_mut(&mut self) -> &mut Context {
        &mut self.context
    }

    /// The encoded request, as it arrived.
    pub fn request(&self) -> &Bytes {
        &self.request
    }

    /// Replaces the encoded request (the handler then decodes it).
    pub fn set_request(&mut self, request: Bytes) {
        self.request = request;
        self.decoded = None;
    }

    /// The request decoded as `method`'s request type, when this is a call
    /// of `method` (`None` for a call of another method). Methods are told
    /// apart by name ([`Method::is_called_by`]): an interceptor shared by
    /// servers of several services checks `info().service` too.
    pub fn request_of<Req: Message + Default, Res>(
        &self,
        method: &Method<Req, Res>,
    ) -> Option<Result<Req>> {
        method
            .is_called_by(&self.info)
            .then(|| method.decode_request(&self.request))
    }
}

impl fmt::Debug for ServerCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerCall")
            .field("info", &self.info)
            .field("request_bytes", &self.request.len())
            .finish()
    }
}

/// One message a stream sends, as an interceptor's `stream_send` sees it.
#[derive(Clone)]
pub struct StreamMessage {
    info: Arc<RpcInfo>,
    message: Bytes,
    timeout: Option<Duration>,
}

impl StreamMessage {
    /// A message of the stream `info` (to test an interceptor).
    pub fn new(info: Arc<RpcInfo>, message: Bytes, timeout: Option<Duration>) -> Self {
        StreamMessage {
            info,
            message,
            timeout,
        }
    }

    pub(crate) fn into_parts(self) -> (Bytes, Option<Duration>) {
        (self.message, self.timeout)
    }

    /// The stream's call: service, method, topic.
    pub fn info(&self) -> &Arc<RpcInfo> {
        &self.info
    }

    /// The encoded message.
    pub fn message(&self) -> &Bytes {
        &self.message
    }

    /// Replaces the encoded message.
    pub fn set_message(&mut self, message: Bytes) {
        self.message = message;
    }

    /// How long the send waits for the peer's acknowledgement (`None`: the
    /// stream's own timeout).
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// Sets the send's timeout (`None`: the stream's own).
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.timeout = timeout;
    }
}

impl fmt::Debug for StreamMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamMessage")
            .field("info", &self.info)
            .field("message_bytes", &self.message.len())
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// The results of a multi call as interceptors pass them on: a stream of
/// one encoded response (or error) per server that answered, which ends
/// at the call's timeout. An interceptor can wrap it with any
/// `futures::StreamExt` combinator (`map`, `inspect`, ...) and
/// [`Replies::new`].
pub struct Replies(BoxStream<'static, Result<Bytes>>);

impl Replies {
    /// Replies from any stream of encoded results.
    pub fn new(results: impl Stream<Item = Result<Bytes>> + Send + 'static) -> Self {
        Replies(Box::pin(results))
    }

    /// No replies at all (for an interceptor that answers without sending).
    pub fn empty() -> Self {
        Replies::new(futures::stream::empty())
    }
}

impl Stream for Replies {
    type Item = Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        self.0.as_mut().poll_next(cx)
    }
}

impl fmt::Debug for Replies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Replies")
    }
}
