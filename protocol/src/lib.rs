//! The mmrt wire protocol: what travels over the realtime WebSocket.
//!
//! JSON events follow the OpenAI Realtime API (GA event names) wherever it covers the
//! same thing, so its clients work unchanged; mmrt's own additions are namespaced with
//! an `mmrt` prefix or key and versioned by [`PROTOCOL_VERSION`]. Media can also travel
//! as binary WebSocket messages with a small fixed header instead of base64. This crate
//! does no I/O: it parses, checks and serializes. `docs/protocol.md` is the reference
//! for people; this crate is the reference for code.
//!
//! # Layout
//!
//! - [`client`]: client → server events and [`parse_client_event`].
//! - [`server`]: server → client events and [`parse_server_event`].
//! - [`session`]: session configuration, partial ([`SessionUpdate`]) and full
//!   ([`Session`]), and how one is applied to the other.
//! - [`item`]: conversation items and content parts.
//! - [`response`]: responses, usage and the modality report.
//! - [`media`]: base64 payloads, image formats, data URLs.
//! - [`binary`]: the binary frame codec.
//! - [`error`]: [`ErrorCode`], the stable error codes, and [`ProtocolError`].
//! - [`ids`]: unique ids for events, items and responses.
//! - [`schema`]: JSON Schemas of every event.

pub mod binary;
pub mod client;
pub mod error;
pub mod ids;
pub mod item;
mod macros;
pub mod media;
pub mod response;
pub mod schema;
pub mod server;
pub mod session;

pub use binary::{decode_frame, encode_frame, BinaryFrame, FrameError, FrameHeader, FrameKind};
pub use client::{parse_client_event, ClientEvent};
pub use error::{ErrorCode, ErrorType, ProtocolError};
pub use ids::{new_event_id, new_id};
pub use item::{ContentPart, Item, Role};
pub use media::{Base64Bytes, DataUrlImage, ImageFormat};
pub use response::{ModalityState, ModalityStatus, Response, ResponseStatus, Usage};
pub use server::{parse_server_event, ServerEvent};
pub use session::{Session, SessionLimits, SessionUpdate};

/// Version of the mmrt extensions, announced as `session.mmrt.protocol_version`.
///
/// `major.minor`: a minor bump adds events or optional fields, which clients must
/// ignore when unknown; a major bump changes or removes something.
pub const PROTOCOL_VERSION: &str = "1.0";

/// The WebSocket path of realtime sessions.
pub const REALTIME_PATH: &str = "/v1/realtime";

/// The server's default listen address.
pub const DEFAULT_ADDR: &str = "127.0.0.1:8080";
