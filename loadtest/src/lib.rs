//! mmrt-loadtest: many realistic virtual clients against an mmrt server, measured
//! with HDR histograms and written out as JSON, Markdown and SVG.
//!
//! Each virtual client is one realtime session on the `mmrt-client` library. It streams
//! a real speech sample in 20 ms frames at real-time pace followed by silence, sends
//! video frames at a set rate, and ends a turn at a set interval (by a manual commit or
//! by letting server VAD hear the silence). It measures what a user would feel: end of
//! turn to first token, the gaps between tokens, the whole turn, and how far behind
//! real time the server's ingest runs.
//!
//! # Layout
//!
//! - [`options`]: the command line (clap, every flag also an environment variable).
//! - [`inputs`]: the audio and video the clients send, loaded once and shared.
//! - [`client`]: one virtual client's session, turn by turn.
//! - [`chaos`]: misbehaving clients mixed in for soak runs.
//! - [`stats`]: histograms and counters, per client and merged.
//! - [`run`]: one concurrency level, a sweep of them, the progress bar.
//! - [`server`]: spawning `mmrt serve`, its resident memory, its prefill log lines.
//! - [`memory`]: resident bytes per idle and per active session.
//! - [`report`]: the JSON report, the Markdown summary and the SVG plot.
//! - [`error`]: the [`LoadError`] type.

pub mod chaos;
pub mod client;
pub mod error;
pub mod inputs;
pub mod memory;
pub mod options;
pub mod report;
pub mod run;
pub mod server;
pub mod stats;

pub use error::LoadError;
pub use options::{LoadOptions, TurnMode};
pub use report::{LevelReport, RunReport};
pub use run::{run_level, run_sweep};
