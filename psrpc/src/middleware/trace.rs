//! Tracing: a [`tracing`] span around every call on both sides, and the
//! W3C trace context carried across processes.
//!
//! Installed on a client (`ClientOptions::default().interceptor(Tracing)`),
//! it opens a `psrpc.client` span
//! (`otel.name` = `Sent.<Service>.<Method>`, `otel.kind` = `client`) around
//! each unary and multi call and sends its W3C `traceparent` (and the
//! caller's `tracestate`) in the request metadata, as Go's `otelpsrpc`
//! does. Installed on a server (`ServerOptions::default().interceptor(Tracing)`),
//! it reads that context, opens a
//! `psrpc.server` span (`Recv.<Service>.<Method>`, kind `server`) whose
//! `parent_span_id` is the client's span, and runs the handler inside it.
//! The handler's [`Context::traceparent`] names the server span, so a call
//! the handler makes with `.context(&ctx)` continues the same trace: a trace
//! crosses any number of processes, Rust or Go.
//!
//! Spans carry `trace_id`, `span_id`, `parent_span_id`, `rpc.system`,
//! `rpc.service`, `rpc.method`, and on completion `otel.status_code` and
//! `rpc.psrpc.status_code` (the psrpc error code). A `tracing` subscriber
//! that exports to OpenTelemetry (e.g. `tracing-opentelemetry`) sees them as
//! OpenTelemetry spans.

use std::fmt;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{StreamExt, future};
use tracing::Instrument;

use crate::call::CallOptions;
use crate::error::Result;
use crate::info::{Context, RpcInfo};
use crate::interceptor::{
    ClientCall, ClientInterceptor, Handle, Multi, Next, Replies, ServerCall, ServerInterceptor,
    Unary,
};

/// The metadata key of the W3C trace parent.
pub const TRACEPARENT: &str = "traceparent";
/// The metadata key of the W3C trace state.
pub const TRACESTATE: &str = "tracestate";

/// A W3C `traceparent` (version 00): trace id, parent span id, flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// The trace id (never zero).
    pub trace_id: u128,
    /// The span id (never zero).
    pub span_id: u64,
    /// Trace flags (`01`: sampled).
    pub flags: u8,
}

impl TraceParent {
    /// A new trace, sampled.
    pub fn root() -> Self {
        let hi = u128::from(crate::id::next_u64());
        let lo = u128::from(crate::id::next_u64());
        TraceParent {
            trace_id: ((hi << 64) | lo).max(1),
            span_id: new_span_id(),
            flags: 1,
        }
    }

    /// A new span of the same trace.
    pub fn child(&self) -> Self {
        TraceParent {
            span_id: new_span_id(),
            ..*self
        }
    }

    /// Parses a header value; `None` for anything malformed (which starts a
    /// new trace rather than failing a call).
    pub fn parse(s: &str) -> Option<Self> {
        let mut parts = s.trim().split('-');
        let (version, trace, span, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let hex = |p: &str, n: usize| {
            p.len() == n
                && p.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if !hex(version, 2)
            || version == "ff"
            || !hex(trace, 32)
            || !hex(span, 16)
            || !hex(flags, 2)
        {
            return None;
        }
        // Version 00 has exactly four parts; later versions may add more.
        if version == "00" && parts.next().is_some() {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok()?;
        let span_id = u64::from_str_radix(span, 16).ok()?;
        if trace_id == 0 || span_id == 0 {
            return None;
        }
        Some(TraceParent {
            trace_id,
            span_id,
            flags: u8::from_str_radix(flags, 16).ok()?,
        })
    }

    fn trace_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    fn span_hex(&self) -> String {
        format!("{:016x}", self.span_id)
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.span_id, self.flags
        )
    }
}

fn new_span_id() -> u64 {
    crate::id::next_u64().max(1)
}

/// The span of one call: `$name` (a literal, as `tracing` wants), with the
/// OpenTelemetry-style fields both sides share.
macro_rules! call_span {
    ($name:literal, $verb:literal, $kind:literal, $info:expr, $tp:expr, $parent:expr) => {
        tracing::info_span!(
            $name,
            otel.name = %format_args!("{}.{}.{}", $verb, $info.service, $info.method),
            otel.kind = $kind,
            rpc.system = "psrpc",
            rpc.service = %$info.service,
            rpc.method = %$info.method,
            trace_id = %$tp.trace_hex(),
            span_id = %$tp.span_hex(),
            parent_span_id = $parent.map(|p| p.span_hex()),
            otel.status_code = tracing::field::Empty,
            rpc.psrpc.status_code = tracing::field::Empty,
        )
    };
}

/// The trace a call made with `ctx` belongs to: the context's own span, or
/// the trace of the request a handler is serving.
pub(crate) fn parent_of(ctx: &Context) -> Option<TraceParent> {
    ctx.traceparent()
        .and_then(TraceParent::parse)
        .or_else(|| incoming_parent(ctx))
}

/// The trace parent a request arrived with (its `traceparent` metadata).
pub(crate) fn incoming_parent(ctx: &Context) -> Option<TraceParent> {
    ctx.metadata()
        .get(TRACEPARENT)
        .and_then(|s| TraceParent::parse(s))
}

/// Starts the client span of a call and puts its context in the metadata.
fn client_span(info: &RpcInfo, opts: &mut CallOptions) -> tracing::Span {
    let parent = parent_of(&opts.context);
    let tp = parent.map_or_else(TraceParent::root, |p| p.child());
    opts.metadata.insert(TRACEPARENT.to_owned(), tp.to_string());
    if let Some(state) = opts.context.metadata().get(TRACESTATE) {
        opts.metadata
            .entry(TRACESTATE.to_owned())
            .or_insert_with(|| state.clone());
    }
    call_span!("psrpc.client", "Sent", "client", info, tp, parent)
}

fn record<T>(span: &tracing::Span, res: &Result<T>) {
    match res {
        Ok(_) => {
            span.record("otel.status_code", "OK");
        }
        Err(e) => {
            span.record("otel.status_code", "ERROR");
            span.record("rpc.psrpc.status_code", e.wire_code());
            tracing::debug!(parent: span, error = %e, "psrpc call failed");
        }
    }
}

/// The tracing interceptor (see the [module docs](self)).
#[derive(Debug, Clone, Copy, Default)]
pub struct Tracing;

impl ClientInterceptor for Tracing {
    fn unary<'a>(
        &'a self,
        mut call: ClientCall,
        next: Next<Unary>,
    ) -> BoxFuture<'a, Result<Bytes>> {
        let info = call.info().clone();
        let span = client_span(&info, call.options_mut());
        Box::pin(async move {
            let res = next.run(call).instrument(span.clone()).await;
            record(&span, &res);
            res
        })
    }

    fn multi<'a>(
        &'a self,
        mut call: ClientCall,
        next: Next<Multi>,
    ) -> BoxFuture<'a, Result<Replies>> {
        let info = call.info().clone();
        let span = client_span(&info, call.options_mut());
        Box::pin(async move {
            let replies = match next.run(call).instrument(span.clone()).await {
                Ok(r) => r,
                Err(e) => {
                    let res = Err(e);
                    record(&span, &res);
                    return res;
                }
            };
            // Each error answered is an event of the span; its end is
            // recorded when the results end (or are dropped).
            let end = SpanEnd {
                span: span.clone(),
                responses: 0,
                errors: 0,
            };
            let replies = replies.scan(end, |end, item| {
                match &item {
                    Ok(_) => end.responses += 1,
                    Err(e) => {
                        end.errors += 1;
                        tracing::debug!(parent: &end.span, error = %e, "psrpc multi call: a server answered with an error");
                    }
                }
                future::ready(Some(item))
            });
            Ok(Replies::new(replies))
        })
    }
}

/// Records the end of a multi call's span when its results go: an error
/// when every server that answered answered with one.
struct SpanEnd {
    span: tracing::Span,
    responses: usize,
    errors: usize,
}

impl Drop for SpanEnd {
    fn drop(&mut self) {
        let failed = self.responses == 0 && self.errors > 0;
        let status = if failed { "ERROR" } else { "OK" };
        self.span.record("otel.status_code", status);
        tracing::debug!(parent: &self.span, errors = self.errors, "psrpc multi call ended");
    }
}

impl ServerInterceptor for Tracing {
    fn handle<'a>(
        &'a self,
        mut call: ServerCall,
        next: Next<Handle>,
    ) -> BoxFuture<'a, Result<Bytes>> {
        let parent = incoming_parent(call.context());
        let tp = parent.map_or_else(TraceParent::root, |p| p.child());
        let span = call_span!("psrpc.server", "Recv", "server", call.info(), tp, parent);
        let ctx = call.context().clone().with_traceparent(tp.to_string());
        *call.context_mut() = ctx;
        Box::pin(async move {
            let res = next.run(call).instrument(span.clone()).await;
            record(&span, &res);
            res
        })
    }
}
