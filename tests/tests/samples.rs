//! The main job end to end: every sample in `samples/manifest.json` streamed to the
//! real `mmrt` binary as a client would, with its expected answer asserted; the
//! transports, codecs and turn modes; cancellation mid-response.

use std::path::{Path, PathBuf};
use std::time::Duration;

use mmrt_client::stream::stream_silence;
use mmrt_client::{
    collect_response, connect, stream_audio, stream_frames, AudioCodec, AudioStreamOptions,
    CollectOptions, ConnectOptions, Connection, Pcm16Audio, ResponseOutcome, Transport,
};
use mmrt_protocol::client::ResponseParams;
use mmrt_protocol::session::{
    AudioFormat, AudioFormatType, AudioInputUpdate, AudioUpdate, ServerVadUpdate, SessionUpdate,
    TurnDetectionUpdate,
};
use mmrt_protocol::ResponseStatus;
use mmrt_tests::{samples, Sample, Server};
use std::time::Instant;

/// How a sample travels.
#[derive(Debug, Clone, Copy)]
struct Mode {
    transport: Transport,
    codec: AudioCodec,
    vad: bool,
    rate: u32,
}

const JSON_PCM: Mode = Mode {
    transport: Transport::Json,
    codec: AudioCodec::Pcm16,
    vad: false,
    rate: 16_000,
};

async fn open(server: &Server, mode: Mode) -> Connection {
    let mut conn = connect(&server.url(), &ConnectOptions::default())
        .await
        .expect("connect");
    let turn_detection = if mode.vad {
        Some(TurnDetectionUpdate::ServerVad(ServerVadUpdate {
            create_response: Some(true),
            silence_duration_ms: Some(400),
            ..ServerVadUpdate::default()
        }))
    } else {
        None
    };
    let update = SessionUpdate {
        audio: Some(AudioUpdate {
            input: Some(AudioInputUpdate {
                format: Some(AudioFormat {
                    kind: AudioFormatType::Pcm,
                    rate: Some(mode.rate),
                }),
                turn_detection: Some(turn_detection),
            }),
        }),
        ..SessionUpdate::default()
    };
    conn.sender.update_session(update).await.expect("update");
    conn.receiver
        .wait_session_updated(Duration::from_secs(10))
        .await
        .expect("session.updated");
    conn
}

fn frames_in(dir: &Path) -> Vec<PathBuf> {
    let mut frames: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("frames dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    frames.sort();
    frames
}

/// Streams one sample and returns the response.
async fn run_sample(conn: &mut Connection, sample: &Sample, mode: Mode) -> ResponseOutcome {
    let sender = conn.sender.clone();
    let transport = mode.transport;
    for image in &sample.images {
        let (format, bytes) = mmrt_client::media::load_image(Path::new(image)).expect("image");
        if transport == Transport::Binary {
            sender
                .send_video_frame(format, &bytes, None, true)
                .await
                .expect("frame");
        } else {
            sender.send_image(format, bytes).await.expect("image");
        }
    }
    if let Some(frames) = &sample.frames {
        stream_frames(
            &sender,
            &frames_in(Path::new(&frames.dir)),
            frames.fps,
            transport,
            false,
        )
        .await
        .expect("frames");
    }
    if let Some(text) = &sample.text {
        sender.send_text(text).await.expect("text");
    }
    let options = AudioStreamOptions {
        codec: mode.codec,
        transport,
        realtime: false,
    };
    let has_audio = sample.audio.is_some();
    if let Some(audio) = &sample.audio {
        let audio = Pcm16Audio::from_wav_file(Path::new(audio))
            .expect("wav")
            .resampled(mode.rate)
            .expect("resample");
        if mode.vad {
            stream_silence(&sender, mode.rate, Duration::from_millis(400), options)
                .await
                .expect("lead-in");
        }
        stream_audio(&sender, &audio, options).await.expect("audio");
        if mode.vad {
            stream_silence(&sender, mode.rate, Duration::from_millis(1000), options)
                .await
                .expect("trailing silence");
        } else {
            sender.commit().await.expect("commit");
        }
    }
    if !(mode.vad && has_audio) {
        sender
            .create_response(Some(ResponseParams::default()))
            .await
            .expect("response.create");
    }
    collect_response(
        &mut conn.receiver,
        CollectOptions {
            deadline: Instant::now() + Duration::from_secs(30),
            skip_cancelled: mode.vad,
        },
        |_| {},
    )
    .await
    .unwrap_or_else(|e| panic!("sample {}: {e}", sample.id))
}

fn check(sample: &Sample, outcome: &ResponseOutcome, mode: Mode) -> Option<String> {
    let got = outcome.text.trim();
    (got != sample.expected.trim()).then(|| {
        format!(
            "{} ({mode:?}): expected {:?}, got {:?} (status {:?})",
            sample.id, sample.expected, got, outcome.response.status
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sample_gets_its_expected_answer() {
    let server = Server::start(&[]);
    let mut failures = Vec::new();
    for sample in samples() {
        // A fresh session per sample, as separate users would be.
        let mut conn = open(&server, JSON_PCM).await;
        let outcome = run_sample(&mut conn, &sample, JSON_PCM).await;
        assert_eq!(
            outcome.response.status,
            ResponseStatus::Completed,
            "{}",
            sample.id
        );
        failures.extend(check(&sample, &outcome, JSON_PCM));
    }
    assert!(
        failures.is_empty(),
        "wrong answers:\n{}",
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_frames_opus_and_24khz_give_the_same_answers() {
    let server = Server::start(&[]);
    let modes = [
        Mode {
            transport: Transport::Binary,
            codec: AudioCodec::Pcm16,
            vad: false,
            rate: 24_000,
        },
        Mode {
            transport: Transport::Binary,
            codec: AudioCodec::Opus,
            vad: false,
            rate: 16_000,
        },
        Mode {
            transport: Transport::Binary,
            codec: AudioCodec::Opus,
            vad: false,
            rate: 24_000,
        },
    ];
    let mut failures = Vec::new();
    let audio_samples: Vec<Sample> = samples()
        .into_iter()
        .filter(|s| s.audio.is_some())
        .collect();
    assert!(!audio_samples.is_empty());
    for mode in modes {
        for sample in &audio_samples {
            let mut conn = open(&server, mode).await;
            let outcome = run_sample(&mut conn, sample, mode).await;
            failures.extend(check(sample, &outcome, mode));
        }
    }
    assert!(
        failures.is_empty(),
        "wrong answers:\n{}",
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_vad_ends_the_turn_and_answers() {
    let server = Server::start(&[]);
    let mode = Mode {
        vad: true,
        ..JSON_PCM
    };
    let mut failures = Vec::new();
    for sample in samples().into_iter().filter(|s| s.audio.is_some()).take(4) {
        let mut conn = open(&server, mode).await;
        let outcome = run_sample(&mut conn, &sample, mode).await;
        assert!(
            outcome.speech_stopped_at.is_some(),
            "{}: no speech_stopped",
            sample.id
        );
        failures.extend(check(&sample, &outcome, mode));
    }
    assert!(
        failures.is_empty(),
        "wrong answers:\n{}",
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_response() {
    let server = Server::start(&[]);
    let mut conn = open(&server, JSON_PCM).await;
    conn.sender
        .send_text("what is nine times nine")
        .await
        .expect("text");
    // The trained model answers in a few milliseconds, so the cancel goes out right
    // behind the request: the session reads both in order, and the engine must drop
    // the response at its next check (before the prefill or between decode steps).
    let params = ResponseParams {
        max_output_tokens: Some(mmrt_protocol::session::MaxTokens::Count(1000)),
        temperature: Some(1.0),
        ..ResponseParams::default()
    };
    conn.sender
        .create_response(Some(params))
        .await
        .expect("create");
    let deadline = Duration::from_secs(30);
    conn.sender.cancel_response().await.expect("cancel");
    let done = conn
        .receiver
        .wait_for("response.done", deadline, |e| {
            matches!(e, mmrt_protocol::ServerEvent::ResponseDone(_))
        })
        .await
        .expect("done");
    let mmrt_protocol::ServerEvent::ResponseDone(done) = done.event else {
        unreachable!("wait_for matched response.done")
    };
    assert_eq!(done.response.status, ResponseStatus::Cancelled);
    let usage = done.response.usage.expect("usage");
    assert!(
        usage.output_tokens < 1000,
        "generation did not stop: {usage:?}"
    );

    // The session goes on: the next response completes.
    conn.sender
        .send_text("what is two plus two")
        .await
        .expect("text");
    conn.sender.create_response(None).await.expect("create");
    let outcome = collect_response(
        &mut conn.receiver,
        CollectOptions {
            deadline: Instant::now() + deadline,
            skip_cancelled: false,
        },
        |_| {},
    )
    .await
    .expect("second response");
    assert_ne!(outcome.response.status, ResponseStatus::Cancelled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_missing_modality_is_reported() {
    let server = Server::start(&[]);
    let mut conn = open(&server, JSON_PCM).await;
    conn.sender
        .send_text("what do you see")
        .await
        .expect("text");
    conn.sender.create_response(None).await.expect("create");
    let outcome = collect_response(
        &mut conn.receiver,
        CollectOptions {
            deadline: Instant::now() + Duration::from_secs(30),
            skip_cancelled: false,
        },
        |_| {},
    )
    .await
    .expect("response");
    let report = outcome.modality_report.expect("modality report");
    use mmrt_protocol::response::{InputModality, ModalityStatus};
    let status = |m| report.iter().find(|s| s.modality == m).map(|s| s.status);
    assert_eq!(status(InputModality::Text), Some(ModalityStatus::Present));
    assert_eq!(status(InputModality::Image), Some(ModalityStatus::Filled));
    assert_eq!(status(InputModality::Audio), Some(ModalityStatus::Filled));
}

#[test]
fn the_cli_prints_the_expected_answer() {
    let server = Server::start(&[]);
    // One sample of each kind of input the CLI takes.
    let all = samples();
    let picks = [
        all.iter()
            .find(|s| s.audio.is_some() && s.text.is_none() && s.images.is_empty()),
        all.iter()
            .find(|s| !s.images.is_empty() && s.text.is_some()),
        all.iter().find(|s| s.frames.is_some()),
    ];
    for sample in picks.into_iter().flatten() {
        let mut cmd = std::process::Command::new(mmrt_tests::client_binary());
        cmd.args(["--url", &server.url(), "--no-pace"]);
        if let Some(audio) = &sample.audio {
            cmd.args(["--audio", audio]);
        }
        for image in &sample.images {
            cmd.args(["--image", image]);
        }
        if let Some(frames) = &sample.frames {
            cmd.args(["--frames", &frames.dir, "--fps", &frames.fps.to_string()]);
        }
        if let Some(text) = &sample.text {
            cmd.args(["--text", text]);
        }
        let output = cmd.output().expect("running mmrt-client");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{}: exit {:?}, stderr: {}",
            sample.id,
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(stdout.trim(), sample.expected.trim(), "{}", sample.id);
        assert!(
            String::from_utf8_lossy(&output.stderr).contains("ttft_ms="),
            "timings on stderr"
        );
    }
}
