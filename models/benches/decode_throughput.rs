//! Decode throughput of the default bundle's decoder with 1, 8, 32 and 64 responses
//! batched in one step, against batch size 1 in the same run: the gain continuous
//! batching can give. Each row has a prefilled past of a typical turn's length and
//! takes one new token per step; the figure is tokens per second of wall time.
//!
//! `cargo bench -p mmrt-models --bench decode_throughput` prints a table (median of
//! several timed rounds per batch size, rounds interleaved across batch sizes so that
//! noise from other processes lands on all of them alike).

use std::time::{Duration, Instant};

use mmrt_models::{
    default_bundle_dir, Bundle, DecodeRow, KvCache, Modality, RowInput, RuntimeConfig,
};

/// Past positions per row: template tokens, an image, a few seconds of audio.
const PAST_LEN: usize = 80;
/// Decode steps per timed round (the caches grow by this many positions).
const STEPS: usize = 16;
/// Timed rounds per batch size; the median is reported.
const ROUNDS: usize = 7;
const BATCHES: [usize; 4] = [1, 8, 32, 64];

fn main() {
    let mut bundle =
        Bundle::load(&default_bundle_dir(), &RuntimeConfig::from_env()).expect("default bundle");
    let hidden = bundle.hidden_size();
    let prefix = vec![0.01f32; PAST_LEN * hidden];
    let token = bundle.embed_text(" five").expect("token")[..hidden].to_vec();

    // Prefill one set of caches per batch size.
    let mut prefilled = Vec::new();
    for batch in BATCHES {
        let mut caches = vec![KvCache::default(); batch];
        let mut rows: Vec<DecodeRow<'_>> = caches
            .iter_mut()
            .map(|cache| DecodeRow {
                cache,
                input: RowInput::Embeds(prefix.clone()),
                modality: vec![Modality::Text; PAST_LEN],
            })
            .collect();
        bundle.decoder.forward(&mut rows).expect("prefill");
        prefilled.push(caches);
    }

    // Interleaved rounds: every batch size once per round, one warm-up round first.
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); BATCHES.len()];
    for round in 0..=ROUNDS {
        for (b, caches) in prefilled.iter().enumerate() {
            let mut caches = caches.clone();
            let started = Instant::now();
            for _ in 0..STEPS {
                let mut rows: Vec<DecodeRow<'_>> = caches
                    .iter_mut()
                    .map(|cache| DecodeRow {
                        cache,
                        input: RowInput::Embeds(token.clone()),
                        modality: vec![Modality::Text],
                    })
                    .collect();
                bundle.decoder.forward(&mut rows).expect("step");
            }
            if round > 0 {
                times[b].push(started.elapsed());
            }
        }
    }

    let tokens_per_s = |b: usize| {
        let mut t = times[b].clone();
        t.sort();
        let median = t[t.len() / 2];
        (BATCHES[b] * STEPS) as f64 / median.as_secs_f64()
    };
    let single = tokens_per_s(0);
    println!("decode throughput, past {PAST_LEN}, {STEPS} steps, median of {ROUNDS} rounds");
    println!("| responses | step ms | tokens/s | gain over 1 |");
    println!("|---:|---:|---:|---:|");
    for (b, batch) in BATCHES.iter().enumerate() {
        let rate = tokens_per_s(b);
        println!(
            "| {batch} | {:.3} | {rate:.0} | {:.2}x |",
            1000.0 * *batch as f64 / rate,
            rate / single
        );
    }
}
