//! Server VAD turns with the Silero VAD model (`--vad-model silero`): spoken samples
//! followed by silence are detected, committed and answered, several sessions at once;
//! silence and steady noise, loud enough to start a turn with the energy detector, start
//! none. The model is fetched through the pinned-package cache (network on first use).

mod raw;

use std::path::Path;
use std::time::{Duration, Instant};

use mmrt_client::stream::stream_silence;
use mmrt_client::{
    connect, stream_audio, AudioCodec, AudioStreamOptions, ConnectOptions, Connection, Pcm16Audio,
    Transport,
};
use mmrt_protocol::session::{
    AudioFormat, AudioFormatType, AudioInputUpdate, AudioUpdate, ServerVadUpdate, SessionUpdate,
    TurnDetectionUpdate, VadModel,
};
use mmrt_protocol::{ErrorCode, ResponseStatus, ServerEvent};
use mmrt_tests::{samples, Sample, Server};

const RATE: u32 = 16_000;
const WAIT: Duration = Duration::from_secs(60);

const OPTIONS: AudioStreamOptions = AudioStreamOptions {
    codec: AudioCodec::Pcm16,
    transport: Transport::Json,
    realtime: false,
};

/// A session with server VAD that answers each turn.
async fn open(server: &Server, expected_model: VadModel) -> Connection {
    let mut conn = connect(&server.url(), &ConnectOptions::default())
        .await
        .expect("connect");
    assert_eq!(conn.session.mmrt.vad_model, Some(expected_model));
    let update = SessionUpdate {
        audio: Some(AudioUpdate {
            input: Some(AudioInputUpdate {
                format: Some(AudioFormat {
                    kind: AudioFormatType::Pcm,
                    rate: Some(RATE),
                }),
                turn_detection: Some(Some(TurnDetectionUpdate::ServerVad(ServerVadUpdate {
                    create_response: Some(true),
                    silence_duration_ms: Some(400),
                    ..ServerVadUpdate::default()
                }))),
            }),
        }),
        ..SessionUpdate::default()
    };
    conn.sender.update_session(update).await.expect("update");
    let session = conn
        .receiver
        .wait_session_updated(Duration::from_secs(10))
        .await
        .expect("session.updated");
    assert_eq!(session.mmrt.vad_model, Some(expected_model));
    conn
}

/// What a spoken turn produced.
#[derive(Debug, Default)]
struct Turn {
    started: bool,
    stopped: bool,
    committed: bool,
    answer: String,
}

/// Streams a sample's other inputs, then its audio between silences, and reads events
/// until its response is done; returns the turn and the seconds of audio streamed.
async fn spoken_turn(conn: &mut Connection, sample: &Sample) -> (Turn, f64) {
    let sender = conn.sender.clone();
    for image in &sample.images {
        let (format, bytes) = mmrt_client::media::load_image(Path::new(image)).expect("image");
        sender.send_image(format, bytes).await.expect("image");
    }
    if let Some(text) = &sample.text {
        sender.send_text(text).await.expect("text");
    }
    let audio = Pcm16Audio::from_wav_file(Path::new(sample.audio.as_deref().expect("audio")))
        .expect("wav")
        .resampled(RATE)
        .expect("resample");
    stream_silence(&sender, RATE, Duration::from_millis(400), OPTIONS)
        .await
        .expect("lead-in");
    stream_audio(&sender, &audio, OPTIONS).await.expect("audio");
    stream_silence(&sender, RATE, Duration::from_millis(1000), OPTIONS)
        .await
        .expect("trailing silence");
    let seconds = 1.4 + audio.duration().as_secs_f64();

    let mut turn = Turn::default();
    let deadline = Instant::now() + WAIT;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let timed = conn
            .receiver
            .next_event(remaining)
            .await
            .unwrap_or_else(|e| panic!("{}: {e} (so far {turn:?})", sample.id));
        match timed.event {
            ServerEvent::SpeechStarted(_) => turn.started = true,
            ServerEvent::SpeechStopped(_) => turn.stopped = true,
            ServerEvent::InputAudioBufferCommitted(_) => turn.committed = true,
            ServerEvent::OutputTextDelta(delta) => turn.answer.push_str(&delta.delta),
            ServerEvent::ResponseCreated(_) => turn.answer.clear(),
            ServerEvent::ResponseDone(done)
                if done.response.status != ResponseStatus::Cancelled =>
            {
                return (turn, seconds)
            }
            ServerEvent::Error(err) => panic!("{}: error {:?}", sample.id, err.error),
            _ => {}
        }
    }
}

/// The spoken samples that need nothing but their audio, images and text.
fn spoken_samples() -> Vec<Sample> {
    samples()
        .into_iter()
        .filter(|s| s.audio.is_some() && s.frames.is_none())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silero_detects_spoken_turns_and_they_are_answered() {
    let server = Server::start(&["--vad-model", "silero"]);
    let mut failures = Vec::new();
    for sample in spoken_samples().iter().take(4) {
        let mut conn = open(&server, VadModel::Silero).await;
        let (turn, _) = spoken_turn(&mut conn, sample).await;
        assert!(
            turn.started && turn.stopped && turn.committed,
            "{}: {turn:?}",
            sample.id
        );
        if turn.answer.trim() != sample.expected.trim() {
            failures.push(format!(
                "{}: expected {:?}, got {:?}",
                sample.id, sample.expected, turn.answer
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "wrong answers:\n{}",
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_at_once_share_the_vad_thread() {
    const SESSIONS: usize = 8;
    let server = Server::start(&["--vad-model", "silero"]);
    let sample = spoken_samples()
        .into_iter()
        .find(|s| s.images.is_empty() && s.text.is_none())
        .expect("an audio-only sample");
    let mut tasks = Vec::new();
    for _ in 0..SESSIONS {
        let mut conn = open(&server, VadModel::Silero).await;
        let sample = sample.clone();
        tasks.push(tokio::spawn(async move {
            let (turn, seconds) = spoken_turn(&mut conn, &sample).await;
            (turn, seconds, sample.expected)
        }));
    }
    let mut audio_seconds = 0.0;
    for task in tasks {
        let (turn, seconds, expected) = task.await.expect("session task");
        assert!(turn.started && turn.stopped && turn.committed, "{turn:?}");
        assert_eq!(turn.answer.trim(), expected.trim());
        audio_seconds += seconds;
    }

    // Report how the sessions shared the model (the figures vary with the machine).
    let (_, body) = raw::http_get(&server.addr, "/metrics").await;
    let value = |name: &str| raw::metric(&body, &format!("{name}{{model=\"silero_vad\"}}"));
    let calls = value("mmrt_batch_size_count");
    let jobs = value("mmrt_batch_size_sum");
    let seconds = value("mmrt_model_execution_seconds_sum");
    let windows = audio_seconds * RATE as f64 / 512.0;
    assert!(calls >= 1.0 && jobs >= calls);
    eprintln!(
        "silero_vad: {SESSIONS} sessions, {calls} calls, {:.2} sessions per call, \
         {:.0} µs per window ({windows:.0} windows)",
        jobs / calls,
        seconds * 1e6 / windows
    );
}

/// Deterministic white noise at about -31 dBFS: a speech score of 0.6 for the energy
/// detector, above its default threshold of 0.5.
fn noise(seconds: f64) -> Pcm16Audio {
    let mut state: u32 = 0x2545_f491;
    let samples = (0..(RATE as f64 * seconds) as usize)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            ((state as f64 / u32::MAX as f64 - 0.5) * 0.1 * 32767.0) as i16
        })
        .collect();
    Pcm16Audio {
        rate: RATE,
        samples,
    }
}

/// Streams silence, noise and silence, then a commit: every append is handled before the
/// commit, whose `buffer_empty` error says no turn holds audio. Returns whether speech
/// started before it.
async fn speech_in_silence_and_noise(server: &Server, model: VadModel) -> bool {
    let mut conn = open(server, model).await;
    let sender = conn.sender.clone();
    stream_silence(&sender, RATE, Duration::from_millis(1000), OPTIONS)
        .await
        .expect("silence");
    stream_audio(&sender, &noise(2.0), OPTIONS)
        .await
        .expect("noise");
    stream_silence(&sender, RATE, Duration::from_millis(1000), OPTIONS)
        .await
        .expect("silence");
    sender.commit().await.expect("commit");
    let mut started = false;
    let deadline = Instant::now() + WAIT;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let timed = conn.receiver.next_event(remaining).await.expect("event");
        match timed.event {
            ServerEvent::SpeechStarted(_) => started = true,
            ServerEvent::Error(err) => {
                assert_eq!(err.error.code, ErrorCode::BufferEmpty);
                return started;
            }
            ServerEvent::InputAudioBufferCommitted(_) | ServerEvent::ResponseCreated(_)
                if model == VadModel::Silero =>
            {
                panic!(
                    "silero started a turn on silence and noise: {:?}",
                    timed.event
                )
            }
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silence_and_noise_start_no_silero_turn() {
    let silero = Server::start(&["--vad-model", "silero"]);
    assert!(!speech_in_silence_and_noise(&silero, VadModel::Silero).await);
    // The same noise is loud enough to be speech for the energy detector.
    let energy = Server::start(&[]);
    assert!(speech_in_silence_and_noise(&energy, VadModel::Energy).await);
}

/// The cache the server uses by default, as `mmrt_models::default_cache_dir` finds it.
fn real_cache_dir() -> Option<std::path::PathBuf> {
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty());
    var("MMRT_CACHE_DIR")
        .map(Into::into)
        .or_else(|| var("XDG_CACHE_HOME").map(|d| Path::new(&d).join("mmrt")))
        .or_else(|| var("HOME").map(|h| Path::new(&h).join(".cache").join("mmrt")))
}

#[cfg(unix)]
#[test]
fn offline_without_the_model_names_the_option() {
    // A cache with the ONNX Runtime library (linked from the real cache) but no model.
    let cache = std::env::temp_dir().join(format!("mmrt-silero-empty-{}", std::process::id()));
    std::fs::create_dir_all(&cache).expect("temp cache");
    for entry in real_cache_dir()
        .and_then(|dir| std::fs::read_dir(dir).ok())
        .into_iter()
        .flatten()
        .flatten()
    {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with("onnxruntime")
        {
            let _ = std::os::unix::fs::symlink(entry.path(), cache.join(entry.file_name()));
        }
    }
    let output = std::process::Command::new(mmrt_tests::mmrt_binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--vad-model", "silero"])
        .env("MMRT_OFFLINE", "1")
        .env("MMRT_CACHE_DIR", &cache)
        .env("RUST_LOG", "warn")
        .output()
        .expect("running mmrt");
    let _ = std::fs::remove_dir_all(&cache);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("--vad-model silero"), "{stderr}");
    assert!(stderr.contains("MMRT_OFFLINE"), "{stderr}");
}
