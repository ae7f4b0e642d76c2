//! The psrpc conformance suite on a Redis Cluster of 3 masters on loopback:
//! each connection a test opens publishes and subscribes on the next node in
//! turn, so the clients and servers of a test sit on different nodes and
//! every message crosses the cluster bus; queue locks go to the master of
//! their key's slot.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use psrpc::bus::DynBus;
use psrpc::{Channel, MessageBus};
use psrpc_redis::{RedisBus, queue_lock_key};
use psrpc_tests::BusFactory;

use common::RedisCluster;

fn cluster() -> &'static RedisCluster {
    static CLUSTER: OnceLock<RedisCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| RedisCluster::start(3))
}

struct ClusterFactory {
    prefix: String,
    next: AtomicUsize,
}

impl ClusterFactory {
    fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        ClusterFactory {
            prefix: format!("c{n}:"),
            next: AtomicUsize::new(n),
        }
    }
}

#[psrpc::async_trait]
impl BusFactory for ClusterFactory {
    fn name(&self) -> &str {
        "redis-cluster"
    }

    async fn connect(&self) -> DynBus {
        let urls = cluster().urls_from(self.next.fetch_add(1, Ordering::Relaxed));
        let bus = RedisBus::builder()
            .prefix(self.prefix.clone())
            .connect_cluster(&urls)
            .await
            .expect("connect");
        Arc::new(bus)
    }
}

psrpc_tests::conformance!(ClusterFactory::new());

fn ch(name: &str) -> Channel {
    Channel {
        legacy: name.into(),
        server: String::new(),
        local: String::new(),
    }
}

/// A publish through one node reaches subscribers on the two others; queue
/// messages are delivered once, and their locks live on the masters that own
/// their keys (spread over the cluster).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn across_nodes() {
    let c = cluster();
    let mut buses = Vec::new();
    for i in 0..3 {
        let urls = c.urls_from(i);
        buses.push(RedisBus::builder().connect_cluster(&urls).await.unwrap());
    }
    let mut s1 = buses[1].subscribe(&ch("x:fan"), 10).await.unwrap();
    let mut s2 = buses[2].subscribe(&ch("x:fan"), 10).await.unwrap();
    let mut q1 = buses[1].subscribe_queue(&ch("x:q"), 100).await.unwrap();
    let mut q2 = buses[2].subscribe_queue(&ch("x:q"), 100).await.unwrap();
    buses[0]
        .publish(&ch("x:fan"), Bytes::from_static(b"hello"))
        .await
        .unwrap();
    for s in [&mut s1, &mut s2] {
        let got = tokio::time::timeout(Duration::from_secs(3), s.recv()).await;
        assert_eq!(got.unwrap().unwrap(), "hello");
    }
    const N: usize = 60;
    let payloads: Vec<Bytes> = (0..N).map(|i| Bytes::from(format!("job {i}"))).collect();
    for p in &payloads {
        buses[0].publish(&ch("x:q"), p.clone()).await.unwrap();
    }
    let mut got = Vec::new();
    for q in [&mut q1, &mut q2] {
        while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(500), q.recv()).await {
            got.push(m);
        }
    }
    got.sort();
    let mut want = payloads.clone();
    want.sort();
    assert_eq!(got, want, "each queue message exactly once");

    // Every lock is readable through the cluster, and they sit on several
    // masters (a plain connection to one node holds only its own slots).
    let client = redis::cluster::ClusterClient::new(c.urls_from(0)).unwrap();
    let mut conn = client.get_async_connection().await.unwrap();
    let mut per_node = vec![0; c.nodes.len()];
    for p in &payloads {
        let key = queue_lock_key(p);
        let ttl: i64 = redis::cmd("TTL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!((1..=5).contains(&ttl), "lock {key}: ttl {ttl}");
        for (i, node) in c.nodes.iter().enumerate() {
            let mut plain = redis::Client::open(node.url())
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap();
            let r: redis::RedisResult<i64> =
                redis::cmd("TTL").arg(&key).query_async(&mut plain).await;
            if matches!(r, Ok(t) if t > 0) {
                per_node[i] += 1;
            }
        }
    }
    assert_eq!(per_node.iter().sum::<usize>(), N, "{per_node:?}");
    assert!(
        per_node.iter().filter(|n| **n > 0).count() > 1,
        "{per_node:?}"
    );
}
