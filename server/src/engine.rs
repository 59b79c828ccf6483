//! The engine: the one place where async sessions meet blocking model code.
//!
//! A dedicated OS thread owns the bundle. Sessions submit [`Job`]s through a bounded
//! channel and get results through oneshots (encoders) or a per-response event channel
//! (generation). Each turn of the loop drains the queue, runs the encoder jobs in
//! batches per model, prefills new responses together, then runs one decode step for
//! every active response in a single batch: responses join and leave between steps, and
//! a cancelled one is dropped (its KV cache freed) before the next step.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mmrt_models::{
    AudioStreamState, Bundle, DecodeRow, FillPolicy, FinishReason, IncrementalDecoder, KvCache,
    Modality, ModelError, RowInput, Sampler, SamplingParams, SlotOutcome, StopMatcher,
    TurnEmbeddings,
};
use tokio::sync::{mpsc, oneshot};

use crate::metrics::metrics;

/// Where an audio chunk's embeddings and the advanced stream state go.
pub type AudioReply = oneshot::Sender<Result<(AudioStreamState, Vec<f32>), ModelError>>;
/// Where embeddings go.
pub type EmbedReply = oneshot::Sender<Result<Vec<f32>, ModelError>>;

/// Work a session asks of the models.
pub enum Job {
    EncodeAudio {
        state: AudioStreamState,
        chunk: Vec<f32>,
        reply: AudioReply,
    },
    EncodeImage {
        pixels: Vec<f32>,
        reply: EmbedReply,
    },
    EmbedText {
        text: String,
        reply: EmbedReply,
    },
    /// Speech to text with the bundle's transcription stage: 16 kHz PCM of one
    /// utterance; pieces of the transcript go to `deltas` as they are decoded.
    Transcribe {
        pcm: Vec<f32>,
        deltas: mpsc::Sender<String>,
        reply: oneshot::Sender<Result<String, ModelError>>,
    },
    /// Text seen in an image, with the bundle's reading stage: the lines, top to
    /// bottom, joined by newlines.
    ReadText {
        image: Arc<image::RgbImage>,
        reply: oneshot::Sender<Result<String, ModelError>>,
    },
    Generate(GenerateRequest),
}

/// A response to generate from one turn.
pub struct GenerateRequest {
    pub turn: TurnEmbeddings,
    /// The last audio chunks of the turn, not yet encoded: the engine encodes them with
    /// the stream state and appends them to the turn's audio before the prefill, saving
    /// a round trip between the end of the turn and the first token.
    pub audio_tail: Option<(AudioStreamState, Vec<Vec<f32>>)>,
    pub policies: BTreeMap<Modality, FillPolicy>,
    pub sampling: SamplingParams,
    pub max_new_tokens: usize,
    /// Set by the session to stop generation; checked before every step.
    pub cancel: Arc<AtomicBool>,
    pub events: mpsc::Sender<GenerationEvent>,
}

/// What the engine reports about a response, in order.
#[derive(Debug)]
pub enum GenerationEvent {
    /// The prompt was assembled and prefilled.
    Started {
        report: BTreeMap<Modality, SlotOutcome>,
        input_tokens: usize,
        /// Model time of the turn's own work: its audio tail's encode and the prefill.
        prefill: Duration,
    },
    Delta(String),
    Finished {
        reason: FinishReason,
        output_tokens: usize,
    },
    Cancelled {
        output_tokens: usize,
    },
    Failed(ModelError),
}

/// Why a job was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("the model queue is full")]
    Overloaded,
    #[error("the engine has stopped")]
    Stopped,
}

/// A cheap handle to submit jobs.
#[derive(Clone)]
pub struct EngineHandle {
    jobs: mpsc::Sender<Job>,
    /// The cascade's stages (speech recognition, reading) run on a thread of their
    /// own, so a long transcription never holds up other sessions' decode steps.
    stages: Option<mpsc::Sender<Job>>,
    active: Arc<AtomicUsize>,
    info: Arc<BundleInfo>,
}

/// Facts about the loaded bundle that sessions need without asking the thread.
#[derive(Debug, Clone)]
pub struct BundleInfo {
    pub name: String,
    pub hidden_size: usize,
    pub audio_sample_rate: Option<u32>,
    pub max_new_tokens: usize,
    pub temperature: f32,
    pub image_preprocessor: Option<mmrt_models::ImagePreprocessor>,
    pub audio_chunker: Option<mmrt_models::AudioChunker>,
    pub audio_state: Option<AudioStreamState>,
    /// Speech becomes text through a transcription stage (audio is kept as PCM).
    pub transcribes: bool,
    /// Images become text through a reading stage.
    pub reads: bool,
    /// The decoder reads a text prompt (token ids): turns are given as text.
    pub text_prompt: bool,
    /// Earlier exchanges the prompt holds; a session keeps no more than these.
    pub max_history_turns: usize,
}

impl EngineHandle {
    pub fn info(&self) -> &BundleInfo {
        &self.info
    }

    /// Responses being generated right now.
    pub fn active_responses(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Jobs waiting in the queue now.
    pub fn queued_jobs(&self) -> usize {
        self.jobs.max_capacity() - self.jobs.capacity()
    }

    /// Queues a job without waiting; a full queue is `Overloaded`.
    pub fn submit(&self, job: Job) -> Result<(), SubmitError> {
        let queue = match (&job, &self.stages) {
            (Job::Transcribe { .. } | Job::ReadText { .. }, Some(stages)) => stages,
            _ => &self.jobs,
        };
        queue.try_send(job).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => SubmitError::Overloaded,
            mpsc::error::TrySendError::Closed(_) => SubmitError::Stopped,
        })
    }
}

/// How the engine batches and how much it holds; every field is server configuration.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Jobs waiting before new ones are refused as overloaded.
    pub queue: usize,
    /// Most tokens one response holds in its KV cache, prompt and output together.
    pub max_kv_tokens: usize,
    /// KV slots: responses decoding at once; more wait their turn in arrival order.
    pub max_active_responses: usize,
    /// Most responses in one decode pass; more are split over several passes.
    pub max_decode_batch: usize,
    /// Most responses prefilled in one pass.
    pub max_prefill_batch: usize,
    /// Most audio chunks or frames in one encoder call.
    pub encoder_max_batch: usize,
    /// How long a lone encoder job may wait for others to share its call, when nothing
    /// is decoding. Zero runs each pass with whatever has arrived.
    pub encoder_max_wait: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            queue: 4096,
            max_kv_tokens: 4096,
            max_active_responses: 256,
            max_decode_batch: 32,
            max_prefill_batch: 32,
            encoder_max_batch: 64,
            encoder_max_wait: Duration::ZERO,
        }
    }
}

/// Starts the engine thread on a loaded bundle.
pub fn start(bundle: Bundle, config: EngineConfig) -> EngineHandle {
    let info = BundleInfo {
        name: bundle.manifest.name.clone(),
        hidden_size: bundle.hidden_size(),
        audio_sample_rate: bundle
            .manifest
            .encoders
            .audio
            .as_ref()
            .map(|a| a.features.sample_rate),
        max_new_tokens: bundle.manifest.generation.max_new_tokens,
        temperature: bundle.manifest.generation.temperature,
        image_preprocessor: bundle.image_preprocessor.clone(),
        audio_chunker: bundle.audio_chunker(),
        audio_state: bundle.audio.as_ref().map(|a| a.new_state()),
        transcribes: bundle.transcriber.is_some(),
        reads: bundle.reader.is_some(),
        text_prompt: bundle.decoder.spec().input_ids.is_some(),
        max_history_turns: bundle.manifest.prompt.max_history_turns,
    };
    let mut info = info;
    if info.transcribes {
        // Speech is kept as 16 kHz PCM, paced in 100 ms pieces, and transcribed whole.
        info.audio_sample_rate = Some(mmrt_models::whisper::SAMPLE_RATE);
        info.audio_chunker = Some(mmrt_models::AudioChunker::pcm(
            mmrt_models::whisper::SAMPLE_RATE as usize / 10,
        ));
    }
    let mut bundle = bundle;
    let stages = start_stages(&mut bundle, config.queue.max(1));
    let (tx, rx) = mpsc::channel(config.queue.max(1));
    let active = Arc::new(AtomicUsize::new(0));
    let thread_active = active.clone();
    std::thread::Builder::new()
        .name("mmrt-engine".into())
        .spawn(move || Engine::new(bundle, rx, thread_active, config).run())
        .expect("spawning the engine thread");
    EngineHandle {
        jobs: tx,
        stages,
        active,
        info: Arc::new(info),
    }
}

/// A response being generated.
struct Active {
    cache: KvCache,
    sampler: Sampler,
    detok: IncrementalDecoder,
    /// Holds back text that may become one of the bundle's stop strings.
    stops: StopMatcher,
    next: RowInput,
    next_modality: Vec<Modality>,
    max_new_tokens: usize,
    cancel: Arc<AtomicBool>,
    events: mpsc::Sender<GenerationEvent>,
}

impl Active {
    /// Sends an event; a session that cannot keep up loses its response, never the
    /// engine's time.
    fn send(&self, event: GenerationEvent) -> bool {
        self.events.try_send(event).is_ok()
    }
}

/// A response whose prompt is assembled, waiting for its prefill.
struct Prepared {
    active: Active,
    report: BTreeMap<Modality, SlotOutcome>,
    input_tokens: usize,
    /// Model time spent on this turn before the prefill (its audio tail).
    encode: Duration,
}

struct Engine {
    bundle: Bundle,
    jobs: mpsc::Receiver<Job>,
    active: Vec<Active>,
    /// Responses waiting for a KV slot. At most one per session (a session runs one
    /// response at a time), so it is bounded by the session limit.
    waiting: VecDeque<GenerateRequest>,
    active_count: Arc<AtomicUsize>,
    config: EngineConfig,
}

impl Engine {
    fn new(
        bundle: Bundle,
        jobs: mpsc::Receiver<Job>,
        active_count: Arc<AtomicUsize>,
        mut config: EngineConfig,
    ) -> Engine {
        config.max_active_responses = config.max_active_responses.max(1);
        config.max_decode_batch = config.max_decode_batch.max(1);
        config.max_prefill_batch = config.max_prefill_batch.max(1);
        config.encoder_max_batch = config.encoder_max_batch.max(1);
        Engine {
            bundle,
            jobs,
            active: Vec::new(),
            waiting: VecDeque::new(),
            active_count,
            config,
        }
    }

    fn run(mut self) {
        // Only for waiting on the queue with a deadline; no async work runs here.
        let timer = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(rt) => rt,
            Err(err) => {
                tracing::error!(%err, "the engine could not start its timer");
                return;
            }
        };
        loop {
            // Wait for work only when nothing is being generated.
            let mut batch = Vec::new();
            if self.active.is_empty() && self.waiting.is_empty() {
                match self.jobs.blocking_recv() {
                    Some(job) => batch.push(job),
                    None => return,
                }
            }
            self.drain_queue(&mut batch);
            // Idle otherwise, a few encoder jobs may wait a moment for company.
            let wait = self.config.encoder_max_wait;
            if !wait.is_zero() && self.active.is_empty() {
                let deadline = tokio::time::Instant::now() + wait;
                while encoder_jobs(&batch) > 0
                    && encoder_jobs(&batch) < self.config.encoder_max_batch
                {
                    match timer.block_on(tokio::time::timeout_at(deadline, self.jobs.recv())) {
                        Ok(Some(job)) => {
                            batch.push(job);
                            self.drain_queue(&mut batch);
                        }
                        Ok(None) | Err(_) => break,
                    }
                }
            }
            self.handle_jobs(batch);
            self.step();
            // Slots freed by finished responses go to those waiting.
            self.admit();
            self.active_count
                .store(self.active.len(), Ordering::Relaxed);
            let m = metrics();
            m.responses_active.set(self.active.len() as i64);
            m.kv_cache_tokens
                .set(self.active.iter().map(|a| a.cache.len()).sum::<usize>() as i64);
            m.queue_depth
                .with_label_values(&["engine_jobs"])
                .set(self.jobs.len() as i64);
        }
    }

    /// Encodes a turn's last audio chunks in order, carrying the stream state.
    fn encode_tail(
        &mut self,
        mut state: AudioStreamState,
        chunks: Vec<Vec<f32>>,
    ) -> Result<Vec<f32>, ModelError> {
        let encoder =
            self.bundle.audio.as_mut().ok_or_else(|| {
                ModelError::InvalidInput("this bundle has no audio encoder".into())
            })?;
        let mut out = Vec::new();
        for chunk in &chunks {
            let started = Instant::now();
            let embeds = encoder.encode_chunks(&mut [(&mut state, chunk.as_slice())])?;
            metrics().model_call("audio_encoder", 1, started.elapsed().as_secs_f64());
            out.extend(embeds.into_iter().flatten());
        }
        Ok(out)
    }

    /// Moves what is queued now into `batch`, up to a bound per pass.
    fn drain_queue(&mut self, batch: &mut Vec<Job>) {
        while batch.len() < 1024 {
            match self.jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
    }

    fn handle_jobs(&mut self, jobs: Vec<Job>) {
        let mut audio = Vec::new();
        let mut images = Vec::new();
        let mut generate = Vec::new();
        for job in jobs {
            match job {
                Job::EncodeAudio {
                    state,
                    chunk,
                    reply,
                } => audio.push((state, chunk, reply)),
                Job::EncodeImage { pixels, reply } => images.push((pixels, reply)),
                Job::EmbedText { text, reply } => {
                    let started = Instant::now();
                    let _ = reply.send(self.bundle.embed_text(&text));
                    metrics().model_call("text_encoder", 1, started.elapsed().as_secs_f64());
                }
                // Routed to the stage thread by the handle; answered here only if a
                // bundle without stages is asked.
                Job::Transcribe { reply, .. } | Job::ReadText { reply, .. } => {
                    let _ = reply.send(Err(ModelError::InvalidInput(
                        "this bundle has no such stage".into(),
                    )));
                }
                Job::Generate(request) => generate.push(request),
            }
        }
        let max = self.config.encoder_max_batch;
        while !audio.is_empty() {
            let rest = audio.split_off(audio.len().min(max));
            self.encode_audio(std::mem::replace(&mut audio, rest));
        }
        while !images.is_empty() {
            let rest = images.split_off(images.len().min(max));
            self.encode_images(std::mem::replace(&mut images, rest));
        }
        self.waiting.extend(generate);
        self.admit();
    }

    fn encode_audio(&mut self, mut jobs: Vec<(AudioStreamState, Vec<f32>, AudioReply)>) {
        let Some(encoder) = self.bundle.audio.as_mut() else {
            for (_, _, reply) in jobs {
                let _ = reply.send(Err(ModelError::InvalidInput(
                    "this bundle has no audio encoder".into(),
                )));
            }
            return;
        };
        let started = Instant::now();
        let result = {
            let mut items: Vec<(&mut AudioStreamState, &[f32])> = jobs
                .iter_mut()
                .map(|(state, chunk, _)| (state, chunk.as_slice()))
                .collect();
            encoder.encode_chunks(&mut items)
        };
        metrics().model_call("audio_encoder", jobs.len(), started.elapsed().as_secs_f64());
        match result {
            Ok(embeds) => {
                for ((state, _, reply), embeds) in jobs.into_iter().zip(embeds) {
                    let _ = reply.send(Ok((state, embeds)));
                }
            }
            Err(err) => {
                let message = err.to_string();
                for (_, _, reply) in jobs {
                    let _ = reply.send(Err(ModelError::Inference {
                        model: "audio encoder".into(),
                        message: message.clone(),
                    }));
                }
            }
        }
    }

    fn encode_images(&mut self, jobs: Vec<(Vec<f32>, EmbedReply)>) {
        let Some(encoder) = self.bundle.image.as_mut() else {
            for (_, reply) in jobs {
                let _ = reply.send(Err(ModelError::InvalidInput(
                    "this bundle has no image encoder".into(),
                )));
            }
            return;
        };
        let pixels: Vec<&[f32]> = jobs.iter().map(|(p, _)| p.as_slice()).collect();
        let started = Instant::now();
        let result = encoder.encode(&pixels);
        metrics().model_call("image_encoder", jobs.len(), started.elapsed().as_secs_f64());
        match result {
            Ok(embeds) => {
                for ((_, reply), embeds) in jobs.into_iter().zip(embeds) {
                    let _ = reply.send(Ok(embeds));
                }
            }
            Err(err) => {
                let message = err.to_string();
                for (_, reply) in jobs {
                    let _ = reply.send(Err(ModelError::Inference {
                        model: "image encoder".into(),
                        message: message.clone(),
                    }));
                }
            }
        }
    }

    /// Assembles the prompt and prefills it; the response then joins the decode batch.
    /// Turns a request into a response ready for its prefill: the prompt assembled and
    /// checked against the KV budget. Requests that end here are answered at once.
    fn prepare(&mut self, mut request: GenerateRequest) -> Option<Prepared> {
        if request.cancel.load(Ordering::Relaxed) {
            let _ = request
                .events
                .try_send(GenerationEvent::Cancelled { output_tokens: 0 });
            return None;
        }
        let started = Instant::now();
        if let Some((state, chunks)) = request.audio_tail.take() {
            match self.encode_tail(state, chunks) {
                Ok(embeds) => request
                    .turn
                    .by_modality
                    .entry(Modality::Audio)
                    .or_default()
                    .extend(embeds),
                Err(err) => {
                    let _ = request.events.try_send(GenerationEvent::Failed(err));
                    return None;
                }
            }
        }
        let encode = started.elapsed();
        let policies = request.policies.clone();
        let assembled = self.bundle.assemble_prefix(&request.turn, &|m| {
            policies.get(&m).copied().unwrap_or_default()
        });
        let (prefix, report) = match assembled {
            Ok(p) => p,
            Err(err) => {
                let _ = request.events.try_send(GenerationEvent::Failed(err));
                return None;
            }
        };
        // The prompt and the output share the response's KV budget, which is also
        // bounded by the decoder's context: a long answer ends as `incomplete` rather
        // than failing at the context's edge.
        let budget = self
            .config
            .max_kv_tokens
            .min(self.bundle.decoder.spec().max_positions);
        let input_tokens = prefix.modality.len();
        if input_tokens >= budget {
            let _ = request
                .events
                .try_send(GenerationEvent::Failed(ModelError::ContextFull {
                    needed: input_tokens + 1,
                    limit: budget,
                }));
            return None;
        }
        let max_new_tokens = request.max_new_tokens.clamp(1, budget - input_tokens);
        let active = Active {
            cache: KvCache::default(),
            sampler: Sampler::new(request.sampling),
            detok: IncrementalDecoder::new(),
            stops: StopMatcher::new(&self.bundle.manifest.generation.stop),
            next_modality: prefix.modality.clone(),
            next: prefix.into_input(),
            max_new_tokens,
            cancel: request.cancel,
            events: request.events,
        };
        Some(Prepared {
            active,
            report,
            input_tokens,
            encode,
        })
    }

    /// Admits waiting responses into free KV slots and prefills them together. The
    /// prefill is a pass of its own so that decode steps are not padded to prompt length.
    fn admit(&mut self) {
        let mut prepared = Vec::new();
        while self.active.len() + prepared.len() < self.config.max_active_responses
            && prepared.len() < self.config.max_prefill_batch
        {
            let Some(request) = self.waiting.pop_front() else {
                break;
            };
            prepared.extend(self.prepare(request));
        }
        if prepared.is_empty() {
            return;
        }
        let started = Instant::now();
        let result = {
            let mut rows: Vec<DecodeRow<'_>> = prepared
                .iter_mut()
                .map(|p| DecodeRow {
                    cache: &mut p.active.cache,
                    input: std::mem::replace(&mut p.active.next, RowInput::Ids(Vec::new())),
                    modality: std::mem::take(&mut p.active.next_modality),
                })
                .collect();
            self.bundle.decoder.forward(&mut rows)
        };
        let elapsed = started.elapsed();
        metrics().model_call("decoder_prefill", prepared.len(), elapsed.as_secs_f64());
        match result {
            Ok(logits) => {
                for (mut p, logits) in prepared.into_iter().zip(logits) {
                    p.active.send(GenerationEvent::Started {
                        report: p.report,
                        input_tokens: p.input_tokens,
                        prefill: p.encode + elapsed,
                    });
                    if self.advance(&mut p.active, &logits) {
                        self.active.push(p.active);
                    }
                }
            }
            Err(err) => {
                tracing::error!(?err, "prefill failed");
                let message = err.to_string();
                for p in prepared {
                    p.active
                        .send(GenerationEvent::Failed(ModelError::Inference {
                            model: "decoder".into(),
                            message: message.clone(),
                        }));
                }
            }
        }
    }

    /// Samples the next token from `logits`, streams its text, and prepares the next
    /// step's input. Returns whether the response goes on.
    fn advance(&mut self, active: &mut Active, logits: &[f32]) -> bool {
        let id = active.sampler.sample(logits);
        metrics().tokens_generated.inc();
        let produced = active.detok.ids().len();
        if id == self.bundle.tokenizer.eos {
            return self.finish(active, FinishReason::Eos, produced);
        }
        match active.detok.push(&self.bundle.tokenizer, id) {
            Ok(delta) => {
                let shown = active.stops.push(&delta);
                if !shown.is_empty() && !active.send(GenerationEvent::Delta(shown)) {
                    return false;
                }
            }
            Err(err) => {
                active.send(GenerationEvent::Failed(err));
                return false;
            }
        }
        let produced = active.detok.ids().len();
        if active.stops.stopped() {
            return self.finish(active, FinishReason::Stop, produced);
        }
        if produced >= active.max_new_tokens {
            return self.finish(active, FinishReason::Length, produced);
        }
        active.next = RowInput::Ids(vec![id]);
        active.next_modality = vec![Modality::Text];
        true
    }

    fn finish(&mut self, active: &mut Active, reason: FinishReason, produced: usize) -> bool {
        let mut rest = match active.detok.finish(&self.bundle.tokenizer) {
            Ok(rest) => active.stops.push(&rest),
            Err(_) => String::new(),
        };
        if !active.stops.stopped() {
            rest.push_str(&active.stops.finish());
        }
        if !rest.is_empty() {
            active.send(GenerationEvent::Delta(rest));
        }
        active.send(GenerationEvent::Finished {
            reason,
            output_tokens: produced,
        });
        false
    }

    /// One decode step for every active response.
    fn step(&mut self) {
        // Cancelled responses leave first, freeing their caches.
        let mut kept = Vec::with_capacity(self.active.len());
        for active in self.active.drain(..) {
            if active.cancel.load(Ordering::Relaxed) || active.events.is_closed() {
                active.send(GenerationEvent::Cancelled {
                    output_tokens: active.detok.ids().len(),
                });
            } else {
                kept.push(active);
            }
        }
        self.active = kept;
        if self.active.is_empty() {
            return;
        }

        // Embed the tokens sampled last step, all in one call.
        let ids: Vec<[u32; 1]> = self
            .active
            .iter()
            .map(|a| match &a.next {
                RowInput::Ids(ids) => [ids.first().copied().unwrap_or(0)],
                RowInput::Embeds(_) => [0],
            })
            .collect();
        if self.bundle.decoder.spec().inputs_embeds.is_some() {
            let refs: Vec<&[u32]> = ids.iter().map(|r| r.as_slice()).collect();
            let embedded = match self.bundle.text.as_mut() {
                Some(encoder) => encoder.embed(&refs),
                None => Err(ModelError::InvalidInput("no text encoder".into())),
            };
            match embedded {
                Ok(embeds) => {
                    for (active, e) in self.active.iter_mut().zip(embeds) {
                        active.next = RowInput::Embeds(e);
                    }
                }
                Err(err) => return self.fail_all(err),
            }
        }

        // Large batches are split: past a point a step's time grows faster than its
        // rows (docs/performance.md), so several moderate passes decode more per second.
        let mut result = Ok(Vec::with_capacity(self.active.len()));
        for group in self.active.chunks_mut(self.config.max_decode_batch) {
            let started = Instant::now();
            let mut rows: Vec<DecodeRow<'_>> = group
                .iter_mut()
                .map(|a| DecodeRow {
                    cache: &mut a.cache,
                    input: std::mem::replace(&mut a.next, RowInput::Ids(Vec::new())),
                    modality: std::mem::take(&mut a.next_modality),
                })
                .collect();
            let outcome = self.bundle.decoder.forward(&mut rows);
            metrics().model_call("decoder_step", rows.len(), started.elapsed().as_secs_f64());
            match (outcome, result.as_mut()) {
                (Ok(logits), Ok(all)) => all.extend(logits),
                (Err(err), _) => {
                    result = Err(err);
                    break;
                }
                (Ok(_), Err(_)) => {}
            }
        }
        let logits = match result {
            Ok(l) => l,
            Err(err) => return self.fail_all(err),
        };
        let mut active = std::mem::take(&mut self.active);
        let mut kept = Vec::with_capacity(active.len());
        for (mut a, logits) in active.drain(..).zip(logits) {
            if self.advance(&mut a, &logits) {
                kept.push(a);
            }
        }
        self.active = kept;
    }

    fn fail_all(&mut self, err: ModelError) {
        tracing::error!(?err, "decode step failed");
        let message = err.to_string();
        for active in self.active.drain(..) {
            active.send(GenerationEvent::Failed(ModelError::Inference {
                model: "decoder".into(),
                message: message.clone(),
            }));
        }
    }
}

/// Encoder jobs in a batch of jobs.
fn encoder_jobs(batch: &[Job]) -> usize {
    batch
        .iter()
        .filter(|job| matches!(job, Job::EncodeAudio { .. } | Job::EncodeImage { .. }))
        .count()
}

/// Moves the bundle's stages onto their own thread; returns its queue, if any.
fn start_stages(bundle: &mut Bundle, queue: usize) -> Option<mpsc::Sender<Job>> {
    let transcriber = bundle.transcriber.take();
    let reader = bundle.reader.take();
    if transcriber.is_none() && reader.is_none() {
        return None;
    }
    let min_confidence = bundle
        .manifest
        .stages
        .read
        .as_ref()
        .map_or(0.0, |r| r.min_confidence);
    let (tx, mut rx) = mpsc::channel::<Job>(queue);
    let mut stages = Stages {
        transcriber,
        reader,
        min_confidence,
    };
    std::thread::Builder::new()
        .name("mmrt-stages".into())
        .spawn(move || {
            while let Some(job) = rx.blocking_recv() {
                match job {
                    Job::Transcribe { pcm, deltas, reply } => {
                        let _ = reply.send(stages.transcribe(&pcm, &deltas));
                    }
                    Job::ReadText { image, reply } => {
                        let _ = reply.send(stages.read_text(&image));
                    }
                    // The handle sends nothing else here.
                    _ => {}
                }
            }
        })
        .expect("spawning the stage thread");
    Some(tx)
}

/// The models that turn speech and images into text for a cascade.
struct Stages {
    transcriber: Option<mmrt_models::Transcriber>,
    reader: Option<mmrt_models::OcrReader>,
    min_confidence: f32,
}

impl Stages {
    fn transcribe(
        &mut self,
        pcm: &[f32],
        deltas: &mpsc::Sender<String>,
    ) -> Result<String, ModelError> {
        let transcriber = self.transcriber.as_mut().ok_or_else(|| {
            ModelError::InvalidInput("this bundle has no transcription stage".into())
        })?;
        let started = Instant::now();
        let transcript = transcriber.transcribe_streaming(pcm, |piece| {
            // A session that cannot keep up misses a delta, never the transcript.
            let _ = deltas.try_send(piece.to_string());
        });
        metrics().model_call("transcriber", 1, started.elapsed().as_secs_f64());
        Ok(transcript?.text)
    }

    fn read_text(&mut self, image: &image::RgbImage) -> Result<String, ModelError> {
        let reader = self
            .reader
            .as_mut()
            .ok_or_else(|| ModelError::InvalidInput("this bundle has no reading stage".into()))?;
        let started = Instant::now();
        let lines = reader.read(image);
        metrics().model_call("reader", 1, started.elapsed().as_secs_f64());
        Ok(lines?
            .into_iter()
            .filter(|line| line.confidence >= self.min_confidence)
            .map(|line| line.text)
            .collect::<Vec<_>>()
            .join("\n"))
    }
}
