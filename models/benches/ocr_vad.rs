//! Latency of the assistant's perception models on one intra-op thread (as configured
//! by `RuntimeConfig::from_env`): PP-OCRv4 on a 640x480 frame with three printed lines
//! (detection alone, and detection plus recognition), and Silero VAD per 32 ms window
//! for one stream and for 16 streams batched.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mmrt_models::silero::WINDOW;
use mmrt_models::{ImagePreprocessor, OcrReader, RuntimeConfig, SileroVad};

fn ocr(c: &mut Criterion) {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../samples/assistant/note.png");
    let bytes = std::fs::read(&path).expect("samples/assistant/note.png");
    let frame = ImagePreprocessor::decode(&bytes).expect("decode");
    assert_eq!((frame.width(), frame.height()), (640, 480));
    let mut reader = OcrReader::load_pinned(&RuntimeConfig::from_env()).expect("ocr models");
    assert_eq!(reader.read(&frame).expect("read").len(), 3);

    let mut group = c.benchmark_group("ocr_640x480");
    group.sample_size(20);
    group.bench_function("detect", |b| {
        b.iter(|| reader.detect(&frame).expect("detect"))
    });
    group.bench_function("read", |b| b.iter(|| reader.read(&frame).expect("read")));
    group.finish();
}

fn vad(c: &mut Criterion) {
    let mut vad = SileroVad::load_pinned(&RuntimeConfig::from_env()).expect("silero vad");
    // A quiet tone: the cost does not depend on the content.
    let window: Vec<f32> = (0..WINDOW).map(|i| 0.1 * (i as f32 * 0.07).sin()).collect();

    let mut group = c.benchmark_group("silero_window");
    for streams in [1usize, 16] {
        let mut states: Vec<_> = (0..streams).map(|_| vad.new_stream()).collect();
        let inputs: Vec<&[f32]> = vec![&window; streams];
        group.throughput(Throughput::Elements(streams as u64));
        group.bench_with_input(BenchmarkId::new("streams", streams), &streams, |b, _| {
            b.iter(|| {
                let mut refs: Vec<_> = states.iter_mut().collect();
                vad.push_batch(&mut refs, &inputs).expect("push")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, ocr, vad);
criterion_main!(benches);
