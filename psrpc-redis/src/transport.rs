//! [`RedisTransport`]: the Redis side of the bus, under psrpc's generic
//! [`Bus`](psrpc::bus::Bus).

use std::sync::Arc;

use bytes::Bytes;
use psrpc::bus::{Channel, Inbox, Listening, Transport};
use psrpc::drops::Drops;
use psrpc::{ErrorCode, Result};
use tokio::sync::{mpsc, oneshot};

use crate::error::Error;
use crate::publish::{self, Item};
use crate::pubsub::{Command, SUBSCRIBE_TIMEOUT};
use crate::shared::{Shared, Target};
use crate::topology::Managed;

/// Moves psrpc's messages over Redis: the writer's pipelined `PUBLISH`es,
/// the shared pub/sub connection and its reader, the queue locks, `PUBSUB
/// NUMSUB`, and the connections to one server, a cluster or the master
/// sentinels name. Used through [`RedisBus`](crate::RedisBus), which wraps
/// it in psrpc's generic bus.
pub struct RedisTransport {
    pub(crate) publish_tx: mpsc::Sender<Item>,
    /// The command connection, for `PUBSUB NUMSUB`; `None` in a cluster,
    /// where that command only counts one node's subscribers.
    pub(crate) numsub: Option<Arc<Managed>>,
    pub(crate) cmd_tx: mpsc::UnboundedSender<Command>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) prefix: String,
    pub(crate) max_channel: usize,
    /// The writer and the manager, awaited by [`Transport::close`].
    pub(crate) tasks: tokio::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for RedisTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTransport")
            .field("prefix", &self.prefix)
            .field("connected", &*self.shared.connected.borrow())
            .finish()
    }
}

impl RedisTransport {
    /// The Redis channel of `channel`: the prefix, then the legacy name.
    pub(crate) fn name(&self, channel: &Channel) -> String {
        // Built for every publish: one allocation of the final size, no
        // formatting machinery.
        let mut name = String::with_capacity(self.prefix.len() + channel.legacy.len());
        name.push_str(&self.prefix);
        name.push_str(&channel.legacy);
        name
    }

    fn check_open(&self) -> Result<(), Error> {
        if self.shared.closed.is_cancelled() {
            return Err(Error::Closed);
        }
        Ok(())
    }
}

/// Stops listening as fan-out (`queue` false) or queue member on the Redis
/// channel `key`; unsubscribes when it was the last way of listening.
fn stop_listening(
    shared: &Shared,
    cmd_tx: &mpsc::UnboundedSender<Command>,
    key: &str,
    queue: bool,
) {
    let mut map = shared.routes();
    let Some(target) = map.get_mut(key) else {
        return;
    };
    if queue {
        target.queue = false;
    } else {
        target.fanout = false;
    }
    if !target.queue && !target.fanout {
        map.remove(key);
        let channel = key.to_owned();
        let _ = cmd_tx.send(Command::Unsubscribe { channel });
    }
}

impl Transport for RedisTransport {
    async fn publish(&self, channel: &Channel, payload: Bytes) -> Result<()> {
        self.check_channel(channel)?;
        self.check_open()?;
        let shared = &self.shared;
        if !*shared.connected.borrow() {
            let cause = Arc::new(shared.last_error());
            return Err(Error::Disconnected { cause }.into());
        }
        Ok(publish::enqueue(&self.publish_tx, self.name(channel), payload).await?)
    }

    /// One `SUBSCRIBE` per Redis channel, whether it is listened to as
    /// fan-out, queue member or both; returns once Redis acknowledged it.
    async fn listen(&self, channel: &Channel, queue: bool, inbox: Inbox) -> Result<Listening> {
        self.check_open()?;
        let key = self.name(channel);
        let subscribe = {
            let mut map = self.shared.routes();
            let target = map.entry(key.clone()).or_insert_with(|| Target {
                inbox: inbox.clone(),
                fanout: false,
                queue: false,
            });
            let first = !target.fanout && !target.queue;
            target.inbox = inbox;
            if queue {
                target.queue = true;
            } else {
                target.fanout = true;
            }
            first
        };
        let shared = Arc::downgrade(&self.shared);
        let cmd_tx = self.cmd_tx.clone();
        let stop_key = key.clone();
        // Made before subscribing, so that failing below undoes it.
        let listening = Listening::new(move || {
            if let Some(shared) = shared.upgrade() {
                stop_listening(&shared, &cmd_tx, &stop_key, queue);
            }
        });
        if !subscribe {
            // Already subscribed for the other kind (the bus starts one
            // listening of a channel at a time).
            return Ok(listening);
        }
        let (reply, ack) = oneshot::channel();
        let channel = key.clone();
        self.cmd_tx
            .send(Command::Subscribe { channel, reply })
            .map_err(|_| Error::Closed)?;
        let acked = match tokio::time::timeout(SUBSCRIBE_TIMEOUT, ack).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(Error::Closed),
            Err(_) => Err(Error::SubscribeTimeout { channel: key }),
        };
        acked?;
        Ok(listening)
    }

    fn drops(&self) -> &Arc<Drops> {
        &self.shared.drops
    }

    fn max_payload(&self) -> Option<usize> {
        Some(self.shared.max_message)
    }

    fn check_channel(&self, channel: &Channel) -> Result<()> {
        let len = self.prefix.len() + channel.legacy.len();
        if len > self.max_channel {
            return Err(psrpc::Error::new(
                ErrorCode::InvalidArgument,
                format!(
                    "redis: channel name of {len} bytes is longer than the bus's limit of {} bytes: {}",
                    self.max_channel,
                    psrpc::drops::Truncated(&channel.legacy)
                ),
            ));
        }
        Ok(())
    }

    /// `PUBSUB NUMSUB` of the (prefixed) channel: every subscriber on the
    /// server, Go's included; nothing is published. `None` in a Redis
    /// Cluster, where the command counts one node's subscribers only.
    async fn listeners(&self, channel: &Channel) -> Result<Option<usize>> {
        self.check_open()?;
        let Some(conn) = &self.numsub else {
            return Ok(None);
        };
        let name = self.name(channel);
        let counts: Vec<(String, usize)> = conn
            .query(redis::cmd("PUBSUB").arg("NUMSUB").arg(&name))
            .await
            .map_err(|source| Error::Command {
                command: "PUBSUB NUMSUB",
                source,
            })?;
        Ok(Some(counts.first().map_or(0, |(_, n)| *n)))
    }

    /// Unsubscribes every channel (the manager waits for Redis'
    /// acknowledgements), sends what the writer has queued, and stops both
    /// tasks. Closing again returns at once.
    async fn close(&self) -> Result<()> {
        let mut tasks = self.tasks.lock().await;
        if tasks.is_empty() {
            return Ok(());
        }
        let shared = &self.shared;
        // From now on calls fail; the manager unsubscribes and stops.
        shared.closed.cancel();
        // Publishes queued so far are sent; later ones are refused.
        let (done, flushed) = oneshot::channel();
        if self.publish_tx.send(Item::Flush(done)).await.is_ok() {
            let _ = flushed.await;
        }
        for task in tasks.drain(..) {
            let _ = task.await;
        }
        // Whatever a listen racing with the close added.
        shared.routes().clear();
        shared.connected.send_replace(false);
        tracing::debug!("redis bus: closed");
        Ok(())
    }
}
