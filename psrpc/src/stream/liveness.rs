//! Watching the peer of a stream (see [Dead peers](super#dead-peers)).

use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tokio::time::Instant;

use super::{CloseReason, Shared};
use crate::bus::HandlerSubscription;
use crate::channels::Channel;
use crate::error::{Error, ErrorCode};

/// How a stream end watches its peer (see [Dead peers](super#dead-peers)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLiveness {
    /// How often the peer is looked for; zero turns watching off.
    pub interval: Duration,
    /// How long a peer seen before may be missing before the stream ends
    /// with `unavailable`.
    pub dead_after: Duration,
}

/// The default [`StreamLiveness::interval`]: 1 s.
pub const DEFAULT_LIVENESS_INTERVAL: Duration = Duration::from_secs(1);
/// The default [`StreamLiveness::dead_after`]: 4 s.
pub const DEFAULT_DEAD_AFTER: Duration = Duration::from_secs(4);

impl Default for StreamLiveness {
    fn default() -> Self {
        StreamLiveness {
            interval: DEFAULT_LIVENESS_INTERVAL,
            dead_after: DEFAULT_DEAD_AFTER,
        }
    }
}

impl StreamLiveness {
    /// Look every `interval`; end the stream after `dead_after` without the peer.
    pub fn new(interval: Duration, dead_after: Duration) -> Self {
        StreamLiveness {
            interval,
            dead_after,
        }
    }

    /// No watching: a stream ends only when closed (by either end, or the
    /// caller's context).
    pub fn disabled() -> Self {
        Self::new(Duration::ZERO, Duration::ZERO)
    }

    /// Whether the peer is watched.
    pub fn is_enabled(&self) -> bool {
        !self.interval.is_zero()
    }
}

/// The NATS subject namespace of presence channels (see [Dead
/// peers](super#dead-peers)); no Go psrpc process subscribes in it.
pub const PRESENCE_SUBJECT_PREFIX: &str = "PSRPC_LIVE.";

/// The presence channel of one end of stream `stream_id` of `service`: the
/// client's end (`client_end`) or the server's.
pub fn presence_channel(service: &str, stream_id: &str, client_end: bool) -> Channel {
    use crate::channels::{Part, join, sanitize};
    let side = if client_end { "CLI" } else { "SRV" };
    Channel {
        legacy: join(
            '|',
            &[
                Part::One(service),
                Part::One(stream_id),
                Part::One(side),
                Part::One("LIVE"),
            ],
        ),
        // The stream id comes from the peer: sanitized, it holds no `.`,
        // `*` or `>`.
        server: format!(
            "{PRESENCE_SUBJECT_PREFIX}{service}.{}.{side}",
            sanitize(stream_id)
        ),
        local: String::new(),
    }
}

impl<R: Message + Default + Clone + 'static> Shared<R> {
    /// Subscribes this end's presence channel (see [Dead
    /// peers](super#dead-peers)); `None` when the subscription failed
    /// (logged).
    async fn presence(&self, client_end: bool) -> Option<HandlerSubscription> {
        let own = presence_channel(&self.info.service, &self.stream_id, client_end);
        let ignore: crate::bus::Handler = Arc::new(|_| {});
        match self.bus.subscribe_handler(&own, 1, false, ignore).await {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(
                    stream_id = %self.stream_id,
                    error = %e,
                    "psrpc stream: cannot subscribe the presence channel; the peer will not notice if this end dies"
                );
                None
            }
        }
    }

    /// Starts watching the peer once the stream is open (see [Dead
    /// peers](super#dead-peers)): a task that, while the stream lasts,
    /// subscribes this end's presence channel a quarter of an interval
    /// after the open and keeps it, takes its first look at the peer half
    /// an interval after the open, then one every interval. A stream that
    /// ends sooner costs a timer and nothing on the bus.
    pub(crate) fn watch_peer(self: &Arc<Self>, liveness: StreamLiveness, client_end: bool) {
        if !liveness.is_enabled() || self.done.is_cancelled() {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            let opened = Instant::now();
            if !me.open_until(opened, liveness.interval / 4).await {
                return;
            }
            let _presence = me.presence(client_end).await;
            if !me.open_until(opened, liveness.interval / 2).await {
                return;
            }
            let peer = presence_channel(&me.info.service, &me.stream_id, !client_end);
            me.probe(liveness, peer, opened).await;
        });
    }

    /// Waits until `after` past `from`; whether the stream is still open
    /// then. A time too far to tell (a huge interval) never comes.
    pub(super) async fn open_until(&self, from: Instant, after: Duration) -> bool {
        match from.checked_add(after) {
            Some(at) => tokio::select! {
                _ = self.done.cancelled() => false,
                _ = tokio::time::sleep_until(at) => true,
            },
            None => {
                self.done.cancelled().await;
                false
            }
        }
    }

    /// Looks for the peer every interval until the stream ends; ends it
    /// with `unavailable` once the peer was missing for `dead_after`.
    async fn probe(&self, liveness: StreamLiveness, peer_presence: Channel, opened: Instant) {
        struct Probe {
            ch: Channel,
            /// When a subscriber was last seen; `None`: never (not armed).
            seen: Option<Instant>,
        }
        let mut probes = vec![
            // The peer subscribed its stream channel before the open (or
            // its ack) was sent: armed from the start.
            Probe {
                ch: (*self.out).clone(),
                seen: Some(opened),
            },
            // Armed once seen: a Go peer never subscribes it.
            Probe {
                ch: peer_presence,
                seen: None,
            },
        ];
        // The first look without a further wait: the caller waited half an
        // interval.
        let mut first = true;
        while !probes.is_empty() {
            if !std::mem::take(&mut first) {
                if !self.open_until(Instant::now(), liveness.interval).await {
                    return;
                }
            } else if self.done.is_cancelled() {
                return;
            }
            let mut i = 0;
            while i < probes.len() {
                let p = &mut probes[i];
                let asked = tokio::time::timeout(liveness.interval, self.bus.listeners(&p.ch));
                match asked.await {
                    Ok(Ok(None)) => {
                        // This bus cannot count this channel.
                        probes.remove(i);
                        continue;
                    }
                    Ok(Ok(Some(n))) if n > 0 => p.seen = Some(Instant::now()),
                    Ok(Ok(Some(_))) => {}
                    Ok(Err(e)) => {
                        tracing::debug!(stream_id = %self.stream_id, error = %e, "psrpc stream: peer probe failed")
                    }
                    Err(_) => {
                        tracing::debug!(stream_id = %self.stream_id, "psrpc stream: peer probe timed out")
                    }
                }
                if let Some(seen) = p.seen
                    && seen.elapsed() >= liveness.dead_after
                {
                    let cause = Error::new(
                        ErrorCode::Unavailable,
                        format!(
                            "stream peer gone: no subscriber on {} for {:?}",
                            p.ch.legacy, liveness.dead_after
                        ),
                    );
                    tracing::warn!(stream_id = %self.stream_id, error = %cause, "psrpc stream: closing");
                    self.close_detached(cause, CloseReason::PeerGone);
                    return;
                }
                i += 1;
            }
        }
    }
}
