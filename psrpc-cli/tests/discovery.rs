//! Discovery end to end: `psrpc list`, `psrpc describe` and calls without a
//! proto file against servers of two services, and a Go-style server (raw
//! publishes, no discovery) found by `list --passive`.

mod common;

use std::time::Duration;

use common::*;
use psrpc::{RpcServer, ServerOptions};
use serde_json::json;

async fn discovery(broker: Broker) {
    let url = broker.url();
    // Server A serves Bench (its BenchEvents server registers nothing),
    // server B only BenchEvents' publisher plus a Bench-less service.
    let (bench_a, _events_a) = bench_server(broker.connect().await, "srv-a", 1.0).await;
    let other = RpcServer::new(broker.connect().await, "Other", server_options("srv-b"))
        .await
        .unwrap();
    other
        .route(&UNARY)
        .topic("x")
        .handle(|_ctx: psrpc::Context, r: Req| async move {
            Ok(Res {
                seq: r.seq,
                ..Default::default()
            })
        })
        .await
        .unwrap();
    // A server that opted out is not listed.
    let quiet = ServerOptions::default().server_id("srv-quiet").discovery(
        psrpc::discovery::DiscoveryOptions {
            enabled: false,
            ..Default::default()
        },
    );
    let quiet = RpcServer::new(broker.connect().await, "Quiet", quiet)
        .await
        .unwrap();
    quiet
        .route(&UNARY)
        .handle(|_ctx: psrpc::Context, r: Req| async move {
            Ok(Res {
                seq: r.seq,
                ..Default::default()
            })
        })
        .await
        .unwrap();

    // Servers start answering discovery in the background: poll.
    let mut list = Vec::new();
    for _ in 0..40 {
        let r = psrpc(&url, &["list", "--wait", "500ms"], "").await;
        assert_eq!(r.code, 0, "{r:?}");
        list = r.json_lines();
        if list.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(list.len(), 2, "{list:#?}");
    assert_eq!(list[0]["service"], "Bench");
    let a = &list[0]["servers"][0];
    assert_eq!(a["serverId"], "srv-a");
    assert!(a["runtime"].as_str().unwrap().starts_with("psrpc-rs "));
    let methods: Vec<_> = a["methods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        methods,
        [
            "Affinity",
            "Echo",
            "Multi",
            "TopicUnary",
            "Trigger",
            "Unary"
        ]
    );
    let by = |n: &str| {
        a["methods"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == n)
            .unwrap()
            .clone()
    };
    assert_eq!(
        by("Affinity"),
        json!({"name": "Affinity", "routing": "AFFINITY"})
    );
    assert_eq!(by("Multi"), json!({"name": "Multi", "routing": "MULTI"}));
    assert_eq!(
        by("Echo"),
        json!({"name": "Echo", "routing": "QUEUE", "stream": true})
    );
    assert_eq!(
        by("TopicUnary"),
        json!({"name": "TopicUnary", "routing": "QUEUE", "topics": [["t1"]]})
    );
    assert_eq!(list[1]["service"], "Other");
    assert_eq!(list[1]["servers"][0]["serverId"], "srv-b");
    assert_eq!(
        list[1]["servers"][0]["methods"],
        json!([{"name": "Unary", "routing": "QUEUE", "topics": [["x"]]}])
    );

    // Calls without --proto: the schema comes from the servers.
    let r = psrpc(&url, &["call", "Bench.Unary", r#"{"seq":5}"#], "").await;
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(r.json(), json!({"seq": "5", "serverId": "srv-a"}));
    // Calls are counted.
    let r = psrpc(&url, &["list"], "").await;
    assert!(
        r.json_lines()[0]["servers"][0]["callsServed"]
            .as_u64()
            .unwrap()
            >= 1,
        "{r:?}"
    );
    // Unknown services name the known ones.
    let r = psrpc(&url, &["call", "Nope.X", "{}"], "").await;
    assert_eq!(r.code, 2, "{r:?}");
    assert!(r.stderr.contains("unknown service \"Nope\""), "{r:?}");

    // describe: methods with their options, messages as proto text.
    let r = psrpc(&url, &["describe", "Bench"], "").await;
    assert_eq!(r.code, 0, "{r:?}");
    for l in [
        "service Bench {",
        "  rpc Unary(psrpcbench.Req) returns (psrpcbench.Res);",
        "  rpc Affinity(psrpcbench.Req) returns (psrpcbench.Res) {\n    option (psrpc.options).type = AFFINITY;\n  }",
        "    option (psrpc.options).subscription = true;",
        "message Req {\n  int64 seq = 1;\n  string text = 2;\n  bytes payload = 3;\n  int32 count = 4;\n}",
    ] {
        assert!(r.stdout.contains(l), "{l:?} not in:\n{}", r.stdout);
    }
    // The same text from the proto file.
    let proto = bench_proto();
    let from_proto = psrpc(
        &url,
        &["--proto", proto.to_str().unwrap(), "describe", "Bench"],
        "",
    )
    .await;
    assert_eq!(from_proto.stdout, r.stdout);

    // After shutdown a server is no longer listed.
    bench_a.shutdown().await;
    let mut services = Vec::new();
    for _ in 0..40 {
        let r = psrpc(&url, &["list", "--wait", "500ms"], "").await;
        services = r
            .json_lines()
            .iter()
            .map(|l| l["service"].as_str().unwrap().to_owned())
            .collect();
        if services == ["Other"] {
            break;
        }
    }
    assert_eq!(services, ["Other"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_on_redis() {
    discovery(Broker::redis()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_on_nats() {
    discovery(Broker::nats()).await;
}

/// A Go-style server: it answers by raw publishes and not discovery;
/// `list --passive` shows it from its traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_finds_go_style_peers() {
    let broker = Broker::redis();
    let url = broker.url();
    let run = tokio::spawn({
        let url = url.clone();
        async move { psrpc(&url, &["list", "--passive", "3s"], "").await }
    });
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    while !run.is_finished() {
        let res = psrpc::protocol::wire::Response {
            request_id: "REQ_go".into(),
            server_id: "SRV_go".into(),
            ..Default::default()
        };
        let req = psrpc::protocol::wire::Request {
            request_id: "REQ_go".into(),
            client_id: "CLI_go".into(),
            ..Default::default()
        };
        let _: i64 = redis::cmd("PUBLISH")
            .arg("Legacy|Ping|REQ")
            .arg(psrpc::protocol::wire::encode_msg(&req).to_vec())
            .query_async(&mut conn)
            .await
            .unwrap();
        let _: i64 = redis::cmd("PUBLISH")
            .arg("Legacy|CLI_go|RES")
            .arg(psrpc::protocol::wire::encode_msg(&res).to_vec())
            .query_async(&mut conn)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = run.await.unwrap();
    assert_eq!(r.code, 0, "{r:?}");
    assert_eq!(
        r.json_lines(),
        vec![
            json!({"service": "Legacy", "servers": [{"serverId": "SRV_go", "answersDiscovery": false}], "clients": ["CLI_go"]})
        ]
    );
}
