//! Speech recognition with Whisper tiny.en for the assistant bundle: Whisper's log-mel
//! front end, and greedy decoding of the two graphs that
//! `models/assistant/whisper.py` writes.
//!
//! Graphs (all tensors f32 unless marked):
//! - `whisper_encoder.onnx`: `mel` `[B, 80, F]` (F even, at most 3000) →
//!   `cross.{i}.key`, `cross.{i}.value` `[B, 6, F/2, 64]` for the 4 decoder layers.
//! - `whisper_decoder.onnx`: `input_ids` i64 `[B, S]`, `past_key_values.{i}.key|value`
//!   `[B, 6, P, 64]` (P may be 0), `cross.{i}.key|value` → `logits` `[B, S, 51864]`,
//!   `present.{i}.key|value` `[B, 6, P + S, 64]`.
//!
//! The encoder runs once per utterance and its cross-attention keys and values stay in
//! ONNX Runtime's memory for every decode step; each step's `present` tensors become the
//! next step's `past` without a copy.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ort::session::SessionInputValue;
use ort::value::DynValue;
use realfft::{RealFftPlanner, RealToComplex};

use crate::encoders::{f32_input, i64_input};
use crate::error::ModelError;
use crate::manifest::{DType, Dim, SpecialTokens};
use crate::runtime::RuntimeConfig;
use crate::session::Graph;
use crate::text::{IncrementalDecoder, TextTokenizer};

/// The only sample rate the front end takes.
pub const SAMPLE_RATE: u32 = 16_000;
/// Frames in Whisper's own 30 s window, the longest the encoder takes.
pub const MAX_FRAMES: usize = 3000;
pub const N_MELS: usize = 80;
const N_FFT: usize = 400;
const HOP: usize = 160;

pub const ENCODER_FILE: &str = "whisper_encoder.onnx";
pub const DECODER_FILE: &str = "whisper_decoder.onnx";
pub const TOKENIZER_FILE: &str = "whisper_tokenizer.json";

const LAYERS: usize = 4;
const HEADS: usize = 6;
const HEAD_DIM: usize = 64;
const VOCAB: usize = 51864;
/// Decoder positions, prompt included.
const MAX_POSITIONS: usize = 448;

const START_OF_TRANSCRIPT: u32 = 50257;
const NO_TIMESTAMPS: u32 = 50362;
const END_OF_TEXT: u32 = 50256;
/// Ids from here on are special tokens (language, task, timestamps) never emitted.
const FIRST_SPECIAL: usize = 50257;
const PROMPT: [u32; 2] = [START_OF_TRANSCRIPT, NO_TIMESTAMPS];
/// The most tokens one transcript can have: the positions after the prompt.
pub const MAX_TOKENS_LIMIT: usize = MAX_POSITIONS - PROMPT.len();

fn hz_to_mel(hz: f64) -> f64 {
    // Slaney: linear to 1 kHz at 200/3 Hz per mel, logarithmic above.
    if hz >= 1000.0 {
        15.0 + (hz / 1000.0).ln() / (6.4f64.ln() / 27.0)
    } else {
        hz / (200.0 / 3.0)
    }
}

fn mel_to_hz(mel: f64) -> f64 {
    if mel >= 15.0 {
        1000.0 * ((6.4f64.ln() / 27.0) * (mel - 15.0)).exp()
    } else {
        mel * (200.0 / 3.0)
    }
}

/// Whisper's log-mel front end, exactly as `models/assistant/whisper.py` documents it:
/// the PCM fitted to the window (cut or zero-padded), reflect padding of 200 samples,
/// centred 400-sample frames every 160 samples with a periodic Hann window, power
/// spectrum, 80 Slaney mel bands with area norm, `log10(max(x, 1e-10))`, clamped to
/// the window's maximum minus 8, then `(x + 4) / 4`. Computed in f64.
#[derive(Clone)]
pub struct WhisperFeatures {
    window: Arc<Vec<f64>>,
    /// Per band: the first FFT bin with a nonzero weight, and the weights from there.
    filters: Arc<Vec<(usize, Vec<f64>)>>,
    fft: Arc<dyn RealToComplex<f64>>,
}

impl std::fmt::Debug for WhisperFeatures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WhisperFeatures").finish_non_exhaustive()
    }
}

impl Default for WhisperFeatures {
    fn default() -> Self {
        Self::new()
    }
}

impl WhisperFeatures {
    pub fn new() -> WhisperFeatures {
        let window = (0..N_FFT)
            .map(|n| 0.5 - 0.5 * (2.0 * std::f64::consts::PI * n as f64 / N_FFT as f64).cos())
            .collect();
        let top = hz_to_mel(8000.0);
        let edges: Vec<f64> = (0..N_MELS + 2)
            .map(|i| mel_to_hz(top * i as f64 / (N_MELS + 1) as f64))
            .collect();
        let filters = (0..N_MELS)
            .map(|m| {
                let (left, centre, right) = (edges[m], edges[m + 1], edges[m + 2]);
                let weights: Vec<(usize, f64)> = (0..N_FFT / 2 + 1)
                    .map(|bin| {
                        let f = bin as f64 * SAMPLE_RATE as f64 / N_FFT as f64;
                        let rise = (f - left) / (centre - left);
                        let fall = (right - f) / (right - centre);
                        (bin, rise.min(fall).max(0.0) * 2.0 / (right - left))
                    })
                    .filter(|(_, w)| *w > 0.0)
                    .collect();
                let first = weights.first().map_or(0, |(bin, _)| *bin);
                (first, weights.into_iter().map(|(_, w)| w).collect())
            })
            .collect();
        WhisperFeatures {
            window: Arc::new(window),
            filters: Arc::new(filters),
            fft: RealFftPlanner::<f64>::new().plan_fft_forward(N_FFT),
        }
    }

    /// The trimmed window for `samples` of audio: every frame that holds audio plus
    /// `padding_frames` of silence, rounded up to even, at most [`MAX_FRAMES`].
    pub fn trimmed_frames(samples: usize, padding_frames: usize) -> usize {
        let frames = samples.div_ceil(HOP) + padding_frames;
        (frames + frames % 2).clamp(2, MAX_FRAMES)
    }

    /// Features of `pcm` (16 kHz, in [-1, 1]) in a window of `frames` frames, band-major
    /// `[80, frames]` as the encoder takes them.
    pub fn compute(&self, pcm: &[f32], frames: usize) -> Result<Vec<f32>, ModelError> {
        if frames < 2 || !frames.is_multiple_of(2) || frames > MAX_FRAMES {
            return Err(ModelError::InvalidInput(format!(
                "a Whisper window is an even number of frames from 2 to {MAX_FRAMES}, not {frames}"
            )));
        }

        // The PCM fitted to the window, with reflect padding on both sides.
        let n = frames * HOP;
        let pad = N_FFT / 2;
        let fitted = |i: usize| pcm.get(i).map_or(0.0, |s| *s as f64);
        let padded: Vec<f64> = (0..n + 2 * pad)
            .map(|j| {
                let i = j as isize - pad as isize;
                let i = if i < 0 {
                    -i as usize
                } else if i as usize >= n {
                    2 * (n - 1) - i as usize
                } else {
                    i as usize
                };
                fitted(i)
            })
            .collect();

        // Log mel energies of every frame.
        let mut input = self.fft.make_input_vec();
        let mut spectrum = self.fft.make_output_vec();
        let mut scratch = self.fft.make_scratch_vec();
        let mut power = vec![0.0f64; spectrum.len()];
        let mut logs = vec![0.0f64; N_MELS * frames];
        for k in 0..frames {
            let start = k * HOP;
            for (i, slot) in input.iter_mut().enumerate() {
                *slot = padded[start + i] * self.window[i];
            }
            self.fft
                .process_with_scratch(&mut input, &mut spectrum, &mut scratch)
                .expect("buffers come from the plan, so their lengths match");
            for (p, c) in power.iter_mut().zip(&spectrum) {
                *p = c.norm_sqr();
            }
            for (m, (first, weights)) in self.filters.iter().enumerate() {
                let energy: f64 = weights
                    .iter()
                    .zip(&power[*first..])
                    .map(|(w, p)| w * p)
                    .sum();
                logs[m * frames + k] = energy.max(1e-10).log10();
            }
        }

        // Dynamic range of 8 (80 dB) below the window's loudest value, then scaling.
        let floor = logs.iter().copied().fold(f64::NEG_INFINITY, f64::max) - 8.0;
        Ok(logs
            .into_iter()
            .map(|v| ((v.max(floor) + 4.0) / 4.0) as f32)
            .collect())
    }
}

/// How much audio the encoder sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhisperWindow {
    /// Whisper's own 30 s window: best accuracy, the encoder's full cost.
    Full,
    /// The audio plus this much silence: the encoder's cost follows the utterance's
    /// length, which keeps end-of-turn latency low.
    Trimmed { padding_frames: usize },
}

impl Default for WhisperWindow {
    fn default() -> Self {
        WhisperWindow::Trimmed {
            padding_frames: 100,
        }
    }
}

impl WhisperWindow {
    /// Frames of the window for `samples` of audio (audio past 30 s is cut off).
    pub fn frames(&self, samples: usize) -> usize {
        match self {
            WhisperWindow::Full => MAX_FRAMES,
            WhisperWindow::Trimmed { padding_frames } => {
                WhisperFeatures::trimmed_frames(samples, *padding_frames)
            }
        }
    }
}

/// Settings of a [`Transcriber`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TranscriberConfig {
    pub window: WhisperWindow,
    /// The most tokens one transcript may have, at most [`MAX_TOKENS_LIMIT`].
    pub max_tokens: usize,
    /// Repeat guard: when the newest `repeat_ngram` tokens already occurred as a run
    /// earlier, the decoder is looping (trimmed windows sometimes make it repeat the
    /// utterance); those tokens are dropped and decoding stops. 0 turns it off.
    pub repeat_ngram: usize,
}

impl Default for TranscriberConfig {
    fn default() -> Self {
        TranscriberConfig {
            window: WhisperWindow::default(),
            max_tokens: 224,
            repeat_ngram: 4,
        }
    }
}

/// Why decoding stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TranscriptEnd {
    EndOfText,
    MaxTokens,
    /// The repeat guard stopped a loop.
    Repetition,
}

/// One utterance's transcript.
#[derive(Debug, Clone)]
pub struct Transcript {
    /// The text, without the leading space Whisper puts before the first word.
    pub text: String,
    pub tokens: Vec<u32>,
    /// The encoder window used.
    pub frames: usize,
    pub end: TranscriptEnd,
    pub encoder_time: Duration,
    pub decode_time: Duration,
}

/// Whisper's encoder and decoder graphs and its tokenizer.
pub struct Transcriber {
    encoder: Graph,
    decoder: Graph,
    tokenizer: TextTokenizer,
    features: WhisperFeatures,
    config: TranscriberConfig,
}

impl std::fmt::Debug for Transcriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transcriber")
            .field("encoder", &self.encoder)
            .field("decoder", &self.decoder)
            .field("config", &self.config)
            .finish()
    }
}

fn kv_shape(len: &str) -> Vec<Dim> {
    vec![
        Dim::Symbol("batch".into()),
        Dim::Fixed(HEADS as i64),
        Dim::Symbol(len.into()),
        Dim::Fixed(HEAD_DIM as i64),
    ]
}

/// Takes every layer's `{prefix}.{i}.key` and `.value` out of a run's outputs, in
/// order (key 0, value 0, key 1, …).
fn take_layers(
    outputs: &mut ort::session::SessionOutputs<'_>,
    prefix: &str,
    file: &str,
) -> Result<Vec<DynValue>, ModelError> {
    layer_names(prefix)
        .into_iter()
        .flat_map(|(key, value)| [key, value])
        .map(|name| {
            outputs
                .remove(&name)
                .ok_or_else(|| ModelError::inference(file, format!("output `{name}` missing")))
        })
        .collect()
}

fn layer_names(prefix: &str) -> Vec<(String, String)> {
    (0..LAYERS)
        .map(|i| (format!("{prefix}.{i}.key"), format!("{prefix}.{i}.value")))
        .collect()
}

impl Transcriber {
    /// Loads the graphs and tokenizer from `dir` on the execution provider `runtime`
    /// asks for, and checks the graphs' inputs and outputs.
    pub fn load(
        dir: &Path,
        runtime: &RuntimeConfig,
        config: TranscriberConfig,
    ) -> Result<Transcriber, ModelError> {
        Transcriber::load_files(
            &dir.join(ENCODER_FILE),
            &dir.join(DECODER_FILE),
            &dir.join(TOKENIZER_FILE),
            config,
            runtime,
        )
    }

    /// [`Transcriber::load`] from files named one by one (a bundle's manifest).
    pub fn load_files(
        encoder_file: &Path,
        decoder_file: &Path,
        tokenizer_file: &Path,
        config: TranscriberConfig,
        runtime: &RuntimeConfig,
    ) -> Result<Transcriber, ModelError> {
        if config.max_tokens == 0 || config.max_tokens > MAX_TOKENS_LIMIT {
            return Err(ModelError::Config(format!(
                "whisper max_tokens is {}; it must be from 1 to {MAX_TOKENS_LIMIT}",
                config.max_tokens
            )));
        }
        let sym = |s: &str| Dim::Symbol(s.into());

        // The encoder: mel in, every layer's cross-attention keys and values out.
        let encoder = Graph::load(encoder_file, runtime)?;
        encoder.expect(
            true,
            "mel",
            &[sym("batch"), Dim::Fixed(N_MELS as i64), sym("frames")],
            DType::F32,
        )?;
        for (key, value) in layer_names("cross") {
            encoder.expect(false, &key, &kv_shape("frames/2"), DType::F32)?;
            encoder.expect(false, &value, &kv_shape("frames/2"), DType::F32)?;
        }

        // The decoder: tokens, past and cross-attention tensors in; logits, present out.
        let decoder = Graph::load(decoder_file, runtime)?;
        decoder.expect(true, "input_ids", &[sym("batch"), sym("seq")], DType::I64)?;
        for (key, value) in layer_names("past_key_values") {
            decoder.expect(true, &key, &kv_shape("past"), DType::F32)?;
            decoder.expect(true, &value, &kv_shape("past"), DType::F32)?;
        }
        for (key, value) in layer_names("cross") {
            decoder.expect(true, &key, &kv_shape("frames/2"), DType::F32)?;
            decoder.expect(true, &value, &kv_shape("frames/2"), DType::F32)?;
        }
        for (key, value) in layer_names("present") {
            decoder.expect(false, &key, &kv_shape("total"), DType::F32)?;
            decoder.expect(false, &value, &kv_shape("total"), DType::F32)?;
        }
        decoder.expect(
            false,
            "logits",
            &[sym("batch"), sym("seq"), Dim::Fixed(VOCAB as i64)],
            DType::F32,
        )?;

        // The tokenizer must agree with the ids decoding relies on.
        let special = SpecialTokens {
            bos: Some("<|startoftranscript|>".into()),
            eos: "<|endoftext|>".into(),
            pad: None,
        };
        let tokenizer = TextTokenizer::load(tokenizer_file, &special)?;
        let no_timestamps = tokenizer.encode("<|notimestamps|>")?;
        if tokenizer.bos != Some(START_OF_TRANSCRIPT)
            || tokenizer.eos != END_OF_TEXT
            || no_timestamps != [NO_TIMESTAMPS]
        {
            return Err(ModelError::Tokenizer(format!(
                "{TOKENIZER_FILE} is not Whisper's English tokenizer: start {:?}, end {}, \
                 no-timestamps {no_timestamps:?}",
                tokenizer.bos, tokenizer.eos
            )));
        }
        Ok(Transcriber {
            encoder,
            decoder,
            tokenizer,
            features: WhisperFeatures::new(),
            config,
        })
    }

    pub fn config(&self) -> &TranscriberConfig {
        &self.config
    }

    /// The execution providers the encoder and decoder run on.
    pub fn providers(&self) -> (&'static str, &'static str) {
        (self.encoder.provider(), self.decoder.provider())
    }

    /// Transcribes one utterance of 16 kHz PCM.
    pub fn transcribe(&mut self, pcm: &[f32]) -> Result<Transcript, ModelError> {
        self.transcribe_streaming(pcm, |_| {})
    }

    /// Transcribes one utterance, calling `on_text` with each new piece of text as it is
    /// decoded. Pieces never split a character and are never taken back; together they
    /// are the transcript's text. With the repeat guard on, the newest `repeat_ngram - 1`
    /// tokens are held back until decoding shows they are not the start of a loop.
    pub fn transcribe_streaming(
        &mut self,
        pcm: &[f32],
        mut on_text: impl FnMut(&str),
    ) -> Result<Transcript, ModelError> {
        let frames = self.config.window.frames(pcm.len());
        let mel = self.features.compute(pcm, frames)?;

        let started = Instant::now();
        let cross = self.encode(mel, frames)?;
        let encoder_time = started.elapsed();

        // Greedy decoding; each step's present keys and values are the next step's past.
        let started = Instant::now();
        let hold_back = self.config.repeat_ngram.saturating_sub(1);
        let mut past: Option<Vec<DynValue>> = None;
        let mut input: Vec<u32> = PROMPT.to_vec();
        let mut tokens: Vec<u32> = Vec::new();
        let mut stream = TextStream::default();
        let end = loop {
            if tokens.len() == self.config.max_tokens {
                break TranscriptEnd::MaxTokens;
            }
            let (logits, present) = self.decode_step(&input, past.take(), &cross)?;
            past = Some(present);
            let token = greedy(&logits);
            if token == END_OF_TEXT {
                break TranscriptEnd::EndOfText;
            }
            tokens.push(token);
            if repeats(&tokens, self.config.repeat_ngram) {
                tokens.truncate(tokens.len() - self.config.repeat_ngram);
                break TranscriptEnd::Repetition;
            }
            while stream.pushed + hold_back < tokens.len() {
                stream.push(&self.tokenizer, tokens[stream.pushed], &mut on_text)?;
            }
            input = vec![token];
        };
        while stream.pushed < tokens.len() {
            stream.push(&self.tokenizer, tokens[stream.pushed], &mut on_text)?;
        }
        stream.finish(&self.tokenizer, &mut on_text)?;
        let decode_time = started.elapsed();

        let text = self.tokenizer.decode(&tokens)?.trim_start().to_string();
        tracing::debug!(
            frames,
            tokens = tokens.len(),
            ?end,
            encoder_ms = encoder_time.as_millis() as u64,
            decode_ms = decode_time.as_millis() as u64,
            "utterance transcribed"
        );
        Ok(Transcript {
            text,
            tokens,
            frames,
            end,
            encoder_time,
            decode_time,
        })
    }

    /// Runs the encoder on `[80, frames]` features; returns the cross-attention tensors
    /// in the order key 0, value 0, key 1, …
    fn encode(&mut self, mel: Vec<f32>, frames: usize) -> Result<Vec<DynValue>, ModelError> {
        let file = self.encoder.file.clone();
        let inputs = vec![f32_input("mel", vec![1, N_MELS, frames], mel)?];
        let mut outputs = self
            .encoder
            .session
            .run(inputs)
            .map_err(|e| ModelError::inference(&file, e))?;
        take_layers(&mut outputs, "cross", &file)
    }

    /// One decoder pass over `input` for a batch of one; returns the logits of the last
    /// position and the present keys and values (key 0, value 0, key 1, …).
    fn decode_step(
        &mut self,
        input: &[u32],
        past: Option<Vec<DynValue>>,
        cross: &[DynValue],
    ) -> Result<(Vec<f32>, Vec<DynValue>), ModelError> {
        let file = self.decoder.file.clone();
        let ids = input.iter().map(|id| *id as i64).collect();
        let mut inputs: Vec<(String, SessionInputValue<'_>)> =
            vec![i64_input("input_ids", vec![1, input.len()], ids)?];
        let past_names = layer_names("past_key_values")
            .into_iter()
            .flat_map(|(key, value)| [key, value]);
        match past {
            Some(values) => inputs.extend(past_names.zip(values.into_iter().map(Into::into))),
            None => {
                for name in past_names {
                    inputs.push(f32_input(&name, vec![1, HEADS, 0, HEAD_DIM], Vec::new())?);
                }
            }
        }
        let cross_names = layer_names("cross")
            .into_iter()
            .flat_map(|(key, value)| [key, value]);
        inputs.extend(cross_names.zip(cross.iter().map(SessionInputValue::from)));

        let mut outputs = self
            .decoder
            .session
            .run(inputs)
            .map_err(|e| ModelError::inference(&file, e))?;
        let (shape, logits) = outputs
            .get("logits")
            .ok_or_else(|| ModelError::inference(&file, "output `logits` missing"))?
            .try_extract_tensor::<f32>()
            .map_err(|e| ModelError::inference(&file, format!("output `logits`: {e}")))?;
        let dims: Vec<i64> = shape.iter().copied().collect();
        if dims != [1, input.len() as i64, VOCAB as i64] {
            return Err(ModelError::inference(
                &file,
                format!(
                    "logits shape {dims:?}, expected [1, {}, {VOCAB}]",
                    input.len()
                ),
            ));
        }
        let last = logits[(input.len() - 1) * VOCAB..].to_vec();
        let present = take_layers(&mut outputs, "present", &file)?;
        Ok((last, present))
    }
}

/// Text pieces for the streaming callback: incremental detokenization, with Whisper's
/// leading space dropped before the first word.
#[derive(Default)]
struct TextStream {
    decoder: IncrementalDecoder,
    /// Tokens handed to the detokenizer so far.
    pushed: usize,
    started: bool,
}

impl TextStream {
    fn push(
        &mut self,
        tokenizer: &TextTokenizer,
        token: u32,
        on_text: &mut impl FnMut(&str),
    ) -> Result<(), ModelError> {
        let delta = self.decoder.push(tokenizer, token)?;
        self.pushed += 1;
        self.emit(&delta, on_text);
        Ok(())
    }

    fn finish(
        &mut self,
        tokenizer: &TextTokenizer,
        on_text: &mut impl FnMut(&str),
    ) -> Result<(), ModelError> {
        let delta = self.decoder.finish(tokenizer)?;
        self.emit(&delta, on_text);
        Ok(())
    }

    fn emit(&mut self, delta: &str, on_text: &mut impl FnMut(&str)) {
        let delta = if self.started {
            delta
        } else {
            delta.trim_start()
        };
        if !delta.is_empty() {
            self.started = true;
            on_text(delta);
        }
    }
}

/// The most likely token that is text or the end of text (ties go to the lower id).
fn greedy(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (id, logit) in logits.iter().enumerate().take(FIRST_SPECIAL) {
        if *logit > logits[best] {
            best = id;
        }
    }
    best as u32
}

/// Whether the last `n` tokens already occurred as a run earlier (never when `n` is 0).
fn repeats(tokens: &[u32], n: usize) -> bool {
    if n == 0 || tokens.len() <= n {
        return false;
    }
    let tail = &tokens[tokens.len() - n..];
    tokens[..tokens.len() - 1].windows(n).any(|w| w == tail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trimmed_windows_are_even_and_bounded() {
        assert_eq!(WhisperFeatures::trimmed_frames(0, 0), 2);
        assert_eq!(WhisperFeatures::trimmed_frames(16_000, 100), 200);
        assert_eq!(WhisperFeatures::trimmed_frames(16_001, 100), 202);
        assert_eq!(
            WhisperFeatures::trimmed_frames(40 * 16_000, 100),
            MAX_FRAMES
        );
        assert_eq!(WhisperWindow::Full.frames(10), MAX_FRAMES);
    }

    #[test]
    fn odd_or_oversized_windows_are_refused() {
        let features = WhisperFeatures::new();
        for frames in [0, 3, MAX_FRAMES + 2] {
            let err = features.compute(&[0.0; 100], frames).unwrap_err();
            assert_eq!(err.code(), "invalid_input");
        }
    }

    #[test]
    fn a_tone_lands_in_its_mel_band() {
        // 1 kHz is mel 15; with 81 steps of 45.25 / 81 mel, band 26's centre is nearest.
        let pcm: Vec<f32> = (0..16_000)
            .map(|i| 0.5 * (2.0 * std::f32::consts::PI * 1000.0 * i as f32 / 16_000.0).sin())
            .collect();
        let frames = 100;
        let mel = WhisperFeatures::new().compute(&pcm, frames).unwrap();
        let mid = frames / 2;
        let band = (0..N_MELS)
            .max_by(|a, b| mel[a * frames + mid].total_cmp(&mel[b * frames + mid]))
            .unwrap();
        let centre = mel_to_hz(hz_to_mel(8000.0) * (band + 1) as f64 / 81.0);
        assert!(
            (centre - 1000.0).abs() < 40.0,
            "band {band} centred at {centre} Hz"
        );
        assert!(mel.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn silence_is_the_floor_everywhere() {
        let mel = WhisperFeatures::new().compute(&[], 10).unwrap();
        // log10(1e-10) = -10 everywhere, so the clamp leaves it and (x + 4) / 4 = -1.5.
        assert!(mel.iter().all(|v| (*v + 1.5).abs() < 1e-6));
    }

    #[test]
    fn slaney_scale_round_trips() {
        for hz in [0.0, 500.0, 1000.0, 3000.0, 8000.0] {
            assert!((mel_to_hz(hz_to_mel(hz)) - hz).abs() < 1e-6);
        }
    }

    #[test]
    fn the_repeat_guard_sees_a_repeated_run() {
        assert!(!repeats(&[1, 2, 3, 4, 5], 4));
        assert!(repeats(&[1, 2, 3, 4, 9, 1, 2, 3, 4], 4));
        assert!(!repeats(&[1, 2, 3, 4, 9, 1, 2, 3, 5], 4));
        // A run may overlap its earlier occurrence: one token looping.
        assert!(repeats(&[7, 7, 7, 7, 7], 4));
        assert!(!repeats(&[7, 7, 7, 7], 4));
        assert!(!repeats(&[1, 1, 1, 1, 1, 1], 0));
    }

    #[test]
    fn greedy_never_picks_a_special_token_other_than_the_end() {
        let mut logits = vec![0.0f32; VOCAB];
        logits[NO_TIMESTAMPS as usize] = 10.0;
        logits[FIRST_SPECIAL] = 9.0;
        logits[42] = 1.0;
        assert_eq!(greedy(&logits), 42);
        logits[END_OF_TEXT as usize] = 2.0;
        assert_eq!(greedy(&logits), END_OF_TEXT);
    }
}
