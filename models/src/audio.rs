//! Audio preprocessing: the streaming log-mel front end of `docs/bundle-format.md`,
//! chunking for streaming encoders, and resampling to the model's rate.

use std::sync::Arc;

use realfft::{RealFftPlanner, RealToComplex};
use rubato::{FftFixedIn, Resampler};

use crate::error::ModelError;
use crate::manifest::{AudioFeatureSpec, FeatureKind, MelNorm, MelScale};

/// Turns PCM into log-mel frames; cheap to clone (the FFT plan and filters are shared).
#[derive(Clone)]
pub struct LogMel {
    spec: AudioFeatureSpec,
    window: Arc<Vec<f32>>,
    /// `n_mels` rows of `n_fft/2 + 1` weights.
    filters: Arc<Vec<Vec<(usize, f32)>>>,
    fft: Arc<dyn RealToComplex<f32>>,
}

impl std::fmt::Debug for LogMel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogMel").field("spec", &self.spec).finish()
    }
}

fn hz_to_mel(hz: f64, scale: MelScale) -> f64 {
    match scale {
        MelScale::Htk => 2595.0 * (1.0 + hz / 700.0).log10(),
        MelScale::Slaney => {
            let f_sp = 200.0 / 3.0;
            let min_log_hz = 1000.0;
            let min_log_mel = min_log_hz / f_sp;
            let logstep = (6.4f64).ln() / 27.0;
            if hz >= min_log_hz {
                min_log_mel + (hz / min_log_hz).ln() / logstep
            } else {
                hz / f_sp
            }
        }
    }
}

fn mel_to_hz(mel: f64, scale: MelScale) -> f64 {
    match scale {
        MelScale::Htk => 700.0 * (10f64.powf(mel / 2595.0) - 1.0),
        MelScale::Slaney => {
            let f_sp = 200.0 / 3.0;
            let min_log_hz = 1000.0;
            let min_log_mel = min_log_hz / f_sp;
            let logstep = (6.4f64).ln() / 27.0;
            if mel >= min_log_mel {
                min_log_hz * (logstep * (mel - min_log_mel)).exp()
            } else {
                f_sp * mel
            }
        }
    }
}

impl LogMel {
    pub fn new(spec: &AudioFeatureSpec) -> Result<LogMel, ModelError> {
        if spec.kind != FeatureKind::LogMel {
            return Err(ModelError::Config(
                "LogMel needs features.kind = log_mel".into(),
            ));
        }
        let win = if spec.win_length == 0 {
            spec.n_fft
        } else {
            spec.win_length
        };
        let mut window = vec![0.0f32; spec.n_fft];
        // A window shorter than the FFT sits in its middle, as zero-padding does.
        let offset = (spec.n_fft - win) / 2;
        for n in 0..win {
            let w = 0.5 - 0.5 * (2.0 * std::f64::consts::PI * n as f64 / win as f64).cos();
            window[offset + n] = w as f32;
        }

        let bins = spec.n_fft / 2 + 1;
        let mel_min = hz_to_mel(spec.f_min as f64, spec.mel_scale);
        let mel_max = hz_to_mel(spec.f_max as f64, spec.mel_scale);
        let edges: Vec<f64> = (0..spec.n_mels + 2)
            .map(|i| {
                let mel = mel_min + (mel_max - mel_min) * i as f64 / (spec.n_mels + 1) as f64;
                mel_to_hz(mel, spec.mel_scale)
            })
            .collect();
        let filters = (0..spec.n_mels)
            .map(|m| {
                let (left, centre, right) = (edges[m], edges[m + 1], edges[m + 2]);
                let norm = match spec.mel_norm {
                    MelNorm::None => 1.0,
                    MelNorm::Slaney => 2.0 / (right - left),
                };
                (0..bins)
                    .filter_map(|bin| {
                        let f = bin as f64 * spec.sample_rate as f64 / spec.n_fft as f64;
                        let rise = (f - left) / (centre - left);
                        let fall = (right - f) / (right - centre);
                        let w = rise.min(fall).max(0.0) * norm;
                        (w > 0.0).then_some((bin, w as f32))
                    })
                    .collect()
            })
            .collect();
        let fft = RealFftPlanner::<f32>::new().plan_fft_forward(spec.n_fft);
        Ok(LogMel {
            spec: spec.clone(),
            window: Arc::new(window),
            filters: Arc::new(filters),
            fft,
        })
    }

    pub fn n_mels(&self) -> usize {
        self.spec.n_mels
    }

    /// How many complete frames `samples` holds.
    pub fn frame_count(&self, samples: usize) -> usize {
        if samples < self.spec.n_fft {
            0
        } else {
            (samples - self.spec.n_fft) / self.spec.hop_length + 1
        }
    }

    /// Computes every complete frame of `samples`, row-major `[frames, n_mels]`.
    pub fn compute(&self, samples: &[f32]) -> Vec<f32> {
        let frames = self.frame_count(samples.len());
        let mut out = Vec::with_capacity(frames * self.spec.n_mels);
        let mut input = self.fft.make_input_vec();
        let mut spectrum = self.fft.make_output_vec();
        let mut scratch = self.fft.make_scratch_vec();
        let mut power = vec![0.0f32; spectrum.len()];
        for k in 0..frames {
            let start = k * self.spec.hop_length;
            for (i, slot) in input.iter_mut().enumerate() {
                *slot = samples[start + i] * self.window[i];
            }
            self.fft
                .process_with_scratch(&mut input, &mut spectrum, &mut scratch)
                .expect("buffers come from the plan, so their lengths match");
            for (p, c) in power.iter_mut().zip(&spectrum) {
                *p = c.norm_sqr();
            }
            for filter in self.filters.iter() {
                let energy: f32 = filter.iter().map(|(bin, w)| power[*bin] * w).sum();
                let value = (energy + self.spec.log_offset).ln();
                out.push((value - self.spec.mean) / self.spec.std);
            }
        }
        out
    }
}

/// A turn's audio on its way to a streaming encoder: takes PCM at the model's rate in
/// pieces of any length and hands out complete encoder chunks as they fill.
#[derive(Debug, Clone)]
pub struct AudioChunker {
    front: Front,
    chunk_frames: usize,
    /// Samples not yet turned into frames (log-mel keeps the window's overlap).
    pending: Vec<f32>,
    /// Features not yet handed out, row-major.
    ready: Vec<f32>,
    /// Samples received this turn, for accounting.
    received: usize,
}

#[derive(Debug, Clone)]
enum Front {
    LogMel(LogMel),
    Pcm,
}

impl AudioChunker {
    pub fn new(spec: &AudioFeatureSpec) -> Result<AudioChunker, ModelError> {
        let front = match spec.kind {
            FeatureKind::LogMel => Front::LogMel(LogMel::new(spec)?),
            FeatureKind::Pcm => Front::Pcm,
        };
        Ok(AudioChunker {
            front,
            chunk_frames: spec.chunk_frames,
            pending: Vec::new(),
            ready: Vec::new(),
            received: 0,
        })
    }

    /// Raw PCM in chunks of `chunk_samples`: for stages that take a whole utterance
    /// (speech recognition), where chunking only paces the ingest.
    pub fn pcm(chunk_samples: usize) -> AudioChunker {
        AudioChunker {
            front: Front::Pcm,
            chunk_frames: chunk_samples.max(1),
            pending: Vec::new(),
            ready: Vec::new(),
            received: 0,
        }
    }

    /// Values per frame: mel bands, or 1 for raw PCM.
    pub fn frame_width(&self) -> usize {
        match &self.front {
            Front::LogMel(mel) => mel.n_mels(),
            Front::Pcm => 1,
        }
    }

    /// Values in one encoder chunk.
    pub fn chunk_len(&self) -> usize {
        self.chunk_frames * self.frame_width()
    }

    /// Samples received since the last reset.
    pub fn samples_received(&self) -> usize {
        self.received
    }

    /// Adds samples and returns the chunks they completed.
    pub fn push(&mut self, samples: &[f32]) -> Vec<Vec<f32>> {
        self.received += samples.len();
        self.pending.extend_from_slice(samples);
        self.drain_frames();
        self.take_chunks()
    }

    /// Ends the turn: pads with silence so the last chunk is complete (and at least one
    /// chunk exists), returns the remaining chunks, and resets for the next turn.
    pub fn finish(&mut self) -> Vec<Vec<f32>> {
        let mut chunks = Vec::new();
        match &self.front {
            Front::LogMel(mel) => {
                let hop = mel.spec.hop_length;
                let n_fft = mel.spec.n_fft;
                // Frames produced so far plus those the pending samples would give.
                let done = self.ready.len() / self.frame_width();
                let mut frames = done + mel.frame_count(self.pending.len());
                let target = if frames == 0 {
                    self.chunk_frames
                } else {
                    frames.div_ceil(self.chunk_frames) * self.chunk_frames
                };
                while frames < target {
                    // Append silence until one more frame completes.
                    let need = if self.pending.len() < n_fft {
                        n_fft - self.pending.len()
                    } else {
                        let have = mel.frame_count(self.pending.len());
                        (have * hop + n_fft) - self.pending.len()
                    };
                    self.pending.extend(std::iter::repeat_n(0.0, need));
                    frames = done + mel.frame_count(self.pending.len());
                }
                self.drain_frames();
            }
            Front::Pcm => {
                // Samples move to `ready` as they arrive: pad what is there (at least
                // one chunk) to whole chunks.
                self.drain_frames();
                let len = self.ready.len();
                let target = len.max(1).div_ceil(self.chunk_frames) * self.chunk_frames;
                self.ready.resize(target, 0.0);
            }
        }
        chunks.extend(self.take_chunks());
        self.reset();
        chunks
    }

    /// Drops everything buffered for the turn.
    pub fn reset(&mut self) {
        self.pending.clear();
        self.ready.clear();
        self.received = 0;
    }

    fn drain_frames(&mut self) {
        match &self.front {
            Front::LogMel(mel) => {
                let frames = mel.frame_count(self.pending.len());
                if frames == 0 {
                    return;
                }
                let used = frames * mel.spec.hop_length;
                let span = (frames - 1) * mel.spec.hop_length + mel.spec.n_fft;
                self.ready.extend(mel.compute(&self.pending[..span]));
                self.pending.drain(..used);
            }
            Front::Pcm => {
                self.ready.append(&mut self.pending);
            }
        }
    }

    fn take_chunks(&mut self) -> Vec<Vec<f32>> {
        let len = self.chunk_len();
        let complete = self.ready.len() / len;
        let chunks = self.ready.chunks_exact(len).map(<[f32]>::to_vec).collect();
        self.ready.drain(..complete * len);
        chunks
    }
}

/// Converts PCM16 little-endian bytes to f32 samples in [-1, 1].
pub fn pcm16_to_f32(bytes: &[u8]) -> Result<Vec<f32>, ModelError> {
    if !bytes.len().is_multiple_of(2) {
        return Err(ModelError::InvalidInput(format!(
            "PCM16 needs an even number of bytes, got {}",
            bytes.len()
        )));
    }
    Ok(bytes
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]) as f32 / 32768.0)
        .collect())
}

/// Streaming sample-rate conversion of mono audio (`rubato`'s FFT resampler), fed in
/// pieces of any length.
pub struct StreamResampler {
    inner: Option<FftFixedIn<f32>>,
    pending: Vec<f32>,
    chunk: usize,
}

impl std::fmt::Debug for StreamResampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamResampler")
            .field("passthrough", &self.inner.is_none())
            .field("pending", &self.pending.len())
            .finish()
    }
}

impl StreamResampler {
    /// From `from_hz` to `to_hz`; equal rates pass samples through untouched.
    pub fn new(from_hz: u32, to_hz: u32) -> Result<StreamResampler, ModelError> {
        if from_hz == 0 || to_hz == 0 {
            return Err(ModelError::InvalidInput(
                "sample rates must be positive".into(),
            ));
        }
        if from_hz == to_hz {
            return Ok(StreamResampler {
                inner: None,
                pending: Vec::new(),
                chunk: 0,
            });
        }
        // 10 ms of input per resampler call keeps the added latency small.
        let chunk = (from_hz / 100).max(1) as usize;
        let inner = FftFixedIn::<f32>::new(from_hz as usize, to_hz as usize, chunk, 2, 1)
            .map_err(|e| ModelError::InvalidInput(format!("resampler: {e}")))?;
        Ok(StreamResampler {
            inner: Some(inner),
            pending: Vec::new(),
            chunk,
        })
    }

    /// Adds samples; returns the resampled samples available so far.
    pub fn push(&mut self, samples: &[f32]) -> Vec<f32> {
        let Some(inner) = self.inner.as_mut() else {
            return samples.to_vec();
        };
        self.pending.extend_from_slice(samples);
        let mut out = Vec::new();
        let mut used = 0;
        while self.pending.len() - used >= self.chunk {
            let input = [&self.pending[used..used + self.chunk]];
            if let Ok(mut result) = inner.process(&input, None) {
                out.append(&mut result[0]);
            }
            used += self.chunk;
        }
        self.pending.drain(..used);
        out
    }

    /// Flushes what is buffered (padded with silence) at the end of a stream.
    pub fn flush(&mut self) -> Vec<f32> {
        let Some(inner) = self.inner.as_mut() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        if !self.pending.is_empty() {
            let input = [&self.pending[..]];
            if let Ok(mut result) = inner.process_partial(Some(&input), None) {
                out.append(&mut result[0]);
            }
            self.pending.clear();
        }
        if let Ok(mut result) = inner.process_partial::<&[f32]>(None, None) {
            out.append(&mut result[0]);
        }
        inner.reset();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcm_chunks_keep_every_sample_and_pad_the_last() {
        let mut chunker = AudioChunker::pcm(100);
        let samples: Vec<f32> = (1..=250).map(|i| i as f32).collect();
        let mut chunks = chunker.push(&samples[..130]);
        chunks.extend(chunker.push(&samples[130..]));
        chunks.extend(chunker.finish());
        assert_eq!(chunks.len(), 3);
        let flat: Vec<f32> = chunks.concat();
        assert_eq!(&flat[..250], &samples[..]);
        assert!(flat[250..].iter().all(|&x| x == 0.0));
        // An empty turn still gives one chunk of silence.
        assert_eq!(chunker.finish(), vec![vec![0.0; 100]]);
    }

    fn spec() -> AudioFeatureSpec {
        AudioFeatureSpec {
            kind: FeatureKind::LogMel,
            sample_rate: 16000,
            chunk_frames: 8,
            n_fft: 400,
            win_length: 400,
            hop_length: 160,
            n_mels: 40,
            f_min: 0.0,
            f_max: 8000.0,
            mel_scale: MelScale::Htk,
            mel_norm: MelNorm::None,
            log_offset: 1e-6,
            mean: 0.0,
            std: 1.0,
        }
    }

    fn tone(len: usize, hz: f32) -> Vec<f32> {
        (0..len)
            .map(|i| (2.0 * std::f32::consts::PI * hz * i as f32 / 16000.0).sin() * 0.5)
            .collect()
    }

    #[test]
    fn streaming_in_odd_pieces_equals_one_pass() {
        let pcm = tone(16000, 440.0);
        let mel = LogMel::new(&spec()).unwrap();
        let whole = mel.compute(&pcm);

        let mut chunker = AudioChunker::new(&spec()).unwrap();
        let mut streamed = Vec::new();
        for piece in pcm.chunks(333) {
            for chunk in chunker.push(piece) {
                streamed.extend(chunk);
            }
        }
        for chunk in chunker.finish() {
            streamed.extend(chunk);
        }
        assert!(streamed.len() >= whole.len());
        assert_eq!(streamed.len() % (8 * 40), 0);
        for (a, b) in whole.iter().zip(&streamed) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
    }

    #[test]
    fn a_tone_peaks_in_the_right_band() {
        let mel = LogMel::new(&spec()).unwrap();
        let frames = mel.compute(&tone(4000, 1000.0));
        let first = &frames[..40];
        let peak = first
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i)
            .unwrap();
        // 1 kHz on the HTK scale between 0 and 8 kHz lies near band 11 of 40.
        assert!((9..=13).contains(&peak), "peak band {peak}");
    }

    #[test]
    fn silence_gives_one_full_chunk() {
        let mut chunker = AudioChunker::new(&spec()).unwrap();
        let chunks = chunker.finish();
        assert_eq!(chunks.len(), 1);
        assert!(chunks[0].iter().all(|v| (v - (1e-6f32).ln()).abs() < 1e-3));
    }

    #[test]
    fn odd_pcm16_is_refused() {
        assert!(pcm16_to_f32(&[1, 2, 3]).is_err());
        assert_eq!(pcm16_to_f32(&[0, 0x80]).unwrap(), vec![-1.0]);
    }

    #[test]
    fn resampling_keeps_duration_and_pitch() {
        let mut resampler = StreamResampler::new(24000, 16000).unwrap();
        let input: Vec<f32> = (0..24000)
            .map(|i| (2.0 * std::f32::consts::PI * 300.0 * i as f32 / 24000.0).sin())
            .collect();
        let mut out = Vec::new();
        for piece in input.chunks(480) {
            out.extend(resampler.push(piece));
        }
        out.extend(resampler.flush());
        assert!(
            (out.len() as i64 - 16000).abs() < 400,
            "{} samples",
            out.len()
        );
        // Count rising zero crossings over the middle: 300 Hz gives ~150 in 0.5 s.
        let mid = &out[4000..12000];
        let crossings = mid.windows(2).filter(|w| w[0] < 0.0 && w[1] >= 0.0).count();
        assert!((145..=155).contains(&crossings), "{crossings} crossings");
    }
}
