//! The pretrained `assistant-en` bundle served end to end: a spoken question is
//! transcribed (streamed as input-transcription events) and answered, text shown to
//! the camera is read and used, and the conversation's history reaches the model.
//!
//! The bundle is built by `mmrt models install assistant-en` into the cache; these tests
//! say SKIPPED and pass when it is not installed, unless `MMRT_REQUIRE_ASSISTANT` is set
//! (CI installs it and sets it).

use std::path::PathBuf;
use std::time::Duration;

use mmrt_client::{connect, ConnectOptions, Connection, Pcm16Audio};
use mmrt_protocol::session::{AudioFormat, AudioFormatType, AudioInputUpdate, AudioUpdate};
use mmrt_protocol::{ImageFormat, ResponseStatus, ServerEvent, SessionUpdate};
use mmrt_tests::{repo_root, Server};

fn bundle_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("MMRT_ASSISTANT_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let cache = std::env::var_os("MMRT_CACHE_DIR")
                .map(PathBuf::from)
                .or_else(|| {
                    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/mmrt"))
                })?;
            cache.join("bundles/assistant-en")
        }
    };
    if dir.join("bundle.toml").is_file() {
        Some(dir)
    } else {
        // CI installs the bundle and sets this, so there a missing bundle fails.
        assert!(
            std::env::var_os("MMRT_REQUIRE_ASSISTANT").is_none(),
            "MMRT_REQUIRE_ASSISTANT is set but no assistant-en bundle is at {}",
            dir.display()
        );
        eprintln!(
            "SKIPPED: no assistant-en bundle at {} (run `mmrt models install assistant-en`)",
            dir.display()
        );
        None
    }
}

const WAIT: Duration = Duration::from_secs(60);

async fn open(server: &Server) -> Connection {
    let conn = connect(&server.url(), &ConnectOptions::default())
        .await
        .expect("session");
    let update = SessionUpdate {
        audio: Some(AudioUpdate {
            input: Some(AudioInputUpdate {
                format: Some(AudioFormat {
                    kind: AudioFormatType::Pcm,
                    rate: Some(16_000),
                }),
                turn_detection: Some(None),
            }),
        }),
        ..SessionUpdate::default()
    };
    conn.sender.update_session(update).await.expect("update");
    let mut conn = conn;
    conn.receiver
        .wait_session_updated(Duration::from_secs(10))
        .await
        .expect("session.updated");
    conn
}

/// What one turn produced, in order.
#[derive(Default, Debug)]
struct Turn {
    transcript_deltas: String,
    transcript: Option<String>,
    transcript_before_response: bool,
    answer: String,
    input_tokens: u32,
}

async fn collect(conn: &mut Connection) -> Turn {
    let mut turn = Turn::default();
    loop {
        let event = conn
            .receiver
            .next_event(WAIT)
            .await
            .expect("an event")
            .event;
        match event {
            ServerEvent::TranscriptionDelta(d) => turn.transcript_deltas.push_str(&d.delta),
            ServerEvent::TranscriptionCompleted(c) => turn.transcript = Some(c.transcript),
            ServerEvent::TranscriptionFailed(f) => panic!("transcription failed: {:?}", f.error),
            ServerEvent::ResponseCreated(_) => {
                turn.transcript_before_response = turn.transcript.is_some()
            }
            ServerEvent::OutputTextDelta(d) => turn.answer.push_str(&d.delta),
            ServerEvent::ResponseDone(done) => {
                assert_eq!(done.response.status, ResponseStatus::Completed, "{done:?}");
                turn.input_tokens = done.response.usage.map_or(0, |u| u.input_tokens);
                return turn;
            }
            ServerEvent::Error(e) => panic!("error event: {:?}", e.error),
            _ => {}
        }
    }
}

fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| w.to_lowercase())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spoken_question_is_transcribed_and_answered() {
    let Some(dir) = bundle_dir() else { return };
    let server = Server::start(&["--bundle", dir.to_str().expect("utf-8 path")]);
    let wav = repo_root().join("samples/assistant/spider-legs.wav");
    let audio = Pcm16Audio::from_wav_file(&wav).expect("wav");
    assert_eq!(audio.rate, 16_000);
    let bytes: Vec<u8> = audio.samples.iter().flat_map(|s| s.to_le_bytes()).collect();

    let mut conn = open(&server).await;
    for piece in bytes.chunks(3200) {
        conn.sender.append_audio(piece).await.expect("append");
    }
    conn.sender.commit().await.expect("commit");
    conn.sender
        .create_response(None)
        .await
        .expect("response.create");
    let turn = collect(&mut conn).await;

    let transcript = turn.transcript.clone().expect("a transcript");
    assert_eq!(
        words(&transcript),
        words("How many legs does a spider have?"),
        "{turn:?}"
    );
    assert_eq!(
        turn.transcript_deltas.trim(),
        transcript.trim(),
        "the deltas join to the transcript"
    );
    assert!(turn.transcript_before_response, "{turn:?}");
    let answer = words(&turn.answer);
    assert!(
        answer.iter().any(|w| w == "8" || w == "eight"),
        "a spider has eight legs: {turn:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_in_an_image_is_read_and_used() {
    let Some(dir) = bundle_dir() else { return };
    let server = Server::start(&["--bundle", dir.to_str().expect("utf-8 path")]);
    let png = std::fs::read(repo_root().join("samples/assistant/note.png")).expect("png");

    let mut conn = open(&server).await;
    conn.sender
        .send_image(ImageFormat::Png, png)
        .await
        .expect("image");
    conn.sender
        .send_text("What time is the meeting?")
        .await
        .expect("text");
    conn.sender
        .create_response(None)
        .await
        .expect("response.create");
    let turn = collect(&mut conn).await;
    assert!(turn.answer.contains("10:30"), "{turn:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_conversation_is_remembered() {
    let Some(dir) = bundle_dir() else { return };
    let server = Server::start(&["--bundle", dir.to_str().expect("utf-8 path")]);
    let mut conn = open(&server).await;
    let first = ask(&mut conn, "Remember the number 42.").await;
    let second = ask(&mut conn, "What number did I ask you to remember?").await;
    // The second prompt carries the first exchange (question and answer)...
    assert!(
        second.input_tokens > first.input_tokens + 20,
        "{first:?} then {second:?}"
    );
    // ...and the model uses it.
    assert!(
        words(&second.answer).contains(&"42".to_string()),
        "{second:?}"
    );
}

async fn ask(conn: &mut Connection, text: &str) -> Turn {
    conn.sender.send_text(text).await.expect("text");
    conn.sender
        .create_response(None)
        .await
        .expect("response.create");
    collect(conn).await
}

/// A camera streaming at 2 fps: frames are only read when a response uses them (a read
/// takes longer than the frame period), and the answer uses the latest frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_video_stream_is_read_at_the_latest_frame() {
    let Some(dir) = bundle_dir() else { return };
    let server = Server::start(&["--bundle", dir.to_str().expect("utf-8 path")]);
    let sign = std::fs::read(repo_root().join("samples/assistant/sign.png")).expect("png");
    let note = std::fs::read(repo_root().join("samples/assistant/note.png")).expect("png");

    let mut conn = open(&server).await;
    for i in 0..12 {
        let frame = if i < 11 { &sign } else { &note };
        conn.sender
            .send_video_frame(ImageFormat::Png, frame, None, true)
            .await
            .expect("frame");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let turn = ask(&mut conn, "What time is the meeting?").await;
    assert!(turn.answer.contains("10:30"), "{turn:?}");
}
