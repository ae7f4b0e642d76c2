//! Which rows a client run measures (`--tests`), each beside its floors.

use std::sync::Arc;

use psrpc::RpcClient;

use crate::args::Args;
use crate::conn::Connector;
use crate::floors::{FloorKind, Floors};
use crate::payload::text_payload;
use crate::report::Row;
use crate::rows::{Bench, Op, run_op, run_stream_rt};
use crate::server::client_options;
use crate::stats::Stats;
use crate::subs::{Resub, run_sub_burst, run_sub_trigger};
use crate::{BROADCAST, EVENTS, rss};

/// A ping-pong floor: `rounds` round trips to `fanout` peers.
fn pp(fanout: usize, rounds: usize) -> FloorKind {
    FloorKind::PingPong { fanout, rounds }
}

/// Measures the floors of a row that took `stats` at concurrency `conc`
/// (the minimal RPC floor too when `rpc`), logs the figures and adds the row.
#[allow(clippy::too_many_arguments)]
async fn add_row(
    rows: &mut Vec<Row>,
    floors: &mut Floors,
    connector: &mut Connector,
    name: &'static str,
    stats: Stats,
    kind: FloorKind,
    conc: usize,
    rpc: Option<FloorKind>,
) -> Result<(), String> {
    let floor = floors.get(kind, conc, connector).await?;
    let rpc = match rpc {
        Some(k) => Some(floors.get(k, conc, connector).await?),
        None => None,
    };
    let rpc_note = rpc
        .as_ref()
        .map(|r| format!(", rpc floor {} ops, {} errors", r.n, r.errors))
        .unwrap_or_default();
    eprintln!(
        "  done: {} ops, {} errors (floor {} ops, {} errors{rpc_note}), rss {}",
        stats.n,
        stats.errors,
        floor.n,
        floor.errors,
        rss()
    );
    rows.push(Row {
        name,
        stats,
        floor: (*floor).clone(),
        kind,
        rpc: rpc.map(|r| (*r).clone()),
    });
    Ok(())
}

/// Runs every client row on one client connection and returns the rows.
pub(crate) async fn client_rows(
    args: &Args,
    connector: &mut Connector,
) -> Result<Vec<Row>, String> {
    let payload = text_payload(args.payload);
    // The client gets its own connection, shared by its two service clients
    // as in one client process.
    let bus = connector.connect("client").await?;
    let client = RpcClient::new(bus.clone(), "Bench", client_options(args))
        .await
        .map_err(|e| format!("client: {e}"))?;
    let events_client = RpcClient::new(bus, "BenchEvents", client_options(args))
        .await
        .map_err(|e| format!("events client: {e}"))?;
    let bench = Arc::new(Bench {
        client: client.clone(),
        topic: vec![args.topic.clone()],
        payload: payload.clone(),
        expect: args.expect(),
    });
    let mut floors = Floors::new(args.duration, payload, &args.client_id, args.compress);

    let d = args.duration;
    let conc = args.conc();
    let unary_floor = pp(1, 2);
    let rpc_floor = Some(FloorKind::Rpc {
        servers: args.servers.max(1),
    });
    let mut rows: Vec<Row> = Vec::new();

    type Plan = (&'static str, Op, usize, FloorKind, Option<FloorKind>);
    let mut plan: Vec<Plan> = Vec::new();
    if args.runs("unary") {
        plan.push(("unary (queue) seq", Op::Unary, 1, unary_floor, rpc_floor));
        let conc_row = (
            "unary (queue) conc64",
            Op::Unary,
            conc,
            unary_floor,
            rpc_floor,
        );
        plan.push(conc_row);
        plan.push(("topic unary seq", Op::TopicUnary, 1, unary_floor, rpc_floor));
    }
    if args.runs("affinity") {
        plan.push(("affinity seq", Op::Affinity, 1, unary_floor, rpc_floor));
        let conc_row = (
            "affinity conc64",
            Op::Affinity,
            conc,
            unary_floor,
            rpc_floor,
        );
        plan.push(conc_row);
        let default_opts = "affinity seq (default opts)";
        plan.push((default_opts, Op::AffinityDefault, 1, unary_floor, rpc_floor));
    }
    if args.runs("multi") {
        let mf = pp(args.expect().max(1), 1);
        plan.push(("multi seq", Op::Multi, 1, mf, None));
        plan.push(("multi conc64", Op::Multi, conc, mf, None));
    }
    for (name, op, c, kind, rpc) in plan {
        eprintln!("running {name} ...");
        let s = run_op(&bench, op, c, d).await;
        add_row(&mut rows, &mut floors, connector, name, s, kind, c, rpc).await?;
    }
    if args.runs("stream") {
        // Open: open, claim, claim response, ack (the close is not awaited
        // by anyone): two ping-pongs. A message round trip: the message and
        // its echo (their acks travel beside them): one ping-pong.
        let name = "stream open+close seq";
        eprintln!("running {name} ...");
        let s = run_op(&bench, Op::StreamOpenClose, 1, d).await;
        add_row(
            &mut rows,
            &mut floors,
            connector,
            name,
            s,
            pp(1, 2),
            1,
            None,
        )
        .await?;
        for (name, c) in [
            ("stream msg round-trip seq", 1),
            ("stream msg round-trip 64 streams", conc),
        ] {
            eprintln!("running {name} ...");
            let s = run_stream_rt(&bench, c, d).await;
            add_row(
                &mut rows,
                &mut floors,
                connector,
                name,
                s,
                pp(1, 1),
                c,
                None,
            )
            .await?;
        }
    }
    if args.runs("sub") {
        let mut events = Resub::open(&events_client, &EVENTS, &[]).await?;
        let mut bcast = Resub::open(&client, &BROADCAST, std::slice::from_ref(&args.topic)).await?;
        let name = "sub trigger->event+bcast seq";
        eprintln!("running {name} ...");
        // Both sub rows run as tasks, as every other row's callers do: run
        // on the main thread (not a runtime worker), each operation paid
        // two wake-ups across threads that no caller in a service pays.
        let (c, topic) = (client.clone(), args.topic.clone());
        let (s, mut events) = tokio::spawn(async move {
            let s = run_sub_trigger(&c, &mut events, &mut bcast, &topic, d).await;
            (s, events)
        })
        .await
        .map_err(|e| format!("{name}: {e}"))?;
        add_row(
            &mut rows,
            &mut floors,
            connector,
            name,
            s,
            pp(1, 3),
            1,
            None,
        )
        .await?;
        eprintln!("running sub burst ...");
        let (c, burst) = (client.clone(), args.burst());
        let s = tokio::spawn(async move { run_sub_burst(&c, &mut events, burst, d).await })
            .await
            .map_err(|e| format!("sub burst: {e}"))?;
        let kind = FloorKind::Stream { n: args.burst() };
        add_row(
            &mut rows,
            &mut floors,
            connector,
            "sub burst",
            s,
            kind,
            1,
            None,
        )
        .await?;
    }

    client.close();
    events_client.close();
    Ok(rows)
}
