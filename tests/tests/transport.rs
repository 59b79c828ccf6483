//! The transport under the protocol: TLS (`wss://`) with a certificate and key, and
//! the handshake deadline that drops connections which never finish TLS or never send
//! their request.

use std::time::{Duration, Instant};

use mmrt_client::{connect, ConnectOptions};
use mmrt_protocol::ServerEvent;
use mmrt_tests::Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A self-signed certificate for 127.0.0.1 and localhost, written as PEM files.
fn self_signed(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    let cert = rcgen::generate_simple_self_signed(names).expect("generating a certificate");
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).expect("writing the certificate");
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).expect("writing the key");
    (cert_path, key_path)
}

/// Reads until the peer closes; errs if it stays open past `limit`.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Result<Duration, String> {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(limit, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(started.elapsed()),
            Ok(Ok(_)) => continue,
            Err(_) => return Err(format!("still open after {limit:?}")),
        }
    }
}

#[tokio::test]
async fn wss_with_a_certificate_serves_a_session() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (cert, key) = self_signed(dir.path());
    let server = Server::start(&[
        "--tls-cert",
        cert.to_str().expect("utf-8 path"),
        "--tls-key",
        key.to_str().expect("utf-8 path"),
    ]);
    let url = format!("wss://{}/v1/realtime", server.addr);

    // Trusting the certificate, a session opens and answers a typed request.
    let options = ConnectOptions {
        ca_certs: Some(cert.clone()),
        ..ConnectOptions::default()
    };
    let mut conn = connect(&url, &options).await.expect("wss session");
    assert!(conn.session.id.starts_with("sess_"));
    conn.sender
        .send_text("what is seven plus two")
        .await
        .expect("sending text");
    conn.sender
        .create_response(None)
        .await
        .expect("response.create");
    let mut answer = String::new();
    loop {
        let event = conn
            .receiver
            .next_event(Duration::from_secs(30))
            .await
            .expect("an event");
        match event.event {
            ServerEvent::OutputTextDelta(d) => answer.push_str(&d.delta),
            ServerEvent::ResponseDone(_) => break,
            ServerEvent::Error(e) => panic!("error event: {:?}", e.error),
            _ => {}
        }
    }
    assert!(!answer.trim().is_empty(), "an answer over TLS");

    // Without trusting it, the client refuses the server.
    let err = connect(&url, &ConnectOptions::default())
        .await
        .expect_err("an untrusted certificate");
    assert!(
        format!("{err:#}").to_lowercase().contains("certificate"),
        "{err:#}"
    );

    // Plain ws:// to a TLS port does not get a session.
    let plain = format!("ws://{}/v1/realtime", server.addr);
    assert!(connect(&plain, &ConnectOptions::default()).await.is_err());
}

#[test]
fn a_missing_certificate_is_refused_at_start() {
    let output = std::process::Command::new(mmrt_tests::mmrt_binary())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            "/nonexistent/cert.pem",
            "--tls-key",
            "/nonexistent/key.pem",
        ])
        .output()
        .expect("running mmrt");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--tls-cert /nonexistent/cert.pem"),
        "{stderr}"
    );
}

#[tokio::test]
async fn stalled_handshakes_are_dropped_and_others_still_served() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (cert, key) = self_signed(dir.path());
    let server = Server::start(&["--handshake-timeout-seconds", "1"]);
    let tls_server = Server::start(&[
        "--handshake-timeout-seconds",
        "1",
        "--tls-cert",
        cert.to_str().expect("utf-8 path"),
        "--tls-key",
        key.to_str().expect("utf-8 path"),
    ]);

    // A client that connects and sends half a request line, then nothing.
    let mut slow = TcpStream::connect(&server.addr).await.expect("tcp");
    slow.write_all(b"GET /v1/realtime HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("partial request");
    // A client that never starts TLS.
    let mut silent = TcpStream::connect(&tls_server.addr).await.expect("tcp");

    // Meanwhile a well-behaved client is served at once.
    let started = Instant::now();
    let conn = connect(&server.url(), &ConnectOptions::default())
        .await
        .expect("a session while another connection stalls");
    assert!(started.elapsed() < Duration::from_secs(1));
    drop(conn);

    let took = closed_within(&mut slow, Duration::from_secs(5))
        .await
        .expect("the stalled request is dropped");
    assert!(
        took >= Duration::from_millis(500),
        "dropped too early: {took:?}"
    );
    closed_within(&mut silent, Duration::from_secs(5))
        .await
        .expect("the silent TLS client is dropped");
}
