//! `psrpc watch` decodes every message kind of the Go wire: the captures
//! of a Go psrpc run (tests/golden) replayed byte for byte onto a real
//! Redis and a real NATS, and live traffic of Rust peers.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use common::*;
use futures::StreamExt as _;
use serde_json::{Value, json};

/// The (channel, bytes) of every message of a capture file.
fn capture(name: &str) -> Vec<(String, Vec<u8>)> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    let text = std::fs::read_to_string(path).unwrap();
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    for line in text.lines() {
        if line.starts_with('[') {
            let ch = line.split('"').nth(1).unwrap().to_owned();
            out.push((ch, Vec::new()));
        } else if line.len() > 12
            && line.starts_with("  ")
            && line[2..10].chars().all(|c| c.is_ascii_hexdigit())
        {
            let hex = &line[12..line.len().min(12 + 49)];
            let bytes = &mut out.last_mut().unwrap().1;
            for tok in hex.split_whitespace() {
                bytes.push(u8::from_str_radix(tok, 16).unwrap());
            }
        }
    }
    out
}

/// Starts `psrpc watch` and returns once it is subscribed.
fn start_watch(url: &str, extra: &[&str]) -> std::process::Child {
    let proto = bench_proto();
    let mut args = vec!["--proto", proto.to_str().unwrap(), "-v", "watch"];
    if !extra.contains(&"--for") {
        args.extend_from_slice(&["--for", "30s"]);
    }
    args.extend_from_slice(extra);
    let mut child = psrpc_cmd(url, &args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    assert!(line.starts_with("watching"), "{line:?}");
    // Keep stderr drained.
    std::thread::spawn(move || {
        let mut s = String::new();
        while err.read_line(&mut s).unwrap_or(0) > 0 {
            eprint!("watch: {s}");
            s.clear();
        }
    });
    child
}

fn read_lines(child: std::process::Child) -> Vec<Value> {
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Checks the decoded capture: every kind, the ids, the payloads.
fn check_capture(lines: &[Value], redis: bool) {
    assert_eq!(lines.len(), 32, "{lines:#?}");
    let strip = |v: &Value| {
        let mut v = v.clone();
        let o = v.as_object_mut().unwrap();
        o.remove("time");
        o.remove("channel");
        v
    };
    let kinds: Vec<&str> = lines.iter().map(|l| l["kind"].as_str().unwrap()).collect();
    for k in [
        "request",
        "claim",
        "claim response",
        "response",
        "stream open",
        "stream message",
        "stream ack",
        "stream close",
        "subscription update",
    ] {
        assert!(kinds.contains(&k), "no {k} in {kinds:?}");
    }
    // The unary call of step 1, message by message.
    let rid = lines[0]["requestId"].as_str().unwrap();
    assert!(rid.starts_with("REQ_"));
    let srv = lines[1]["serverId"].as_str().unwrap();
    assert!(srv.starts_with("SRV_wire"));
    assert_eq!(
        strip(&lines[0]),
        json!({"kind": "request", "service": "Bench", "method": "Unary", "requestId": rid,
               "clientId": "CLI_wire", "payload": {"seq": "1", "text": "hello", "payload": "3q2+7w=="}})
    );
    assert_eq!(
        strip(&lines[1]),
        json!({"kind": "claim", "service": "Bench", "method": "Unary", "requestId": rid,
               "serverId": srv, "clientId": "CLI_wire", "affinity": 1.0})
    );
    assert_eq!(
        strip(&lines[2]),
        json!({"kind": "claim response", "service": "Bench", "method": "Unary",
               "requestId": rid, "serverId": srv})
    );
    assert_eq!(
        strip(&lines[3]),
        json!({"kind": "response", "service": "Bench", "method": "Unary", "requestId": rid,
               "serverId": srv, "clientId": "CLI_wire",
               "payload": {"seq": "1", "serverId": srv, "payload": "3q2+7w=="}})
    );
    // The topic call names its topic; the multi request is marked.
    assert!(
        lines
            .iter()
            .any(|l| l["method"] == "TopicUnary" && l["topic"] == json!(["t1"]))
    );
    assert!(
        lines
            .iter()
            .any(|l| l["method"] == "Multi" && l["multi"] == json!(true))
    );
    // The client's close: code and message.
    let close = lines.iter().find(|l| l["kind"] == "stream close").unwrap();
    assert_eq!(close["code"], "canceled");
    assert_eq!(close["error"], "stream closed");
    assert_eq!(close["method"], "Echo");
    // Stream messages decoded both ways.
    assert!(
        lines
            .iter()
            .filter(|l| l["kind"] == "stream message" && l["payload"].is_object())
            .count()
            >= 2
    );
    // Both subscription updates with their type and payload.
    let ups: Vec<&Value> = lines
        .iter()
        .filter(|l| l["kind"] == "subscription update")
        .collect();
    assert_eq!(ups.len(), 2);
    assert!(
        ups.iter()
            .all(|u| u["type"] == "psrpcbench.Event" && u["payload"]["serverId"].is_string())
    );
    assert!(
        ups.iter()
            .any(|u| u["service"] == "BenchEvents" && u["method"] == "Events")
    );
    assert!(
        ups.iter()
            .any(|u| u["method"] == "Broadcast" && u["topic"] == json!(["t1"]))
    );
    let _ = redis;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_capture_replayed_on_redis() {
    let broker = Broker::redis();
    let url = broker.url();
    let child = start_watch(&url, &["--count", "32"]);
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    for (ch, bytes) in capture("redis-all.txt") {
        let _: i64 = redis::cmd("PUBLISH")
            .arg(&ch)
            .arg(bytes)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let lines = tokio::task::spawn_blocking(move || read_lines(child))
        .await
        .unwrap();
    check_capture(&lines, true);
}

/// The capture again, every payload gzipped as a Go v0.7.6+ publisher with
/// compression on sends it: `watch` inflates it as any reader does, and
/// shows the same lines (marked as compressed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_capture_replayed_on_redis() {
    use prost::Message as _;
    use std::io::Write as _;
    let broker = Broker::redis();
    let url = broker.url();
    let child = start_watch(&url, &["--count", "32"]);
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut gzipped = 0;
    for (ch, bytes) in capture("redis-all.txt") {
        let msg = psrpc::protocol::wire::Msg::decode(bytes.as_slice()).unwrap();
        let payload = if msg.value.is_empty() {
            bytes
        } else {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
            gz.write_all(&msg.value).unwrap();
            gzipped += 1;
            psrpc::protocol::wire::encode_msg_gzip(&msg.type_url, &gz.finish().unwrap()).to_vec()
        };
        let _: i64 = redis::cmd("PUBLISH")
            .arg(&ch)
            .arg(payload)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let mut lines = tokio::task::spawn_blocking(move || read_lines(child))
        .await
        .unwrap();
    let marked = lines
        .iter_mut()
        .filter_map(|l| l.as_object_mut().unwrap().remove("compression"))
        .inspect(|c| assert_eq!(c, "gzip"))
        .count();
    assert_eq!(marked, gzipped);
    check_capture(&lines, true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_capture_replayed_on_nats() {
    let broker = Broker::nats();
    let url = broker.url();
    let child = start_watch(&url, &["--count", "32"]);
    let client = async_nats::connect(url.as_str()).await.unwrap();
    for (ch, bytes) in capture("nats-all.txt") {
        client.publish(ch, bytes.into()).await.unwrap();
    }
    client.flush().await.unwrap();
    let lines = tokio::task::spawn_blocking(move || read_lines(child))
        .await
        .unwrap();
    check_capture(&lines, false);
}

/// Filters and the summary on live traffic; bytes that are not psrpc are
/// counted, not fatal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_and_summary_on_live_traffic() {
    let broker = Broker::redis();
    let url = broker.url();
    let (_b, _e) = bench_server(broker.connect().await, "srv-a", 1.0).await;
    let proto = bench_proto();
    let proto = proto.to_str().unwrap();
    let errors = start_watch(&url, &["--errors-only", "--count", "1"]);
    let multi = start_watch(&url, &["--method", "Multi", "--count", "2"]);
    let summary = start_watch(&url, &["--summary", "--for", "3s"]);
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: i64 = redis::cmd("PUBLISH")
        .arg("Bench|Unary|REQ")
        .arg(b"\xff\xffnot psrpc".to_vec())
        .query_async(&mut conn)
        .await
        .unwrap();
    for body in [r#"{"seq":1}"#, r#"{"text":"fail"}"#] {
        let r = psrpc(&url, &["--proto", proto, "call", "Bench.Unary", body], "").await;
        assert!(r.code == 0 || r.code == 7, "{r:?}");
    }
    let r = psrpc(
        &url,
        &[
            "--proto",
            proto,
            "call",
            "Bench.Multi",
            "--timeout",
            "300ms",
            "{}",
        ],
        "",
    )
    .await;
    assert_eq!(r.code, 0, "{r:?}");

    let e = tokio::task::spawn_blocking(move || read_lines(errors))
        .await
        .unwrap();
    assert_eq!(e.len(), 1);
    assert_eq!(e[0]["kind"], "response");
    assert_eq!(e[0]["code"], "not_found");
    assert_eq!(e[0]["method"], "Unary");
    let m = tokio::task::spawn_blocking(move || read_lines(multi))
        .await
        .unwrap();
    assert_eq!(
        m.iter()
            .map(|l| l["kind"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["request", "response"]
    );
    let out = tokio::task::spawn_blocking(move || summary.wait_with_output().unwrap())
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let last = text.rsplit("METHOD").next().unwrap();
    let unary = last
        .lines()
        .find(|l| l.starts_with("Bench.Unary "))
        .unwrap_or_else(|| panic!("{text}"));
    let cols: Vec<&str> = unary.split_whitespace().collect();
    assert_eq!(&cols[1..4], &["2", "2", "50.0%"], "{unary}");
    assert!(last.contains("not psrpc (undecoded) 1"), "{text}");
    let _ = futures::stream::empty::<()>().next().await;
}
