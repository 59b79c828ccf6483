//! The installed `assistant-en` bundle (`models/assistant/install.sh`), loaded with
//! `Bundle::load` and run by the Rust runtime, against the references the Python
//! converters wrote: SmolLM2's first-step logits and greedy answers
//! (`models/assistant/reference/smollm.json`), Whisper's transcript of a committed
//! recording (`reference/whisper.json`) and PP-OCR's reading of the committed images
//! (`samples/assistant/images.json`).
//!
//! The bundle is `$MMRT_ASSISTANT_DIR`, else `<cache>/bundles/assistant-en` with the
//! cache of `RuntimeConfig::from_env` (`$MMRT_CACHE_DIR`, else `~/.cache/mmrt`). When it
//! is missing every test prints `SKIPPED` and passes, unless `MMRT_REQUIRE_ASSISTANT`
//! is set (as CI does after installing it). The bundle is loaded once and
//! shared, since loading it (checksums of 440 MB, four graphs) takes seconds.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, OnceLock};

use mmrt_models::{
    Bundle, DecodeRow, FillPolicy, FinishReason, KvCache, Modality, Prefix, RowInput,
    RuntimeConfig, TurnEmbeddings,
};
use serde_json::Value;

mod common;
use common::{assistant_dir, ids, read_json, repo, skip_missing};

/// Logits of the same graph under another ONNX Runtime build (the reference came from
/// the Python package) differ by float rounding, ~1e-5 here.
const LOGIT_TOLERANCE: f32 = 1e-2;

/// The loaded bundle, or `None` (after saying so) when it is not installed.
fn bundle(test: &str) -> Option<MutexGuard<'static, Bundle>> {
    static BUNDLE: OnceLock<Option<Mutex<Bundle>>> = OnceLock::new();
    let loaded = BUNDLE.get_or_init(|| {
        let dir = assistant_dir();
        if !dir.join("bundle.toml").exists() {
            return None;
        }
        let mut config = RuntimeConfig::from_env();
        config.intra_threads = 2;
        let bundle = Bundle::load(&dir, &config)
            .unwrap_or_else(|e| panic!("loading {}: {e}", dir.display()));
        Some(Mutex::new(bundle))
    });
    match loaded {
        // A test that failed while holding the lock leaves the bundle as usable as before.
        Some(bundle) => Some(bundle.lock().unwrap_or_else(|e| e.into_inner())),
        None => {
            skip_missing(test, "assistant-en bundle", &assistant_dir());
            None
        }
    }
}

fn smollm_reference() -> Vec<Value> {
    read_json(&repo().join("models/assistant/reference/smollm.json"))["prompts"]
        .as_array()
        .expect("prompts")
        .clone()
}

#[test]
fn first_step_logits_match_the_reference() {
    let Some(mut bundle) = bundle("first_step_logits_match_the_reference") else {
        return;
    };
    for entry in smollm_reference() {
        let prompt = entry["prompt"].as_str().expect("prompt");
        let prompt_ids = ids(&entry["prompt_ids"]);
        assert_eq!(
            bundle.tokenizer.encode(prompt).expect("tokenize"),
            prompt_ids,
            "{prompt:?}"
        );

        // One prefill from an empty cache, as the reference did.
        let mut cache = KvCache::default();
        let logits = bundle
            .decoder
            .forward(&mut [DecodeRow {
                cache: &mut cache,
                modality: vec![Modality::Text; prompt_ids.len()],
                input: RowInput::Ids(prompt_ids),
            }])
            .expect("prefill")
            .remove(0);

        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|a, b| logits[*b].total_cmp(&logits[*a]));
        let want = entry["first_step_top5"].as_array().expect("top 5");
        let want_ids: Vec<usize> = want
            .iter()
            .map(|w| w["id"].as_u64().unwrap() as usize)
            .collect();
        let mut worst = 0.0f32;
        for w in want {
            let id = w["id"].as_u64().unwrap() as usize;
            let reference = w["logit"].as_f64().unwrap() as f32;
            let diff = (logits[id] - reference).abs();
            assert!(
                diff <= LOGIT_TOLERANCE,
                "token {id}: logit {} vs reference {reference} (tolerance {LOGIT_TOLERANCE})",
                logits[id]
            );
            worst = worst.max(diff);
        }
        assert_eq!(order[..5], want_ids[..], "top-5 ids");
        eprintln!(
            "top-5 {want_ids:?} as the reference, max |logit diff| {worst:.2e} \
             (tolerance {LOGIT_TOLERANCE})"
        );
    }
}

#[test]
fn greedy_answers_match_the_reference_in_one_batch() {
    let Some(mut bundle) = bundle("greedy_answers_match_the_reference_in_one_batch") else {
        return;
    };
    let entries = smollm_reference();
    // Both prompts together: rows of different lengths, left-padded.
    let prefixes: Vec<Prefix> = entries
        .iter()
        .map(|e| {
            let ids = ids(&e["prompt_ids"]);
            Prefix {
                modality: vec![Modality::Text; ids.len()],
                ids,
                embeds: Vec::new(),
            }
        })
        .collect();
    let mut params = bundle.default_params();
    params.max_new_tokens = 24;
    let answers = bundle.generate_batch(&prefixes, &params).expect("generate");
    for (entry, answer) in entries.iter().zip(&answers) {
        // The reference keeps the end token in its ids; a generation does not.
        let mut want = ids(&entry["answer_ids"]);
        let eos = bundle.tokenizer.eos;
        if want.last() == Some(&eos) {
            want.pop();
            assert_eq!(answer.finish, FinishReason::Eos);
        }
        eprintln!("{:?}", answer.text);
        assert_eq!(answer.token_ids, want);
        assert_eq!(answer.text, entry["answer_text"].as_str().unwrap());
    }
}

#[test]
fn a_typed_question_is_answered() {
    let Some(mut bundle) = bundle("a_typed_question_is_answered") else {
        return;
    };
    let turn = TurnEmbeddings {
        texts: BTreeMap::from([(Modality::Text, "What is the capital of France?".to_string())]),
        ..TurnEmbeddings::default()
    };
    let (prefix, slots) = bundle
        .assemble_prefix(&turn, &|_| FillPolicy::Omit)
        .expect("prefix");
    assert_eq!(
        slots.get(&Modality::Text),
        Some(&mmrt_models::SlotOutcome::Present)
    );
    let params = bundle.default_params();
    let answer = bundle
        .generate_batch(&[prefix], &params)
        .expect("generate")
        .remove(0);
    eprintln!("{:?} ({:?})", answer.text, answer.finish);
    assert!(answer.text.contains("Paris"), "{:?}", answer.text);
    assert_eq!(answer.finish, FinishReason::Eos);
}

#[test]
fn speech_is_transcribed_as_the_reference() {
    let Some(mut bundle) = bundle("speech_is_transcribed_as_the_reference") else {
        return;
    };
    let reference = read_json(&repo().join("models/assistant/reference/whisper.json"));
    let path = repo().join(reference["file"].as_str().expect("file"));
    let mut reader =
        hound::WavReader::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(reader.spec().sample_rate, 16_000);
    let pcm: Vec<f32> = reader
        .samples::<i16>()
        .map(|s| s.expect("sample") as f32 / 32768.0)
        .collect();
    let transcriber = bundle
        .transcriber
        .as_mut()
        .expect("assistant-en has a transcription stage");
    let transcript = transcriber.transcribe(&pcm).expect("transcribe");
    eprintln!(
        "{:?} (encoder {:?}, decode {:?})",
        transcript.text, transcript.encoder_time, transcript.decode_time
    );
    assert_eq!(transcript.tokens, ids(&reference["tokens"]));
    assert_eq!(
        transcript.text,
        reference["text"].as_str().unwrap().trim_start()
    );
}

#[test]
fn images_are_read_as_written() {
    let Some(mut bundle) = bundle("images_are_read_as_written") else {
        return;
    };
    let samples = repo().join("samples/assistant");
    let reader = bundle
        .reader
        .as_mut()
        .expect("assistant-en has a reading stage");
    for entry in read_json(&samples.join("images.json"))
        .as_array()
        .expect("a list of images")
    {
        let file = entry["image"].as_str().expect("image");
        let image = image::open(samples.join(file))
            .unwrap_or_else(|e| panic!("{file}: {e}"))
            .to_rgb8();
        let lines: Vec<String> = reader
            .read(&image)
            .expect("read")
            .into_iter()
            .map(|l| l.text)
            .collect();
        let want: Vec<&str> = entry["lines"]
            .as_array()
            .expect("lines")
            .iter()
            .map(|l| l.as_str().expect("line"))
            .collect();
        eprintln!("{file}: {lines:?}");
        assert_eq!(lines, want, "{file}");
    }
}
