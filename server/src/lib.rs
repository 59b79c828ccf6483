//! The mmrt server: WebSocket sessions, media ingest, turn detection and the engine
//! that runs the models.
//!
//! # Layout
//!
//! - [`app`]: HTTP routes, the WebSocket receive and send tasks, the session registry.
//! - [`session`]: the session actor, owner of one connection's state.
//! - [`ingest`]: audio decode, resampling, chunking; video frame sampling.
//! - [`vad`]: energy-based turn detection.
//! - [`engine`]: the dedicated model thread, batching work across sessions.

pub mod app;
pub mod engine;
pub mod ingest;
pub mod session;
pub mod vad;
