//! The one chain: [`Next`] walks the interceptors of a side, outermost
//! first, and ends in the operation itself. Every intercepted operation
//! (a unary call, a multi call, a handler, a stream send) is a [`Hop`] that
//! says what goes in, what comes out and which interceptor method handles
//! it; the walk is written once for all of them.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;

use super::call::{ClientCall, Replies, ServerCall, StreamMessage};
use super::{ClientInterceptor, ServerInterceptor};
use crate::error::Result;

mod sealed {
    pub trait Sealed {}
}

/// One kind of intercepted operation. Implemented by the marker types
/// [`Unary`], [`Multi`], [`Handle`], [`ClientSend`] and [`ServerSend`];
/// it cannot be implemented outside psrpc.
pub trait Hop: sealed::Sealed + Sized + Send + Sync + 'static {
    /// The interceptors of this operation's side.
    type Interceptor: ?Sized + Send + Sync + 'static;
    /// What the chain is called with.
    type Input: Send + 'static;
    /// What the chain answers.
    type Output: Send + 'static;

    /// Calls the method of `interceptor` that handles this operation.
    #[doc(hidden)]
    fn intercept<'a>(
        interceptor: &'a Self::Interceptor,
        input: Self::Input,
        next: Next<Self>,
    ) -> BoxFuture<'a, Self::Output>;
}

/// The operation at the end of a chain.
pub(crate) type Terminal<H> =
    Arc<dyn Fn(<H as Hop>::Input) -> BoxFuture<'static, <H as Hop>::Output> + Send + Sync>;

/// The interceptors of one side, outermost first, shared by every call.
pub(crate) type Chain<I> = Arc<[Arc<I>]>;

/// The rest of a chain: the inner interceptors, then the operation itself.
/// An interceptor calls [`run`](Next::run) to go on (or does not, and
/// answers itself); it may clone `next` and run it again (retries do).
pub struct Next<H: Hop> {
    chain: Chain<H::Interceptor>,
    index: usize,
    terminal: Terminal<H>,
}

impl<H: Hop> Next<H> {
    pub(crate) fn new(chain: Chain<H::Interceptor>, terminal: Terminal<H>) -> Self {
        Next {
            chain,
            index: 0,
            terminal,
        }
    }

    /// A chain of no interceptors that ends in `f`: what an interceptor's
    /// own tests call it with, e.g.
    /// `interceptor.unary(call, Next::from_fn(|call| async { Ok(reply) }))`.
    pub fn from_fn<F, Fut>(f: F) -> Self
    where
        F: Fn(H::Input) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = H::Output> + Send + 'static,
    {
        let terminal: Terminal<H> = Arc::new(move |input| Box::pin(f(input)));
        Next::new(Arc::from(Vec::new()), terminal)
    }

    /// Runs the rest of the chain with `input`.
    pub fn run(self, input: H::Input) -> BoxFuture<'static, H::Output> {
        match self.chain.get(self.index).cloned() {
            Some(interceptor) => {
                let next = Next {
                    index: self.index + 1,
                    ..self
                };
                Box::pin(async move { H::intercept(&*interceptor, input, next).await })
            }
            None => (self.terminal)(input),
        }
    }
}

impl<H: Hop> Clone for Next<H> {
    fn clone(&self) -> Self {
        Next {
            chain: self.chain.clone(),
            index: self.index,
            terminal: self.terminal.clone(),
        }
    }
}

impl<H: Hop> fmt::Debug for Next<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Next")
            .field("operation", &std::any::type_name::<H>())
            .field("remaining", &(self.chain.len() - self.index))
            .finish()
    }
}

macro_rules! hop {
    ($(#[$doc:meta])* $name:ident, $side:ident, $input:ty, $output:ty, $method:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy)]
        pub struct $name;

        impl sealed::Sealed for $name {}

        impl Hop for $name {
            type Interceptor = dyn $side;
            type Input = $input;
            type Output = $output;

            fn intercept<'a>(
                interceptor: &'a dyn $side,
                input: $input,
                next: Next<Self>,
            ) -> BoxFuture<'a, $output> {
                interceptor.$method(input, next)
            }
        }
    };
}

hop!(
    /// A client's unary call: [`ClientInterceptor::unary`].
    Unary, ClientInterceptor, ClientCall, Result<Bytes>, unary
);
hop!(
    /// A client's multi call: [`ClientInterceptor::multi`].
    Multi, ClientInterceptor, ClientCall, Result<Replies>, multi
);
hop!(
    /// A client's stream send: [`ClientInterceptor::stream_send`].
    ClientSend, ClientInterceptor, StreamMessage, Result<()>, stream_send
);
hop!(
    /// A server's handling of a unary or multi request:
    /// [`ServerInterceptor::handle`].
    Handle, ServerInterceptor, ServerCall, Result<Bytes>, handle
);
hop!(
    /// A server's stream send: [`ServerInterceptor::stream_send`].
    ServerSend, ServerInterceptor, StreamMessage, Result<()>, stream_send
);
