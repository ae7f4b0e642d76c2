//! Middleware shipped with psrpc, built on the [interceptors](crate::interceptor):
//!
//! * [`retry`]: retries client calls and stream sends that failed with a
//!   retryable error, with a growing timeout and a bounded number of attempts;
//! * [`recovery`]: turns a panicking server handler into an `internal` error
//!   for that one call;
//! * [`metrics`]: counts, latencies and sizes per service, method and
//!   outcome, reported to a [`MetricsObserver`](metrics::MetricsObserver)
//!   (the [`metrics`](https://docs.rs/metrics) facade crate with the
//!   `metrics` feature, on by default);
//! * [`trace`]: a `tracing` span per call on both sides, with the W3C trace
//!   context carried in the request metadata so a trace crosses processes
//!   (and OpenTelemetry spans with the `opentelemetry` feature).
//!
//! Each is an interceptor like any other, installed with the one method
//! `interceptor` of [`ClientOptions`](crate::ClientOptions) or
//! [`ServerOptions`](crate::ServerOptions), outermost first:
//!
//! ```
//! use psrpc::middleware::{recovery::Recovery, retry::Retry, trace::Tracing};
//! use psrpc::{ClientOptions, ServerOptions};
//!
//! let client = ClientOptions::default()
//!     .interceptor(Tracing)
//!     .interceptor(Retry::default());
//! let server = ServerOptions::default()
//!     .interceptor(Tracing)
//!     .interceptor(Recovery);
//! # let _ = (client, server);
//! ```

pub mod metrics;
#[cfg(feature = "opentelemetry")]
pub mod otel;
pub mod recovery;
pub mod retry;
pub mod trace;
