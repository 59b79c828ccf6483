//! Audio to send: WAV reading, down-mixing, resampling, 20 ms framing and Opus.

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use rubato::{FftFixedIn, Resampler};

use crate::error::ClientError;

/// Frame length used for streaming and for Opus packets.
pub const FRAME_MS: u32 = 20;

/// Mono PCM16 samples at a known rate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pcm16Audio {
    /// Samples per second.
    pub rate: u32,
    /// Mono samples.
    pub samples: Vec<i16>,
}

impl Pcm16Audio {
    /// Reads a WAV file (8/16/24/32-bit integer or 32-bit float, any channel count),
    /// mixing channels down to mono at the file's rate.
    pub fn from_wav_file(path: &Path) -> Result<Self, ClientError> {
        let wav_error = |err| ClientError::Wav {
            path: path.to_path_buf(),
            err,
        };
        let reader = hound::WavReader::open(path).map_err(wav_error)?;
        Self::from_wav(reader).map_err(wav_error)
    }

    /// Reads WAV bytes from any reader; see [`Pcm16Audio::from_wav_file`].
    pub fn from_wav_reader<R: Read>(reader: R) -> Result<Self, hound::Error> {
        Self::from_wav(hound::WavReader::new(reader)?)
    }

    fn from_wav<R: Read>(reader: hound::WavReader<R>) -> Result<Self, hound::Error> {
        let spec = reader.spec();
        let channels = usize::from(spec.channels.max(1));
        // Every format becomes f32 in [-1, 1] first, then mono, then i16.
        let interleaved: Vec<f32> = match spec.sample_format {
            hound::SampleFormat::Float => reader.into_samples::<f32>().collect::<Result<_, _>>()?,
            hound::SampleFormat::Int => {
                let scale = 1.0 / (1u64 << (spec.bits_per_sample.clamp(1, 32) - 1)) as f32;
                reader
                    .into_samples::<i32>()
                    .map(|s| s.map(|s| s as f32 * scale))
                    .collect::<Result<_, _>>()?
            }
        };
        let samples = interleaved
            .chunks(channels)
            .map(|frame| to_i16(frame.iter().sum::<f32>() / frame.len() as f32))
            .collect();
        Ok(Pcm16Audio {
            rate: spec.sample_rate,
            samples,
        })
    }

    /// How long the audio lasts.
    pub fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.samples.len() as f64 / f64::from(self.rate.max(1)))
    }

    /// The same audio at `rate`, through a band-limited FFT resampler.
    pub fn resampled(&self, rate: u32) -> Result<Pcm16Audio, ClientError> {
        if rate == self.rate || self.samples.is_empty() {
            return Ok(Pcm16Audio {
                rate,
                samples: self.samples.clone(),
            });
        }
        let input: Vec<f32> = self
            .samples
            .iter()
            .map(|&s| f32::from(s) / 32768.0)
            .collect();
        let chunk = 1024;
        let mut resampler = FftFixedIn::<f32>::new(self.rate as usize, rate as usize, chunk, 2, 1)
            .map_err(|err| ClientError::Resample(err.to_string()))?;
        let expected =
            (self.samples.len() as u64 * u64::from(rate) / u64::from(self.rate)) as usize;
        let delay = resampler.output_delay();
        let mut output: Vec<f32> = Vec::with_capacity(expected + delay + chunk);
        let resample_error = |err: rubato::ResampleError| ClientError::Resample(err.to_string());

        // Whole chunks, then the tail, then zeros until the delayed output is out.
        let mut rest = &input[..];
        while rest.len() >= resampler.input_frames_next() {
            let (now, later) = rest.split_at(resampler.input_frames_next());
            output.extend_from_slice(&resampler.process(&[now], None).map_err(resample_error)?[0]);
            rest = later;
        }
        if !rest.is_empty() {
            let out = resampler
                .process_partial(Some(&[rest]), None)
                .map_err(resample_error)?;
            output.extend_from_slice(&out[0]);
        }
        while output.len() < expected + delay {
            let out = resampler
                .process_partial::<&[f32]>(None, None)
                .map_err(resample_error)?;
            if out[0].is_empty() {
                break;
            }
            output.extend_from_slice(&out[0]);
        }

        let samples = output
            .into_iter()
            .skip(delay)
            .take(expected)
            .map(to_i16)
            .collect();
        Ok(Pcm16Audio { rate, samples })
    }

    /// Samples per frame of `frame_ms`.
    pub fn samples_per_frame(&self, frame_ms: u32) -> usize {
        (self.rate as usize * frame_ms as usize / 1000).max(1)
    }

    /// The audio cut into frames of `frame_ms`; the last may be shorter.
    pub fn frames(&self, frame_ms: u32) -> std::slice::Chunks<'_, i16> {
        self.samples.chunks(self.samples_per_frame(frame_ms))
    }
}

/// PCM16 little-endian bytes, as the wire carries them.
pub fn pcm16_bytes(samples: &[i16]) -> Vec<u8> {
    samples.iter().flat_map(|s| s.to_le_bytes()).collect()
}

/// Samples back from PCM16 little-endian bytes (a trailing odd byte is dropped).
pub fn pcm16_samples(bytes: &[u8]) -> Vec<i16> {
    bytes
        .chunks_exact(2)
        .map(|pair| i16::from_le_bytes([pair[0], pair[1]]))
        .collect()
}

fn to_i16(sample: f32) -> i16 {
    (sample * 32768.0).round().clamp(-32768.0, 32767.0) as i16
}

/// Encodes mono PCM16 into one Opus packet per 20 ms frame.
pub struct OpusFrameEncoder {
    encoder: opus::Encoder,
    frame_samples: usize,
}

impl std::fmt::Debug for OpusFrameEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpusFrameEncoder")
            .field("frame_samples", &self.frame_samples)
            .finish_non_exhaustive()
    }
}

/// Largest packet we let Opus write; far above what 20 ms of speech needs.
const MAX_OPUS_PACKET: usize = 4000;

impl OpusFrameEncoder {
    /// An encoder for speech at `rate` (8000, 12000, 16000, 24000 or 48000).
    pub fn new(rate: u32) -> Result<Self, ClientError> {
        let encoder = opus::Encoder::new(rate, opus::Channels::Mono, opus::Application::Voip)?;
        Ok(OpusFrameEncoder {
            encoder,
            frame_samples: (rate * FRAME_MS / 1000) as usize,
        })
    }

    /// Samples in one frame.
    pub fn frame_samples(&self) -> usize {
        self.frame_samples
    }

    /// Encodes one frame; a short (last) frame is padded with silence.
    pub fn encode(&mut self, samples: &[i16]) -> Result<Vec<u8>, ClientError> {
        if samples.len() > self.frame_samples {
            return Err(ClientError::Media(format!(
                "opus frame of {} samples is longer than {}",
                samples.len(),
                self.frame_samples
            )));
        }
        if samples.len() == self.frame_samples {
            return Ok(self.encoder.encode_vec(samples, MAX_OPUS_PACKET)?);
        }
        let mut padded = samples.to_vec();
        padded.resize(self.frame_samples, 0);
        Ok(self.encoder.encode_vec(&padded, MAX_OPUS_PACKET)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(rate: u32, hz: f32, seconds: f32) -> Pcm16Audio {
        let n = (rate as f32 * seconds) as usize;
        let samples = (0..n)
            .map(|i| {
                let t = i as f32 / rate as f32;
                to_i16(0.5 * (2.0 * std::f32::consts::PI * hz * t).sin())
            })
            .collect();
        Pcm16Audio { rate, samples }
    }

    /// Amplitude of `hz` in `samples` (a single-bin DFT), relative to full scale.
    fn tone_level(samples: &[i16], rate: u32, hz: f32) -> f32 {
        let (mut re, mut im) = (0.0f64, 0.0f64);
        for (i, &s) in samples.iter().enumerate() {
            let phase = 2.0 * std::f64::consts::PI * f64::from(hz) * i as f64 / f64::from(rate);
            re += f64::from(s) * phase.cos();
            im += f64::from(s) * phase.sin();
        }
        (2.0 * (re * re + im * im).sqrt() / samples.len() as f64 / 32768.0) as f32
    }

    fn wav_bytes(
        spec: hound::WavSpec,
        write: impl FnOnce(&mut hound::WavWriter<std::io::Cursor<&mut Vec<u8>>>),
    ) -> Vec<u8> {
        let mut bytes = Vec::new();
        {
            let mut writer =
                hound::WavWriter::new(std::io::Cursor::new(&mut bytes), spec).expect("writer");
            write(&mut writer);
            writer.finalize().expect("finalize");
        }
        bytes
    }

    #[test]
    fn reads_stereo_wav_as_mono() {
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: 16_000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let bytes = wav_bytes(spec, |w| {
            for (l, r) in [(1000i16, 3000i16), (-2000, -4000), (0, 0)] {
                w.write_sample(l).expect("write");
                w.write_sample(r).expect("write");
            }
        });
        let audio = Pcm16Audio::from_wav_reader(&bytes[..]).expect("reads");
        assert_eq!(audio.rate, 16_000);
        assert_eq!(audio.samples, vec![2000, -3000, 0]);
    }

    #[test]
    fn reads_float_and_24_bit_wav() {
        let float = hound::WavSpec {
            channels: 1,
            sample_rate: 24_000,
            bits_per_sample: 32,
            sample_format: hound::SampleFormat::Float,
        };
        let bytes = wav_bytes(float, |w| {
            for s in [0.5f32, -1.0, 2.0] {
                w.write_sample(s).expect("write");
            }
        });
        let audio = Pcm16Audio::from_wav_reader(&bytes[..]).expect("reads");
        assert_eq!(audio.samples, vec![16384, -32768, 32767]);

        let int24 = hound::WavSpec {
            bits_per_sample: 24,
            sample_format: hound::SampleFormat::Int,
            ..float
        };
        let bytes = wav_bytes(int24, |w| w.write_sample(1i32 << 22).expect("write"));
        let audio = Pcm16Audio::from_wav_reader(&bytes[..]).expect("reads");
        assert_eq!(audio.samples, vec![16384]);
    }

    #[test]
    fn resampling_keeps_length_and_tone() {
        let input = sine(16_000, 440.0, 1.0);
        let output = input.resampled(24_000).expect("resamples");
        assert_eq!(output.rate, 24_000);
        assert_eq!(output.samples.len(), 24_000);
        // The tone keeps its level (0.5) within 5%, and nothing appears an octave up.
        let level = tone_level(&output.samples[2400..21600], 24_000, 440.0);
        assert!((level - 0.5).abs() < 0.025, "level {level}");
        assert!(tone_level(&output.samples, 24_000, 880.0) < 0.01);

        let back = output.resampled(16_000).expect("resamples");
        assert_eq!(back.samples.len(), 16_000);
        let level = tone_level(&back.samples[1600..14400], 16_000, 440.0);
        assert!((level - 0.5).abs() < 0.025, "level {level}");
    }

    #[test]
    fn frames_are_20_ms() {
        let audio = sine(16_000, 100.0, 0.05);
        let frames: Vec<_> = audio.frames(FRAME_MS).map(<[i16]>::len).collect();
        assert_eq!(frames, vec![320, 320, 160]);
        let bytes = pcm16_bytes(&audio.samples);
        assert_eq!(pcm16_samples(&bytes), audio.samples);
    }

    #[test]
    fn opus_round_trip_keeps_the_tone() {
        for rate in [16_000, 24_000] {
            let audio = sine(rate, 440.0, 0.5);
            let mut encoder = OpusFrameEncoder::new(rate).expect("encoder");
            let mut decoder = opus::Decoder::new(rate, opus::Channels::Mono).expect("decoder");
            let mut decoded = Vec::new();
            for frame in audio.frames(FRAME_MS) {
                let packet = encoder.encode(frame).expect("encodes");
                assert!(!packet.is_empty() && packet.len() < 400);
                let mut out = vec![0i16; encoder.frame_samples()];
                let n = decoder.decode(&packet, &mut out, false).expect("decodes");
                assert_eq!(n, encoder.frame_samples());
                decoded.extend_from_slice(&out[..n]);
            }
            assert_eq!(decoded.len(), audio.samples.len());
            // Lossy codec and a few ms of codec delay: compare tone levels, not samples.
            let quarter = decoded.len() / 4;
            let level = tone_level(&decoded[quarter..3 * quarter], rate, 440.0);
            assert!((level - 0.5).abs() < 0.1, "rate {rate}: level {level}");
        }
    }
}
