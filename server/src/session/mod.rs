//! The session actor: the only owner and writer of one connection's state.
//!
//! It receives parsed client input from the receive task, ingests media as it arrives
//! (audio is encoded chunk by chunk, frames on arrival, both through the engine),
//! detects turns, assembles responses from what the turn holds, and forwards the
//! engine's tokens to the send task as events.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mmrt_models::{
    AudioStreamState, FillPolicy as ModelFill, FinishReason, Modality, ModelError, SamplingParams,
    SlotOutcome, TurnEmbeddings,
};
use mmrt_protocol::binary::FrameKind;
use mmrt_protocol::client::{ConversationItemCreate, InputVideoFrame, ResponseCreate};
use mmrt_protocol::item::ItemStatus;
use mmrt_protocol::response::{
    InputModality, ModalityState, ModalityStatus, ResponseExt, StatusDetails, StatusReason,
};
use mmrt_protocol::server::{
    ContentPartEvent, ConversationItemEvent, ErrorDetail, InputAudioBufferCleared,
    InputAudioBufferCommitted, ModalityReportEvent, OutputItemEvent, OutputTextDelta,
    OutputTextDone, ResponseEvent, SessionClosingEvent, SessionEvent, SpeechStarted, SpeechStopped,
    TranscriptionCompleted, TranscriptionDelta, TranscriptionFailed,
};
use mmrt_protocol::session::{FillPolicy, TurnDetection, VadModel};
use mmrt_protocol::{
    decode_frame, new_event_id, new_id, parse_client_event, ClientEvent, ContentPart, DataUrlImage,
    ErrorCode, ImageFormat, Item, ProtocolError, Response, ResponseStatus, Role, ServerEvent,
    Session, SessionLimits, Usage,
};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::engine::{EngineHandle, GenerateRequest, GenerationEvent, Job, SubmitError};
use crate::ingest::{AudioIngest, AudioOutcome, FrameSampler};
use crate::limits::{RateLimiter, ServerLimits};
use crate::metrics::metrics;
use crate::vad::{ScoreRequest, VadConfig, VadEvent};
use crate::vad_thread::VadHandle;

mod media;
mod response;

use response::next_generation_event;

/// How long a session waits for the engine before calling it overloaded.
const ENGINE_TIMEOUT: Duration = Duration::from_secs(10);

/// The close reason (and metric label) of a session the client ended.
pub const CLIENT_CLOSED: &str = "client_closed";

/// A message from the client, as the receive task read it.
#[derive(Debug)]
pub enum Inbound {
    Text(String),
    Binary(Vec<u8>),
}

/// What the send task writes.
#[derive(Debug)]
pub enum Outbound {
    Event(Box<ServerEvent>),
    Close { code: u16, reason: String },
}

/// The latest image or frame, encoded.
struct ImageState {
    embeds: Vec<f32>,
    /// For a bundle with a reading stage: the image, read when a response needs it.
    text: ImageText,
    at: Instant,
    /// Arrived since the last response.
    fresh: bool,
}

/// The text in an image, for bundles with a reading stage. Frames arrive faster than
/// they can be read (a read takes a few hundred ms on a CPU), so only the frame a
/// response uses is read, once.
#[derive(Clone)]
enum ImageText {
    /// The bundle embeds images instead.
    NotRead,
    Unread(Arc<image::RgbImage>),
    Read(String),
}

impl ImageText {
    fn text(&self) -> &str {
        match self {
            ImageText::Read(text) => text,
            ImageText::NotRead | ImageText::Unread(_) => "",
        }
    }
}

/// The response being generated.
struct ActiveResponse {
    id: String,
    item_id: String,
    cancel: Arc<AtomicBool>,
    events: mpsc::Receiver<GenerationEvent>,
    text: String,
    input_tokens: usize,
    report: Vec<ModalityState>,
    max_output_tokens: u32,
    reason: Option<StatusReason>,
    /// When the response was asked for: the end of the user's turn.
    requested_at: Instant,
    last_delta_at: Option<Instant>,
    /// `response` span (child of the session's), entered for everything logged about it.
    span: tracing::Span,
    /// For text-prompt bundles: what the user said this turn, kept for the history.
    user_text: String,
}

pub struct SessionActor {
    session: Session,
    engine: EngineHandle,
    /// The Silero VAD thread when the server runs it; `None` runs the energy detector.
    vad: Option<VadHandle>,
    out: mpsc::Sender<Outbound>,
    audio: Option<AudioIngest>,
    audio_state: Option<AudioStreamState>,
    /// Embeddings of the uncommitted audio buffer, encoded as it arrived.
    buffer_embeds: Vec<f32>,
    /// For a bundle with a transcription stage: the uncommitted audio as model-rate PCM.
    buffer_pcm: Vec<f32>,
    buffer_item_id: Option<String>,
    /// Transcripts of the audio committed since the last response.
    turn_transcripts: Vec<String>,
    /// Earlier (user, assistant) exchanges, for bundles that read a text prompt.
    history: std::collections::VecDeque<(String, String)>,
    /// Audio committed since the last response.
    turn_audio: Vec<f32>,
    /// The last committed utterance's final chunks, not yet encoded, with the stream
    /// state to encode them with: the engine encodes them with the response's prefill,
    /// or they are encoded before any later audio joins the turn.
    audio_tail: Option<(AudioStreamState, Vec<Vec<f32>>)>,
    turn_text: Vec<String>,
    image: Option<ImageState>,
    frames: FrameSampler,
    last_item_id: Option<String>,
    items: u32,
    response: Option<ActiveResponse>,
    /// Video frames the client may send per second.
    frame_rate: RateLimiter,
    /// How long running responses may go on once the server starts shutting down.
    drain: Duration,
    /// Set once shutdown began; new responses are refused.
    draining: bool,
    /// Set when the send queue overflowed; the session ends.
    slow_consumer: AtomicBool,
}

impl SessionActor {
    pub fn new(
        id: String,
        engine: EngineHandle,
        limits: SessionLimits,
        out: mpsc::Sender<Outbound>,
    ) -> SessionActor {
        let info = engine.info().clone();
        let mut session = Session::new(id, info.name.clone(), limits);
        // Start from the bundle's own sampling defaults (greedy for the tiny bundle).
        session.temperature = info.temperature;
        session.max_output_tokens =
            mmrt_protocol::session::MaxTokens::Count(info.max_new_tokens as u32);
        session.mmrt.vad_model = Some(VadModel::Energy);
        let mut actor = SessionActor {
            session,
            audio: None,
            audio_state: info.audio_state.clone(),
            engine,
            vad: None,
            out,
            buffer_embeds: Vec::new(),
            buffer_pcm: Vec::new(),
            buffer_item_id: None,
            turn_transcripts: Vec::new(),
            history: std::collections::VecDeque::new(),
            turn_audio: Vec::new(),
            audio_tail: None,
            turn_text: Vec::new(),
            image: None,
            frames: FrameSampler::default(),
            last_item_id: None,
            items: 0,
            response: None,
            frame_rate: RateLimiter::new(ServerLimits::default().max_frames_per_second),
            drain: Duration::from_secs(10),
            draining: false,
            slow_consumer: AtomicBool::new(false),
        };
        actor.audio = actor.build_audio_ingest().ok().flatten();
        actor
    }

    /// Applies the server's limits that `SessionLimits` does not carry.
    pub fn with_server_limits(mut self, limits: &ServerLimits, drain: Duration) -> SessionActor {
        self.frame_rate = RateLimiter::new(limits.max_frames_per_second);
        self.drain = drain;
        self
    }

    /// Runs server VAD turns on the Silero model through `vad` (when given) instead of
    /// the energy detector.
    pub fn with_vad_model(mut self, vad: Option<VadHandle>) -> SessionActor {
        let model = if vad.is_some() {
            VadModel::Silero
        } else {
            VadModel::Energy
        };
        self.vad = vad;
        self.session.mmrt.vad_model = Some(model);
        self.audio = self.build_audio_ingest().ok().flatten();
        self
    }

    fn build_audio_ingest(&self) -> Result<Option<AudioIngest>, ProtocolError> {
        let info = self.engine.info();
        let (Some(rate), Some(chunker)) = (info.audio_sample_rate, info.audio_chunker.clone())
        else {
            return Ok(None);
        };
        let model = self.session.mmrt.vad_model.unwrap_or_default();
        let (input_rate, vad) = (self.session.input_rate(), self.vad_config());
        AudioIngest::with_vad_model(input_rate, rate, chunker, vad, model).map(Some)
    }

    fn vad_config(&self) -> Option<(VadConfig, u32)> {
        self.session
            .audio
            .input
            .turn_detection
            .as_ref()
            .map(|TurnDetection::ServerVad(vad)| {
                (
                    VadConfig {
                        threshold: vad.threshold,
                        silence_duration_ms: vad.silence_duration_ms,
                    },
                    vad.prefix_padding_ms,
                )
            })
    }

    /// Runs until the client goes away, the session times out or, once `shutdown`
    /// fires, its response finishes or the drain deadline passes. Returns why it
    /// ended, as a close reason.
    pub async fn run(
        mut self,
        mut inbound: mpsc::Receiver<Inbound>,
        shutdown: CancellationToken,
    ) -> &'static str {
        let created = ServerEvent::SessionCreated(SessionEvent {
            event_id: new_event_id(),
            session: self.session.clone(),
        });
        if !self.emit(created) {
            return ErrorCode::SlowConsumer.code();
        }
        let idle = Duration::from_millis(self.session.mmrt.limits.idle_timeout_ms);
        let drain_deadline = tokio::time::sleep(Duration::MAX / 4);
        tokio::pin!(drain_deadline);
        let reason = loop {
            tokio::select! {
                message = tokio::time::timeout(idle, inbound.recv()) => match message {
                    Ok(Some(message)) => self.handle(message).await,
                    Ok(None) => break CLIENT_CLOSED,
                    Err(_) => {
                        self.close(1000, ErrorCode::Timeout.code());
                        break ErrorCode::Timeout.code();
                    }
                },
                event = next_generation_event(&mut self.response) => self.on_generation(event),
                _ = shutdown.cancelled(), if !self.draining => {
                    // Tell the client, let a running response finish, then close.
                    self.draining = true;
                    drain_deadline
                        .as_mut()
                        .reset(tokio::time::Instant::now() + self.drain);
                    self.emit(ServerEvent::SessionClosing(SessionClosingEvent {
                        event_id: new_event_id(),
                        reason: ErrorCode::ShuttingDown,
                        closes_in_ms: self.drain.as_millis() as u64,
                    }));
                    self.emit_error(ProtocolError::new(
                        ErrorCode::ShuttingDown,
                        format!(
                            "the server is shutting down; this session closes within {} ms",
                            self.drain.as_millis()
                        ),
                    ));
                }
                _ = &mut drain_deadline, if self.draining => {
                    if let Some(response) = &self.response {
                        response.cancel.store(true, Ordering::Relaxed);
                    }
                    self.close(1001, ErrorCode::ShuttingDown.code());
                    break ErrorCode::ShuttingDown.code();
                }
            }
            if self.slow_consumer.load(Ordering::Relaxed) {
                break ErrorCode::SlowConsumer.code();
            }
            if self.draining && self.response.is_none() {
                self.close(1001, ErrorCode::ShuttingDown.code());
                break ErrorCode::ShuttingDown.code();
            }
            if self.out.is_closed() {
                break CLIENT_CLOSED;
            }
        };
        // A vanished client's response stops at the next step and frees its cache.
        if let Some(response) = &self.response {
            response.cancel.store(true, Ordering::Relaxed);
        }
        reason
    }

    /// Queues an event for the client; a client that does not read is closed.
    fn emit(&self, event: ServerEvent) -> bool {
        match self.out.try_send(Outbound::Event(Box::new(event))) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                if self.slow_consumer.swap(true, Ordering::Relaxed) {
                    return false;
                }
                tracing::warn!(session_id = %self.session.id, "send queue full, closing");
                // The close may not fit either; the send task ends when we drop the sender.
                let _ = self.out.try_send(Outbound::Close {
                    code: 1008,
                    reason: ErrorCode::SlowConsumer.code().to_string(),
                });
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    fn emit_error(&self, err: ProtocolError) {
        tracing::debug!(
            session_id = %self.session.id,
            code = err.code.code(),
            message = %err.message,
            "client error"
        );
        metrics().error(err.code);
        self.emit(ServerEvent::error(&err));
    }

    fn close(&self, code: u16, reason: &str) {
        let _ = self.out.try_send(Outbound::Close {
            code,
            reason: reason.to_string(),
        });
    }

    async fn handle(&mut self, message: Inbound) {
        let result = match message {
            Inbound::Text(text) => match parse_client_event(&text) {
                Ok(event) => {
                    let event_id = event.event_id().map(str::to_owned);
                    self.handle_event(event)
                        .await
                        .map_err(|e| e.with_event_id(event_id))
                }
                Err(err) => Err(err),
            },
            Inbound::Binary(bytes) => self.handle_binary(&bytes).await,
        };
        if let Err(err) = result {
            self.emit_error(err);
        }
    }

    async fn handle_event(&mut self, event: ClientEvent) -> Result<(), ProtocolError> {
        event.validate()?;
        match event {
            ClientEvent::SessionUpdate(update) => {
                let old_rate = self.session.input_rate();
                self.session.apply_update(&update.session)?;
                if self.session.input_rate() != old_rate || self.audio.is_none() {
                    self.audio = self.build_audio_ingest()?;
                } else {
                    let vad = self.vad_config();
                    if let Some(audio) = self.audio.as_mut() {
                        audio.set_vad(vad);
                    }
                }
                self.emit(ServerEvent::SessionUpdated(SessionEvent {
                    event_id: new_event_id(),
                    session: self.session.clone(),
                }));
                Ok(())
            }
            ClientEvent::InputAudioBufferAppend(append) => {
                self.ingest_pcm(append.audio.as_bytes()).await
            }
            ClientEvent::InputAudioBufferCommit(_) => self.commit_audio(true).await,
            ClientEvent::InputAudioBufferClear(_) => {
                if let Some(audio) = self.audio.as_mut() {
                    audio.clear();
                }
                self.buffer_embeds.clear();
                self.buffer_pcm.clear();
                self.buffer_item_id = None;
                self.audio_state = self.engine.info().audio_state.clone();
                self.emit(ServerEvent::InputAudioBufferCleared(
                    InputAudioBufferCleared {
                        event_id: new_event_id(),
                    },
                ));
                Ok(())
            }
            ClientEvent::ConversationItemCreate(create) => self.create_item(create).await,
            ClientEvent::ResponseCreate(create) => self.create_response(create).await,
            ClientEvent::ResponseCancel(cancel) => {
                let Some(response) = &mut self.response else {
                    return Err(ProtocolError::new(
                        ErrorCode::NoActiveResponse,
                        "there is no response to cancel",
                    ));
                };
                if let Some(id) = &cancel.response_id {
                    if *id != response.id {
                        return Err(ProtocolError::invalid_field(
                            "response_id",
                            format!("`{id}` is not the running response"),
                        ));
                    }
                }
                response.reason = Some(StatusReason::ClientCancelled);
                response.cancel.store(true, Ordering::Relaxed);
                Ok(())
            }
            ClientEvent::InputVideoFrame(frame) => self.video_frame_json(frame).await,
        }
    }

    async fn handle_binary(&mut self, bytes: &[u8]) -> Result<(), ProtocolError> {
        let frame = decode_frame(bytes).map_err(|e| ProtocolError::new(e.code(), e.to_string()))?;
        let commit = frame.header.commit();
        match frame.header.kind {
            FrameKind::AudioPcm16 => self.ingest_pcm(frame.payload).await?,
            FrameKind::AudioOpus => {
                let audio = self.audio.as_mut().ok_or_else(no_audio)?;
                let pcm = audio.decode_opus(frame.payload)?;
                self.ingest_pcm(&pcm).await?;
            }
            FrameKind::VideoJpeg | FrameKind::VideoPng | FrameKind::VideoRawRgb => {
                let format = match frame.header.kind {
                    FrameKind::VideoJpeg => ImageFormat::Jpeg,
                    FrameKind::VideoPng => ImageFormat::Png,
                    _ => ImageFormat::RawRgb,
                };
                let (w, h) = (frame.header.width as u32, frame.header.height as u32);
                self.video_frame(
                    format,
                    frame.payload.to_vec(),
                    Some((w, h)),
                    frame.header.timestamp_ms,
                )
                .await?;
            }
        }
        if commit {
            self.commit_audio(true).await?;
        }
        Ok(())
    }

    /// Ingests PCM16 at the session rate: turn detection, chunking, streaming encode.
    async fn ingest_pcm(&mut self, bytes: &[u8]) -> Result<(), ProtocolError> {
        metrics().ingest("audio", bytes.len());
        let max_ms = self.session.mmrt.limits.max_audio_buffer_ms;
        let audio = self.audio.as_mut().ok_or_else(no_audio)?;
        let mut outcome = audio.push_pcm16(bytes, max_ms)?;
        // With the Silero detector the audio waits in the ingest for the model's verdict;
        // this session goes no further until it has it, so nothing is reordered.
        if let Some(request) = outcome.score.take() {
            outcome = self.judge_speech(request).await?;
        }
        for (event, chunks) in outcome.events {
            self.encode_chunks(chunks).await?;
            match event {
                VadEvent::SpeechStarted { start_ms } => self.on_speech_started(start_ms),
                VadEvent::SpeechStopped { end_ms } => {
                    let item_id = self.buffer_item_id();
                    self.emit(ServerEvent::SpeechStopped(SpeechStopped {
                        event_id: new_event_id(),
                        audio_end_ms: end_ms,
                        item_id,
                    }));
                    self.commit_audio(false).await?;
                    let create = matches!(
                        &self.session.audio.input.turn_detection,
                        Some(TurnDetection::ServerVad(v)) if v.create_response
                    );
                    if create && self.response.is_none() {
                        self.create_response(ResponseCreate::default()).await?;
                    }
                }
            }
        }
        self.encode_chunks(outcome.chunks).await
    }

    /// Has the VAD thread score the windows of `request` and routes their audio by the
    /// verdict. On failure the waiting audio is dropped and the error goes to the client.
    async fn judge_speech(&mut self, request: ScoreRequest) -> Result<AudioOutcome, ProtocolError> {
        let verdict = match &self.vad {
            Some(vad) => vad.score(request).await,
            None => Err(internal("no VAD model thread for the silero detector")),
        };
        let audio = self.audio.as_mut().ok_or_else(no_audio)?;
        match verdict {
            Ok((stream, probabilities)) => Ok(audio.judged(stream, &probabilities)),
            Err(err) => {
                audio.scoring_failed();
                Err(err)
            }
        }
    }

    fn buffer_item_id(&mut self) -> String {
        self.buffer_item_id
            .get_or_insert_with(|| new_id("item"))
            .clone()
    }

    fn on_speech_started(&mut self, start_ms: u64) {
        let item_id = self.buffer_item_id();
        self.emit(ServerEvent::SpeechStarted(SpeechStarted {
            event_id: new_event_id(),
            audio_start_ms: start_ms,
            item_id,
        }));
        // Barge-in: the user talking over a response stops it.
        let interrupt = matches!(
            &self.session.audio.input.turn_detection,
            Some(TurnDetection::ServerVad(v)) if v.interrupt_response
        );
        if let (true, Some(response)) = (interrupt, self.response.as_mut()) {
            response.reason = Some(StatusReason::TurnDetected);
            response.cancel.store(true, Ordering::Relaxed);
        }
    }

    async fn encode_chunks(&mut self, chunks: Vec<Vec<f32>>) -> Result<(), ProtocolError> {
        if self.engine.info().transcribes {
            // Kept as PCM: the transcription stage hears the utterance whole.
            for chunk in chunks {
                self.buffer_pcm.extend(chunk);
            }
            return Ok(());
        }
        for chunk in chunks {
            let state = self
                .audio_state
                .take()
                .ok_or_else(|| internal("audio stream state missing"))?;
            let (tx, rx) = oneshot::channel();
            let job = Job::EncodeAudio {
                state: state.clone(),
                chunk,
                reply: tx,
            };
            let result = self.call_engine(job, rx).await;
            match result {
                Ok((next, embeds)) => {
                    self.audio_state = Some(next);
                    self.buffer_embeds.extend(embeds);
                }
                Err(err) => {
                    self.audio_state = Some(state);
                    return Err(err);
                }
            }
        }
        Ok(())
    }

    async fn call_engine<T>(
        &mut self,
        job: Job,
        rx: oneshot::Receiver<Result<T, ModelError>>,
    ) -> Result<T, ProtocolError> {
        call_engine(&self.engine.clone(), job, rx).await
    }
}

/// Submits a job and waits, with a deadline, for its answer.
async fn call_engine<T>(
    engine: &EngineHandle,
    job: Job,
    rx: oneshot::Receiver<Result<T, ModelError>>,
) -> Result<T, ProtocolError> {
    {
        engine.submit(job).map_err(submit_error)?;
        match tokio::time::timeout(ENGINE_TIMEOUT, rx).await {
            Ok(Ok(Ok(value))) => Ok(value),
            Ok(Ok(Err(err))) => Err(model_error(err)),
            Ok(Err(_)) => Err(ProtocolError::new(
                ErrorCode::InternalError,
                "the engine dropped the job",
            )),
            Err(_) => Err(ProtocolError::new(
                ErrorCode::Timeout,
                "the model did not answer in time",
            )),
        }
    }
}

fn no_audio() -> ProtocolError {
    ProtocolError::new(ErrorCode::Unsupported, "this bundle takes no audio")
}

fn internal(message: &str) -> ProtocolError {
    ProtocolError::new(ErrorCode::InternalError, message)
}

fn submit_error(err: SubmitError) -> ProtocolError {
    match err {
        SubmitError::Overloaded => ProtocolError::new(ErrorCode::Overloaded, err.to_string()),
        SubmitError::Stopped => ProtocolError::new(ErrorCode::InternalError, err.to_string()),
    }
}

fn model_error(err: ModelError) -> ProtocolError {
    let code = match &err {
        ModelError::InvalidInput(_) => ErrorCode::InvalidField,
        ModelError::ContextFull { .. } => ErrorCode::SessionLimit,
        _ => ErrorCode::ModelError,
    };
    ProtocolError::new(code, err.to_string())
}
