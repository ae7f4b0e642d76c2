//! What a row or a floor measured: counts and an HDR latency histogram.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Significant figures of the latency histograms (0.1 % precision).
const SIGFIGS: u8 = 3;

/// What one row (or floor) measured.
#[derive(Clone)]
pub(crate) struct Stats {
    /// Successful operations.
    pub(crate) n: u64,
    /// Failed operations.
    pub(crate) errors: u64,
    /// Wall time of the whole row.
    pub(crate) elapsed: Duration,
    /// Latency of every successful operation, in nanoseconds.
    lat: Histogram<u64>,
    /// The first error seen, for the notes.
    pub(crate) first_error: Option<String>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            n: 0,
            errors: 0,
            elapsed: Duration::ZERO,
            // Auto-resizing: grows to whatever latency is recorded.
            lat: Histogram::new(SIGFIGS).expect("3 significant figures are valid"),
            first_error: None,
        }
    }
}

impl Stats {
    /// Stats of a measurement that could not even be set up.
    pub(crate) fn failed(e: String) -> Stats {
        Stats {
            errors: 1,
            first_error: Some(e),
            ..Stats::default()
        }
    }

    /// Adds the figures of `o` (a worker of the same measurement).
    pub(crate) fn merge(&mut self, o: Stats) {
        self.n += o.n;
        self.errors += o.errors;
        // Both histograms auto-resize, so adding cannot fail.
        self.lat
            .add(&o.lat)
            .expect("auto-resizing histograms merge");
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
    }

    /// Counts one operation: its latency, or what went wrong.
    pub(crate) fn record(&mut self, r: Result<Duration, String>) {
        match r {
            Ok(d) => {
                self.n += 1;
                let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
                // Auto-resizing: only a value beyond any range fails, and
                // then counts as the largest trackable one.
                if self.lat.record(ns).is_err() {
                    self.lat.saturating_record(ns);
                }
            }
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert(e);
            }
        }
    }

    /// Successful operations per second of wall time.
    pub(crate) fn ops_per_s(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 { self.n as f64 / s } else { 0.0 }
    }

    /// The `p`-th percentile latency in microseconds (0 when empty).
    pub(crate) fn pct(&self, p: f64) -> f64 {
        if self.lat.is_empty() {
            return 0.0;
        }
        self.lat.value_at_percentile(p) as f64 / 1e3
    }
}

/// Waits for every worker of a measurement and merges their figures; a
/// worker that panicked counts as an error.
pub(crate) async fn join_workers(
    tasks: Vec<tokio::task::JoinHandle<Stats>>,
    start: Instant,
    what: &str,
) -> Stats {
    let mut stats = Stats::default();
    for t in tasks {
        match t.await {
            Ok(s) => stats.merge(s),
            Err(e) => stats.record(Err(format!("{what} worker panicked: {e}"))),
        }
    }
    stats.elapsed = start.elapsed();
    stats
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_merged_workers() {
        let mut a = Stats::default();
        let mut b = Stats::default();
        for us in 1..=50 {
            a.record(Ok(Duration::from_micros(us)));
        }
        for us in 51..=100 {
            b.record(Ok(Duration::from_micros(us)));
        }
        b.record(Err("boom".into()));
        a.merge(b);
        assert_eq!((a.n, a.errors), (100, 1));
        assert_eq!(a.first_error.as_deref(), Some("boom"));
        let p50 = a.pct(50.0);
        let p99 = a.pct(99.0);
        assert!((49.9..=50.1).contains(&p50), "p50 {p50}");
        assert!((98.9..=99.1).contains(&p99), "p99 {p99}");
        assert_eq!(Stats::default().pct(50.0), 0.0);
    }
}
