//! Raw WebSocket and HTTP access to the server for tests that send what no well-behaved
//! client would: malformed JSON, bad binary frames, custom handshake headers.

#![allow(dead_code)]

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long any single wait in these tests may take.
pub const WAIT: Duration = Duration::from_secs(30);

pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A raw session: JSON values in and out.
pub struct Raw {
    pub ws: Socket,
}

/// How a handshake ended.
pub type Handshake = Result<Raw, tokio_tungstenite::tungstenite::Error>;

/// Opens a session with extra handshake headers.
pub async fn connect_with(url: &str, headers: &[(&str, &str)]) -> Handshake {
    let mut request = url.into_client_request().expect("valid url");
    for (name, value) in headers {
        let name: tokio_tungstenite::tungstenite::http::HeaderName =
            name.parse().expect("valid header name");
        request
            .headers_mut()
            .append(name, HeaderValue::from_str(value).expect("valid header"));
    }
    let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .expect("handshake in time")?;
    Ok(Raw { ws })
}

impl Raw {
    /// Opens a session and reads `session.created`.
    pub async fn open(url: &str) -> Raw {
        let mut raw = connect_with(url, &[]).await.expect("handshake");
        let created = raw.next().await.expect("session.created");
        assert_eq!(created["type"], "session.created", "{created}");
        raw
    }

    pub async fn send_text(&mut self, text: impl Into<String>) {
        let text: String = text.into();
        self.ws
            .send(Message::text(text))
            .await
            .expect("sending text");
    }

    pub async fn send_json(&mut self, value: Value) {
        self.send_text(value.to_string()).await;
    }

    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        self.ws
            .send(Message::binary(bytes))
            .await
            .expect("sending binary");
    }

    /// The next JSON event, or `None` once the server closed.
    pub async fn next(&mut self) -> Option<Value> {
        loop {
            let message = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a server event in time");
            match message {
                Some(Ok(Message::Text(text))) => {
                    return Some(serde_json::from_str(text.as_str()).expect("server sends JSON"))
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Skips events until one of type `kind`; panics on an `error` event.
    pub async fn wait_for(&mut self, kind: &str) -> Value {
        loop {
            let event = self.next().await.expect("session open");
            assert_ne!(event["type"], "error", "waiting for {kind}: {event}");
            if event["type"] == kind {
                return event;
            }
        }
    }

    /// The next `error` event; other events in between are skipped.
    pub async fn next_error(&mut self) -> Value {
        loop {
            let event = self.next().await.expect("session open");
            if event["type"] == "error" {
                return event;
            }
        }
    }

    /// Switches to manual turns at 16 kHz.
    pub async fn manual_turns(&mut self) {
        self.send_json(json!({
            "type": "session.update",
            "session": {"audio": {"input": {
                "format": {"type": "audio/pcm", "rate": 16000},
                "turn_detection": null
            }}}
        }))
        .await;
        self.wait_for("session.updated").await;
    }

    /// Adds a text item and asks for a short response; returns `response.done`.
    pub async fn text_response(&mut self, text: &str) -> Value {
        self.send_json(json!({
            "type": "conversation.item.create",
            "item": {"type": "message", "role": "user",
                     "content": [{"type": "input_text", "text": text}]}
        }))
        .await;
        self.send_json(json!({"type": "response.create", "response": {"max_output_tokens": 8}}))
            .await;
        self.wait_for("response.done").await
    }
}

/// A plain HTTP GET on the server; returns the status and the body.
pub async fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connecting");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("writing the request");
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut response))
        .await
        .expect("a response in time")
        .expect("reading the response");
    let text = String::from_utf8_lossy(&response).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The value of one metric sample (`name{labels}`), from the `/metrics` text.
pub fn metric(text: &str, sample: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == sample).then(|| value.parse().ok())?
        })
        .unwrap_or_else(|| panic!("no sample {sample} in /metrics"))
}

/// Fetches `/metrics` and reads one sample.
pub async fn scrape(addr: &str, sample: &str) -> f64 {
    let (status, body) = http_get(addr, "/metrics").await;
    assert_eq!(status, 200);
    metric(&body, sample)
}
