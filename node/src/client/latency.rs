//! Client-side latency recording, shared by `quorumkv bench` and the YCSB driver
//! (`quorumkv-ycsb`): an HdrHistogram of microseconds, so percentiles come out within
//! `LATENCY_SIGNIFICANT_DIGITS` without keeping (or sorting) every sample.
//!
//! Coordinated omission: a client that waits for each answer before sending its next request
//! sends nothing while the store stalls, so the requests a real user would have sent during the
//! stall never get a (bad) latency. An open-loop run has a schedule of intended send times;
//! `record_from_intended` measures an operation from its intended send time rather than from
//! when it was actually sent (as wrk2 does), so the queueing a stall causes is counted.
//!
//! Invariants: values are whole microseconds in `1..=LATENCY_MAX_US` (a longer latency is
//! recorded as the maximum, a zero one as 1 us); the recorder reads no clock.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// Largest latency the histogram holds exactly; longer ones are clamped to it.
pub const LATENCY_MAX_US: u64 = 3_600_000_000;
/// Precision of every recorded value (3: within 0.1 %).
pub const LATENCY_SIGNIFICANT_DIGITS: u8 = 3;
/// The percentiles a latency curve (report, chart) shows, in percent.
pub const CURVE_PERCENTILES: [f64; 7] = [50.0, 75.0, 90.0, 99.0, 99.9, 99.99, 100.0];

/// Latencies of one kind of operation (or all of them), in microseconds.
#[derive(Clone, Debug)]
pub struct LatencyRecorder {
    histogram: Histogram<u64>,
}

/// The figures a run reports for one recorder, in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Default for LatencyRecorder {
    fn default() -> Self {
        Self::new()
    }
}

impl LatencyRecorder {
    pub fn new() -> LatencyRecorder {
        let histogram = Histogram::new_with_bounds(1, LATENCY_MAX_US, LATENCY_SIGNIFICANT_DIGITS)
            .expect("constant histogram bounds are valid");
        LatencyRecorder { histogram }
    }

    /// Records one operation that took `latency` (closed loop: measured from its send time).
    pub fn record(&mut self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.histogram
            .saturating_record(us.clamp(1, LATENCY_MAX_US));
    }

    /// Records one operation of an open-loop schedule, from when it should have been sent
    /// (`intended`) to when its answer arrived (`done`): a late send counts as latency.
    pub fn record_from_intended(&mut self, intended: Instant, done: Instant) {
        self.record(done.saturating_duration_since(intended));
    }

    pub fn merge(&mut self, other: &LatencyRecorder) {
        // Same bounds on both sides: adding cannot fail.
        self.histogram
            .add(&other.histogram)
            .expect("recorders share their bounds");
    }

    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    pub fn is_empty(&self) -> bool {
        self.histogram.is_empty()
    }

    /// The latency below which `percentile` percent of operations fell (0 when empty).
    pub fn percentile_ms(&self, percentile: f64) -> f64 {
        if self.is_empty() {
            return 0.0;
        }
        us_to_ms(
            self.histogram
                .value_at_percentile(percentile.clamp(0.0, 100.0)),
        )
    }

    pub fn summary(&self) -> LatencySummary {
        if self.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: self.count(),
            mean_ms: self.histogram.mean() / 1000.0,
            p50_ms: self.percentile_ms(50.0),
            p90_ms: self.percentile_ms(90.0),
            p99_ms: self.percentile_ms(99.0),
            p999_ms: self.percentile_ms(99.9),
            max_ms: us_to_ms(self.histogram.max()),
        }
    }

    /// `(percentile, latency ms)` at each of `CURVE_PERCENTILES` (empty when nothing recorded).
    pub fn curve(&self) -> Vec<(f64, f64)> {
        if self.is_empty() {
            return Vec::new();
        }
        CURVE_PERCENTILES
            .iter()
            .map(|&p| (p, self.percentile_ms(p)))
            .collect()
    }
}

fn us_to_ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_spread() {
        let mut r = LatencyRecorder::new();
        for ms in 1..=100u64 {
            r.record(Duration::from_millis(ms));
        }
        let s = r.summary();
        assert_eq!(s.count, 100);
        assert!((s.p50_ms - 50.0).abs() < 0.1, "{s:?}");
        assert!((s.p99_ms - 99.0).abs() < 0.1, "{s:?}");
        assert!((s.max_ms - 100.0).abs() < 0.1, "{s:?}");
        assert!((s.mean_ms - 50.5).abs() < 0.1, "{s:?}");
    }

    #[test]
    fn out_of_range_values_are_clamped_not_lost() {
        let mut r = LatencyRecorder::new();
        r.record(Duration::ZERO);
        r.record(Duration::from_secs(10 * 3600));
        assert_eq!(r.count(), 2);
        assert!(r.percentile_ms(0.0) > 0.0);
        assert!((r.summary().max_ms - LATENCY_MAX_US as f64 / 1000.0).abs() / 3.6e6 < 1e-3);
    }

    #[test]
    fn a_late_send_counts_from_its_intended_time() {
        let mut r = LatencyRecorder::new();
        let intended = Instant::now();
        r.record_from_intended(intended, intended + Duration::from_millis(250));
        assert!((r.percentile_ms(50.0) - 250.0).abs() < 0.5);
        // An answer "before" its intended time (clock skew between tasks) is not negative.
        r.record_from_intended(intended + Duration::from_millis(5), intended);
        assert_eq!(r.count(), 2);
    }

    #[test]
    fn merge_adds_counts_and_empty_is_all_zero() {
        let mut a = LatencyRecorder::new();
        let mut b = LatencyRecorder::new();
        assert_eq!(a.summary(), LatencySummary::default());
        assert!(a.curve().is_empty());
        a.record(Duration::from_millis(1));
        b.record(Duration::from_millis(9));
        a.merge(&b);
        assert_eq!(a.count(), 2);
        assert!((a.summary().max_ms - 9.0).abs() < 0.01);
        let curve = a.curve();
        assert_eq!(curve.len(), CURVE_PERCENTILES.len());
        assert!(curve.windows(2).all(|w| w[0].1 <= w[1].1));
    }
}
