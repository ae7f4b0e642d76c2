//! [`RedisBusBuilder`]: every option of the bus, then the connection.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use futures::future::BoxFuture;
use redis::IntoConnectionInfo;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelServerType};
use tokio::sync::mpsc;

use crate::bus::RedisBus;
use crate::error::Error;
use crate::locks::Locks;
use crate::publish::{PUBLISH_QUEUE, writer};
use crate::pubsub::manager;
use crate::shared::Shared;
use crate::topology::{CONNECT_TIMEOUT, Managed, Topology, within};
use crate::transport::RedisTransport;

/// The largest message the bus publishes or delivers by default: well below
/// Redis' default 32 MB hard limit on a pub/sub client's output buffer.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 8 << 20;

/// The longest channel name (prefix included) the bus uses by default.
pub const DEFAULT_MAX_CHANNEL_LEN: usize = 64 << 10;

/// Builds a [`RedisBus`]: set the options, then connect to one server
/// ([`connect`](Self::connect)), a cluster
/// ([`connect_cluster`](Self::connect_cluster)) or the master sentinels
/// name ([`connect_sentinel`](Self::connect_sentinel)), or build on a
/// client configured by the caller (`build_from_*`).
///
/// ```no_run
/// # async fn run() -> Result<(), psrpc_redis::Error> {
/// let bus = psrpc_redis::RedisBus::builder()
///     .prefix("staging:")
///     .max_message_size(1 << 20)
///     .compression(psrpc::CompressionOptions::default().with_quality(6))
///     .connect("redis://user:secret@127.0.0.1:6379/0")
///     .await?;
/// # let _ = bus; Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until it connects"]
pub struct RedisBusBuilder {
    prefix: String,
    max_message_size: usize,
    max_channel_len: usize,
    compression: psrpc::CompressionOptions,
}

impl Default for RedisBusBuilder {
    fn default() -> Self {
        RedisBusBuilder {
            prefix: String::new(),
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            max_channel_len: DEFAULT_MAX_CHANNEL_LEN,
            compression: psrpc::CompressionOptions::DEFAULT,
        }
    }
}

impl RedisBusBuilder {
    /// Prepends `prefix` to every channel name, isolating the bus from
    /// buses with another prefix on the same Redis (see the
    /// [crate documentation](crate#sharing-one-redis-between-deployments)).
    /// Empty by default, as Go peers expect.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The largest message the bus publishes or delivers; default
    /// [`DEFAULT_MAX_MESSAGE_SIZE`]. Keep it well below Redis'
    /// `client-output-buffer-limit pubsub` (see the
    /// [crate docs](crate#limits)).
    pub fn max_message_size(mut self, n: usize) -> Self {
        self.max_message_size = n;
        self
    }

    /// Refuses channel names (prefix included) longer than `n` bytes;
    /// default [`DEFAULT_MAX_CHANNEL_LEN`].
    pub fn max_channel_len(mut self, n: usize) -> Self {
        self.max_channel_len = n;
        self
    }

    /// How the bus's clients and servers publish and read: gzip of large
    /// payloads when publishing (off by default), and the cap on
    /// decompressed payloads when reading. See the
    /// [crate documentation](crate#compression).
    pub fn compression(mut self, compression: psrpc::CompressionOptions) -> Self {
        self.compression = compression;
        self
    }

    /// Connects to the Redis at `url`
    /// (`redis://[[user]:password@]host:port[/db]`, `rediss://` with the
    /// `tls` feature; percent-encode reserved characters in the user and
    /// password). The URL is read by redis' own parser
    /// ([`redis::IntoConnectionInfo`]); to connect with a
    /// [`redis::ConnectionInfo`] built otherwise, give
    /// [`build_from_client`](Self::build_from_client) a client opened on it.
    ///
    /// Fails with [`Error::InvalidUrl`] if the URL is invalid, with
    /// [`Error::Connect`] if the server is unreachable or authentication
    /// fails.
    pub async fn connect(self, url: &str) -> Result<RedisBus, Error> {
        let info = url
            .into_connection_info()
            .map_err(|source| Error::InvalidUrl { source })?;
        let client = redis::Client::open(info).map_err(|source| Error::InvalidUrl { source })?;
        self.build_from_client(client).await
    }

    /// A bus over a client the caller configured (credentials, database,
    /// TLS, ...). Opens the connections and checks them with `PING`.
    pub async fn build_from_client(self, client: redis::Client) -> Result<RedisBus, Error> {
        self.build(Topology::Single(client), None).await
    }

    /// Connects to a Redis Cluster through any of its nodes' URLs (see the
    /// [crate documentation](crate#topologies)). Credentials go in the URLs.
    pub async fn connect_cluster<S: AsRef<str>>(self, urls: &[S]) -> Result<RedisBus, Error> {
        let infos = urls
            .iter()
            .map(|u| u.as_ref().into_connection_info())
            .collect::<redis::RedisResult<Vec<_>>>()
            .map_err(|source| Error::InvalidUrl { source })?;
        let nodes = infos
            .iter()
            .map(|i| redis::Client::open(i.clone()))
            .collect::<redis::RedisResult<Vec<_>>>()
            .map_err(|source| Error::InvalidUrl { source })?;
        if nodes.is_empty() {
            return Err(Error::NoClusterNode);
        }
        let cluster = ClusterClient::new(infos).map_err(|source| Error::InvalidUrl { source })?;
        self.build_from_cluster(nodes, cluster).await
    }

    /// A bus over a Redis Cluster: `nodes` are clients of cluster nodes for
    /// pub/sub and publishing (any node will do, the next after a failure),
    /// `cluster` the cluster client the queue locks go through. Both
    /// configured by the caller (credentials, TLS, ...).
    pub async fn build_from_cluster(
        self,
        nodes: Vec<redis::Client>,
        cluster: ClusterClient,
    ) -> Result<RedisBus, Error> {
        if nodes.is_empty() {
            return Err(Error::NoClusterNode);
        }
        let locks = within(CONNECT_TIMEOUT, cluster.get_async_connection())
            .await
            .map_err(|source| Error::Connect { source })?;
        let topology = Topology::Cluster {
            nodes,
            next: AtomicUsize::new(0),
        };
        self.build(topology, Some(locks)).await
    }

    /// Connects to the master named `service` by the sentinels at
    /// `sentinel_urls`, following it through failovers (see the
    /// [crate documentation](crate#topologies)). The master is reached
    /// without credentials; use
    /// [`build_from_sentinel`](Self::build_from_sentinel) to give some.
    pub async fn connect_sentinel<S: AsRef<str>>(
        self,
        sentinel_urls: &[S],
        service: &str,
    ) -> Result<RedisBus, Error> {
        let infos = sentinel_urls
            .iter()
            .map(|u| u.as_ref().into_connection_info())
            .collect::<redis::RedisResult<Vec<_>>>()
            .map_err(|source| Error::InvalidUrl { source })?;
        // An owned name: redis takes a `String` without its TLS feature and
        // any `AsRef<str>` with it.
        let name = String::from(service);
        let client = SentinelClient::build(infos, name, None, SentinelServerType::Master)
            .map_err(|source| Error::InvalidUrl { source })?;
        self.build_from_sentinel(client).await
    }

    /// A bus over a sentinel client the caller configured (master
    /// credentials, TLS, ...); it must ask for the master.
    pub async fn build_from_sentinel(self, client: SentinelClient) -> Result<RedisBus, Error> {
        let topology = Topology::Sentinel(tokio::sync::Mutex::new(client));
        self.build(topology, None).await
    }

    /// Opens the connections and starts the writer and the pub/sub
    /// manager; `cluster` takes the locks in a cluster, otherwise they
    /// share the publishing connection (their commands then travel in the
    /// same writes).
    ///
    /// Boxed: the future's type stays small for the callers' `Send` checks.
    fn build(
        self,
        topology: Topology,
        cluster: Option<ClusterConnection>,
    ) -> BoxFuture<'static, Result<RedisBus, Error>> {
        Box::pin(self.build_now(topology, cluster))
    }

    async fn build_now(
        self,
        topology: Topology,
        cluster: Option<ClusterConnection>,
    ) -> Result<RedisBus, Error> {
        let topology = Arc::new(topology);
        let publisher = Arc::new(Managed::new(topology.clone()));
        let locks = match cluster {
            Some(c) => Locks::Cluster(c),
            None => Locks::Managed(publisher.clone()),
        };
        let ping = redis::cmd("PING");
        let connect = |source| Error::Connect { source };
        publisher.query::<()>(&ping).await.map_err(connect)?;
        locks.query::<()>(&ping).await.map_err(connect)?;
        let pubsub_failed = |source| Error::PubSub { source };
        let mut pubsub = topology.pubsub().await.map_err(pubsub_failed)?;
        pubsub.ping::<()>().await.map_err(pubsub_failed)?;

        let shared = Arc::new(Shared::new(locks, self.max_message_size));
        let (publish_tx, publish_rx) = mpsc::channel(PUBLISH_QUEUE);
        let numsub = match &*topology {
            Topology::Cluster { .. } => None,
            _ => Some(publisher.clone()),
        };
        let drops = shared.drops.clone();
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let tasks = vec![
            tokio::spawn(writer(publish_rx, publisher.clone(), drops)),
            tokio::spawn(manager(topology, publisher, pubsub, cmd_rx, shared.clone())),
        ];
        let transport = RedisTransport {
            publish_tx,
            numsub,
            cmd_tx,
            shared,
            prefix: self.prefix,
            max_channel: self.max_channel_len,
            tasks: tokio::sync::Mutex::new(tasks),
        };
        Ok(RedisBus::new(transport, self.compression))
    }
}
