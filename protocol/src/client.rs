//! Client → server events and [`parse_client_event`].
//!
//! Parsing never panics: the text is first read as a JSON value (so that `event_id` can
//! be echoed in the error even when the event is malformed), then the payload struct
//! for its `type` is read with the path of any bad field tracked, then checks that serde
//! cannot express (media that must be present, PCM16 length, image dimensions) run.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::{ErrorCode, ProtocolError};
use crate::item::{ContentPart, Item, Role};
use crate::macros::event_enum;
use crate::media::{Base64Bytes, DataUrlImage, ImageFormat, INVALID_BASE64_MARKER};
use crate::session::{MaxTokens, Modality, SessionUpdate};

/// `session.update`: change session settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SessionUpdateEvent {
    /// Client-chosen id, echoed in errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// The fields to change.
    pub session: SessionUpdate,
}

/// `input_audio_buffer.append`: add PCM16 audio at the session rate.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct InputAudioBufferAppend {
    /// Client-chosen id, echoed in errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// PCM16 little-endian mono samples.
    pub audio: Base64Bytes,
}

/// `input_audio_buffer.commit`: end the user turn (manual turns).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct InputAudioBufferCommit {
    /// Client-chosen id, echoed in errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
}

/// `input_audio_buffer.clear`: drop uncommitted audio.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct InputAudioBufferClear {
    /// Client-chosen id, echoed in errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
}

/// `conversation.item.create`: add a user message (text, audio, images).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ConversationItemCreate {
    /// Client-chosen id, echoed in errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// Insert after this item; absent appends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_item_id: Option<String>,
    /// The message.
    pub item: Item,
}

/// Per-response overrides of `response.create`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ResponseParams {
    /// GA output modalities; answered in text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_modalities: Option<Vec<Modality>>,
    /// Beta name of `output_modalities`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modalities: Option<Vec<Modality>>,
    /// Instructions for this response only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instructions: Option<String>,
    /// Output token cap for this response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<MaxTokens>,
    /// Beta name of `max_output_tokens`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_response_output_tokens: Option<MaxTokens>,
    /// Sampling temperature for this response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
}

/// `response.create`: generate a response from the conversation so far.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ResponseCreate {
    /// Client-chosen id, echoed in errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// Overrides of session defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<ResponseParams>,
}

/// `response.cancel`: stop the running response.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ResponseCancel {
    /// Client-chosen id, echoed in errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// The response to cancel; absent means the running one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_id: Option<String>,
}

/// `mmrt.input_video.frame`: one video frame (extension).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct InputVideoFrame {
    /// Client-chosen id, echoed in errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// Image bytes in `format`.
    pub data: Base64Bytes,
    /// Encoding of `data`.
    pub format: ImageFormat,
    /// Width in pixels; required for `raw_rgb`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    /// Height in pixels; required for `raw_rgb`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    /// Capture time on the client's clock, in ms; must not go backwards.
    pub timestamp_ms: u64,
}

event_enum! {
    /// An event a client sends.
    pub enum ClientEvent {
        /// `session.update`
        SessionUpdate(SessionUpdateEvent) = "session.update",
        /// `input_audio_buffer.append`
        InputAudioBufferAppend(InputAudioBufferAppend) = "input_audio_buffer.append",
        /// `input_audio_buffer.commit`
        InputAudioBufferCommit(InputAudioBufferCommit) = "input_audio_buffer.commit",
        /// `input_audio_buffer.clear`
        InputAudioBufferClear(InputAudioBufferClear) = "input_audio_buffer.clear",
        /// `conversation.item.create`
        ConversationItemCreate(ConversationItemCreate) = "conversation.item.create",
        /// `response.create`
        ResponseCreate(ResponseCreate) = "response.create",
        /// `response.cancel`
        ResponseCancel(ResponseCancel) = "response.cancel",
        /// `mmrt.input_video.frame` (extension)
        InputVideoFrame(InputVideoFrame) = "mmrt.input_video.frame",
    }
}

impl ClientEvent {
    /// The client's `event_id`, if it sent one.
    pub fn event_id(&self) -> Option<&str> {
        match self {
            ClientEvent::SessionUpdate(e) => e.event_id.as_deref(),
            ClientEvent::InputAudioBufferAppend(e) => e.event_id.as_deref(),
            ClientEvent::InputAudioBufferCommit(e) => e.event_id.as_deref(),
            ClientEvent::InputAudioBufferClear(e) => e.event_id.as_deref(),
            ClientEvent::ConversationItemCreate(e) => e.event_id.as_deref(),
            ClientEvent::ResponseCreate(e) => e.event_id.as_deref(),
            ClientEvent::ResponseCancel(e) => e.event_id.as_deref(),
            ClientEvent::InputVideoFrame(e) => e.event_id.as_deref(),
        }
    }

    /// Runs the checks serde cannot express; errors name the field.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        match self {
            ClientEvent::InputAudioBufferAppend(e) => check_pcm16(e.audio.as_bytes(), "audio"),
            ClientEvent::ConversationItemCreate(e) => validate_item(&e.item),
            ClientEvent::InputVideoFrame(e) => validate_frame(e),
            _ => Ok(()),
        }
    }
}

/// Parses one text WebSocket message from a client. Never panics.
///
/// The error carries the event's `event_id` whenever the text was a JSON object with a
/// string `event_id`, however broken the rest of it is.
pub fn parse_client_event(text: &str) -> Result<ClientEvent, ProtocolError> {
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|err| ProtocolError::new(ErrorCode::InvalidJson, err.to_string()))?;
    let Some(object) = value.as_object() else {
        return Err(ProtocolError::new(
            ErrorCode::InvalidJson,
            "an event must be a JSON object",
        ));
    };
    let event_id = object
        .get("event_id")
        .and_then(|id| id.as_str())
        .map(str::to_owned);
    let type_name = match object.get("type") {
        Some(serde_json::Value::String(type_name)) => type_name.clone(),
        Some(_) => {
            return Err(
                ProtocolError::invalid_field("type", "type must be a string")
                    .with_event_id(event_id),
            )
        }
        None => {
            return Err(ProtocolError::invalid_field("type", "missing field `type`")
                .with_event_id(event_id))
        }
    };
    let event = match ClientEvent::from_value(&type_name, value) {
        None => {
            return Err(ProtocolError::new(
                ErrorCode::UnknownEvent,
                format!("unknown event type `{}`", truncate(&type_name, 64)),
            )
            .with_param("type")
            .with_event_id(event_id))
        }
        Some(Err(err)) => return Err(field_error(&err).with_event_id(event_id)),
        Some(Ok(event)) => event,
    };
    event
        .validate()
        .map_err(|err| err.with_event_id(event_id))?;
    Ok(event)
}

/// Maps a path-tracked serde error to `invalid_field` (or `invalid_base64`).
pub(crate) fn field_error(err: &serde_path_to_error::Error<serde_json::Error>) -> ProtocolError {
    let message = err.inner().to_string();
    let mut param = err.path().to_string();
    // A missing field is reported at its parent; name the field itself.
    if let Some(field) = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next())
    {
        param = if param == "." {
            field.to_string()
        } else {
            format!("{param}.{field}")
        };
    }
    let code = if message.starts_with(INVALID_BASE64_MARKER) {
        ErrorCode::InvalidBase64
    } else {
        ErrorCode::InvalidField
    };
    ProtocolError::new(code, message).with_param(param)
}

fn truncate(text: &str, max_chars: usize) -> String {
    text.chars().take(max_chars).collect()
}

fn check_pcm16(bytes: &[u8], param: &str) -> Result<(), ProtocolError> {
    if bytes.len().is_multiple_of(2) {
        Ok(())
    } else {
        Err(ProtocolError::new(
            ErrorCode::InvalidAudio,
            "PCM16 audio must have an even number of bytes",
        )
        .with_param(param))
    }
}

fn validate_item(item: &Item) -> Result<(), ProtocolError> {
    if item.role != Role::User {
        return Err(ProtocolError::invalid_field(
            "item.role",
            "only user messages can be created",
        ));
    }
    if item.content.is_empty() {
        return Err(ProtocolError::invalid_field(
            "item.content",
            "must not be empty",
        ));
    }
    for (index, part) in item.content.iter().enumerate() {
        let param = |field: &str| format!("item.content[{index}].{field}");
        match part {
            ContentPart::InputText { .. } => {}
            ContentPart::InputAudio { audio: None, .. } => {
                return Err(ProtocolError::invalid_field(
                    param("audio"),
                    "missing audio",
                ));
            }
            ContentPart::InputAudio {
                audio: Some(audio), ..
            } => check_pcm16(audio.as_bytes(), &param("audio"))?,
            ContentPart::InputImage {
                image_url: None, ..
            } => {
                return Err(ProtocolError::invalid_field(
                    param("image_url"),
                    "missing image_url",
                ));
            }
            ContentPart::InputImage {
                image_url: Some(url),
                ..
            } => {
                DataUrlImage::parse(url).map_err(|err| err.with_param(param("image_url")))?;
            }
            ContentPart::OutputText { .. } => {
                return Err(ProtocolError::invalid_field(
                    param("type"),
                    "output_text is not accepted from clients",
                ));
            }
        }
    }
    Ok(())
}

fn validate_frame(frame: &InputVideoFrame) -> Result<(), ProtocolError> {
    let bytes = frame.data.as_bytes();
    match frame.format {
        ImageFormat::RawRgb => {
            let (Some(width), Some(height)) = (frame.width, frame.height) else {
                return Err(ProtocolError::invalid_field(
                    "width",
                    "raw_rgb frames need width and height",
                ));
            };
            let expected = u64::from(width) * u64::from(height) * 3;
            if width == 0 || height == 0 || expected != bytes.len() as u64 {
                return Err(ProtocolError::new(
                    ErrorCode::InvalidImage,
                    format!(
                        "raw_rgb {width}x{height} needs {expected} bytes, got {}",
                        bytes.len()
                    ),
                )
                .with_param("data"));
            }
        }
        format => {
            if ImageFormat::sniff(bytes) != Some(format) {
                return Err(ProtocolError::new(
                    ErrorCode::InvalidImage,
                    format!("data is not {}", format.mime()),
                )
                .with_param("data"));
            }
        }
    }
    Ok(())
}
