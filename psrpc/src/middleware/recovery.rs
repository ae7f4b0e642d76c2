//! Panic recovery for server handlers.
//!
//! A handler that panics is a bug, but one bad request must not cost the
//! caller a timeout: with [`ServerOptions::recovery`], the panic becomes an
//! `internal` error answered to that caller, and the server goes on serving.
//! Install it last, so it sits innermost and also catches panics of the
//! other interceptors.

use std::any::Any;
use std::panic::AssertUnwindSafe;

use futures::FutureExt;
use futures::future::BoxFuture;

use crate::error::{Error, ErrorCode, Result};
use crate::info::{BoxMessage, Context};
use crate::interceptor::{ServerInterceptor, ServerNext};
use crate::server::ServerOptions;

/// The server interceptor that turns a panic into an `internal` error.
#[derive(Debug, Clone, Copy, Default)]
pub struct Recovery;

impl ServerInterceptor for Recovery {
    fn intercept<'a>(
        &'a self,
        ctx: Context,
        req: BoxMessage,
        next: ServerNext,
    ) -> BoxFuture<'a, Result<BoxMessage>> {
        Box::pin(async move {
            match AssertUnwindSafe(next.run(ctx, req)).catch_unwind().await {
                Ok(r) => r,
                Err(panic) => {
                    let msg = panic_message(panic.as_ref());
                    tracing::error!(panic = %msg, "psrpc server: handler panicked");
                    Err(Error::new(
                        ErrorCode::Internal,
                        format!("Caught server panic: {msg}"),
                    ))
                }
            }
        })
    }
}

/// The text a panic was raised with.
pub(crate) fn panic_message(p: &(dyn Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-text payload".to_owned()
    }
}

impl ServerOptions {
    /// Turns panics of handlers (and of the interceptors added before this
    /// one) into `internal` errors for the call that panicked.
    pub fn recovery(self) -> Self {
        self.interceptor(Recovery)
    }
}
