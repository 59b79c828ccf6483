//! Decoder step latency on the default bundle at batch 1, 8 and 32: each row has a
//! prefilled past of a typical turn's length and takes one new token per step.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use mmrt_models::{
    default_bundle_dir, Bundle, DecodeRow, KvCache, Modality, RowInput, RuntimeConfig,
};

fn decoder_step(c: &mut Criterion) {
    let mut bundle =
        Bundle::load(&default_bundle_dir(), &RuntimeConfig::from_env()).expect("default bundle");
    let hidden = bundle.hidden_size();
    // A typical prefix: special tokens, an image, a second of audio and a short request.
    let past_len = 40;
    let prefix = vec![0.01f32; past_len * hidden];
    let token = bundle.embed_text(" five").expect("token");
    let token = token[..hidden].to_vec();

    let mut group = c.benchmark_group("decoder_step");
    for batch in [1usize, 8, 32] {
        let mut caches = vec![KvCache::default(); batch];
        {
            let mut rows: Vec<DecodeRow<'_>> = caches
                .iter_mut()
                .map(|cache| DecodeRow {
                    cache,
                    input: RowInput::Embeds(prefix.clone()),
                    modality: vec![Modality::Text; past_len],
                })
                .collect();
            bundle.decoder.forward(&mut rows).expect("prefill");
        }
        group.bench_with_input(BenchmarkId::from_parameter(batch), &batch, |b, _| {
            b.iter_batched(
                || caches.clone(),
                |mut step_caches| {
                    let mut rows: Vec<DecodeRow<'_>> = step_caches
                        .iter_mut()
                        .map(|cache| DecodeRow {
                            cache,
                            input: RowInput::Embeds(token.clone()),
                            modality: vec![Modality::Text],
                        })
                        .collect();
                    bundle.decoder.forward(&mut rows).expect("step")
                },
                criterion::BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, decoder_step);
criterion_main!(benches);
