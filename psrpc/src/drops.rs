//! One place where every dropped message is counted and reported.
//!
//! A bus and the runtime above it drop messages for many reasons: a
//! subscriber that does not keep up, bytes that are not a psrpc envelope, a
//! compressed payload that does not inflate, a message over the size limit,
//! a request that arrived already expired. Whatever the layer, each drop goes
//! through [`Drops::record`], which
//!
//! - counts it on the instance (usually one per bus, see
//!   [`MessageBus::drops`](crate::MessageBus::drops)) and in the process-wide
//!   [`Drops::global`] tally, by [`DropReason`];
//! - reports it to the `metrics` facade as the counter
//!   `psrpc_dropped_messages_total` with a `reason` label (feature `metrics`);
//! - logs it at debug level with its channel, and at most once per
//!   [`LOG_INTERVAL`] per reason at warn level with the number dropped since
//!   the last warning. Every field that came from the wire is cut to
//!   [`MAX_LOGGED_CHARS`] characters, so junk on the bus cannot flood or
//!   bloat the logs.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How often, at most, one reason is logged at warn level.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The longest part of a wire-supplied field (a channel name, a type URL, an
/// error) that is written to a log line.
pub const MAX_LOGGED_CHARS: usize = 128;

/// Why a message was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DropReason {
    /// A subscriber's buffer stayed full: the message was dropped for it.
    SlowConsumer,
    /// The bytes are not a psrpc envelope of the expected type.
    Malformed,
    /// `Msg.compression` has a value other than none or gzip.
    UnknownCompression,
    /// A gzip payload that does not inflate (bad header, CRC, size or
    /// trailing bytes).
    BadCompression,
    /// The payload inflates past the bus's decompression cap.
    DecompressedTooLarge,
    /// The message is larger than the bus's maximum message size.
    TooLarge,
    /// A request that arrived after its expiry.
    Expired,
    /// The channel a message would be answered on is not valid on this bus
    /// (too long, or containing characters the broker refuses).
    InvalidChannel,
    /// Dropped by the broker's client library (NATS slow consumer).
    Broker,
    /// No local subscriber is left for it (they closed, or on NATS none
    /// serves its method) and it was not handed on.
    NoRoute,
    /// An interceptor refused it (a stream message its `stream_recv`
    /// rejected: not delivered, not acknowledged).
    Refused,
    /// The handler it was given to panicked (the panic is caught where the
    /// bus calls handlers, so that it costs no other subscriber anything).
    Panicked,
}

impl DropReason {
    /// Every reason, in a fixed order.
    pub const ALL: [DropReason; 12] = [
        DropReason::SlowConsumer,
        DropReason::Malformed,
        DropReason::UnknownCompression,
        DropReason::BadCompression,
        DropReason::DecompressedTooLarge,
        DropReason::TooLarge,
        DropReason::Expired,
        DropReason::InvalidChannel,
        DropReason::Broker,
        DropReason::NoRoute,
        DropReason::Refused,
        DropReason::Panicked,
    ];

    /// A short stable name, used as the metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::SlowConsumer => "slow_consumer",
            DropReason::Malformed => "malformed",
            DropReason::UnknownCompression => "unknown_compression",
            DropReason::BadCompression => "bad_compression",
            DropReason::DecompressedTooLarge => "decompressed_too_large",
            DropReason::TooLarge => "too_large",
            DropReason::Expired => "expired",
            DropReason::InvalidChannel => "invalid_channel",
            DropReason::Broker => "broker",
            DropReason::NoRoute => "no_route",
            DropReason::Refused => "refused",
            DropReason::Panicked => "panicked",
        }
    }

    fn index(self) -> usize {
        DropReason::ALL
            .iter()
            .position(|r| *r == self)
            .unwrap_or_default()
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

const N: usize = DropReason::ALL.len();

/// Counters of dropped messages by reason, with rate-limited reporting.
pub struct Drops {
    counts: [AtomicU64; N],
    /// Per reason: when it may be logged at warn again.
    logged: [Throttle; N],
}

/// At most one report per interval of a growing count: what the drop tally
/// and the runtime's other rate-limited warnings share.
#[derive(Debug)]
pub struct Throttle {
    /// When the last report was made, and the count then.
    last: Mutex<(Option<Instant>, u64)>,
    interval: Duration,
}

impl Throttle {
    /// A throttle that allows one report per `interval`.
    pub fn new(interval: Duration) -> Self {
        Throttle {
            last: Mutex::new((None, 0)),
            interval,
        }
    }

    /// Whether a report is due now that the count is `total`; if so, how
    /// much the count grew since the last report.
    pub fn due(&self, total: u64) -> Option<u64> {
        let now = Instant::now();
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let (at, count_then) = &mut *last;
        if at.is_some_and(|t| now.duration_since(t) < self.interval) {
            return None;
        }
        let since = total.saturating_sub(*count_then);
        *at = Some(now);
        *count_then = total;
        Some(since)
    }
}

impl Default for Throttle {
    /// One report per [`LOG_INTERVAL`].
    fn default() -> Self {
        Throttle::new(LOG_INTERVAL)
    }
}

impl Default for Drops {
    fn default() -> Self {
        Self::with_log_interval(LOG_INTERVAL)
    }
}

impl fmt::Debug for Drops {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut m = f.debug_map();
        for r in DropReason::ALL {
            let n = self.count(r);
            if n > 0 {
                m.entry(&r.as_str(), &n);
            }
        }
        m.finish()
    }
}

impl Drops {
    /// Empty counters that warn at most once per `interval` per reason.
    pub fn with_log_interval(interval: Duration) -> Self {
        Drops {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            logged: std::array::from_fn(|_| Throttle::new(interval)),
        }
    }

    /// The process-wide tally: every [`record`](Self::record) on any
    /// instance counts here too.
    pub fn global() -> &'static Drops {
        static GLOBAL: OnceLock<Drops> = OnceLock::new();
        GLOBAL.get_or_init(Drops::default)
    }

    /// Counts one message dropped on `channel` for `reason`; `detail` says
    /// what was wrong (an error, a size). Logs as described in the module.
    pub fn record(&self, reason: DropReason, channel: &str, detail: &dyn fmt::Display) {
        self.add(reason, 1, channel, detail);
    }

    /// Counts `n` messages dropped at once (a broker's own tally).
    pub fn add(&self, reason: DropReason, n: u64, channel: &str, detail: &dyn fmt::Display) {
        if n == 0 {
            return;
        }
        let total = self.bump(reason, n);
        let global = Drops::global();
        if !std::ptr::eq(self, global) {
            global.bump(reason, n);
        }
        #[cfg(feature = "metrics")]
        metrics::counter!("psrpc_dropped_messages_total", "reason" => reason.as_str()).increment(n);
        let channel = Truncated(channel);
        tracing::debug!(
            %channel,
            reason = reason.as_str(),
            detail = %TruncatedDisplay(detail),
            "psrpc: message dropped"
        );
        if let Some(since) = self.due(reason, total) {
            tracing::warn!(
                %channel,
                reason = reason.as_str(),
                detail = %TruncatedDisplay(detail),
                dropped_since_last_warning = since,
                dropped_total = total,
                "psrpc: messages dropped"
            );
        }
    }

    fn bump(&self, reason: DropReason, n: u64) -> u64 {
        self.counts[reason.index()].fetch_add(n, Ordering::Relaxed) + n
    }

    /// Whether `reason` may be logged at warn now; if so, how many were
    /// dropped since it last was.
    fn due(&self, reason: DropReason, total: u64) -> Option<u64> {
        self.logged[reason.index()].due(total)
    }

    /// How many messages were dropped for `reason`.
    pub fn count(&self, reason: DropReason) -> u64 {
        self.counts[reason.index()].load(Ordering::Relaxed)
    }

    /// How many messages were dropped for any reason.
    pub fn total(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

/// A wire-supplied string cut to [`MAX_LOGGED_CHARS`] for logging.
#[derive(Debug, Clone, Copy)]
pub struct Truncated<'a>(pub &'a str);

impl fmt::Display for Truncated<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_truncated(f, self.0)
    }
}

struct TruncatedDisplay<'a>(&'a dyn fmt::Display);

impl fmt::Display for TruncatedDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Render into a bounded buffer: a Display can be arbitrarily long.
        let mut w = Bounded {
            out: String::new(),
            full: false,
        };
        let _ = fmt::write(&mut w, format_args!("{}", self.0));
        write_truncated(f, &w.out)?;
        if w.full && w.out.chars().count() <= MAX_LOGGED_CHARS {
            f.write_str("…")?;
        }
        Ok(())
    }
}

struct Bounded {
    out: String,
    full: bool,
}

impl fmt::Write for Bounded {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = (MAX_LOGGED_CHARS * 4 + 4).saturating_sub(self.out.len());
        if s.len() > room {
            let mut end = room;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            self.out.push_str(&s[..end]);
            self.full = true;
            return Err(fmt::Error);
        }
        self.out.push_str(s);
        Ok(())
    }
}

fn write_truncated(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    match s.char_indices().nth(MAX_LOGGED_CHARS) {
        None => f.write_str(s),
        Some((end, _)) => write!(f, "{}… ({} bytes)", &s[..end], s.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_reason_and_globally() {
        let d = Drops::default();
        let before = Drops::global().count(DropReason::TooLarge);
        d.record(DropReason::TooLarge, "ch", &"big");
        d.add(DropReason::TooLarge, 3, "ch", &"big");
        d.record(DropReason::Malformed, "ch", &"junk");
        assert_eq!(d.count(DropReason::TooLarge), 4);
        assert_eq!(d.count(DropReason::Malformed), 1);
        assert_eq!(d.total(), 5);
        assert!(Drops::global().count(DropReason::TooLarge) >= before + 4);
    }

    #[test]
    fn warns_once_per_interval_with_the_count_since() {
        let d = Drops::with_log_interval(Duration::from_secs(3600));
        assert_eq!(d.due(DropReason::Expired, 1), Some(1));
        assert_eq!(d.due(DropReason::Expired, 2), None);
        assert_eq!(d.due(DropReason::Expired, 500), None);
        // Another reason has its own budget.
        assert_eq!(d.due(DropReason::Malformed, 7), Some(7));
        let d = Drops::with_log_interval(Duration::ZERO);
        assert_eq!(d.due(DropReason::Expired, 10), Some(10));
        assert_eq!(d.due(DropReason::Expired, 25), Some(15));
    }

    #[test]
    fn wire_strings_are_cut() {
        let long = "x".repeat(10_000);
        let s = Truncated(&long).to_string();
        assert!(s.len() < MAX_LOGGED_CHARS + 32, "{}", s.len());
        assert!(s.ends_with("(10000 bytes)"));
        let shown = TruncatedDisplay(&long).to_string();
        assert!(shown.len() < MAX_LOGGED_CHARS * 2, "{}", shown.len());
        assert_eq!(Truncated("short").to_string(), "short");
        // Multi-byte characters are never split.
        let wide = "é".repeat(500);
        assert!(Truncated(&wide).to_string().starts_with("éé"));
    }
}
