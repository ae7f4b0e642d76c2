//! Where the bus connects (one server, cluster nodes, the master sentinels
//! name) and the command connection that reconnects through it.

use std::future::Future;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use redis::aio::{MultiplexedConnection, PubSub};

use crate::error::is_connection_error;
use crate::shared::lock;

pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// The first reconnection delay (doubling up to [`BACKOFF_MAX`]), and the
/// least time between two connection attempts of a [`Managed`].
pub(crate) const BACKOFF_MIN: Duration = Duration::from_millis(100);
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Where the bus connects.
pub(crate) enum Topology {
    /// One server.
    Single(redis::Client),
    /// Nodes of a Redis Cluster: pub/sub and publishes go to any one of them
    /// (classic pub/sub is cluster-wide), the next one after a failure.
    Cluster {
        nodes: Vec<redis::Client>,
        next: AtomicUsize,
    },
    /// The master a set of sentinels names, asked again at every connection.
    Sentinel(tokio::sync::Mutex<redis::sentinel::SentinelClient>),
}

impl Topology {
    /// The client of the server to connect to now.
    async fn node(&self) -> redis::RedisResult<redis::Client> {
        match self {
            Topology::Single(c) => Ok(c.clone()),
            Topology::Cluster { nodes, next } => {
                Ok(nodes[next.load(Ordering::Relaxed) % nodes.len()].clone())
            }
            Topology::Sentinel(s) => {
                let mut s = s.lock().await;
                within(CONNECT_TIMEOUT, s.async_get_client()).await
            }
        }
    }

    /// A connection to the current node failed: prefer another one next.
    pub(crate) fn failed(&self) {
        if let Topology::Cluster { next, .. } = self {
            next.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A multiplexed connection to the current node.
    pub(crate) async fn connect(&self) -> redis::RedisResult<MultiplexedConnection> {
        let client = self.node().await?;
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        let r = within(
            CONNECT_TIMEOUT,
            client.get_multiplexed_async_connection_with_config(&config),
        )
        .await;
        if r.is_err() {
            self.failed();
        }
        r
    }

    /// A pub/sub connection to the current node.
    pub(crate) async fn pubsub(&self) -> redis::RedisResult<PubSub> {
        let client = self.node().await?;
        let r = within(CONNECT_TIMEOUT, client.get_async_pubsub()).await;
        if r.is_err() {
            self.failed();
        }
        r
    }
}

/// `f`, or a timeout error after `t`.
pub(crate) async fn within<T>(
    t: Duration,
    f: impl Future<Output = redis::RedisResult<T>>,
) -> redis::RedisResult<T> {
    match tokio::time::timeout(t, f).await {
        Ok(r) => r,
        Err(_) => Err(redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "timed out",
        ))),
    }
}

/// A multiplexed connection that reconnects (through the topology, so to
/// the current master or another cluster node) after a connection error.
pub(crate) struct Managed {
    topology: Arc<Topology>,
    /// The connection and its generation.
    current: Mutex<Option<(u64, MultiplexedConnection)>>,
    /// One connection attempt at a time; the time of the last failed one.
    connecting: tokio::sync::Mutex<Option<Instant>>,
    generation: AtomicU64,
}

impl Managed {
    pub(crate) fn new(topology: Arc<Topology>) -> Self {
        Managed {
            topology,
            current: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(None),
            generation: AtomicU64::new(0),
        }
    }

    fn cached(&self) -> Option<(u64, MultiplexedConnection)> {
        lock(&self.current).clone()
    }

    /// The connection, connecting if there is none (at most once per
    /// [`BACKOFF_MIN`] after a failure: in between, fails at once).
    pub(crate) async fn get(&self) -> redis::RedisResult<(u64, MultiplexedConnection)> {
        if let Some(c) = self.cached() {
            return Ok(c);
        }
        let mut last_failure = self.connecting.lock().await;
        if let Some(c) = self.cached() {
            return Ok(c);
        }
        if let Some(t) = *last_failure
            && t.elapsed() < BACKOFF_MIN
        {
            return Err(redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                "reconnecting",
            )));
        }
        match self.topology.connect().await {
            Ok(c) => {
                *last_failure = None;
                let g = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
                *lock(&self.current) = Some((g, c.clone()));
                Ok((g, c))
            }
            Err(e) => {
                *last_failure = Some(Instant::now());
                Err(e)
            }
        }
    }

    /// Forgets connection `generation` after a connection error on it.
    pub(crate) fn failed(&self, generation: u64) {
        let mut cur = lock(&self.current);
        if matches!(&*cur, Some((g, _)) if *g == generation) {
            *cur = None;
            self.topology.failed();
        }
    }

    /// Runs `query` (a command or a pipeline), reconnecting once if the
    /// connection turns out dead.
    pub(crate) async fn query<T: redis::FromRedisValue>(
        &self,
        query: &impl Query,
    ) -> redis::RedisResult<T> {
        let mut retried = false;
        loop {
            let (g, mut c) = self.get().await?;
            match query.run(&mut c).await {
                Err(e) if is_connection_error(&e) => {
                    self.failed(g);
                    if retried {
                        return Err(e);
                    }
                    retried = true;
                }
                r => return r,
            }
        }
    }
}

/// What [`Managed::query`] runs: a command or a pipeline.
pub(crate) trait Query: Sync {
    /// Runs it on `c`.
    fn run<T: redis::FromRedisValue>(
        &self,
        c: &mut MultiplexedConnection,
    ) -> impl Future<Output = redis::RedisResult<T>> + Send;
}

impl Query for redis::Cmd {
    fn run<T: redis::FromRedisValue>(
        &self,
        c: &mut MultiplexedConnection,
    ) -> impl Future<Output = redis::RedisResult<T>> + Send {
        self.query_async(c)
    }
}

impl Query for redis::Pipeline {
    fn run<T: redis::FromRedisValue>(
        &self,
        c: &mut MultiplexedConnection,
    ) -> impl Future<Output = redis::RedisResult<T>> + Send {
        self.query_async(c)
    }
}
