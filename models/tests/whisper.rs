//! Whisper speech stage against the Python converter's reference
//! (`python models/assistant/whisper.py --write-reference`): the log-mel front end
//! within the stated tolerance (no model needed), and, when the converted model is
//! installed, the transcripts and greedy token ids of `samples/assistant/`, exactly.
//!
//! The model folder is `$MMRT_ASSISTANT_DIR`, else `<cache>/bundles/assistant-en` with
//! the cache folder of `RuntimeConfig::from_env` (`$MMRT_CACHE_DIR`, else
//! `~/.cache/mmrt`). Tests that need it say so and pass when it is missing.

use std::path::{Path, PathBuf};

use mmrt_models::whisper::{ENCODER_FILE, MAX_TOKENS_LIMIT};
use mmrt_models::{
    RuntimeConfig, Transcriber, TranscriberConfig, TranscriptEnd, WhisperFeatures, WhisperWindow,
};
use serde_json::Value;

mod common;
use common::{assistant_dir, ids, read_json, repo, skip_missing};

fn reference() -> Value {
    read_json(&repo().join("models/assistant/reference/whisper.json"))
}

/// 16 kHz mono PCM16 as f32 in [-1, 1].
fn read_wav(path: &Path) -> Vec<f32> {
    let mut reader =
        hound::WavReader::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let spec = reader.spec();
    assert_eq!(
        (spec.sample_rate, spec.channels, spec.bits_per_sample),
        (16_000, 1, 16),
        "{}",
        path.display()
    );
    reader
        .samples::<i16>()
        .map(|s| s.expect("sample") as f32 / 32768.0)
        .collect()
}

/// The converted model's folder, or `None` (after saying so) when it is not installed.
fn model_dir(test: &str) -> Option<PathBuf> {
    let dir = assistant_dir();
    if dir.join(ENCODER_FILE).exists() {
        Some(dir)
    } else {
        skip_missing(test, "Whisper model", &dir);
        None
    }
}

fn transcriber(dir: &Path, config: TranscriberConfig) -> Transcriber {
    Transcriber::load(dir, &RuntimeConfig::from_env(), config).expect("load the Whisper graphs")
}

#[test]
fn log_mel_matches_the_python_reference() {
    let reference = reference();
    let pcm = read_wav(&repo().join(reference["file"].as_str().expect("file")));
    assert_eq!(pcm.len() as u64, reference["samples"].as_u64().unwrap());

    // The default window is the trimmed one the reference used.
    let frames = WhisperWindow::default().frames(pcm.len());
    assert_eq!(frames as u64, reference["frames"].as_u64().unwrap());
    let mel = WhisperFeatures::new().compute(&pcm, frames).unwrap();
    assert_eq!(mel.len(), 80 * frames);

    let tolerance = reference["mel_tolerance"].as_f64().unwrap() as f32;
    let loud_start = reference["mel_loud_start"].as_u64().unwrap() as usize;
    let mut worst = 0.0f32;
    for (key, start) in [("mel_first", 0), ("mel_loud", loud_start)] {
        for (offset, row) in reference[key].as_array().unwrap().iter().enumerate() {
            let frame = start + offset;
            for (band, want) in row.as_array().unwrap().iter().enumerate() {
                let want = want.as_f64().unwrap() as f32;
                let got = mel[band * frames + frame];
                let diff = (got - want).abs();
                assert!(
                    diff <= tolerance,
                    "frame {frame} band {band}: got {got}, reference {want} (tolerance {tolerance})"
                );
                worst = worst.max(diff);
            }
        }
    }
    let max = mel.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mean = mel.iter().map(|v| *v as f64).sum::<f64>() / mel.len() as f64;
    assert!((max - reference["mel_max"].as_f64().unwrap() as f32).abs() <= tolerance);
    assert!((mean - reference["mel_mean"].as_f64().unwrap()).abs() <= tolerance as f64);
    eprintln!("log-mel: worst difference {worst:.2e} over 10 frames (tolerance {tolerance})");
}

#[test]
fn a_bad_token_limit_is_refused_before_loading() {
    for max_tokens in [0, MAX_TOKENS_LIMIT + 1] {
        let config = TranscriberConfig {
            max_tokens,
            ..TranscriberConfig::default()
        };
        let err = Transcriber::load(Path::new("/nonexistent"), &RuntimeConfig::default(), config)
            .unwrap_err();
        assert_eq!(err.code(), "invalid_config", "{err}");
    }
}

#[test]
fn samples_transcribe_to_the_reference_tokens() {
    let Some(dir) = model_dir("samples_transcribe_to_the_reference_tokens") else {
        return;
    };
    let mut whisper = transcriber(&dir, TranscriberConfig::default());
    let samples = repo().join("samples/assistant");
    let manifest = read_json(&samples.join("manifest.json"));
    let reference = reference();
    for entry in manifest.as_array().expect("manifest is a list") {
        let file = entry["file"].as_str().unwrap();
        let pcm = read_wav(&samples.join(file));

        let mut pieces = Vec::new();
        let transcript = whisper
            .transcribe_streaming(&pcm, |piece| pieces.push(piece.to_string()))
            .unwrap();
        eprintln!(
            "{file}: {:?} ({} frames, encoder {:?}, decode {:?} for {} tokens)",
            transcript.text,
            transcript.frames,
            transcript.encoder_time,
            transcript.decode_time,
            transcript.tokens.len()
        );
        assert_eq!(
            transcript.text,
            entry["expected"].as_str().unwrap(),
            "{file}"
        );
        assert_eq!(transcript.tokens, ids(&entry["tokens"]), "{file}");
        assert_eq!(transcript.end, TranscriptEnd::EndOfText, "{file}");
        assert!(pieces.iter().all(|p| !p.is_empty()), "{file}: {pieces:?}");
        assert_eq!(pieces.concat(), transcript.text, "{file}: streamed pieces");
        assert!(pieces.len() > 1, "{file}: the text came in pieces");

        if reference["file"].as_str().unwrap().ends_with(file) {
            assert_eq!(transcript.tokens, ids(&reference["tokens"]));
            assert_eq!(
                transcript.frames as u64,
                reference["frames"].as_u64().unwrap()
            );
            assert_eq!(
                transcript.text,
                reference["text"].as_str().unwrap().trim_start()
            );
        }
    }
}

#[test]
fn the_full_window_transcribes_the_samples_too() {
    let Some(dir) = model_dir("the_full_window_transcribes_the_samples_too") else {
        return;
    };
    let config = TranscriberConfig {
        window: WhisperWindow::Full,
        ..TranscriberConfig::default()
    };
    let mut whisper = transcriber(&dir, config);
    let samples = repo().join("samples/assistant");
    for entry in read_json(&samples.join("manifest.json"))
        .as_array()
        .unwrap()
    {
        let pcm = read_wav(&samples.join(entry["file"].as_str().unwrap()));
        let transcript = whisper.transcribe(&pcm).unwrap();
        assert_eq!(transcript.frames, 3000);
        assert_eq!(transcript.text, entry["expected"].as_str().unwrap());
    }
}

#[test]
fn max_tokens_cuts_the_transcript() {
    let Some(dir) = model_dir("max_tokens_cuts_the_transcript") else {
        return;
    };
    let config = TranscriberConfig {
        max_tokens: 3,
        ..TranscriberConfig::default()
    };
    let mut whisper = transcriber(&dir, config);
    let samples = repo().join("samples/assistant");
    let manifest = read_json(&samples.join("manifest.json"));
    let entry = &manifest[0];
    let pcm = read_wav(&samples.join(entry["file"].as_str().unwrap()));
    let transcript = whisper.transcribe(&pcm).unwrap();
    assert_eq!(transcript.end, TranscriptEnd::MaxTokens);
    assert_eq!(transcript.tokens, ids(&entry["tokens"])[..3]);
    assert!(entry["expected"]
        .as_str()
        .unwrap()
        .starts_with(&transcript.text));
}
