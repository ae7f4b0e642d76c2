//! The pub/sub connection's manager: applies subscribe commands, reconnects
//! and re-subscribes after a loss, and unsubscribes everything at close.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{PubSub, PubSubSink};
use tokio::sync::{mpsc, oneshot};

use crate::error::Error;
use crate::reader::read;
use crate::shared::Shared;
use crate::topology::{BACKOFF_MAX, BACKOFF_MIN, Managed, Topology};

/// How long Redis has to acknowledge `SUBSCRIBE` / `UNSUBSCRIBE`.
pub(crate) const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(5);

/// A change of the local subscriptions for the manager.
pub(crate) enum Command {
    /// Subscribe `channel` (if it still has subscribers), then answer.
    Subscribe {
        channel: String,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    /// Unsubscribe `channel` if it has no subscriber left.
    Unsubscribe { channel: String },
}

/// How [`serve`] ended.
enum Served {
    /// The connection is lost: reconnect.
    Lost,
    /// Every handle on the bus is gone.
    Gone,
    /// The bus was closed.
    Closed,
}

/// Owns the pub/sub connection until the bus is gone or closed.
pub(crate) async fn manager(
    topology: Arc<Topology>,
    publisher: Arc<Managed>,
    initial: PubSub,
    mut cmds: mpsc::UnboundedReceiver<Command>,
    shared: Arc<Shared>,
) {
    let mut next = Some(initial);
    let mut backoff = Duration::ZERO;
    loop {
        if cmds.is_closed() || shared.closed.is_cancelled() {
            return;
        }
        let pubsub = match next.take() {
            Some(p) => p,
            None => {
                let reconnect = async {
                    if !backoff.is_zero() {
                        tokio::time::sleep(backoff).await;
                    }
                    topology.pubsub().await
                };
                let r = tokio::select! {
                    _ = shared.closed.cancelled() => return,
                    r = reconnect => r,
                };
                backoff = (backoff * 2).clamp(BACKOFF_MIN, BACKOFF_MAX);
                match r {
                    Ok(p) => {
                        // Make the other connections notice the outage now
                        // rather than with the next publish or lock.
                        let _ = publisher.query::<()>(&redis::cmd("PING")).await;
                        let _ = shared.locks.query::<()>(&redis::cmd("PING")).await;
                        p
                    }
                    Err(source) => {
                        shared.lost(Error::PubSub { source });
                        continue;
                    }
                }
            }
        };
        let (sink, stream) = pubsub.split();
        // The channels the connection is subscribed to, as Redis confirmed.
        let mut subscribed = HashSet::new();
        let channels = shared.keys();
        if !channels.is_empty() {
            let want = |c: &str| shared.contains(c);
            let r = apply(&sink, &channels, want, &mut subscribed).await;
            match r.into_iter().find_map(Result::err) {
                None => tracing::info!("redis bus: re-subscribed {} channel(s)", channels.len()),
                Some(e) => {
                    shared.lost(e);
                    topology.failed();
                    continue;
                }
            }
        }
        shared.restored();
        backoff = Duration::ZERO;
        let mut reader = tokio::spawn(read(stream, shared.clone()));
        let served = serve(&mut cmds, &sink, &mut reader, &shared, &mut subscribed).await;
        match served {
            Served::Lost => {
                reader.abort();
                topology.failed();
                shared.lost(Error::ConnectionLost);
            }
            Served::Gone => {
                reader.abort();
                return;
            }
            Served::Closed => {
                reader.abort();
                // Everything Redis has, so that no subscription of this bus
                // is left on the server once `close` returns.
                let mut all: Vec<String> = subscribed.iter().cloned().collect();
                all.extend(
                    shared
                        .keys()
                        .into_iter()
                        .filter(|c| !subscribed.contains(c)),
                );
                let r = apply(&sink, &all, |_| false, &mut subscribed).await;
                if let Some(e) = r.into_iter().find_map(Result::err) {
                    tracing::debug!(error = %e, "redis bus: unsubscribing at close failed");
                }
                return;
            }
        }
    }
}

/// Brings the subscription of each of `channels` in line with `want` at
/// this moment: one `SUBSCRIBE` (wanted) or `UNSUBSCRIBE` per channel, all
/// pipelined, within [`SUBSCRIBE_TIMEOUT`]; the result of each, in order.
/// `subscribed` follows what Redis acknowledged.
async fn apply(
    sink: &PubSubSink,
    channels: &[String],
    want: impl Fn(&str) -> bool,
    subscribed: &mut HashSet<String>,
) -> Vec<Result<(), Error>> {
    let wanted: Vec<bool> = channels.iter().map(|c| want(c)).collect();
    // One channel per command: the client pairs one ack per request.
    let all = futures::future::join_all(channels.iter().zip(&wanted).map(|(channel, &want)| {
        let mut sink = sink.clone();
        async move {
            let r = if want {
                sink.subscribe(channel).await
            } else {
                sink.unsubscribe(channel).await
            };
            r.map_err(|source| Error::Subscribe {
                command: if want { "SUBSCRIBE" } else { "UNSUBSCRIBE" },
                channel: channel.clone(),
                source,
            })
        }
    }));
    let Ok(results) = tokio::time::timeout(SUBSCRIBE_TIMEOUT, all).await else {
        return channels
            .iter()
            .map(|channel| {
                Err(Error::SubscribeTimeout {
                    channel: channel.clone(),
                })
            })
            .collect();
    };
    for ((channel, want), r) in channels.iter().zip(wanted).zip(&results) {
        match (r, want) {
            (Ok(()), true) => {
                subscribed.insert(channel.clone());
            }
            (Ok(()), false) => {
                subscribed.remove(channel);
            }
            (Err(_), _) => {}
        }
    }
    results
}

/// Applies commands until the connection is lost, the bus is gone or
/// closed.
///
/// Commands queued together are reconciled as a batch (see [`apply`]);
/// waiting subscribers are answered once Redis acknowledged.
async fn serve(
    cmds: &mut mpsc::UnboundedReceiver<Command>,
    sink: &PubSubSink,
    reader: &mut tokio::task::JoinHandle<()>,
    shared: &Shared,
    subscribed: &mut HashSet<String>,
) -> Served {
    loop {
        let first = tokio::select! {
            _ = shared.closed.cancelled() => return Served::Closed,
            _ = &mut *reader => return Served::Lost,
            cmd = cmds.recv() => match cmd {
                None => return Served::Gone,
                Some(cmd) => cmd,
            },
        };
        let mut batch = vec![first];
        while let Ok(cmd) = cmds.try_recv() {
            batch.push(cmd);
        }
        let mut touched: Vec<String> = Vec::new();
        let mut waiting: HashMap<String, Vec<oneshot::Sender<Result<(), Error>>>> = HashMap::new();
        for cmd in batch {
            let channel = match cmd {
                Command::Subscribe { channel, reply } => {
                    waiting.entry(channel.clone()).or_default().push(reply);
                    channel
                }
                Command::Unsubscribe { channel } => channel,
            };
            if !touched.contains(&channel) {
                touched.push(channel);
            }
        }
        let want = |c: &str| shared.contains(c);
        let results = apply(sink, &touched, want, subscribed).await;
        let mut lost = false;
        for (channel, r) in touched.iter().zip(results) {
            lost |= r.is_err();
            for reply in waiting.remove(channel).unwrap_or_default() {
                let _ = reply.send(r.clone());
            }
        }
        if lost {
            return Served::Lost;
        }
    }
}
