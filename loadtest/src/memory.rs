//! Server memory per session: resident bytes with 1 to N sessions open, idle and
//! active, each pass on a freshly started server so that one pass's freed memory does
//! not hide in the next one's baseline.
//!
//! An idle session is connected and configured and has sent nothing. An active session
//! has streamed one turn of speech (as fast as the socket takes it) and one video
//! frame, and has been answered: it holds its conversation, embeddings and last frame.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::stream::{self, StreamExt};
use mmrt_client::{
    collect_response, connect, ClientError, CollectOptions, ConnectOptions, Connection,
};
use mmrt_protocol::FrameKind;

use crate::error::LoadError;
use crate::inputs::Inputs;
use crate::options::{LoadOptions, TransportArg};
use crate::report::{MemoryPoint, RunReport};
use crate::server::SpawnedServer;

/// Sessions connected or driven at once while filling a step.
const FILL_CONCURRENCY: usize = 32;

/// Measures resident memory at each of `steps` sessions, idle then active.
pub async fn run_memory(options: LoadOptions, steps: &[usize]) -> Result<RunReport, LoadError> {
    options.validate()?;
    let binary = options
        .spawn_server
        .clone()
        .ok_or_else(|| LoadError::Server("--memory needs --spawn-server".into()))?;
    let inputs = Inputs::load(&options)?;
    let started_unix_s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut steps = steps.to_vec();
    steps.sort_unstable();
    steps.dedup();

    let mut points = Vec::new();
    for active in [false, true] {
        let state = if active { "active" } else { "idle" };
        let args = options.server_args.clone();
        let bin = binary.clone();
        let server = tokio::task::spawn_blocking(move || SpawnedServer::start(&bin, &args))
            .await
            .map_err(|err| LoadError::Server(err.to_string()))??;
        let url = server.url();

        // The baseline: one session opened and closed, so lazily built state exists.
        let warm = connect(&url, &ConnectOptions::default()).await?;
        let warm = if active {
            drive_turn(warm, &inputs, &options).await?
        } else {
            warm
        };
        let _ = warm.sender.close().await;
        drop(warm);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let base = server.memory()?.rss_bytes;
        points.push(MemoryPoint {
            state: state.into(),
            sessions: 0,
            rss_bytes: base,
            bytes_per_session: 0.0,
        });

        let mut open: Vec<Connection> = Vec::new();
        for &step in &steps {
            let more = step.saturating_sub(open.len());
            let url = url.clone();
            let results: Vec<Result<Connection, ClientError>> = stream::iter(0..more)
                .map(|_| {
                    let url = url.clone();
                    let inputs = inputs.clone();
                    let options = &options;
                    async move {
                        let conn = connect(&url, &ConnectOptions::default()).await?;
                        if active {
                            drive_turn(conn, &inputs, options).await
                        } else {
                            Ok(conn)
                        }
                    }
                })
                .buffer_unordered(FILL_CONCURRENCY)
                .collect()
                .await;
            for result in results {
                open.push(result?);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            let rss = server.memory()?.rss_bytes;
            eprintln!(
                "{state}: {} sessions, {:.1} MiB",
                open.len(),
                rss as f64 / 1048576.0
            );
            points.push(MemoryPoint {
                state: state.into(),
                sessions: open.len(),
                rss_bytes: rss,
                bytes_per_session: rss.saturating_sub(base) as f64 / open.len().max(1) as f64,
            });
        }
        drop(open);
        tokio::task::spawn_blocking(move || server.stop())
            .await
            .map_err(|err| LoadError::Server(err.to_string()))?;
    }
    Ok(RunReport {
        label: options.label.clone(),
        started_unix_s,
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        options,
        levels: Vec::new(),
        memory: points,
    })
}

/// One turn sent as fast as possible (speech, a frame, commit) and its answer read.
async fn drive_turn(
    mut conn: Connection,
    inputs: &Arc<Inputs>,
    options: &LoadOptions,
) -> Result<Connection, ClientError> {
    conn.sender
        .update_session(crate::client::manual_session_update(options))
        .await?;
    conn.receiver
        .wait_session_updated(Duration::from_secs(30))
        .await?;
    let clip = &inputs.clips[0];
    let binary = options.transport == TransportArg::Binary;
    for frame in &clip.frames {
        if binary {
            let kind = match options.codec {
                crate::options::CodecArg::Pcm16 => FrameKind::AudioPcm16,
                crate::options::CodecArg::Opus => FrameKind::AudioOpus,
            };
            conn.sender.send_audio_frame(kind, frame, 20, false).await?;
        } else {
            conn.sender.append_audio(frame).await?;
        }
    }
    if let Some(frame) = inputs.video.first() {
        conn.sender
            .send_video_frame(frame.format, &frame.bytes, None, binary)
            .await?;
    }
    conn.sender.commit().await?;
    conn.sender.create_response(None).await?;
    let collect = CollectOptions {
        deadline: Instant::now() + Duration::from_secs(120),
        skip_cancelled: false,
    };
    collect_response(&mut conn.receiver, collect, |_| {}).await?;
    Ok(conn)
}
