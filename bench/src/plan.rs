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
use crate::wire_floor::WireShape;
use crate::{BROADCAST, EVENTS, rss};

/// A ping-pong floor: `rounds` round trips to `fanout` peers.
fn pp(fanout: usize, rounds: usize) -> FloorKind {
    FloorKind::PingPong { fanout, rounds }
}

/// A wire floor of `shape` with `servers` peers.
fn wire(shape: WireShape, servers: usize) -> FloorKind {
    FloorKind::Wire {
        shape,
        servers: servers.max(1),
    }
}

/// The floors of a row besides the raw one.
#[derive(Clone, Copy)]
struct Extra {
    /// The minimal RPC floor (unary rows).
    rpc: Option<FloorKind>,
    /// The wire floor (unary, affinity, multi, stream round-trip rows).
    wire: Option<FloorKind>,
}

/// No floor besides the raw one.
const NO_EXTRA: Extra = Extra {
    rpc: None,
    wire: None,
};

/// Measures the floors of a row that took `stats` at concurrency `conc`
/// (the minimal RPC and wire floors too, where `extra` names them), logs
/// the figures and adds the row.
#[allow(clippy::too_many_arguments)]
async fn add_row(
    rows: &mut Vec<Row>,
    floors: &mut Floors,
    connector: &mut Connector,
    name: &'static str,
    stats: Stats,
    kind: FloorKind,
    conc: usize,
    extra: Extra,
) -> Result<(), String> {
    let floor = floors.get(kind, conc, connector).await?;
    let rpc = match extra.rpc {
        Some(k) => Some(floors.get(k, conc, connector).await?),
        None => None,
    };
    let wire = match extra.wire {
        Some(k) => Some(floors.get(k, conc, connector).await?),
        None => None,
    };
    let note = |what: &str, s: &Option<Arc<Stats>>| {
        s.as_ref()
            .map(|r| format!(", {what} {} ops, {} errors", r.n, r.errors))
            .unwrap_or_default()
    };
    eprintln!(
        "  done: {} ops, {} errors (floor {} ops, {} errors{}{}), rss {}",
        stats.n,
        stats.errors,
        floor.n,
        floor.errors,
        note("rpc floor", &rpc),
        note("wire floor", &wire),
        rss()
    );
    rows.push(Row {
        name,
        stats,
        floor: (*floor).clone(),
        kind,
        rpc: rpc.map(|r| (*r).clone()),
        wire: wire.map(|r| (*r).clone()),
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
    let rpc = Some(FloorKind::Rpc {
        servers: args.servers.max(1),
    });
    let servers = args.servers;
    // Queue and topic calls move the same messages; affinity calls their
    // own; a multi call's wire is its raw floor (the same cached figures).
    let unary_extra = Extra {
        rpc,
        wire: Some(wire(WireShape::Unary, servers)),
    };
    let affinity_extra = Extra {
        rpc,
        wire: Some(wire(WireShape::Affinity, servers)),
    };
    let mut rows: Vec<Row> = Vec::new();

    type Plan = (&'static str, Op, usize, FloorKind, Extra);
    let mut plan: Vec<Plan> = Vec::new();
    if args.runs("unary") {
        plan.push(("unary (queue) seq", Op::Unary, 1, unary_floor, unary_extra));
        let conc_row = (
            "unary (queue) conc64",
            Op::Unary,
            conc,
            unary_floor,
            unary_extra,
        );
        plan.push(conc_row);
        plan.push((
            "topic unary seq",
            Op::TopicUnary,
            1,
            unary_floor,
            unary_extra,
        ));
    }
    if args.runs("affinity") {
        plan.push(("affinity seq", Op::Affinity, 1, unary_floor, affinity_extra));
        let conc_row = (
            "affinity conc64",
            Op::Affinity,
            conc,
            unary_floor,
            affinity_extra,
        );
        plan.push(conc_row);
        let default_opts = "affinity seq (default opts)";
        plan.push((
            default_opts,
            Op::AffinityDefault,
            1,
            unary_floor,
            affinity_extra,
        ));
    }
    if args.runs("multi") {
        let mf = pp(args.expect().max(1), 1);
        let multi_extra = Extra {
            rpc: None,
            wire: Some(mf),
        };
        plan.push(("multi seq", Op::Multi, 1, mf, multi_extra));
        plan.push(("multi conc64", Op::Multi, conc, mf, multi_extra));
    }
    for (name, op, c, kind, extra) in plan {
        eprintln!("running {name} ...");
        let s = run_op(&bench, op, c, d).await;
        add_row(&mut rows, &mut floors, connector, name, s, kind, c, extra).await?;
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
            NO_EXTRA,
        )
        .await?;
        let stream_extra = Extra {
            rpc: None,
            wire: Some(wire(WireShape::Stream, servers)),
        };
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
                stream_extra,
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
            NO_EXTRA,
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
            NO_EXTRA,
        )
        .await?;
    }

    client.close();
    events_client.close();
    Ok(rows)
}
