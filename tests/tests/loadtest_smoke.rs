//! The load test as a smoke test: a few virtual clients stream speech and video to the
//! real server for a few seconds through the `mmrt-loadtest` library, and any error,
//! dropped frame or missing answer fails the test.

use std::path::{Path, PathBuf};

mod raw;

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

/// The runs in this file take one at a time: each measures real-time pacing, which a
/// second run on the same cores would disturb.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_few_sessions_run_without_errors() {
    let _alone = ONE_AT_A_TIME.lock().await;
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

/// A short soak: well-behaved clients beside misbehaving ones (a slow reader, a
/// vanisher, a garbage sender, a stalled handshake). The well-behaved see no error,
/// every bad message gets an error event and the session after it still answers, the
/// stalled handshake is dropped, and no KV slot is left held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaving_clients_do_not_hurt_the_others() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let server = Server::start(&["--handshake-timeout-seconds", "1"]);
    let samples = repo_root().join("samples");
    let audio = first_file(&samples, &["wav"]).expect("the samples have a WAV");
    let options = LoadOptions::try_parse_args([
        "--url",
        &server.url(),
        "--clients",
        "2",
        "--misbehaving",
        "4",
        "--duration",
        "8",
        "--ramp-up",
        "0.5",
        "--turn-interval",
        "2",
        "--fps",
        "0",
        "--max-output-tokens",
        "8",
        "--audio",
        &audio.display().to_string(),
        "--samples",
        &samples.display().to_string(),
        "--no-progress",
    ])
    .expect("options parse");
    let report = run_sweep(options).await.expect("the load run");
    let level = &report.levels[0];
    assert!(level.errors.is_empty(), "errors: {:?}", level.errors);
    assert_eq!(level.responses, level.turns, "{level:?}");
    let chaos = level.misbehaving.expect("misbehaving counts");
    assert!(chaos.garbage_sessions >= 1, "{chaos:?}");
    assert_eq!(chaos.garbage_errors, chaos.garbage_messages, "{chaos:?}");
    assert_eq!(
        chaos.garbage_then_answered, chaos.garbage_sessions,
        "{chaos:?}"
    );
    assert!(chaos.vanished_mid_response >= 1, "{chaos:?}");
    assert!(chaos.stallers_dropped >= 1, "{chaos:?}");
    assert_eq!(chaos.connect_failures, 0, "{chaos:?}");

    // Vanished clients' responses are gone from the engine.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let active = raw::scrape(&server.addr, "mmrt_responses_active").await;
        if active == 0.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "responses still active: {active}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
