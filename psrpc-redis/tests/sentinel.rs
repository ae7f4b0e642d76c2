//! A Sentinel-managed master on loopback: the bus finds the master through
//! the sentinel, and after the master dies and the sentinel promotes the
//! replica, serving resumes on the new master without rebuilding anything.

mod common;

use std::time::{Duration, Instant};

use psrpc::{ClientOptions, Context, Method, RpcClient, RpcServer, ServerOptions};
use psrpc_redis::RedisBus;
use psrpc_tests::Num;

use common::{RedisServer, Sentinel, cli};
use psrpc_tests::eventually;

const ECHO: Method<Num, Num> = Method::queue("Echo");

async fn call(c: &RpcClient, n: i64, timeout: Duration) -> psrpc::Result<Num> {
    c.unary(
        &ECHO,
        (),
        Num {
            n,
            text: String::new(),
        },
    )
    .timeout(timeout)
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_the_master_through_a_failover() {
    let mut master = RedisServer::start();
    let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &master.port.to_string()]);
    eventually("the replica to sync", Duration::from_secs(20), || {
        cli(replica.port, &["info", "replication"]).contains("master_link_status:up")
    })
    .await;
    let sentinel = Sentinel::start(master.port);
    eventually(
        "the sentinel to see the replica",
        Duration::from_secs(20),
        || {
            sentinel
                .cli(&["sentinel", "replicas", "mymaster"])
                .contains(&replica.port.to_string())
        },
    )
    .await;

    let sb = RedisBus::builder()
        .connect_sentinel(&[sentinel.url()], "mymaster")
        .await
        .unwrap();
    let cb = RedisBus::builder()
        .connect_sentinel(&[sentinel.url()], "mymaster")
        .await
        .unwrap();
    let srv = RpcServer::new(sb, "sentinel_svc", ServerOptions::default().server_id("s"))
        .await
        .unwrap();
    srv.route(&ECHO)
        .handle(|_ctx: Context, req: Num| async move { Ok(req) })
        .await
        .unwrap();
    let client = RpcClient::new(cb, "sentinel_svc", ClientOptions::default())
        .await
        .unwrap();
    assert_eq!(call(&client, 1, Duration::from_secs(2)).await.unwrap().n, 1);
    // On the master: its pub/sub channels are ours.
    assert!(cli(master.port, &["pubsub", "channels"]).contains("sentinel_svc"));

    master.stop();
    let down = Instant::now();
    let mut n = 2;
    loop {
        match call(&client, n, Duration::from_millis(500)).await {
            Ok(r) => {
                assert_eq!(r.n, n);
                break;
            }
            Err(e) => assert!(
                down.elapsed() < Duration::from_secs(30),
                "no recovery after the failover: {e}"
            ),
        }
        n += 1;
    }
    eprintln!("serving again {:?} after the master died", down.elapsed());
    assert!(cli(replica.port, &["info", "replication"]).contains("role:master"));
    assert!(cli(replica.port, &["pubsub", "channels"]).contains("sentinel_svc"));
}
