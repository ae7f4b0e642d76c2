//! One NATS subscription of the bus: shared by the task that reads it and
//! whoever closes it, and the reader of a direct (unrouted) subscription.

use std::future::Future;
use std::sync::{Arc, Mutex};

use futures::{FutureExt, StreamExt};
use psrpc::CancellationToken;
use psrpc::bus::Inbox;

use crate::handback::HandBack;
use crate::lock;

/// A NATS subscription shared by the task reading it and the closer, which
/// takes it out to unsubscribe at once (see [`close_slot`]).
pub(crate) type Slot = Arc<Mutex<Option<async_nats::Subscriber>>>;

/// A slot holding `sub`.
pub(crate) fn slot(sub: async_nats::Subscriber) -> Slot {
    Arc::new(Mutex::new(Some(sub)))
}

/// The next message of the subscription in `slot`; `None` once it is closed.
pub(crate) fn next_message(slot: &Slot) -> impl Future<Output = Option<async_nats::Message>> + '_ {
    futures::future::poll_fn(move |cx| match lock(slot).as_mut() {
        Some(s) => s.poll_next_unpin(cx),
        None => std::task::Poll::Ready(None),
    })
}

/// Unsubscribes the subscription in `slot` before returning (the `UNSUB`
/// is queued on the connection ahead of anything sent afterwards, so a
/// later subscription's barrier proves the server dropped this one). A
/// queue subscription then hands what async-nats had already received for
/// it back to the group (see [`HandBack`]) instead of dropping it.
pub(crate) fn close_slot(slot: &Slot, subject: &str, queue: bool, hand: &Arc<HandBack>) {
    let Some(mut nats) = lock(slot).take() else {
        return;
    };
    // Queues the UNSUB without waiting when async-nats has room for it
    // (almost always); otherwise dropping the subscriber queues it.
    if async { nats.unsubscribe().await }.now_or_never().is_none() || !queue {
        return;
    }
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let (subject, hand) = (subject.to_owned(), hand.clone());
    rt.spawn(async move { hand_back_buffered(nats, &subject, &hand).await });
}

/// As [`close_slot`], waiting for the `UNSUB` to be queued and for what was
/// buffered to be handed back.
pub(crate) async fn close_slot_now(slot: &Slot, subject: &str, queue: bool, hand: &HandBack) {
    let Some(mut nats) = lock(slot).take() else {
        return;
    };
    if nats.unsubscribe().await.is_ok() && queue {
        hand_back_buffered(nats, subject, hand).await;
    }
}

/// Hands back what async-nats buffered for an unsubscribed queue
/// subscription (the stream ends after it).
async fn hand_back_buffered(mut nats: async_nats::Subscriber, subject: &str, hand: &HandBack) {
    while let Some(m) = nats.next().await {
        hand.hand_back(subject, m.payload, "closed queue subscription")
            .await;
    }
}

/// Reads a direct (unrouted) NATS subscription into `inbox` until it is
/// closed or stopped; a queue message nobody here takes any more is handed
/// back to the group.
pub(crate) async fn run_direct(
    nats: Slot,
    subject: String,
    queue: bool,
    inbox: Inbox,
    hand: Arc<HandBack>,
    stop: CancellationToken,
) {
    let cancelled = stop.cancelled();
    tokio::pin!(cancelled);
    loop {
        let msg = tokio::select! {
            biased;
            m = next_message(&nats) => match m {
                Some(m) => m,
                None => return,
            },
            _ = &mut cancelled => return,
        };
        if !queue {
            inbox.deliver_fanout(msg.payload);
        } else if let Err(b) = inbox.deliver_queue(msg.payload) {
            hand.hand_back(&subject, b, "closed queue subscription")
                .await;
        }
    }
}
