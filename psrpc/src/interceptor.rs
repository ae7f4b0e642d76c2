//! Interceptors: code that wraps every call, on either side.
//!
//! Four kinds, each chained in the order given (the first is outermost: it
//! runs first on the way in and last on the way out):
//!
//! * [`ServerInterceptor`] wraps every unary and multi handler of a server
//!   ([`ServerOptions::interceptor`](crate::ServerOptions::interceptor)).
//! * [`ClientInterceptor`] wraps every unary call of a client
//!   ([`ClientOptions::interceptor`](crate::ClientOptions::interceptor)), and
//!   per call through the call builder's `.interceptor(..)`, which appends
//!   inside the client's own.
//! * [`MultiInterceptor`] wraps every multi call of a client: its send and
//!   every result.
//! * [`StreamInterceptor`] sees every stream's open, sends, received
//!   messages and end (whatever ended it), on the client or the server side.
//!
//! An interceptor sees messages as [`BoxMessage`]s: it can read them
//! (`as_any().downcast_ref`), change them (`as_any_mut`), replace them, change
//! the call options or the error, or answer without calling `next` at all.
//!
//! Nothing of this runs when no interceptor is configured: calls then take a
//! typed path without boxing.
//!
//! ```
//! use psrpc::interceptor::{ClientNext, ServerNext};
//! use psrpc::{BoxMessage, CallOptions, ClientOptions, Context, ServerOptions};
//!
//! // Logs every call a server serves, with its outcome.
//! let server = ServerOptions::default().interceptor(
//!     |ctx: Context, req: BoxMessage, next: ServerNext| async move {
//!         let method = ctx.info().map(|i| i.method.clone()).unwrap_or_default();
//!         let res = next.run(ctx, req).await;
//!         println!("{method}: ok = {}", res.is_ok());
//!         res
//!     },
//! );
//! // Adds a metadata entry to every call a client makes.
//! let client = ClientOptions::default().interceptor(
//!     |req: BoxMessage, mut opts: CallOptions, next: ClientNext| async move {
//!         opts.metadata.insert("caller".into(), "example".into());
//!         next.run(req, opts).await
//!     },
//! );
//! # let _ = (server, client);
//! ```

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use crate::client::CallOptions;
use crate::error::{Error, Result};
use crate::info::{BoxMessage, Context, DynMessage, RpcInfo};
use crate::stream::CloseReason;

/// The rest of a server chain: the inner interceptors, then the handler.
#[derive(Clone)]
pub struct ServerNext {
    chain: Arc<[Arc<dyn ServerInterceptor>]>,
    index: usize,
    terminal: ServerTerminal,
}

/// The handler at the end of a server chain.
pub(crate) type ServerTerminal =
    Arc<dyn Fn(Context, BoxMessage) -> BoxFuture<'static, Result<BoxMessage>> + Send + Sync>;

impl ServerNext {
    pub(crate) fn new(chain: Arc<[Arc<dyn ServerInterceptor>]>, terminal: ServerTerminal) -> Self {
        ServerNext {
            chain,
            index: 0,
            terminal,
        }
    }

    /// Calls the rest of the chain with `req`. It may be called more than
    /// once (clone `next` first).
    pub fn run(self, ctx: Context, req: BoxMessage) -> BoxFuture<'static, Result<BoxMessage>> {
        match self.chain.get(self.index).cloned() {
            Some(i) => {
                let next = ServerNext {
                    index: self.index + 1,
                    ..self
                };
                Box::pin(async move { i.intercept(ctx, req, next).await })
            }
            None => (self.terminal)(ctx, req),
        }
    }
}

impl std::fmt::Debug for ServerNext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerNext")
            .field("remaining", &(self.chain.len() - self.index))
            .finish()
    }
}

/// Wraps every unary and multi handler of a server. `ctx.info()` names the
/// call; `ctx.incoming()` has the caller's metadata.
pub trait ServerInterceptor: Send + Sync + 'static {
    /// Handles `req`, usually by calling `next.run(ctx, req)`.
    fn intercept<'a>(
        &'a self,
        ctx: Context,
        req: BoxMessage,
        next: ServerNext,
    ) -> BoxFuture<'a, Result<BoxMessage>>;
}

impl<F, Fut> ServerInterceptor for F
where
    F: Fn(Context, BoxMessage, ServerNext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<BoxMessage>> + Send + 'static,
{
    fn intercept<'a>(
        &'a self,
        ctx: Context,
        req: BoxMessage,
        next: ServerNext,
    ) -> BoxFuture<'a, Result<BoxMessage>> {
        Box::pin(self(ctx, req, next))
    }
}

/// The rest of a client chain: the inner interceptors, then the call itself.
#[derive(Clone)]
pub struct ClientNext {
    chain: Arc<[Arc<dyn ClientInterceptor>]>,
    index: usize,
    info: Arc<RpcInfo>,
    terminal: ClientTerminal,
}

/// The call at the end of a client chain.
pub(crate) type ClientTerminal =
    Arc<dyn Fn(BoxMessage, CallOptions) -> BoxFuture<'static, Result<BoxMessage>> + Send + Sync>;

impl ClientNext {
    pub(crate) fn new(
        chain: Arc<[Arc<dyn ClientInterceptor>]>,
        info: Arc<RpcInfo>,
        terminal: ClientTerminal,
    ) -> Self {
        ClientNext {
            chain,
            index: 0,
            info,
            terminal,
        }
    }

    /// The call being made.
    pub fn info(&self) -> &RpcInfo {
        &self.info
    }

    /// Calls the rest of the chain. It may be called more than once (clone
    /// `next` first); retries do.
    pub fn run(self, req: BoxMessage, opts: CallOptions) -> BoxFuture<'static, Result<BoxMessage>> {
        match self.chain.get(self.index).cloned() {
            Some(i) => {
                let next = ClientNext {
                    index: self.index + 1,
                    ..self
                };
                Box::pin(async move { i.intercept(req, opts, next).await })
            }
            None => (self.terminal)(req, opts),
        }
    }
}

impl std::fmt::Debug for ClientNext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientNext")
            .field("info", &self.info)
            .field("remaining", &(self.chain.len() - self.index))
            .finish()
    }
}

/// Wraps every unary call of a client. `next.info()` names the call.
pub trait ClientInterceptor: Send + Sync + 'static {
    /// Makes the call, usually through `next.run(req, opts)`.
    fn intercept<'a>(
        &'a self,
        req: BoxMessage,
        opts: CallOptions,
        next: ClientNext,
    ) -> BoxFuture<'a, Result<BoxMessage>>;
}

impl<F, Fut> ClientInterceptor for F
where
    F: Fn(BoxMessage, CallOptions, ClientNext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<BoxMessage>> + Send + 'static,
{
    fn intercept<'a>(
        &'a self,
        req: BoxMessage,
        opts: CallOptions,
        next: ClientNext,
    ) -> BoxFuture<'a, Result<BoxMessage>> {
        Box::pin(self(req, opts, next))
    }
}

/// Starts the interception of one multi call: returns the object that sees
/// this call's send, its results and its end.
pub trait MultiInterceptor: Send + Sync + 'static {
    /// A new per-call interceptor for the call `info`.
    fn begin(&self, info: &RpcInfo) -> Box<dyn MultiCallInterceptor>;
}

/// One multi call's interceptor (see [`MultiInterceptor`]). Every method has
/// a pass-through default.
pub trait MultiCallInterceptor: Send + 'static {
    /// Wraps the send of the request.
    fn send<'a>(
        &'a mut self,
        req: BoxMessage,
        opts: CallOptions,
        next: MultiSendNext<'a>,
    ) -> BoxFuture<'a, Result<()>> {
        next.run(req, opts)
    }

    /// Sees every result; pass it on with `next` (or not, or more than once).
    fn recv(&mut self, item: Result<BoxMessage>, next: &mut dyn FnMut(Result<BoxMessage>)) {
        next(item)
    }

    /// The call ended (its timeout passed, or its results were dropped).
    fn close(&mut self) {}
}

/// The send of a multi call at the end of a chain.
pub(crate) type MultiTerminal =
    Arc<dyn Fn(BoxMessage, CallOptions) -> BoxFuture<'static, Result<()>> + Send + Sync>;

/// The rest of a multi call's send chain.
pub struct MultiSendNext<'a> {
    rest: &'a mut [Box<dyn MultiCallInterceptor>],
    terminal: &'a MultiTerminal,
}

impl<'a> MultiSendNext<'a> {
    pub(crate) fn new(
        rest: &'a mut [Box<dyn MultiCallInterceptor>],
        terminal: &'a MultiTerminal,
    ) -> Self {
        MultiSendNext { rest, terminal }
    }

    /// Sends through the rest of the chain.
    pub fn run(self, req: BoxMessage, opts: CallOptions) -> BoxFuture<'a, Result<()>> {
        match self.rest.split_first_mut() {
            Some((first, rest)) => first.send(
                req,
                opts,
                MultiSendNext {
                    rest,
                    terminal: self.terminal,
                },
            ),
            None => (self.terminal)(req, opts),
        }
    }
}

impl std::fmt::Debug for MultiSendNext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MultiSendNext")
            .field("remaining", &self.rest.len())
            .finish()
    }
}

/// Passes one multi-call result through `chain` (outermost first) into `sink`.
pub(crate) fn multi_recv(
    chain: &mut [Box<dyn MultiCallInterceptor>],
    item: Result<BoxMessage>,
    sink: &mut dyn FnMut(Result<BoxMessage>),
) {
    match chain.split_first_mut() {
        Some((first, rest)) => first.recv(item, &mut |it| multi_recv(rest, it, sink)),
        None => sink(item),
    }
}

/// Which end of a call an interceptor or observer runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The calling side.
    Client,
    /// The serving side.
    Server,
}

impl Role {
    /// `"client"` or `"server"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Server => "server",
        }
    }
}

/// Sees every stream of a client or a server: its open, every send (which it
/// wraps), every received message (before it is delivered) and its end,
/// whatever caused it. Every method has a pass-through default.
pub trait StreamInterceptor: Send + Sync + 'static {
    /// A stream was opened (client) or accepted (server).
    fn open(&self, info: &RpcInfo) {
        let _ = info;
    }

    /// Wraps one send; `timeout` is the per-send timeout (`None`: the
    /// stream's default).
    fn send<'a>(
        &'a self,
        info: &'a RpcInfo,
        msg: BoxMessage,
        timeout: Option<Duration>,
        next: StreamSendNext,
    ) -> BoxFuture<'a, Result<()>> {
        let _ = info;
        next.run(msg, timeout)
    }

    /// A message arrived, before it is delivered and acknowledged. An error
    /// rejects it: it is not delivered and not acknowledged (the sender's
    /// send then times out).
    fn recv(&self, info: &RpcInfo, msg: &dyn DynMessage) -> Result<()> {
        let _ = (info, msg);
        Ok(())
    }

    /// The stream ended, whatever ended it (see [`CloseReason`]): called
    /// once per stream whose [`open`](Self::open) it saw. `cause` is the
    /// error the stream ended with; `canceled` "stream closed" for a clean
    /// close (by either end).
    fn close(&self, info: &RpcInfo, reason: CloseReason, cause: &Error) {
        let _ = (info, reason, cause);
    }
}

/// The send at the end of a stream chain.
pub(crate) type StreamTerminal =
    Arc<dyn Fn(BoxMessage, Option<Duration>) -> BoxFuture<'static, Result<()>> + Send + Sync>;

/// The rest of a stream send chain.
#[derive(Clone)]
pub struct StreamSendNext {
    chain: Arc<[Arc<dyn StreamInterceptor>]>,
    index: usize,
    info: Arc<RpcInfo>,
    terminal: StreamTerminal,
}

impl StreamSendNext {
    pub(crate) fn new(
        chain: Arc<[Arc<dyn StreamInterceptor>]>,
        info: Arc<RpcInfo>,
        terminal: StreamTerminal,
    ) -> Self {
        StreamSendNext {
            chain,
            index: 0,
            info,
            terminal,
        }
    }

    /// Sends through the rest of the chain. It may be called more than once
    /// (clone `next` first); retries do.
    pub fn run(self, msg: BoxMessage, timeout: Option<Duration>) -> BoxFuture<'static, Result<()>> {
        match self.chain.get(self.index).cloned() {
            Some(i) => {
                let info = self.info.clone();
                let next = StreamSendNext {
                    index: self.index + 1,
                    ..self
                };
                Box::pin(async move { i.send(&info, msg, timeout, next).await })
            }
            None => (self.terminal)(msg, timeout),
        }
    }
}

impl std::fmt::Debug for StreamSendNext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamSendNext")
            .field("info", &self.info)
            .field("remaining", &(self.chain.len() - self.index))
            .finish()
    }
}

/// Chains in the order they were added; cloned into every call cheaply.
pub(crate) fn to_chain<T: ?Sized>(v: &[Arc<T>]) -> Arc<[Arc<T>]> {
    v.iter().cloned().collect()
}
