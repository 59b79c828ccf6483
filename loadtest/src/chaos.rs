//! Misbehaving clients for soak runs: mixed in beside the well-behaved ones, they do
//! what hostile or broken clients do, so that a run shows the server shrugging them off
//! (the well-behaved clients see no errors, memory stays flat).
//!
//! Each misbehaving client loops until the level's end, taking the behaviours in turn:
//!
//! - **slow reader**: asks for responses and floods events but never reads; the
//!   server must close it (`slow_consumer`) rather than buffer for it.
//! - **vanisher**: starts a response and drops the TCP connection at the first delta,
//!   without a close frame; the server must free its KV slot.
//! - **garbage**: sends invalid JSON, unknown events, bad base64, a bad binary
//!   header, odd-length PCM and a corrupt JPEG, then a valid request; every bad message
//!   must get an `error` event and the valid request a response.
//! - **staller**: opens TCP, sends half a request line and waits; the server must drop
//!   it at its handshake deadline.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

/// What the misbehaving clients did and how the server answered, over one level.
#[derive(Debug, Default, Serialize)]
pub struct ChaosCounts {
    /// Slow readers started.
    pub slow_readers: AtomicU64,
    /// ... that the server closed while they were not reading.
    pub slow_readers_closed: AtomicU64,
    /// Vanishers that dropped their connection mid-response.
    pub vanished_mid_response: AtomicU64,
    /// Garbage sessions run.
    pub garbage_sessions: AtomicU64,
    /// Bad messages sent by them.
    pub garbage_messages: AtomicU64,
    /// `error` events received for them.
    pub garbage_errors: AtomicU64,
    /// Garbage sessions whose valid request after the garbage was answered.
    pub garbage_then_answered: AtomicU64,
    /// Half-open handshakes held.
    pub stallers: AtomicU64,
    /// ... that the server dropped.
    pub stallers_dropped: AtomicU64,
    /// Attempts that failed to connect at all (a refused session counts here).
    pub connect_failures: AtomicU64,
}

/// Serialisable copy of [`ChaosCounts`].
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct ChaosReport {
    pub slow_readers: u64,
    pub slow_readers_closed: u64,
    pub vanished_mid_response: u64,
    pub garbage_sessions: u64,
    pub garbage_messages: u64,
    pub garbage_errors: u64,
    pub garbage_then_answered: u64,
    pub stallers: u64,
    pub stallers_dropped: u64,
    pub connect_failures: u64,
}

impl ChaosCounts {
    pub fn report(&self) -> ChaosReport {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ChaosReport {
            slow_readers: g(&self.slow_readers),
            slow_readers_closed: g(&self.slow_readers_closed),
            vanished_mid_response: g(&self.vanished_mid_response),
            garbage_sessions: g(&self.garbage_sessions),
            garbage_messages: g(&self.garbage_messages),
            garbage_errors: g(&self.garbage_errors),
            garbage_then_answered: g(&self.garbage_then_answered),
            stallers: g(&self.stallers),
            stallers_dropped: g(&self.stallers_dropped),
            connect_failures: g(&self.connect_failures),
        }
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// Runs one misbehaving client from `start_at` until `stop_at`.
pub async fn run_misbehaving(
    index: usize,
    url: String,
    start_at: Instant,
    stop_at: Instant,
    counts: Arc<ChaosCounts>,
) {
    tokio::time::sleep_until(start_at).await;
    let mut round = index;
    while Instant::now() < stop_at {
        let left = stop_at.saturating_duration_since(Instant::now());
        let limit = left.min(Duration::from_secs(20));
        let behaviour = round % 4;
        round += 1;
        let _ = tokio::time::timeout(limit, async {
            match behaviour {
                0 => slow_reader(&url, &counts).await,
                1 => vanisher(&url, &counts).await,
                2 => garbage(&url, &counts).await,
                _ => staller(&url, &counts).await,
            }
        })
        .await;
        // A pause between attempts keeps them a minority of the traffic.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn open(url: &str, counts: &ChaosCounts) -> Option<Socket> {
    match tokio_tungstenite::connect_async(url).await {
        Ok((socket, _)) => Some(socket),
        Err(_) => {
            bump(&counts.connect_failures);
            None
        }
    }
}

fn event(value: serde_json::Value) -> Message {
    Message::text(value.to_string())
}

fn ask(text: &str) -> [Message; 2] {
    [
        event(serde_json::json!({
            "type": "conversation.item.create",
            "item": {"type": "message", "role": "user",
                     "content": [{"type": "input_text", "text": text}]}
        })),
        event(serde_json::json!({"type": "response.create"})),
    ]
}

/// Floods requests without reading until the server closes the connection.
async fn slow_reader(url: &str, counts: &ChaosCounts) {
    let Some(mut socket) = open(url, counts).await else {
        return;
    };
    bump(&counts.slow_readers);
    // Every `response.create` while one runs is answered with an error event, so the
    // server has plenty to send to a client that never reads.
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        let [item, create] = ask("what is two plus two");
        let sent = tokio::time::timeout(Duration::from_secs(2), async {
            socket.feed(item).await?;
            socket.feed(create).await?;
            socket.flush().await
        })
        .await;
        match sent {
            Ok(Ok(())) => {}
            // A write error means the server closed us; a stalled write means its
            // receive side stopped too. Either way we are cut off.
            Ok(Err(_)) => {
                bump(&counts.slow_readers_closed);
                return;
            }
            Err(_) => break,
        }
    }
    // Only now look: the server should have closed the connection by itself.
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match socket.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return true,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await
    .unwrap_or(false);
    if closed {
        bump(&counts.slow_readers_closed);
    }
}

/// Starts a response and vanishes at its first delta.
async fn vanisher(url: &str, counts: &ChaosCounts) {
    let Some(mut socket) = open(url, counts).await else {
        return;
    };
    for message in ask("what is four times two") {
        if socket.send(message).await.is_err() {
            return;
        }
    }
    while let Some(Ok(message)) = socket.next().await {
        if let Message::Text(text) = message {
            if text.contains("\"response.output_text.delta\"") {
                bump(&counts.vanished_mid_response);
                // Dropping the stream closes the TCP connection with no close frame.
                drop(socket);
                return;
            }
        }
    }
}

/// Sends malformed messages, then a valid request that must still be answered.
async fn garbage(url: &str, counts: &ChaosCounts) {
    let Some(mut socket) = open(url, counts).await else {
        return;
    };
    bump(&counts.garbage_sessions);
    let bad = [
        Message::text("{not json"),
        event(serde_json::json!({"type": "no.such.event"})),
        event(serde_json::json!({"type": "input_audio_buffer.append", "audio": "%%%"})),
        event(serde_json::json!({"type": "input_audio_buffer.append", "audio": "AAEC"})),
        event(serde_json::json!({"type": "conversation.item.create", "item": 7})),
        Message::binary(vec![0xde, 0xad, 0xbe, 0xef, 1, 2, 3]),
        event(serde_json::json!({
            "type": "mmrt.input_video.frame", "format": "jpeg", "timestamp_ms": 0,
            "data": "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAP8="
        })),
        event(serde_json::json!({"type": "response.cancel"})),
    ];
    let sent = bad.len() as u64;
    for message in bad {
        if socket.send(message).await.is_err() {
            return;
        }
    }
    counts.garbage_messages.fetch_add(sent, Ordering::Relaxed);
    for message in ask("what is one plus one") {
        if socket.send(message).await.is_err() {
            return;
        }
    }
    while let Some(Ok(message)) = socket.next().await {
        let Message::Text(text) = message else {
            continue;
        };
        let Ok(value) = serde_json::from_str::<serde_json::Value>(&text) else {
            continue;
        };
        match value["type"].as_str() {
            Some("error") => bump(&counts.garbage_errors),
            Some("response.done") => {
                if value["response"]["status"] == "completed" {
                    bump(&counts.garbage_then_answered);
                }
                break;
            }
            _ => {}
        }
    }
    let _ = socket.close(None).await;
}

/// Holds a half-sent HTTP request until the server drops it.
async fn staller(url: &str, counts: &ChaosCounts) {
    let Some(addr) = url
        .strip_prefix("ws://")
        .and_then(|rest| rest.split('/').next())
    else {
        return;
    };
    let Ok(mut tcp) = TcpStream::connect(addr).await else {
        bump(&counts.connect_failures);
        return;
    };
    bump(&counts.stallers);
    if tcp
        .write_all(b"GET /v1/realtime HTTP/1.1\r\nHost: soak\r\n")
        .await
        .is_err()
    {
        return;
    }
    let mut buf = [0u8; 512];
    loop {
        match tcp.read(&mut buf).await {
            Ok(0) | Err(_) => {
                bump(&counts.stallers_dropped);
                return;
            }
            Ok(_) => continue,
        }
    }
}
