//! Audio and video ingest for one session: decoding (PCM16, Opus), resampling to the
//! model's rate, turn detection, chunking for the streaming encoder, and sampling video
//! frames to the session's frame rate.

use std::collections::VecDeque;

use mmrt_models::{pcm16_to_f32, AudioChunker, StreamResampler, VadStream};
use mmrt_protocol::session::VadModel;
use mmrt_protocol::{ErrorCode, ProtocolError};

use crate::vad::{EnergyVad, ScoreRequest, ScoredVad, VadConfig, VadEvent};

/// What one piece of input audio did.
#[derive(Debug, Default)]
pub struct AudioOutcome {
    /// Encoder chunks completed, in order.
    pub chunks: Vec<Vec<f32>>,
    /// Turn-detection transitions, each with the chunks completed before it.
    pub events: Vec<(VadEvent, Vec<Vec<f32>>)>,
    /// With the Silero detector: windows for the VAD model, and then `chunks` and
    /// `events` are empty. The audio waits in the ingest until the verdict comes back
    /// through [`AudioIngest::judged`] (or [`AudioIngest::scoring_failed`]), whose
    /// outcome carries it on; nothing else may be pushed meanwhile.
    pub score: Option<ScoreRequest>,
}

/// The turn detector of a session's input.
#[derive(Debug)]
enum Detector {
    Energy(EnergyVad),
    /// Boxed: it carries the model's recurrent state and a resampler.
    Scored(Box<ScoredVad>),
}

impl Detector {
    fn new(model: VadModel, config: VadConfig, model_rate: u32) -> Detector {
        match model {
            VadModel::Energy => Detector::Energy(EnergyVad::new(config, model_rate)),
            VadModel::Silero => Detector::Scored(Box::new(
                ScoredVad::new(config, model_rate)
                    .expect("the model rate is positive: the input resampler took it"),
            )),
        }
    }

    fn set_config(&mut self, config: VadConfig) {
        match self {
            Detector::Energy(vad) => vad.set_config(config),
            Detector::Scored(vad) => vad.set_config(config),
        }
    }

    fn is_speaking(&self) -> bool {
        match self {
            Detector::Energy(vad) => vad.is_speaking(),
            Detector::Scored(vad) => vad.is_speaking(),
        }
    }

    fn now_ms(&self) -> u64 {
        match self {
            Detector::Energy(vad) => vad.now_ms(),
            Detector::Scored(vad) => vad.now_ms(),
        }
    }

    fn reset_turn(&mut self) {
        match self {
            Detector::Energy(vad) => vad.reset_turn(),
            Detector::Scored(vad) => vad.reset_turn(),
        }
    }
}

/// The audio path of a session, from client bytes to encoder chunks.
pub struct AudioIngest {
    input_rate: u32,
    model_rate: u32,
    resampler: StreamResampler,
    opus: Option<opus::Decoder>,
    chunker: AudioChunker,
    /// Which detector turn detection builds.
    vad_model: VadModel,
    vad: Option<Detector>,
    /// Recent audio kept while nobody speaks, so a turn starts with its lead-in.
    preroll: VecDeque<f32>,
    preroll_len: usize,
    /// Whether audio currently flows into the chunker (always, for manual turns).
    capturing: bool,
    /// Samples (model rate) in the uncommitted buffer.
    buffered: usize,
    /// Chunks completed outside a push (audio that waited for a verdict when turn
    /// detection was switched off); they go out first with the next outcome or commit.
    ready: Vec<Vec<f32>>,
}

impl AudioIngest {
    /// An ingest whose turn detection, if any, is the energy detector.
    pub fn new(
        input_rate: u32,
        model_rate: u32,
        chunker: AudioChunker,
        vad: Option<(VadConfig, u32)>,
    ) -> Result<AudioIngest, ProtocolError> {
        AudioIngest::with_vad_model(input_rate, model_rate, chunker, vad, VadModel::Energy)
    }

    /// An ingest whose turn detection, when on, runs `vad_model`.
    pub fn with_vad_model(
        input_rate: u32,
        model_rate: u32,
        chunker: AudioChunker,
        vad: Option<(VadConfig, u32)>,
        vad_model: VadModel,
    ) -> Result<AudioIngest, ProtocolError> {
        let resampler = StreamResampler::new(input_rate, model_rate)
            .map_err(|e| ProtocolError::new(ErrorCode::InvalidField, e.to_string()))?;
        let mut ingest = AudioIngest {
            input_rate,
            model_rate,
            resampler,
            opus: None,
            chunker,
            vad_model,
            vad: None,
            preroll: VecDeque::new(),
            preroll_len: 0,
            capturing: true,
            buffered: 0,
            ready: Vec::new(),
        };
        ingest.set_vad(vad);
        Ok(ingest)
    }

    /// Switches turn detection on (with its prefix padding in ms) or off.
    pub fn set_vad(&mut self, vad: Option<(VadConfig, u32)>) {
        match vad {
            Some((config, prefix_ms)) => {
                match self.vad.as_mut() {
                    Some(existing) => existing.set_config(config),
                    None => self.vad = Some(Detector::new(self.vad_model, config, self.model_rate)),
                }
                self.preroll_len = (self.model_rate as u64 * prefix_ms as u64 / 1000) as usize;
                if !self.vad.as_ref().is_some_and(Detector::is_speaking) && self.buffered == 0 {
                    self.capturing = false;
                }
            }
            None => {
                // Audio still waiting for the model's verdict joins the turn being
                // captured; outside a turn it was lead-in, dropped like the preroll.
                if let Some(Detector::Scored(mut scored)) = self.vad.take() {
                    let rest = scored.take_unjudged();
                    if self.capturing && !rest.is_empty() {
                        self.buffered += rest.len();
                        let chunks = self.chunker.push(&rest);
                        self.ready.extend(chunks);
                    }
                }
                self.capturing = true;
            }
        }
    }

    pub fn input_rate(&self) -> u32 {
        self.input_rate
    }

    /// Milliseconds of audio in the uncommitted buffer.
    pub fn buffered_ms(&self) -> u64 {
        self.buffered as u64 * 1000 / self.model_rate as u64
    }

    /// Milliseconds of audio received on the session's clock.
    pub fn clock_ms(&self) -> u64 {
        self.vad.as_ref().map(Detector::now_ms).unwrap_or(0)
    }
    /// Decodes one Opus packet to PCM16 bytes at the session's rate.
    pub fn decode_opus(&mut self, packet: &[u8]) -> Result<Vec<u8>, ProtocolError> {
        if self.opus.is_none() {
            let decoder =
                opus::Decoder::new(self.input_rate, opus::Channels::Mono).map_err(|e| {
                    ProtocolError::new(
                        ErrorCode::InvalidAudio,
                        format!("Opus needs a rate of 8, 12, 16, 24 or 48 kHz: {e}"),
                    )
                })?;
            self.opus = Some(decoder);
        }
        let decoder = self.opus.as_mut().expect("set above");
        // 120 ms is the longest Opus packet.
        let mut pcm = vec![0i16; self.input_rate as usize * 120 / 1000];
        let samples = decoder.decode(packet, &mut pcm, false).map_err(|e| {
            ProtocolError::new(ErrorCode::InvalidAudio, format!("corrupt Opus packet: {e}"))
        })?;
        Ok(pcm[..samples]
            .iter()
            .flat_map(|s| s.to_le_bytes())
            .collect())
    }

    /// Takes PCM16 at the session's rate; returns what it completed.
    pub fn push_pcm16(
        &mut self,
        bytes: &[u8],
        max_buffer_ms: u64,
    ) -> Result<AudioOutcome, ProtocolError> {
        let samples = pcm16_to_f32(bytes)
            .map_err(|e| ProtocolError::new(ErrorCode::InvalidAudio, e.to_string()))?;
        let incoming_ms = samples.len() as u64 * 1000 / self.input_rate as u64;
        if self.capturing && self.buffered_ms() + incoming_ms > max_buffer_ms {
            return Err(ProtocolError::new(
                ErrorCode::SessionLimit,
                format!(
                    "the input audio buffer holds at most {max_buffer_ms} ms; commit or clear it"
                ),
            ));
        }
        let resampled = self.resampler.push(&samples);
        Ok(self.route(&resampled))
    }

    fn route(&mut self, samples: &[f32]) -> AudioOutcome {
        let mut outcome = AudioOutcome::default();
        let mut pending = std::mem::take(&mut self.ready);
        // Out while routing, so that placing audio may borrow the rest of `self`.
        let Some(mut detector) = self.vad.take() else {
            self.buffered += samples.len();
            pending.extend(self.chunker.push(samples));
            outcome.chunks = pending;
            return outcome;
        };
        match &mut detector {
            Detector::Energy(vad) => {
                // Judge and route 20 ms at a time so that a turn boundary cuts at the
                // right sample.
                let step = (self.model_rate / 50) as usize;
                for piece in samples.chunks(step) {
                    let events = vad.push(piece);
                    self.place(piece, events, &mut pending, &mut outcome);
                }
            }
            // The model judges later; the audio waits in the detector until then, and
            // chunks ready before it wait with it, to keep their order.
            Detector::Scored(vad) => {
                outcome.score = vad.push(samples);
                if outcome.score.is_some() {
                    self.ready = std::mem::take(&mut pending);
                }
            }
        }
        self.vad = Some(detector);
        outcome.chunks = pending;
        outcome
    }

    /// Takes the VAD model's verdict on an [`AudioOutcome::score`] request: its state
    /// for this session and one speech probability per window. Routes the judged audio.
    pub fn judged(&mut self, stream: VadStream, probabilities: &[f32]) -> AudioOutcome {
        let mut outcome = AudioOutcome::default();
        let mut pending = std::mem::take(&mut self.ready);
        let pieces = match self.vad.as_mut() {
            Some(Detector::Scored(vad)) => vad.judged(stream, probabilities),
            // Turn detection changed while the model worked: nothing waits for this.
            _ => Vec::new(),
        };
        for (piece, event) in pieces {
            self.place(
                &piece,
                event.into_iter().collect(),
                &mut pending,
                &mut outcome,
            );
        }
        outcome.chunks = pending;
        outcome
    }

    /// After a score request failed: the audio that waited for it is dropped and the
    /// model's state for this session starts afresh.
    pub fn scoring_failed(&mut self) {
        if let Some(Detector::Scored(vad)) = self.vad.as_mut() {
            vad.restart();
        }
    }

    /// Sends judged audio to the turn being captured or to the preroll, applying the
    /// transitions its judgement caused.
    fn place(
        &mut self,
        piece: &[f32],
        events: Vec<VadEvent>,
        pending: &mut Vec<Vec<f32>>,
        outcome: &mut AudioOutcome,
    ) {
        for event in &events {
            if let VadEvent::SpeechStarted { .. } = event {
                if !self.capturing {
                    self.capturing = true;
                    let lead: Vec<f32> = self.preroll.drain(..).collect();
                    self.buffered += lead.len();
                    pending.extend(self.chunker.push(&lead));
                }
            }
        }
        if self.capturing {
            self.buffered += piece.len();
            pending.extend(self.chunker.push(piece));
        } else {
            self.preroll.extend(piece);
            while self.preroll.len() > self.preroll_len {
                self.preroll.pop_front();
            }
        }
        for event in events {
            outcome.events.push((event, std::mem::take(pending)));
        }
    }

    /// Ends the buffered turn: the last chunks (padded with silence), or `None` when
    /// the buffer is empty. Turn detection then waits for the next speech.
    pub fn commit(&mut self) -> Option<Vec<Vec<f32>>> {
        if self.buffered == 0 {
            return None;
        }
        let mut chunks = std::mem::take(&mut self.ready);
        chunks.extend(self.chunker.finish());
        self.buffered = 0;
        if let Some(vad) = self.vad.as_mut() {
            vad.reset_turn();
            self.capturing = false;
        }
        Some(chunks)
    }

    /// Drops the uncommitted buffer.
    pub fn clear(&mut self) {
        self.chunker.reset();
        self.ready.clear();
        self.buffered = 0;
        self.preroll.clear();
        if let Some(vad) = self.vad.as_mut() {
            vad.reset_turn();
            self.capturing = false;
        }
    }
}

/// Keeps video frames at the session's sample rate and checks their timestamps.
#[derive(Debug, Default)]
pub struct FrameSampler {
    last_seen_ms: Option<u64>,
    last_kept_ms: Option<u64>,
    pub dropped: u64,
}

impl FrameSampler {
    /// Whether to keep a frame stamped `timestamp_ms`; a timestamp that goes backwards
    /// is an error.
    pub fn admit(&mut self, timestamp_ms: u64, fps: f32) -> Result<bool, ProtocolError> {
        if let Some(last) = self.last_seen_ms {
            if timestamp_ms < last {
                return Err(ProtocolError::new(
                    ErrorCode::OutOfOrderTimestamp,
                    format!("frame timestamp {timestamp_ms} ms is before the previous {last} ms"),
                ));
            }
        }
        self.last_seen_ms = Some(timestamp_ms);
        let interval = (1000.0 / fps.max(0.001)) as u64;
        let keep = match self.last_kept_ms {
            None => true,
            // A little slack, so frames at exactly the target rate are all kept.
            Some(kept) => timestamp_ms + interval / 10 >= kept + interval,
        };
        if keep {
            self.last_kept_ms = Some(timestamp_ms);
        } else {
            self.dropped += 1;
        }
        Ok(keep)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silero_turns_keep_their_lead_in_and_lose_no_audio() {
        let config = VadConfig {
            threshold: 0.5,
            silence_duration_ms: 300,
        };
        // 96 ms of prefix padding: three windows.
        let mut ingest = AudioIngest::with_vad_model(
            16_000,
            16_000,
            AudioChunker::pcm(512),
            Some((config, 96)),
            VadModel::Silero,
        )
        .expect("ingest");
        // Every sample distinct, so order and losses show.
        let audio: Vec<i16> = (0..48_000).map(|i| (i % 30_000) as i16).collect();
        let bytes: Vec<u8> = audio.iter().flat_map(|s| s.to_le_bytes()).collect();
        let expected = pcm16_to_f32(&bytes).expect("pcm");
        let (mut window, mut captured, mut events) = (0u64, Vec::new(), Vec::new());
        for piece in bytes.chunks(640) {
            let mut outcome = ingest.push_pcm16(piece, 60_000).expect("push");
            if let Some(request) = outcome.score.take() {
                assert!(outcome.chunks.is_empty() && outcome.events.is_empty());
                let windows = (request.samples.len() / 512) as u64;
                let scores: Vec<f32> = (window..window + windows)
                    .map(|w| if (20..50).contains(&w) { 0.9 } else { 0.0 })
                    .collect();
                window += windows;
                outcome = ingest.judged(request.stream, &scores);
            }
            for (event, chunks) in outcome.events {
                captured.extend(chunks.into_iter().flatten());
                events.push(event);
                if let VadEvent::SpeechStopped { .. } = event {
                    captured.extend(ingest.commit().expect("a turn").into_iter().flatten());
                }
            }
            if events.len() < 2 {
                captured.extend(outcome.chunks.into_iter().flatten());
            }
        }
        assert_eq!(
            events,
            vec![
                VadEvent::SpeechStarted { start_ms: 640 },
                VadEvent::SpeechStopped { end_ms: 1920 },
            ]
        );
        // The turn: the prefix padding before the window that started speech (the
        // first loud window is part of it, as with the energy detector), the speech
        // and the silence that ended it; then the chunker's padding.
        let (from, to) = (18 * 512, 60 * 512);
        assert_eq!(captured[..to - from], expected[from..to]);
        assert!(captured[to - from..].iter().all(|s| *s == 0.0));
    }

    #[test]
    fn frames_are_sampled_to_the_rate() {
        let mut sampler = FrameSampler::default();
        let kept: Vec<bool> = (0..10)
            .map(|i| sampler.admit(i * 100, 2.0).expect("in order"))
            .collect();
        assert_eq!(kept.iter().filter(|k| **k).count(), 2);
        assert!(sampler.admit(50, 2.0).is_err());
    }
}
