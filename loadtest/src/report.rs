//! The outputs of a run: `report.json` (everything), `summary.md` (a table per run) and
//! `latency.svg` (latency percentiles against concurrency, drawn by hand so that no
//! font or graphics library is needed).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::LoadError;
use crate::options::LoadOptions;
use crate::server::ProcessMemory;
use crate::stats::{Latency, Percentiles, Stats};

/// One concurrency level's results.
#[derive(Debug, Clone, Serialize)]
pub struct LevelReport {
    /// Concurrent clients.
    pub clients: usize,
    /// Sessions that connected and were set up.
    pub sessions: usize,
    /// Seconds the level took, ramp-up and drain included.
    pub elapsed_s: f64,
    /// Turns whose speech was sent.
    pub turns: u64,
    /// Responses completed (or cut at the token cap).
    pub responses: u64,
    /// Responses cancelled or failed.
    pub responses_not_completed: u64,
    /// Output tokens reported by the server.
    pub output_tokens: u64,
    /// Output tokens per second over the level.
    pub output_tokens_per_s: f64,
    /// Audio and video frames sent.
    pub frames_sent: u64,
    /// Frames skipped because the client fell behind real time.
    pub frames_dropped: u64,
    /// Errors by code.
    pub errors: BTreeMap<String, u64>,
    /// End of turn to first text delta.
    pub first_token: Option<Percentiles>,
    /// Between text deltas.
    pub inter_token: Option<Percentiles>,
    /// End of turn to `response.done`.
    pub turn_total: Option<Percentiles>,
    /// Server ingest behind real time at the end of a turn.
    pub ingest_lag: Option<Percentiles>,
    /// Client lateness queueing media frames.
    pub send_lag: Option<Percentiles>,
    /// The server's own prompt assembly and prefill, from its log (spawned server).
    pub prefill: Option<Percentiles>,
    /// Time to first token minus that turn's prefill: the server's overhead.
    pub overhead: Option<Percentiles>,
    /// Server memory at the end of the level (spawned server).
    pub server_memory: Option<ProcessMemory>,
    /// What the misbehaving clients did, when there were any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub misbehaving: Option<crate::chaos::ChaosReport>,
    /// (seconds into the level, resident bytes) of the spawned server.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub memory_timeline: Vec<(f64, u64)>,
}

impl LevelReport {
    /// Builds the report of a level from merged stats and the server's prefill log.
    pub fn new(
        clients: usize,
        elapsed_s: f64,
        stats: &Stats,
        prefills: Option<&std::collections::HashMap<String, Vec<u64>>>,
        server_memory: Option<ProcessMemory>,
    ) -> LevelReport {
        // Pair each turn's time to first token with the prefill of the same response;
        // sessions whose counts differ (an error, a cancelled response) are left out.
        let (prefill, overhead) = match prefills {
            Some(prefills) => {
                let mut prefill = Latency::default();
                let mut overhead = Latency::default();
                for (session, firsts) in &stats.sessions {
                    let Some(times) = prefills.get(session) else {
                        continue;
                    };
                    for &t in times {
                        prefill.record_micros(t);
                    }
                    if times.len() != firsts.len() {
                        continue;
                    }
                    for (first, &pre) in firsts.iter().zip(times) {
                        if let Some(first) = first {
                            overhead.record_micros(first.saturating_sub(pre));
                        }
                    }
                }
                (prefill.summary(), overhead.summary())
            }
            None => (None, None),
        };
        LevelReport {
            clients,
            sessions: stats.sessions.len(),
            elapsed_s,
            turns: stats.turns,
            responses: stats.responses,
            responses_not_completed: stats.responses_not_completed,
            output_tokens: stats.output_tokens,
            output_tokens_per_s: stats.output_tokens as f64 / elapsed_s.max(1e-9),
            frames_sent: stats.frames_sent,
            frames_dropped: stats.frames_dropped,
            errors: stats.errors.clone(),
            first_token: stats.first_token.summary(),
            inter_token: stats.inter_token.summary(),
            turn_total: stats.turn_total.summary(),
            ingest_lag: stats.ingest_lag.summary(),
            send_lag: stats.send_lag.summary(),
            prefill,
            overhead,
            server_memory,
            misbehaving: None,
            memory_timeline: Vec::new(),
        }
    }

    /// Adds what the level measured besides the well-behaved clients.
    pub fn with_extras(mut self, extras: crate::run::LevelExtras) -> LevelReport {
        self.misbehaving = extras.chaos;
        self.memory_timeline = extras.memory_timeline;
        self
    }

    /// Errors of every code.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// One memory measurement.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryPoint {
    /// `idle` (connected, nothing sent) or `active` (one turn answered).
    pub state: String,
    /// Sessions open.
    pub sessions: usize,
    /// Server resident bytes.
    pub rss_bytes: u64,
    /// Resident bytes above the server with no session, per session.
    pub bytes_per_session: f64,
}

/// A whole invocation's results.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// The server under test (`--label`).
    pub label: String,
    /// Unix time the run started.
    pub started_unix_s: u64,
    /// CPUs this machine offers.
    pub cpus: usize,
    /// The options, as parsed.
    pub options: LoadOptions,
    /// Each concurrency level, in order.
    pub levels: Vec<LevelReport>,
    /// Memory measurements (`--memory`).
    pub memory: Vec<MemoryPoint>,
}

impl RunReport {
    /// Writes report.json, summary.md and (with levels) latency.svg into `dir`.
    pub fn write(&self, dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
        std::fs::create_dir_all(dir).map_err(LoadError::io(dir))?;
        let mut written = Vec::new();
        let json = serde_json::to_string_pretty(self).expect("reports always serialize");
        for (name, text) in [("report.json", json), ("summary.md", self.markdown())]
            .into_iter()
            .chain((!self.levels.is_empty()).then(|| ("latency.svg", self.svg())))
        {
            let path = dir.join(name);
            std::fs::write(&path, text).map_err(LoadError::io(&path))?;
            written.push(path);
        }
        Ok(written)
    }

    /// A Markdown summary: one row per level, then memory.
    pub fn markdown(&self) -> String {
        let o = &self.options;
        let mut md = String::new();
        let _ = writeln!(md, "# Load test: {}\n", self.label);
        let _ = writeln!(
            md,
            "{} CPUs; turn every {} s ({:?}), {} fps video, {:?} {:?} at {} Hz, \
             {} output tokens per response, {} s per level.\n",
            self.cpus,
            o.turn_interval,
            o.turn_mode,
            o.fps,
            o.codec,
            o.transport,
            o.rate,
            o.max_output_tokens,
            o.duration
        );
        if !self.levels.is_empty() {
            md.push_str(
                "| clients | turns | responses | errors | first token p50 / p99 ms | \
                 inter-token p50 / p99 ms | turn p50 / p99 ms | ingest lag p99 ms | \
                 overhead p50 / p99 ms | tokens/s | dropped | server RSS MiB |\n",
            );
            md.push_str("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
            for l in &self.levels {
                let pair = |p: &Option<Percentiles>| match p {
                    Some(p) => format!("{:.1} / {:.1}", p.p50_ms, p.p99_ms),
                    None => "-".into(),
                };
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {} | {} |",
                    l.clients,
                    l.turns,
                    l.responses,
                    l.error_count(),
                    pair(&l.first_token),
                    pair(&l.inter_token),
                    pair(&l.turn_total),
                    l.ingest_lag
                        .map_or("-".into(), |p| format!("{:.1}", p.p99_ms)),
                    pair(&l.overhead),
                    l.output_tokens_per_s,
                    l.frames_dropped,
                    l.server_memory.map_or("-".into(), |m| format!(
                        "{:.1}",
                        m.rss_bytes as f64 / 1048576.0
                    )),
                );
            }
            let errors: BTreeMap<&str, u64> = self
                .levels
                .iter()
                .flat_map(|l| l.errors.iter().map(|(c, n)| (c.as_str(), *n)))
                .fold(BTreeMap::new(), |mut acc, (c, n)| {
                    *acc.entry(c).or_default() += n;
                    acc
                });
            if !errors.is_empty() {
                let _ = writeln!(md, "\nErrors by code: {errors:?}");
            }
            for l in &self.levels {
                if let Some(c) = &l.misbehaving {
                    let _ = writeln!(
                        md,
                        "\nMisbehaving clients beside {} well-behaved ones: {} slow readers \
                         ({} closed by the server), {} vanished mid-response, {} garbage \
                         sessions ({} bad messages, {} error events, {} answered after), \
                         {} stalled handshakes ({} dropped), {} failed connects.",
                        l.clients,
                        c.slow_readers,
                        c.slow_readers_closed,
                        c.vanished_mid_response,
                        c.garbage_sessions,
                        c.garbage_messages,
                        c.garbage_errors,
                        c.garbage_then_answered,
                        c.stallers,
                        c.stallers_dropped,
                        c.connect_failures
                    );
                }
                if l.memory_timeline.len() >= 2 {
                    let mib = |b: u64| b as f64 / 1048576.0;
                    let values: Vec<u64> = l.memory_timeline.iter().map(|p| p.1).collect();
                    let min = values.iter().copied().min().unwrap_or(0);
                    let max = values.iter().copied().max().unwrap_or(0);
                    let half = l.memory_timeline.len() / 2;
                    let first_half_max = values[..half].iter().copied().max().unwrap_or(0);
                    let _ = writeln!(
                        md,
                        "\nServer RSS over {} samples at {} clients: min {:.1} MiB, max {:.1} MiB, \
                         first-half max {:.1} MiB, last {:.1} MiB.",
                        values.len(),
                        l.clients,
                        mib(min),
                        mib(max),
                        mib(first_half_max),
                        mib(*values.last().unwrap_or(&0))
                    );
                }
            }
        }
        if !self.memory.is_empty() {
            md.push_str("\n| state | sessions | server RSS MiB | KiB per session |\n");
            md.push_str("|---|---:|---:|---:|\n");
            for m in &self.memory {
                let _ = writeln!(
                    md,
                    "| {} | {} | {:.1} | {:.1} |",
                    m.state,
                    m.sessions,
                    m.rss_bytes as f64 / 1048576.0,
                    m.bytes_per_session / 1024.0
                );
            }
        }
        md
    }

    /// Latency percentiles against concurrency as a standalone SVG.
    pub fn svg(&self) -> String {
        let series: [(&str, &str, Metric); 5] = [
            ("first token p50", "#1f77b4", |l| {
                l.first_token.map(|p| p.p50_ms)
            }),
            ("first token p99", "#d62728", |l| {
                l.first_token.map(|p| p.p99_ms)
            }),
            ("inter-token p99", "#9467bd", |l| {
                l.inter_token.map(|p| p.p99_ms)
            }),
            ("turn p50", "#2ca02c", |l| l.turn_total.map(|p| p.p50_ms)),
            ("turn p99", "#ff7f0e", |l| l.turn_total.map(|p| p.p99_ms)),
        ];
        svg_plot(
            &format!("{}: latency against concurrent sessions", self.label),
            &self.levels.iter().map(|l| l.clients).collect::<Vec<_>>(),
            &series
                .iter()
                .map(|(name, colour, get)| {
                    (
                        *name,
                        *colour,
                        self.levels.iter().map(get).collect::<Vec<_>>(),
                    )
                })
                .collect::<Vec<_>>(),
        )
    }
}

/// Picks one value of a level for the plot.
type Metric = fn(&LevelReport) -> Option<f64>;

/// A line plot: categorical x (concurrency), linear y in ms from 0.
fn svg_plot(title: &str, xs: &[usize], series: &[(&str, &str, Vec<Option<f64>>)]) -> String {
    let (width, height) = (760.0, 420.0);
    let (left, right, top, bottom) = (70.0, 170.0, 40.0, 50.0);
    let plot_w = width - left - right;
    let plot_h = height - top - bottom;
    let max = series
        .iter()
        .flat_map(|(_, _, ys)| ys.iter().flatten())
        .fold(0.0f64, |a, &b| a.max(b));
    let y_max = nice_ceiling(max.max(1.0));
    let x_at = |i: usize| {
        if xs.len() <= 1 {
            left + plot_w / 2.0
        } else {
            left + plot_w * i as f64 / (xs.len() - 1) as f64
        }
    };
    let y_at = |v: f64| top + plot_h * (1.0 - v / y_max);

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="14">{}</text>"#,
        left + plot_w / 2.0,
        escape(title)
    );
    // Grid and y labels.
    for k in 0..=5 {
        let v = y_max * k as f64 / 5.0;
        let y = y_at(v);
        let _ = writeln!(
            svg,
            r##"<line x1="{left}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            left + plot_w,
            left - 6.0,
            y + 4.0,
            format_ms(v)
        );
    }
    for (i, x) in xs.iter().enumerate() {
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{x}</text>"#,
            x_at(i),
            top + plot_h + 18.0
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">concurrent sessions</text>"#,
        left + plot_w / 2.0,
        height - 10.0
    );
    let _ = writeln!(
        svg,
        r#"<text x="16" y="{:.1}" text-anchor="middle" transform="rotate(-90 16 {:.1})">milliseconds</text>"#,
        top + plot_h / 2.0,
        top + plot_h / 2.0
    );
    let _ = writeln!(
        svg,
        r#"<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="black"/>"#
    );
    // Series and legend.
    for (n, (name, colour, ys)) in series.iter().enumerate() {
        let points: Vec<String> = ys
            .iter()
            .enumerate()
            .filter_map(|(i, y)| y.map(|y| format!("{:.1},{:.1}", x_at(i), y_at(y))))
            .collect();
        if points.len() > 1 {
            let _ = writeln!(
                svg,
                r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"/>"#,
                points.join(" ")
            );
        }
        for p in &points {
            let (x, y) = p.split_once(',').unwrap_or(("0", "0"));
            let _ = writeln!(svg, r#"<circle cx="{x}" cy="{y}" r="3" fill="{colour}"/>"#);
        }
        let ly = top + 10.0 + 20.0 * n as f64;
        let lx = left + plot_w + 14.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{colour}" stroke-width="2"/><text x="{}" y="{}">{}</text>"#,
            lx + 20.0,
            lx + 26.0,
            ly + 4.0,
            escape(name)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// The next 1, 2 or 5 times a power of ten at or above `v`.
fn nice_ceiling(v: f64) -> f64 {
    let magnitude = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|&c| c >= v)
        .unwrap_or(10.0 * magnitude)
}

fn format_ms(v: f64) -> String {
    if v >= 10.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceilings_are_round() {
        assert_eq!(nice_ceiling(0.7), 1.0);
        assert_eq!(nice_ceiling(130.0), 200.0);
        assert_eq!(nice_ceiling(450.0), 500.0);
        assert_eq!(nice_ceiling(1000.0), 1000.0);
    }

    #[test]
    fn plot_is_one_svg_with_every_series() {
        let svg = svg_plot(
            "a <b>",
            &[1, 4, 16],
            &[("p50", "#000", vec![Some(1.0), Some(2.0), None])],
        );
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert!(svg.contains("a &lt;b&gt;") && svg.contains("<polyline"));
        assert_eq!(svg.matches("<circle").count(), 2);
    }
}
