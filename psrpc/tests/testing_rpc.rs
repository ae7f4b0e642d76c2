//! psrpc calls through `psrpc::testing`'s wrappers, end to end on the local
//! bus: the laggy bus adds its latency to a unary call, the unreliable bus
//! makes calls fail with `unavailable` and recover.

use std::sync::Arc;
use std::time::{Duration, Instant};

use psrpc::testing::{FailureRate, LaggyBus, UnreliableBus};
use psrpc::{
    ClientOptions, Context, ErrorCode, LocalBus, MessageBus, Method, RpcClient, RpcServer,
    ServerOptions,
};

#[derive(Clone, PartialEq, prost::Message)]
struct Echo {
    #[prost(string, tag = "1")]
    text: String,
}

impl prost::Name for Echo {
    const NAME: &'static str = "Echo";
    const PACKAGE: &'static str = "testing";
}

/// A queue method with the claim handshake: request, claim request, claim
/// response and response each cross the bus once.
const ECHO: Method<Echo, Echo> = Method::queue("Echo");
/// A queue method without claims: request and response only.
const ECHO_NO_CLAIM: Method<Echo, Echo> = Method::queue("EchoNoClaim").single_server();

async fn serve(bus: impl MessageBus) -> RpcServer {
    let server = RpcServer::new(bus, "echo", ServerOptions::default().server_id("server"))
        .await
        .unwrap();
    for m in [&ECHO, &ECHO_NO_CLAIM] {
        server
            .route(m)
            .handle(|_ctx: Context, req: Echo| async move {
                Ok(Echo {
                    text: format!("echo {}", req.text),
                })
            })
            .await
            .expect("register");
    }
    server
}

async fn call(client: &RpcClient, m: &Method<Echo, Echo>, text: &str) -> psrpc::Result<String> {
    let res: Echo = client
        .unary(
            m,
            (),
            Echo {
                text: text.to_owned(),
            },
        )
        .await?;
    Ok(res.text)
}

/// client -> server 30 ms, server -> client 50 ms.
fn latency(from: &str, to: &str) -> Duration {
    match (from, to) {
        ("client", "server") => Duration::from_millis(30),
        ("server", "client") => Duration::from_millis(50),
        _ => Duration::ZERO,
    }
}

#[tokio::test]
async fn unary_call_takes_the_link_latency() {
    let local = LocalBus::new();
    let server = serve(LaggyBus::new(local.clone(), "server", latency)).await;
    let client = RpcClient::new(
        LaggyBus::new(local.clone(), "client", latency),
        "echo",
        ClientOptions::default().timeout(Duration::from_secs(5)),
    )
    .await
    .unwrap();

    // Two round trips: request and claim response out, claim request and
    // response back.
    let start = Instant::now();
    assert_eq!(call(&client, &ECHO, "hi").await.unwrap(), "echo hi");
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(159) && took < Duration::from_secs(4),
        "claimed call took {took:?}, expected 2 x (30 + 50) ms"
    );

    // One round trip without the claim.
    let start = Instant::now();
    assert_eq!(
        call(&client, &ECHO_NO_CLAIM, "ho").await.unwrap(),
        "echo ho"
    );
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(79) && took < Duration::from_secs(4),
        "unclaimed call took {took:?}, expected 30 + 50 ms"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn unary_call_fails_while_the_bus_loses_everything() {
    let local = LocalBus::new();
    let rate = Arc::new(FailureRate::new(0.0));
    let server = serve(UnreliableBus::new(local.clone(), rate.clone())).await;
    let client = RpcClient::new(
        UnreliableBus::new(local.clone(), rate.clone()),
        "echo",
        ClientOptions::default()
            .timeout(Duration::from_millis(500))
            .selection_timeout(Duration::from_millis(300)),
    )
    .await
    .unwrap();

    assert_eq!(call(&client, &ECHO, "a").await.unwrap(), "echo a");

    rate.set(1.0); // an outage
    // No server claims the request in time...
    let err = call(&client, &ECHO, "b").await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::Unavailable, "{err}");
    // ...and without the claim handshake the call runs into its deadline.
    let err = call(&client, &ECHO_NO_CLAIM, "b").await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::DeadlineExceeded, "{err}");

    rate.set(0.0); // and recovery
    assert_eq!(call(&client, &ECHO, "c").await.unwrap(), "echo c");
    assert_eq!(call(&client, &ECHO_NO_CLAIM, "d").await.unwrap(), "echo d");
    server.shutdown().await;
}

#[tokio::test]
async fn channel_filter_loses_only_responses() {
    // Only the client's response channel loses messages: the claim
    // handshake succeeds, then the response never arrives.
    let local = LocalBus::new();
    let rate = Arc::new(FailureRate::new(1.0));
    let server = serve(local.clone()).await;
    let probe = RpcClient::new(local.clone(), "echo", ClientOptions::default())
        .await
        .unwrap();
    let response_channel = psrpc::protocol::channels::response_channel("echo", probe.id());
    probe.close();
    let client = RpcClient::new(
        UnreliableBus::for_channel(local.clone(), rate.clone(), response_channel.legacy),
        "echo",
        ClientOptions::default()
            .client_id(probe.id())
            .timeout(Duration::from_millis(500))
            .selection_timeout(Duration::from_millis(300)),
    )
    .await
    .unwrap();
    let err = call(&client, &ECHO, "x").await.unwrap_err();
    assert_eq!(err.code(), ErrorCode::DeadlineExceeded, "{err}");
    rate.set(0.0);
    assert_eq!(call(&client, &ECHO, "y").await.unwrap(), "echo y");
    server.shutdown().await;
}

/// A bus whose publish hangs (a full buffer, a reconnect) cannot make a call
/// overrun its deadline: the call ends with `deadline_exceeded` at its
/// timeout, for the request publish of a unary call and for a stream open.
#[tokio::test]
async fn a_hanging_publish_ends_at_the_call_deadline() {
    use psrpc::testing::TestBus;
    let local = LocalBus::new();
    let _server = serve(local.clone()).await;
    let hanging = TestBus::new(local).publish_interceptor(|_ch, _msg, _next| async move {
        tokio::time::sleep(Duration::from_secs(30)).await;
        Ok(())
    });
    let client = RpcClient::new(hanging, "echo", ClientOptions::default())
        .await
        .unwrap();
    let started = Instant::now();
    let e = client
        .unary(&ECHO, (), Echo { text: "x".into() })
        .timeout(Duration::from_millis(200))
        .await
        .expect_err("the publish never ends");
    assert_eq!(e.code(), ErrorCode::DeadlineExceeded);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let started = Instant::now();
    let e = client
        .stream(&ECHO, ())
        .timeout(Duration::from_millis(200))
        .await
        .expect_err("the open's publish never ends");
    assert_eq!(e.code(), ErrorCode::DeadlineExceeded);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}
