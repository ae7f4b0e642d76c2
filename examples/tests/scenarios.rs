//! Every scenario's outcome on the local bus, on Redis and on NATS (real
//! servers started per test), the services as separate processes on Redis
//! and on NATS, the gateway's HTTP behaviour, and the page in headless
//! Chromium.

mod common;

use std::time::Duration;

use psrpc::ErrorCode;
use psrpc::bus::DynBus;
use psrpc_examples::proto::looprpc::ReservationServiceClient;
use psrpc_examples::{Narrator, bus, htlc, reservation, scheduler, websocket};

async fn connect(url: &str) -> DynBus {
    bus::connect(url).await.expect("connect to the bus")
}

async fn reservation_outcome(bus: DynBus) {
    let n = Narrator::new("reservation");
    let config = reservation::ClientConfig {
        clients: 3,
        offers: 2,
    };
    let r = reservation::run_both(bus, &config, &n).await.unwrap();
    assert_eq!(r.client.clients.len(), 3);
    for c in &r.client.clients {
        assert_eq!(c.offers.len(), 2);
        let keys: Vec<_> = [
            reservation::server_key("loop-a"),
            reservation::server_key("loop-b"),
        ]
        .into();
        assert!(keys.contains(&c.offers[0].server_key));
    }
    assert_eq!(r.client.refused_none.code(), ErrorCode::FailedPrecondition);
    assert_eq!(r.client.refused_unknown.code(), ErrorCode::InvalidArgument);
    assert_eq!(r.shutdown_close.code(), ErrorCode::Unavailable);
    // Three listeners, the refused two and the last one, over two servers.
    let served: u64 = r.servers.iter().map(|s| s.1).sum();
    let refused: u64 = r.servers.iter().map(|s| s.2).sum();
    assert_eq!((served, refused), (4, 2));
}

async fn htlc_outcome(bus: DynBus) {
    let n = Narrator::new("htlc");
    let config = htlc::ClientConfig {
        subscribers: 3,
        htlcs: 3 * htlc::HTLCS_PER_ROUND,
        ..Default::default()
    };
    let r = htlc::run_both(bus, &config, &n).await.unwrap();
    assert_eq!(r.stats.len(), 3);
    let want = htlc::HtlcStats::expected(15);
    assert_eq!(want.fees_earned_msat, 1500);
    assert_eq!(want.link_failures.values().sum::<u64>(), 6);
    for s in &r.stats {
        assert_eq!(s, &want);
    }
    assert!(r.lookup.settled && r.lookup.offchain);
    assert_eq!(r.invalid_lookup.code(), ErrorCode::InvalidArgument);
    assert_eq!(r.unknown_lookup.code(), ErrorCode::NotFound);
}

async fn scheduler_outcome(bus: DynBus) {
    let n = Narrator::new("scheduler");
    let r = scheduler::run_both(bus, &n).await.unwrap();
    // sched-a: 1 slot, sched-b: 2, sched-c: 3; every slot is used.
    assert_eq!(r.instances.len(), 3);
    assert_eq!(r.placements.len(), 6);
    assert_eq!(r.placements[0].instance, "sched-c");
    let mut per_instance = std::collections::BTreeMap::new();
    for p in &r.placements {
        *per_instance.entry(p.instance.as_str()).or_insert(0) += 1;
        let best = p.free_before.values().max().unwrap();
        assert_eq!(&p.free_before[&p.instance], best, "{p:?}");
    }
    assert_eq!(
        per_instance.into_iter().collect::<Vec<_>>(),
        [("sched-a", 1), ("sched-b", 2), ("sched-c", 3)]
    );
    for (case, code) in [
        ("register a node twice", ErrorCode::AlreadyExists),
        ("reuse a challenge", ErrorCode::Unauthenticated),
        (
            "register with a RECOVER challenge",
            ErrorCode::PermissionDenied,
        ),
        (
            "register with another node's challenge",
            ErrorCode::PermissionDenied,
        ),
        ("challenge for a 3-byte node id", ErrorCode::InvalidArgument),
        (
            "register with a redeemed invite code",
            ErrorCode::FailedPrecondition,
        ),
        ("register with an unknown invite code", ErrorCode::NotFound),
        ("recover an unregistered node", ErrorCode::NotFound),
        (
            "rotate the secret of an unknown webhook",
            ErrorCode::NotFound,
        ),
        ("delete an unknown webhook", ErrorCode::NotFound),
        ("add an http:// webhook", ErrorCode::InvalidArgument),
        (
            "pair a device the signer refuses",
            ErrorCode::PermissionDenied,
        ),
        (
            "pair with a node without a signer",
            ErrorCode::FailedPrecondition,
        ),
        ("schedule an exported node", ErrorCode::FailedPrecondition),
        ("schedule on a full cluster", ErrorCode::ResourceExhausted),
        ("schedule without credentials", ErrorCode::Unauthenticated),
    ] {
        assert_eq!(r.code(case), Some(&code), "{case}");
    }
    assert!(r.paired.rune.ends_with(":method^list"));
}

async fn websocket_outcome(bus: DynBus) {
    let n = Narrator::new("websocket");
    let (r, gateway, node) = websocket::run_both(bus, "127.0.0.1:0", &n).await.unwrap();
    assert_eq!(r.exchanges.len(), websocket::PEERS.len());
    for e in &r.exchanges {
        assert!(e.returned_in < e.replied_in);
        assert_eq!(e.reply.reply_to_id, e.message_id);
        let ws = e
            .ws_reply
            .as_ref()
            .expect("the reply came through the WebSocket");
        assert_eq!(ws["reply_to_id"], e.message_id.as_str());
        assert_eq!(ws["from_pubkey"], websocket::pubkey(&e.peer).as_str());
    }
    let codes: Vec<_> = r.errors.iter().map(|(_, e)| e.code()).collect();
    assert_eq!(
        codes,
        [
            ErrorCode::InvalidArgument,
            ErrorCode::InvalidArgument,
            ErrorCode::OutOfRange,
            ErrorCode::NotFound
        ]
    );
    assert_eq!(gateway.forwarded(), websocket::PEERS.len() as u64);
    gateway.stop();
    node.shutdown().await;
}

mod local {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reservation() {
        reservation_outcome(connect("local").await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn htlc() {
        htlc_outcome(connect("local").await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn scheduler() {
        scheduler_outcome(connect("local").await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn websocket() {
        websocket_outcome(connect("local").await).await;
    }
}

mod redis {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reservation() {
        let server = common::redis();
        reservation_outcome(connect(&server.url()).await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn htlc() {
        let server = common::redis();
        htlc_outcome(connect(&server.url()).await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn scheduler() {
        let server = common::redis();
        scheduler_outcome(connect(&server.url()).await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn websocket() {
        let server = common::redis();
        websocket_outcome(connect(&server.url()).await).await;
    }
}

mod nats {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reservation() {
        let server = common::nats();
        reservation_outcome(connect(&server.url()).await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn htlc() {
        let server = common::nats();
        htlc_outcome(connect(&server.url()).await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn scheduler() {
        let server = common::nats();
        scheduler_outcome(connect(&server.url()).await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn websocket() {
        let server = common::nats();
        websocket_outcome(connect(&server.url()).await).await;
    }
}

/// Servers and clients as separate OS processes: the binaries, on a shared
/// bus.
mod processes {
    use super::common::Proc;
    use super::*;

    const T: Duration = Duration::from_secs(30);

    fn all_four(url: &str) {
        let b = ["--bus", url];

        // Reservation: two servers, the clients.
        let bin = env!("CARGO_BIN_EXE_reservation");
        let s1 = Proc::spawn(
            bin,
            &[
                &b[..],
                &["--role", "server", "--name", "loop-a", "--interval", "20ms"],
            ]
            .concat(),
        );
        let s2 = Proc::spawn(
            bin,
            &[
                &b[..],
                &["--role", "server", "--name", "loop-b", "--interval", "20ms"],
            ]
            .concat(),
        );
        s1.wait_for("READY", T);
        s2.wait_for("READY", T);
        let out = Proc::spawn(
            bin,
            &[
                &b[..],
                &["--role", "client", "--clients", "4", "--offers", "3"],
            ]
            .concat(),
        )
        .success(T);
        assert!(out.contains("ok: 4 clients served"), "{out}");
        assert!(
            out.contains("RESERVATION_NONE is refused: failed_precondition"),
            "{out}"
        );
        // The servers saw the streams (which server takes a stream is the
        // claim handshake's choice: maybe one of them took them all).
        let served = || {
            let n = |p: &Proc| p.output().matches("offering reservations").count();
            n(&s1) + n(&s2)
        };
        let deadline = std::time::Instant::now() + T;
        while served() < 4 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(served(), 4, "{}\n{}", s1.output(), s2.output());
        drop((s1, s2));

        // HTLC: a router publishing traffic, subscribers in another process.
        let bin = env!("CARGO_BIN_EXE_htlc");
        let router = Proc::spawn(
            bin,
            &[
                &b[..],
                &["--role", "server", "--node", "carol", "--interval", "30ms"],
            ]
            .concat(),
        );
        router.wait_for("READY", T);
        let out = Proc::spawn(
            bin,
            &[
                &b[..],
                &[
                    "--role",
                    "client",
                    "--node",
                    "carol",
                    "--subscribers",
                    "3",
                    "--htlcs",
                    "10",
                ],
            ]
            .concat(),
        )
        .success(T);
        assert!(out.contains("every subscriber saw every event"), "{out}");
        assert!(out.contains("ok: 3 subscribers agree"), "{out}");
        drop(router);

        // Scheduler: the registry owner with 1 slot, another instance with
        // 2; the first node goes to the one with the most free slots.
        let bin = env!("CARGO_BIN_EXE_scheduler");
        let a = Proc::spawn(
            bin,
            &[
                &b[..],
                &[
                    "--role",
                    "server",
                    "--instance",
                    "sched-a",
                    "--capacity",
                    "1",
                    "--registry",
                ],
            ]
            .concat(),
        );
        a.wait_for("READY", T);
        let b2 = Proc::spawn(
            bin,
            &[
                &b[..],
                &[
                    "--role",
                    "server",
                    "--instance",
                    "sched-b",
                    "--capacity",
                    "2",
                ],
            ]
            .concat(),
        );
        b2.wait_for("READY", T);
        let out = Proc::spawn(
            bin,
            &[&b[..], &["--role", "client", "--instances", "2"]].concat(),
        )
        .success(T);
        assert!(
            out.contains("-> sched-b (free slots before: sched-a=1 sched-b=2)"),
            "{out}"
        );
        assert!(
            out.contains("schedule on a full cluster -> resource_exhausted"),
            "{out}"
        );
        assert!(out.contains("ok: 3 placements"), "{out}");
        // A second registry owner is refused.
        let (code, out) = Proc::spawn(
            bin,
            &[
                &b[..],
                &["--role", "server", "--instance", "sched-x", "--registry"],
            ]
            .concat(),
        )
        .exit(T);
        assert_eq!(code, Some(1), "{out}");
        assert!(
            out.contains("sched-a owns the registry of regtest already"),
            "{out}"
        );
        a.wait_for("registered node", T);
        drop((a, b2));

        // Websocket: node, gateway and client in three processes.
        let bin = env!("CARGO_BIN_EXE_websocket");
        let node = Proc::spawn(bin, &[&b[..], &["--role", "server"]].concat());
        node.wait_for("READY", T);
        let gw = Proc::spawn(
            bin,
            &[&b[..], &["--role", "gateway", "--listen", "127.0.0.1:0"]].concat(),
        );
        let ready = gw.wait_for("READY", T);
        let ws = ready
            .split_whitespace()
            .find(|w| w.starts_with("ws://"))
            .expect("the gateway prints its WebSocket URL")
            .to_owned();
        let out = Proc::spawn(
            bin,
            &[&b[..], &["--role", "client", "--gateway", &ws]].concat(),
        )
        .success(T);
        assert!(out.contains("ok: 2 replies"), "{out}");
        assert!(out.contains("the WebSocket delivered {\"id\":"), "{out}");
        assert!(out.contains("negative amount -> out_of_range"), "{out}");
        node.wait_for("fired into the network", T);
        gw.wait_for("a WebSocket subscribed", T);
    }

    #[test]
    fn redis() {
        let server = common::redis();
        all_four(&server.url());
    }

    #[test]
    fn nats() {
        let server = common::nats();
        all_four(&server.url());
    }

    /// `--help` explains each example, its roles and its options, and exits 0.
    #[test]
    fn help_explains_each_example() {
        for (bin, says) in [
            (
                env!("CARGO_BIN_EXE_psrpc-examples"),
                &[
                    "Runs the four example services",
                    "--listen <ADDR>",
                    "--hold",
                ][..],
            ),
            (
                env!("CARGO_BIN_EXE_reservation"),
                &[
                    "servers push reservation offers",
                    "both: two servers and the clients in this process [default: both]",
                    "Server options:",
                    "--interval <TIME>  Time between offers [default: 100ms]",
                ],
            ),
            (
                env!("CARGO_BIN_EXE_htlc"),
                &[
                    "every subscriber sees every event",
                    "server: a router node publishing traffic until Ctrl-C",
                    "--rounds <N>",
                    "[default: 20s]",
                ],
            ),
            (
                env!("CARGO_BIN_EXE_scheduler"),
                &[
                    "affinity routing",
                    "--registry",
                    "[default: those answering in 500ms]",
                ],
            ),
            (
                env!("CARGO_BIN_EXE_websocket"),
                &[
                    "GET /v1/subscribe",
                    "gateway: the HTTP/WebSocket gateway until Ctrl-C",
                    "--gateway <URL>",
                ],
            ),
        ] {
            let out = Proc::spawn(bin, &["--help"]).success(T);
            for s in says {
                assert!(out.contains(s), "{bin}: no `{s}` in\n{out}");
            }
            assert!(out.contains("--bus <URL>"), "{out}");
        }
    }

    #[test]
    fn the_local_bus_needs_one_process_and_usage_errors_exit_2() {
        let (code, out) =
            Proc::spawn(env!("CARGO_BIN_EXE_scheduler"), &["--role", "server"]).exit(T);
        assert_eq!(code, Some(1), "{out}");
        assert!(
            out.contains("the local bus lives inside one process"),
            "{out}"
        );
        for (bin, args, says) in [
            (
                env!("CARGO_BIN_EXE_htlc"),
                &["--frobnicate"][..],
                "unexpected argument '--frobnicate'",
            ),
            (
                env!("CARGO_BIN_EXE_reservation"),
                &["--interval", "5"],
                "expected a unit: ms, s or m",
            ),
            // Only the websocket example has a gateway.
            (
                env!("CARGO_BIN_EXE_scheduler"),
                &["--role", "gateway"],
                "[possible values: server, client, both]",
            ),
            (
                env!("CARGO_BIN_EXE_psrpc-examples"),
                &["--role", "server"],
                "unexpected argument '--role'",
            ),
        ] {
            let (code, out) = Proc::spawn(bin, args).exit(T);
            assert_eq!(code, Some(2), "{args:?}: {out}");
            assert!(out.contains(says), "{args:?}: {out}");
        }
        let (code, out) = Proc::spawn(
            env!("CARGO_BIN_EXE_reservation"),
            &["--bus", "carrier-pigeon://x"],
        )
        .exit(T);
        assert_eq!(code, Some(1), "{out}");
        assert!(out.contains("unknown bus"), "{out}");
        let out = Proc::spawn(env!("CARGO_BIN_EXE_psrpc-examples"), &[]).success(T);
        assert!(out.contains("all four scenarios passed"), "{out}");
    }
}

/// A client that never sends its request is dropped by the server with
/// `deadline_exceeded`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservation_silent_client_times_out() {
    let bus = connect("local").await;
    let config = reservation::ServerConfig {
        request_timeout: Duration::from_millis(200),
        ..Default::default()
    };
    let s = reservation::serve(bus.clone(), config, Narrator::quiet())
        .await
        .unwrap();
    let client = ReservationServiceClient::new(bus).await.unwrap();
    let mut stream = client.reservation_notification_stream().await.unwrap();
    let e = stream.recv().await.expect_err("refused");
    assert_eq!(e.code(), ErrorCode::DeadlineExceeded);
    assert_eq!(s.desk.streams_refused(), 1);
    s.server.shutdown().await;
}

/// The gateway speaks plain HTTP besides the WebSocket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_http() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let bus = connect("local").await;
    let gw = websocket::Gateway::start(bus, "127.0.0.1:0", Narrator::quiet())
        .await
        .unwrap();
    // One request per connection, read to its end.
    let get = |head: &'static str| {
        let addr = gw.addr();
        async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let req = format!("{head}\r\nHost: x\r\nConnection: close\r\n\r\n");
            s.write_all(req.as_bytes()).await.unwrap();
            let mut out = String::new();
            tokio::time::timeout(Duration::from_secs(20), s.read_to_string(&mut out))
                .await
                .expect("the gateway answers and closes")
                .unwrap();
            out.to_ascii_lowercase()
        }
    };
    for head in ["GET / HTTP/1.1", "GET /index.html HTTP/1.1"] {
        let page = get(head).await;
        assert!(page.starts_with("http/1.1 200 ok"), "{page}");
        assert!(page.contains("content-type: text/html"), "{page}");
        assert!(page.contains("/v1/subscribe") && page.contains("id=\"events\""));
    }
    let plain = get("GET /v1/subscribe HTTP/1.1").await;
    assert!(
        plain.starts_with("http/1.1 426 upgrade required"),
        "{plain}"
    );
    assert!(plain.contains("upgrade: websocket"), "{plain}");
    for wrong in [
        "POST /v1/subscribe HTTP/1.1\r\nContent-Length: 0",
        "DELETE / HTTP/1.1",
    ] {
        let res = get(wrong).await;
        assert!(res.starts_with("http/1.1 405"), "{res}");
        assert!(res.contains("allow: get"), "{res}");
    }
    let missing = get("GET /v2/nope HTTP/1.1").await;
    assert!(missing.starts_with("http/1.1 404"), "{missing}");
    gw.stop();
}

/// Every connected WebSocket gets every event, and stopping the gateway
/// closes them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_fans_out_and_stop_closes_every_socket() {
    use futures::StreamExt;
    use psrpc_examples::proto::websocket::{SubscribeResponse, WebsocketServer};
    use tokio_tungstenite::tungstenite::Message;

    let bus = connect("local").await;
    let gw = websocket::Gateway::start(bus.clone(), "127.0.0.1:0", Narrator::quiet())
        .await
        .unwrap();
    let mut sockets = Vec::new();
    for _ in 0..3 {
        let (ws, _) = tokio_tungstenite::connect_async(gw.ws_url()).await.unwrap();
        sockets.push(ws);
    }
    assert!(gw.wait_for_clients(3, Duration::from_secs(20)).await);
    let feed = WebsocketServer::new(websocket::Feed, bus).await.unwrap();
    let ev = SubscribeResponse {
        id: "ev-1".into(),
        reply_to_id: "msg-1".into(),
        data: b"hi".to_vec(),
        service_type: "message".into(),
        ..Default::default()
    };
    feed.publish_subscribe(&ev).await.unwrap();
    for ws in &mut sockets {
        let msg = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("the event arrives")
            .unwrap()
            .unwrap();
        assert_eq!(msg, Message::text(websocket::event_json(&ev)));
    }
    gw.stop();
    for ws in &mut sockets {
        // The gateway's close frame, then the end of the stream.
        let end = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(Ok(m)) = ws.next().await {
                if m.is_close() {
                    return true;
                }
            }
            false
        })
        .await
        .expect("the socket closes");
        assert!(end, "the gateway sent a close frame");
    }
    psrpc_tests::eventually("every socket gone", Duration::from_secs(20), || {
        gw.clients() == 0
    })
    .await;
    feed.shutdown().await;
}

/// The page, in headless Chromium, lists an event published through psrpc.
#[test]
fn page_in_chromium_shows_a_psrpc_event() {
    use psrpc_examples::proto::messaging::{MessageRequest, MessagingClient};
    use serde_json::json;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let bus = rt.block_on(connect("local"));
    let node = rt
        .block_on(websocket::serve_node(bus.clone(), Narrator::quiet()))
        .unwrap();
    let gw = rt
        .block_on(websocket::Gateway::start(
            bus.clone(),
            "127.0.0.1:0",
            Narrator::quiet(),
        ))
        .unwrap();

    let mut chromium = common::chromium::Chromium::launch();
    let page = chromium.open(&gw.url());
    chromium.wait_for(
        &page,
        "document.getElementById('status').textContent",
        &json!("connected"),
        Duration::from_secs(20),
    );
    assert!(rt.block_on(gw.wait_for_clients(1, Duration::from_secs(5))));

    // Send a message; the reply is published on the psrpc feed later.
    let id = rt.block_on(async {
        let client = MessagingClient::new(bus.clone()).await.unwrap();
        client
            .message(MessageRequest {
                pubkey: websocket::pubkey("bob"),
                msg: "seen in a browser?".into(),
                amount: 21,
                reply_to_id: String::new(),
            })
            .await
            .unwrap()
            .message_id
    });
    let reply =
        format!("document.querySelector('li[data-reply-to=\"{id}\"] .data')?.textContent ?? null");
    chromium.wait_for(
        &page,
        &reply,
        &json!(websocket::reply_text("bob", "seen in a browser?")),
        Duration::from_secs(20),
    );
    let meta = chromium.eval(
        &page,
        &format!("document.querySelector('li[data-reply-to=\"{id}\"] .meta').textContent"),
    );
    let meta = meta.as_str().unwrap();
    assert!(meta.contains(&websocket::pubkey("bob")[..12]), "{meta}");
    assert!(meta.contains(&format!("reply to {id}")), "{meta}");
    drop(chromium);
    gw.stop();
    rt.block_on(node.shutdown());
}
