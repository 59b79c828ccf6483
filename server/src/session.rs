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
    ContentPartEvent, ConversationItemEvent, InputAudioBufferCleared, InputAudioBufferCommitted,
    ModalityReportEvent, OutputItemEvent, OutputTextDelta, OutputTextDone, ResponseEvent,
    SessionEvent, SpeechStarted, SpeechStopped,
};
use mmrt_protocol::session::{FillPolicy, TurnDetection};
use mmrt_protocol::{
    decode_frame, new_event_id, new_id, parse_client_event, ClientEvent, ContentPart, DataUrlImage,
    ErrorCode, ImageFormat, Item, ProtocolError, Response, ResponseStatus, Role, ServerEvent,
    Session, SessionLimits, Usage,
};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::engine::{EngineHandle, GenerateRequest, GenerationEvent, Job, SubmitError};
use crate::ingest::{AudioIngest, FrameSampler};
use crate::limits::{RateLimiter, ServerLimits};
use crate::metrics::metrics;
use crate::vad::{VadConfig, VadEvent};

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
    at: Instant,
    /// Arrived since the last response.
    fresh: bool,
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
}

pub struct SessionActor {
    session: Session,
    engine: EngineHandle,
    out: mpsc::Sender<Outbound>,
    audio: Option<AudioIngest>,
    audio_state: Option<AudioStreamState>,
    /// Embeddings of the uncommitted audio buffer, encoded as it arrived.
    buffer_embeds: Vec<f32>,
    buffer_item_id: Option<String>,
    /// Audio committed since the last response.
    turn_audio: Vec<f32>,
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
        let mut actor = SessionActor {
            session,
            audio: None,
            audio_state: info.audio_state.clone(),
            engine,
            out,
            buffer_embeds: Vec::new(),
            buffer_item_id: None,
            turn_audio: Vec::new(),
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

    fn build_audio_ingest(&self) -> Result<Option<AudioIngest>, ProtocolError> {
        let info = self.engine.info();
        let (Some(rate), Some(chunker)) = (info.audio_sample_rate, info.audio_chunker.clone())
        else {
            return Ok(None);
        };
        AudioIngest::new(self.session.input_rate(), rate, chunker, self.vad_config()).map(Some)
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
        tracing::debug!(session_id = %self.session.id, code = err.code.code(), message = %err.message, "client error");
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
        let outcome = audio.push_pcm16(bytes, max_ms)?;
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

impl SessionActor {
    /// Ends the audio turn: encodes what is left and adds the audio item.
    async fn commit_audio(&mut self, manual: bool) -> Result<(), ProtocolError> {
        let audio = self.audio.as_mut().ok_or_else(no_audio)?;
        let Some(chunks) = audio.commit() else {
            if manual {
                return Err(ProtocolError::new(
                    ErrorCode::BufferEmpty,
                    "the input audio buffer is empty",
                ));
            }
            return Ok(());
        };
        self.encode_chunks(chunks).await?;
        self.audio_state = self.engine.info().audio_state.clone();
        let item_id = self.buffer_item_id();
        self.buffer_item_id = None;
        self.turn_audio.append(&mut self.buffer_embeds);
        self.emit(ServerEvent::InputAudioBufferCommitted(
            InputAudioBufferCommitted {
                event_id: new_event_id(),
                previous_item_id: self.last_item_id.clone(),
                item_id: item_id.clone(),
            },
        ));
        let mut item = Item::user(vec![ContentPart::InputAudio {
            audio: None,
            transcript: None,
        }]);
        item.id = Some(item_id);
        self.add_item(item);
        Ok(())
    }

    fn add_item(&mut self, mut item: Item) {
        let id = item.id.get_or_insert_with(|| new_id("item")).clone();
        item.status = Some(ItemStatus::Completed);
        item.object = Some(mmrt_protocol::item::ItemObject::RealtimeItem);
        let event = ConversationItemEvent {
            event_id: new_event_id(),
            previous_item_id: self.last_item_id.clone(),
            item: item.without_media(),
        };
        self.emit(ServerEvent::ConversationItemAdded(event.clone()));
        self.emit(ServerEvent::ConversationItemDone(ConversationItemEvent {
            event_id: new_event_id(),
            ..event
        }));
        self.last_item_id = Some(id);
        self.items += 1;
    }

    async fn create_item(&mut self, create: ConversationItemCreate) -> Result<(), ProtocolError> {
        if self.items >= self.session.mmrt.limits.max_items {
            return Err(ProtocolError::new(
                ErrorCode::SessionLimit,
                format!(
                    "a session holds at most {} items",
                    self.session.mmrt.limits.max_items
                ),
            ));
        }
        let item = create.item;
        if item.role != Role::User {
            return Err(ProtocolError::invalid_field(
                "item.role",
                "only user messages can be added",
            ));
        }
        // Decode everything first, so a bad part leaves the turn untouched.
        let mut texts = Vec::new();
        let mut image = None;
        let mut audio_pcm = Vec::new();
        for (i, part) in item.content.iter().enumerate() {
            match part {
                ContentPart::InputText { text } => texts.push(text.clone()),
                ContentPart::InputImage { image_url, .. } => {
                    let url = image_url.as_deref().ok_or_else(|| {
                        ProtocolError::invalid_field(
                            format!("item.content[{i}].image_url"),
                            "missing",
                        )
                    })?;
                    let data = DataUrlImage::parse(url)
                        .map_err(|e| e.with_param(format!("item.content[{i}].image_url")))?;
                    metrics().ingest("image", data.bytes.len());
                    image = Some(self.encode_image(data.format, data.bytes, None).await?);
                }
                ContentPart::InputAudio { audio, .. } => {
                    let bytes = audio.as_ref().ok_or_else(|| {
                        ProtocolError::invalid_field(format!("item.content[{i}].audio"), "missing")
                    })?;
                    audio_pcm.push(bytes.as_bytes().to_vec());
                }
                ContentPart::OutputText { .. } => {
                    return Err(ProtocolError::invalid_field(
                        format!("item.content[{i}].type"),
                        "output_text is for assistant messages",
                    ));
                }
            }
        }
        for pcm in audio_pcm {
            self.encode_audio_item(&pcm).await?;
        }
        self.turn_text.extend(texts);
        if let Some(embeds) = image {
            self.image = Some(ImageState {
                embeds,
                at: Instant::now(),
                fresh: true,
            });
        }
        let mut item = item;
        if create.previous_item_id.is_some() {
            tracing::debug!("previous_item_id is ignored; items are appended");
        }
        item.id = item.id.or_else(|| Some(new_id("item")));
        self.add_item(item);
        Ok(())
    }

    /// Encodes a whole audio clip from an item, apart from the live buffer.
    async fn encode_audio_item(&mut self, pcm: &[u8]) -> Result<(), ProtocolError> {
        let info = self.engine.info().clone();
        let (Some(rate), Some(chunker)) = (info.audio_sample_rate, info.audio_chunker) else {
            return Err(no_audio());
        };
        let mut ingest = AudioIngest::new(self.session.input_rate(), rate, chunker, None)?;
        let limit = self.session.mmrt.limits.max_audio_buffer_ms;
        let mut chunks = ingest.push_pcm16(pcm, limit)?.chunks;
        chunks.extend(ingest.commit().unwrap_or_default());
        let mut state = info
            .audio_state
            .ok_or_else(|| internal("audio stream state missing"))?;
        for chunk in chunks {
            let (tx, rx) = oneshot::channel();
            let job = Job::EncodeAudio {
                state,
                chunk,
                reply: tx,
            };
            let (next, embeds) = self.call_engine(job, rx).await?;
            state = next;
            self.turn_audio.extend(embeds);
        }
        Ok(())
    }

    async fn video_frame_json(&mut self, frame: InputVideoFrame) -> Result<(), ProtocolError> {
        let size = frame.width.zip(frame.height);
        self.video_frame(
            frame.format,
            frame.data.into_bytes(),
            size,
            frame.timestamp_ms,
        )
        .await
    }

    async fn video_frame(
        &mut self,
        format: ImageFormat,
        bytes: Vec<u8>,
        size: Option<(u32, u32)>,
        timestamp_ms: u64,
    ) -> Result<(), ProtocolError> {
        metrics().ingest("video", bytes.len());
        if let Err(err) = self.frame_rate.take() {
            metrics()
                .frames_dropped
                .with_label_values(&["rate_limited"])
                .inc();
            return Err(err);
        }
        let fps = self.session.mmrt.video.sample_fps;
        if !self.frames.admit(timestamp_ms, fps)? {
            metrics()
                .frames_dropped
                .with_label_values(&["sampled_out"])
                .inc();
            return Ok(());
        }
        let embeds = self.encode_image(format, bytes, size).await?;
        self.image = Some(ImageState {
            embeds,
            at: Instant::now(),
            fresh: true,
        });
        Ok(())
    }

    /// Decodes and preprocesses off the async workers, then encodes in the engine.
    async fn encode_image(
        &mut self,
        format: ImageFormat,
        bytes: Vec<u8>,
        size: Option<(u32, u32)>,
    ) -> Result<Vec<f32>, ProtocolError> {
        let limits = &self.session.mmrt.limits;
        if bytes.len() as u64 > limits.max_image_bytes {
            return Err(ProtocolError::new(
                ErrorCode::TooLarge,
                format!("images are limited to {} bytes", limits.max_image_bytes),
            ));
        }
        let pre = self
            .engine
            .info()
            .image_preprocessor
            .clone()
            .ok_or_else(|| {
                ProtocolError::new(ErrorCode::Unsupported, "this bundle takes no images")
            })?;
        let max_side = limits.max_image_dimension;
        let pixels = tokio::task::spawn_blocking(move || {
            let image = match format {
                ImageFormat::RawRgb => {
                    let (w, h) = size.ok_or_else(|| {
                        ModelError::InvalidInput("raw RGB frames need width and height".into())
                    })?;
                    mmrt_models::ImagePreprocessor::from_raw_rgb(w, h, bytes)?
                }
                ImageFormat::Jpeg | ImageFormat::Png => {
                    mmrt_models::ImagePreprocessor::decode(&bytes)?
                }
            };
            if image.width() > max_side || image.height() > max_side {
                return Err(ModelError::InvalidInput(format!(
                    "image is {}x{}; the limit is {max_side} pixels a side",
                    image.width(),
                    image.height()
                )));
            }
            Ok(pre.preprocess(&image))
        })
        .await
        .map_err(|_| internal("image decoding task failed"))?
        .map_err(|e| ProtocolError::new(ErrorCode::InvalidImage, e.to_string()))?;
        let (tx, rx) = oneshot::channel();
        self.call_engine(Job::EncodeImage { pixels, reply: tx }, rx)
            .await
    }

    async fn create_response(&mut self, create: ResponseCreate) -> Result<(), ProtocolError> {
        if self.draining {
            return Err(ProtocolError::new(
                ErrorCode::ShuttingDown,
                "the server is shutting down and starts no new responses",
            ));
        }
        if self.response.is_some() {
            return Err(ProtocolError::new(
                ErrorCode::ResponseInProgress,
                "a response is already being generated; cancel it or wait for response.done",
            ));
        }
        let settings = self.session.response_settings(create.response.as_ref())?;

        // What this turn holds, and how each missing modality is filled.
        let mut turn = TurnEmbeddings::default();
        let mut report = Vec::new();
        if !self.turn_text.is_empty() {
            let text = self.turn_text.join(" ");
            let (tx, rx) = oneshot::channel();
            let embeds = self
                .call_engine(Job::EmbedText { text, reply: tx }, rx)
                .await?;
            turn.by_modality.insert(Modality::Text, embeds);
        }
        let mut policies = BTreeMap::new();
        let fill = self.session.mmrt.fill_policy.clone();
        let max_age = Duration::from_millis(self.session.mmrt.max_age_ms);
        let image_state = match &self.image {
            Some(image) if image.fresh => {
                turn.by_modality
                    .insert(Modality::Image, image.embeds.clone());
                Some((ModalityStatus::Present, None, None))
            }
            Some(image) if fill.image == FillPolicy::LastKnown && image.at.elapsed() <= max_age => {
                turn.by_modality
                    .insert(Modality::Image, image.embeds.clone());
                let age = image.at.elapsed().as_millis() as u64;
                Some((
                    ModalityStatus::Stale,
                    Some(FillPolicy::LastKnown),
                    Some(age),
                ))
            }
            _ => None,
        };
        if !self.turn_audio.is_empty() {
            // Copied, not taken: if the engine refuses the job the turn stays intact.
            turn.by_modality
                .insert(Modality::Audio, self.turn_audio.clone());
        }
        policies.insert(Modality::Image, to_model_fill(fill.image));
        policies.insert(Modality::Audio, to_model_fill(fill.audio));
        policies.insert(Modality::Text, ModelFill::Null);

        let cancel = Arc::new(AtomicBool::new(false));
        let (events_tx, events_rx) = mpsc::channel(256);
        let request = GenerateRequest {
            turn,
            policies,
            sampling: SamplingParams {
                temperature: settings.temperature,
                top_k: 0,
                top_p: 1.0,
                seed: rand_seed(),
            },
            max_new_tokens: settings.max_output_tokens as usize,
            cancel: cancel.clone(),
            events: events_tx,
        };
        self.engine
            .submit(Job::Generate(request))
            .map_err(submit_error)?;

        // The turn is consumed.
        self.turn_text.clear();
        self.turn_audio.clear();
        if let Some(image) = self.image.as_mut() {
            image.fresh = false;
        }
        if let Some((status, fill, age)) = image_state {
            report.push(ModalityState {
                modality: InputModality::Image,
                status,
                fill,
                age_ms: age,
            });
        }

        let id = new_id("resp");
        let item_id = new_id("item");
        self.emit(ServerEvent::ResponseCreated(ResponseEvent {
            event_id: new_event_id(),
            response: Response::in_progress(id.clone(), settings.max_output_tokens),
        }));
        self.emit(ServerEvent::OutputItemAdded(OutputItemEvent {
            event_id: new_event_id(),
            response_id: id.clone(),
            output_index: 0,
            item: Item::assistant(item_id.clone(), ItemStatus::InProgress, None),
        }));
        self.emit(ServerEvent::ContentPartAdded(ContentPartEvent {
            event_id: new_event_id(),
            response_id: id.clone(),
            item_id: item_id.clone(),
            output_index: 0,
            content_index: 0,
            part: ContentPart::OutputText {
                text: String::new(),
            },
        }));
        self.response = Some(ActiveResponse {
            id,
            item_id,
            cancel,
            events: events_rx,
            text: String::new(),
            input_tokens: 0,
            report,
            max_output_tokens: settings.max_output_tokens,
            reason: None,
            requested_at: Instant::now(),
            last_delta_at: None,
        });
        Ok(())
    }

    fn on_generation(&mut self, event: Option<GenerationEvent>) {
        let Some(response) = self.response.as_mut() else {
            return;
        };
        let event = event.unwrap_or(GenerationEvent::Failed(ModelError::Inference {
            model: "engine".into(),
            message: "the engine stopped".into(),
        }));
        match event {
            GenerationEvent::Started {
                report,
                input_tokens,
                prefill,
            } => {
                response.input_tokens = input_tokens;
                tracing::debug!(session_id = %self.session.id, ?prefill, input_tokens, "prefilled");
                merge_report(&mut response.report, &report);
                let event = ServerEvent::ModalityReport(ModalityReportEvent {
                    event_id: new_event_id(),
                    response_id: response.id.clone(),
                    modalities: response.report.clone(),
                });
                self.emit(event);
            }
            GenerationEvent::Delta(delta) => {
                let now = Instant::now();
                match response.last_delta_at {
                    None => metrics()
                        .first_token_seconds
                        .observe((now - response.requested_at).as_secs_f64()),
                    Some(last) => metrics()
                        .inter_token_seconds
                        .observe((now - last).as_secs_f64()),
                }
                response.last_delta_at = Some(now);
                response.text.push_str(&delta);
                let event = ServerEvent::OutputTextDelta(OutputTextDelta {
                    event_id: new_event_id(),
                    response_id: response.id.clone(),
                    item_id: response.item_id.clone(),
                    output_index: 0,
                    content_index: 0,
                    delta,
                });
                self.emit(event);
            }
            GenerationEvent::Finished {
                reason,
                output_tokens,
            } => {
                let (status, details) = match reason {
                    FinishReason::Length => (
                        ResponseStatus::Incomplete,
                        Some(StatusDetails {
                            kind: ResponseStatus::Incomplete,
                            reason: Some(StatusReason::MaxOutputTokens),
                            error: None,
                        }),
                    ),
                    FinishReason::Eos | FinishReason::Stop => (ResponseStatus::Completed, None),
                };
                self.finish_response(status, details, output_tokens);
            }
            GenerationEvent::Cancelled { output_tokens } => {
                let reason = response.reason.unwrap_or(StatusReason::ClientCancelled);
                let details = StatusDetails {
                    kind: ResponseStatus::Cancelled,
                    reason: Some(reason),
                    error: None,
                };
                self.finish_response(ResponseStatus::Cancelled, Some(details), output_tokens);
            }
            GenerationEvent::Failed(err) => {
                let err = model_error(err);
                let details = StatusDetails {
                    kind: ResponseStatus::Failed,
                    reason: None,
                    error: Some(mmrt_protocol::response::ResponseError {
                        kind: err.code.error_type(),
                        code: err.code,
                        message: Some(err.message.clone()),
                    }),
                };
                self.emit_error(err);
                self.finish_response(ResponseStatus::Failed, Some(details), 0);
            }
        }
    }

    fn finish_response(
        &mut self,
        status: ResponseStatus,
        details: Option<StatusDetails>,
        output_tokens: usize,
    ) {
        let Some(response) = self.response.take() else {
            return;
        };
        let item_status = if status == ResponseStatus::Completed {
            ItemStatus::Completed
        } else {
            ItemStatus::Incomplete
        };
        let text = response.text.clone();
        let ids = (response.id.clone(), response.item_id.clone());
        self.emit(ServerEvent::OutputTextDone(OutputTextDone {
            event_id: new_event_id(),
            response_id: ids.0.clone(),
            item_id: ids.1.clone(),
            output_index: 0,
            content_index: 0,
            text: text.clone(),
        }));
        self.emit(ServerEvent::ContentPartDone(ContentPartEvent {
            event_id: new_event_id(),
            response_id: ids.0.clone(),
            item_id: ids.1.clone(),
            output_index: 0,
            content_index: 0,
            part: ContentPart::OutputText { text: text.clone() },
        }));
        let item = Item::assistant(ids.1.clone(), item_status, Some(text));
        self.emit(ServerEvent::OutputItemDone(OutputItemEvent {
            event_id: new_event_id(),
            response_id: ids.0.clone(),
            output_index: 0,
            item: item.clone(),
        }));
        let mut done = Response::in_progress(ids.0, response.max_output_tokens);
        done.status = status;
        done.status_details = details;
        done.output = vec![item];
        done.usage = Some(Usage::new(
            response.input_tokens as u32,
            output_tokens as u32,
        ));
        done.mmrt = Some(ResponseExt {
            modality_report: response.report,
        });
        self.emit(ServerEvent::ResponseDone(ResponseEvent {
            event_id: new_event_id(),
            response: done,
        }));
        self.last_item_id = Some(ids.1);
    }
}

/// Waits for the active response's next event, or forever when there is none.
async fn next_generation_event(response: &mut Option<ActiveResponse>) -> Option<GenerationEvent> {
    match response {
        Some(r) => r.events.recv().await,
        None => std::future::pending().await,
    }
}

/// Adds the engine's account of the slots to what the session already knew.
fn merge_report(report: &mut Vec<ModalityState>, slots: &BTreeMap<Modality, SlotOutcome>) {
    for (modality, outcome) in slots {
        let modality = match modality {
            Modality::Text => InputModality::Text,
            Modality::Image => InputModality::Image,
            Modality::Audio => InputModality::Audio,
        };
        if report.iter().any(|s| s.modality == modality) {
            continue;
        }
        let (status, fill) = match outcome {
            SlotOutcome::Present => (ModalityStatus::Present, None),
            SlotOutcome::FilledByCompletion => {
                (ModalityStatus::Filled, Some(FillPolicy::Completion))
            }
            SlotOutcome::FilledByNull => (ModalityStatus::Filled, Some(FillPolicy::Null)),
            SlotOutcome::Omitted => (ModalityStatus::Missing, Some(FillPolicy::Omit)),
        };
        report.push(ModalityState {
            modality,
            status,
            fill,
            age_ms: None,
        });
    }
}

fn to_model_fill(policy: FillPolicy) -> ModelFill {
    match policy {
        FillPolicy::Completion => ModelFill::Completion,
        // A last known value too old to use falls back to the null embedding.
        FillPolicy::LastKnown | FillPolicy::Null => ModelFill::Null,
        FillPolicy::Omit => ModelFill::Omit,
    }
}

fn rand_seed() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now())
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
