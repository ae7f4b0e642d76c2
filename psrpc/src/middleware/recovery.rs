//! Panic recovery for server handlers.
//!
//! A handler that panics is a bug, but one bad request must not cost the
//! caller a timeout: with the [`Recovery`] interceptor, the panic becomes an
//! `internal` error answered to that caller, and the server goes on serving.
//! Installed last (innermost), it catches the handler's panics, and the
//! interceptors installed before it (logging, metrics) see the `internal`
//! error; installed first (outermost), it also catches panics of the other
//! interceptors, which then see nothing of that call's outcome:
//!
//! ```
//! use psrpc::ServerOptions;
//! use psrpc::middleware::recovery::Recovery;
//!
//! let opts = ServerOptions::default().interceptor(Recovery);
//! # let _ = opts;
//! ```

use std::panic::AssertUnwindSafe;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;

use crate::error::{Error, ErrorCode, Result, panic_message};
use crate::interceptor::{Handle, Next, ServerCall, ServerInterceptor};

/// The server interceptor that turns a panic into an `internal` error.
#[derive(Debug, Clone, Copy, Default)]
pub struct Recovery;

impl ServerInterceptor for Recovery {
    fn handle<'a>(&'a self, call: ServerCall, next: Next<Handle>) -> BoxFuture<'a, Result<Bytes>> {
        Box::pin(async move {
            match AssertUnwindSafe(next.run(call)).catch_unwind().await {
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
