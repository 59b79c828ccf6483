//! Collecting one response: its text, deltas and timings.

use std::time::{Duration, Instant};

use mmrt_protocol::response::ModalityState;
use mmrt_protocol::{Response, ResponseStatus, ServerEvent};

use crate::connection::EventReceiver;
use crate::error::ClientError;

/// One text delta and when it arrived.
#[derive(Debug, Clone)]
pub struct TimedDelta {
    /// When this client read it.
    pub received_at: Instant,
    /// The text.
    pub text: String,
}

/// What a response produced.
#[derive(Debug, Clone)]
pub struct ResponseOutcome {
    /// The final response (`response.done`): status, usage.
    pub response: Response,
    /// All deltas joined.
    pub text: String,
    /// Every delta with its arrival time.
    pub deltas: Vec<TimedDelta>,
    /// The modality report, when the server sent one.
    pub modality_report: Option<Vec<ModalityState>>,
    /// When `input_audio_buffer.speech_stopped` arrived, if it did (server VAD).
    pub speech_stopped_at: Option<Instant>,
    /// When `response.created` arrived.
    pub created_at: Option<Instant>,
    /// When `response.done` arrived.
    pub done_at: Instant,
    /// Transcripts of the user's audio (`input_audio_transcription.completed`) that
    /// arrived while waiting, for bundles that transcribe speech.
    pub transcripts: Vec<String>,
}

impl ResponseOutcome {
    /// Time from `end_of_turn` to the first delta.
    pub fn time_to_first_token(&self, end_of_turn: Instant) -> Option<Duration> {
        self.deltas
            .first()
            .map(|d| d.received_at.saturating_duration_since(end_of_turn))
    }

    /// Time from `end_of_turn` to `response.done`.
    pub fn total(&self, end_of_turn: Instant) -> Duration {
        self.done_at.saturating_duration_since(end_of_turn)
    }
}

/// Options for [`collect_response`].
#[derive(Debug, Clone, Copy)]
pub struct CollectOptions {
    /// Give up (with [`ClientError::Timeout`]) at this moment.
    pub deadline: Instant,
    /// Keep waiting past responses that ended `cancelled` (server VAD may cancel a
    /// response when speech resumes, then answer the longer turn).
    pub skip_cancelled: bool,
}

/// Reads events until a response is done, calling `on_delta` for each text delta.
///
/// An `error` event ends the wait with [`ClientError::Server`].
pub async fn collect_response(
    receiver: &mut EventReceiver,
    options: CollectOptions,
    mut on_delta: impl FnMut(&str),
) -> Result<ResponseOutcome, ClientError> {
    let mut text = String::new();
    let mut deltas = Vec::new();
    let mut modality_report = None;
    let mut speech_stopped_at = None;
    let mut created_at = None;
    let mut transcripts = Vec::new();
    loop {
        let remaining = options.deadline.saturating_duration_since(Instant::now());
        let timed = receiver
            .next_event(remaining)
            .await
            .map_err(|err| match err {
                ClientError::Timeout { .. } => ClientError::Timeout {
                    what: "response.done".into(),
                    after: remaining,
                },
                other => other,
            })?;
        match timed.event {
            ServerEvent::Error(err) => {
                return Err(ClientError::Server(err.error.to_protocol_error()))
            }
            ServerEvent::SpeechStopped(_) => speech_stopped_at = Some(timed.received_at),
            ServerEvent::ResponseCreated(_) => {
                created_at = Some(timed.received_at);
                text.clear();
                deltas.clear();
            }
            ServerEvent::ModalityReport(report) => modality_report = Some(report.modalities),
            ServerEvent::TranscriptionCompleted(done) => transcripts.push(done.transcript),
            ServerEvent::OutputTextDelta(delta) => {
                on_delta(&delta.delta);
                text.push_str(&delta.delta);
                deltas.push(TimedDelta {
                    received_at: timed.received_at,
                    text: delta.delta,
                });
            }
            ServerEvent::ResponseDone(done) => {
                if options.skip_cancelled && done.response.status == ResponseStatus::Cancelled {
                    continue;
                }
                if modality_report.is_none() {
                    modality_report = done
                        .response
                        .mmrt
                        .as_ref()
                        .map(|m| m.modality_report.clone());
                }
                return Ok(ResponseOutcome {
                    response: done.response,
                    text,
                    deltas,
                    modality_report,
                    speech_stopped_at,
                    created_at,
                    done_at: timed.received_at,
                    transcripts,
                });
            }
            _ => {}
        }
    }
}
