//! What the clients measure: HDR histograms of latencies (in microseconds) and counts,
//! kept per client without locks and merged when a level ends.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency a histogram holds (10 minutes, in µs); above it values saturate.
const MAX_MICROS: u64 = 600_000_000;

/// A latency histogram in microseconds, 3 significant figures.
#[derive(Debug, Clone)]
pub struct Latency(Histogram<u64>);

impl Default for Latency {
    fn default() -> Self {
        Latency(
            Histogram::new_with_bounds(1, MAX_MICROS, 3)
                .expect("1 µs to 10 min at 3 figures is a valid histogram"),
        )
    }
}

impl Latency {
    /// Records one duration.
    pub fn record(&mut self, value: Duration) {
        let micros = u64::try_from(value.as_micros()).unwrap_or(MAX_MICROS);
        self.0.saturating_record(micros.max(1));
    }

    /// Records a value in microseconds.
    pub fn record_micros(&mut self, micros: u64) {
        self.0.saturating_record(micros.clamp(1, MAX_MICROS));
    }

    /// Adds another histogram's counts.
    pub fn merge(&mut self, other: &Latency) {
        self.0
            .add(&other.0)
            .expect("histograms of the same bounds always add");
    }

    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.0.len()
    }

    /// The value at quantile `q` in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        self.0.value_at_quantile(q) as f64 / 1000.0
    }

    /// Percentiles in milliseconds, or `None` when nothing was recorded.
    pub fn summary(&self) -> Option<Percentiles> {
        if self.0.is_empty() {
            return None;
        }
        Some(Percentiles {
            count: self.0.len(),
            p50_ms: self.quantile_ms(0.50),
            p90_ms: self.quantile_ms(0.90),
            p99_ms: self.quantile_ms(0.99),
            max_ms: self.0.max() as f64 / 1000.0,
            mean_ms: self.0.mean() / 1000.0,
        })
    }
}

/// A histogram's summary, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Percentiles {
    /// Values recorded.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest value.
    pub max_ms: f64,
    /// Mean.
    pub mean_ms: f64,
}

/// What one client (or, merged, one level) measured.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// End of turn (commit sent, or `speech_stopped` read) to the first text delta.
    pub first_token: Latency,
    /// Gap between consecutive text deltas of a response.
    pub inter_token: Latency,
    /// End of turn to `response.done`.
    pub turn_total: Latency,
    /// How far behind real time the server's ingest ran at the end of a turn: commit
    /// sent to `input_audio_buffer.committed` (manual), or the moment the speech end
    /// plus the VAD silence was sent to `speech_stopped` read (server VAD).
    pub ingest_lag: Latency,
    /// How late the client queued media frames against their schedule.
    pub send_lag: Latency,
    /// Turns whose speech was sent.
    pub turns: u64,
    /// Responses that ended `completed` or `incomplete` (token cap).
    pub responses: u64,
    /// Responses that ended otherwise (cancelled, failed).
    pub responses_not_completed: u64,
    /// Text deltas received.
    pub deltas: u64,
    /// Output tokens the server reported in `response.done` usage.
    pub output_tokens: u64,
    /// Audio and video frames sent.
    pub frames_sent: u64,
    /// Frames skipped because sending fell more than a frame period behind (a live
    /// source cannot wait).
    pub frames_dropped: u64,
    /// Errors by stable code (server codes as sent, client codes from `mmrt-client`).
    pub errors: BTreeMap<String, u64>,
    /// Per session: its id and each turn's time to first token (µs), in turn order,
    /// `None` for a turn without one; joined with the server's prefill log.
    pub sessions: Vec<(String, Vec<Option<u64>>)>,
}

impl Stats {
    /// Counts one error.
    pub fn error(&mut self, code: &str) {
        *self.errors.entry(code.to_string()).or_default() += 1;
    }

    /// All errors counted.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Adds another client's measurements.
    pub fn merge(&mut self, other: Stats) {
        self.first_token.merge(&other.first_token);
        self.inter_token.merge(&other.inter_token);
        self.turn_total.merge(&other.turn_total);
        self.ingest_lag.merge(&other.ingest_lag);
        self.send_lag.merge(&other.send_lag);
        self.turns += other.turns;
        self.responses += other.responses;
        self.responses_not_completed += other.responses_not_completed;
        self.deltas += other.deltas;
        self.output_tokens += other.output_tokens;
        self.frames_sent += other.frames_sent;
        self.frames_dropped += other.frames_dropped;
        for (code, n) in other.errors {
            *self.errors.entry(code).or_default() += n;
        }
        self.sessions.extend(other.sessions);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_histograms_keep_every_value() {
        let mut a = Latency::default();
        let mut b = Latency::default();
        for ms in 1..=50 {
            a.record(Duration::from_millis(ms));
        }
        for ms in 51..=100 {
            b.record(Duration::from_millis(ms));
        }
        a.merge(&b);
        let summary = a.summary().expect("values");
        assert_eq!(summary.count, 100);
        assert!((summary.p50_ms - 50.0).abs() < 0.1, "{summary:?}");
        assert!((summary.p99_ms - 99.0).abs() < 0.1, "{summary:?}");
        assert!(Latency::default().summary().is_none());
    }

    #[test]
    fn errors_are_counted_by_code() {
        let mut a = Stats::default();
        a.error("timeout");
        let mut b = Stats::default();
        b.error("timeout");
        b.error("overloaded");
        a.merge(b);
        assert_eq!(a.errors["timeout"], 2);
        assert_eq!(a.error_count(), 3);
    }
}
