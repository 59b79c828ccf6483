//! Voice activity detection for `server_vad` turns.
//!
//! Two detectors score audio frame by frame, and one state machine, [`TurnState`], turns
//! the scores into speech started and stopped events, so `threshold`,
//! `silence_duration_ms` and the start rule mean the same with either:
//!
//! - [`EnergyVad`] judges 20 ms frames by loudness. A frame's level in dBFS maps
//!   linearly onto a speech score in [0, 1] (-55 dBFS and below is 0, -15 dBFS and above
//!   is 1), so the `threshold` of OpenAI's API keeps its meaning: higher needs louder
//!   speech.
//! - [`ScoredVad`] keeps a session's audio while the Silero VAD model (run on its own
//!   thread, see [`crate::vad_thread`]) scores it in 32 ms windows of 16 kHz audio; the
//!   model's speech probability is the score.
//!
//! Speech starts after two frames at or above the threshold and stops after
//! `silence_duration_ms` of frames below it.

use std::collections::VecDeque;

use mmrt_models::silero::{self, VadStream};
use mmrt_models::StreamResampler;

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

/// The speech/silence state machine both detectors feed with per-frame scores.
#[derive(Debug, Clone)]
pub struct TurnState {
    config: VadConfig,
    /// Nominal length of one scored frame, counted towards the silence that ends speech.
    frame_ms: u64,
    /// How far below the threshold a frame must score to count as silence once speech
    /// runs (hysteresis); 0 for the energy detector.
    release: f32,
    speaking: bool,
    loud_run: u32,
    quiet_ms: u64,
    first_loud_ms: u64,
}

impl TurnState {
    pub fn new(config: VadConfig, frame_ms: u64, release: f32) -> TurnState {
        TurnState {
            config,
            frame_ms,
            release,
            speaking: false,
            loud_run: 0,
            quiet_ms: 0,
            first_loud_ms: 0,
        }
    }

    pub fn set_config(&mut self, config: VadConfig) {
        self.config = config;
    }

    pub fn is_speaking(&self) -> bool {
        self.speaking
    }

    /// Judges one frame that spans `start_ms..end_ms` on the session's audio clock and
    /// scored `score`; returns the transition it caused, if any.
    pub fn observe(&mut self, score: f32, start_ms: u64, end_ms: u64) -> Option<VadEvent> {
        let threshold = self.config.threshold;
        let loud = if self.speaking {
            score >= threshold - self.release
        } else {
            score >= threshold
        };
        if loud {
            if self.loud_run == 0 {
                self.first_loud_ms = start_ms;
            }
            self.loud_run += 1;
            self.quiet_ms = 0;
            if !self.speaking && self.loud_run >= START_FRAMES {
                self.speaking = true;
                return Some(VadEvent::SpeechStarted {
                    start_ms: self.first_loud_ms,
                });
            }
            return None;
        }
        self.loud_run = 0;
        if self.speaking {
            self.quiet_ms += self.frame_ms;
            if self.quiet_ms >= self.config.silence_duration_ms as u64 {
                self.speaking = false;
                self.quiet_ms = 0;
                return Some(VadEvent::SpeechStopped { end_ms });
            }
        }
        None
    }

    /// Forgets the current turn (after a clear or a commit).
    pub fn reset_turn(&mut self) {
        self.speaking = false;
        self.loud_run = 0;
        self.quiet_ms = 0;
    }
}

/// The loudness detector of one session's input stream.
#[derive(Debug, Clone)]
pub struct EnergyVad {
    turn: TurnState,
    sample_rate: u32,
    frame: Vec<f32>,
    /// Audio time of the next sample, in samples.
    clock: u64,
}

impl EnergyVad {
    pub fn new(config: VadConfig, sample_rate: u32) -> EnergyVad {
        EnergyVad {
            turn: TurnState::new(config, FRAME_MS, 0.0),
            sample_rate,
            frame: Vec::new(),
            clock: 0,
        }
    }

    pub fn set_config(&mut self, config: VadConfig) {
        self.turn.set_config(config);
    }

    pub fn is_speaking(&self) -> bool {
        self.turn.is_speaking()
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
            let start_ms = self.now_ms();
            self.clock += frame_len as u64;
            events.extend(
                self.turn
                    .observe(speech_score(energy), start_ms, self.now_ms()),
            );
        }
        events
    }

    /// Forgets the current state (after a clear or a manual commit).
    pub fn reset_turn(&mut self) {
        self.turn.reset_turn();
    }
}

/// Length of one Silero window on the session's clock, in ms.
pub const WINDOW_MS: u64 = silero::WINDOW as u64 * 1000 / silero::SAMPLE_RATE as u64;

/// Once speech runs, a Silero window must score this far below the threshold to count
/// as silence, as in Silero's own streaming iterator: its probability wavers inside
/// words, and without the margin a pause for breath would end the turn.
const SILERO_RELEASE: f32 = 0.15;

/// Whole windows of a session's audio for the VAD model, with the model's state for
/// that session; both come back with the verdict ([`ScoredVad::judged`]).
#[derive(Debug)]
pub struct ScoreRequest {
    pub stream: VadStream,
    /// 16 kHz mono, a whole number of windows.
    pub samples: Vec<f32>,
}

/// Turn detection on the Silero VAD model's speech probabilities for one session.
///
/// The model answers later, on its own thread, so the audio waits here: `push` keeps it
/// and says when whole windows are ready to score; `judged` takes the verdict and gives
/// back each window's audio with the transition it caused, in order.
#[derive(Debug)]
pub struct ScoredVad {
    turn: TurnState,
    model_rate: u32,
    /// Model-rate audio no verdict covers yet, oldest first. At most a window plus the
    /// resampler's latency: every request is answered or fails before the next push.
    unjudged: VecDeque<f32>,
    /// Model-rate audio to the 16 kHz the model hears (passes through at 16 kHz).
    to_model: StreamResampler,
    /// 16 kHz samples short of a whole window.
    partial: Vec<f32>,
    /// The model's state for this session; `None` while a request is out.
    stream: Option<VadStream>,
    /// Windows judged since the model's state began, and model-rate samples released
    /// for them: window `n` ends at model-rate sample `n * 512 * rate / 16000` (the
    /// resampler's few milliseconds of delay are not corrected for).
    windows: u64,
    released: u64,
    /// Model-rate samples judged or dropped: the session's audio clock.
    clock: u64,
}

impl ScoredVad {
    pub fn new(config: VadConfig, model_rate: u32) -> Result<ScoredVad, mmrt_models::ModelError> {
        Ok(ScoredVad {
            turn: TurnState::new(config, WINDOW_MS, SILERO_RELEASE),
            model_rate,
            unjudged: VecDeque::new(),
            to_model: StreamResampler::new(model_rate, silero::SAMPLE_RATE)?,
            partial: Vec::new(),
            stream: Some(VadStream::default()),
            windows: 0,
            released: 0,
            clock: 0,
        })
    }

    pub fn set_config(&mut self, config: VadConfig) {
        self.turn.set_config(config);
    }

    pub fn is_speaking(&self) -> bool {
        self.turn.is_speaking()
    }

    /// Milliseconds of audio judged.
    pub fn now_ms(&self) -> u64 {
        self.clock * 1000 / self.model_rate as u64
    }

    /// Keeps model-rate samples until judged; returns the windows to score once there
    /// is at least one whole window.
    pub fn push(&mut self, samples: &[f32]) -> Option<ScoreRequest> {
        self.unjudged.extend(samples);
        self.partial.extend(self.to_model.push(samples));
        let whole = self.partial.len() / silero::WINDOW * silero::WINDOW;
        if whole == 0 {
            return None;
        }
        let rest = self.partial.split_off(whole);
        Some(ScoreRequest {
            stream: self.stream.take().unwrap_or_default(),
            samples: std::mem::replace(&mut self.partial, rest),
        })
    }

    /// Takes the model's state and one probability per window back; returns each
    /// window's model-rate audio with the transition its score caused, oldest first.
    pub fn judged(
        &mut self,
        stream: VadStream,
        probabilities: &[f32],
    ) -> Vec<(Vec<f32>, Option<VadEvent>)> {
        self.stream = Some(stream);
        let mut pieces = Vec::with_capacity(probabilities.len());
        for &probability in probabilities {
            self.windows += 1;
            let end = self.windows * silero::WINDOW as u64 * self.model_rate as u64
                / silero::SAMPLE_RATE as u64;
            let take = (end.saturating_sub(self.released) as usize).min(self.unjudged.len());
            self.released += take as u64;
            let piece: Vec<f32> = self.unjudged.drain(..take).collect();
            let start_ms = self.now_ms();
            self.clock += take as u64;
            let event = self.turn.observe(probability, start_ms, self.now_ms());
            pieces.push((piece, event));
        }
        pieces
    }

    /// After a request that failed: drops the audio awaiting a verdict and starts the
    /// model's state afresh. The turn in progress, if any, goes on.
    pub fn restart(&mut self) {
        self.clock += self.unjudged.len() as u64;
        self.unjudged.clear();
        self.partial.clear();
        if let Ok(resampler) = StreamResampler::new(self.model_rate, silero::SAMPLE_RATE) {
            self.to_model = resampler;
        }
        self.stream = Some(VadStream::default());
        self.windows = 0;
        self.released = 0;
    }

    /// Takes out the audio that waits for a verdict (when turn detection is switched
    /// off and nothing will judge it).
    pub fn take_unjudged(&mut self) -> Vec<f32> {
        self.unjudged.drain(..).collect()
    }

    /// Forgets the current turn (after a clear or a commit).
    pub fn reset_turn(&mut self) {
        self.turn.reset_turn();
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

    const CONFIG: VadConfig = VadConfig {
        threshold: 0.5,
        silence_duration_ms: 300,
    };

    /// Feeds a scored detector `audio` in 20 ms pieces and answers every request with
    /// `score(window)`; returns the judged audio in order and the events.
    fn run_scored(
        vad: &mut ScoredVad,
        audio: &[f32],
        piece: usize,
        score: impl Fn(u64) -> f32,
    ) -> (Vec<f32>, Vec<VadEvent>) {
        let (mut judged, mut events, mut window) = (Vec::new(), Vec::new(), 0);
        for part in audio.chunks(piece) {
            let Some(request) = vad.push(part) else {
                continue;
            };
            assert_eq!(request.samples.len() % silero::WINDOW, 0, "whole windows");
            let windows = request.samples.len() / silero::WINDOW;
            let scores: Vec<f32> = (window..window + windows as u64).map(&score).collect();
            window += windows as u64;
            for (audio, event) in vad.judged(request.stream, &scores) {
                judged.extend(audio);
                events.extend(event);
            }
        }
        (judged, events)
    }

    #[test]
    fn the_state_machine_needs_two_loud_frames_and_enough_silence() {
        let mut turn = TurnState::new(CONFIG, 20, 0.0);
        let mut at = 0;
        let mut feed = |turn: &mut TurnState, score: f32| {
            at += 20;
            turn.observe(score, at - 20, at)
        };
        assert_eq!(feed(&mut turn, 0.9), None);
        assert_eq!(feed(&mut turn, 0.1), None, "one loud frame is a click");
        assert_eq!(feed(&mut turn, 0.6), None);
        assert_eq!(
            feed(&mut turn, 0.5),
            Some(VadEvent::SpeechStarted { start_ms: 40 })
        );
        for _ in 0..14 {
            assert_eq!(feed(&mut turn, 0.2), None);
        }
        assert_eq!(
            feed(&mut turn, 0.2),
            Some(VadEvent::SpeechStopped { end_ms: 380 })
        );
        assert!(!turn.is_speaking());
    }

    #[test]
    fn silero_scores_make_turns_with_a_release_margin() {
        let mut vad = ScoredVad::new(CONFIG, 16_000).expect("rates");
        let audio: Vec<f32> = (0..16_000 * 3).map(|i| (i % 97) as f32 / 1000.0).collect();
        // Windows 10..40 are speech, with a 384 ms dip inside the release margin (it
        // would end the turn without one); then silence.
        let score = |w: u64| match w {
            20..32 => 0.4,
            10..40 => 0.9,
            _ => 0.05,
        };
        let (judged, events) = run_scored(&mut vad, &audio, 320, score);
        assert_eq!(
            events,
            vec![
                VadEvent::SpeechStarted { start_ms: 320 },
                // 10 quiet windows (320 ms) from window 40 reach 300 ms of silence.
                VadEvent::SpeechStopped {
                    end_ms: 40 * 32 + 10 * 32
                },
            ]
        );
        // Every whole window's audio comes back once, in order; the rest waits.
        let whole = audio.len() / silero::WINDOW * silero::WINDOW;
        assert_eq!(judged, audio[..whole]);
        assert_eq!(vad.now_ms(), whole as u64 / 16);
    }

    #[test]
    fn the_same_scores_from_either_source_make_the_same_turn() {
        // A 20 ms frame clock and a 32 ms window clock over one second of speech
        // between silences: both start near the speech and stop after the silence.
        let speech = |ms: u64| (500..1500).contains(&ms);
        let mut energy_turn = TurnState::new(CONFIG, FRAME_MS, 0.0);
        let mut energy_events = Vec::new();
        for f in 0..150 {
            let (from, to) = (f * FRAME_MS, (f + 1) * FRAME_MS);
            let score = if speech(from) { 0.9 } else { 0.0 };
            energy_events.extend(energy_turn.observe(score, from, to));
        }
        let mut vad = ScoredVad::new(CONFIG, 16_000).expect("rates");
        let audio = vec![0.0; 16 * 3000];
        let (_, silero_events) = run_scored(&mut vad, &audio, 480, |w| {
            if speech(w * WINDOW_MS) {
                0.9
            } else {
                0.0
            }
        });
        assert_eq!(energy_events.len(), 2);
        assert_eq!(silero_events.len(), 2);
        for (e, s) in energy_events.iter().zip(&silero_events) {
            let (e, s) = match (e, s) {
                (
                    VadEvent::SpeechStarted { start_ms: e },
                    VadEvent::SpeechStarted { start_ms: s },
                ) => (*e, *s),
                (VadEvent::SpeechStopped { end_ms: e }, VadEvent::SpeechStopped { end_ms: s }) => {
                    (*e, *s)
                }
                other => panic!("events differ: {other:?}"),
            };
            assert!(e.abs_diff(s) <= WINDOW_MS, "{e} ms and {s} ms");
        }
    }

    #[test]
    fn at_24_khz_windows_cover_the_model_rate_audio_in_order() {
        let mut vad = ScoredVad::new(CONFIG, 24_000).expect("rates");
        let audio: Vec<f32> = (0..24_000 * 2)
            .map(|i| 0.3 * (i as f32 * 0.05).sin())
            .collect();
        let (judged, events) = run_scored(&mut vad, &audio, 480, |_| 0.9);
        assert_eq!(events, vec![VadEvent::SpeechStarted { start_ms: 0 }]);
        assert_eq!(
            judged,
            audio[..judged.len()],
            "released in order, none lost"
        );
        // Each window is 768 samples at 24 kHz; only the resampler's latency and the
        // last partial window are still waiting.
        assert!(audio.len() - judged.len() < 2 * 768, "{}", judged.len());
        assert_eq!(judged.len() % 768, 0);
    }

    #[test]
    fn a_failed_request_drops_the_waiting_audio_and_goes_on() {
        let mut vad = ScoredVad::new(CONFIG, 16_000).expect("rates");
        let request = vad.push(&[0.1; 1000]).expect("one whole window");
        drop(request);
        vad.restart();
        assert_eq!(vad.now_ms(), 62, "dropped audio still moves the clock");
        let request = vad.push(&[0.1; 512]).expect("a window");
        let pieces = vad.judged(request.stream, &[0.2]);
        assert_eq!(pieces.len(), 1);
        assert_eq!(pieces[0].0.len(), 512);
    }
}
