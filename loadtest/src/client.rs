//! One virtual client: a realtime session that talks like a person with a camera.
//!
//! Three tasks per client. The media task is the session's timeline: every 20 ms it
//! sends the next frame of speech or silence, sends a video frame when one is due, and
//! ends each turn (manual mode: commit and `response.create` right after the speech).
//! The reader task drains the socket so the server never sees a slow consumer. The
//! client task itself turns events into measurements.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mmrt_client::{connect, ClientError, ConnectOptions, EventSender, TimedEvent};
use mmrt_protocol::session::{
    AudioFormat, AudioFormatType, AudioInputUpdate, AudioUpdate, MaxTokens, ServerVadUpdate,
    TurnDetectionUpdate,
};
use mmrt_protocol::{FrameKind, ResponseStatus, ServerEvent, SessionUpdate};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::inputs::Inputs;
use crate::options::{CodecArg, LoadOptions, TransportArg, TurnMode};
use crate::stats::Stats;

/// Silence that ends a turn under server VAD, in ms (set on every session).
pub const VAD_SILENCE_MS: u32 = 500;
/// Audio frame period.
const FRAME: Duration = Duration::from_millis(20);
/// Silence after the speech before the next turn may start, so server VAD can end it.
const MIN_TAIL: Duration = Duration::from_millis(1000);
/// Events waiting between the reader task and the client task.
const EVENT_QUEUE: usize = 1024;

/// Counters the progress bar reads while a level runs.
#[derive(Debug, Default)]
pub struct Live {
    /// Sessions open now.
    pub sessions: AtomicU64,
    /// Turns whose speech was sent.
    pub turns: AtomicU64,
    /// Responses done.
    pub responses: AtomicU64,
    /// Errors counted.
    pub errors: AtomicU64,
}

/// When one client runs.
#[derive(Debug, Clone)]
pub struct ClientPlan {
    /// Its number within the level; picks the first clip.
    pub index: usize,
    /// When to connect (the ramp-up spreads these).
    pub start_at: Instant,
    /// No turn starts after this; media stops.
    pub stop_at: Instant,
    /// The server's realtime URL.
    pub url: String,
}

/// What the media task tells the client task.
enum Marker {
    /// The media clock started (media time 0 was sent at this instant).
    Started(Instant),
    /// A turn's speech was sent; in manual mode the commit and `response.create` too.
    EndOfTurn(Instant),
    /// Sending failed.
    Failed(ClientError),
    /// The media task is done; counts of frames sent and dropped, send lags.
    Finished(MediaCounts),
}

#[derive(Default)]
struct MediaCounts {
    frames_sent: u64,
    frames_dropped: u64,
    send_lag: crate::stats::Latency,
}

/// A response being waited for.
struct Pending {
    end_of_turn: Instant,
    commit_sent: Option<Instant>,
    first: Option<Instant>,
    last: Option<Instant>,
}

/// Runs one client to the end of its plan and returns what it measured.
pub async fn run_client(
    plan: ClientPlan,
    options: Arc<LoadOptions>,
    inputs: Arc<Inputs>,
    live: Arc<Live>,
) -> Stats {
    let mut stats = Stats::default();
    tokio::time::sleep_until(plan.start_at).await;
    if let Err(err) = session(&plan, &options, inputs, &live, &mut stats).await {
        stats.error(err.code());
        live.errors.fetch_add(1, Ordering::Relaxed);
    }
    stats
}

async fn session(
    plan: &ClientPlan,
    options: &Arc<LoadOptions>,
    inputs: Arc<Inputs>,
    live: &Arc<Live>,
    stats: &mut Stats,
) -> Result<(), ClientError> {
    let timeout = Duration::from_secs(10);
    let mut conn = connect(&plan.url, &ConnectOptions::default()).await?;
    live.sessions.fetch_add(1, Ordering::Relaxed);
    let _open = OpenSession(live.clone());
    let session_id = conn.session.id.clone();
    conn.sender.update_session(session_update(options)).await?;
    conn.receiver.wait_session_updated(timeout).await?;

    // The reader task owns the receiving half until the session ends.
    let (events_tx, mut events) = mpsc::channel::<Result<TimedEvent, ClientError>>(EVENT_QUEUE);
    let mut receiver = conn.receiver;
    let reader = tokio::spawn(async move {
        loop {
            let next = receiver.next_event(Duration::from_secs(3600)).await;
            let failed = next.is_err();
            if events_tx.send(next).await.is_err() || failed {
                return;
            }
        }
    });
    let (markers_tx, mut markers) = mpsc::channel::<Marker>(16);
    let media = tokio::spawn(media_task(
        conn.sender.clone(),
        plan.clone(),
        options.clone(),
        inputs,
        markers_tx,
    ));

    let response_timeout = Duration::from_secs_f64(options.response_timeout);
    let mut media_start = None;
    let mut media_done = false;
    let mut pending: Option<Pending> = None;
    let mut first_tokens: Vec<Option<u64>> = Vec::new();
    let mut result = Ok(());
    loop {
        // Done once the media ended and no response is outstanding.
        if media_done && pending.is_none() {
            break;
        }
        let give_up_at = match &pending {
            Some(p) => p.end_of_turn + response_timeout,
            None if media_done => Instant::now(),
            None => plan.stop_at + response_timeout + Duration::from_secs(30),
        };
        tokio::select! {
            marker = markers.recv(), if !media_done => match marker {
                Some(Marker::Started(at)) => media_start = Some(at),
                Some(Marker::EndOfTurn(at)) => {
                    stats.turns += 1;
                    live.turns.fetch_add(1, Ordering::Relaxed);
                    if options.turn_mode == TurnMode::Manual {
                        if let Some(old) = pending.take() {
                            first_tokens.push(old.first.map(|f| micros(f - old.end_of_turn)));
                        }
                        pending = Some(Pending {
                            end_of_turn: at,
                            commit_sent: Some(at),
                            first: None,
                            last: None,
                        });
                    }
                }
                Some(Marker::Failed(err)) => {
                    result = Err(err);
                    break;
                }
                Some(Marker::Finished(counts)) => {
                    stats.frames_sent += counts.frames_sent;
                    stats.frames_dropped += counts.frames_dropped;
                    stats.send_lag.merge(&counts.send_lag);
                    media_done = true;
                }
                None => media_done = true,
            },
            event = events.recv() => match event {
                Some(Ok(timed)) => on_event(timed, options, media_start, &mut pending,
                                            &mut first_tokens, stats, live),
                Some(Err(err)) => {
                    result = Err(err);
                    break;
                }
                None => break,
            },
            _ = tokio::time::sleep_until(give_up_at) => {
                if let Some(old) = pending.take() {
                    stats.error("timeout");
                    live.errors.fetch_add(1, Ordering::Relaxed);
                    first_tokens.push(old.first.map(|f| micros(f - old.end_of_turn)));
                } else if !media_done {
                    // The media task overran its plan by far; stop waiting for it.
                    stats.error("timeout");
                    break;
                }
            }
        }
    }
    if let Some(old) = pending.take() {
        first_tokens.push(old.first.map(|f| micros(f - old.end_of_turn)));
    }

    // Stop both tasks; the close frame lets the server end the session at once.
    media.abort();
    let _ = conn.sender.close().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(_)) = events.recv().await {}
    })
    .await;
    reader.abort();
    stats.sessions.push((session_id, first_tokens));
    result
}

/// Decrements the open-session gauge however the session ends.
struct OpenSession(Arc<Live>);

impl Drop for OpenSession {
    fn drop(&mut self) {
        self.0.sessions.fetch_sub(1, Ordering::Relaxed);
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Turns one server event into measurements.
fn on_event(
    timed: TimedEvent,
    options: &LoadOptions,
    media_start: Option<Instant>,
    pending: &mut Option<Pending>,
    first_tokens: &mut Vec<Option<u64>>,
    stats: &mut Stats,
    live: &Live,
) {
    let at = Instant::from_std(timed.received_at);
    match timed.event {
        ServerEvent::SpeechStopped(stopped) if options.turn_mode == TurnMode::ServerVad => {
            // The end of turn is when the server decided it; the lag is how long after
            // the deciding audio was sent that decision reached us.
            if let Some(start) = media_start {
                let decided = Duration::from_millis(stopped.audio_end_ms)
                    + Duration::from_millis(u64::from(VAD_SILENCE_MS));
                stats
                    .ingest_lag
                    .record(at.saturating_duration_since(start + decided));
            }
            if let Some(old) = pending.take() {
                first_tokens.push(old.first.map(|f| micros(f - old.end_of_turn)));
            }
            *pending = Some(Pending {
                end_of_turn: at,
                commit_sent: None,
                first: None,
                last: None,
            });
        }
        ServerEvent::InputAudioBufferCommitted(_) => {
            if let Some(sent) = pending.as_mut().and_then(|p| p.commit_sent.take()) {
                stats.ingest_lag.record(at.saturating_duration_since(sent));
            }
        }
        ServerEvent::OutputTextDelta(_) => {
            stats.deltas += 1;
            if let Some(p) = pending.as_mut() {
                match p.last {
                    None => stats
                        .first_token
                        .record(at.saturating_duration_since(p.end_of_turn)),
                    Some(last) => stats.inter_token.record(at.saturating_duration_since(last)),
                }
                p.first.get_or_insert(at);
                p.last = Some(at);
            }
        }
        ServerEvent::ResponseDone(done) => {
            live.responses.fetch_add(1, Ordering::Relaxed);
            if let Some(usage) = &done.response.usage {
                stats.output_tokens += u64::from(usage.output_tokens);
            }
            match done.response.status {
                ResponseStatus::Completed | ResponseStatus::Incomplete => {
                    stats.responses += 1;
                    if let Some(p) = pending.take() {
                        stats
                            .turn_total
                            .record(at.saturating_duration_since(p.end_of_turn));
                        first_tokens.push(p.first.map(|f| micros(f - p.end_of_turn)));
                    }
                }
                ResponseStatus::Failed => {
                    stats.responses_not_completed += 1;
                    let code = done
                        .response
                        .status_details
                        .as_ref()
                        .and_then(|d| d.error.as_ref())
                        .map_or("response_failed", |e| e.code.code());
                    stats.error(code);
                    live.errors.fetch_add(1, Ordering::Relaxed);
                }
                _ => stats.responses_not_completed += 1,
            }
        }
        ServerEvent::Error(err) => {
            stats.error(err.error.code.code());
            live.errors.fetch_add(1, Ordering::Relaxed);
        }
        _ => {}
    }
}

/// The session settings of a manual-turn session with the options' rate and token cap.
pub fn manual_session_update(options: &LoadOptions) -> SessionUpdate {
    let mut manual = options.clone();
    manual.turn_mode = TurnMode::Manual;
    session_update(&manual)
}

/// The session settings every client asks for.
fn session_update(options: &LoadOptions) -> SessionUpdate {
    let turn_detection = match options.turn_mode {
        TurnMode::Manual => None,
        TurnMode::ServerVad => Some(TurnDetectionUpdate::ServerVad(ServerVadUpdate {
            silence_duration_ms: Some(VAD_SILENCE_MS),
            create_response: Some(true),
            interrupt_response: Some(true),
            ..ServerVadUpdate::default()
        })),
    };
    SessionUpdate {
        audio: Some(AudioUpdate {
            input: Some(AudioInputUpdate {
                format: Some(AudioFormat {
                    kind: AudioFormatType::Pcm,
                    rate: Some(options.rate),
                }),
                turn_detection: Some(turn_detection),
            }),
        }),
        max_output_tokens: Some(MaxTokens::Count(options.max_output_tokens)),
        ..SessionUpdate::default()
    }
}

/// The session's media timeline: speech, silence and video at real-time pace.
async fn media_task(
    sender: EventSender,
    plan: ClientPlan,
    options: Arc<LoadOptions>,
    inputs: Arc<Inputs>,
    markers: mpsc::Sender<Marker>,
) {
    let mut counts = MediaCounts::default();
    match media_loop(&sender, &plan, &options, &inputs, &markers, &mut counts).await {
        Ok(()) => {
            let _ = markers.send(Marker::Finished(counts)).await;
        }
        Err(err) => {
            let _ = markers.send(Marker::Failed(err)).await;
        }
    }
}

async fn media_loop(
    sender: &EventSender,
    plan: &ClientPlan,
    options: &LoadOptions,
    inputs: &Inputs,
    markers: &mpsc::Sender<Marker>,
    counts: &mut MediaCounts,
) -> Result<(), ClientError> {
    let start = Instant::now();
    let _ = markers.send(Marker::Started(start)).await;
    let interval = Duration::from_secs_f64(options.turn_interval);
    let video_period = (options.fps > 0.0).then(|| Duration::from_secs_f64(1.0 / options.fps));
    let audio_kind = match (options.transport, options.codec) {
        (TransportArg::Json, _) => None,
        (TransportArg::Binary, CodecArg::Pcm16) => Some(FrameKind::AudioPcm16),
        (TransportArg::Binary, CodecArg::Opus) => Some(FrameKind::AudioOpus),
    };
    let binary_video = options.transport == TransportArg::Binary;
    let frame_ms = FRAME.as_millis() as u64;

    let mut tick: u32 = 0;
    let mut next_video = start;
    let mut video_index = 0usize;
    let mut turn = 0u32;
    let mut turn_start = start;
    loop {
        // Decide whether this turn happens at all: it must fit in the plan.
        let clip = &inputs.clips[(plan.index + turn as usize) % inputs.clips.len()];
        let speech = FRAME * clip.frames.len() as u32;
        let turn_allowed = options.max_turns.is_none_or(|max| turn < max);
        if !turn_allowed || turn_start + speech > plan.stop_at {
            return Ok(());
        }
        let next_turn = (turn_start + interval).max(turn_start + speech + MIN_TAIL);

        // One 20 ms tick at a time: speech frames, then silence until the next turn.
        let mut frame_in_turn = 0usize;
        loop {
            let due = start + FRAME * tick;
            if due >= next_turn {
                break;
            }
            tokio::time::sleep_until(due).await;
            let now = Instant::now();
            let late = now.saturating_duration_since(due);
            tick += 1;
            let speaking = frame_in_turn < clip.frames.len();
            let payload = if speaking {
                &clip.frames[frame_in_turn]
            } else {
                &inputs.silence
            };
            frame_in_turn += 1;
            if late > FRAME {
                counts.frames_dropped += 1;
            } else {
                counts.send_lag.record(late);
                match audio_kind {
                    Some(kind) => {
                        sender
                            .send_audio_frame(kind, payload, frame_ms, false)
                            .await?
                    }
                    None => sender.append_audio(payload).await?,
                }
                counts.frames_sent += 1;
            }

            // The speech just ended: end the turn.
            if speaking && frame_in_turn == clip.frames.len() {
                let ended = Instant::now();
                if options.turn_mode == TurnMode::Manual {
                    sender.commit().await?;
                    sender.create_response(None).await?;
                }
                let _ = markers.send(Marker::EndOfTurn(ended)).await;
            }

            // Video frames on their own schedule, checked each tick.
            if let Some(period) = video_period {
                if now >= next_video {
                    if now.saturating_duration_since(next_video) > period {
                        counts.frames_dropped += 1;
                    } else {
                        let frame = &inputs.video[video_index % inputs.video.len()];
                        sender
                            .send_video_frame(frame.format, &frame.bytes, None, binary_video)
                            .await?;
                        counts.frames_sent += 1;
                        video_index += 1;
                    }
                    next_video += period;
                }
            }
            if now >= plan.stop_at && !speaking {
                return Ok(());
            }
        }
        turn += 1;
        turn_start = next_turn;
    }
}
