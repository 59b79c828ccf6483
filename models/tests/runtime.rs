//! The runtime on the default bundle: batching equals one-at-a-time, the KV cache gives
//! what a full recompute gives, streaming equals whole-utterance encoding, and text
//! streams without split characters.

use mmrt_models::{
    default_bundle_dir, AudioStreamState, Bundle, DecodeRow, FillPolicy, KvCache, Modality, Prefix,
    RowInput, RuntimeConfig, TurnEmbeddings,
};

fn bundle() -> Bundle {
    Bundle::load(&default_bundle_dir(), &RuntimeConfig::from_env()).expect("default bundle")
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// A test tone with a little noise, at the model's rate.
fn speechlike(seconds: f32, seed: u32) -> Vec<f32> {
    let n = (16000.0 * seconds) as usize;
    let mut state = seed.wrapping_mul(2654435761).wrapping_add(1);
    (0..n)
        .map(|i| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let noise = (state as f32 / u32::MAX as f32 - 0.5) * 0.05;
            let t = i as f32 / 16000.0;
            0.3 * (2.0 * std::f32::consts::PI * (180.0 + 40.0 * seed as f32) * t).sin() + noise
        })
        .collect()
}

fn prefix_for(bundle: &mut Bundle, text: &str, audio_seconds: Option<f32>) -> Prefix {
    let mut turn = TurnEmbeddings::default();
    turn.by_modality
        .insert(Modality::Text, bundle.embed_text(text).expect("text"));
    if let Some(seconds) = audio_seconds {
        let audio = bundle.encode_audio(&speechlike(seconds, 3)).expect("audio");
        turn.by_modality.insert(Modality::Audio, audio);
    }
    bundle
        .assemble_prefix(&turn, &|_| FillPolicy::Null)
        .expect("prefix")
        .0
}

#[test]
fn batched_generation_equals_one_at_a_time() {
    let mut bundle = bundle();
    let prefixes = vec![
        prefix_for(&mut bundle, "what is two plus three", None),
        prefix_for(&mut bundle, "which is larger, four or nine", Some(1.3)),
        prefix_for(&mut bundle, "what do you see", Some(0.4)),
    ];
    assert!(
        prefixes[0].len() != prefixes[1].len(),
        "rows must differ in length"
    );
    let params = bundle.default_params();
    let batched = bundle.generate_batch(&prefixes, &params).expect("batched");
    for (prefix, together) in prefixes.iter().zip(&batched) {
        let alone = bundle
            .generate_batch(std::slice::from_ref(prefix), &params)
            .expect("alone")
            .remove(0);
        assert_eq!(alone.token_ids, together.token_ids);
        assert_eq!(alone.text, together.text);
    }
}

#[test]
fn decode_steps_with_the_cache_match_a_full_prefill() {
    let mut bundle = bundle();
    let prefix = prefix_for(&mut bundle, "what is six times seven", Some(0.8));
    let hidden = bundle.hidden_size();
    let extra = bundle.embed_text(" and").expect("text");
    let extra_tokens = extra.len() / hidden;

    // Prefill everything at once.
    let mut full = prefix.clone();
    full.embeds.extend_from_slice(&extra);
    full.modality
        .extend(std::iter::repeat_n(Modality::Text, extra_tokens));
    let mut cache = KvCache::default();
    let once = bundle
        .decoder
        .forward(&mut [DecodeRow {
            cache: &mut cache,
            input: RowInput::Embeds(full.embeds.clone()),
            modality: full.modality.clone(),
        }])
        .expect("full prefill")
        .remove(0);

    // Prefill the prefix, then feed the extra tokens one step at a time.
    let mut cache = KvCache::default();
    bundle
        .decoder
        .forward(&mut [DecodeRow {
            cache: &mut cache,
            input: RowInput::Embeds(prefix.embeds.clone()),
            modality: prefix.modality.clone(),
        }])
        .expect("prefill");
    let mut last = Vec::new();
    for token in extra.chunks_exact(hidden) {
        last = bundle
            .decoder
            .forward(&mut [DecodeRow {
                cache: &mut cache,
                input: RowInput::Embeds(token.to_vec()),
                modality: vec![Modality::Text],
            }])
            .expect("step")
            .remove(0);
    }
    assert_eq!(cache.len(), full.len());
    let diff = max_abs_diff(&once, &last);
    assert!(
        diff < 1e-3,
        "cached steps differ from a full prefill by {diff}"
    );
}

#[test]
fn a_batch_step_with_different_past_lengths_matches_single_steps() {
    let mut bundle = bundle();
    let short = prefix_for(&mut bundle, "hi", None);
    let long = prefix_for(&mut bundle, "what is eight minus five", Some(1.0));
    let token = bundle.embed_text(" the").expect("token");

    let mut single = Vec::new();
    for prefix in [&short, &long] {
        let mut cache = KvCache::default();
        let mut rows = [DecodeRow {
            cache: &mut cache,
            input: RowInput::Embeds(prefix.embeds.clone()),
            modality: prefix.modality.clone(),
        }];
        bundle.decoder.forward(&mut rows).expect("prefill");
        let mut rows = [DecodeRow {
            cache: &mut cache,
            input: RowInput::Embeds(token.clone()),
            modality: vec![Modality::Text],
        }];
        single.push(bundle.decoder.forward(&mut rows).expect("step").remove(0));
    }

    let (mut a, mut b) = (KvCache::default(), KvCache::default());
    bundle
        .decoder
        .forward(&mut [
            DecodeRow {
                cache: &mut a,
                input: RowInput::Embeds(short.embeds.clone()),
                modality: short.modality.clone(),
            },
            DecodeRow {
                cache: &mut b,
                input: RowInput::Embeds(long.embeds.clone()),
                modality: long.modality.clone(),
            },
        ])
        .expect("batched prefill");
    assert_eq!((a.len(), b.len()), (short.len(), long.len()));
    let batched = bundle
        .decoder
        .forward(&mut [
            DecodeRow {
                cache: &mut a,
                input: RowInput::Embeds(token.clone()),
                modality: vec![Modality::Text],
            },
            DecodeRow {
                cache: &mut b,
                input: RowInput::Embeds(token.clone()),
                modality: vec![Modality::Text],
            },
        ])
        .expect("batched step");
    for (alone, together) in single.iter().zip(&batched) {
        let diff = max_abs_diff(alone, together);
        assert!(diff < 1e-3, "batched step differs by {diff}");
    }
}

#[test]
fn streaming_audio_in_pieces_equals_whole_encoding() {
    let mut bundle = bundle();
    let pcm = speechlike(1.7, 5);
    let whole = bundle.encode_audio(&pcm).expect("whole");

    let mut chunker = bundle.audio_chunker().expect("chunker");
    let encoder = bundle.audio.as_mut().expect("audio encoder");
    let mut state: AudioStreamState = encoder.new_state();
    let mut streamed = Vec::new();
    // 20 ms pieces, as a client sends them.
    for piece in pcm.chunks(320) {
        for chunk in chunker.push(piece) {
            streamed.extend(
                encoder
                    .encode_chunks(&mut [(&mut state, &chunk)])
                    .expect("chunk")
                    .remove(0),
            );
        }
    }
    for chunk in chunker.finish() {
        streamed.extend(
            encoder
                .encode_chunks(&mut [(&mut state, &chunk)])
                .expect("chunk")
                .remove(0),
        );
    }
    let diff = max_abs_diff(&whole, &streamed);
    assert!(diff < 1e-4, "streamed audio embeddings differ by {diff}");
}

#[test]
fn batched_audio_chunks_equal_single_ones() {
    let mut bundle = bundle();
    let mut chunker = bundle.audio_chunker().expect("chunker");
    let a = {
        let mut c = chunker.push(&speechlike(0.7, 1));
        c.extend(chunker.finish());
        c
    };
    let b = {
        let mut c = chunker.push(&speechlike(0.7, 2));
        c.extend(chunker.finish());
        c
    };
    let encoder = bundle.audio.as_mut().expect("audio encoder");
    let (mut sa, mut sb) = (encoder.new_state(), encoder.new_state());
    let (mut ta, mut tb) = (encoder.new_state(), encoder.new_state());
    for (ca, cb) in a.iter().zip(&b) {
        let single_a = encoder
            .encode_chunks(&mut [(&mut sa, ca.as_slice())])
            .expect("a")
            .remove(0);
        let single_b = encoder
            .encode_chunks(&mut [(&mut sb, cb.as_slice())])
            .expect("b")
            .remove(0);
        let both = encoder
            .encode_chunks(&mut [(&mut ta, ca.as_slice()), (&mut tb, cb.as_slice())])
            .expect("both");
        assert!(max_abs_diff(&single_a, &both[0]) < 1e-4);
        assert!(max_abs_diff(&single_b, &both[1]) < 1e-4);
    }
}

#[test]
fn text_streams_whole_characters() {
    let bundle = bundle();
    let text = "naïve café — 数字 ✓ done";
    let ids = bundle.tokenizer.encode(text).expect("encode");
    assert!(ids.len() > 10);
    let mut decoder = mmrt_models::IncrementalDecoder::new();
    let mut streamed = String::new();
    for id in &ids {
        let delta = decoder.push(&bundle.tokenizer, *id).expect("push");
        assert!(!delta.contains('\u{FFFD}'), "split character in {delta:?}");
        streamed.push_str(&delta);
    }
    streamed.push_str(&decoder.finish(&bundle.tokenizer).expect("finish"));
    assert_eq!(streamed, bundle.tokenizer.decode(&ids).expect("decode"));
    assert_eq!(streamed, text);
}

#[test]
fn fill_policies_change_the_prefix_as_reported() {
    let mut bundle = bundle();
    let mut turn = TurnEmbeddings::default();
    turn.by_modality.insert(
        Modality::Text,
        bundle.embed_text("what do you see").expect("text"),
    );
    let hidden = bundle.hidden_size();

    let (omit, report) = bundle
        .assemble_prefix(&turn, &|_| FillPolicy::Omit)
        .expect("omit");
    assert_eq!(report[&Modality::Image], mmrt_models::SlotOutcome::Omitted);
    let (null, report) = bundle
        .assemble_prefix(&turn, &|_| FillPolicy::Null)
        .expect("null");
    assert_eq!(
        report[&Modality::Audio],
        mmrt_models::SlotOutcome::FilledByNull
    );
    let (completion, report) = bundle
        .assemble_prefix(&turn, &|_| FillPolicy::Completion)
        .expect("completion");
    assert_eq!(
        report[&Modality::Image],
        mmrt_models::SlotOutcome::FilledByCompletion
    );
    assert_eq!(report[&Modality::Text], mmrt_models::SlotOutcome::Present);
    assert!(null.len() > omit.len());
    assert_eq!(null.len(), completion.len());
    assert_ne!(null.embeds, completion.embeds);
    assert_eq!(null.embeds.len(), null.len() * hidden);
    assert!(completion.modality.contains(&Modality::Image));
    assert!(!omit.modality.contains(&Modality::Image));
}

#[test]
fn a_full_context_is_an_error_not_a_panic() {
    let mut bundle = bundle();
    let limit = bundle.decoder.spec().max_positions;
    let hidden = bundle.hidden_size();
    let mut cache = KvCache::default();
    let err = bundle
        .decoder
        .forward(&mut [DecodeRow {
            cache: &mut cache,
            input: RowInput::Embeds(vec![0.0; (limit + 1) * hidden]),
            modality: vec![Modality::Text; limit + 1],
        }])
        .expect_err("too long");
    assert_eq!(err.code(), "context_full");
    assert!(cache.is_empty());
}

#[test]
fn gpu_providers_fall_back_to_cpu_when_absent() {
    // The pinned CPU runtime has neither CUDA nor TensorRT: asking for them (alone or
    // through `auto`) must still give a working session on the CPU.
    for provider in ["auto", "cuda", "tensorrt"] {
        let config = RuntimeConfig {
            execution_provider: provider.parse().expect("provider name"),
            ..RuntimeConfig::from_env()
        };
        let graph = mmrt_models::session::Graph::load(
            &default_bundle_dir().join("text_embed.onnx"),
            &config,
        )
        .expect("falls back");
        assert_eq!(graph.provider(), "cpu", "{provider}");
    }
}
