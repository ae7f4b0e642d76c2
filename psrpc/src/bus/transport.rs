//! The transport seam: [`Transport`], what a broker implements, and the
//! generic [`Bus`] that makes a [`MessageBus`] of any transport.

use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use tokio::sync::mpsc;

#[cfg(doc)]
use super::{Bus, MessageBus};
use super::{Channel, Members, Sink};
use crate::drops::{DropReason, Drops};
use crate::error::Result;

/// Why [`send_within`] did not queue an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueError {
    /// The receiving end is gone.
    Closed,
    /// The queue stayed full for the whole wait.
    Full,
}

/// The output of `fut` if it is ready when first polled; else waits for it
/// until `deadline()` at the latest, `None` when that passes first. For a
/// publish, which is nearly always taken at once: the deadline is only
/// asked for, and the timer only made, when it is not; the wait (the timer
/// and `fut`) is boxed, so that it is not room in the caller's future.
pub async fn ready_or_until<F: Future + Unpin>(
    mut fut: F,
    deadline: impl FnOnce() -> tokio::time::Instant,
) -> Option<F::Output> {
    if let std::task::Poll::Ready(out) = futures::poll!(&mut fut) {
        return Some(out);
    }
    Box::pin(tokio::time::timeout_at(deadline(), fut))
        .await
        .ok()
}

/// Queues `item` on `tx`: at once when there is room, else waiting at most
/// `wait` for some (a timer only when the queue is full). For a
/// transport's queue of publishes to the task that writes them.
pub async fn send_within<T>(
    tx: &mpsc::Sender<T>,
    item: T,
    wait: std::time::Duration,
) -> std::result::Result<(), QueueError> {
    match tx.try_send(item) {
        Ok(()) => Ok(()),
        Err(mpsc::error::TrySendError::Closed(_)) => Err(QueueError::Closed),
        Err(mpsc::error::TrySendError::Full(item)) => {
            let room = Box::pin(tx.send(item));
            match ready_or_until(room, || tokio::time::Instant::now() + wait).await {
                Some(Ok(())) => Ok(()),
                Some(Err(_)) => Err(QueueError::Closed),
                None => Err(QueueError::Full),
            }
        }
    }
}

/// What a message broker implements for psrpc: moving opaque bytes.
///
/// A transport publishes payloads as they are and listens on channels,
/// delivering what arrives into the [`Inbox`] it was given. It keeps no
/// subscribers of its own: which subscribers of a channel get a message,
/// what happens to one that is full, counting drops, the size limit and
/// compression all belong to the [`Bus`] that wraps it. The one place a
/// transport may look inside a payload is to find its [`Inbox`] when the
/// broker shares one subscription among several channels (NATS reads
/// `Msg.channel` for that).
///
/// The async methods return `Send` futures and are not boxed: a bus is
/// generic over its transport. Implement them with `async fn`.
pub trait Transport: Send + Sync + 'static {
    /// Publishes `payload` on `channel`, as it is. Fails with the error of
    /// [`check_channel`](Transport::check_channel) for a channel that check
    /// refuses: the transport checks here, where it builds the broker's name
    /// of the channel anyway, so a publish builds it once. The bus has
    /// checked the size.
    fn publish(&self, channel: &Channel, payload: Bytes)
    -> impl Future<Output = Result<()>> + Send;

    /// Starts listening on `channel`: as a member of the channel's queue when
    /// `queue` (the broker gives each message to one listening process), to
    /// every message otherwise. Messages go to `inbox`: with
    /// [`Inbox::deliver_fanout`] when listening to every message, with
    /// [`Inbox::deliver_queue`] as a queue member.
    ///
    /// Returns once the broker has the subscription in effect, so that a
    /// message published afterwards is received. The bus calls this when
    /// the channel gets its first subscriber of that kind, and drops the
    /// returned [`Listening`] when the last one leaves.
    fn listen(
        &self,
        channel: &Channel,
        queue: bool,
        inbox: Inbox,
    ) -> impl Future<Output = Result<Listening>> + Send;

    /// The tally of what was dropped on this transport and the bus and
    /// runtime above it (see [`crate::drops`]).
    fn drops(&self) -> &Arc<Drops>;

    /// The largest payload the broker takes, when it has a limit. The bus
    /// fails a larger publish with `resource_exhausted` before it reaches
    /// the transport, and drops (counting it) a larger message that
    /// arrives.
    fn max_payload(&self) -> Option<usize> {
        None
    }

    /// Checks, without touching the broker, that `channel` is a valid name
    /// here (see [`MessageBus::check_channel`]). The bus checks before
    /// every subscription, and [`publish`](Transport::publish) as it publishes.
    fn check_channel(&self, _channel: &Channel) -> Result<()> {
        Ok(())
    }

    /// How many subscriptions `channel` has on the broker, from every
    /// process, learnt without delivering anything (see
    /// [`MessageBus::listeners`]); `Ok(None)` when the broker cannot tell.
    fn listeners(&self, _channel: &Channel) -> impl Future<Output = Result<Option<usize>>> + Send {
        std::future::ready(Ok(None))
    }

    /// The buffer for a subscriber of `size` messages. The default,
    /// [`Sink::for_reader`], suits a transport whose reader must never wait.
    fn buffer(&self, size: usize) -> (Sink, mpsc::Receiver<Bytes>) {
        Sink::for_reader(size)
    }

    /// Whether the bus calls handler subscriptions
    /// ([`MessageBus::subscribe_handler`]) in the task that delivers into
    /// the [`Inbox`]. Only for a transport that delivers in the publisher's
    /// task (the local one); a broker's reader should not do the runtime's
    /// work, so the default is `false`: a task per handler reads a buffer.
    fn calls_handlers_inline(&self) -> bool {
        false
    }

    /// Sends what is queued for the broker, then stops. The bus has
    /// already stopped listening on every channel. The default has nothing
    /// to do.
    fn close(&self) -> impl Future<Output = Result<()>> + Send {
        std::future::ready(Ok(()))
    }
}

/// Keeps a transport listening on one channel; dropping it stops
/// listening. Made by [`Transport::listen`].
pub struct Listening {
    stop: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl Listening {
    /// A listening that runs `stop` when dropped.
    pub fn new(stop: impl FnOnce() + Send + Sync + 'static) -> Self {
        Listening {
            stop: Some(Box::new(stop)),
        }
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop();
        }
    }
}

impl std::fmt::Debug for Listening {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Listening")
    }
}

/// Where a transport delivers the messages of one channel: the channel's
/// subscribers in this bus. Cheap to clone. Delivering never waits (except
/// the local transport's publisher, which may).
#[derive(Clone)]
pub struct Inbox {
    pub(super) route: Arc<Route>,
}

/// Messages offered to full buffers of one channel, to wait for
/// ([`Inbox::offer`]).
pub(crate) struct Pending {
    route: Arc<Route>,
    full: Vec<(Sink, Bytes)>,
}

impl Pending {
    /// Waits, for each full buffer, until it takes the message or counts as
    /// stuck (then the message is dropped for it, counted).
    pub(crate) async fn wait(self) {
        let r = &self.route;
        for (sink, b) in self.full {
            sink.wait(b, &r.drops, &r.name).await;
        }
    }
}

/// One channel's subscribers in a bus.
pub(super) struct Route {
    /// The channel's name, for drop reports.
    pub(super) name: String,
    pub(super) members: RwLock<Arc<Members>>,
    pub(super) drops: Arc<Drops>,
    pub(super) max: Option<usize>,
    /// The transport's listening, fan-out and queue.
    pub(super) listening: Mutex<[Option<Listening>; 2]>,
    /// Serializes starting to listen.
    pub(super) starting: tokio::sync::Mutex<()>,
}

impl Route {
    pub(super) fn members(&self) -> Arc<Members> {
        self.members
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Changes the members (copy on write); returns the new set.
    pub(super) fn update(&self, f: impl FnOnce(&mut Members)) -> Arc<Members> {
        let mut cur = self.members.write().unwrap_or_else(|e| e.into_inner());
        let mut m = (**cur).clone();
        f(&mut m);
        *cur = Arc::new(m);
        cur.clone()
    }

    pub(super) fn listening(&self) -> std::sync::MutexGuard<'_, [Option<Listening>; 2]> {
        self.listening.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Inbox {
    /// The channel's name (its flat form), for logs.
    pub fn channel(&self) -> &str {
        &self.route.name
    }

    /// The tally drops are counted in.
    pub fn drops(&self) -> &Drops {
        &self.route.drops
    }

    /// Whether `payload` is within the size limit; counts it dropped if not.
    fn admits(&self, payload: &Bytes) -> bool {
        match self.route.max {
            Some(max) if payload.len() > max => {
                self.route.drops.record(
                    DropReason::TooLarge,
                    &self.route.name,
                    &format_args!(
                        "{} bytes, larger than the bus's maximum of {max}",
                        payload.len()
                    ),
                );
                false
            }
            _ => true,
        }
    }

    /// Gives `payload` to every fan-out subscriber, without waiting; a full
    /// one loses it (counted, see [`Sink`]).
    pub fn deliver_fanout(&self, payload: Bytes) {
        if self.admits(&payload) {
            let r = &self.route;
            r.members().deliver_fanout(payload, &r.drops, &r.name);
        }
    }

    /// Gives `payload` to one queue member, without waiting (see
    /// [`Sink`]). `Err(payload)` when the channel has no queue member left
    /// in this bus, for a transport that can hand it to another process.
    pub fn deliver_queue(&self, payload: Bytes) -> std::result::Result<(), Bytes> {
        if !self.admits(&payload) {
            return Ok(());
        }
        let r = &self.route;
        let members = r.members();
        if !members.has_queue() {
            return Err(payload);
        }
        members.deliver_queue(payload, &r.drops, &r.name)
    }

    /// Whether a queue message delivered now would be taken by a member. A
    /// transport that must do work before delivering a queue message (Redis
    /// takes a lock) asks first, so that a stuck member neither costs that
    /// work nor wins a message it would drop.
    pub fn queue_can_take(&self) -> bool {
        self.route.members().queue_can_take()
    }

    /// Whether the channel has queue members in this bus.
    pub fn has_queue(&self) -> bool {
        self.route.members().has_queue()
    }

    /// Gives `payload` to the fan-out subscribers (when `fanout`) and to
    /// one queue member (when `queue`) without waiting, as a publisher that
    /// may wait: what finds room is delivered at once; the full buffers
    /// (not yet stuck) come back as a [`Pending`] to wait for. For the
    /// local transport, which delivers in the publisher's task.
    pub(crate) fn offer(&self, payload: Bytes, fanout: bool, queue: bool) -> Option<Pending> {
        if !self.admits(&payload) {
            return None;
        }
        let r = &self.route;
        let full = r
            .members()
            .offer_all(payload, fanout, queue, &r.drops, &r.name);
        (!full.is_empty()).then(|| Pending {
            route: r.clone(),
            full,
        })
    }

    /// Whether both are the same channel of the same bus.
    pub(crate) fn same(&self, other: &Inbox) -> bool {
        Arc::ptr_eq(&self.route, &other.route)
    }

    /// How many subscribers the channel has in this bus.
    pub(crate) fn len(&self) -> usize {
        self.route.members().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Ready at once: its output, the deadline never asked for; pending:
    /// waited for until the deadline, `None` past it.
    #[tokio::test(start_paused = true)]
    async fn ready_or_until_times_only_the_wait() {
        let at_once = ready_or_until(std::future::ready(1), || unreachable!("no timer")).await;
        assert_eq!(at_once, Some(1));
        let soon = Box::pin(async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            2
        });
        let until = || tokio::time::Instant::now() + Duration::from_secs(1);
        assert_eq!(ready_or_until(soon, until).await, Some(2));
        let never = Box::pin(std::future::pending::<()>());
        assert_eq!(ready_or_until(never, until).await, None);
    }

    /// Room: queued at once; full: queued once room is made within the
    /// wait, `Full` when none is; no receiver: `Closed`.
    #[tokio::test(start_paused = true)]
    async fn send_within_waits_only_when_full() {
        let (tx, mut rx) = mpsc::channel(1);
        let wait = Duration::from_secs(1);
        assert_eq!(send_within(&tx, 1, wait).await, Ok(()));
        assert_eq!(send_within(&tx, 2, wait).await, Err(QueueError::Full));
        let reader = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let first = rx.recv().await;
            (first, rx)
        });
        assert_eq!(send_within(&tx, 3, wait).await, Ok(()));
        let (first, mut rx) = reader.await.unwrap();
        assert_eq!((first, rx.recv().await), (Some(1), Some(3)));
        drop(rx);
        assert_eq!(send_within(&tx, 4, wait).await, Err(QueueError::Closed));
    }
}
