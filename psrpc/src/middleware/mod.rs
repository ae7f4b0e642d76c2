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
//! Each installs through a method on [`ClientOptions`](crate::ClientOptions)
//! or [`ServerOptions`](crate::ServerOptions):
//!
//! ```
//! use psrpc::middleware::retry::RetryOptions;
//! use psrpc::{ClientOptions, ServerOptions};
//!
//! let client = ClientOptions::default()
//!     .traced()
//!     .retries(RetryOptions::default());
//! let server = ServerOptions::default().traced().recovery();
//! # let _ = (client, server);
//! ```

pub mod metrics;
#[cfg(feature = "opentelemetry")]
pub mod otel;
pub mod recovery;
pub mod retry;
pub mod trace;
