//! The dispatch every bus shares: a subscriber's buffer ([`Sink`], with
//! psrpc's slow-consumer policy) and the subscribers of one channel
//! ([`Members`]: fan-out to all, a queue message to one in turn).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::Handler;
use crate::drops::{DropReason, Drops};

/// The writing end of one subscriber's buffer, as a bus dispatches to it.
///
/// This is psrpc's slow-consumer policy, the same on every bus:
///
/// - a subscriber buffers up to `size` messages (the size it subscribed
///   with); a message that finds room is delivered at once;
/// - a subscriber whose buffer is full is *behind*. A bus whose shared
///   reader must never wait (Redis, NATS) lets it buffer up to `overflow`
///   more, so that a burst costs a subscriber that keeps reading nothing;
///   the local bus has no overflow and its publisher waits for room
///   instead;
/// - a subscriber that took nothing for `stuck_after` while behind is
///   *stuck*: every message for it that does not fit its buffer is dropped
///   at once, until it reads again;
/// - a message that finds the buffer and the overflow full is dropped.
///
/// Every drop is counted in the bus's [`Drops`] (reason
/// [`DropReason::SlowConsumer`]) and logged rate-limited with the channel.
/// Nothing else is held for a subscriber, so a stuck one costs at most
/// `size + overflow` messages of memory, and dispatching never waits on it
/// (except the local bus's publisher, once, for at most `stuck_after`).
#[derive(Clone)]
pub struct Sink {
    inner: Arc<SinkInner>,
}

struct SinkInner {
    tx: mpsc::Sender<Bytes>,
    size: usize,
    stuck_after: Duration,
    /// Messages ever put in the buffer.
    pushed: AtomicU64,
    /// While behind: how many messages the reader had taken, and when that
    /// was first seen (no progress since).
    behind: Mutex<Option<(u64, Instant)>>,
}

/// What became of a message offered to a [`Sink`].
#[derive(Debug)]
pub(crate) enum Offer {
    /// In the subscriber's buffer.
    Taken,
    /// The buffer and its overflow are full but the subscriber is not stuck
    /// (yet): the message is given back, to wait for room
    /// ([`Sink::wait`]) or to drop ([`Sink::drop_full`]).
    Full(Bytes),
    /// Dropped for this subscriber (stuck), counted and logged.
    Dropped,
    /// The subscriber is gone: the message is given back.
    Gone(Bytes),
}

/// How many messages in all a subscriber of a networked bus may hold while
/// it is behind but still reading: what nats.go and async-nats allow one
/// subscription by default. A burst up to this costs a healthy subscriber
/// nothing; a stuck one holds at most this much.
pub const READER_PENDING_LIMIT: usize = 64 * 1024;

/// How long a subscriber of a networked bus may take nothing while behind
/// before it counts as stuck (and loses, at once, what does not fit its own
/// buffer). Long enough that a loaded but healthy process is not taken for
/// stuck; short enough that a stuck one stops growing within a second.
pub const READER_STUCK_AFTER: Duration = Duration::from_secs(1);

impl Sink {
    /// The buffer of a subscriber of a networked bus, whose shared reader
    /// never waits: `size` messages, an overflow up to
    /// [`READER_PENDING_LIMIT`] in all (at least `size` more), stuck after
    /// [`READER_STUCK_AFTER`].
    pub fn for_reader(size: usize) -> (Sink, mpsc::Receiver<Bytes>) {
        let size = size.max(1);
        let overflow = READER_PENDING_LIMIT.saturating_sub(size).max(size);
        Sink::new(size, overflow, READER_STUCK_AFTER)
    }

    /// A subscriber buffer of `size` messages (at least 1), `overflow` more
    /// while it is behind but reading, that counts as stuck after
    /// `stuck_after` without reading; and the receiving end for its
    /// [`RawSubscription`](super::RawSubscription).
    pub fn new(
        size: usize,
        overflow: usize,
        stuck_after: Duration,
    ) -> (Sink, mpsc::Receiver<Bytes>) {
        let size = size.max(1);
        let (tx, rx) = mpsc::channel(size.saturating_add(overflow));
        let inner = SinkInner {
            tx,
            size,
            stuck_after,
            pushed: AtomicU64::new(0),
            behind: Mutex::new(None),
        };
        (
            Sink {
                inner: Arc::new(inner),
            },
            rx,
        )
    }

    /// How many messages are buffered.
    pub fn len(&self) -> usize {
        let tx = &self.inner.tx;
        tx.max_capacity() - tx.capacity()
    }

    /// Whether nothing is buffered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the subscriber is gone.
    pub fn is_closed(&self) -> bool {
        self.inner.tx.is_closed()
    }

    fn try_push(&self, msg: Bytes) -> Offer {
        match self.inner.tx.try_send(msg) {
            Ok(()) => {
                self.inner.pushed.fetch_add(1, Ordering::Relaxed);
                Offer::Taken
            }
            Err(mpsc::error::TrySendError::Full(b)) => Offer::Full(b),
            Err(mpsc::error::TrySendError::Closed(b)) => Offer::Gone(b),
        }
    }

    /// Delivers `msg` if the buffer (without the overflow) has room.
    fn offer_room(&self, msg: Bytes) -> Offer {
        if self.len() < self.inner.size {
            self.try_push(msg)
        } else {
            Offer::Full(msg)
        }
    }

    /// How long the subscriber has been behind without reading.
    fn stalled_for(&self) -> Duration {
        let taken = self
            .inner
            .pushed
            .load(Ordering::Relaxed)
            .saturating_sub(self.len() as u64);
        let now = Instant::now();
        let mut behind = self.inner.behind.lock().unwrap_or_else(|e| e.into_inner());
        match *behind {
            Some((t, since)) if t == taken => now.saturating_duration_since(since),
            _ => {
                *behind = Some((taken, now));
                Duration::ZERO
            }
        }
    }

    /// Whether a message offered now would be taken (room in the buffer, or
    /// in the overflow while not stuck).
    pub fn can_take(&self) -> bool {
        if self.is_closed() {
            return false;
        }
        let len = self.len();
        len < self.inner.size || (len < self.inner.tx.max_capacity() && !self.stuck())
    }

    /// Whether the subscriber is behind and took nothing for `stuck_after`.
    fn stuck(&self) -> bool {
        self.stalled_for() >= self.inner.stuck_after
    }

    /// Offers `msg` without waiting (see the policy above).
    pub(crate) fn offer(&self, msg: Bytes, drops: &Drops, channel: &str) -> Offer {
        let msg = match self.offer_room(msg) {
            Offer::Full(b) => b,
            other => return other,
        };
        if self.stuck() {
            drops.record(
                DropReason::SlowConsumer,
                channel,
                &format_args!("subscriber stuck for {:?}", self.inner.stuck_after),
            );
            return Offer::Dropped;
        }
        self.try_push(msg)
    }

    /// Offers `msg` without waiting, dropping it (counted) when it does not
    /// fit: what a bus's shared reader does.
    #[cfg(test)]
    fn offer_or_drop(&self, msg: Bytes, drops: &Drops, channel: &str) -> Offer {
        match self.offer(msg, drops, channel) {
            Offer::Full(_) => {
                self.drop_full(drops, channel);
                Offer::Dropped
            }
            other => other,
        }
    }

    /// Counts a message dropped because the buffer and overflow were full.
    pub(crate) fn drop_full(&self, drops: &Drops, channel: &str) {
        drops.record(
            DropReason::SlowConsumer,
            channel,
            &format_args!("subscriber buffer full ({} messages)", self.len()),
        );
    }

    /// After [`Offer::Full`]: waits for room until the subscriber counts as
    /// stuck, then drops `msg` for it (counted). Only for a publisher that
    /// may wait (the local bus); never in a shared reader.
    pub(crate) async fn wait(&self, msg: Bytes, drops: &Drops, channel: &str) -> Offer {
        let left = self.inner.stuck_after.saturating_sub(self.stalled_for());
        match tokio::time::timeout(left, self.inner.tx.send(msg)).await {
            Ok(Ok(())) => {
                self.inner.pushed.fetch_add(1, Ordering::Relaxed);
                Offer::Taken
            }
            Ok(Err(e)) => Offer::Gone(e.0),
            Err(_) => {
                drops.record(
                    DropReason::SlowConsumer,
                    channel,
                    &format_args!("subscriber stuck for {:?}", self.inner.stuck_after),
                );
                Offer::Dropped
            }
        }
    }
}

/// Calls a handler with `msg`. A panic stops here: the message is counted
/// as dropped and logged, and the task that delivers (a publisher, or a
/// broker's reader serving every subscription of its connection) goes on.
fn call(h: &Handler, msg: Bytes, drops: &Drops, channel: &str) {
    let called = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| h(msg)));
    if let Err(panic) = called {
        let what = crate::error::panic_message(panic.as_ref());
        let detail = format_args!("the handler panicked: {what}");
        drops.record(DropReason::Panicked, channel, &detail);
    }
}

/// The subscribers of one channel in one bus: fan-out ones (every one gets
/// every message) and queue members (one gets each message, in turn), with
/// the dispatch every bus uses (see [`Sink`] for the slow-consumer policy).
///
/// A subscriber is a buffer ([`Sink`]) or a [`Handler`], called by the task
/// that delivers (every handler on the local bus, the publisher's task;
/// the handlers of `subscribe_inline` on the others, the broker's reader),
/// which never is full.
///
/// A bus keeps one per channel, replaced whole (copy on write) when a
/// subscriber comes or goes, so dispatching reads it without a lock.
#[derive(Default, Clone)]
pub(crate) struct Members {
    fanout: Vec<(u64, Sink)>,
    queue: Vec<(u64, Sink)>,
    fanout_handlers: Vec<(u64, Handler)>,
    queue_handlers: Vec<(u64, Handler)>,
    rr: Arc<AtomicUsize>,
}

impl Members {
    /// Adds subscriber `id`, as a queue member when `queue`.
    pub(crate) fn add(&mut self, id: u64, sink: Sink, queue: bool) {
        if queue {
            self.queue.push((id, sink));
        } else {
            self.fanout.push((id, sink));
        }
    }

    /// Adds handler `id`, as a queue member when `queue`.
    pub(crate) fn add_handler(&mut self, id: u64, handler: Handler, queue: bool) {
        if queue {
            self.queue_handlers.push((id, handler));
        } else {
            self.fanout_handlers.push((id, handler));
        }
    }

    /// Removes subscriber `id`.
    pub(crate) fn remove(&mut self, id: u64) {
        self.fanout.retain(|(i, _)| *i != id);
        self.queue.retain(|(i, _)| *i != id);
        self.fanout_handlers.retain(|(i, _)| *i != id);
        self.queue_handlers.retain(|(i, _)| *i != id);
    }

    /// Whether there is no subscriber.
    pub(crate) fn is_empty(&self) -> bool {
        !self.has_fanout() && !self.has_queue()
    }

    /// How many subscribers there are, fan-out and queue.
    pub(crate) fn len(&self) -> usize {
        self.fanout.len()
            + self.queue.len()
            + self.fanout_handlers.len()
            + self.queue_handlers.len()
    }

    /// Whether there are fan-out subscribers.
    pub(crate) fn has_fanout(&self) -> bool {
        !self.fanout.is_empty() || !self.fanout_handlers.is_empty()
    }

    /// Whether there are queue members.
    pub(crate) fn has_queue(&self) -> bool {
        !self.queue.is_empty() || !self.queue_handlers.is_empty()
    }

    /// Whether a queue message offered now would be taken by a member (see
    /// [`Sink::can_take`]).
    pub(crate) fn queue_can_take(&self) -> bool {
        !self.queue_handlers.is_empty() || self.queue.iter().any(|(_, s)| s.can_take())
    }

    /// Gives `msg` to every fan-out subscriber, without waiting; returns
    /// the buffers that were full but not stuck, with the message, for a
    /// publisher that may wait ([`Sink::wait`]), and `msg` itself when
    /// `keep` (for a queue member). The last subscriber gets `msg` itself
    /// unless it is kept: a clone of a message made from a `Vec` allocates.
    fn offer_fanout<'a>(
        &'a self,
        msg: Bytes,
        keep: bool,
        drops: &Drops,
        channel: &str,
    ) -> (Vec<(&'a Sink, Bytes)>, Option<Bytes>) {
        let mut left = self.fanout_handlers.len() + self.fanout.len();
        let mut msg = Some(msg);
        let mut next = || {
            left -= 1;
            match (&msg, left == 0 && !keep) {
                (_, true) => msg.take(),
                (Some(m), false) => Some(m.clone()),
                (None, false) => None,
            }
        };
        for (_, h) in &self.fanout_handlers {
            if let Some(m) = next() {
                call(h, m, drops, channel);
            }
        }
        let mut full = Vec::new();
        for (_, sink) in &self.fanout {
            if let Some(m) = next()
                && let Offer::Full(b) = sink.offer(m, drops, channel)
            {
                full.push((sink, b));
            }
        }
        (full, msg)
    }

    /// Gives `msg` to one queue member without waiting (handlers and
    /// buffers in proportion, buffers in turn preferring room).
    fn offer_queue<'a>(&'a self, msg: Bytes, drops: &Drops, channel: &str) -> QueuePick<'a> {
        let (nh, nc) = (self.queue_handlers.len(), self.queue.len());
        if nh > 0 && (nc == 0 || self.rr.fetch_add(1, Ordering::Relaxed) % (nh + nc) < nh) {
            let i = if nh > 1 {
                self.rr.fetch_add(1, Ordering::Relaxed) % nh
            } else {
                0
            };
            call(&self.queue_handlers[i].1, msg, drops, channel);
            return QueuePick::Done;
        }
        pick_queue(&self.queue, &self.rr, msg, drops, channel)
    }

    /// Gives `msg` to every fan-out subscriber, without waiting, dropping
    /// it (counted) for those that are full.
    pub(crate) fn deliver_fanout(&self, msg: Bytes, drops: &Drops, channel: &str) {
        for (sink, _) in self.offer_fanout(msg, false, drops, channel).0 {
            sink.drop_full(drops, channel);
        }
    }

    /// Gives `msg` to one queue member without waiting: in turn, preferring
    /// a member with room in its buffer, then one behind but not stuck with
    /// room in its overflow; if all are full it is dropped (counted).
    /// `Err(msg)` when there is no member left.
    pub(crate) fn deliver_queue(
        &self,
        msg: Bytes,
        drops: &Drops,
        channel: &str,
    ) -> std::result::Result<(), Bytes> {
        match self.offer_queue(msg, drops, channel) {
            QueuePick::Done => Ok(()),
            QueuePick::Full(sink, _) => {
                sink.drop_full(drops, channel);
                Ok(())
            }
            QueuePick::NoMember(msg) => Err(msg),
        }
    }

    /// Gives `msg` to the fan-out subscribers (when `fanout`) and one queue
    /// member (when `queue`) without waiting, as a publisher that may wait
    /// does: returns the full buffers (not yet stuck) with the message, to
    /// wait for ([`Sink::wait`]) until each makes room or counts as stuck.
    pub(crate) fn offer_all(
        &self,
        msg: Bytes,
        fanout: bool,
        queue: bool,
        drops: &Drops,
        channel: &str,
    ) -> Vec<(Sink, Bytes)> {
        let queue = queue && self.has_queue();
        let (mut full, msg): (Vec<(Sink, Bytes)>, _) = if fanout {
            let (full, msg) = self.offer_fanout(msg, queue, drops, channel);
            let full = full.into_iter().map(|(s, b)| (s.clone(), b)).collect();
            (full, msg)
        } else {
            (Vec::new(), Some(msg))
        };
        if queue
            && let Some(msg) = msg
            && let QueuePick::Full(sink, b) = self.offer_queue(msg, drops, channel)
        {
            full.push((sink.clone(), b));
        }
        full
    }
}

/// What [`pick_queue`] did with a queue message.
enum QueuePick<'a> {
    /// Delivered or dropped (counted).
    Done,
    /// Every live member is full, none stuck: the first such one and the message.
    Full(&'a Sink, Bytes),
    /// Every member is gone.
    NoMember(Bytes),
}

fn pick_queue<'a>(
    sinks: &'a [(u64, Sink)],
    rr: &AtomicUsize,
    msg: Bytes,
    drops: &Drops,
    channel: &str,
) -> QueuePick<'a> {
    let n = sinks.len();
    if n == 0 {
        return QueuePick::NoMember(msg);
    }
    let start = if n > 1 {
        rr.fetch_add(1, Ordering::Relaxed)
    } else {
        0
    };
    let mut msg = msg;
    // First a member with room in its buffer, in turn.
    let mut live = 0;
    for k in 0..n {
        let sink = &sinks[(start + k) % n].1;
        msg = match sink.offer_room(msg) {
            Offer::Taken | Offer::Dropped => return QueuePick::Done,
            Offer::Full(b) => {
                live += 1;
                b
            }
            Offer::Gone(b) => b,
        };
    }
    if live == 0 {
        return QueuePick::NoMember(msg);
    }
    // Then one that is behind but not stuck, in its overflow.
    let mut first_full = None;
    for k in 0..n {
        let sink = &sinks[(start + k) % n].1;
        if sink.is_closed() || sink.stuck() {
            continue;
        }
        msg = match sink.try_push(msg) {
            Offer::Taken | Offer::Dropped => return QueuePick::Done,
            Offer::Full(b) => {
                first_full.get_or_insert(sink);
                b
            }
            Offer::Gone(b) => b,
        };
    }
    match first_full {
        Some(sink) => QueuePick::Full(sink, msg),
        None => {
            drops.record(
                DropReason::SlowConsumer,
                channel,
                &"every queue member stuck",
            );
            QueuePick::Done
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(i: u8) -> Bytes {
        Bytes::from(vec![i])
    }

    /// A handler that panics costs the delivering task and the other
    /// subscribers nothing: the message is counted dropped for it.
    #[test]
    fn a_panicking_handler_is_contained() {
        use std::sync::atomic::AtomicUsize;
        let drops = Drops::default();
        let got = Arc::new(AtomicUsize::new(0));
        let mut m = Members::default();
        m.add_handler(1, Arc::new(|_| panic!("handler bug")), false);
        let g = got.clone();
        m.add_handler(
            2,
            Arc::new(move |_| {
                g.fetch_add(1, Ordering::SeqCst);
            }),
            false,
        );
        m.add_handler(3, Arc::new(|_| panic!("queue handler bug")), true);
        m.deliver_fanout(msg(1), &drops, "c");
        assert_eq!(m.deliver_queue(msg(2), &drops, "c"), Ok(()));
        assert_eq!(got.load(Ordering::SeqCst), 1, "the other subscriber got it");
        assert_eq!(drops.count(DropReason::Panicked), 2);
    }

    /// A reader that never waits: the buffer, then the overflow, then drops,
    /// each counted; what is held never exceeds size + overflow.
    #[test]
    fn overflow_then_drop_never_waits() {
        let drops = Drops::default();
        let (sink, rx) = Sink::new(2, 2, Duration::MAX);
        let got: Vec<_> = (0..10)
            .map(|i| matches!(sink.offer_or_drop(msg(i), &drops, "c"), Offer::Taken))
            .collect();
        assert_eq!(got.iter().filter(|t| **t).count(), 4);
        assert_eq!((rx.len(), rx.max_capacity()), (4, 4));
        assert_eq!(drops.count(DropReason::SlowConsumer), 6);
        drop(rx);
        assert!(matches!(
            sink.offer_or_drop(msg(0), &drops, "c"),
            Offer::Gone(_)
        ));
    }

    /// A subscriber that reads nothing for `stuck_after` while full loses
    /// messages at once; one read makes it a live subscriber again.
    #[tokio::test]
    async fn stuck_after_timeout_until_read() {
        let drops = Drops::default();
        let (sink, mut rx) = Sink::new(1, 0, Duration::from_millis(20));
        assert!(matches!(sink.offer(msg(0), &drops, "c"), Offer::Taken));
        let Offer::Full(b) = sink.offer(msg(1), &drops, "c") else {
            panic!("full, not yet stuck");
        };
        assert!(matches!(sink.wait(b, &drops, "c").await, Offer::Dropped));
        // Stuck now: dropped without waiting.
        assert!(matches!(sink.offer(msg(2), &drops, "c"), Offer::Dropped));
        assert_eq!(drops.count(DropReason::SlowConsumer), 2);
        assert_eq!(rx.recv().await.unwrap(), msg(0));
        assert!(matches!(sink.offer(msg(3), &drops, "c"), Offer::Taken));
        // Full again, but it read: it gets time again.
        assert!(matches!(sink.offer(msg(4), &drops, "c"), Offer::Full(_)));
    }

    /// Queue members in turn; a full member is skipped for one with room;
    /// all gone gives the message back.
    #[test]
    fn queue_round_robin_prefers_room() {
        let drops = Drops::default();
        let mut m = Members::default();
        let (a, mut ra) = Sink::new(1, 0, Duration::MAX);
        let (b, mut rb) = Sink::new(10, 0, Duration::MAX);
        m.add(1, a, true);
        m.add(2, b, true);
        for i in 0..6 {
            m.deliver_queue(msg(i), &drops, "q").unwrap();
        }
        let (mut na, mut nb) = (0, 0);
        while ra.try_recv().is_ok() {
            na += 1;
        }
        while rb.try_recv().is_ok() {
            nb += 1;
        }
        assert_eq!((na, nb), (1, 5));
        assert_eq!(drops.total(), 0);
        drop((ra, rb));
        assert!(m.deliver_queue(msg(9), &drops, "q").is_err());
    }
}
