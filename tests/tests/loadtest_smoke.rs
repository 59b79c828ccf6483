//! The load test as a smoke test: a few virtual clients stream speech and video to the
//! real server for a few seconds through the `mmrt-loadtest` library, and any error,
//! dropped frame or missing answer fails the test.

use std::path::{Path, PathBuf};

use mmrt_loadtest::{run_sweep, LoadOptions};
use mmrt_tests::{repo_root, Server};

/// The first file under `dir` (two levels deep) whose extension is one of `exts`.
fn first_file(dir: &Path, exts: &[&str]) -> Option<PathBuf> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    let matches = |p: &Path| {
        p.extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| exts.contains(&e.to_ascii_lowercase().as_str()))
    };
    if let Some(found) = entries.iter().find(|p| p.is_file() && matches(p)) {
        return Some(found.clone());
    }
    entries
        .iter()
        .filter(|p| p.is_dir())
        .find_map(|d| first_file(d, exts))
}

/// One second of a 220 Hz tone as a 16 kHz mono PCM16 WAV, for checkouts without
/// samples (manual turns do not need it to sound like speech).
fn tone_wav(path: &Path) {
    let samples: Vec<i16> = (0..16_000)
        .map(|i| ((i as f32 * 220.0 * std::f32::consts::TAU / 16_000.0).sin() * 8000.0) as i16)
        .collect();
    let data_len = (samples.len() * 2) as u32;
    let mut bytes = Vec::with_capacity(44 + data_len as usize);
    bytes.extend_from_slice(b"RIFF");
    bytes.extend_from_slice(&(36 + data_len).to_le_bytes());
    bytes.extend_from_slice(b"WAVEfmt ");
    for field in [
        16u32.to_le_bytes(),
        [1, 0, 1, 0],
        16_000u32.to_le_bytes(),
        32_000u32.to_le_bytes(),
        [2, 0, 16, 0],
    ] {
        bytes.extend_from_slice(&field);
    }
    bytes.extend_from_slice(b"data");
    bytes.extend_from_slice(&data_len.to_le_bytes());
    bytes.extend(samples.iter().flat_map(|s| s.to_le_bytes()));
    std::fs::write(path, bytes).expect("writing the tone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_few_sessions_run_without_errors() {
    let server = Server::start(&[]);
    let scratch = std::env::temp_dir().join(format!("mmrt-loadtest-smoke-{}", std::process::id()));
    std::fs::create_dir_all(scratch.join("frames")).expect("scratch dir");

    // Real samples when the checkout has them, a tone and no video otherwise.
    let samples = repo_root().join("samples");
    let audio = first_file(&samples, &["wav"]).unwrap_or_else(|| {
        let path = scratch.join("tone.wav");
        tone_wav(&path);
        path
    });
    let image = first_file(&samples, &["png", "jpg", "jpeg"]);
    let fps = match &image {
        Some(image) => {
            let name = image.file_name().expect("a file name");
            std::fs::copy(image, scratch.join("frames").join(name)).expect("copy frame");
            "2"
        }
        None => "0",
    };

    let options = LoadOptions::try_parse_args([
        "--url",
        &server.url(),
        "--clients",
        "3",
        "--duration",
        "4",
        "--ramp-up",
        "0.5",
        "--turn-interval",
        "2",
        "--fps",
        fps,
        "--max-output-tokens",
        "8",
        "--audio",
        &audio.display().to_string(),
        "--frames",
        &scratch.join("frames").display().to_string(),
        "--samples",
        &samples.display().to_string(),
        "--no-progress",
    ])
    .expect("options parse");
    let report = run_sweep(options).await.expect("the load run");
    let _ = std::fs::remove_dir_all(&scratch);

    let level = &report.levels[0];
    assert_eq!(level.sessions, 3, "{level:?}");
    assert!(level.errors.is_empty(), "errors: {:?}", level.errors);
    assert_eq!(level.frames_dropped, 0, "{level:?}");
    assert!(level.turns >= 3, "{level:?}");
    assert_eq!(
        level.responses, level.turns,
        "every turn answered: {level:?}"
    );
    assert!(level.first_token.is_some(), "{level:?}");
    assert!(report.markdown().contains("| 3 |"));
}
