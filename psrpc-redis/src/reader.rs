//! The pub/sub reader: reads the shared pub/sub connection and hands each
//! message to its channel's inbox, queue messages once their lock is won.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt};
use psrpc::bus::Inbox;
use psrpc::drops::DropReason;
use redis::aio::PubSubStream;

use crate::locks::{LOCK_BATCH, LOCK_BATCHES_IN_FLIGHT};
use crate::shared::Shared;

/// A queue message waiting for its lock: where it goes, and the payload.
type Pending = (Inbox, Bytes);

/// Queue messages waiting for their locks: resolves to those this bus won,
/// in order.
type LockFuture = Pin<Box<dyn Future<Output = Vec<Pending>> + Send>>;

/// Reads the pub/sub connection and dispatches, until it is lost.
///
/// Fan-out subscribers get each message at once. Queue messages first take
/// their locks: the locks of the messages read together go as one
/// pipeline, several pipelines are in flight at once (up to
/// [`LOCK_BATCHES_IN_FLIGHT`]), and won messages are delivered in arrival
/// order.
pub(crate) async fn read(mut stream: PubSubStream, shared: Arc<Shared>) {
    let mut locks: FuturesOrdered<LockFuture> = FuturesOrdered::new();
    let mut open = true;
    let mut waiting: Vec<Pending> = Vec::new();
    while open || !locks.is_empty() {
        tokio::select! {
            biased;
            Some(won) = locks.next(), if !locks.is_empty() => {
                for (inbox, msg) in won {
                    deliver_queue(&shared, &inbox, msg);
                }
            }
            msg = stream.next(), if open && locks.len() < LOCK_BATCHES_IN_FLIGHT => {
                let mut next = msg;
                loop {
                    let Some(msg) = next else {
                        // Lost: deliver what is won already, then end.
                        open = false;
                        break;
                    };
                    if let Some(queued) = deliver(&shared, &msg) {
                        waiting.push(queued);
                    }
                    if waiting.len() >= LOCK_BATCH {
                        break;
                    }
                    // More already read? Then their locks join this batch.
                    match stream.next().now_or_never() {
                        Some(m) => next = m,
                        None => break,
                    }
                }
                if !waiting.is_empty() {
                    let batch = std::mem::take(&mut waiting);
                    let shared = shared.clone();
                    locks.push_back(Box::pin(async move {
                        let payloads: Vec<Bytes> = batch.iter().map(|(_, p)| p.clone()).collect();
                        let won = shared.locks.take(&payloads, &shared.drops).await;
                        batch
                            .into_iter()
                            .zip(won)
                            .filter_map(|(m, won)| won.then_some(m))
                            .collect()
                    }));
                }
            }
        }
    }
}

/// Hands one message read from Redis to its channel's inbox: at once to
/// the fan-out subscribers; returns it if a queue member can take it, to
/// be delivered once its lock is won.
fn deliver(shared: &Shared, msg: &redis::Msg) -> Option<Pending> {
    let channel = msg.get_channel_name();
    let (len, max) = (msg.get_payload_bytes().len(), shared.max_message);
    if len > max {
        let detail = format_args!("{len} bytes, over the bus's maximum of {max}");
        shared.drops.record(DropReason::TooLarge, channel, &detail);
        return None;
    }
    let target = shared.get(channel)?;
    // A lock only for a message a member can take: stuck members neither
    // cost a round trip nor win messages that another process could serve.
    let queue = target.queue && target.inbox.queue_can_take();
    if target.queue && !queue {
        let detail = "every queue subscriber full, lock not taken";
        shared
            .drops
            .record(DropReason::SlowConsumer, channel, &detail);
    }
    if !queue && !target.fanout {
        return None;
    }
    let payload = Bytes::copy_from_slice(msg.get_payload_bytes());
    if target.fanout {
        target.inbox.deliver_fanout(payload.clone());
    }
    queue.then_some((target.inbox, payload))
}

/// Delivers a won queue message to one of the channel's queue subscribers
/// (round-robin, without waiting, see [`psrpc::bus::Sink`]).
fn deliver_queue(shared: &Shared, inbox: &Inbox, msg: Bytes) {
    if inbox.deliver_queue(msg).is_err() {
        shared.drops.record(
            DropReason::NoRoute,
            inbox.channel(),
            &"queue subscribers closed after the lock was won",
        );
    }
}
