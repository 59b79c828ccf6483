//! Replays the committed fuzz corpora (`fuzz/corpus/`) through both parsers on stable
//! Rust, every file whole and cut at every length: nothing a client sends may panic
//! them, and what parses keeps its invariants (events validate and serialize, frames
//! encode back to the same bytes).

use std::path::PathBuf;

use mmrt_protocol::{decode_frame, encode_frame, parse_client_event};
use mmrt_tests::repo_root;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = repo_root().join("fuzz/corpus").join(target);
    let mut files: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("corpus entry").path();
            let bytes = std::fs::read(&path).expect("corpus file");
            (path, bytes)
        })
        .collect();
    files.sort();
    assert!(files.len() >= 5, "{} holds too few inputs", dir.display());
    files
}

/// Both parsers on one input; panics only through a broken invariant.
fn exercise(bytes: &[u8]) -> (bool, bool) {
    let text = String::from_utf8_lossy(bytes);
    let event_ok = match parse_client_event(&text) {
        Ok(event) => {
            let _ = event.validate();
            serde_json::to_string(&event).expect("a parsed event serializes");
            true
        }
        Err(err) => {
            assert!(!err.message.is_empty());
            false
        }
    };
    let frame_ok = match decode_frame(bytes) {
        Ok(frame) => {
            let encoded = encode_frame(&frame.header, frame.payload).expect("re-encodes");
            assert_eq!(encoded, bytes, "decode then encode is the identity");
            true
        }
        Err(_) => false,
    };
    (event_ok, frame_ok)
}

#[test]
fn corpora_replay_without_panics() {
    let mut parsed_events = 0;
    let mut decoded_frames = 0;
    for target in ["parse_client_event", "decode_frame"] {
        for (path, bytes) in corpus(target) {
            let (event_ok, frame_ok) = exercise(&bytes);
            parsed_events += event_ok as usize;
            decoded_frames += frame_ok as usize;
            for cut in 0..bytes.len() {
                let result = std::panic::catch_unwind(|| exercise(&bytes[..cut]));
                assert!(result.is_ok(), "{} cut at {cut} panicked", path.display());
            }
        }
    }
    // The corpora hold valid inputs too, so both parsers' success paths are replayed.
    assert!(parsed_events >= 5, "only {parsed_events} events parsed");
    assert!(decoded_frames >= 3, "only {decoded_frames} frames decoded");
}
