//! The round-trip barrier that makes a subscription effective before
//! `subscribe` returns.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::Client;
use bytes::Bytes;
use psrpc::CancellationToken;

use crate::error::BarrierError;
use crate::lock;
use crate::slot::{Slot, next_message, slot};

/// How long a subscription waits for the server to confirm it.
pub(crate) const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Proves that the server has processed everything this connection sent so
/// far: a message published to a private inbox this connection subscribes
/// comes back only after the server went through every earlier operation of
/// the connection (a NATS server handles one connection's operations in
/// order). async-nats' `flush` only writes the socket and cannot tell.
pub(crate) struct Barrier {
    client: Client,
    /// The inbox, subscribed on first use.
    inbox: tokio::sync::OnceCell<Inbox>,
    /// Stops the inbox's reader, which then unsubscribes it.
    stop: CancellationToken,
}

struct Inbox {
    subject: String,
    next: AtomicU64,
    /// The highest sequence number that came back.
    seen: tokio::sync::watch::Receiver<u64>,
    nats: Slot,
}

impl Barrier {
    /// A barrier on `client`'s connection.
    pub(crate) fn new(client: Client) -> Barrier {
        Barrier {
            client,
            inbox: tokio::sync::OnceCell::new(),
            stop: CancellationToken::new(),
        }
    }

    /// Returns once the server has processed every operation this
    /// connection sent before the call.
    pub(crate) async fn sync(&self) -> Result<(), BarrierError> {
        let inbox = self.inbox.get_or_try_init(|| self.subscribe()).await?;
        let n = inbox.next.fetch_add(1, Ordering::Relaxed);
        self.client
            .publish(
                inbox.subject.clone(),
                Bytes::copy_from_slice(&n.to_be_bytes()),
            )
            .await
            .map_err(BarrierError::Publish)?;
        let mut seen = inbox.seen.clone();
        match tokio::time::timeout(SUBSCRIBE_TIMEOUT, seen.wait_for(|s| *s >= n)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(BarrierError::Closed),
            Err(_) => Err(BarrierError::Timeout(SUBSCRIBE_TIMEOUT)),
        }
    }

    /// Subscribes the inbox and starts its reader, which ends (and
    /// unsubscribes) when the barrier is stopped or dropped.
    async fn subscribe(&self) -> Result<Inbox, BarrierError> {
        if self.stop.is_cancelled() {
            return Err(BarrierError::Closed);
        }
        let subject = self.client.new_inbox();
        let nats = slot(
            self.client
                .subscribe(subject.clone())
                .await
                .map_err(BarrierError::Subscribe)?,
        );
        let (tx, seen) = tokio::sync::watch::channel(0u64);
        let (reader, stop) = (nats.clone(), self.stop.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tx.closed() => break,
                    _ = stop.cancelled() => break,
                    m = next_message(&reader) => match m {
                        Some(m) => {
                            let Ok(n) = <[u8; 8]>::try_from(&m.payload[..]) else {
                                continue;
                            };
                            let n = u64::from_be_bytes(n);
                            tx.send_if_modified(|s| {
                                let newer = n > *s;
                                if newer {
                                    *s = n;
                                }
                                newer
                            });
                        }
                        None => break,
                    },
                }
            }
            let taken = lock(&reader).take();
            if let Some(mut sub) = taken {
                let _ = sub.unsubscribe().await;
            }
        });
        Ok(Inbox {
            subject,
            next: AtomicU64::new(1),
            seen,
            nats,
        })
    }

    /// Stops the barrier: its inbox is unsubscribed (the `UNSUB` queued on
    /// the connection) before this returns, when it was subscribed.
    pub(crate) async fn close(&self) {
        self.stop.cancel();
        if let Some(inbox) = self.inbox.get() {
            let taken = lock(&inbox.nats).take();
            if let Some(mut sub) = taken {
                let _ = sub.unsubscribe().await;
            }
        }
    }
}
