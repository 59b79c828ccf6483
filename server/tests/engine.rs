//! The engine's batching invariants under a seeded random workload on the default
//! bundle: every response gets exactly one ending, events of a response arrive in order,
//! and a response's text is the same whether it shared its batches or ran alone (so
//! KV slots are never shared or mixed up).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mmrt_models::{Bundle, FillPolicy, Modality, RuntimeConfig, SamplingParams, TurnEmbeddings};
use mmrt_server::engine::{self, EngineHandle, GenerateRequest, GenerationEvent, Job};
use tokio::sync::{mpsc, oneshot};

const REQUESTS: [&str; 6] = [
    "what is two plus three",
    "which is larger, four or nine",
    "what do you see",
    "what is 7 times 8",
    "is it smaller than five",
    "hello",
];

/// A small deterministic generator, so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn start_engine(config: engine::EngineConfig) -> EngineHandle {
    let bundle = Bundle::load(
        &mmrt_models::default_bundle_dir(),
        &RuntimeConfig::from_env(),
    )
    .expect("default bundle");
    engine::start(bundle, config)
}

async fn embed(engine: &EngineHandle, text: &str) -> Vec<f32> {
    let (tx, rx) = oneshot::channel();
    engine
        .submit(Job::EmbedText {
            text: text.to_string(),
            reply: tx,
        })
        .expect("queue");
    rx.await.expect("answer").expect("embedding")
}

/// What one response produced.
#[derive(Debug, Default)]
struct Outcome {
    text: String,
    endings: usize,
    cancelled: bool,
    started: bool,
    out_of_order: bool,
}

async fn run_response(
    engine: EngineHandle,
    text_embeds: Vec<f32>,
    max_new_tokens: usize,
    cancel_after: Option<usize>,
) -> Outcome {
    let mut turn = TurnEmbeddings::default();
    turn.by_modality.insert(Modality::Text, text_embeds);
    let cancel = Arc::new(AtomicBool::new(false));
    let (tx, mut rx) = mpsc::channel(256);
    let mut policies = BTreeMap::new();
    policies.insert(Modality::Image, FillPolicy::Null);
    policies.insert(Modality::Audio, FillPolicy::Completion);
    engine
        .submit(Job::Generate(GenerateRequest {
            audio_tail: None,
            turn,
            policies,
            sampling: SamplingParams::default(),
            max_new_tokens,
            cancel: cancel.clone(),
            events: tx,
        }))
        .expect("queue");
    let mut outcome = Outcome::default();
    let mut deltas = 0;
    while let Ok(Some(event)) = tokio::time::timeout(Duration::from_secs(60), rx.recv()).await {
        if outcome.endings > 0 {
            outcome.out_of_order = true;
        }
        match event {
            GenerationEvent::Started { .. } => {
                if outcome.started || deltas > 0 {
                    outcome.out_of_order = true;
                }
                outcome.started = true;
            }
            GenerationEvent::Delta(d) => {
                if !outcome.started {
                    outcome.out_of_order = true;
                }
                outcome.text.push_str(&d);
                deltas += 1;
                if cancel_after == Some(deltas) {
                    cancel.store(true, Ordering::Relaxed);
                }
            }
            GenerationEvent::Finished { .. } => outcome.endings += 1,
            GenerationEvent::Cancelled { .. } => {
                outcome.endings += 1;
                outcome.cancelled = true;
            }
            GenerationEvent::Failed(err) => panic!("generation failed: {err}"),
        }
    }
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_concurrent_responses_keep_the_invariants() {
    let engine = start_engine(engine::EngineConfig {
        queue: 1024,
        ..engine::EngineConfig::default()
    });
    check_invariants(engine).await;
}

/// Fewer KV slots than responses, small passes and an encoder wait: responses queue
/// for slots, decode over several passes, and still keep every invariant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tight_slots_and_small_batches_keep_the_invariants() {
    let engine = start_engine(engine::EngineConfig {
        queue: 1024,
        max_active_responses: 5,
        max_decode_batch: 3,
        max_prefill_batch: 2,
        encoder_max_batch: 2,
        encoder_max_wait: Duration::from_millis(3),
        ..engine::EngineConfig::default()
    });
    check_invariants(engine).await;
}

async fn check_invariants(engine: EngineHandle) {
    let mut embeds = Vec::new();
    for text in REQUESTS {
        embeds.push(embed(&engine, text).await);
    }

    // Each request alone: the reference texts.
    let mut alone = Vec::new();
    for e in &embeds {
        let outcome = run_response(engine.clone(), e.clone(), 24, None).await;
        assert_eq!(outcome.endings, 1);
        alone.push(outcome.text);
    }

    for seed in [1u64, 7, 42] {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let mut tasks = Vec::new();
        let mut plan = Vec::new();
        for _ in 0..24 {
            let which = rng.below(REQUESTS.len() as u64) as usize;
            let cancel_after = (rng.below(4) == 0).then(|| 1 + rng.below(3) as usize);
            plan.push((which, cancel_after));
            let engine = engine.clone();
            let e = embeds[which].clone();
            let delay = Duration::from_millis(rng.below(30));
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                run_response(engine, e, 24, cancel_after).await
            }));
        }
        for ((which, cancel_after), task) in plan.into_iter().zip(tasks) {
            let outcome = task.await.expect("task");
            assert_eq!(outcome.endings, 1, "seed {seed}: one ending per response");
            assert!(!outcome.out_of_order, "seed {seed}: events out of order");
            assert!(outcome.started, "seed {seed}: started before anything else");
            if outcome.cancelled {
                assert!(cancel_after.is_some(), "seed {seed}: cancelled unasked");
                assert!(
                    alone[which].starts_with(&outcome.text),
                    "seed {seed}: a cancelled response's text is a prefix of the full one"
                );
            } else {
                assert_eq!(
                    outcome.text, alone[which],
                    "seed {seed}: batched text differs from the text generated alone"
                );
            }
        }
    }
    // Every slot is free again.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(engine.active_responses(), 0);
}
