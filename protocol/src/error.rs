//! Error codes and the protocol error type.
//!
//! [`ErrorCode`] is the one list of things that can go wrong on a session. Its
//! [`ErrorCode::code`] string is stable: it is the `error.code` of the `error` event,
//! the reason of a WebSocket close frame and the `code` label of error metrics, so a
//! code is never renamed, only added.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Every error a client can be told about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The text frame is not JSON, or not a JSON object.
    InvalidJson,
    /// The event `type` is not one this server knows.
    UnknownEvent,
    /// A field is missing, has the wrong type or an unsupported value; `param` names it.
    InvalidField,
    /// A base64 field (audio, image, frame) does not decode.
    InvalidBase64,
    /// Audio bytes that cannot be used: odd PCM16 length, undecodable Opus packet.
    InvalidAudio,
    /// Image or video frame bytes that cannot be used: bad format, bad dimensions.
    InvalidImage,
    /// A binary WebSocket frame whose header does not parse.
    InvalidBinaryFrame,
    /// A media timestamp went backwards on its stream.
    OutOfOrderTimestamp,
    /// `input_audio_buffer.commit` with nothing (or too little) in the buffer.
    BufferEmpty,
    /// `response.cancel` while no response is running.
    NoActiveResponse,
    /// `response.create` while a response is already running.
    ResponseInProgress,
    /// A feature the client asked for that this server does not offer.
    Unsupported,
    /// The server has no capacity for this work right now; try again later.
    Overloaded,
    /// The client sends faster than its session is allowed to.
    RateLimited,
    /// One message or payload exceeds its size limit.
    TooLarge,
    /// A per-session cap (buffered audio, items, frames, tokens) is reached.
    SessionLimit,
    /// The client did not read its events fast enough; the session is closed.
    SlowConsumer,
    /// A wait ran past its deadline (handshake, idle session, model work).
    Timeout,
    /// The server is shutting down and takes no new work.
    ShuttingDown,
    /// The request lacks valid credentials.
    Unauthorized,
    /// The model failed to run on this input.
    ModelError,
    /// A bug or unexpected state in the server.
    InternalError,
}

impl ErrorCode {
    /// Every code, for pre-registering metric labels and for tests.
    pub const ALL: &'static [ErrorCode] = &[
        ErrorCode::InvalidJson,
        ErrorCode::UnknownEvent,
        ErrorCode::InvalidField,
        ErrorCode::InvalidBase64,
        ErrorCode::InvalidAudio,
        ErrorCode::InvalidImage,
        ErrorCode::InvalidBinaryFrame,
        ErrorCode::OutOfOrderTimestamp,
        ErrorCode::BufferEmpty,
        ErrorCode::NoActiveResponse,
        ErrorCode::ResponseInProgress,
        ErrorCode::Unsupported,
        ErrorCode::Overloaded,
        ErrorCode::RateLimited,
        ErrorCode::TooLarge,
        ErrorCode::SessionLimit,
        ErrorCode::SlowConsumer,
        ErrorCode::Timeout,
        ErrorCode::ShuttingDown,
        ErrorCode::Unauthorized,
        ErrorCode::ModelError,
        ErrorCode::InternalError,
    ];

    /// The stable snake_case code.
    pub fn code(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::UnknownEvent => "unknown_event",
            ErrorCode::InvalidField => "invalid_field",
            ErrorCode::InvalidBase64 => "invalid_base64",
            ErrorCode::InvalidAudio => "invalid_audio",
            ErrorCode::InvalidImage => "invalid_image",
            ErrorCode::InvalidBinaryFrame => "invalid_binary_frame",
            ErrorCode::OutOfOrderTimestamp => "out_of_order_timestamp",
            ErrorCode::BufferEmpty => "buffer_empty",
            ErrorCode::NoActiveResponse => "no_active_response",
            ErrorCode::ResponseInProgress => "response_in_progress",
            ErrorCode::Unsupported => "unsupported",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::SessionLimit => "session_limit",
            ErrorCode::SlowConsumer => "slow_consumer",
            ErrorCode::Timeout => "timeout",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::ModelError => "model_error",
            ErrorCode::InternalError => "internal_error",
        }
    }

    /// The code for a stable string, the inverse of [`ErrorCode::code`].
    pub fn from_code(code: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.iter().copied().find(|c| c.code() == code)
    }

    /// The OpenAI-style `error.type` category: whose fault it is.
    pub fn error_type(self) -> ErrorType {
        match self {
            ErrorCode::Overloaded | ErrorCode::ShuttingDown | ErrorCode::Timeout => {
                ErrorType::ServerUnavailable
            }
            ErrorCode::RateLimited => ErrorType::RateLimitError,
            ErrorCode::Unauthorized => ErrorType::AuthenticationError,
            ErrorCode::ModelError | ErrorCode::InternalError => ErrorType::ServerError,
            _ => ErrorType::InvalidRequestError,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// The `error.type` field: a coarse category, as in the OpenAI Realtime API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorType {
    /// The client sent something wrong; retrying the same thing fails again.
    InvalidRequestError,
    /// The client must slow down.
    RateLimitError,
    /// Missing or bad credentials.
    AuthenticationError,
    /// The server cannot take the work now; a retry later may succeed.
    ServerUnavailable,
    /// The server failed.
    ServerError,
}

/// A protocol-level error: what the `error` event tells the client.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ProtocolError {
    /// What went wrong, as a stable code.
    pub code: ErrorCode,
    /// Human-readable detail; never contains client content beyond field names.
    pub message: String,
    /// The offending field as a dotted path (`session.audio.input.format.rate`).
    pub param: Option<String>,
    /// The `event_id` of the client event that caused the error, when known.
    pub event_id: Option<String>,
}

impl ProtocolError {
    /// An error with a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ProtocolError {
            code,
            message: message.into(),
            param: None,
            event_id: None,
        }
    }

    /// An `invalid_field` error naming the field.
    pub fn invalid_field(param: impl Into<String>, message: impl Into<String>) -> Self {
        ProtocolError::new(ErrorCode::InvalidField, message).with_param(param)
    }

    /// Sets the offending field.
    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    /// Sets the `event_id` of the client event this error answers.
    pub fn with_event_id(mut self, event_id: Option<String>) -> Self {
        self.event_id = event_id;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for &code in ErrorCode::ALL {
            assert!(seen.insert(code.code()), "duplicate {code}");
            assert_eq!(ErrorCode::from_code(code.code()), Some(code));
            // serde and code() must agree, since both reach the wire.
            let json = serde_json::to_string(&code).expect("enum serializes");
            assert_eq!(json, format!("\"{}\"", code.code()));
        }
    }

    #[test]
    fn display_names_code_and_message() {
        let err = ProtocolError::invalid_field("session.audio", "bad").with_event_id(None);
        assert_eq!(err.to_string(), "invalid_field: bad");
        assert_eq!(err.param.as_deref(), Some("session.audio"));
    }
}
