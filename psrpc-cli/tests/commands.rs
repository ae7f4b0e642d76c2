//! `call`, `subscribe`, `publish` and `stream` end to end: the built binary
//! against bench servers on real Redis and NATS; every error class and its
//! exit code.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

/// Every call kind, a stream, subscriptions and a publish on one bus.
async fn session(broker: Broker) {
    let url = broker.url();
    let (_b0, _e0) = bench_server(broker.connect().await, "srv-a", 1.0).await;
    let (_b1, _e1) = bench_server(broker.connect().await, "srv-b", 0.5).await;
    let proto = bench_proto();
    let proto = proto.to_str().unwrap();

    // Queue routing; the payload is bytes (base64 in JSON), seq an int64 (a string).
    let r = psrpc(
        &url,
        &[
            "--proto",
            proto,
            "call",
            "Bench.Unary",
            r#"{"seq":1,"text":"hi","payload":"3q2+7w=="}"#,
            "-v",
        ],
        "",
    )
    .await;
    assert_eq!(r.code, 0, "{r:?}");
    let v = r.json();
    assert_eq!(v["seq"], json!("1"));
    assert_eq!(v["payload"], json!("3q2+7w=="));
    let server = v["serverId"].as_str().unwrap().to_owned();
    assert!(server == "srv-a" || server == "srv-b", "{r:?}");
    // -v names the request and the server that answered.
    assert!(
        r.stderr.contains("request REQ_") && r.stderr.contains(&format!("answered by {server}")),
        "{r:?}"
    );

    // The request from stdin.
    let r = psrpc(
        &url,
        &["--proto", proto, "call", "Bench.Unary"],
        r#"{"seq":2}"#,
    )
    .await;
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json()["seq"], json!("2"));

    // Affinity: the server with the higher affinity wins...
    let r = psrpc(
        &url,
        &["--proto", proto, "call", "Bench.Affinity", r#"{"seq":3}"#],
        "",
    )
    .await;
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json(), json!({"seq": "3", "serverId": "srv-a"}));
    // ...unless the minimum affinity excludes everyone.
    let r = psrpc(
        &url,
        &[
            "--proto",
            proto,
            "call",
            "Bench.Affinity",
            "--min-affinity",
            "2",
            "{}",
        ],
        "",
    )
    .await;
    assert_eq!(r.code, 6, "{r:?}");
    assert!(r.stderr.contains("unavailable"), "{r:?}");

    // Multi: one line per answering server, with its id.
    let r = psrpc(
        &url,
        &[
            "--proto",
            proto,
            "call",
            "Bench.Multi",
            "--timeout",
            "1s",
            r#"{"seq":4}"#,
        ],
        "",
    )
    .await;
    assert_eq!(r.code, 0, "{r:?}");
    let mut lines = r.json_lines();
    lines.sort_by_key(|v| v["serverId"].as_str().unwrap().to_owned());
    assert_eq!(
        lines,
        vec![
            json!({"serverId": "srv-a", "response": {"seq": "4", "serverId": "srv-a"}}),
            json!({"serverId": "srv-b", "response": {"seq": "4", "serverId": "srv-b"}}),
        ]
    );
    // Multi where every server fails: each error on its line, exit by class.
    let r = psrpc(
        &url,
        &[
            "--proto",
            proto,
            "call",
            "Bench.Multi",
            "--timeout",
            "1s",
            r#"{"text":"fail"}"#,
        ],
        "",
    )
    .await;
    assert_eq!(r.code, 7, "{r:?}");
    let lines = r.json_lines();
    assert_eq!(lines.len(), 2, "{r:?}");
    for l in &lines {
        assert_eq!(l["error"]["code"], json!("not_found"), "{r:?}");
        assert_eq!(l["error"]["message"], json!("no such thing"), "{r:?}");
    }

    // Topics: positional, and named with the default parameter name.
    for t in ["t1", "topic=t1"] {
        let r = psrpc(
            &url,
            &[
                "--proto",
                proto,
                "call",
                "Bench.TopicUnary",
                "--topic",
                t,
                r#"{"seq":5}"#,
            ],
            "",
        )
        .await;
        assert_eq!(r.code, 0, "{r:?}");
        assert_eq!(r.json()["seq"], json!("5"));
    }
    // Metadata and a client id are accepted.
    let r = psrpc(
        &url,
        &[
            "--proto",
            proto,
            "call",
            "Bench.Unary",
            "-m",
            "k=v",
            "--client-id",
            "CLI_cli_test",
            "{}",
        ],
        "",
    )
    .await;
    assert_eq!(r.code, 0, "{r:?}");

    // A stream: lines in, echoes out, EOF closes cleanly.
    let r = psrpc(
        &url,
        &["--proto", proto, "stream", "Bench.Echo"],
        "{\"seq\":1}\n{\"seq\":2,\"payload\":\"AQI=\"}\n",
    )
    .await;
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        r.json_lines(),
        vec![json!({"seq": "1"}), json!({"seq": "2", "payload": "AQI="})]
    );
    // A close from the server is printed with its code.
    let r = psrpc(
        &url,
        &["--proto", proto, "stream", "Bench.Echo"],
        "{\"seq\":1}\n{\"seq\":99}\n",
    )
    .await;
    assert_eq!(r.code, 7, "{r:?}");
    assert_eq!(r.json_lines(), vec![json!({"seq": "1"})]);
    assert!(
        r.stderr.contains("aborted") && r.stderr.contains("seq 99 refused"),
        "{r:?}"
    );

    // Subscriptions: a listener of the queue subscription and a topic
    // fan-out subscriber; the servers publish through Trigger, then the
    // tool publishes by hand.
    let mut sub_topic = psrpc_cmd(
        &url,
        &[
            "--proto",
            proto,
            "subscribe",
            "Bench.Broadcast",
            "--topic",
            "t1",
            "--count",
            "2",
            "--for",
            "20s",
        ],
    );
    let mut sub_queue = psrpc_cmd(
        &url,
        &[
            "--proto",
            proto,
            "subscribe",
            "BenchEvents.Events",
            "--count",
            "1",
            "--for",
            "20s",
            "-v",
        ],
    );
    use std::process::Stdio;
    let sub_topic = sub_topic
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let sub_queue = sub_queue
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Publish until both have what they wait for (a subscription may not
    // be in effect yet when the first update goes out).
    let topic_handle = tokio::task::spawn_blocking(move || sub_topic.wait_with_output().unwrap());
    let queue_handle = tokio::task::spawn_blocking(move || sub_queue.wait_with_output().unwrap());
    let mut published = 0;
    while !(topic_handle.is_finished() && queue_handle.is_finished()) {
        assert!(published < 100, "subscribers never got their updates");
        let r = psrpc(
            &url,
            &[
                "--proto",
                proto,
                "call",
                "Bench.Trigger",
                r#"{"seq":9,"count":1,"text":"t1"}"#,
            ],
            "",
        )
        .await;
        assert_eq!(r.code, 0, "{r:?}");
        let r = psrpc(
            &url,
            &[
                "--proto",
                proto,
                "publish",
                "Bench.Broadcast",
                "--topic",
                "t1",
                r#"{"seq":77,"text":"by hand"}"#,
            ],
            "",
        )
        .await;
        assert_eq!(r.code, 0, "{r:?}");
        published += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let t = topic_handle.await.unwrap();
    let q = queue_handle.await.unwrap();
    assert!(t.status.success() && q.status.success(), "{t:?} {q:?}");
    let tl: Vec<serde_json::Value> = String::from_utf8_lossy(&t.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(tl.len(), 2);
    for v in &tl {
        assert!(
            v == &json!({"seq": "77", "text": "by hand"})
                || (v["seq"] == json!("1") && v["text"] == json!("t1")),
            "{v}"
        );
    }
    let ql: Vec<serde_json::Value> = String::from_utf8_lossy(&q.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(ql.len(), 1);
    assert_eq!(ql[0]["seq"], json!("1"));
    assert_eq!(ql[0]["text"], json!("t1"));

    // Error classes of calls.
    let r = psrpc(
        &url,
        &[
            "--proto",
            proto,
            "call",
            "Bench.Unary",
            r#"{"text":"fail","seq":7}"#,
        ],
        "",
    )
    .await;
    assert_eq!(r.code, 7, "{r:?}");
    assert!(
        r.stderr.contains("error: not_found: no such thing"),
        "{r:?}"
    );
    // The detail, decoded with the proto.
    assert!(
        r.stderr
            .contains(r#""@type":"type.googleapis.com/psrpcbench.Event""#),
        "{r:?}"
    );
    assert!(r.stderr.contains(r#""text":"why""#), "{r:?}");
    let r = psrpc(
        &url,
        &[
            "--proto",
            proto,
            "call",
            "Bench.Unary",
            r#"{"text":"cancel"}"#,
        ],
        "",
    )
    .await;
    assert_eq!(r.code, 8, "{r:?}");
    assert!(r.stderr.contains("canceled: gave up"), "{r:?}");
    let r = psrpc(
        &url,
        &[
            "--proto",
            proto,
            "call",
            "Bench.Unary",
            "--timeout",
            "500ms",
            r#"{"text":"slow"}"#,
        ],
        "",
    )
    .await;
    assert_eq!(r.code, 5, "{r:?}");
    assert!(r.stderr.contains("deadline_exceeded"), "{r:?}");
    // A topic nobody serves.
    let r = psrpc(
        &url,
        &[
            "--proto",
            proto,
            "call",
            "Bench.TopicUnary",
            "--topic",
            "nobody",
            "--timeout",
            "1s",
            "{}",
        ],
        "",
    )
    .await;
    assert_eq!(r.code, 6, "{r:?}");
    assert!(r.stderr.contains("unavailable"), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_on_redis() {
    session(Broker::redis()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_on_nats() {
    session(Broker::nats()).await;
}

/// Bad input: a clear message and exit 2 (3 for a bad proto, 4 for an
/// unreachable bus), never a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input() {
    let proto = bench_proto();
    let proto = proto.to_str().unwrap();
    let nowhere = format!("redis://127.0.0.1:{}", psrpc_tests::servers::free_port());
    let cases: &[(&[&str], i32, &str)] = &[
        (
            &["--proto", proto, "call", "Nope.Unary", "{}"],
            2,
            "unknown service \"Nope\" (known: Bench, BenchEvents)",
        ),
        (
            &["--proto", proto, "call", "Bench.Nope", "{}"],
            2,
            "unknown method \"Nope\" of service Bench",
        ),
        (
            &["--proto", proto, "call", "Bench.Unary", "{\"seq\":"],
            2,
            "invalid JSON",
        ),
        (
            &["--proto", proto, "call", "Bench.Unary", "{\"nope\":1}"],
            2,
            "JSON does not fit message psrpcbench.Req",
        ),
        (
            &["--proto", proto, "call", "Bench.Unary", "{\"seq\":\"x\"}"],
            2,
            "JSON does not fit message psrpcbench.Req",
        ),
        (
            &["--proto", proto, "call", "Bench.Echo", "{}"],
            2,
            "is a stream: use `psrpc stream`",
        ),
        (
            &["--proto", proto, "call", "Bench.Broadcast", "{}"],
            2,
            "is a subscription",
        ),
        (
            &["--proto", proto, "call", "Bench.TopicUnary", "{}"],
            2,
            "takes 1 topic value(s) (topic), got 0",
        ),
        (
            &[
                "--proto",
                proto,
                "call",
                "Bench.Unary",
                "--topic",
                "x",
                "{}",
            ],
            2,
            "takes no topic",
        ),
        (
            &[
                "--proto",
                proto,
                "call",
                "Bench.Unary",
                "-m",
                "novalue",
                "{}",
            ],
            2,
            "expected KEY=VALUE",
        ),
        (
            &[
                "--proto",
                "/nonexistent/x.proto",
                "call",
                "Bench.Unary",
                "{}",
            ],
            3,
            "/nonexistent/x.proto: no such file",
        ),
        (
            &["call", "Bench.Unary", "--timeout", "soon", "{}"],
            2,
            "not a duration",
        ),
    ];
    for (args, code, msg) in cases {
        let r = psrpc(&nowhere, args, "").await;
        assert_eq!(r.code, *code, "{args:?}: {r:?}");
        assert!(
            r.stderr.contains(msg),
            "{args:?}: expected {msg:?} in {r:?}"
        );
        assert!(!r.stderr.contains("panicked"), "{r:?}");
    }

    // A proto that fails to parse: file and line.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.proto");
    std::fs::write(
        &bad,
        "syntax = \"proto3\";\n\nmessage A {\n  int32 x = ;\n}\n",
    )
    .unwrap();
    let r = psrpc(
        &nowhere,
        &["--proto", bad.to_str().unwrap(), "call", "A.B", "{}"],
        "",
    )
    .await;
    assert_eq!(r.code, 3, "{r:?}");
    assert!(r.stderr.contains("bad.proto:4:"), "{r:?}");

    // No bus at all.
    let r = psrpc("", &["--proto", proto, "call", "Bench.Unary", "{}"], "").await;
    assert_eq!(r.code, 2, "{r:?}");
    assert!(
        r.stderr.contains("give --bus URL or set PSRPC_BUS"),
        "{r:?}"
    );
    let r = psrpc(
        "http://x",
        &["--proto", proto, "call", "Bench.Unary", "{}"],
        "",
    )
    .await;
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("must start with redis://"), "{r:?}");

    // Unreachable buses fail within the connect timeout (plus process
    // start), and a password in the URL is not shown.
    let nats_nowhere = format!("nats://127.0.0.1:{}", psrpc_tests::servers::free_port());
    let secret = format!(
        "redis://:s3cret@127.0.0.1:{}",
        psrpc_tests::servers::free_port()
    );
    for url in [&nowhere, &nats_nowhere, &secret] {
        let r = psrpc(
            url,
            &[
                "--proto",
                proto,
                "--connect-timeout",
                "2s",
                "call",
                "Bench.Unary",
                "{}",
            ],
            "",
        )
        .await;
        assert_eq!(r.code, 4, "{r:?}");
        assert!(r.stderr.contains("cannot connect to"), "{r:?}");
        assert!(r.took < Duration::from_secs(15), "{r:?}");
        assert!(!r.stderr.contains("s3cret"), "{r:?}");
        if url == &secret {
            assert!(
                r.stderr.contains("cannot connect to redis://:***@"),
                "{r:?}"
            );
        }
    }
}

/// `--help` of every subcommand carries an example and the exit codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_has_examples() {
    for sub in [
        "call",
        "subscribe",
        "publish",
        "stream",
        "watch",
        "list",
        "describe",
    ] {
        let r = psrpc("", &[sub, "--help"], "").await;
        assert_eq!(r.code, 0, "{r:?}");
        assert!(r.stdout.contains("Example"), "{sub}: {r:?}");
    }
    let r = psrpc("", &["--help"], "").await;
    assert!(
        r.stdout.contains("Exit codes:")
            && r.stdout.contains("7  the server answered with an error"),
        "{r:?}"
    );
}
