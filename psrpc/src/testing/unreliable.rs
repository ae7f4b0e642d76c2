//! Simulated message loss, as Go psrpc's unreliable test bus.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::StreamExt;

use super::{TestBus, delegate_bus};
use crate::bus::MessageBus;

/// A failure rate in `[0, 1]` that can be changed while buses use it: share
/// it in an `Arc` between the test and its [`UnreliableBus`]es.
#[derive(Debug, Default)]
pub struct FailureRate(AtomicU64);

impl FailureRate {
    /// A failure rate of `rate` (see [`set`](Self::set)).
    pub fn new(rate: f64) -> Self {
        let r = FailureRate::default();
        r.set(rate);
        r
    }

    /// The current rate.
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }

    /// Sets the rate; every subscription using it applies it from its next
    /// message on. Values outside `[0, 1]` are clamped; NaN counts as 0.
    pub fn set(&self, rate: f64) {
        let rate = if rate.is_nan() {
            0.0
        } else {
            rate.clamp(0.0, 1.0)
        };
        self.0.store(rate.to_bits(), Ordering::Relaxed);
    }
}

/// A bus whose subscriptions lose a fraction of the messages they receive
/// (as Go psrpc's unreliable test bus): [`TestBus::unreliable`] as a type of its own.
///
/// Loss happens on the receiving side, independently per subscription: every
/// subscription has its own pseudo-random sequence, seeded with 0, and drops
/// a message when the current [`FailureRate`] is above the next draw in
/// `[0, 1)`. The same messages through the same subscription are dropped the
/// same way in every run; a rate of 0 drops nothing and 1 drops everything.
/// (The draws are not Go's `math/rand` sequence.)
#[derive(Clone, Debug)]
pub struct UnreliableBus(TestBus);

impl UnreliableBus {
    /// Wraps `bus`: every subscription loses messages at `rate`.
    pub fn new(bus: impl MessageBus, rate: Arc<FailureRate>) -> Self {
        UnreliableBus(TestBus::new(bus).unreliable(rate))
    }

    /// Wraps `bus`: subscriptions to the channel whose Legacy name is
    /// `channel` lose messages at `rate`, others none. An empty `channel`
    /// means every channel.
    pub fn for_channel(
        bus: impl MessageBus,
        rate: Arc<FailureRate>,
        channel: impl Into<String>,
    ) -> Self {
        UnreliableBus(TestBus::new(bus).unreliable_channel(rate, channel))
    }
}

delegate_bus!(UnreliableBus);

impl TestBus {
    /// Adds the unreliable bus's subscribe interceptor (see [`UnreliableBus`])
    /// for every channel, after those added before.
    pub fn unreliable(self, rate: Arc<FailureRate>) -> Self {
        self.unreliable_channel(rate, "")
    }

    /// Adds the unreliable bus's subscribe interceptor (see [`UnreliableBus`])
    /// for the channel whose Legacy name is `channel` (empty: every channel),
    /// after those added before.
    pub fn unreliable_channel(self, rate: Arc<FailureRate>, channel: impl Into<String>) -> Self {
        let filter = channel.into();
        self.subscribe_interceptor(move |info, raw| {
            if !filter.is_empty() && filter != info.channel.legacy {
                return raw;
            }
            let rate = rate.clone();
            let mut draws = SplitMix64(0);
            raw.filter(move |_| std::future::ready(rate.get() <= draws.next_f64()))
                .boxed()
        })
    }
}

/// SplitMix64 (Steele, Lea and Flood): tiny, fast, and good enough to decide
/// which test messages to drop.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_are_uniform_enough() {
        let mut r = SplitMix64(0);
        let draws: Vec<f64> = (0..10_000).map(|_| r.next_f64()).collect();
        assert!(draws.iter().all(|d| (0.0..1.0).contains(d)));
        let below = draws.iter().filter(|d| **d < 0.3).count();
        assert!((2_800..3_200).contains(&below), "{below}");
        let mut again = SplitMix64(0);
        assert!(draws.iter().all(|d| *d == again.next_f64()));
    }

    #[test]
    fn rate_is_clamped() {
        let r = FailureRate::new(2.0);
        assert_eq!(r.get(), 1.0);
        r.set(-1.0);
        assert_eq!(r.get(), 0.0);
        r.set(f64::NAN);
        assert_eq!(r.get(), 0.0);
        r.set(0.25);
        assert_eq!(r.get(), 0.25);
    }
}
