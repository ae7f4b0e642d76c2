//! `NatsBus::close` on a real nats-server: what was published arrives,
//! every subscription of the bus is gone from the server, later calls fail.

mod common;

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use psrpc::bus::Channel;
use psrpc::{ErrorCode, MessageBus};
use psrpc_nats::NatsBus;
use psrpc_nats::async_nats::{self, ConnectOptions, Request, RequestErrorKind};

use common::NatsServer;

const WITHIN: Duration = Duration::from_secs(20);

fn channel(server: &str, local: &str) -> Channel {
    Channel {
        legacy: server.to_owned(),
        server: server.to_owned(),
        local: local.to_owned(),
    }
}

/// The connections of the server named `name` (from its `/connz`), with
/// their number of subscriptions.
fn subscriptions_of(ns: &NatsServer, name: &str) -> Vec<u64> {
    let connz: serde_json::Value =
        serde_json::from_str(&ns.monitor_get("/connz?subs=1")).expect("connz is JSON");
    connz["connections"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["name"] == name)
        .map(|c| c["subscriptions"].as_u64().unwrap_or(0))
        .collect()
}

/// Whether a request to `subject` finds nobody subscribed.
async fn no_responders(raw: &async_nats::Client, subject: &str) -> bool {
    let request = Request::new()
        .payload(Bytes::new())
        .timeout(Some(Duration::from_millis(500)));
    match raw.send_request(subject.to_owned(), request).await {
        Err(e) => e.kind() == RequestErrorKind::NoResponders,
        Ok(_) => false,
    }
}

/// The bus's subscriptions: fan-out and queue, direct and routed.
fn listened() -> [(Channel, bool); 4] {
    [
        (channel("close.fan", ""), false),
        (channel("close.q", ""), true),
        (channel("close.rfan", "M.REQ"), false),
        (channel("close.rq", "M.REQ"), true),
    ]
}

/// Publish N, close: a raw subscriber got all N in order; afterwards
/// publishing and subscribing fail with `unavailable` naming the close, the
/// subscriptions end, nothing the bus listened on has a subscriber left, and
/// the connection the bus made is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_flushes_then_unsubscribes_everything() {
    const N: usize = 5_000;
    let ns = NatsServer::start(&[]);
    let raw = ConnectOptions::new()
        .name("raw")
        .connect(ns.url())
        .await
        .unwrap();
    let mut got = raw.subscribe("close.out").await.unwrap();
    raw.flush().await.unwrap();
    psrpc_tests::eventually("the raw subscription", WITHIN, || {
        subscriptions_of(&ns, "raw") == [1]
    })
    .await;

    let bus = NatsBus::builder()
        .connect_with_options(&ns.url(), ConnectOptions::new().name("bus"))
        .await
        .unwrap();
    let mut subs = Vec::new();
    for (ch, queue) in listened() {
        let sub = if queue {
            bus.subscribe_queue(&ch, 8).await
        } else {
            bus.subscribe(&ch, 8).await
        };
        subs.push(sub.unwrap());
        assert!(!no_responders(&raw, &ch.server).await, "{}", ch.server);
    }
    // Four subjects and the inbox that confirms subscriptions.
    assert_eq!(subscriptions_of(&ns, "bus"), [5]);

    let out = channel("close.out", "");
    for i in 0..N {
        bus.publish(&out, Bytes::from(i.to_string())).await.unwrap();
    }
    bus.clone().close().await.expect("close");
    for i in 0..N {
        let m = tokio::time::timeout(WITHIN, got.next())
            .await
            .unwrap_or_else(|_| panic!("message {i} of {N} did not arrive"))
            .expect("raw subscription open");
        assert_eq!(m.payload, i.to_string(), "in order");
    }

    assert!(bus.is_closed());
    let e = bus.publish(&out, Bytes::from_static(b"late")).await;
    let e = e.expect_err("publish after close");
    assert_eq!(e.code(), ErrorCode::Unavailable, "{e}");
    assert!(e.message().contains("closed"), "{e}");
    let e = bus.subscribe(&channel("close.late", ""), 1).await;
    let e = e.expect_err("subscribe after close");
    assert_eq!(e.code(), ErrorCode::Unavailable, "{e}");
    assert!(e.message().contains("closed"), "{e}");
    for mut s in subs {
        // What came before the close (the probes above), then the end.
        let end = tokio::time::timeout(WITHIN, async { while s.recv().await.is_some() {} });
        end.await.expect("the subscription ends");
    }
    for (ch, _) in listened() {
        assert!(no_responders(&raw, &ch.server).await, "{}", ch.server);
    }
    psrpc_tests::eventually("the bus's connection closed", WITHIN, || {
        subscriptions_of(&ns, "bus").is_empty()
    })
    .await;
    bus.close().await.expect("closing again does nothing");
}

/// A bus over a client it was given leaves the client connected, with none
/// of the bus's subscriptions (its confirmation inbox included).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_leaves_a_given_client_connected_and_unsubscribed() {
    let ns = NatsServer::start(&[]);
    let client = ConnectOptions::new()
        .name("given")
        .connect(ns.url())
        .await
        .unwrap();
    let bus = NatsBus::builder().from_client(client.clone());
    let mut subs = Vec::new();
    for (ch, queue) in listened() {
        let sub = if queue {
            bus.subscribe_queue(&ch, 8).await
        } else {
            bus.subscribe(&ch, 8).await
        };
        subs.push(sub.unwrap());
    }
    assert_eq!(subscriptions_of(&ns, "given"), [5]);
    bus.close().await.expect("close");
    psrpc_tests::eventually("no subscription left", WITHIN, || {
        subscriptions_of(&ns, "given") == [0]
    })
    .await;
    // The client still works.
    let mut own = client.subscribe("given.own").await.unwrap();
    client
        .publish("given.own", Bytes::from_static(b"x"))
        .await
        .unwrap();
    let m = tokio::time::timeout(WITHIN, own.next()).await.unwrap();
    assert_eq!(m.expect("message").payload, "x");
}

/// A subscription outlives the bus handle it was made with, and dropping it
/// unsubscribes on the server even then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_outlives_its_handle_and_leaves_when_dropped() {
    let ns = NatsServer::start(&[]);
    let raw = async_nats::connect(ns.url()).await.unwrap();
    let bus = NatsBus::connect(&ns.url()).await.unwrap();
    let mut subs = Vec::new();
    for (ch, queue) in listened() {
        let sub = if queue {
            bus.subscribe_queue(&ch, 8).await
        } else {
            bus.subscribe(&ch, 8).await
        };
        subs.push(sub.unwrap());
    }
    drop(bus);
    let routed = |local: &str| {
        let msg = psrpc::protocol::wire::encode_msg(&psrpc::protocol::wire::Request {
            request_id: "r".into(),
            ..Default::default()
        });
        psrpc::protocol::wire::append_channel(&msg, local)
    };
    for ((ch, _), sub) in listened().iter().zip(&mut subs) {
        raw.publish(ch.server.clone(), routed(&ch.local))
            .await
            .unwrap();
        let got = tokio::time::timeout(WITHIN, sub.recv()).await;
        assert!(got.expect("delivered").is_some(), "{}", ch.server);
    }
    drop(subs);
    for (ch, _) in listened() {
        psrpc_tests::eventually_async(&format!("{} unsubscribed", ch.server), WITHIN, async || {
            no_responders(&raw, &ch.server).await
        })
        .await;
    }
}
