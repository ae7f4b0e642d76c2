//! Tracing: a [`tracing`] span around every call on both sides, and the
//! W3C trace context carried across processes.
//!
//! The client side ([`ClientOptions::traced`]) opens a `psrpc.client` span
//! (`otel.name` = `Sent.<Service>.<Method>`, `otel.kind` = `client`) around
//! each unary and multi call and sends its W3C `traceparent` (and the
//! caller's `tracestate`) in the request metadata, as Go's `otelpsrpc`
//! does. The server side ([`ServerOptions::traced`]) reads it, opens a
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

use futures::future::BoxFuture;
use tracing::Instrument;

use crate::client::{CallOptions, ClientOptions};
use crate::error::Result;
use crate::info::{BoxMessage, Context, RpcInfo};
use crate::interceptor::{
    ClientInterceptor, ClientNext, MultiCallInterceptor, MultiInterceptor, MultiSendNext,
    ServerInterceptor, ServerNext,
};
use crate::server::ServerOptions;

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
    fn intercept<'a>(
        &'a self,
        req: BoxMessage,
        mut opts: CallOptions,
        next: ClientNext,
    ) -> BoxFuture<'a, Result<BoxMessage>> {
        let span = client_span(next.info(), &mut opts);
        Box::pin(async move {
            let res = next.run(req, opts).instrument(span.clone()).await;
            record(&span, &res);
            res
        })
    }
}

struct TracedMulti {
    info: RpcInfo,
    span: Option<tracing::Span>,
    errors: usize,
}

impl MultiInterceptor for Tracing {
    fn begin(&self, info: &RpcInfo) -> Box<dyn MultiCallInterceptor> {
        Box::new(TracedMulti {
            info: info.clone(),
            span: None,
            errors: 0,
        })
    }
}

impl MultiCallInterceptor for TracedMulti {
    fn send<'a>(
        &'a mut self,
        req: BoxMessage,
        mut opts: CallOptions,
        next: MultiSendNext<'a>,
    ) -> BoxFuture<'a, Result<()>> {
        let span = client_span(&self.info, &mut opts);
        self.span = Some(span.clone());
        Box::pin(async move {
            let res = next.run(req, opts).instrument(span.clone()).await;
            if res.is_err() {
                record(&span, &res);
            }
            res
        })
    }

    fn recv(&mut self, item: Result<BoxMessage>, next: &mut dyn FnMut(Result<BoxMessage>)) {
        if let (Some(span), Err(e)) = (&self.span, &item) {
            self.errors += 1;
            tracing::debug!(parent: span, error = %e, "psrpc multi call: a server answered with an error");
        }
        next(item)
    }

    fn close(&mut self) {
        if let Some(span) = &self.span {
            span.record("otel.status_code", "OK");
            tracing::debug!(parent: span, errors = self.errors, "psrpc multi call ended");
        }
    }
}

impl ServerInterceptor for Tracing {
    fn intercept<'a>(
        &'a self,
        ctx: Context,
        req: BoxMessage,
        next: ServerNext,
    ) -> BoxFuture<'a, Result<BoxMessage>> {
        let info = ctx.info().cloned().unwrap_or_default();
        let parent = incoming_parent(&ctx);
        let tp = parent.map_or_else(TraceParent::root, |p| p.child());
        let span = call_span!("psrpc.server", "Recv", "server", &info, tp, parent);
        let ctx = ctx.with_traceparent(tp.to_string());
        Box::pin(async move {
            let res = next.run(ctx, req).instrument(span.clone()).await;
            record(&span, &res);
            res
        })
    }
}

impl ClientOptions {
    /// Traces every unary and multi call (see [`trace`](self)).
    pub fn traced(self) -> Self {
        self.interceptor(Tracing).multi_interceptor(Tracing)
    }
}

impl ServerOptions {
    /// Traces every request served (see [`trace`](self)).
    pub fn traced(self) -> Self {
        self.interceptor(Tracing)
    }
}
