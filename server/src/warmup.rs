//! The warm-up generation run at start, so that the first client does not pay for
//! ONNX Runtime's lazy initialization, and `/readyz` says ready only after the whole
//! pipeline has worked once.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mmrt_models::{FillPolicy, Modality, SamplingParams, TurnEmbeddings};
use tokio::sync::{mpsc, oneshot};

use crate::engine::{EngineHandle, GenerateRequest, GenerationEvent, Job};

/// Longest the warm-up may take; a slow first load on a cold disk fits comfortably.
const WARMUP_TIMEOUT: Duration = Duration::from_secs(300);

/// Why the warm-up failed.
#[derive(Debug, thiserror::Error)]
pub enum WarmupError {
    #[error("the engine refused the warm-up job: {0}")]
    Submit(#[from] crate::engine::SubmitError),
    #[error("the engine stopped during warm-up")]
    Stopped,
    #[error("the model failed during warm-up: {0}")]
    Model(#[from] mmrt_models::ModelError),
    #[error("the warm-up took longer than {0:?}")]
    Timeout(Duration),
}

/// Embeds a short text and generates two tokens from it, with every other modality
/// filled by its null embedding; a cascade's stages each run once first.
pub async fn run(engine: &EngineHandle) -> Result<Duration, WarmupError> {
    let started = Instant::now();
    tokio::time::timeout(WARMUP_TIMEOUT, generate(engine))
        .await
        .map_err(|_| WarmupError::Timeout(WARMUP_TIMEOUT))??;
    Ok(started.elapsed())
}

async fn generate(engine: &EngineHandle) -> Result<(), WarmupError> {
    let info = engine.info().clone();
    let mut turn = TurnEmbeddings::default();
    if info.text_prompt {
        turn.texts.insert(Modality::Text, "warm up".into());
    } else {
        let (tx, rx) = oneshot::channel();
        engine.submit(Job::EmbedText {
            text: "warm up".into(),
            reply: tx,
        })?;
        let embeds = rx.await.map_err(|_| WarmupError::Stopped)??;
        turn.by_modality.insert(Modality::Text, embeds);
    }
    // Each stage runs once too: half a second of quiet, a blank frame.
    if info.transcribes {
        let (deltas, _quiet) = mpsc::channel(64);
        let (tx, rx) = oneshot::channel();
        engine.submit(Job::Transcribe {
            pcm: vec![0.0; 8000],
            deltas,
            reply: tx,
        })?;
        rx.await.map_err(|_| WarmupError::Stopped)??;
    }
    if info.reads {
        let (tx, rx) = oneshot::channel();
        engine.submit(Job::ReadText {
            image: Arc::new(image::RgbImage::from_pixel(
                64,
                64,
                image::Rgb([255, 255, 255]),
            )),
            reply: tx,
        })?;
        rx.await.map_err(|_| WarmupError::Stopped)??;
    }

    let policies = BTreeMap::from([
        (Modality::Image, FillPolicy::Null),
        (Modality::Audio, FillPolicy::Null),
        (Modality::Text, FillPolicy::Null),
    ]);
    let (events_tx, mut events) = mpsc::channel(64);
    engine.submit(Job::Generate(GenerateRequest {
        audio_tail: None,
        turn,
        policies,
        sampling: SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
        },
        max_new_tokens: 2,
        cancel: Arc::new(AtomicBool::new(false)),
        events: events_tx,
    }))?;
    loop {
        match events.recv().await {
            Some(GenerationEvent::Finished { .. } | GenerationEvent::Cancelled { .. }) => {
                return Ok(())
            }
            Some(GenerationEvent::Failed(err)) => return Err(err.into()),
            Some(_) => {}
            None => return Err(WarmupError::Stopped),
        }
    }
}
