//! The mmrt server: WebSocket sessions, media ingest, turn detection and the engine
//! that runs the models.
//!
//! # Layout
//!
//! - [`listener`]: the accept loop: TLS and the handshake deadline.
//! - [`app`]: HTTP routes, the WebSocket receive and send tasks, the session registry.
//! - [`session`]: the session actor, owner of one connection's state.
//! - [`ingest`]: audio decode, resampling, chunking; video frame sampling.
//! - [`vad`]: turn detection: the speech/silence state machine, fed by loudness or by
//!   the Silero VAD model's scores.
//! - [`vad_thread`]: the dedicated Silero VAD thread, batching windows across sessions.
//! - [`engine`]: the dedicated model thread, batching work across sessions.
//! - [`warmup`]: the generation run at start before `/readyz` says ready.
//! - [`config`]: flags, environment and the TOML file, checked at start.
//! - [`auth`]: API keys and the Origin allow-list.
//! - [`limits`]: server-side session limits and the frame rate limiter.
//! - [`metrics`]: Prometheus metrics served at `/metrics`.

pub mod app;
pub mod auth;
pub mod config;
pub mod engine;
pub mod ingest;
pub mod limits;
pub mod listener;
pub mod metrics;
pub mod session;
pub mod vad;
pub mod vad_thread;
pub mod warmup;
