//! Silero VAD on the committed spoken samples: silence scores low, speech scores high,
//! the onset lands near the true edge, and batched streams equal streams run alone.
//!
//! The model is fetched through the pinned-package cache (network on first use).

use std::path::PathBuf;

use mmrt_models::silero::{SileroVad, CONTEXT, WINDOW};
use mmrt_models::RuntimeConfig;

const RATE: usize = 16_000;
/// Window length in seconds.
const WINDOW_S: f32 = WINDOW as f32 / RATE as f32;

fn vad() -> SileroVad {
    SileroVad::load_pinned(&RuntimeConfig::from_env()).expect("silero vad")
}

/// A committed 16 kHz sample with one second of silence (digital zeros) before and
/// after it.
struct Padded {
    audio: Vec<f32>,
    /// The true start and end of the speech in seconds: the first and last sample
    /// above 2% of full scale.
    start: f32,
    end: f32,
    /// Where the recording itself ends; it starts at 1 s.
    recording_end: f32,
}

fn padded_sample(name: &str) -> Padded {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../samples")
        .join(name);
    let mut reader = hound::WavReader::open(&path).expect("sample wav");
    assert_eq!(reader.spec().sample_rate as usize, RATE, "{name}");
    assert_eq!(reader.spec().channels, 1, "{name}");
    let speech: Vec<f32> = reader
        .samples::<i16>()
        .map(|s| s.expect("sample") as f32 / 32768.0)
        .collect();
    let loud = |s: &&f32| s.abs() > 0.02;
    let first = speech.iter().position(|s| loud(&s)).expect("speech");
    let last = speech.iter().rposition(|s| loud(&s)).expect("speech");
    let mut audio = vec![0.0; RATE];
    audio.extend_from_slice(&speech);
    audio.extend(std::iter::repeat_n(0.0, RATE));
    let seconds = |samples: usize| samples as f32 / RATE as f32;
    Padded {
        start: seconds(RATE + first),
        end: seconds(RATE + last),
        recording_end: seconds(RATE + speech.len()),
        audio,
    }
}

/// Feeds `audio` in uneven pieces, as a network client would.
fn stream_probabilities(vad: &mut SileroVad, audio: &[f32]) -> Vec<f32> {
    let mut stream = vad.new_stream();
    let mut probabilities = Vec::new();
    let sizes = [160, 1000, 37, 512, 2048, 321];
    let mut at = 0;
    for size in sizes.iter().cycle() {
        if at >= audio.len() {
            break;
        }
        let piece = &audio[at..(at + size).min(audio.len())];
        probabilities.extend(vad.push(&mut stream, piece).expect("push"));
        at += piece.len();
    }
    assert_eq!(probabilities.len(), audio.len() / WINDOW);
    assert_eq!(stream.pending_samples(), audio.len() % WINDOW);
    probabilities
}

#[test]
fn silence_is_low_speech_is_high_and_onsets_are_close() {
    let mut vad = vad();
    for name in [
        "audio-text-times.wav",
        "audio-multiply.wav",
        "clip-audio-smaller.wav",
    ] {
        let Padded {
            audio,
            start,
            end,
            recording_end,
        } = padded_sample(name);
        let probabilities = stream_probabilities(&mut vad, &audio);
        let window_start = |i: usize| i as f32 * WINDOW_S;

        // Silence: every window wholly in the leading padding, and every window in
        // the trailing padding from 0.3 s after the speech (the model's state decays
        // over a few windows).
        for (i, p) in probabilities.iter().enumerate() {
            let (from, to) = (window_start(i), window_start(i + 1));
            if to <= 1.0 || from >= recording_end.max(end + 0.3) {
                assert!(
                    *p < 0.1,
                    "{name}: window at {from:.3}s scored {p:.3} in silence"
                );
            }
        }

        // Speech: most windows inside it score high.
        let inside: Vec<f32> = probabilities
            .iter()
            .enumerate()
            .filter(|(i, _)| window_start(*i) >= start && window_start(i + 1) <= end)
            .map(|(_, p)| *p)
            .collect();
        let high = inside.iter().filter(|p| **p > 0.5).count();
        assert!(
            high * 10 >= inside.len() * 8,
            "{name}: only {high} of {} speech windows above 0.5: {inside:?}",
            inside.len()
        );

        // Onset: the first window above 0.5 is within 0.2 s of the true edge.
        let onset = probabilities
            .iter()
            .position(|p| *p > 0.5)
            .map(window_start)
            .expect("an onset");
        let silence_max = probabilities
            .iter()
            .enumerate()
            .filter(|(i, _)| window_start(i + 1) <= 1.0)
            .map(|(_, p)| *p)
            .fold(0.0f32, f32::max);
        eprintln!(
            "{name}: onset {onset:.3}s vs {start:.3}s; {high}/{} speech windows > 0.5; \
             leading silence max {silence_max:.4}",
            inside.len()
        );
        assert!(
            (onset - start).abs() <= 0.2,
            "{name}: onset {onset:.3}s, speech starts at {start:.3}s"
        );
    }
}

#[test]
fn batched_streams_equal_streams_alone() {
    let mut vad = vad();
    let a = padded_sample("audio-text-times.wav").audio;
    let b = padded_sample("audio-multiply.wav").audio;
    // Different lengths, so some steps batch two streams and later steps only one.
    let b = &b[..b.len() - 7 * WINDOW - 100];
    let alone_a = stream_probabilities(&mut vad, &a);
    let alone_b = stream_probabilities(&mut vad, b);

    let (mut sa, mut sb) = (vad.new_stream(), vad.new_stream());
    let (mut together_a, mut together_b) = (Vec::new(), Vec::new());
    let chunk = 3000;
    for i in 0..a.len().max(b.len()).div_ceil(chunk) {
        let piece = |x: &[f32]| {
            let from = (i * chunk).min(x.len());
            x[from..((i + 1) * chunk).min(x.len())].to_vec()
        };
        let (pa, pb) = (piece(&a), piece(b));
        let mut out = vad
            .push_batch(&mut [&mut sa, &mut sb], &[&pa, &pb])
            .expect("batch");
        together_b.extend(out.pop().unwrap());
        together_a.extend(out.pop().unwrap());
    }
    for (alone, together) in [(alone_a, together_a), (alone_b, together_b)] {
        assert_eq!(alone.len(), together.len());
        let diff = alone
            .iter()
            .zip(&together)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max);
        assert!(diff < 1e-4, "batched probabilities differ by {diff}");
    }
}

#[test]
fn bad_samples_are_refused_and_keep_the_stream_usable() {
    let mut vad = vad();
    let mut stream = vad.new_stream();
    assert!(vad.push(&mut stream, &[0.0, f32::NAN]).is_err());
    assert_eq!(stream.pending_samples(), 0);
    let out = vad.push(&mut stream, &vec![0.0; WINDOW + CONTEXT]).unwrap();
    assert_eq!(out.len(), 1);
    assert!(out[0] < 0.1);
    let mut other = vad.new_stream();
    assert!(vad.push_batch(&mut [&mut other], &[]).is_err());
}
