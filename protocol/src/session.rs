//! Session configuration: what `session.update` asks for and what the server holds.
//!
//! [`SessionUpdate`] is the partial object a client sends; every field is optional and
//! unknown fields (tools, voice, transcription...) are ignored so that OpenAI Realtime
//! clients work unchanged. Both the GA shape (`audio.input.format`,
//! `audio.input.turn_detection`, `output_modalities`) and the older beta flat shape
//! (`input_audio_format: "pcm16"`, `turn_detection`, `modalities`) are read.
//! [`Session`] is the full, resolved object the server announces in `session.created`
//! and `session.updated`; [`Session::apply_update`] merges and validates one into the
//! other without touching it on error.

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

use crate::error::ProtocolError;
use crate::PROTOCOL_VERSION;

/// Input audio sample rates the server accepts.
pub const SUPPORTED_INPUT_RATES: [u32; 2] = [16_000, 24_000];

/// The input rate when the client names none; the OpenAI Realtime API's rate.
pub const DEFAULT_INPUT_RATE: u32 = 24_000;

/// A modality of model output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Modality {
    /// Text deltas.
    Text,
    /// Speech; accepted in requests for compatibility, answered with text only.
    Audio,
}

/// The session kind; only realtime (conversation) sessions exist here.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SessionType {
    /// A speech-to-text conversation session.
    #[default]
    Realtime,
}

/// The `object` tag of a session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SessionObject {
    /// `"realtime.session"`.
    #[default]
    #[serde(rename = "realtime.session")]
    RealtimeSession,
}

/// The GA audio format type; raw 16-bit little-endian mono PCM is the only one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum AudioFormatType {
    /// `"audio/pcm"`: PCM16 little-endian, mono.
    #[default]
    #[serde(rename = "audio/pcm")]
    Pcm,
}

/// GA audio format: `{"type": "audio/pcm", "rate": 24000}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AudioFormat {
    /// The encoding.
    #[serde(rename = "type")]
    pub kind: AudioFormatType,
    /// Samples per second: 16000 or 24000. Absent means 24000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<u32>,
}

/// Beta flat audio format name; only `pcm16` (at 24 kHz) is accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LegacyAudioFormat {
    /// PCM16 little-endian mono at 24 kHz.
    Pcm16,
}

/// `max_output_tokens`: a count, or `"inf"` for the server's limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum MaxTokens {
    /// At most this many tokens.
    Count(u32),
    /// As many as the server allows.
    Inf(Infinite),
}

/// The literal `"inf"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Infinite {
    /// `"inf"`.
    #[serde(rename = "inf")]
    Inf,
}

impl MaxTokens {
    /// The effective count under a server limit; errors name `param`.
    pub fn resolve(self, limit: u32, param: &str) -> Result<u32, ProtocolError> {
        match self {
            MaxTokens::Inf(_) => Ok(limit),
            MaxTokens::Count(0) => Err(ProtocolError::invalid_field(param, "must be at least 1")),
            MaxTokens::Count(n) if n > limit => Err(ProtocolError::invalid_field(
                param,
                format!("must be at most {limit} on this server"),
            )),
            MaxTokens::Count(n) => Ok(n),
        }
    }
}

/// Server VAD settings as a client sends them; absent fields keep their value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ServerVadUpdate {
    /// Speech probability threshold, 0.0 to 1.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f32>,
    /// Audio kept before detected speech start, in ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_padding_ms: Option<u32>,
    /// Silence that ends a turn, in ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub silence_duration_ms: Option<u32>,
    /// Start a response when a turn ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_response: Option<bool>,
    /// Cancel a running response when new speech starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interrupt_response: Option<bool>,
}

/// Turn detection as a client sends it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TurnDetectionUpdate {
    /// Voice activity detection on the server.
    ServerVad(ServerVadUpdate),
    /// GA semantic VAD; accepted for compatibility and run as server VAD with its
    /// current thresholds (`eagerness` is ignored).
    SemanticVad(SemanticVadUpdate),
}

/// Semantic VAD settings as a client sends them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SemanticVadUpdate {
    /// `low`, `medium`, `high` or `auto`; ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eagerness: Option<String>,
    /// Start a response when a turn ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_response: Option<bool>,
    /// Cancel a running response when new speech starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interrupt_response: Option<bool>,
}

/// Resolved server VAD settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ServerVad {
    /// Speech probability threshold, 0.0 to 1.0.
    pub threshold: f32,
    /// Audio kept before detected speech start, in ms.
    pub prefix_padding_ms: u32,
    /// Silence that ends a turn, in ms.
    pub silence_duration_ms: u32,
    /// Start a response when a turn ends.
    pub create_response: bool,
    /// Cancel a running response when new speech starts.
    pub interrupt_response: bool,
}

impl Default for ServerVad {
    fn default() -> Self {
        ServerVad {
            threshold: 0.5,
            prefix_padding_ms: 300,
            silence_duration_ms: 500,
            create_response: true,
            interrupt_response: true,
        }
    }
}

/// Resolved turn detection; `null` in the session means manual turns (commit).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TurnDetection {
    /// Voice activity detection on the server.
    ServerVad(ServerVad),
}

/// How the server fills a modality that is missing or stale when a response starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FillPolicy {
    /// Predict the missing embedding from the modalities present (completion model).
    Completion,
    /// Reuse the last embedding received, if younger than `max_age_ms`.
    LastKnown,
    /// Use the learned "nothing here" embedding.
    Null,
    /// Leave the modality out of the prompt.
    Omit,
}

/// Fill policy per modality, as a client sends it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct FillPolicyUpdate {
    /// For images and video frames.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<FillPolicy>,
    /// For audio.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio: Option<FillPolicy>,
}

/// Resolved fill policy per modality.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct FillPolicies {
    /// For images and video frames.
    pub image: FillPolicy,
    /// For audio.
    pub audio: FillPolicy,
}

/// Video sampling, as a client sends it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct VideoConfigUpdate {
    /// Frames per second the server keeps from `mmrt.input_video.frame` input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_fps: Option<f32>,
    /// Most recent frames given to the model in one response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_frames: Option<u32>,
}

/// Resolved video sampling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct VideoConfig {
    /// Frames per second the server keeps; extra frames are dropped.
    pub sample_fps: f32,
    /// Most recent frames given to the model in one response.
    pub max_frames: u32,
}

/// The `mmrt` extension of `session.update`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MmrtSessionUpdate {
    /// How missing or stale modalities are filled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fill_policy: Option<FillPolicyUpdate>,
    /// Input older than this when a response starts counts as stale, in ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_ms: Option<u64>,
    /// Video sampling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub video: Option<VideoConfigUpdate>,
}

/// Per-session caps, announced so that clients can stay under them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SessionLimits {
    /// Largest text or binary WebSocket message, in bytes.
    pub max_event_bytes: u64,
    /// Most uncommitted audio in the input buffer, in ms.
    pub max_audio_buffer_ms: u64,
    /// Largest image or video frame, in bytes (encoded or raw).
    pub max_image_bytes: u64,
    /// Largest image width or height, in pixels.
    pub max_image_dimension: u32,
    /// Most conversation items kept; older ones are dropped first.
    pub max_items: u32,
    /// Most output tokens in one response.
    pub max_output_tokens: u32,
    /// Most video frames kept (`video.max_frames` cannot exceed it).
    pub max_frames: u32,
    /// A session that receives nothing for this long is closed, in ms.
    pub idle_timeout_ms: u64,
    /// Most video frames accepted per second; more are refused with `rate_limited`.
    #[serde(default)]
    pub max_frames_per_second: u32,
    /// Most KV-cache positions one response holds, prompt and output together.
    #[serde(default)]
    pub max_kv_tokens: u32,
    /// The server pings this often, in ms.
    #[serde(default)]
    pub ping_interval_ms: u64,
    /// A client that does not answer a ping within this time is closed, in ms.
    #[serde(default)]
    pub pong_timeout_ms: u64,
    /// A new connection must finish TLS and send its request headers within this, in ms.
    #[serde(default)]
    pub handshake_timeout_ms: u64,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            max_event_bytes: 4 << 20,
            max_audio_buffer_ms: 60_000,
            max_image_bytes: 8 << 20,
            max_image_dimension: 4096,
            max_items: 256,
            max_output_tokens: 1024,
            max_frames: 64,
            idle_timeout_ms: 300_000,
            max_frames_per_second: 60,
            max_kv_tokens: 4096,
            ping_interval_ms: 20_000,
            pong_timeout_ms: 20_000,
            handshake_timeout_ms: 10_000,
        }
    }
}

/// The detector that runs `server_vad` turn detection, chosen by the server operator.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum VadModel {
    /// Loudness: `threshold` maps onto -55..-15 dBFS.
    #[default]
    Energy,
    /// The Silero VAD model: `threshold` is its speech probability.
    Silero,
}

impl VadModel {
    /// The name used on the wire and in the server's configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            VadModel::Energy => "energy",
            VadModel::Silero => "silero",
        }
    }
}

impl std::str::FromStr for VadModel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "energy" => Ok(VadModel::Energy),
            "silero" => Ok(VadModel::Silero),
            other => Err(format!(
                "unknown VAD model `{other}`; expected energy or silero"
            )),
        }
    }
}

/// The resolved `mmrt` extension of a session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MmrtSession {
    /// [`PROTOCOL_VERSION`] of the server.
    pub protocol_version: String,
    /// How missing or stale modalities are filled.
    pub fill_policy: FillPolicies,
    /// Input older than this when a response starts counts as stale, in ms.
    pub max_age_ms: u64,
    /// Video sampling.
    pub video: VideoConfig,
    /// Per-session caps.
    pub limits: SessionLimits,
    /// The detector behind `server_vad` on this server (read-only; absent from servers
    /// older than this field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vad_model: Option<VadModel>,
}

/// Audio input settings of a session update.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AudioInputUpdate {
    /// The input audio format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<AudioFormat>,
    /// Turn detection; `null` switches to manual turns.
    #[serde(
        default,
        deserialize_with = "present_or_null",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<TurnDetectionUpdate>")]
    pub turn_detection: Option<Option<TurnDetectionUpdate>>,
}

/// Audio settings of a session update.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AudioUpdate {
    /// Input side; output (voice) settings are ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<AudioInputUpdate>,
}

/// The `session` object of `session.update`: a partial update.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SessionUpdate {
    /// `"realtime"` (GA requires it; absent is accepted).
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub session_type: Option<SessionType>,
    /// Model name; the server serves its own model and ignores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// GA output modalities.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_modalities: Option<Vec<Modality>>,
    /// Beta name of `output_modalities`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modalities: Option<Vec<Modality>>,
    /// System instructions; stored and echoed, the model may ignore them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instructions: Option<String>,
    /// GA audio settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audio: Option<AudioUpdate>,
    /// Beta flat input format; `pcm16` means 24 kHz.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_audio_format: Option<LegacyAudioFormat>,
    /// Beta flat turn detection; `null` switches to manual turns.
    #[serde(
        default,
        deserialize_with = "present_or_null",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<TurnDetectionUpdate>")]
    pub turn_detection: Option<Option<TurnDetectionUpdate>>,
    /// Default output token cap for responses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<MaxTokens>,
    /// Beta name of `max_output_tokens`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_response_output_tokens: Option<MaxTokens>,
    /// Sampling temperature, 0.0 to 2.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    /// mmrt extensions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mmrt: Option<MmrtSessionUpdate>,
}

/// Resolved audio input settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AudioInput {
    /// The input audio format, always with its rate.
    pub format: AudioFormat,
    /// Turn detection; `null` means manual turns.
    pub turn_detection: Option<TurnDetection>,
}

/// Resolved audio settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AudioConfig {
    /// Input side.
    pub input: AudioInput,
}

/// The full session, as `session.created` and `session.updated` carry it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Session {
    /// Always `"realtime"`.
    #[serde(rename = "type")]
    pub session_type: SessionType,
    /// Always `"realtime.session"`.
    pub object: SessionObject,
    /// Server-assigned session id.
    pub id: String,
    /// The model bundle serving this session.
    pub model: String,
    /// Always `["text"]`: the server answers in text.
    pub output_modalities: Vec<Modality>,
    /// System instructions as last set.
    pub instructions: String,
    /// Audio settings.
    pub audio: AudioConfig,
    /// Default output token cap for responses.
    pub max_output_tokens: MaxTokens,
    /// Sampling temperature.
    pub temperature: f32,
    /// mmrt extensions: protocol version, fill policy, limits.
    pub mmrt: MmrtSession,
}

/// Settings one response runs with, after overrides.
#[derive(Debug, Clone, PartialEq)]
pub struct ResponseSettings {
    /// Output token cap.
    pub max_output_tokens: u32,
    /// Sampling temperature.
    pub temperature: f32,
}

impl Session {
    /// A session with default settings under `limits`.
    pub fn new(id: impl Into<String>, model: impl Into<String>, limits: SessionLimits) -> Self {
        Session {
            session_type: SessionType::Realtime,
            object: SessionObject::RealtimeSession,
            id: id.into(),
            model: model.into(),
            output_modalities: vec![Modality::Text],
            instructions: String::new(),
            audio: AudioConfig {
                input: AudioInput {
                    format: AudioFormat {
                        kind: AudioFormatType::Pcm,
                        rate: Some(DEFAULT_INPUT_RATE),
                    },
                    turn_detection: Some(TurnDetection::ServerVad(ServerVad::default())),
                },
            },
            max_output_tokens: MaxTokens::Count(limits.max_output_tokens),
            temperature: 0.8,
            mmrt: MmrtSession {
                protocol_version: PROTOCOL_VERSION.to_string(),
                fill_policy: FillPolicies {
                    image: FillPolicy::LastKnown,
                    audio: FillPolicy::Null,
                },
                max_age_ms: 2_000,
                video: VideoConfig {
                    sample_fps: 2.0,
                    max_frames: 8.min(limits.max_frames),
                },
                limits,
                vad_model: None,
            },
        }
    }

    /// The input sample rate in Hz.
    pub fn input_rate(&self) -> u32 {
        self.audio.input.format.rate.unwrap_or(DEFAULT_INPUT_RATE)
    }

    /// Server VAD settings, or `None` for manual turns.
    pub fn server_vad(&self) -> Option<&ServerVad> {
        match &self.audio.input.turn_detection {
            Some(TurnDetection::ServerVad(vad)) => Some(vad),
            None => None,
        }
    }

    /// Merges a client update; on error the session is left unchanged.
    ///
    /// Errors are `invalid_field` with the dotted path of the field under `session`.
    pub fn apply_update(&mut self, update: &SessionUpdate) -> Result<(), ProtocolError> {
        let mut next = self.clone();
        let limits = self.mmrt.limits.clone();

        // Output modalities: text is what we produce; audio is accepted and dropped.
        for (param, modalities) in [
            ("session.output_modalities", &update.output_modalities),
            ("session.modalities", &update.modalities),
        ] {
            if let Some(modalities) = modalities {
                if modalities.is_empty() {
                    return Err(ProtocolError::invalid_field(param, "must not be empty"));
                }
            }
        }
        if let Some(instructions) = &update.instructions {
            next.instructions = instructions.clone();
        }

        // Input format: the GA shape wins over the beta one when both are sent.
        if update.input_audio_format == Some(LegacyAudioFormat::Pcm16) {
            next.audio.input.format.rate = Some(DEFAULT_INPUT_RATE);
        }
        let input = update.audio.as_ref().and_then(|audio| audio.input.as_ref());
        if let Some(format) = input.and_then(|input| input.format.as_ref()) {
            let rate = format.rate.unwrap_or(DEFAULT_INPUT_RATE);
            if !SUPPORTED_INPUT_RATES.contains(&rate) {
                return Err(ProtocolError::invalid_field(
                    "session.audio.input.format.rate",
                    "rate must be 16000 or 24000",
                ));
            }
            next.audio.input.format.rate = Some(rate);
        }

        // Turn detection, beta then GA.
        if let Some(turn) = &update.turn_detection {
            next.audio.input.turn_detection =
                resolve_turn(self.server_vad(), turn.as_ref(), "session.turn_detection")?;
        }
        if let Some(turn) = input.and_then(|input| input.turn_detection.as_ref()) {
            next.audio.input.turn_detection = resolve_turn(
                self.server_vad(),
                turn.as_ref(),
                "session.audio.input.turn_detection",
            )?;
        }

        // Response defaults.
        for (param, max) in [
            (
                "session.max_response_output_tokens",
                update.max_response_output_tokens,
            ),
            ("session.max_output_tokens", update.max_output_tokens),
        ] {
            if let Some(max) = max {
                max.resolve(limits.max_output_tokens, param)?;
                next.max_output_tokens = max;
            }
        }
        if let Some(temperature) = update.temperature {
            next.temperature = check_temperature(temperature, "session.temperature")?;
        }

        // mmrt extensions.
        if let Some(ext) = &update.mmrt {
            if let Some(fill) = &ext.fill_policy {
                next.mmrt.fill_policy.image = fill.image.unwrap_or(next.mmrt.fill_policy.image);
                next.mmrt.fill_policy.audio = fill.audio.unwrap_or(next.mmrt.fill_policy.audio);
            }
            if let Some(max_age_ms) = ext.max_age_ms {
                next.mmrt.max_age_ms = max_age_ms;
            }
            if let Some(video) = &ext.video {
                if let Some(fps) = video.sample_fps {
                    if !(fps > 0.0 && fps <= 60.0) {
                        return Err(ProtocolError::invalid_field(
                            "session.mmrt.video.sample_fps",
                            "must be above 0 and at most 60",
                        ));
                    }
                    next.mmrt.video.sample_fps = fps;
                }
                if let Some(max_frames) = video.max_frames {
                    if max_frames == 0 || max_frames > limits.max_frames {
                        return Err(ProtocolError::invalid_field(
                            "session.mmrt.video.max_frames",
                            format!("must be between 1 and {}", limits.max_frames),
                        ));
                    }
                    next.mmrt.video.max_frames = max_frames;
                }
            }
        }

        *self = next;
        Ok(())
    }

    /// Settings for one response: session defaults with the request's overrides.
    pub fn response_settings(
        &self,
        overrides: Option<&crate::client::ResponseParams>,
    ) -> Result<ResponseSettings, ProtocolError> {
        let limit = self.mmrt.limits.max_output_tokens;
        let mut settings = ResponseSettings {
            max_output_tokens: self
                .max_output_tokens
                .resolve(limit, "session.max_output_tokens")?,
            temperature: self.temperature,
        };
        let Some(params) = overrides else {
            return Ok(settings);
        };
        for (param, max) in [
            (
                "response.max_response_output_tokens",
                params.max_response_output_tokens,
            ),
            ("response.max_output_tokens", params.max_output_tokens),
        ] {
            if let Some(max) = max {
                settings.max_output_tokens = max.resolve(limit, param)?;
            }
        }
        if let Some(temperature) = params.temperature {
            settings.temperature = check_temperature(temperature, "response.temperature")?;
        }
        Ok(settings)
    }
}

fn check_temperature(temperature: f32, param: &str) -> Result<f32, ProtocolError> {
    if (0.0..=2.0).contains(&temperature) {
        Ok(temperature)
    } else {
        Err(ProtocolError::invalid_field(
            param,
            "must be between 0.0 and 2.0",
        ))
    }
}

/// Resolves a turn detection update against the current VAD settings.
fn resolve_turn(
    current: Option<&ServerVad>,
    update: Option<&TurnDetectionUpdate>,
    param: &str,
) -> Result<Option<TurnDetection>, ProtocolError> {
    let mut vad = current.cloned().unwrap_or_default();
    let update = match update {
        None => return Ok(None),
        Some(TurnDetectionUpdate::ServerVad(update)) => update.clone(),
        Some(TurnDetectionUpdate::SemanticVad(semantic)) => ServerVadUpdate {
            create_response: semantic.create_response,
            interrupt_response: semantic.interrupt_response,
            ..ServerVadUpdate::default()
        },
    };
    if let Some(threshold) = update.threshold {
        if !(0.0..=1.0).contains(&threshold) {
            return Err(ProtocolError::invalid_field(
                format!("{param}.threshold"),
                "must be between 0.0 and 1.0",
            ));
        }
        vad.threshold = threshold;
    }
    if let Some(ms) = update.prefix_padding_ms {
        if ms > 10_000 {
            return Err(ProtocolError::invalid_field(
                format!("{param}.prefix_padding_ms"),
                "must be at most 10000",
            ));
        }
        vad.prefix_padding_ms = ms;
    }
    if let Some(ms) = update.silence_duration_ms {
        if !(50..=10_000).contains(&ms) {
            return Err(ProtocolError::invalid_field(
                format!("{param}.silence_duration_ms"),
                "must be between 50 and 10000",
            ));
        }
        vad.silence_duration_ms = ms;
    }
    vad.create_response = update.create_response.unwrap_or(vad.create_response);
    vad.interrupt_response = update.interrupt_response.unwrap_or(vad.interrupt_response);
    Ok(Some(TurnDetection::ServerVad(vad)))
}

/// Tells an absent field (`None`, via `default`) from an explicit `null` (`Some(None)`).
fn present_or_null<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    fn update(json: &str) -> SessionUpdate {
        serde_json::from_str(json).expect("test update parses")
    }

    fn session() -> Session {
        Session::new("sess_1", "test", SessionLimits::default())
    }

    #[test]
    fn ga_shape_sets_rate_and_manual_turns() {
        let mut s = session();
        s.apply_update(&update(
            r#"{"type":"realtime","audio":{"input":{"format":{"type":"audio/pcm","rate":16000},
                "turn_detection":null}}}"#,
        ))
        .expect("valid update");
        assert_eq!(s.input_rate(), 16_000);
        assert_eq!(s.server_vad(), None);
    }

    #[test]
    fn absent_turn_detection_keeps_vad() {
        let mut s = session();
        s.apply_update(&update(r#"{"instructions":"be brief"}"#))
            .expect("valid update");
        assert!(s.server_vad().is_some());
        assert_eq!(s.instructions, "be brief");
    }

    #[test]
    fn beta_flat_shape() {
        let mut s = session();
        s.apply_update(&update(
            r#"{"modalities":["text","audio"],"input_audio_format":"pcm16",
                "turn_detection":{"type":"server_vad","threshold":0.7,"silence_duration_ms":300},
                "max_response_output_tokens":"inf","temperature":0.6}"#,
        ))
        .expect("valid update");
        let vad = s.server_vad().expect("vad on");
        assert_eq!(vad.threshold, 0.7);
        assert_eq!(vad.silence_duration_ms, 300);
        assert_eq!(vad.prefix_padding_ms, 300);
        assert_eq!(s.output_modalities, vec![Modality::Text]);
        let settings = s.response_settings(None).expect("valid");
        assert_eq!(settings.max_output_tokens, 1024);
    }

    #[test]
    fn bad_values_name_their_field_and_change_nothing() {
        let mut s = session();
        let before = s.clone();
        let cases = [
            (
                r#"{"audio":{"input":{"format":{"type":"audio/pcm","rate":8000}}}}"#,
                "session.audio.input.format.rate",
            ),
            (
                r#"{"instructions":"x","turn_detection":{"type":"server_vad","threshold":2}}"#,
                "session.turn_detection.threshold",
            ),
            (
                r#"{"max_output_tokens":100000}"#,
                "session.max_output_tokens",
            ),
            (r#"{"temperature":9}"#, "session.temperature"),
            (
                r#"{"mmrt":{"video":{"max_frames":0}}}"#,
                "session.mmrt.video.max_frames",
            ),
            (r#"{"output_modalities":[]}"#, "session.output_modalities"),
        ];
        for (json, param) in cases {
            let err = s.apply_update(&update(json)).expect_err(json);
            assert_eq!(err.code, ErrorCode::InvalidField);
            assert_eq!(err.param.as_deref(), Some(param));
            assert_eq!(s, before, "{json} changed the session");
        }
    }

    #[test]
    fn mmrt_extension_applies() {
        let mut s = session();
        s.apply_update(&update(
            r#"{"mmrt":{"fill_policy":{"image":"completion"},"max_age_ms":500,
                "video":{"sample_fps":4}}}"#,
        ))
        .expect("valid update");
        assert_eq!(s.mmrt.fill_policy.image, FillPolicy::Completion);
        assert_eq!(s.mmrt.fill_policy.audio, FillPolicy::Null);
        assert_eq!(s.mmrt.max_age_ms, 500);
        assert_eq!(s.mmrt.video.sample_fps, 4.0);
    }
}
