//! Prometheus metrics of the whole server, served at `GET /metrics` in the text format.
//!
//! One process-wide [`Metrics`] (see [`metrics`]) so that the session actor, the
//! engine thread and the HTTP layer record into it without threading a handle through
//! every call. Names are `mmrt_*` in base units (`_seconds`, `_bytes`, `_total`); label
//! sets are small and closed (modality, model, reason, stable error code), never a
//! session id or anything a client chooses.

use std::sync::LazyLock;

use mmrt_protocol::ErrorCode;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Buckets for latencies on the real-time path, 1 ms to 10 s: a turn's first token
/// should land within a few hundred ms and a token every few tens of ms.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0,
    5.0, 10.0,
];

/// Buckets for how many jobs ran in one model call.
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// Why a session ended, as the `reason` label of `mmrt_sessions_closed_total`: the
/// error codes that close sessions, plus `client_closed` for a normal end.
pub const CLOSE_REASONS: &[&str] = &[
    "client_closed",
    "timeout",
    "shutting_down",
    "slow_consumer",
    "session_limit",
    "unauthorized",
    "internal_error",
];

/// Every metric the server exports.
pub struct Metrics {
    registry: Registry,
    pub sessions_active: IntGauge,
    pub sessions_opened: IntCounter,
    pub sessions_closed: IntCounterVec,
    pub ingest_messages: IntCounterVec,
    pub ingest_bytes: IntCounterVec,
    pub frames_dropped: IntCounterVec,
    pub queue_depth: IntGaugeVec,
    pub batch_size: HistogramVec,
    pub model_seconds: HistogramVec,
    pub first_token_seconds: Histogram,
    pub inter_token_seconds: Histogram,
    pub tokens_generated: IntCounter,
    pub responses_active: IntGauge,
    pub kv_cache_tokens: IntGauge,
    pub errors: IntCounterVec,
    pub handshake_failures: IntCounterVec,
    pub ready: IntGauge,
}

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

impl Metrics {
    fn new() -> Metrics {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric name");
            registry.register(Box::new(c.clone())).expect("unique name");
            c
        };
        let counter_vec = |name: &str, help: &str, label: &str| {
            let c = IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("unique name");
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric name");
            registry.register(Box::new(g.clone())).expect("unique name");
            g
        };
        let histogram = |name: &str, help: &str, buckets: &[f64]| {
            let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
            let h = Histogram::with_opts(opts).expect("valid histogram");
            registry.register(Box::new(h.clone())).expect("unique name");
            h
        };
        let histogram_vec = |name: &str, help: &str, label: &str, buckets: &[f64]| {
            let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
            let h = HistogramVec::new(opts, &[label]).expect("valid histogram");
            registry.register(Box::new(h.clone())).expect("unique name");
            h
        };

        let metrics = Metrics {
            sessions_active: gauge("mmrt_sessions_active", "Sessions open now."),
            sessions_opened: counter("mmrt_sessions_opened_total", "Sessions opened."),
            sessions_closed: counter_vec(
                "mmrt_sessions_closed_total",
                "Sessions ended or refused, by reason (an error code or client_closed).",
                "reason",
            ),
            ingest_messages: counter_vec(
                "mmrt_ingest_messages_total",
                "Media messages received (audio appends and packets, images, video frames).",
                "modality",
            ),
            ingest_bytes: counter_vec(
                "mmrt_ingest_bytes_total",
                "Media payload bytes received, after base64 decoding.",
                "modality",
            ),
            frames_dropped: counter_vec(
                "mmrt_frames_dropped_total",
                "Video frames not encoded, by reason.",
                "reason",
            ),
            queue_depth: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "mmrt_queue_depth",
                        "Items waiting in a bounded queue, by queue.",
                    ),
                    &["queue"],
                )
                .expect("valid metric");
                registry.register(Box::new(g.clone())).expect("unique name");
                g
            },
            batch_size: histogram_vec(
                "mmrt_batch_size",
                "Jobs run together in one model call, by model.",
                "model",
                BATCH_BUCKETS,
            ),
            model_seconds: histogram_vec(
                "mmrt_model_execution_seconds",
                "Wall time of one model call, by model.",
                "model",
                LATENCY_BUCKETS,
            ),
            first_token_seconds: histogram(
                "mmrt_end_of_turn_to_first_token_seconds",
                "From the end of a user turn (response requested) to the first text delta.",
                LATENCY_BUCKETS,
            ),
            inter_token_seconds: histogram(
                "mmrt_inter_token_seconds",
                "Between consecutive text deltas of one response.",
                LATENCY_BUCKETS,
            ),
            tokens_generated: counter("mmrt_tokens_generated_total", "Output tokens generated."),
            responses_active: gauge(
                "mmrt_responses_active",
                "Responses holding a KV cache slot in the engine now.",
            ),
            kv_cache_tokens: gauge(
                "mmrt_kv_cache_tokens",
                "Tokens held in the KV caches of active responses.",
            ),
            errors: counter_vec(
                "mmrt_errors_total",
                "Error events sent to clients, by stable error code.",
                "code",
            ),
            handshake_failures: counter_vec(
                "mmrt_handshake_failures_total",
                "Connections dropped before the WebSocket upgrade, by reason (timeout, tls).",
                "reason",
            ),
            ready: gauge(
                "mmrt_ready",
                "1 once the bundle is loaded and warmed up, else 0.",
            ),
            registry,
        };

        // Known label values start at zero so that rates work from the first scrape.
        for code in ErrorCode::ALL {
            metrics.errors.with_label_values(&[code.code()]);
        }
        for reason in CLOSE_REASONS {
            metrics.sessions_closed.with_label_values(&[reason]);
        }
        for modality in ["audio", "image", "video", "text"] {
            metrics.ingest_messages.with_label_values(&[modality]);
            metrics.ingest_bytes.with_label_values(&[modality]);
        }
        for reason in ["timeout", "tls"] {
            metrics.handshake_failures.with_label_values(&[reason]);
        }
        for reason in ["sampled_out", "rate_limited", "invalid"] {
            metrics.frames_dropped.with_label_values(&[reason]);
        }
        metrics
    }

    /// Counts an error event sent to a client.
    pub fn error(&self, code: ErrorCode) {
        self.errors.with_label_values(&[code.code()]).inc();
    }

    /// Counts received media.
    pub fn ingest(&self, modality: &str, bytes: usize) {
        self.ingest_messages.with_label_values(&[modality]).inc();
        self.ingest_bytes
            .with_label_values(&[modality])
            .inc_by(bytes as u64);
    }

    /// Records one model call.
    pub fn model_call(&self, model: &str, batch: usize, seconds: f64) {
        self.batch_size
            .with_label_values(&[model])
            .observe(batch as f64);
        self.model_seconds
            .with_label_values(&[model])
            .observe(seconds);
    }

    /// Everything, in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        if let Err(err) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(?err, "encoding metrics failed");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_named_and_documented() {
        let text = metrics().render();
        for name in [
            "mmrt_sessions_active",
            "mmrt_sessions_closed_total",
            "mmrt_errors_total",
            "mmrt_end_of_turn_to_first_token_seconds",
            "mmrt_inter_token_seconds",
            "mmrt_tokens_generated_total",
        ] {
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "{name} lacks help"
            );
        }
        assert!(text.contains("mmrt_errors_total{code=\"invalid_json\"} 0"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("mmrt_"), "unprefixed metric: {line}");
        }
    }

    #[test]
    fn errors_are_counted_by_code() {
        let before = metrics().errors.with_label_values(&["buffer_empty"]).get();
        metrics().error(ErrorCode::BufferEmpty);
        let after = metrics().errors.with_label_values(&["buffer_empty"]).get();
        assert_eq!(after, before + 1);
    }
}
