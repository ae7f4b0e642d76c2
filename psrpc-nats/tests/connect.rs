//! Connecting: credentials from URLs read by async-nats' parser, errors
//! that keep their cause and never repeat a password.

mod common;

use std::sync::Arc;

use psrpc::{ErrorCode, RpcClient};
use psrpc_nats::NatsBus;
use psrpc_tests::Num;
use psrpc_tests::my_service::*;

use common::NatsServer;

/// One call through two buses made from `url`.
async fn calls_through(url: &str) {
    let server = psrpc_tests::echo_server(Arc::new(NatsBus::connect(url).await.unwrap()), "s", &[])
        .await
        .unwrap();
    let bus = Arc::new(NatsBus::connect(url).await.unwrap());
    let c = RpcClient::new(bus, SERVICE, Default::default())
        .await
        .unwrap();
    let r: Num = c
        .unary(
            &NORMAL_RPC,
            (),
            Num {
                n: 7,
                text: String::new(),
            },
        )
        .await
        .unwrap();
    assert_eq!(r.n, 7);
    server.shutdown().await;
}

/// A user and password with characters that URLs escape, percent-encoded
/// in the URL, reach the server decoded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_user_and_password_percent_encoded() {
    let ns = NatsServer::start(&["--user", "us@r", "--pass", "p:ss/w@rd%"]);
    let url = format!("nats://us%40r:p%3Ass%2Fw%40rd%25@127.0.0.1:{}", ns.port);
    calls_through(&url).await;
    // The same for a raw async-nats connection (as the CLI's watch makes).
    let (servers, options) =
        psrpc_nats::servers_and_options(&url, psrpc_nats::async_nats::ConnectOptions::new())
            .unwrap();
    let raw = options.connect(servers).await.expect("raw connection");
    raw.flush().await.unwrap();
    let wrong = format!("nats://us%40r:nope@127.0.0.1:{}", ns.port);
    let e = NatsBus::connect(&wrong).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Unavailable, "{e}");
    assert!(!e.to_string().contains("nope"), "{e}");
}

/// A token as the URL's user part.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_token() {
    let ns = NatsServer::start(&["--auth", "s3cr3t-token"]);
    calls_through(&format!("nats://s3cr3t-token@127.0.0.1:{}", ns.port)).await;
    let e = NatsBus::connect(&ns.url()).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Unavailable, "{e}");
}

/// A URL the parser refuses is not repeated in the error: it may hold a
/// password, and without a parse nobody can tell where it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_url_is_not_repeated() {
    for bad in [
        "u:secret@127.0.0.1:99999",
        "nats://u:secret@127.0.0.1:99999",
        "nats://127.0.0.1:4222,u:secret@[::1",
    ] {
        let e = psrpc::Error::from(NatsBus::connect(bad).await.unwrap_err());
        assert!(!e.message().contains("secret"), "{bad}: {e}");
        assert_eq!(e.code(), ErrorCode::InvalidArgument, "{bad}: {e}");
    }
}

/// Refused credentials: the psrpc error's source is the bus's error, whose
/// source is async-nats' own, which tells why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_error_keeps_its_source() {
    let ns = NatsServer::start(&["--user", "u", "--pass", "p"]);
    let url = format!("nats://u:wrong@127.0.0.1:{}", ns.port);
    let e = psrpc::Error::from(NatsBus::connect(&url).await.unwrap_err());
    assert_eq!(e.code(), ErrorCode::Unavailable, "{e}");
    let bus_error = std::error::Error::source(&e).expect("the bus's error");
    let bus_error = bus_error
        .downcast_ref::<psrpc_nats::Error>()
        .expect("a psrpc_nats::Error");
    let nats = std::error::Error::source(bus_error).expect("async-nats' error");
    let nats = nats
        .downcast_ref::<psrpc_nats::async_nats::ConnectError>()
        .expect("an async_nats::ConnectError");
    assert_eq!(
        nats.kind(),
        psrpc_nats::async_nats::ConnectErrorKind::AuthorizationViolation,
        "{nats}"
    );
}

/// The builder's options are in force from the start: prefix, the control
/// line's limit on subjects, the message size limit on what is sent and
/// what arrives, compression.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builder_options_in_force() {
    use bytes::Bytes;
    use psrpc::MessageBus;
    use psrpc::bus::Channel;
    use psrpc::drops::DropReason;

    let ns = NatsServer::start(&[]);
    let compression = psrpc::CompressionOptions::default().with_quality(6);
    let bus = NatsBus::builder()
        .prefix("pre.")
        .max_control_line(200)
        .max_message_size(1_000)
        .compression(compression)
        .connect(&ns.url())
        .await
        .unwrap();
    assert_eq!(bus.prefix(), "pre");
    assert_eq!(bus.max_subject_len(), 200 - 64);
    assert_eq!(bus.max_message_size(), 1_000);
    assert_eq!(bus.compression(), &compression);
    let ch = |server: String| Channel {
        legacy: server.clone(),
        server,
        local: String::new(),
    };
    let long = ch(format!("a.{}", "b".repeat(140)));
    let e = bus.check_channel(&long).expect_err("subject too long");
    assert_eq!(e.code(), ErrorCode::InvalidArgument, "{e}");

    let small = ch("opts.small".into());
    let mut sub = bus.subscribe(&small, 8).await.unwrap();
    let e = bus.publish(&small, Bytes::from(vec![0; 1_001])).await;
    let e = e.expect_err("larger than the bus's maximum");
    assert_eq!(e.code(), ErrorCode::ResourceExhausted, "{e}");
    // What arrives larger than the maximum is dropped and counted.
    let raw = psrpc_nats::async_nats::connect(ns.url()).await.unwrap();
    raw.publish("pre.opts.small", Bytes::from(vec![0; 2_000]))
        .await
        .unwrap();
    raw.publish("pre.opts.small", Bytes::from_static(b"fits"))
        .await
        .unwrap();
    let got = tokio::time::timeout(std::time::Duration::from_secs(20), sub.recv()).await;
    assert_eq!(got.unwrap().unwrap(), "fits");
    assert_eq!(bus.drops().count(DropReason::TooLarge), 1);
}
