//! The writer: the bus's publishes are queued in order and handed to
//! async-nats by one task, after every task that is ready to run has had
//! its turn, so that the publishes made together reach the socket in one
//! write.
//!
//! async-nats writes what its connection task holds each time that task
//! runs, and tokio runs a task woken by the running one right after it:
//! publishing straight from the runtime's tasks made one socket write (and,
//! on loopback, the broker's receive path inside it) per message when many
//! calls are in flight. The writer lets the ready tasks queue theirs first.
//! It costs a task hop and a turn of the scheduler, so the transport uses
//! it only while publishes come close together (a publish after a pause,
//! as in a lone call, goes to async-nats at once).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_nats::Client;
use bytes::Bytes;
use psrpc::bus::{QueueError, send_within};
use psrpc::drops::{DropReason, Drops};
use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, Result};

/// Room in the publish queue.
pub(crate) const PUBLISH_QUEUE: usize = 65_536;
/// Most publishes handed to async-nats in one turn of the writer.
const PUBLISH_BATCH: usize = 1_024;

/// What the writer is given.
pub(crate) enum Item {
    /// A publish of `payload` on `subject`.
    Publish(String, Bytes),
    /// Hand what is queued to async-nats, refuse anything later, then
    /// answer.
    Flush(oneshot::Sender<()>),
}

/// Counts a queued publish as handed to async-nats when dropped.
struct Handed<'a>(&'a AtomicUsize);

impl Drop for Handed<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Queues a publish; waits up to `wait` for room in a full queue.
pub(crate) async fn enqueue(
    tx: &mpsc::Sender<Item>,
    subject: String,
    payload: Bytes,
    wait: Duration,
) -> Result<()> {
    match send_within(tx, Item::Publish(subject, payload), wait).await {
        Ok(()) => Ok(()),
        Err(QueueError::Closed) => Err(Error::Closed),
        Err(QueueError::Full) => Err(Error::PublishQueueFull(wait)),
    }
}

/// Hands queued publishes to async-nats, in order, until every sender is
/// gone (then flushes the connection) or a [`Item::Flush`] arrived and
/// what was queued before it is handed on. A publish async-nats refuses
/// is dropped, counted.
pub(crate) async fn writer(
    mut rx: mpsc::Receiver<Item>,
    client: Client,
    drops: Arc<Drops>,
    queued: Arc<AtomicUsize>,
) {
    let mut batch = Vec::with_capacity(PUBLISH_BATCH);
    let mut flushed = Vec::new();
    while rx.recv_many(&mut batch, PUBLISH_BATCH).await > 0 {
        // The tasks ready now (other calls' handlers, the readers) run
        // first and queue their publishes too.
        tokio::task::yield_now().await;
        while batch.len() < PUBLISH_BATCH {
            match rx.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        for item in batch.drain(..) {
            match item {
                Item::Publish(subject, payload) => {
                    // Handed on below (or dropped, counted): a publish made
                    // from now on may go to async-nats directly.
                    let _handed = Handed(&queued);
                    // The subject was checked when queued; the size is
                    // checked again against the server of now (it may have
                    // changed with a reconnection) while the subject is
                    // still at hand for the count.
                    let max = client.max_payload();
                    if payload.len() > max {
                        let detail = format_args!(
                            "{} bytes, over the server's maximum of {max}",
                            payload.len()
                        );
                        drops.record(DropReason::TooLarge, &subject, &detail);
                        continue;
                    }
                    if let Err(e) = client.publish(subject, payload).await {
                        let detail = format_args!("publish failed: {e}");
                        drops.record(DropReason::Broker, "(nats publish)", &detail);
                    }
                }
                Item::Flush(done) => {
                    rx.close();
                    flushed.push(done);
                }
            }
        }
    }
    for done in flushed.drain(..) {
        let _ = done.send(());
    }
    // Every handle on the bus is gone (or it was closed): what was handed
    // to async-nats is written before the connection may be dropped.
    let _ = client.flush().await;
}
