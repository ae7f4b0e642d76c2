//! Interceptors: code that wraps every call, one shape per side.
//!
//! A client has one list of [`ClientInterceptor`]s and a server one list of
//! [`ServerInterceptor`]s, each installed with the one method `interceptor`
//! of [`ClientOptions`](crate::ClientOptions) and
//! [`ServerOptions`](crate::ServerOptions); the middleware psrpc ships
//! ([`crate::middleware`]) installs the same way. A trait has one method per
//! kind of operation, each with a pass-through default, so an interceptor
//! implements only what it cares about:
//!
//! | side | unary call | multi call | stream |
//! |---|---|---|---|
//! | client | [`unary`](ClientInterceptor::unary) | [`multi`](ClientInterceptor::multi) | `stream_open`, `stream_send`, `stream_recv`, `stream_close` |
//! | server | [`handle`](ServerInterceptor::handle) (unary and multi requests) | | the same four, and the bus events `request_received`, `request_expired`, `claim_settled` |
//!
//! Interceptors are chained in the order they were installed: the first is
//! outermost (it runs first on the way in and last on the way out). The
//! unary and multi call builders' `.interceptor(..)` adds one for that call,
//! inside the client's.
//!
//! # Messages are bytes, with typed access
//!
//! An interceptor sees each message encoded, as it crosses the wire. One
//! interceptor serves every method of a service, so it cannot be generic
//! over their types; what it needs most (sizes, metadata, retries,
//! timing) needs no decoding at all, and a retry resends the same bytes.
//! Typed access is through the method's descriptor, which carries the types:
//! [`ClientCall::request_of`] and [`ServerCall::request_of`] decode the
//! request when the call is of that method, and [`Method`](crate::Method)
//! has `decode_response`, `encode_request` and `encode_response`.
//! Nothing is decoded or boxed for an interceptor that does not ask, and
//! nothing of this runs when no interceptor is installed.
//!
//! ```
//! use psrpc::interceptor::{self, ClientCall, Next, ServerCall, Unary, Handle};
//! use psrpc::{ClientOptions, Method, ServerOptions};
//!
//! #[derive(Clone, PartialEq, prost::Message)]
//! struct Job { #[prost(string, tag = "1")] id: String }
//! static RUN: Method<Job, Job> = Method::queue("Run");
//!
//! // Logs every request a server serves, with its outcome.
//! let server = ServerOptions::default().interceptor(interceptor::handle_fn(
//!     |call: ServerCall, next: Next<Handle>| async move {
//!         let method = call.info().method.clone();
//!         let res = next.run(call).await;
//!         println!("{method}: ok = {}", res.is_ok());
//!         res
//!     },
//! ));
//! // Adds a metadata entry to every call a client makes, and refuses a
//! // `Run` job without an id before it is sent.
//! let client = ClientOptions::default().interceptor(interceptor::unary_fn(
//!     |mut call: ClientCall, next: Next<Unary>| async move {
//!         if let Some(job) = call.request_of(&RUN) {
//!             if job?.id.is_empty() {
//!                 return Err(psrpc::Error::invalid_argument("a job needs an id"));
//!             }
//!         }
//!         call.options_mut().metadata.insert("caller".into(), "example".into());
//!         next.run(call).await
//!     },
//! ));
//! # let _ = (server, client);
//! ```

mod call;
mod chain;
pub(crate) mod streams;

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;

pub use call::{ClientCall, Replies, ServerCall, StreamMessage};
pub(crate) use chain::{Chain, Terminal};
pub use chain::{ClientSend, Handle, Hop, Multi, Next, ServerSend, Unary};

use crate::error::{Error, Result};
use crate::info::RpcInfo;
use crate::outcome::ClaimOutcome;
use crate::outcome::CloseReason;

/// Wraps what a client does: its unary calls, its multi calls and its
/// streams. Every method has a pass-through default.
pub trait ClientInterceptor: Send + Sync + 'static {
    /// Wraps one unary call: usually `next.run(call)`, with the call or the
    /// outcome changed, observed or retried.
    fn unary<'a>(&'a self, call: ClientCall, next: Next<Unary>) -> BoxFuture<'a, Result<Bytes>> {
        next.run(call)
    }

    /// Wraps one multi call: the send, and (by wrapping the [`Replies`]) each
    /// result and the end of the call.
    fn multi<'a>(&'a self, call: ClientCall, next: Next<Multi>) -> BoxFuture<'a, Result<Replies>> {
        next.run(call)
    }

    /// A stream was opened (after the server accepted it).
    fn stream_open(&self, info: &RpcInfo) {
        let _ = info;
    }

    /// Wraps one send on a stream.
    fn stream_send<'a>(
        &'a self,
        msg: StreamMessage,
        next: Next<ClientSend>,
    ) -> BoxFuture<'a, Result<()>> {
        next.run(msg)
    }

    /// A message arrived on a stream, before it is delivered and
    /// acknowledged. An error refuses it, as Go's stream interceptors do: it
    /// is not delivered and not acknowledged (the sender's send times out,
    /// and a retrying sender sends it again), and it is counted as a
    /// [`Refused`](crate::drops::DropReason::Refused) drop.
    fn stream_recv(&self, info: &RpcInfo, msg: &Bytes) -> Result<()> {
        let _ = (info, msg);
        Ok(())
    }

    /// A stream whose open this interceptor saw ended, whatever ended it
    /// (see [`CloseReason`]); `cause` is its error (`canceled` "stream
    /// closed" for a clean close by either end).
    fn stream_close(&self, info: &RpcInfo, reason: CloseReason, cause: &Error) {
        let _ = (info, reason, cause);
    }
}

/// Wraps what a server does: the requests it handles, its streams, and
/// what it reads off the bus. Every method has a pass-through default.
///
/// The bus events (`request_received`, `request_expired`, `claim_settled`)
/// are called on the bus's delivery path or a request's task: they must
/// return quickly and never block.
pub trait ServerInterceptor: Send + Sync + 'static {
    /// Wraps the handling of one unary or multi request
    /// (`call.info().multi` tells which): usually `next.run(call)`. A
    /// request that does not decode is answered `malformed_request` before
    /// the chain, as in Go.
    fn handle<'a>(&'a self, call: ServerCall, next: Next<Handle>) -> BoxFuture<'a, Result<Bytes>> {
        next.run(call)
    }

    /// A stream was accepted (before its open is acknowledged).
    fn stream_open(&self, info: &RpcInfo) {
        let _ = info;
    }

    /// Wraps one send on a stream.
    fn stream_send<'a>(
        &'a self,
        msg: StreamMessage,
        next: Next<ServerSend>,
    ) -> BoxFuture<'a, Result<()>> {
        next.run(msg)
    }

    /// A message arrived on a stream, before it is delivered and
    /// acknowledged. An error refuses it: it is not delivered and not
    /// acknowledged, and it is counted as a
    /// [`Refused`](crate::drops::DropReason::Refused) drop.
    fn stream_recv(&self, info: &RpcInfo, msg: &Bytes) -> Result<()> {
        let _ = (info, msg);
        Ok(())
    }

    /// A stream whose open this interceptor saw ended, whatever ended it.
    fn stream_close(&self, info: &RpcInfo, reason: CloseReason, cause: &Error) {
        let _ = (info, reason, cause);
    }

    /// A request (or stream open) was read off the bus, before its expiry
    /// is checked.
    fn request_received(&self, info: &RpcInfo) {
        let _ = info;
    }

    /// A request arrived `late_by` after its expiry; it is dropped.
    fn request_expired(&self, info: &RpcInfo, late_by: Duration) {
        let _ = (info, late_by);
    }

    /// This server's claim for a request settled, `wait` after the bid was
    /// sent: zero for [`ClaimOutcome::Skipped`], and for
    /// [`ClaimOutcome::LostToPeer`] when the caller's choice was known
    /// before a bid went out. Not called when the server did not bid
    /// (negative affinity). Called where the claim response is read (on
    /// Redis and NATS, the task that reads the broker): keep it as quick as
    /// a metric update.
    fn claim_settled(&self, info: &RpcInfo, outcome: ClaimOutcome, wait: Duration) {
        let _ = (info, outcome, wait);
    }
}

macro_rules! forward {
    ($trait:ident { $($method:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)* }) => {
        /// A shared interceptor is one: install a clone of the `Arc` and keep
        /// another to read what it recorded.
        impl<T: $trait + ?Sized> $trait for std::sync::Arc<T> {
            $(
                fn $method(&self, $($arg: $ty),*) -> $ret {
                    (**self).$method($($arg),*)
                }
            )*
        }
    };
}

forward!(ClientInterceptor {
    unary(call: ClientCall, next: Next<Unary>) -> BoxFuture<'_, Result<Bytes>>;
    multi(call: ClientCall, next: Next<Multi>) -> BoxFuture<'_, Result<Replies>>;
    stream_open(info: &RpcInfo) -> ();
    stream_send(msg: StreamMessage, next: Next<ClientSend>) -> BoxFuture<'_, Result<()>>;
    stream_recv(info: &RpcInfo, msg: &Bytes) -> Result<()>;
    stream_close(info: &RpcInfo, reason: CloseReason, cause: &Error) -> ();
});

forward!(ServerInterceptor {
    handle(call: ServerCall, next: Next<Handle>) -> BoxFuture<'_, Result<Bytes>>;
    stream_open(info: &RpcInfo) -> ();
    stream_send(msg: StreamMessage, next: Next<ServerSend>) -> BoxFuture<'_, Result<()>>;
    stream_recv(info: &RpcInfo, msg: &Bytes) -> Result<()>;
    stream_close(info: &RpcInfo, reason: CloseReason, cause: &Error) -> ();
    request_received(info: &RpcInfo) -> ();
    request_expired(info: &RpcInfo, late_by: Duration) -> ();
    claim_settled(info: &RpcInfo, outcome: ClaimOutcome, wait: Duration) -> ();
});

macro_rules! fn_interceptor {
    ($(#[$doc:meta])* $fn:ident -> $name:ident: $trait:ident::$method:ident($call:ty, $hop:ty) -> $out:ty) => {
        #[doc = concat!("A [`", stringify!($trait), "`] made of a function; see [`", stringify!($fn), "`].")]
        #[derive(Clone)]
        pub struct $name<F>(F);

        $(#[$doc])*
        pub fn $fn<F, Fut>(f: F) -> $name<F>
        where
            F: Fn($call, Next<$hop>) -> Fut + Send + Sync + 'static,
            Fut: Future<Output = Result<$out>> + Send + 'static,
        {
            $name(f)
        }

        impl<F, Fut> $trait for $name<F>
        where
            F: Fn($call, Next<$hop>) -> Fut + Send + Sync + 'static,
            Fut: Future<Output = Result<$out>> + Send + 'static,
        {
            fn $method<'a>(&'a self, call: $call, next: Next<$hop>) -> BoxFuture<'a, Result<$out>> {
                Box::pin((self.0)(call, next))
            }
        }

        impl<F> std::fmt::Debug for $name<F> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(stringify!($name))
            }
        }
    };
}

fn_interceptor!(
    /// A client interceptor that wraps every unary call with `f(call, next)`.
    unary_fn -> UnaryFn: ClientInterceptor::unary(ClientCall, Unary) -> Bytes
);
fn_interceptor!(
    /// A client interceptor that wraps every multi call with `f(call, next)`.
    multi_fn -> MultiFn: ClientInterceptor::multi(ClientCall, Multi) -> Replies
);
fn_interceptor!(
    /// A server interceptor that wraps the handling of every unary and multi
    /// request with `f(call, next)`.
    handle_fn -> HandleFn: ServerInterceptor::handle(ServerCall, Handle) -> Bytes
);

/// Which end of a call an interceptor runs on.
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

/// Interceptors in the order they were installed, shared by every call.
pub(crate) fn to_chain<T: ?Sized>(v: &[std::sync::Arc<T>]) -> Chain<T> {
    v.iter().cloned().collect()
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::call::CallOptions;
    use crate::method::Method;

    #[derive(Clone, PartialEq, prost::Message)]
    struct Num {
        #[prost(int64, tag = "1")]
        n: i64,
    }

    static DOUBLE: Method<Num, Num> = Method::queue("Double");
    static OTHER: Method<Num, Num> = Method::queue("Other");

    fn info(method: &str) -> Arc<RpcInfo> {
        Arc::new(RpcInfo {
            service: "svc".into(),
            method: method.into(),
            ..RpcInfo::default()
        })
    }

    /// The end of a unary chain: answers the request doubled.
    fn doubling() -> Terminal<Unary> {
        Arc::new(|call: ClientCall| {
            Box::pin(async move {
                let n = DOUBLE.decode_request(call.request())?;
                Ok(DOUBLE.encode_response(&Num { n: n.n * 2 }))
            })
        })
    }

    fn call(method: &str, n: i64) -> ClientCall {
        ClientCall::new(
            info(method),
            DOUBLE.encode_request(&Num { n }),
            CallOptions::default(),
        )
    }

    /// Records `key` on the way in and out.
    fn tracer(log: &Arc<Mutex<String>>, key: &'static str) -> Arc<dyn ClientInterceptor> {
        let log = log.clone();
        Arc::new(unary_fn(move |call: ClientCall, next: Next<Unary>| {
            let log = log.clone();
            async move {
                log.lock().unwrap().push_str(key);
                let r = next.run(call).await;
                log.lock().unwrap().push_str(key);
                r
            }
        }))
    }

    #[tokio::test]
    async fn chain_runs_outermost_first_and_ends_in_the_call() {
        let log = Arc::new(Mutex::new(String::new()));
        let chain = to_chain(&[tracer(&log, "a"), tracer(&log, "b"), tracer(&log, "c")]);
        let res = Next::<Unary>::new(chain, doubling())
            .run(call("Double", 21))
            .await
            .unwrap();
        assert_eq!(DOUBLE.decode_response(&res).unwrap().n, 42);
        assert_eq!(*log.lock().unwrap(), "abccba");
    }

    #[tokio::test]
    async fn typed_access_goes_through_the_method() {
        // Rewrites the request of `Double` calls only; leaves the others.
        let rewrite: Arc<dyn ClientInterceptor> = Arc::new(unary_fn(
            |mut call: ClientCall, next: Next<Unary>| async move {
                let is_other = call.info().method == "Other";
                assert_eq!(call.request_of(&OTHER).is_some(), is_other);
                if let Some(req) = call.request_of(&DOUBLE) {
                    let n = req?.n + 1;
                    call.set_request(DOUBLE.encode_request(&Num { n }));
                }
                next.run(call).await
            },
        ));
        let chain = to_chain(&[rewrite]);
        let res = Next::<Unary>::new(chain.clone(), doubling())
            .run(call("Double", 1))
            .await
            .unwrap();
        assert_eq!(DOUBLE.decode_response(&res).unwrap().n, 4, "(1 + 1) * 2");
        let res = Next::<Unary>::new(chain, doubling())
            .run(call("Other", 1))
            .await
            .unwrap();
        assert_eq!(DOUBLE.decode_response(&res).unwrap().n, 2, "untouched");
    }

    #[tokio::test]
    async fn bad_bytes_are_an_error_not_a_panic() {
        let garbage: Arc<dyn ClientInterceptor> = Arc::new(unary_fn(
            |mut call: ClientCall, next: Next<Unary>| async move {
                call.set_request(Bytes::from_static(&[0xff; 3]));
                next.run(call).await
            },
        ));
        let e = Next::<Unary>::new(to_chain(&[garbage]), doubling())
            .run(call("Double", 1))
            .await
            .unwrap_err();
        assert_eq!(e.code(), crate::ErrorCode::MalformedRequest);
    }

    #[tokio::test]
    async fn a_shared_interceptor_is_one() {
        #[derive(Default)]
        struct Count(Mutex<usize>);
        impl ServerInterceptor for Count {
            fn request_received(&self, _: &RpcInfo) {
                *self.0.lock().unwrap() += 1;
            }
        }
        let count = Arc::new(Count::default());
        let installed: Arc<dyn ServerInterceptor> = Arc::new(count.clone());
        installed.request_received(&RpcInfo::default());
        installed.request_received(&RpcInfo::default());
        assert_eq!(*count.0.lock().unwrap(), 2);
    }
}
