//! mmrt-client: talk to an mmrt server (or any OpenAI Realtime-style server).
//!
//! The library is what the end-to-end tests and the load test use; the `mmrt-client`
//! binary is a thin CLI over it.
//!
//! # Layout
//!
//! - [`connection`]: [`connect`], then an [`EventSender`] (clonable) and an
//!   [`EventReceiver`] of typed [`mmrt_protocol::ServerEvent`]s.
//! - [`audio`]: WAV reading, resampling to the session rate, 20 ms frames, Opus.
//! - [`media`]: images and folders of frames.
//! - [`stream`]: sending audio and frames at real-time pace or as fast as possible.
//! - [`turn`]: collecting a response with its timings.
//! - [`error`]: the [`ClientError`] type.

pub mod audio;
pub mod connection;
pub mod error;
pub mod media;
pub mod stream;
pub mod turn;

pub use audio::{OpusFrameEncoder, Pcm16Audio};
pub use connection::{connect, ConnectOptions, Connection, EventReceiver, EventSender, TimedEvent};
pub use error::ClientError;
pub use stream::{stream_audio, stream_frames, AudioCodec, AudioStreamOptions, Transport};
pub use turn::{collect_response, CollectOptions, ResponseOutcome};
