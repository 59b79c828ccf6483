//! Server → client events and [`parse_server_event`] for clients.
//!
//! Every server event carries a unique `event_id` (see [`crate::ids::new_event_id`]).
//! For conversation items the GA name `conversation.item.added` is used (the beta
//! `conversation.item.created` is not sent), followed by `conversation.item.done`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::{ErrorCode, ErrorType, ProtocolError};
use crate::ids::new_event_id;
use crate::item::{ContentPart, Item};
use crate::macros::event_enum;
use crate::response::{ModalityState, Response};
use crate::session::Session;

/// `session.created` (first event of a connection) and `session.updated`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SessionEvent {
    /// Unique server event id.
    pub event_id: String,
    /// The full session.
    pub session: Session,
}

/// `input_audio_buffer.speech_started` (server VAD).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SpeechStarted {
    /// Unique server event id.
    pub event_id: String,
    /// Start of speech, in ms of audio since the session began (padding included).
    pub audio_start_ms: u64,
    /// The user item this speech will become.
    pub item_id: String,
}

/// `input_audio_buffer.speech_stopped` (server VAD).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SpeechStopped {
    /// Unique server event id.
    pub event_id: String,
    /// End of speech, in ms of audio since the session began.
    pub audio_end_ms: u64,
    /// The user item this speech will become.
    pub item_id: String,
}

/// `input_audio_buffer.committed`: the buffer became a user item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct InputAudioBufferCommitted {
    /// Unique server event id.
    pub event_id: String,
    /// The item before it, `null` at the start of the conversation.
    pub previous_item_id: Option<String>,
    /// The new user item.
    pub item_id: String,
}

/// `input_audio_buffer.cleared`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct InputAudioBufferCleared {
    /// Unique server event id.
    pub event_id: String,
}

/// `conversation.item.added` and `conversation.item.done`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ConversationItemEvent {
    /// Unique server event id.
    pub event_id: String,
    /// The item before it, `null` at the start of the conversation.
    pub previous_item_id: Option<String>,
    /// The item, without media bytes.
    pub item: Item,
}

/// `response.created` and `response.done`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ResponseEvent {
    /// Unique server event id.
    pub event_id: String,
    /// The response.
    pub response: Response,
}

/// `response.output_item.added` and `response.output_item.done`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OutputItemEvent {
    /// Unique server event id.
    pub event_id: String,
    /// The response.
    pub response_id: String,
    /// Index of the item in the response's output.
    pub output_index: u32,
    /// The assistant item.
    pub item: Item,
}

/// `response.content_part.added` and `response.content_part.done`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ContentPartEvent {
    /// Unique server event id.
    pub event_id: String,
    /// The response.
    pub response_id: String,
    /// The assistant item.
    pub item_id: String,
    /// Index of the item in the response's output.
    pub output_index: u32,
    /// Index of the part in the item's content.
    pub content_index: u32,
    /// The part (`output_text`; empty text when added).
    pub part: ContentPart,
}

/// `response.output_text.delta`: the next piece of text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OutputTextDelta {
    /// Unique server event id.
    pub event_id: String,
    /// The response.
    pub response_id: String,
    /// The assistant item.
    pub item_id: String,
    /// Index of the item in the response's output.
    pub output_index: u32,
    /// Index of the part in the item's content.
    pub content_index: u32,
    /// New text.
    pub delta: String,
}

/// `response.output_text.done`: the whole text of a part.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OutputTextDone {
    /// Unique server event id.
    pub event_id: String,
    /// The response.
    pub response_id: String,
    /// The assistant item.
    pub item_id: String,
    /// Index of the item in the response's output.
    pub output_index: u32,
    /// Index of the part in the item's content.
    pub content_index: u32,
    /// The full text.
    pub text: String,
}

/// The `error` object of an `error` event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ErrorDetail {
    /// Category.
    #[serde(rename = "type")]
    pub kind: ErrorType,
    /// Stable code.
    pub code: ErrorCode,
    /// Human-readable detail.
    pub message: String,
    /// The offending field, when one is to blame.
    pub param: Option<String>,
    /// The `event_id` of the client event that caused it.
    pub event_id: Option<String>,
}

/// `error`: something the client sent or asked for failed. The session stays open
/// unless a close frame follows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ErrorEvent {
    /// Unique server event id.
    pub event_id: String,
    /// What went wrong.
    pub error: ErrorDetail,
}

/// `mmrt.modality_report` (extension): what the model saw of each input modality;
/// sent after `response.created` and before the first delta.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ModalityReportEvent {
    /// Unique server event id.
    pub event_id: String,
    /// The response it describes.
    pub response_id: String,
    /// One entry per input modality.
    pub modalities: Vec<ModalityState>,
}

/// `conversation.item.input_audio_transcription.delta`: a piece of the transcript of a
/// user audio item, as the bundle's speech stage decodes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TranscriptionDelta {
    /// Unique server event id.
    pub event_id: String,
    /// The user audio item being transcribed.
    pub item_id: String,
    /// The audio part within the item.
    pub content_index: u32,
    /// New transcript text, to append to what came before.
    pub delta: String,
}

/// `conversation.item.input_audio_transcription.completed`: the whole transcript.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TranscriptionCompleted {
    /// Unique server event id.
    pub event_id: String,
    /// The user audio item transcribed.
    pub item_id: String,
    /// The audio part within the item.
    pub content_index: u32,
    /// The transcript: every delta joined.
    pub transcript: String,
}

/// `conversation.item.input_audio_transcription.failed`: no transcript for the item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TranscriptionFailed {
    /// Unique server event id.
    pub event_id: String,
    /// The user audio item.
    pub item_id: String,
    /// The audio part within the item.
    pub content_index: u32,
    /// What went wrong.
    pub error: ErrorDetail,
}

/// `mmrt.session.closing` (extension): the server will close this session; a running
/// response may finish until then. Sent with an `error` event of code `shutting_down`
/// for clients that do not know this event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SessionClosingEvent {
    /// Unique server event id.
    pub event_id: String,
    /// Why: `shutting_down` for a server drain.
    pub reason: ErrorCode,
    /// Milliseconds until the session is closed at the latest.
    pub closes_in_ms: u64,
}

event_enum! {
    /// An event the server sends.
    pub enum ServerEvent {
        /// `session.created`
        SessionCreated(SessionEvent) = "session.created",
        /// `session.updated`
        SessionUpdated(SessionEvent) = "session.updated",
        /// `input_audio_buffer.speech_started`
        SpeechStarted(SpeechStarted) = "input_audio_buffer.speech_started",
        /// `input_audio_buffer.speech_stopped`
        SpeechStopped(SpeechStopped) = "input_audio_buffer.speech_stopped",
        /// `input_audio_buffer.committed`
        InputAudioBufferCommitted(InputAudioBufferCommitted) = "input_audio_buffer.committed",
        /// `input_audio_buffer.cleared`
        InputAudioBufferCleared(InputAudioBufferCleared) = "input_audio_buffer.cleared",
        /// `conversation.item.added`
        ConversationItemAdded(ConversationItemEvent) = "conversation.item.added",
        /// `conversation.item.done`
        ConversationItemDone(ConversationItemEvent) = "conversation.item.done",
        /// `conversation.item.input_audio_transcription.delta`
        TranscriptionDelta(TranscriptionDelta) = "conversation.item.input_audio_transcription.delta",
        /// `conversation.item.input_audio_transcription.completed`
        TranscriptionCompleted(TranscriptionCompleted) = "conversation.item.input_audio_transcription.completed",
        /// `conversation.item.input_audio_transcription.failed`
        TranscriptionFailed(TranscriptionFailed) = "conversation.item.input_audio_transcription.failed",
        /// `response.created`
        ResponseCreated(ResponseEvent) = "response.created",
        /// `response.output_item.added`
        OutputItemAdded(OutputItemEvent) = "response.output_item.added",
        /// `response.output_item.done`
        OutputItemDone(OutputItemEvent) = "response.output_item.done",
        /// `response.content_part.added`
        ContentPartAdded(ContentPartEvent) = "response.content_part.added",
        /// `response.content_part.done`
        ContentPartDone(ContentPartEvent) = "response.content_part.done",
        /// `response.output_text.delta`
        OutputTextDelta(OutputTextDelta) = "response.output_text.delta",
        /// `response.output_text.done`
        OutputTextDone(OutputTextDone) = "response.output_text.done",
        /// `response.done`
        ResponseDone(ResponseEvent) = "response.done",
        /// `error`
        Error(ErrorEvent) = "error",
        /// `mmrt.modality_report` (extension)
        ModalityReport(ModalityReportEvent) = "mmrt.modality_report",
        /// `mmrt.session.closing` (extension)
        SessionClosing(SessionClosingEvent) = "mmrt.session.closing",
    }
}

impl ServerEvent {
    /// The event's unique id.
    pub fn event_id(&self) -> &str {
        match self {
            ServerEvent::SessionCreated(e) | ServerEvent::SessionUpdated(e) => &e.event_id,
            ServerEvent::SpeechStarted(e) => &e.event_id,
            ServerEvent::SpeechStopped(e) => &e.event_id,
            ServerEvent::InputAudioBufferCommitted(e) => &e.event_id,
            ServerEvent::InputAudioBufferCleared(e) => &e.event_id,
            ServerEvent::ConversationItemAdded(e) | ServerEvent::ConversationItemDone(e) => {
                &e.event_id
            }
            ServerEvent::ResponseCreated(e) | ServerEvent::ResponseDone(e) => &e.event_id,
            ServerEvent::OutputItemAdded(e) | ServerEvent::OutputItemDone(e) => &e.event_id,
            ServerEvent::ContentPartAdded(e) | ServerEvent::ContentPartDone(e) => &e.event_id,
            ServerEvent::OutputTextDelta(e) => &e.event_id,
            ServerEvent::TranscriptionDelta(e) => &e.event_id,
            ServerEvent::TranscriptionCompleted(e) => &e.event_id,
            ServerEvent::TranscriptionFailed(e) => &e.event_id,
            ServerEvent::OutputTextDone(e) => &e.event_id,
            ServerEvent::Error(e) => &e.event_id,
            ServerEvent::ModalityReport(e) => &e.event_id,
            ServerEvent::SessionClosing(e) => &e.event_id,
        }
    }

    /// The `error` event for a protocol error, with a fresh event id.
    pub fn error(err: &ProtocolError) -> ServerEvent {
        ServerEvent::Error(ErrorEvent {
            event_id: new_event_id(),
            error: ErrorDetail::from_protocol_error(err),
        })
    }

    /// Serializes to the JSON text of a WebSocket message.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("server events contain no maps with non-string keys")
    }
}

impl ErrorDetail {
    /// The wire form of a [`ProtocolError`].
    pub fn from_protocol_error(err: &ProtocolError) -> ErrorDetail {
        ErrorDetail {
            kind: err.code.error_type(),
            code: err.code,
            message: err.message.clone(),
            param: err.param.clone(),
            event_id: err.event_id.clone(),
        }
    }

    /// Back to a [`ProtocolError`], for clients that surface errors as `Err`.
    pub fn to_protocol_error(&self) -> ProtocolError {
        ProtocolError {
            code: self.code,
            message: self.message.clone(),
            param: self.param.clone(),
            event_id: self.event_id.clone(),
        }
    }
}

/// Parses one text message from the server.
///
/// An event type this version does not know is `unknown_event`; clients should skip
/// it, since servers may add events within a protocol major version.
pub fn parse_server_event(text: &str) -> Result<ServerEvent, ProtocolError> {
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|err| ProtocolError::new(ErrorCode::InvalidJson, err.to_string()))?;
    let type_name = value
        .get("type")
        .and_then(|t| t.as_str())
        .ok_or_else(|| ProtocolError::invalid_field("type", "missing string field `type`"))?
        .to_owned();
    match ServerEvent::from_value(&type_name, value) {
        None => Err(ProtocolError::new(
            ErrorCode::UnknownEvent,
            format!("unknown server event type `{type_name}`"),
        )),
        Some(result) => result.map_err(|err| crate::client::field_error(&err)),
    }
}
