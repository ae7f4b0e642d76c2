//! OpenTelemetry tracing (cargo feature `opentelemetry`), as Go's
//! `otelpsrpc`: a client span `Sent.<Service>.<Method>` (kind client) around
//! every unary call, whose W3C context travels in the request metadata
//! (`traceparent`, `tracestate`), and a server span `Recv.<Service>.<Method>`
//! (kind server) whose parent is that remote span. Both record the events
//! "Outbound message" and "Inbound message", the status (error with the
//! message, or ok), `rpc.psrpc.status_code` (the psrpc code of an error) and
//! `rpc.grpc.status_code` (the numeric gRPC code, 0 on success).
//!
//! Spans come from the global tracer provider (instrumentation scope
//! `github.com/livekit/psrpc`) unless a tracer is given. The parent of a
//! client span is the current OpenTelemetry context's span if there is one,
//! else the trace of the psrpc [`Context`] the call carries (a handler's
//! context names its server span), else none. The propagation format is
//! W3C Trace Context, written here, so no propagator needs installing.
//!
//! ```no_run
//! use psrpc::middleware::otel::OtelTracing;
//! use psrpc::{ClientOptions, ServerOptions};
//!
//! let client = ClientOptions::default().interceptor(OtelTracing::new());
//! let server = ServerOptions::default().interceptor(OtelTracing::new());
//! # let _ = (client, server);
//! ```

use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use opentelemetry::trace::{
    Span, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
    Tracer,
};
use opentelemetry::{InstrumentationScope, KeyValue, global};

use super::trace::{TRACEPARENT, TRACESTATE, TraceParent, incoming_parent, parent_of};
use crate::error::Result;
use crate::info::{Context, RpcInfo};
use crate::interceptor::{
    ClientCall, ClientInterceptor, Handle, Next, ServerCall, ServerInterceptor, Unary,
};

/// The instrumentation scope of psrpc's spans (Go's tracer name).
pub const TRACER_NAME: &str = "github.com/livekit/psrpc";

/// The OpenTelemetry interceptor, for clients and servers (see the
/// [module docs](self)).
#[derive(Clone)]
pub struct OtelTracing {
    tracer: Arc<global::BoxedTracer>,
}

impl std::fmt::Debug for OtelTracing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OtelTracing")
    }
}

impl Default for OtelTracing {
    fn default() -> Self {
        Self::new()
    }
}

impl OtelTracing {
    /// Spans from the global tracer provider.
    pub fn new() -> Self {
        let scope = InstrumentationScope::builder(TRACER_NAME)
            .with_version(env!("CARGO_PKG_VERSION"))
            .build();
        Self::with_tracer(global::tracer_with_scope(scope))
    }

    /// Spans from `tracer`.
    pub fn with_tracer(tracer: global::BoxedTracer) -> Self {
        OtelTracing {
            tracer: Arc::new(tracer),
        }
    }
}

fn to_span_context(tp: &TraceParent, state: Option<&str>) -> SpanContext {
    SpanContext::new(
        TraceId::from(tp.trace_id),
        SpanId::from(tp.span_id),
        TraceFlags::new(tp.flags),
        true,
        state
            .and_then(|s| TraceState::from_key_value(parse_state(s)).ok())
            .unwrap_or_default(),
    )
}

fn parse_state(s: &str) -> Vec<(&str, &str)> {
    s.split(',')
        .filter_map(|kv| kv.trim().split_once('='))
        .collect()
}

fn to_traceparent(sc: &SpanContext) -> TraceParent {
    TraceParent {
        trace_id: u128::from_be_bytes(sc.trace_id().to_bytes()),
        span_id: u64::from_be_bytes(sc.span_id().to_bytes()),
        flags: sc.trace_flags().to_u8(),
    }
}

/// The OpenTelemetry context a span of a call made with `ctx` starts under.
fn parent_context(ctx: &Context) -> opentelemetry::Context {
    let current = opentelemetry::Context::current();
    if current.has_active_span() {
        return current;
    }
    match parent_of(ctx) {
        Some(tp) => {
            let state = ctx.metadata().get(TRACESTATE).map(String::as_str);
            current.with_remote_span_context(to_span_context(&tp, state))
        }
        None => current,
    }
}

fn finish<T>(span: &mut global::BoxedSpan, res: &Result<T>) {
    span.add_event("Inbound message", Vec::new());
    match res {
        Ok(_) => {
            span.set_attribute(KeyValue::new("rpc.grpc.status_code", 0i64));
            span.set_status(Status::Ok);
        }
        Err(e) => {
            span.set_attribute(KeyValue::new(
                "rpc.psrpc.status_code",
                e.wire_code().to_owned(),
            ));
            span.set_attribute(KeyValue::new("rpc.grpc.status_code", e.grpc_code() as i64));
            span.set_status(Status::error(e.message().to_owned()));
        }
    }
    span.end();
}

fn attributes(info: &RpcInfo) -> Vec<KeyValue> {
    vec![
        KeyValue::new("rpc.system", "psrpc"),
        KeyValue::new("rpc.service", info.service.clone()),
        KeyValue::new("rpc.method", info.method.clone()),
    ]
}

impl ClientInterceptor for OtelTracing {
    fn unary<'a>(
        &'a self,
        mut call: ClientCall,
        next: Next<Unary>,
    ) -> BoxFuture<'a, Result<Bytes>> {
        Box::pin(async move {
            let info = call.info().clone();
            let opts = call.options_mut();
            let parent = parent_context(&opts.context);
            let mut span = self
                .tracer
                .span_builder(format!("Sent.{}.{}", info.service, info.method))
                .with_kind(SpanKind::Client)
                .with_attributes(attributes(&info))
                .start_with_context(&*self.tracer, &parent);
            let sc = span.span_context().clone();
            if sc.is_valid() {
                opts.metadata
                    .insert(TRACEPARENT.to_owned(), to_traceparent(&sc).to_string());
                let state = sc.trace_state().header();
                if !state.is_empty() {
                    opts.metadata.insert(TRACESTATE.to_owned(), state);
                }
            }
            span.add_event("Outbound message", Vec::new());
            let res = next.run(call).await;
            finish(&mut span, &res);
            res
        })
    }
}

impl ServerInterceptor for OtelTracing {
    fn handle<'a>(
        &'a self,
        mut call: ServerCall,
        next: Next<Handle>,
    ) -> BoxFuture<'a, Result<Bytes>> {
        Box::pin(async move {
            let info = call.info().clone();
            let ctx = call.context().clone();
            let remote = incoming_parent(&ctx)
                .map(|tp| to_span_context(&tp, ctx.metadata().get(TRACESTATE).map(String::as_str)));
            let parent = match remote {
                Some(sc) => opentelemetry::Context::new().with_remote_span_context(sc),
                None => opentelemetry::Context::new(),
            };
            let mut span = self
                .tracer
                .span_builder(format!("Recv.{}.{}", info.service, info.method))
                .with_kind(SpanKind::Server)
                .with_attributes(attributes(&info))
                .start_with_context(&*self.tracer, &parent);
            let sc = span.span_context().clone();
            let ctx = if sc.is_valid() {
                ctx.with_traceparent(to_traceparent(&sc).to_string())
            } else {
                ctx
            };
            *call.context_mut() = ctx;
            span.add_event("Outbound message", Vec::new());
            let res = next.run(call).await;
            finish(&mut span, &res);
            res
        })
    }
}
