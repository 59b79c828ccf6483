//! The Silero VAD model on its own OS thread (`mmrt-vad`), shared by every session.
//!
//! A session sends the whole windows its latest audio completed, with its model state
//! ([`VadStream`]), and waits for the speech probabilities; the state travels with the
//! job and comes back with the answer, so the thread keeps nothing per session and a
//! closed session leaves nothing behind. Each turn of the loop takes every job queued
//! and scores them in one [`SileroVad::push_batch`] call: one model run per window step
//! for all sessions together.

use std::time::{Duration, Instant};

use mmrt_models::silero::WINDOW;
use mmrt_models::{ModelError, SileroVad, VadStream};
use mmrt_protocol::{ErrorCode, ProtocolError};
use tokio::sync::{mpsc, oneshot};

use crate::metrics::metrics;
use crate::vad::ScoreRequest;

/// The model label of this thread's calls in `mmrt_batch_size` and `mmrt_model_seconds`.
pub const MODEL_LABEL: &str = "silero_vad";

/// How long a session waits for a verdict before giving up on it.
const VAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Most sessions scored in one call; more wait for the next turn of the loop.
const MAX_BATCH: usize = 256;

/// The model's state for a session, and its probabilities or why there are none.
type Verdict = (VadStream, Result<Vec<f32>, ModelError>);

struct VadJob {
    request: ScoreRequest,
    reply: oneshot::Sender<Verdict>,
}

/// A cheap handle to the VAD thread.
#[derive(Clone)]
pub struct VadHandle {
    /// Bounded: a session has at most one job out (it waits for each verdict), so a
    /// queue as deep as the session limit only fills if sessions outnumber it.
    jobs: mpsc::Sender<VadJob>,
}

impl VadHandle {
    /// Scores `request` and returns the session's advanced model state with one speech
    /// probability per window.
    pub async fn score(
        &self,
        request: ScoreRequest,
    ) -> Result<(VadStream, Vec<f32>), ProtocolError> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .try_send(VadJob { request, reply })
            .map_err(|err| match err {
                mpsc::error::TrySendError::Full(_) => {
                    ProtocolError::new(ErrorCode::Overloaded, "the VAD model queue is full")
                }
                mpsc::error::TrySendError::Closed(_) => {
                    ProtocolError::new(ErrorCode::InternalError, "the VAD model thread has stopped")
                }
            })?;
        match tokio::time::timeout(VAD_TIMEOUT, answer).await {
            Ok(Ok((stream, Ok(probabilities)))) => Ok((stream, probabilities)),
            Ok(Ok((_, Err(err)))) => Err(ProtocolError::new(
                ErrorCode::ModelError,
                format!("voice activity detection failed: {err}"),
            )),
            Ok(Err(_)) => Err(ProtocolError::new(
                ErrorCode::InternalError,
                "the VAD model thread dropped the job",
            )),
            Err(_) => Err(ProtocolError::new(
                ErrorCode::Timeout,
                "the VAD model did not answer in time",
            )),
        }
    }
}

/// Starts the `mmrt-vad` thread on a loaded model; `queue` bounds the jobs waiting.
pub fn start(model: SileroVad, queue: usize) -> std::io::Result<VadHandle> {
    let (jobs, rx) = mpsc::channel(queue.max(1));
    std::thread::Builder::new()
        .name("mmrt-vad".into())
        .spawn(move || run(model, rx))?;
    Ok(VadHandle { jobs })
}

fn run(mut model: SileroVad, mut jobs: mpsc::Receiver<VadJob>) {
    while let Some(first) = jobs.blocking_recv() {
        // Everything queued meanwhile shares the call.
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }

        let started = Instant::now();
        let result = {
            let (mut streams, samples): (Vec<&mut VadStream>, Vec<&[f32]>) = batch
                .iter_mut()
                .map(|job| {
                    let ScoreRequest { stream, samples } = &mut job.request;
                    (stream, samples.as_slice())
                })
                .unzip();
            model.push_batch(&mut streams, &samples)
        };
        let elapsed = started.elapsed();
        metrics().model_call(MODEL_LABEL, batch.len(), elapsed.as_secs_f64());
        let windows: usize = batch
            .iter()
            .map(|job| job.request.samples.len() / WINDOW)
            .sum();
        tracing::trace!(sessions = batch.len(), windows, ?elapsed, "vad batch");

        // A session that went away meanwhile drops its answer, and its state with it.
        match result {
            Ok(probabilities) => {
                for (job, p) in batch.into_iter().zip(probabilities) {
                    let _ = job.reply.send((job.request.stream, Ok(p)));
                }
            }
            Err(err) => {
                tracing::error!(?err, "vad batch failed");
                let message = err.to_string();
                for job in batch {
                    let failed = ModelError::Inference {
                        model: "silero vad".into(),
                        message: message.clone(),
                    };
                    let _ = job.reply.send((job.request.stream, Err(failed)));
                }
            }
        }
    }
}
