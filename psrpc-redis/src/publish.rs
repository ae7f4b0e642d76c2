//! The writer: publishes are queued in order, and everything queued is sent
//! as one pipeline on the command connection.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use psrpc::bus::{QueueError, send_within};
use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, is_connection_error};
use crate::topology::Managed;

/// Room in the publish queue.
pub(crate) const PUBLISH_QUEUE: usize = 65_536;
/// Most publishes in one pipeline.
const PUBLISH_BATCH: usize = 4_096;
/// How long `publish` waits for room in a full publish queue.
const PUBLISH_WAIT: Duration = Duration::from_secs(1);

/// What the writer is given.
pub(crate) enum Item {
    /// `PUBLISH channel payload`.
    Publish(String, Bytes),
    /// Send what is queued, refuse anything later, then answer and stop.
    Flush(oneshot::Sender<()>),
}

/// Queues `msg` on `channel`; waits up to [`PUBLISH_WAIT`] for room.
pub(crate) async fn enqueue(
    tx: &mpsc::Sender<Item>,
    channel: String,
    msg: Bytes,
) -> Result<(), Error> {
    match send_within(tx, Item::Publish(channel, msg), PUBLISH_WAIT).await {
        Ok(()) => Ok(()),
        Err(QueueError::Closed) => Err(Error::Closed),
        Err(QueueError::Full) => Err(Error::QueueFull),
    }
}

/// Sends queued publishes, everything queued at once as one pipeline, until
/// every sender is gone or a [`Item::Flush`] arrives; after a flush the
/// queue is closed, what it still holds is sent, and the flush answered.
pub(crate) async fn writer(
    mut rx: mpsc::Receiver<Item>,
    conn: Arc<Managed>,
    drops: Arc<psrpc::drops::Drops>,
) {
    let mut batch = Vec::with_capacity(PUBLISH_BATCH);
    let mut flushed = Vec::new();
    while rx.recv_many(&mut batch, PUBLISH_BATCH).await > 0 {
        let mut msgs = Vec::with_capacity(batch.len());
        for item in batch.drain(..) {
            match item {
                Item::Publish(channel, msg) => msgs.push((channel, msg)),
                Item::Flush(done) => {
                    // Publishes queued before the close are still sent;
                    // later ones fail at once.
                    rx.close();
                    flushed.push(done);
                }
            }
        }
        if !msgs.is_empty() {
            send(&msgs, &conn, &drops).await;
        }
    }
    for done in flushed {
        let _ = done.send(());
    }
}

/// One pipeline of `PUBLISH`es; a failure drops them all, counted.
async fn send(msgs: &[(String, Bytes)], conn: &Managed, drops: &psrpc::drops::Drops) {
    let mut pipe = redis::pipe();
    for (channel, msg) in msgs {
        pipe.cmd("PUBLISH").arg(channel).arg(&msg[..]).ignore();
    }
    let sent = match conn.get().await {
        Ok((g, mut c)) => {
            let r = pipe.query_async::<()>(&mut c).await;
            if let Err(e) = &r
                && is_connection_error(e)
            {
                conn.failed(g);
            }
            r
        }
        Err(e) => Err(e),
    };
    if let Err(e) = sent {
        drops.add(
            psrpc::drops::DropReason::Broker,
            msgs.len() as u64,
            &msgs[0].0,
            &format_args!("publish failed: {e}"),
        );
    }
}
