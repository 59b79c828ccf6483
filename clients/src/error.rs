//! The client's error type.
//!
//! Each variant's message already includes its cause, so none is chained as a
//! `source` (chained printing would repeat it).

use std::path::PathBuf;
use std::time::Duration;

use mmrt_protocol::{FrameError, ProtocolError};

/// Everything that can go wrong on the client side of a session.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The WebSocket handshake failed.
    #[error("cannot connect to {url}: {err}")]
    Connect {
        /// Where we tried to connect.
        url: String,
        /// Why it failed.
        err: Box<tokio_tungstenite::tungstenite::Error>,
    },
    /// The WebSocket failed after the handshake.
    #[error("websocket: {0}")]
    WebSocket(Box<tokio_tungstenite::tungstenite::Error>),
    /// A wait ran past its deadline.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout {
        /// What we were waiting for.
        what: String,
        /// How long we waited.
        after: Duration,
    },
    /// The server closed the connection (or it dropped).
    #[error("connection closed: {reason}")]
    Closed {
        /// The close code and reason, or why the stream ended.
        reason: String,
    },
    /// The server sent an `error` event.
    #[error("server error {0}")]
    Server(ProtocolError),
    /// The server sent something this client cannot read.
    #[error("unreadable server message: {0}")]
    BadServerMessage(ProtocolError),
    /// The server sent events in an order the helper did not expect.
    #[error("unexpected server event {got} while waiting for {expected}")]
    Unexpected {
        /// The event type received.
        got: String,
        /// What the helper waited for.
        expected: String,
    },
    /// A local file could not be read.
    #[error("{path}: {err}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        err: std::io::Error,
    },
    /// A WAV file could not be read.
    #[error("{path}: {err}")]
    Wav {
        /// The file.
        path: PathBuf,
        /// Why.
        err: hound::Error,
    },
    /// Local media that cannot be sent: unsupported format, bad rate, empty folder.
    #[error("{0}")]
    Media(String),
    /// Resampling failed.
    #[error("resampling: {0}")]
    Resample(String),
    /// Opus encoding failed.
    #[error("opus: {0}")]
    Opus(opus::Error),
    /// A binary frame could not be built.
    #[error("binary frame: {0}")]
    Frame(FrameError),
}

impl From<tokio_tungstenite::tungstenite::Error> for ClientError {
    fn from(err: tokio_tungstenite::tungstenite::Error) -> Self {
        ClientError::WebSocket(Box::new(err))
    }
}

impl From<opus::Error> for ClientError {
    fn from(err: opus::Error) -> Self {
        ClientError::Opus(err)
    }
}

impl From<FrameError> for ClientError {
    fn from(err: FrameError) -> Self {
        ClientError::Frame(err)
    }
}

impl ClientError {
    /// A stable snake_case code, for loadtest labels; server errors keep their code.
    pub fn code(&self) -> &'static str {
        match self {
            ClientError::Connect { .. } => "connect_failed",
            ClientError::WebSocket(_) => "websocket",
            ClientError::Timeout { .. } => "timeout",
            ClientError::Closed { .. } => "closed",
            ClientError::Server(err) => err.code.code(),
            ClientError::BadServerMessage(_) => "bad_server_message",
            ClientError::Unexpected { .. } => "unexpected_event",
            ClientError::Io { .. } => "io",
            ClientError::Wav { .. } => "wav",
            ClientError::Media(_) => "media",
            ClientError::Resample(_) => "resample",
            ClientError::Opus(_) => "opus",
            ClientError::Frame(_) => "frame",
        }
    }
}
