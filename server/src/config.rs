//! Server configuration: every option is a command-line flag, an environment variable
//! and a key of the optional TOML file given with `--config`.
//!
//! A flag wins over its environment variable (clap reads both into one value), which
//! wins over the file, which wins over the default. [`Options::resolve`] checks every
//! value once at start and names the option and the value it rejects.
//! `docs/configuration.md` lists them all.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mmrt_protocol::SessionLimits;
use serde::Deserialize;

/// What went wrong with the configuration; every message names the option.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--config {path}: {source}")]
    ReadFile {
        path: String,
        source: std::io::Error,
    },
    #[error("--config {path}: {message}")]
    ParseFile { path: String, message: String },
    #[error("--{flag} {value}: {reason} (env {env}, config key `{key}`)")]
    Invalid {
        flag: &'static str,
        env: &'static str,
        key: &'static str,
        value: String,
        reason: String,
    },
    #[error("--api-keys-file {path}: {source}")]
    ApiKeys {
        path: String,
        source: std::io::Error,
    },
}

/// Declares [`Options`] (clap flags with env vars, every one optional so that the
/// file and the defaults can fill in) and the merge of the file into it.
macro_rules! options {
    ($( $(#[doc = $doc:literal])* $field:ident : $ty:ty = $env:literal ),* $(,)?) => {
        /// The raw options: flags and environment, or keys of the TOML file.
        #[derive(clap::Args, Deserialize, Debug, Clone, Default)]
        #[serde(deny_unknown_fields, rename_all = "snake_case")]
        pub struct Options {
            /// TOML file with any of these options as keys (snake_case).
            #[arg(long, env = "MMRT_CONFIG")]
            #[serde(skip)]
            pub config: Option<PathBuf>,
            $(
                $(#[doc = $doc])*
                #[arg(long, env = $env)]
                #[serde(default)]
                pub $field: Option<$ty>,
            )*
        }

        impl Options {
            /// Fills every option not given as a flag or env var from `file`.
            fn merge(mut self, file: Options) -> Options {
                $( if self.$field.is_none() { self.$field = file.$field; } )*
                self
            }
        }
    };
}

options! {
    /// Address to listen on [default: 127.0.0.1:8080].
    listen: SocketAddr = "MMRT_LISTEN",
    /// Model bundle folder, or the name of one installed in the cache's `bundles/`
    /// [default: the built-in tiny bundle].
    bundle: PathBuf = "MMRT_BUNDLE",
    /// Execution provider: cpu, cuda, tensorrt or auto [default: cpu].
    execution_provider: String = "MMRT_EXECUTION_PROVIDER",
    /// ONNX Runtime library to load instead of the pinned one.
    ort_library: PathBuf = "ORT_DYLIB_PATH",
    /// Which pinned ONNX Runtime to fetch: cpu or gpu [default: cpu].
    ort_flavour: String = "MMRT_ORT_FLAVOUR",
    /// Cache folder for the runtime library and TensorRT engines.
    cache_dir: PathBuf = "MMRT_CACHE_DIR",
    /// Intra-op threads per model, 0 lets ONNX Runtime choose [default: 1].
    intra_threads: usize = "MMRT_INTRA_THREADS",
    /// Log format: human or json [default: human].
    log_format: String = "MMRT_LOG_FORMAT",
    /// Most sessions at once; more are refused with session_limit [default: 1000].
    max_sessions: usize = "MMRT_MAX_SESSIONS",
    /// Jobs waiting for the models before new ones are refused as overloaded [default: 4096].
    queue: usize = "MMRT_QUEUE",
    /// Events queued for one client before it is closed as a slow consumer [default: 512].
    send_queue: usize = "MMRT_SEND_QUEUE",
    /// Seconds one WebSocket write may take before the client is dropped [default: 10].
    send_timeout_seconds: f64 = "MMRT_SEND_TIMEOUT_SECONDS",
    /// Seconds responses get to finish on shutdown [default: 10].
    drain_seconds: f64 = "MMRT_DRAIN_SECONDS",
    /// Largest WebSocket message, in bytes [default: 4194304].
    max_message_bytes: u64 = "MMRT_MAX_MESSAGE_BYTES",
    /// Most uncommitted input audio per session, in seconds [default: 60].
    max_audio_buffer_seconds: f64 = "MMRT_MAX_AUDIO_BUFFER_SECONDS",
    /// Largest image or video frame, in bytes [default: 8388608].
    max_image_bytes: u64 = "MMRT_MAX_IMAGE_BYTES",
    /// Largest image width or height, in pixels [default: 4096].
    max_image_dimension: u32 = "MMRT_MAX_IMAGE_DIMENSION",
    /// Most output tokens in one response [default: 1024].
    max_output_tokens: u32 = "MMRT_MAX_OUTPUT_TOKENS",
    /// Video frames a session may send per second; more are rate_limited [default: 60].
    max_frames_per_second: f64 = "MMRT_MAX_FRAMES_PER_SECOND",
    /// Most tokens one response may hold in its KV cache, prompt and output [default: 4096].
    max_kv_tokens: usize = "MMRT_MAX_KV_TOKENS",
    /// Seconds a session may receive nothing before it is closed [default: 300].
    idle_timeout_seconds: f64 = "MMRT_IDLE_TIMEOUT_SECONDS",
    /// Seconds between WebSocket pings [default: 20].
    ping_interval_seconds: f64 = "MMRT_PING_INTERVAL_SECONDS",
    /// Seconds after a missed ping before a silent client is closed [default: 20].
    pong_timeout_seconds: f64 = "MMRT_PONG_TIMEOUT_SECONDS",
    /// File of API keys, one a line; when set (or MMRT_API_KEYS is), clients must send one.
    api_keys_file: PathBuf = "MMRT_API_KEYS_FILE",
    /// Origins allowed to open sessions, comma-separated; any when not set.
    allowed_origins: String = "MMRT_ALLOWED_ORIGINS",
    /// KV slots: responses decoding at once; more wait in arrival order [default: 256].
    max_active_responses: usize = "MMRT_MAX_ACTIVE_RESPONSES",
    /// Most responses in one decode pass [default: 32].
    max_decode_batch: usize = "MMRT_MAX_DECODE_BATCH",
    /// Most responses prefilled in one pass [default: 32].
    max_prefill_batch: usize = "MMRT_MAX_PREFILL_BATCH",
    /// Most audio chunks or frames in one encoder call [default: 64].
    encoder_max_batch: usize = "MMRT_ENCODER_MAX_BATCH",
    /// Milliseconds an encoder job may wait for batch mates while nothing decodes [default: 0].
    encoder_max_wait_ms: f64 = "MMRT_ENCODER_MAX_WAIT_MS",
    /// PEM certificate chain; with --tls-key, the server speaks TLS (wss://).
    tls_cert: PathBuf = "MMRT_TLS_CERT",
    /// PEM private key for --tls-cert.
    tls_key: PathBuf = "MMRT_TLS_KEY",
    /// Seconds a new connection gets to finish TLS and send its request headers [default: 10].
    handshake_timeout_seconds: f64 = "MMRT_HANDSHAKE_TIMEOUT_SECONDS",
    /// Detector behind server_vad turns: energy, or silero (the Silero model) [default: energy].
    vad_model: String = "MMRT_VAD_MODEL",
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

/// The checked configuration the server runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub bundle: Option<PathBuf>,
    pub execution_provider: mmrt_models::ExecutionProviderKind,
    pub ort_library: Option<PathBuf>,
    pub ort_flavour: String,
    pub cache_dir: Option<PathBuf>,
    pub intra_threads: usize,
    pub log_format: LogFormat,
    pub max_sessions: usize,
    /// Batching and KV slots of the engine.
    pub engine: crate::engine::EngineConfig,
    pub send_queue: usize,
    pub send_timeout: Duration,
    pub drain: Duration,
    pub limits: SessionLimits,
    pub max_frames_per_second: f64,
    pub max_kv_tokens: usize,
    pub ping_interval: Duration,
    pub pong_timeout: Duration,
    /// Accepted API keys; empty means no authentication. Never logged.
    pub api_keys: ApiKeys,
    pub allowed_origins: Vec<String>,
    /// Certificate chain and key files, both or neither.
    pub tls: Option<(PathBuf, PathBuf)>,
    pub handshake_timeout: Duration,
    /// The detector behind `server_vad` turns.
    pub vad_model: mmrt_protocol::session::VadModel,
}

/// API keys, kept out of `Debug` output and logs.
#[derive(Clone, Default)]
pub struct ApiKeys(pub Vec<String>);

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKeys({} redacted)", self.0.len())
    }
}

/// Names of one option in all three places, for error messages.
struct Name {
    flag: &'static str,
    env: &'static str,
    key: &'static str,
}

const fn name(flag: &'static str, env: &'static str, key: &'static str) -> Name {
    Name { flag, env, key }
}

fn invalid(name: Name, value: impl std::fmt::Display, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        flag: name.flag,
        env: name.env,
        key: name.key,
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// A positive, finite number of seconds.
fn seconds(name: Name, value: Option<f64>, default: f64) -> Result<Duration, ConfigError> {
    let v = value.unwrap_or(default);
    if !v.is_finite() || v <= 0.0 || v > 1e9 {
        return Err(invalid(name, v, "must be a positive number of seconds"));
    }
    Ok(Duration::from_secs_f64(v))
}

fn at_least<T: PartialOrd + std::fmt::Display + Copy>(
    name: Name,
    value: Option<T>,
    default: T,
    min: T,
) -> Result<T, ConfigError> {
    let v = value.unwrap_or(default);
    if v < min {
        return Err(invalid(name, v, format!("must be at least {min}")));
    }
    Ok(v)
}

impl Options {
    /// Reads the `--config` file if there is one, fills the gaps from it, applies the
    /// defaults and checks every value. `api_keys_env` is `MMRT_API_KEYS`, read by the
    /// caller so that tests need not touch the process environment.
    pub fn resolve(self, api_keys_env: Option<String>) -> Result<Settings, ConfigError> {
        let options = match &self.config {
            Some(path) => {
                let file = read_file(path)?;
                self.merge(file)
            }
            None => self,
        };
        options.check(api_keys_env)
    }

    fn check(self, api_keys_env: Option<String>) -> Result<Settings, ConfigError> {
        let provider_text = self.execution_provider.unwrap_or_else(|| "cpu".into());
        let execution_provider = provider_text.parse().map_err(|e| {
            invalid(
                name(
                    "execution-provider",
                    "MMRT_EXECUTION_PROVIDER",
                    "execution_provider",
                ),
                &provider_text,
                format!("{e}"),
            )
        })?;
        let ort_flavour = self.ort_flavour.unwrap_or_else(|| "cpu".into());
        if ort_flavour != "cpu" && ort_flavour != "gpu" {
            return Err(invalid(
                name("ort-flavour", "MMRT_ORT_FLAVOUR", "ort_flavour"),
                &ort_flavour,
                "expected cpu or gpu",
            ));
        }
        let log_format = match self.log_format.as_deref().unwrap_or("human") {
            "human" => LogFormat::Human,
            "json" => LogFormat::Json,
            other => {
                return Err(invalid(
                    name("log-format", "MMRT_LOG_FORMAT", "log_format"),
                    other,
                    "expected human or json",
                ))
            }
        };
        let vad_text = self.vad_model.unwrap_or_else(|| "energy".into());
        let vad_model = vad_text.parse().map_err(|e: String| {
            invalid(
                name("vad-model", "MMRT_VAD_MODEL", "vad_model"),
                &vad_text,
                e,
            )
        })?;
        let listen = match self.listen {
            Some(addr) => addr,
            None => mmrt_protocol::DEFAULT_ADDR
                .parse()
                .expect("the default address parses"),
        };

        let max_message_bytes = at_least(
            name(
                "max-message-bytes",
                "MMRT_MAX_MESSAGE_BYTES",
                "max_message_bytes",
            ),
            self.max_message_bytes,
            4 << 20,
            1024,
        )?;
        let audio_seconds = seconds(
            name(
                "max-audio-buffer-seconds",
                "MMRT_MAX_AUDIO_BUFFER_SECONDS",
                "max_audio_buffer_seconds",
            ),
            self.max_audio_buffer_seconds,
            60.0,
        )?;
        let idle = seconds(
            name(
                "idle-timeout-seconds",
                "MMRT_IDLE_TIMEOUT_SECONDS",
                "idle_timeout_seconds",
            ),
            self.idle_timeout_seconds,
            300.0,
        )?;
        let max_image_bytes = at_least(
            name("max-image-bytes", "MMRT_MAX_IMAGE_BYTES", "max_image_bytes"),
            self.max_image_bytes,
            8 << 20,
            1,
        )?;
        let max_image_dimension = at_least(
            name(
                "max-image-dimension",
                "MMRT_MAX_IMAGE_DIMENSION",
                "max_image_dimension",
            ),
            self.max_image_dimension,
            4096,
            1,
        )?;
        let max_output_tokens = at_least(
            name(
                "max-output-tokens",
                "MMRT_MAX_OUTPUT_TOKENS",
                "max_output_tokens",
            ),
            self.max_output_tokens,
            1024,
            1,
        )?;
        let max_kv_tokens = at_least(
            name("max-kv-tokens", "MMRT_MAX_KV_TOKENS", "max_kv_tokens"),
            self.max_kv_tokens,
            4096,
            2,
        )?;
        let fps_name = name(
            "max-frames-per-second",
            "MMRT_MAX_FRAMES_PER_SECOND",
            "max_frames_per_second",
        );
        let max_frames_per_second = self.max_frames_per_second.unwrap_or(60.0);
        if !max_frames_per_second.is_finite() || max_frames_per_second <= 0.0 {
            return Err(invalid(
                fps_name,
                max_frames_per_second,
                "must be a positive number",
            ));
        }
        let ping_interval = seconds(
            name(
                "ping-interval-seconds",
                "MMRT_PING_INTERVAL_SECONDS",
                "ping_interval_seconds",
            ),
            self.ping_interval_seconds,
            20.0,
        )?;
        let pong_timeout = seconds(
            name(
                "pong-timeout-seconds",
                "MMRT_PONG_TIMEOUT_SECONDS",
                "pong_timeout_seconds",
            ),
            self.pong_timeout_seconds,
            20.0,
        )?;
        let handshake_timeout = seconds(
            name(
                "handshake-timeout-seconds",
                "MMRT_HANDSHAKE_TIMEOUT_SECONDS",
                "handshake_timeout_seconds",
            ),
            self.handshake_timeout_seconds,
            10.0,
        )?;
        let tls = match (self.tls_cert, self.tls_key) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some((cert, key)),
            (Some(cert), None) => {
                return Err(invalid(
                    name("tls-cert", "MMRT_TLS_CERT", "tls_cert"),
                    cert.display(),
                    "needs --tls-key too",
                ))
            }
            (None, Some(key)) => {
                return Err(invalid(
                    name("tls-key", "MMRT_TLS_KEY", "tls_key"),
                    key.display(),
                    "needs --tls-cert too",
                ))
            }
        };
        // Everything a client may need to stay under, announced in `session.created`.
        let limits = SessionLimits {
            max_event_bytes: max_message_bytes,
            max_audio_buffer_ms: audio_seconds.as_millis() as u64,
            max_image_bytes,
            max_image_dimension,
            max_output_tokens,
            idle_timeout_ms: idle.as_millis() as u64,
            max_frames_per_second: max_frames_per_second.floor() as u32,
            max_kv_tokens: max_kv_tokens.min(u32::MAX as usize) as u32,
            ping_interval_ms: ping_interval.as_millis() as u64,
            pong_timeout_ms: pong_timeout.as_millis() as u64,
            handshake_timeout_ms: handshake_timeout.as_millis() as u64,
            ..SessionLimits::default()
        };

        let mut api_keys = Vec::new();
        if let Some(path) = &self.api_keys_file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ApiKeys {
                path: path.display().to_string(),
                source,
            })?;
            api_keys.extend(parse_keys(&text, '\n'));
            if api_keys.is_empty() {
                return Err(invalid(
                    name("api-keys-file", "MMRT_API_KEYS_FILE", "api_keys_file"),
                    path.display(),
                    "the file holds no keys",
                ));
            }
        }
        if let Some(env) = api_keys_env {
            api_keys.extend(parse_keys(&env, ','));
        }
        let allowed_origins = self
            .allowed_origins
            .as_deref()
            .map(|s| {
                s.split(',')
                    .map(|o| o.trim().trim_end_matches('/').to_string())
                    .filter(|o| !o.is_empty())
                    .collect()
            })
            .unwrap_or_default();

        let bundle = self
            .bundle
            .map(|b| resolve_bundle(b, self.cache_dir.as_deref()));
        Ok(Settings {
            listen,
            bundle,
            execution_provider,
            ort_library: self.ort_library,
            ort_flavour,
            cache_dir: self.cache_dir,
            intra_threads: self.intra_threads.unwrap_or(1),
            log_format,
            max_sessions: at_least(
                name("max-sessions", "MMRT_MAX_SESSIONS", "max_sessions"),
                self.max_sessions,
                1000,
                1,
            )?,
            engine: crate::engine::EngineConfig {
                queue: at_least(name("queue", "MMRT_QUEUE", "queue"), self.queue, 4096, 1)?,
                max_kv_tokens,
                max_active_responses: at_least(
                    name(
                        "max-active-responses",
                        "MMRT_MAX_ACTIVE_RESPONSES",
                        "max_active_responses",
                    ),
                    self.max_active_responses,
                    256,
                    1,
                )?,
                max_decode_batch: at_least(
                    name(
                        "max-decode-batch",
                        "MMRT_MAX_DECODE_BATCH",
                        "max_decode_batch",
                    ),
                    self.max_decode_batch,
                    32,
                    1,
                )?,
                max_prefill_batch: at_least(
                    name(
                        "max-prefill-batch",
                        "MMRT_MAX_PREFILL_BATCH",
                        "max_prefill_batch",
                    ),
                    self.max_prefill_batch,
                    32,
                    1,
                )?,
                encoder_max_batch: at_least(
                    name(
                        "encoder-max-batch",
                        "MMRT_ENCODER_MAX_BATCH",
                        "encoder_max_batch",
                    ),
                    self.encoder_max_batch,
                    64,
                    1,
                )?,
                encoder_max_wait: {
                    let wait = self.encoder_max_wait_ms.unwrap_or(0.0);
                    if !wait.is_finite() || !(0.0..=1000.0).contains(&wait) {
                        return Err(invalid(
                            name(
                                "encoder-max-wait-ms",
                                "MMRT_ENCODER_MAX_WAIT_MS",
                                "encoder_max_wait_ms",
                            ),
                            wait,
                            "must be between 0 and 1000 milliseconds",
                        ));
                    }
                    Duration::from_secs_f64(wait / 1000.0)
                },
            },
            send_queue: at_least(
                name("send-queue", "MMRT_SEND_QUEUE", "send_queue"),
                self.send_queue,
                512,
                1,
            )?,
            send_timeout: seconds(
                name(
                    "send-timeout-seconds",
                    "MMRT_SEND_TIMEOUT_SECONDS",
                    "send_timeout_seconds",
                ),
                self.send_timeout_seconds,
                10.0,
            )?,
            drain: seconds(
                name("drain-seconds", "MMRT_DRAIN_SECONDS", "drain_seconds"),
                self.drain_seconds,
                10.0,
            )?,
            limits,
            max_frames_per_second,
            max_kv_tokens,
            ping_interval,
            pong_timeout,
            api_keys: ApiKeys(api_keys),
            allowed_origins,
            tls,
            handshake_timeout,
            vad_model,
        })
    }
}

/// A bare name (`assistant-en`) that is no folder in the working directory means the
/// bundle installed under that name: `<cache>/bundles/<name>`. Anything else is a path.
fn resolve_bundle(path: PathBuf, cache_dir: Option<&Path>) -> PathBuf {
    let mut parts = path.components();
    let bare = matches!(
        (parts.next(), parts.next()),
        (Some(std::path::Component::Normal(_)), None)
    );
    if !bare || path.exists() {
        return path;
    }
    let cache = cache_dir.map_or_else(mmrt_models::runtime::default_cache_dir, Path::to_path_buf);
    cache.join("bundles").join(path)
}

fn read_file(path: &Path) -> Result<Options, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
        path: path.display().to_string(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::ParseFile {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

/// Keys separated by `sep`; blank entries and `#` comments are skipped.
fn parse_keys(text: &str, sep: char) -> impl Iterator<Item = String> + '_ {
    text.split(sep)
        .map(str::trim)
        .filter(|k| !k.is_empty() && !k.starts_with('#'))
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_temp(name: &str, text: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("mmrt-config-{}-{name}", std::process::id()));
        std::fs::write(&path, text).expect("writing a temp file");
        path
    }

    #[test]
    fn defaults_resolve() {
        let settings = Options::default()
            .resolve(None)
            .expect("defaults are valid");
        assert_eq!(settings.max_sessions, 1000);
        assert_eq!(settings.limits.max_audio_buffer_ms, 60_000);
        assert!(settings.api_keys.0.is_empty());
    }

    #[test]
    fn flags_win_over_the_file() {
        let path = write_temp(
            "a.toml",
            "max_sessions = 7\nidle_timeout_seconds = 2.5\nlog_format = \"json\"\n",
        );
        let options = Options {
            config: Some(path.clone()),
            max_sessions: Some(3),
            ..Options::default()
        };
        let settings = options.resolve(None).expect("valid");
        assert_eq!(settings.max_sessions, 3);
        assert_eq!(settings.limits.idle_timeout_ms, 2500);
        assert_eq!(settings.log_format, LogFormat::Json);
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn errors_name_the_option_and_value() {
        let options = Options {
            log_format: Some("xml".into()),
            ..Options::default()
        };
        let err = options.resolve(None).expect_err("xml is no log format");
        let text = err.to_string();
        assert!(text.contains("--log-format xml"), "{text}");
        assert!(text.contains("MMRT_LOG_FORMAT"), "{text}");

        let options = Options {
            idle_timeout_seconds: Some(-1.0),
            ..Options::default()
        };
        let text = options.resolve(None).expect_err("negative").to_string();
        assert!(text.contains("--idle-timeout-seconds -1"), "{text}");
    }

    #[test]
    fn unknown_file_keys_are_rejected() {
        let path = write_temp("b.toml", "max_sesions = 7\n");
        let options = Options {
            config: Some(path.clone()),
            ..Options::default()
        };
        let text = options.resolve(None).expect_err("typo").to_string();
        assert!(text.contains("max_sesions"), "{text}");
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn the_vad_model_is_checked() {
        use mmrt_protocol::session::VadModel;
        let settings = Options::default().resolve(None).expect("valid");
        assert_eq!(settings.vad_model, VadModel::Energy);
        let path = write_temp("c.toml", "vad_model = \"silero\"\n");
        let options = Options {
            config: Some(path.clone()),
            ..Options::default()
        };
        let settings = options.resolve(None).expect("valid");
        assert_eq!(settings.vad_model, VadModel::Silero);
        let _ = std::fs::remove_file(path);
        let options = Options {
            vad_model: Some("webrtc".into()),
            ..Options::default()
        };
        let text = options.resolve(None).expect_err("unknown").to_string();
        assert!(text.contains("--vad-model webrtc"), "{text}");
        assert!(text.contains("MMRT_VAD_MODEL"), "{text}");
        assert!(text.contains("energy or silero"), "{text}");
    }

    #[test]
    fn tls_needs_both_files() {
        let options = Options {
            tls_cert: Some("cert.pem".into()),
            ..Options::default()
        };
        let text = options.resolve(None).expect_err("no key").to_string();
        assert!(text.contains("--tls-cert cert.pem"), "{text}");
        assert!(text.contains("--tls-key"), "{text}");
    }

    #[test]
    fn bare_bundle_names_resolve_to_the_cache() {
        let cache = Path::new("/var/cache/mmrt-test");
        let options = Options {
            bundle: Some("assistant-en".into()),
            cache_dir: Some(cache.into()),
            ..Options::default()
        };
        let settings = options.resolve(None).expect("valid");
        assert_eq!(
            settings.bundle.as_deref(),
            Some(cache.join("bundles/assistant-en").as_path())
        );

        // Paths, and names that exist where the server starts, are left as they are.
        for given in ["./assistant-en", "bundles/tiny", "/opt/b", "src"] {
            assert_eq!(
                resolve_bundle(given.into(), Some(cache)),
                PathBuf::from(given)
            );
        }
    }

    #[test]
    fn api_keys_are_redacted() {
        let settings = Options::default()
            .resolve(Some("sk-one, sk-two".into()))
            .expect("valid");
        assert_eq!(settings.api_keys.0, ["sk-one", "sk-two"]);
        let shown = format!("{settings:?}");
        assert!(!shown.contains("sk-one"), "{shown}");
    }
}
