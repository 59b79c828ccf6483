//! Production behaviour of the real binary: metrics and readiness, configuration from a
//! file with checked values, API keys and origins, session limits and timeouts, slow
//! and vanished clients, and draining on SIGTERM.

mod raw;

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use mmrt_tests::{mmrt_binary, Server};
use raw::{connect_with, http_get, scrape, Raw, WAIT};
use serde_json::json;
use tokio_tungstenite::tungstenite::{self, Message};

fn temp_file(name: &str, text: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("mmrt-hardening-{}-{name}", std::process::id()));
    std::fs::write(&path, text).expect("writing a temp file");
    path
}

/// Polls `/metrics` until `sample` satisfies `ok`, or fails after [`WAIT`].
async fn wait_metric(addr: &str, sample: &str, ok: impl Fn(f64) -> bool) -> f64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let value = scrape(addr, sample).await;
        if ok(value) {
            return value;
        }
        assert!(Instant::now() < deadline, "{sample} stuck at {value}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn metrics_and_readiness() {
    let server = Server::start(&[]);
    let deadline = Instant::now() + WAIT;
    while http_get(&server.addr, "/readyz").await.0 != 200 {
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, text) = http_get(&server.addr, "/metrics").await;
    assert_eq!(status, 200);
    for name in [
        "mmrt_sessions_active",
        "mmrt_sessions_opened_total",
        "mmrt_sessions_closed_total",
        "mmrt_ingest_bytes_total",
        "mmrt_frames_dropped_total",
        "mmrt_queue_depth",
        "mmrt_batch_size",
        "mmrt_model_execution_seconds",
        "mmrt_end_of_turn_to_first_token_seconds",
        "mmrt_inter_token_seconds",
        "mmrt_tokens_generated_total",
        "mmrt_errors_total",
    ] {
        assert!(text.contains(&format!("# HELP {name} ")), "{name} missing");
    }
    assert_eq!(raw::metric(&text, "mmrt_ready"), 1.0);

    let first_tokens = "mmrt_end_of_turn_to_first_token_seconds_count";
    let before = scrape(&server.addr, first_tokens).await;
    let mut raw = Raw::open(&server.url()).await;
    raw.manual_turns().await;
    assert_eq!(scrape(&server.addr, "mmrt_sessions_active").await, 1.0);
    raw.send_text("{oops").await;
    raw.next_error().await;
    assert!(
        scrape(&server.addr, "mmrt_errors_total{code=\"invalid_json\"}").await >= 1.0,
        "errors are counted by code"
    );
    let done = raw.text_response("hello").await;
    let output = done["response"]["usage"]["output_tokens"]
        .as_u64()
        .unwrap_or(0);
    if output > 0 {
        assert!(scrape(&server.addr, first_tokens).await > before);
        assert!(scrape(&server.addr, "mmrt_tokens_generated_total").await >= 1.0);
    }
    drop(raw);
    wait_metric(&server.addr, "mmrt_sessions_active", |v| v == 0.0).await;
}

#[tokio::test]
async fn limits_come_from_the_config_file_and_are_announced() {
    let config = temp_file(
        "limits.toml",
        "max_sessions = 1\nidle_timeout_seconds = 1.5\nmax_message_bytes = 65536\n",
    );
    let server = Server::start(&["--config", config.to_str().expect("utf-8 path")]);

    let mut first = connect_with(&server.url(), &[]).await.expect("handshake");
    let created = first.next().await.expect("session.created");
    let limits = &created["session"]["mmrt"]["limits"];
    assert_eq!(limits["idle_timeout_ms"], 1500, "{created}");
    assert_eq!(limits["max_event_bytes"], 65536, "{created}");

    // The second session is over the limit: an error, then a close with the code.
    let mut second = connect_with(&server.url(), &[]).await.expect("handshake");
    let refused = second.next().await.expect("an error event");
    assert_eq!(refused["error"]["code"], "session_limit", "{refused}");
    let close = tokio::time::timeout(WAIT, second.ws.next())
        .await
        .expect("close in time");
    match close {
        Some(Ok(Message::Close(Some(frame)))) => {
            assert_eq!(u16::from(frame.code), 1013);
            assert_eq!(frame.reason.as_str(), "session_limit");
        }
        other => panic!("expected a close frame, got {other:?}"),
    }

    // The first, left idle, is closed with the timeout code.
    let close = loop {
        match tokio::time::timeout(WAIT, first.ws.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => break frame,
            Ok(Some(Ok(_))) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(
        close.map(|f| f.reason.to_string()).as_deref(),
        Some("timeout")
    );
    let _ = std::fs::remove_file(config);
}

#[test]
fn bad_configuration_is_refused_naming_the_option() {
    let config = temp_file("bad.toml", "max_sessions = 0\n");
    let output = std::process::Command::new(mmrt_binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("running mmrt");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--max-sessions 0"), "{stderr}");
    assert!(stderr.contains("max_sessions"), "{stderr}");

    let typo = temp_file("typo.toml", "max_sesions = 3\n");
    let output = std::process::Command::new(mmrt_binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&typo)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("running mmrt");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("max_sesions"), "{stderr}");
    let _ = std::fs::remove_file(config);
    let _ = std::fs::remove_file(typo);
}

fn http_status(err: tungstenite::Error) -> u16 {
    match err {
        tungstenite::Error::Http(response) => response.status().as_u16(),
        other => panic!("expected an HTTP refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn api_keys_and_origins() {
    let keys = temp_file("keys", "# team keys\nsk-test-one\nsk-test-two\n");
    let server = Server::start(&[
        "--api-keys-file",
        keys.to_str().expect("utf-8 path"),
        "--allowed-origins",
        "https://app.example",
    ]);
    let url = server.url();

    let err = connect_with(&url, &[]).await.err().expect("no key");
    assert_eq!(http_status(err), 401);
    let err = connect_with(&url, &[("authorization", "Bearer sk-wrong")])
        .await
        .err()
        .expect("bad key");
    assert_eq!(http_status(err), 401);

    let mut ok = connect_with(&url, &[("authorization", "Bearer sk-test-two")])
        .await
        .expect("a good key");
    assert_eq!(ok.next().await.expect("event")["type"], "session.created");

    // Browsers: the key as a subprotocol; the server must pick `realtime`.
    let mut request =
        tungstenite::client::IntoClientRequest::into_client_request(url.as_str()).expect("url");
    request.headers_mut().insert(
        "sec-websocket-protocol",
        "realtime, openai-insecure-api-key.sk-test-one"
            .parse()
            .expect("header"),
    );
    request
        .headers_mut()
        .insert("origin", "https://app.example".parse().expect("header"));
    let (mut ws, response) = tokio_tungstenite::connect_async(request)
        .await
        .expect("subprotocol key accepted");
    assert_eq!(
        response
            .headers()
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().unwrap_or_default()),
        Some("realtime")
    );
    let first = tokio::time::timeout(WAIT, ws.next()).await.expect("event");
    assert!(matches!(first, Some(Ok(Message::Text(_)))));

    let err = connect_with(
        &url,
        &[
            ("authorization", "Bearer sk-test-one"),
            ("origin", "https://evil.example"),
        ],
    )
    .await
    .err()
    .expect("origin refused");
    assert_eq!(http_status(err), 403);
    assert!(scrape(&server.addr, "mmrt_errors_total{code=\"unauthorized\"}").await >= 3.0);
    let _ = std::fs::remove_file(keys);
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed() {
    let server = Server::start(&["--send-queue", "4", "--send-timeout-seconds", "2"]);
    let raw = Raw::open(&server.url()).await;
    let (mut sink, _unread_stream) = raw.ws.split();
    // Every session.update is answered with the whole session (about a kilobyte);
    // nobody reads them, so the socket buffers fill and then the send queue.
    let update = json!({"type": "session.update", "session": {"instructions": "x"}}).to_string();
    let deadline = Instant::now() + WAIT;
    for sent_count in 1u64.. {
        let sent = tokio::time::timeout(
            Duration::from_secs(5),
            sink.send(Message::text(update.clone())),
        )
        .await;
        if !matches!(sent, Ok(Ok(()))) {
            break; // the server dropped the connection
        }
        if sent_count % 1000 == 0
            && scrape(
                &server.addr,
                "mmrt_sessions_closed_total{reason=\"slow_consumer\"}",
            )
            .await
                >= 1.0
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the slow client was never closed"
        );
    }
    wait_metric(
        &server.addr,
        "mmrt_sessions_closed_total{reason=\"slow_consumer\"}",
        |v| v >= 1.0,
    )
    .await;
    wait_metric(&server.addr, "mmrt_sessions_active", |v| v == 0.0).await;
}

#[tokio::test]
async fn a_vanished_client_frees_its_response() {
    let server = Server::start(&[]);
    let mut raw = Raw::open(&server.url()).await;
    raw.manual_turns().await;
    raw.send_json(json!({
        "type": "conversation.item.create",
        "item": {"type": "message", "role": "user",
                 "content": [{"type": "input_text", "text": "tell me a long story"}]}
    }))
    .await;
    raw.send_json(json!({"type": "response.create", "response": {"max_output_tokens": 1024}}))
        .await;
    raw.wait_for("response.created").await;
    drop(raw);

    wait_metric(&server.addr, "mmrt_sessions_active", |v| v == 0.0).await;
    wait_metric(&server.addr, "mmrt_responses_active", |v| v == 0.0).await;
    wait_metric(&server.addr, "mmrt_kv_cache_tokens", |v| v == 0.0).await;
    // The server is none the worse.
    let mut again = Raw::open(&server.url()).await;
    again.manual_turns().await;
    again.text_response("hello").await;
}

#[tokio::test]
async fn sigterm_tells_sessions_and_drains() {
    let server = Server::start(&["--drain-seconds", "5"]);
    let mut raw = Raw::open(&server.url()).await;
    raw.manual_turns().await;
    raw.send_json(json!({
        "type": "conversation.item.create",
        "item": {"type": "message", "role": "user",
                 "content": [{"type": "input_text", "text": "one more thing"}]}
    }))
    .await;
    raw.send_json(json!({"type": "response.create", "response": {"max_output_tokens": 64}}))
        .await;
    raw.wait_for("response.created").await;

    let started = Instant::now();
    let exit = tokio::task::spawn_blocking(move || server.terminate());

    let mut told = None;
    let close = loop {
        match tokio::time::timeout(WAIT, raw.ws.next())
            .await
            .expect("the server closes in time")
        {
            Some(Ok(Message::Text(text))) => {
                let event: serde_json::Value = serde_json::from_str(text.as_str()).expect("JSON");
                if event["type"] == "error" && event["error"]["code"] == "shutting_down" {
                    told = Some(event["error"]["message"].as_str().unwrap_or("").to_string());
                }
            }
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    let told = told.expect("a shutting_down error event before the close");
    assert!(told.contains("closes within"), "{told}");
    let frame = close.expect("a close frame with a reason");
    assert_eq!(u16::from(frame.code), 1001);
    assert_eq!(frame.reason.as_str(), "shutting_down");

    let status = exit.await.expect("terminate thread");
    assert!(status.success(), "mmrt exits cleanly: {status}");
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "drain is bounded"
    );
}
