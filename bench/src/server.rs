//! The benchmark servers: `Bench` with every method, plus a `BenchEvents`
//! server that only publishes.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use bytes::Bytes;
use psrpc::bus::DynBus;
use psrpc::middleware::metrics::{Metrics, MetricsFacade};
use psrpc::middleware::recovery::Recovery;
use psrpc::middleware::trace::Tracing;
use psrpc::{ClientOptions, Context, RpcServer, ServerOptions, ServerStream};

use crate::args::Args;
use crate::conn::Connector;
use crate::pb::{Event, Msg, Req, Res};
use crate::{AFFINITY, BROADCAST, ECHO, EVENTS, MULTI, TOPIC_UNARY, TRIGGER, UNARY};

/// One benchmark server: `Bench` with every method, plus a `BenchEvents`
/// server that only publishes.
pub(crate) struct BenchServer {
    bench: RpcServer,
    events: RpcServer,
}

/// The options of every bench server (with `--middleware`, the shipped
/// middleware: tracing, metrics, recovery).
fn server_options(id: &str, args: &Args) -> ServerOptions {
    let mut o = ServerOptions::default().server_id(id);
    if args.skip_claim {
        o = o.skip_claim(|| true);
    }
    if args.middleware {
        o.interceptor(Tracing)
            .interceptor(Metrics::new(MetricsFacade::shared()))
            .interceptor(Recovery)
    } else {
        o
    }
}

/// The options of the bench clients (with `--middleware`: tracing, metrics).
pub(crate) fn client_options(args: &Args) -> ClientOptions {
    let o = ClientOptions::default().client_id(&args.client_id);
    if args.middleware {
        o.interceptor(Tracing)
            .interceptor(Metrics::new(MetricsFacade::shared()))
    } else {
        o
    }
}

/// Starts server number `i` (0-based) on its own bus handle.
pub(crate) async fn start_server(bus: DynBus, i: usize, args: &Args) -> psrpc::Result<BenchServer> {
    let id = format!("{}{i}", args.server_id);
    let bench = RpcServer::new(bus.clone(), "Bench", server_options(&id, args)).await?;
    let events = RpcServer::new(bus, "BenchEvents", server_options(&id, args)).await?;

    let echo = |id: String| {
        move |_ctx: Context, req: Req| {
            let server_id = id.clone();
            async move {
                Ok(Res {
                    seq: req.seq,
                    server_id,
                    payload: req.payload,
                })
            }
        }
    };
    bench.route(&UNARY).handle(echo(id.clone())).await?;
    let affinity = (1.0 - 0.25 * i as f32).max(0.1);
    bench
        .route(&AFFINITY)
        .affinity(move |_: &Req| affinity)
        .handle(echo(id.clone()))
        .await?;
    bench.route(&MULTI).handle(echo(id.clone())).await?;
    bench
        .route(&TOPIC_UNARY)
        .topic(std::slice::from_ref(&args.topic))
        .handle(echo(id.clone()))
        .await?;

    bench
        .stream_route(&ECHO)
        .handle(|mut st: ServerStream<Msg, Msg>| async move {
            while let Some(m) = st.recv().await? {
                st.send(m).await?;
            }
            Ok(())
        })
        .await?;

    let counter = Arc::new(AtomicI64::new(0));
    let (b, e) = (bench.clone(), events.clone());
    bench
        .route(&TRIGGER)
        .handle(move |_ctx: Context, req: Req| {
            let (bench, events, counter, id) = (b.clone(), e.clone(), counter.clone(), id.clone());
            async move {
                let event = |counter: &AtomicI64| Event {
                    seq: counter.fetch_add(1, Ordering::Relaxed) + 1,
                    text: req.text.clone(),
                    server_id: id.clone(),
                };
                for _ in 0..req.count.max(0) {
                    events.publish(&EVENTS, (), &event(&counter)).await?;
                }
                if !req.text.is_empty() {
                    let topic = [req.text.clone()];
                    for _ in 0..req.count.max(0) {
                        bench.publish(&BROADCAST, &topic, &event(&counter)).await?;
                    }
                }
                Ok(Res {
                    seq: req.seq,
                    server_id: id,
                    payload: Bytes::new(),
                })
            }
        })
        .await?;
    Ok(BenchServer { bench, events })
}

/// Starts servers `0..args.servers`, each on its own bus connection, as
/// separate processes would.
pub(crate) async fn start_servers(
    connector: &mut Connector,
    args: &Args,
) -> Result<Vec<BenchServer>, String> {
    let mut servers = Vec::new();
    for i in 0..args.servers {
        let bus = connector.connect(&format!("server {i}")).await?;
        let s = start_server(bus, i, args)
            .await
            .map_err(|e| format!("starting server {i}: {e}"))?;
        servers.push(s);
    }
    Ok(servers)
}

/// Shuts every server down gracefully (in-flight handlers finish).
pub(crate) async fn shutdown_servers(servers: &[BenchServer]) {
    futures::future::join_all(servers.iter().map(|s| async move {
        s.bench.shutdown().await;
        s.events.shutdown().await;
    }))
    .await;
}
