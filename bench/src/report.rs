//! The result of a client run: the table on stdout and, with `--json`, the
//! same rows as JSON (serde), with the field names of earlier versions so
//! that their files stay comparable.

use std::fmt::Write as _;

use serde::Serialize;

use crate::args::{Args, Mode};
use crate::conn::Connector;
use crate::floors::{FloorKind, MAX_FLOOR_DURATION};
use crate::payload::request_bytes;
use crate::rss;
use crate::stats::Stats;

/// One line of the result table.
pub(crate) struct Row {
    /// The row's name.
    pub(crate) name: &'static str,
    /// What the row measured.
    pub(crate) stats: Stats,
    /// Its floor on the bare bus.
    pub(crate) floor: Stats,
    /// The shape of that floor.
    pub(crate) kind: FloorKind,
    /// The minimal RPC floor, for the unary rows.
    pub(crate) rpc: Option<Stats>,
    /// The wire floor, for the unary, affinity, multi and stream
    /// round-trip rows.
    pub(crate) wire: Option<Stats>,
}

/// A figure for the table: three significant digits or so.
fn fmt_num(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// The ratio of a row to a floor: row ops/s over floor ops/s; 1.0 = as
/// fast as the floor, 0.8 = 80% of it.
fn ratio(row: &Stats, floor: &Stats) -> f64 {
    let f = floor.ops_per_s();
    if f > 0.0 { row.ops_per_s() / f } else { 0.0 }
}

/// The header line of the run: bus, servers, options, floor.
fn describe(bus: &str, floor: &str, args: &Args) -> String {
    let servers = if args.mode == Mode::Client {
        "servers elsewhere".to_owned()
    } else {
        format!("{} servers", args.servers)
    };
    format!(
        "bus {bus}: {servers}, expect {}, conc {}, payload {} B, {:?} per row, {} (floor: {floor}, same hops and concurrency; wire floor: the same bus doing the publishes, deliveries and queue locks of psrpc's wire with --servers peers; each up to {:?})",
        args.expect(),
        args.conc(),
        args.payload,
        args.duration,
        match (args.middleware, args.skip_claim) {
            (true, false) => "middleware: tracing, metrics, recovery",
            (true, true) => "middleware: tracing, metrics, recovery; claim skip",
            (false, true) => "no middleware; claim skip",
            (false, false) => "no middleware",
        },
        MAX_FLOOR_DURATION
    )
}

/// The cells of the table, header first.
fn cells(rows: &[Row]) -> Vec<Vec<String>> {
    let header = [
        "row",
        "n",
        "ops/s",
        "p50 us",
        "p99 us",
        "errors",
        "hops",
        "floor ops/s",
        "floor p50",
        "ratio",
        "rpc floor ops/s",
        "rpc floor p50",
        "rpc ratio",
        "wire floor ops/s",
        "wire floor p50",
        "wire ratio",
    ];
    let mut lines: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for r in rows {
        let (s, f) = (&r.stats, &r.floor);
        let mut l = vec![
            r.name.to_owned(),
            s.n.to_string(),
            fmt_num(s.ops_per_s()),
            fmt_num(s.pct(50.0)),
            fmt_num(s.pct(99.0)),
            s.errors.to_string(),
            r.kind.hops(),
            fmt_num(f.ops_per_s()),
            fmt_num(f.pct(50.0)),
            format!("{:.3}", ratio(s, f)),
        ];
        for extra in [&r.rpc, &r.wire] {
            match extra {
                Some(x) => l.extend([
                    fmt_num(x.ops_per_s()),
                    fmt_num(x.pct(50.0)),
                    format!("{:.3}", ratio(s, x)),
                ]),
                None => l.extend(["-", "-", "-"].map(String::from)),
            }
        }
        lines.push(l);
    }
    lines
}

/// The cells as aligned text: the first column left, the others right.
fn render(lines: &[Vec<String>]) -> String {
    let ncol = lines.first().map_or(0, Vec::len);
    let mut w = vec![0; ncol];
    for l in lines {
        for (i, c) in l.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    for (li, l) in lines.iter().enumerate() {
        let mut line = String::new();
        for (i, c) in l.iter().enumerate() {
            if i == 0 {
                let _ = write!(line, "{c:<w$}", w = w[0]);
            } else {
                let _ = write!(line, "  {c:>w$}", w = w[i]);
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
        if li == 0 {
            let _ = writeln!(
                out,
                "{}",
                "-".repeat(w.iter().sum::<usize>() + 2 * (ncol - 1))
            );
        }
    }
    out
}

/// Prints the table of a client run.
fn print_table(bus: &str, floor: &str, args: &Args, rows: &[Row]) {
    println!();
    println!("{}", describe(bus, floor, args));
    let (plain, sent) = request_bytes(args);
    println!(
        "bytes on the bus per unary request: {plain} uncompressed, {sent} as sent (--compress {}, {:.1}x smaller)",
        args.compress,
        plain as f64 / sent as f64
    );
    print!("{}", render(&cells(rows)));
    println!(
        "hops: unary/topic/affinity 4 (request, claim, claim response, response) = 2 round trips; \
         multi 1+N (request fanned out to N=--expect servers, N responses); \
         stream open+close 4 (open, claim, claim response, ack; the close is one-way) = 2 round trips; \
         stream msg round-trip 2 (message, echo; their acks travel beside them) = 1 round trip; \
         sub trigger 6 (4 of the call + event + broadcast) = 3 round trips; \
         sub burst: one-way stream of --burst messages, 1 hop per event, latency from burst start."
    );
    println!("ratio = row ops/s / floor ops/s (1.0 = as fast as the bare bus with the same hops).");
    println!(
        "rpc floor: a minimal RPC on the same bus (request envelope to one of --servers queue \
         members, response envelope routed back by request id; 2 hops, no claim); \
         rpc ratio = row ops/s / rpc floor ops/s."
    );
    println!(
        "wire floor: the bare bus doing what psrpc's wire needs for one operation, with --servers \
         peers on their own connections (local: an in-process bus of its own; no envelopes, \
         no runtime): unary/topic 4 publishes \
         (request to a queue subscription of every peer, claim, grant to every peer, response); \
         affinity 3+N (request to every peer, N claims, grant to every peer, response); \
         stream msg round-trip 4 (message to every peer, ack, echo, ack to every peer); \
         multi: its floor above. On Redis every peer reads a queue request and races for its \
         SET NX lock. wire ratio = row ops/s / wire floor ops/s."
    );
    for r in rows {
        let floors = [("", Some(&r.stats)), ("the floor of ", Some(&r.floor))];
        let extra = [
            ("the rpc floor of ", r.rpc.as_ref()),
            ("the wire floor of ", r.wire.as_ref()),
        ];
        for (what, s) in floors.into_iter().chain(extra) {
            if let Some(e) = s.and_then(|s| s.first_error.as_ref()) {
                println!("first error of {what}{:?}: {e}", r.name);
            }
        }
    }
}

/// The JSON file of `--json`.
#[derive(Serialize)]
struct JsonReport<'a> {
    /// `--bus`.
    bus: &'a str,
    /// The rows that ran, in table order.
    rows: Vec<JsonRow<'a>>,
}

/// One row in the JSON file; latencies in microseconds.
#[derive(Serialize)]
struct JsonRow<'a> {
    name: &'a str,
    n: u64,
    ops_per_s: f64,
    p50_us: f64,
    p99_us: f64,
    errors: u64,
    floor_ops_per_s: f64,
    floor_p50_us: f64,
    /// Row ops/s over floor ops/s.
    ratio: f64,
    /// The minimal RPC floor (unary rows only).
    #[serde(skip_serializing_if = "Option::is_none")]
    rpc_floor_ops_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rpc_floor_p50_us: Option<f64>,
    /// Row ops/s over RPC floor ops/s.
    #[serde(skip_serializing_if = "Option::is_none")]
    rpc_ratio: Option<f64>,
    /// The wire floor (unary, affinity, multi, stream round-trip rows).
    #[serde(skip_serializing_if = "Option::is_none")]
    wire_floor_ops_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    wire_floor_p50_us: Option<f64>,
    /// Row ops/s over wire floor ops/s.
    #[serde(skip_serializing_if = "Option::is_none")]
    wire_ratio: Option<f64>,
}

/// `v` rounded to `digits` decimals, as earlier versions wrote them.
fn round(v: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (v * m).round() / m
}

impl<'a> JsonRow<'a> {
    fn new(r: &'a Row) -> Self {
        let (s, f) = (&r.stats, &r.floor);
        JsonRow {
            name: r.name,
            n: s.n,
            ops_per_s: round(s.ops_per_s(), 3),
            p50_us: round(s.pct(50.0), 3),
            p99_us: round(s.pct(99.0), 3),
            errors: s.errors,
            floor_ops_per_s: round(f.ops_per_s(), 3),
            floor_p50_us: round(f.pct(50.0), 3),
            ratio: round(ratio(s, f), 4),
            rpc_floor_ops_per_s: r.rpc.as_ref().map(|x| round(x.ops_per_s(), 3)),
            rpc_floor_p50_us: r.rpc.as_ref().map(|x| round(x.pct(50.0), 3)),
            rpc_ratio: r.rpc.as_ref().map(|x| round(ratio(s, x), 4)),
            wire_floor_ops_per_s: r.wire.as_ref().map(|x| round(x.ops_per_s(), 3)),
            wire_floor_p50_us: r.wire.as_ref().map(|x| round(x.pct(50.0), 3)),
            wire_ratio: r.wire.as_ref().map(|x| round(ratio(s, x), 4)),
        }
    }
}

/// The JSON of the rows of a run on `bus`.
fn to_json(bus: &str, rows: &[Row]) -> String {
    let report = JsonReport {
        bus,
        rows: rows.iter().map(JsonRow::new).collect(),
    };
    let mut s = serde_json::to_string_pretty(&report).expect("plain structs serialize");
    s.push('\n');
    s
}

/// Prints the table (and writes the JSON) of a client run.
pub(crate) fn report(args: &Args, connector: &Connector, rows: &[Row]) -> Result<(), String> {
    print_table(&args.bus, &connector.floor_desc(), args, rows);
    println!("rss at end: {}", rss());
    let dropped = connector.dropped();
    if dropped > 0 {
        println!(
            "{} bus dropped {dropped} deliveries (slow consumers)",
            connector.spec.kind()
        );
    }
    if let Some(path) = &args.json {
        std::fs::write(path, to_json(&args.bus, rows))
            .map_err(|e| format!("writing {path}: {e}"))?;
        println!("json written to {path} (skipped rows left out)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn stats(ops: u64) -> Stats {
        let mut s = Stats::default();
        for _ in 0..ops {
            s.record(Ok(Duration::from_micros(10)));
        }
        s.elapsed = Duration::from_secs(1);
        s
    }

    /// The JSON keeps the field names of earlier versions (files written
    /// before stay comparable); the RPC and wire floor fields appear only
    /// on the rows that have those floors.
    #[test]
    fn json_field_names() {
        let kind = FloorKind::PingPong {
            fanout: 1,
            rounds: 2,
        };
        let rows = [
            Row {
                name: "unary (queue) seq",
                stats: stats(10),
                floor: stats(40),
                kind,
                rpc: Some(stats(20)),
                wire: Some(stats(16)),
            },
            Row {
                name: "multi seq",
                stats: stats(10),
                floor: stats(40),
                kind,
                rpc: None,
                wire: None,
            },
        ];
        let v: serde_json::Value = serde_json::from_str(&to_json("local", &rows)).unwrap();
        assert_eq!(v["bus"], "local");
        let keys = |i: usize| -> Vec<String> {
            let mut k: Vec<String> = v["rows"][i].as_object().unwrap().keys().cloned().collect();
            k.sort();
            k
        };
        let old = [
            "errors",
            "floor_ops_per_s",
            "floor_p50_us",
            "n",
            "name",
            "ops_per_s",
            "p50_us",
            "p99_us",
            "ratio",
        ];
        assert_eq!(keys(1), old);
        let mut new = old.to_vec();
        new.extend(["rpc_floor_ops_per_s", "rpc_floor_p50_us", "rpc_ratio"]);
        new.extend(["wire_floor_ops_per_s", "wire_floor_p50_us", "wire_ratio"]);
        new.sort();
        assert_eq!(keys(0), new);
        assert_eq!(v["rows"][0]["ratio"], 0.25);
        assert_eq!(v["rows"][0]["rpc_ratio"], 0.5);
        assert_eq!(v["rows"][0]["wire_ratio"], 0.625);
        let p50 = v["rows"][0]["p50_us"].as_f64().unwrap();
        assert!((p50 - 10.0).abs() < 0.05, "p50 {p50}");
        let table = render(&cells(&rows));
        assert!(table.lines().nth(2).unwrap().ends_with("0.625"), "{table}");
        let cols: Vec<&str> = table.lines().nth(2).unwrap().split_whitespace().collect();
        assert_eq!(cols[cols.len() - 4], "0.500", "{table}");
        assert!(table.lines().nth(3).unwrap().ends_with('-'), "{table}");
    }
}
