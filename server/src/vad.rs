//! Energy-based voice activity detection for `server_vad` turns.
//!
//! Audio is judged in 20 ms frames. A frame's level in dBFS maps linearly onto a
//! speech score in [0, 1] (-55 dBFS and below is 0, -15 dBFS and above is 1), so the
//! `threshold` of OpenAI's API keeps its meaning: higher needs louder speech. Speech
//! starts after two frames at or above the threshold and stops after
//! `silence_duration_ms` below it.

/// Frame length in milliseconds.
pub const FRAME_MS: u64 = 20;

const FLOOR_DB: f32 = -55.0;
const CEIL_DB: f32 = -15.0;
const START_FRAMES: u32 = 2;

/// What a frame of audio changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VadEvent {
    /// Speech began; `start_ms` is where it began on the session's audio clock.
    SpeechStarted { start_ms: u64 },
    /// Speech ended at `end_ms`.
    SpeechStopped { end_ms: u64 },
}

/// The detector's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VadConfig {
    pub threshold: f32,
    pub silence_duration_ms: u32,
}

/// The detector of one session's input stream.
#[derive(Debug, Clone)]
pub struct EnergyVad {
    config: VadConfig,
    sample_rate: u32,
    frame: Vec<f32>,
    /// Audio time of the next sample, in samples.
    clock: u64,
    speaking: bool,
    loud_run: u32,
    quiet_ms: u64,
    first_loud_sample: u64,
}

impl EnergyVad {
    pub fn new(config: VadConfig, sample_rate: u32) -> EnergyVad {
        EnergyVad {
            config,
            sample_rate,
            frame: Vec::new(),
            clock: 0,
            speaking: false,
            loud_run: 0,
            quiet_ms: 0,
            first_loud_sample: 0,
        }
    }

    pub fn set_config(&mut self, config: VadConfig) {
        self.config = config;
    }

    pub fn is_speaking(&self) -> bool {
        self.speaking
    }

    /// Milliseconds of audio seen.
    pub fn now_ms(&self) -> u64 {
        self.clock * 1000 / self.sample_rate as u64
    }

    /// Feeds samples; returns the transitions they caused, in order.
    pub fn push(&mut self, samples: &[f32]) -> Vec<VadEvent> {
        let frame_len = (self.sample_rate as u64 * FRAME_MS / 1000) as usize;
        let mut events = Vec::new();
        for &s in samples {
            self.frame.push(s);
            if self.frame.len() < frame_len {
                continue;
            }
            let energy: f32 = self.frame.iter().map(|x| x * x).sum::<f32>() / frame_len as f32;
            self.frame.clear();
            let frame_start = self.clock;
            self.clock += frame_len as u64;
            let score = speech_score(energy);
            if score >= self.config.threshold {
                if self.loud_run == 0 {
                    self.first_loud_sample = frame_start;
                }
                self.loud_run += 1;
                self.quiet_ms = 0;
                if !self.speaking && self.loud_run >= START_FRAMES {
                    self.speaking = true;
                    events.push(VadEvent::SpeechStarted {
                        start_ms: self.first_loud_sample * 1000 / self.sample_rate as u64,
                    });
                }
            } else {
                self.loud_run = 0;
                if self.speaking {
                    self.quiet_ms += FRAME_MS;
                    if self.quiet_ms >= self.config.silence_duration_ms as u64 {
                        self.speaking = false;
                        self.quiet_ms = 0;
                        events.push(VadEvent::SpeechStopped {
                            end_ms: self.now_ms(),
                        });
                    }
                }
            }
        }
        events
    }

    /// Forgets the current state (after a clear or a manual commit).
    pub fn reset_turn(&mut self) {
        self.speaking = false;
        self.loud_run = 0;
        self.quiet_ms = 0;
    }
}

/// Mean power of a frame to a score in [0, 1].
pub fn speech_score(mean_power: f32) -> f32 {
    let db = 10.0 * (mean_power.max(1e-12)).log10();
    ((db - FLOOR_DB) / (CEIL_DB - FLOOR_DB)).clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(ms: u64, amplitude: f32) -> Vec<f32> {
        (0..(16 * ms))
            .map(|i| amplitude * (i as f32 * 0.2).sin())
            .collect()
    }

    #[test]
    fn speech_between_silences_starts_and_stops() {
        let mut vad = EnergyVad::new(
            VadConfig {
                threshold: 0.5,
                silence_duration_ms: 300,
            },
            16000,
        );
        assert!(vad.push(&tone(500, 0.0005)).is_empty());
        let started = vad.push(&tone(400, 0.3));
        assert_eq!(started, vec![VadEvent::SpeechStarted { start_ms: 500 }]);
        let stopped = vad.push(&tone(600, 0.0005));
        assert_eq!(stopped, vec![VadEvent::SpeechStopped { end_ms: 1200 }]);
    }

    #[test]
    fn a_click_is_not_speech() {
        let mut vad = EnergyVad::new(
            VadConfig {
                threshold: 0.5,
                silence_duration_ms: 300,
            },
            16000,
        );
        let mut audio = tone(200, 0.0);
        audio.extend(tone(20, 0.5));
        audio.extend(tone(200, 0.0));
        assert!(vad.push(&audio).is_empty());
    }

    #[test]
    fn a_higher_threshold_needs_louder_speech() {
        let quiet_speech = tone(300, 0.02);
        let mut low = EnergyVad::new(
            VadConfig {
                threshold: 0.3,
                silence_duration_ms: 300,
            },
            16000,
        );
        let mut high = EnergyVad::new(
            VadConfig {
                threshold: 0.9,
                silence_duration_ms: 300,
            },
            16000,
        );
        assert!(!low.push(&quiet_speech).is_empty());
        assert!(high.push(&quiet_speech).is_empty());
    }
}
