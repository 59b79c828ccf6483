//! Audio and video ingest for one session: decoding (PCM16, Opus), resampling to the
//! model's rate, turn detection, chunking for the streaming encoder, and sampling video
//! frames to the session's frame rate.

use std::collections::VecDeque;

use mmrt_models::{pcm16_to_f32, AudioChunker, StreamResampler};
use mmrt_protocol::{ErrorCode, ProtocolError};

use crate::vad::{EnergyVad, VadConfig, VadEvent};

/// What one piece of input audio did.
#[derive(Debug, Default)]
pub struct AudioOutcome {
    /// Encoder chunks completed, in order.
    pub chunks: Vec<Vec<f32>>,
    /// Turn-detection transitions, each with the chunks completed before it.
    pub events: Vec<(VadEvent, Vec<Vec<f32>>)>,
}

/// The audio path of a session, from client bytes to encoder chunks.
pub struct AudioIngest {
    input_rate: u32,
    model_rate: u32,
    resampler: StreamResampler,
    opus: Option<opus::Decoder>,
    chunker: AudioChunker,
    vad: Option<EnergyVad>,
    /// Recent audio kept while nobody speaks, so a turn starts with its lead-in.
    preroll: VecDeque<f32>,
    preroll_len: usize,
    /// Whether audio currently flows into the chunker (always, for manual turns).
    capturing: bool,
    /// Samples (model rate) in the uncommitted buffer.
    buffered: usize,
}

impl AudioIngest {
    pub fn new(
        input_rate: u32,
        model_rate: u32,
        chunker: AudioChunker,
        vad: Option<(VadConfig, u32)>,
    ) -> Result<AudioIngest, ProtocolError> {
        let resampler = StreamResampler::new(input_rate, model_rate)
            .map_err(|e| ProtocolError::new(ErrorCode::InvalidField, e.to_string()))?;
        let mut ingest = AudioIngest {
            input_rate,
            model_rate,
            resampler,
            opus: None,
            chunker,
            vad: None,
            preroll: VecDeque::new(),
            preroll_len: 0,
            capturing: true,
            buffered: 0,
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
                    None => self.vad = Some(EnergyVad::new(config, self.model_rate)),
                }
                self.preroll_len = (self.model_rate as u64 * prefix_ms as u64 / 1000) as usize;
                if !self.vad.as_ref().is_some_and(EnergyVad::is_speaking) && self.buffered == 0 {
                    self.capturing = false;
                }
            }
            None => {
                self.vad = None;
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
        self.vad.as_ref().map(EnergyVad::now_ms).unwrap_or(0)
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
        let Some(vad) = self.vad.as_mut() else {
            self.buffered += samples.len();
            outcome.chunks = self.chunker.push(samples);
            return outcome;
        };
        // Judge and route 20 ms at a time so that a turn boundary cuts at the right
        // sample.
        let step = (self.model_rate / 50) as usize;
        let mut pending_chunks = Vec::new();
        for piece in samples.chunks(step) {
            let events = vad.push(piece);
            for event in &events {
                match event {
                    VadEvent::SpeechStarted { .. } => {
                        if !self.capturing {
                            self.capturing = true;
                            let lead: Vec<f32> = self.preroll.drain(..).collect();
                            self.buffered += lead.len();
                            pending_chunks.extend(self.chunker.push(&lead));
                        }
                    }
                    VadEvent::SpeechStopped { .. } => {}
                }
            }
            if self.capturing {
                self.buffered += piece.len();
                pending_chunks.extend(self.chunker.push(piece));
            } else {
                self.preroll.extend(piece);
                while self.preroll.len() > self.preroll_len {
                    self.preroll.pop_front();
                }
            }
            for event in events {
                outcome
                    .events
                    .push((event, std::mem::take(&mut pending_chunks)));
            }
        }
        outcome.chunks = pending_chunks;
        outcome
    }

    /// Ends the buffered turn: the last chunks (padded with silence), or `None` when
    /// the buffer is empty. Turn detection then waits for the next speech.
    pub fn commit(&mut self) -> Option<Vec<Vec<f32>>> {
        if self.buffered == 0 {
            return None;
        }
        let chunks = self.chunker.finish();
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
    fn frames_are_sampled_to_the_rate() {
        let mut sampler = FrameSampler::default();
        let kept: Vec<bool> = (0..10)
            .map(|i| sampler.admit(i * 100, 2.0).expect("in order"))
            .collect();
        assert_eq!(kept.iter().filter(|k| **k).count(), 2);
        assert!(sampler.admit(50, 2.0).is_err());
    }
}
