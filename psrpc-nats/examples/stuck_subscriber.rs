//! Measures what a subscriber that never reads costs the rest of its
//! process on NATS: 1 M small events are published from a second
//! connection in the same process to a fan-out subscription (buffer 100)
//! that is never read, while the first connection serves and calls
//! `NormalRPC`. Prints the resident set (the publisher's buffers included),
//! the unrelated calls and the drop counts.
//!
//! ```sh
//! cargo run --release -p psrpc-nats --example stuck_subscriber
//! ```

use std::sync::Arc;
use std::time::Instant;

use psrpc::{ClientOptions, MessageBus, RpcClient};
use psrpc_tests::measure::{call_while, flood_channel, status_kb};
use psrpc_tests::my_service::SERVICE;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let ns = psrpc_tests::servers::NatsServer::start(&[]);
    let bus = psrpc_nats::NatsBus::connect(&ns.url())
        .await
        .expect("connect");
    let s = psrpc_tests::echo_server(Arc::new(bus.clone()), "s", &[])
        .await
        .expect("serve");
    let c = RpcClient::new(Arc::new(bus.clone()), SERVICE, ClientOptions::default())
        .await
        .expect("client");
    let stuck = bus
        .subscribe(&flood_channel(), 100)
        .await
        .expect("subscribe");
    let publisher = psrpc_nats::NatsBus::connect(&ns.url())
        .await
        .expect("connect");
    let before = status_kb("VmRSS:");
    let t = Instant::now();
    let flood = tokio::spawn(async move {
        let payload = bytes::Bytes::from_static(b"0123456789012345678901234567890123456789");
        for _ in 0..1_000_000u32 {
            publisher
                .publish(&flood_channel(), payload.clone())
                .await
                .expect("publish");
        }
        let _ = publisher.client().flush().await;
    });
    let (ok, failed, peak) = call_while(&c, || flood.is_finished()).await;
    println!(
        "nats: 1M events in {:?}; RSS {before} -> peak {peak} kB; unrelated calls ok {ok} failed {failed}; \
         the stuck subscription holds {}; drops {:?}",
        t.elapsed(),
        stuck.len(),
        bus.drops()
    );
    s.shutdown().await;
}
