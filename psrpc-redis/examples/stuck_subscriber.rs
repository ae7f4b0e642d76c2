//! Measures what a subscriber that never reads costs the rest of its
//! process on Redis: 1 M small events are published by `redis-benchmark`
//! (another process) to a fan-out subscription (buffer 100) that is never
//! read, while the same bus connection serves and calls `NormalRPC`.
//! Prints the resident set, the unrelated calls and the drop counts.
//!
//! ```sh
//! cargo run --release -p psrpc-redis --example stuck_subscriber
//! ```

use std::sync::Arc;
use std::time::Instant;

use psrpc::{ClientOptions, MessageBus, RpcClient};
use psrpc_tests::measure::{call_while, flood_channel, status_kb};
use psrpc_tests::my_service::SERVICE;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let rs = psrpc_tests::servers::RedisServer::start();
    let bus = psrpc_redis::RedisBus::connect(&rs.url())
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
    let before = status_kb("VmRSS:");
    let port = rs
        .url()
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .trim_end_matches('/')
        .to_owned();
    let t = Instant::now();
    let mut flood = std::process::Command::new("redis-benchmark")
        .args(["-p", &port, "-n", "1000000", "-P", "64", "-c", "4", "-q"])
        .args([
            "PUBLISH",
            "flood",
            "0123456789012345678901234567890123456789",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-benchmark");
    let (ok, failed, peak) = call_while(&c, || matches!(flood.try_wait(), Ok(Some(_)))).await;
    println!(
        "redis: 1M events in {:?}; RSS {before} -> peak {peak} kB; unrelated calls ok {ok} failed {failed}; \
         the stuck subscription holds {}; drops {:?}",
        t.elapsed(),
        stuck.len(),
        bus.drops()
    );
    s.shutdown().await;
}
