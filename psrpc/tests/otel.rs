//! OpenTelemetry spans across a call (feature `opentelemetry`): the client
//! span is the parent of the server span, in the same trace, with Go's names,
//! kinds, events and status attributes.

use std::time::Duration;

use opentelemetry::trace::{SpanKind, Status};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use psrpc::middleware::otel::OtelTracing;
use psrpc::{
    ClientOptions, Context, Error, ErrorCode, LocalBus, Method, RpcClient, RpcServer, ServerOptions,
};

#[derive(Clone, PartialEq, prost::Message)]
struct Num {
    #[prost(int64, tag = "1")]
    n: i64,
}

static CALL: Method<Num, Num> = Method::queue("Call");

#[tokio::test]
async fn client_span_is_the_remote_parent_of_the_server_span() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    opentelemetry::global::set_tracer_provider(provider.clone());

    let bus = LocalBus::new();
    let server = RpcServer::new(
        bus.clone(),
        "Otel",
        ServerOptions::default().interceptor(OtelTracing::new()),
    )
    .await
    .unwrap();
    server
        .route(&CALL)
        .handle(|ctx: Context, req: Num| async move {
            // The handler's context continues the server span's trace.
            assert!(ctx.traceparent().is_some());
            if req.n < 0 {
                return Err(Error::new(ErrorCode::InvalidArgument, "negative"));
            }
            Ok(req)
        })
        .await
        .unwrap();
    let client = RpcClient::new(
        bus,
        "Otel",
        ClientOptions::default().interceptor(OtelTracing::new()),
    )
    .await
    .unwrap();
    client
        .unary(&CALL, (), Num { n: 1 })
        .timeout(Duration::from_secs(2))
        .await
        .unwrap();
    let _ = client
        .unary(&CALL, (), Num { n: -1 })
        .await
        .expect_err("negative");
    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();
    let find = |name: &str, nth: usize| {
        spans
            .iter()
            .filter(|s| s.name == name)
            .nth(nth)
            .unwrap_or_else(|| panic!("no span {name} #{nth} in {spans:#?}"))
    };
    for (nth, ok) in [(0, true), (1, false)] {
        let sent = find("Sent.Otel.Call", nth);
        let recv = find("Recv.Otel.Call", nth);
        assert_eq!(sent.span_kind, SpanKind::Client);
        assert_eq!(recv.span_kind, SpanKind::Server);
        assert_eq!(
            recv.span_context.trace_id(),
            sent.span_context.trace_id(),
            "one trace"
        );
        assert_eq!(
            recv.parent_span_id,
            sent.span_context.span_id(),
            "remote parent"
        );
        assert!(recv.parent_span_is_remote);
        assert_eq!(
            sent.instrumentation_scope.name(),
            "github.com/livekit/psrpc"
        );
        let events: Vec<_> = sent.events.iter().map(|e| e.name.to_string()).collect();
        assert_eq!(events, ["Outbound message", "Inbound message"]);
        let attr = |s: &opentelemetry_sdk::trace::SpanData, k: &str| {
            s.attributes
                .iter()
                .find(|kv| kv.key.as_str() == k)
                .map(|kv| kv.value.to_string())
        };
        if ok {
            assert_eq!(sent.status, Status::Ok);
            assert_eq!(attr(sent, "rpc.grpc.status_code").as_deref(), Some("0"));
        } else {
            assert_eq!(sent.status, Status::error("negative"));
            assert_eq!(recv.status, Status::error("negative"));
            assert_eq!(
                attr(recv, "rpc.psrpc.status_code").as_deref(),
                Some("invalid_argument")
            );
            assert_eq!(attr(sent, "rpc.grpc.status_code").as_deref(), Some("3"));
        }
    }
    server.shutdown().await;
}
