//! The command line: what to run against, how each virtual client behaves, and where
//! the reports go. Every flag is also an environment variable.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use mmrt_client::{AudioCodec, Transport};

use crate::error::LoadError;

/// How a turn ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TurnMode {
    /// The client commits the audio and sends `response.create` after the speech.
    Manual,
    /// Server VAD hears the silence after the speech and answers by itself.
    ServerVad,
}

/// How media travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TransportArg {
    /// JSON events with base64 payloads.
    Json,
    /// Binary frames with the mmrt header.
    Binary,
}

/// How audio is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CodecArg {
    /// Raw PCM16 at the session rate.
    Pcm16,
    /// One Opus packet per 20 ms (binary frames only).
    Opus,
}

/// Load test an mmrt realtime server with many virtual clients.
#[derive(Debug, Clone, Parser, serde::Serialize)]
#[command(name = "mmrt-loadtest", version)]
pub struct LoadOptions {
    /// Realtime WebSocket URL of the server under test.
    #[arg(
        long,
        env = "MMRT_LOADTEST_URL",
        default_value = "ws://127.0.0.1:8080/v1/realtime"
    )]
    pub url: String,
    /// Allow a URL whose host is not a loopback address.
    #[arg(long, env = "MMRT_LOADTEST_ALLOW_REMOTE")]
    pub allow_remote: bool,
    /// Start this `mmrt` binary on 127.0.0.1 with an ephemeral port and test it
    /// (`--url` is then ignored); it is stopped when the run ends.
    #[arg(long, env = "MMRT_LOADTEST_SPAWN_SERVER")]
    pub spawn_server: Option<PathBuf>,
    /// Extra argument for the spawned server (repeat for several).
    #[arg(
        long = "server-arg",
        env = "MMRT_LOADTEST_SERVER_ARGS",
        value_delimiter = ' ',
        allow_hyphen_values = true
    )]
    pub server_args: Vec<String>,
    /// Name of the server under test, for the reports.
    #[arg(long, env = "MMRT_LOADTEST_LABEL", default_value = "mmrt")]
    pub label: String,

    /// Concurrent virtual clients (one session each).
    #[arg(long, env = "MMRT_LOADTEST_CLIENTS", default_value_t = 4)]
    pub clients: usize,
    /// Run several concurrencies one after the other, e.g. `1,4,16,64`.
    #[arg(long, env = "MMRT_LOADTEST_SWEEP", value_delimiter = ',')]
    pub sweep: Option<Vec<usize>>,
    /// Seconds over which the clients of a level start, evenly spread.
    #[arg(long, env = "MMRT_LOADTEST_RAMP_UP", default_value_t = 2.0)]
    pub ramp_up: f64,
    /// Seconds each level runs after its ramp-up starts; no turn starts after it.
    #[arg(long, env = "MMRT_LOADTEST_DURATION", default_value_t = 20.0)]
    pub duration: f64,
    /// Most turns per client per level (no limit when not given).
    #[arg(long, env = "MMRT_LOADTEST_MAX_TURNS")]
    pub max_turns: Option<u32>,
    /// Seconds from the start of one turn's speech to the start of the next.
    #[arg(long, env = "MMRT_LOADTEST_TURN_INTERVAL", default_value_t = 5.0)]
    pub turn_interval: f64,
    /// Video frames per second (0 sends none).
    #[arg(long, env = "MMRT_LOADTEST_FPS", default_value_t = 2.0)]
    pub fps: f64,
    /// How a turn ends.
    #[arg(
        long,
        env = "MMRT_LOADTEST_TURN_MODE",
        value_enum,
        default_value = "manual"
    )]
    pub turn_mode: TurnMode,
    /// How media travels.
    #[arg(
        long,
        env = "MMRT_LOADTEST_TRANSPORT",
        value_enum,
        default_value = "binary"
    )]
    pub transport: TransportArg,
    /// How audio is encoded.
    #[arg(long, env = "MMRT_LOADTEST_CODEC", value_enum, default_value = "pcm16")]
    pub codec: CodecArg,
    /// Session input rate: 16000 or 24000.
    #[arg(long, env = "MMRT_LOADTEST_RATE", default_value_t = 16000)]
    pub rate: u32,
    /// Speech WAV files, used in turn (default: every audio sample in the samples
    /// manifest).
    #[arg(long, env = "MMRT_LOADTEST_AUDIO", value_delimiter = ',')]
    pub audio: Vec<PathBuf>,
    /// Folder of JPEG/PNG video frames, looped (default: the first clip of the samples
    /// manifest, else its images).
    #[arg(long, env = "MMRT_LOADTEST_FRAMES")]
    pub frames: Option<PathBuf>,
    /// The samples folder holding `manifest.json`.
    #[arg(long, env = "MMRT_LOADTEST_SAMPLES", default_value = "samples")]
    pub samples: PathBuf,
    /// Output token cap per response.
    #[arg(long, env = "MMRT_LOADTEST_MAX_OUTPUT_TOKENS", default_value_t = 16)]
    pub max_output_tokens: u32,
    /// Seconds a turn may take from its end to `response.done` before it counts as a
    /// timeout.
    #[arg(long, env = "MMRT_LOADTEST_RESPONSE_TIMEOUT", default_value_t = 10.0)]
    pub response_timeout: f64,

    /// Misbehaving clients mixed in beside the well-behaved ones (slow readers,
    /// vanishers, garbage senders, stalled handshakes), counted apart from them.
    #[arg(long, env = "MMRT_LOADTEST_MISBEHAVING", default_value_t = 0)]
    pub misbehaving: usize,
    /// Seconds between samples of the spawned server's resident memory during a level.
    #[arg(long, env = "MMRT_LOADTEST_MEMORY_EVERY", default_value_t = 10.0)]
    pub memory_every: f64,

    /// Folder for report.json, summary.md and latency.svg.
    #[arg(long, env = "MMRT_LOADTEST_OUT", default_value = "target/loadtest")]
    pub out: PathBuf,
    /// No progress bar (for logs and CI).
    #[arg(long, env = "MMRT_LOADTEST_NO_PROGRESS")]
    pub no_progress: bool,
    /// Instead of the latency run, measure server memory at these session counts,
    /// e.g. `1,10,100,1000` (needs `--spawn-server`).
    #[arg(long, env = "MMRT_LOADTEST_MEMORY", value_delimiter = ',')]
    pub memory: Option<Vec<usize>>,
}

impl LoadOptions {
    /// Parses flags as the command line would (without the program name); the
    /// library's entry point for tests and other tools.
    pub fn try_parse_args<I, S>(args: I) -> Result<LoadOptions, clap::Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<std::ffi::OsString> + Clone,
    {
        let program = std::iter::once(std::ffi::OsString::from("mmrt-loadtest"));
        LoadOptions::try_parse_from(program.chain(args.into_iter().map(Into::into)))
    }

    /// Checks values that clap cannot: loopback, ranges, combinations.
    pub fn validate(&self) -> Result<(), LoadError> {
        let bad = |flag, value: String, reason: &str| LoadError::BadOption {
            flag,
            value,
            reason: reason.to_string(),
        };
        if self.spawn_server.is_none() && !self.allow_remote && !is_loopback_url(&self.url) {
            return Err(bad(
                "--url",
                self.url.clone(),
                "not a loopback address; pass --allow-remote to load a remote server",
            ));
        }
        if self.rate != 16000 && self.rate != 24000 {
            return Err(bad(
                "--rate",
                self.rate.to_string(),
                "must be 16000 or 24000",
            ));
        }
        if self.codec == CodecArg::Opus && self.transport == TransportArg::Json {
            return Err(bad(
                "--codec",
                "opus".into(),
                "Opus needs --transport binary",
            ));
        }
        let positive = |x: f64| x.is_finite() && x > 0.0;
        if !positive(self.duration) {
            return Err(bad(
                "--duration",
                self.duration.to_string(),
                "must be above 0",
            ));
        }
        if !positive(self.turn_interval) {
            return Err(bad(
                "--turn-interval",
                self.turn_interval.to_string(),
                "must be above 0",
            ));
        }
        if !(self.fps.is_finite() && self.fps >= 0.0 && self.fps <= 60.0) {
            return Err(bad("--fps", self.fps.to_string(), "must be 0 to 60"));
        }
        if !(self.ramp_up.is_finite() && self.ramp_up >= 0.0) {
            return Err(bad(
                "--ramp-up",
                self.ramp_up.to_string(),
                "must be 0 or more",
            ));
        }
        if !positive(self.response_timeout) {
            return Err(bad(
                "--response-timeout",
                self.response_timeout.to_string(),
                "must be above 0",
            ));
        }
        if self.levels().contains(&0) {
            return Err(bad(
                "--clients/--sweep",
                "0".into(),
                "every level needs a client",
            ));
        }
        if self.memory.is_some() && self.spawn_server.is_none() {
            return Err(bad(
                "--memory",
                "..".into(),
                "needs --spawn-server to read its memory",
            ));
        }
        Ok(())
    }

    /// The concurrency levels to run, in order.
    pub fn levels(&self) -> Vec<usize> {
        match &self.sweep {
            Some(levels) if !levels.is_empty() => levels.clone(),
            _ => vec![self.clients],
        }
    }

    /// The client library's transport.
    pub fn client_transport(&self) -> Transport {
        match self.transport {
            TransportArg::Json => Transport::Json,
            TransportArg::Binary => Transport::Binary,
        }
    }

    /// The client library's codec.
    pub fn client_codec(&self) -> AudioCodec {
        match self.codec {
            CodecArg::Pcm16 => AudioCodec::Pcm16,
            CodecArg::Opus => AudioCodec::Opus,
        }
    }

    /// `--duration` as a duration.
    pub fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.duration)
    }
}

/// Whether `url`'s host is `localhost` or a loopback IP address.
pub fn is_loopback_url(url: &str) -> bool {
    let Some(rest) = url
        .strip_prefix("ws://")
        .or_else(|| url.strip_prefix("wss://"))
        .or_else(|| url.strip_prefix("http://"))
    else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let authority = authority.rsplit('@').next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.split(':').next().unwrap_or_default(),
    };
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_urls_are_told_apart() {
        for url in [
            "ws://127.0.0.1:8080/v1/realtime",
            "ws://127.9.9.9/x",
            "ws://localhost:1/v1/realtime",
            "ws://[::1]:8080/v1/realtime",
            "ws://user@127.0.0.1:80/",
        ] {
            assert!(is_loopback_url(url), "{url}");
        }
        for url in [
            "ws://10.0.0.1:8080/v1/realtime",
            "ws://example.com/v1/realtime",
            "ws://127.0.0.1.example.com/",
            "ws://[2001:db8::1]:80/",
            "ftp://127.0.0.1/",
            "127.0.0.1:8080",
        ] {
            assert!(!is_loopback_url(url), "{url}");
        }
    }

    #[test]
    fn remote_url_is_refused_without_the_flag() {
        let mut options = LoadOptions::parse_from(["t", "--url", "ws://192.0.2.1/v1/realtime"]);
        assert!(matches!(
            options.validate(),
            Err(LoadError::BadOption { flag: "--url", .. })
        ));
        options.allow_remote = true;
        assert!(options.validate().is_ok());
    }

    #[test]
    fn sweep_overrides_clients() {
        let options = LoadOptions::parse_from(["t", "--clients", "3", "--sweep", "1,4,16"]);
        assert_eq!(options.levels(), [1, 4, 16]);
        assert_eq!(
            LoadOptions::parse_from(["t", "--clients", "3"]).levels(),
            [3]
        );
    }
}
