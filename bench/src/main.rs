//! `psrpc-bench`: measures every psrpc RPC kind on a bus against the raw
//! floor of that bus (docs/BENCHMARKS.md).
//!
//! Buses: the in-process `local` bus, whose floor is a bare tokio channel
//! ping-pong, and `redis://` / `nats://`, whose floor is a bare
//! publish/subscribe ping-pong through the psrpc `MessageBus` API between
//! separate connections of the same bus. Floors have the same number of hops
//! as the row's operation and are measured in the same run with the same
//! concurrency. The unary rows have a second floor, a minimal RPC over the
//! same bus ([`rpc_floor`]), and the unary, affinity, multi and stream
//! round-trip rows a wire floor, the bare bus doing the publishes and
//! deliveries psrpc's wire needs for their operation ([`wire_floor`]).
//!
//! Modules: [`args`] (the command line), [`server`] (the benchmark
//! servers), [`rows`] and [`subs`] (the client's operations), [`payload`] (the request payload), [`plan`] (which
//! rows run, beside which floors), [`floors`], [`bus_floors`] and
//! [`rpc_floor`], [`wire_floor`] (the floors), [`stats`] (counts and latency histograms),
//! [`conn`] (bus connections), [`report`] (the table and the JSON).

mod args;
mod bus_floors;
mod conn;
mod floors;
mod payload;
mod plan;
mod report;
mod rows;
mod rpc_floor;
mod server;
mod stats;
mod subs;
mod wire_floor;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use psrpc::Method;

use pb::{Event, Ignored, Msg, Req, Res};

use args::{Args, BusSpec, Mode};
use conn::Connector;

/// Messages generated from `proto/bench.proto` (package `psrpcbench`).
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/psrpcbench.rs"));
}

/// `Bench.Unary`: queue routing with the claim handshake.
pub(crate) static UNARY: Method<Req, Res> = Method::queue("Unary");
/// `Bench.Affinity`: affinity routing.
pub(crate) static AFFINITY: Method<Req, Res> = Method::affinity("Affinity");
/// `Bench.Multi`: every server answers.
pub(crate) static MULTI: Method<Req, Res> = Method::multi("Multi");
/// `Bench.TopicUnary`: queue routing on a topic.
pub(crate) static TOPIC_UNARY: Method<Req, Res> = Method::queue("TopicUnary");
/// `Bench.Trigger`: makes a server publish events and broadcasts.
pub(crate) static TRIGGER: Method<Req, Res> = Method::queue("Trigger");
/// `Bench.Broadcast`: fan-out subscription on a topic.
pub(crate) static BROADCAST: Method<Ignored, Event> = Method::multi("Broadcast");
/// `BenchEvents.Events`: queue subscription.
pub(crate) static EVENTS: Method<Ignored, Event> = Method::queue("Events");
/// `Bench.Echo`: a stream (queue flags: claimed by one server).
pub(crate) static ECHO: Method<Msg, Msg> = Method::queue("Echo");

/// Timeout of every benchmark call and of every wait for an update.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// The resident set size of this process, from `/proc/self/status`.
pub(crate) fn rss() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .map(|l| l["VmRSS:".len()..].trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Waits for SIGTERM or SIGINT; the name of the signal.
async fn wait_for_signal() -> Result<&'static str, String> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term =
            signal(SignalKind::terminate()).map_err(|e| format!("SIGTERM handler: {e}"))?;
        let mut int =
            signal(SignalKind::interrupt()).map_err(|e| format!("SIGINT handler: {e}"))?;
        tokio::select! {
            _ = term.recv() => Ok("SIGTERM"),
            _ = int.recv() => Ok("SIGINT"),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c()
            .await
            .map_err(|e| format!("Ctrl-C handler: {e}"))?;
        Ok("Ctrl-C")
    }
}

/// Runs the sides of `--mode`: the servers, the client's rows, or both.
async fn run(args: Args, spec: BusSpec) -> Result<(), String> {
    let mut connector = Connector::new(spec, args.compress);
    match args.mode {
        Mode::All => {
            let servers = server::start_servers(&mut connector, &args).await?;
            let rows = plan::client_rows(&args, &mut connector).await;
            server::shutdown_servers(&servers).await;
            report::report(&args, &connector, &rows?)
        }
        Mode::Client => {
            let rows = plan::client_rows(&args, &mut connector).await?;
            report::report(&args, &connector, &rows)
        }
        Mode::Server => {
            let servers = server::start_servers(&mut connector, &args).await?;
            println!(
                "serving: {} servers ({}0..{}{}) on {}, topic {:?}; SIGTERM or SIGINT to stop",
                args.servers,
                args.server_id,
                args.server_id,
                args.servers - 1,
                args.bus,
                args.topic
            );
            // Should the handlers fail to register, shut down at once
            // (and say why) rather than serve with no way to stop cleanly.
            let sig = wait_for_signal().await;
            match &sig {
                Ok(s) => eprintln!("{s}: shutting down gracefully ..."),
                Err(e) => eprintln!("psrpc-bench: {e}; shutting down"),
            }
            server::shutdown_servers(&servers).await;
            let dropped = connector.dropped();
            println!(
                "servers stopped; {} bus dropped {dropped} deliveries (slow consumers); rss {}",
                connector.spec.kind(),
                rss()
            );
            sig.map(|_| ())
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let checked = BusSpec::parse(&args.bus).and_then(|spec| args.check(&spec).map(|()| spec));
    let spec = match checked {
        Ok(s) => s,
        Err(e) => {
            eprintln!("psrpc-bench: {e}");
            return ExitCode::from(2);
        }
    };

    println!("rss at start: {}", rss());
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("psrpc-bench: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let r = rt.block_on(run(args, spec));
    drop(rt);
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("psrpc-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
