//! A realtime session over a WebSocket: connect, send events, receive typed events.
//!
//! [`connect`] performs the handshake and waits for `session.created`. The socket is
//! split: an [`EventSender`] (cheap to clone, so audio and video can be streamed from
//! separate tasks) feeds a writer task through a bounded channel, and an
//! [`EventReceiver`] parses what the server sends. Every wait takes a timeout.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use mmrt_protocol::client::{
    ConversationItemCreate, InputAudioBufferAppend, InputAudioBufferClear, InputAudioBufferCommit,
    InputVideoFrame, ResponseCancel, ResponseCreate, ResponseParams, SessionUpdateEvent,
};
use mmrt_protocol::{
    encode_frame, parse_server_event, Base64Bytes, ClientEvent, ContentPart, ErrorCode,
    FrameHeader, FrameKind, ImageFormat, Item, ServerEvent, Session, SessionUpdate,
};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::error::ClientError;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Messages queued for the writer task; small, so a stalled socket blocks senders
/// (and trips their timeout) instead of buffering without bound.
const SEND_QUEUE: usize = 64;

/// How to connect.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Limit for the handshake plus `session.created`.
    pub connect_timeout: Duration,
    /// Limit for queueing one outgoing message.
    pub send_timeout: Duration,
    /// Sent as `Authorization: Bearer ...` when set.
    pub api_key: Option<String>,
    /// PEM certificates trusted for `wss://` besides the system's roots (a private CA
    /// or a self-signed server certificate).
    pub ca_certs: Option<std::path::PathBuf>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            connect_timeout: Duration::from_secs(10),
            send_timeout: Duration::from_secs(5),
            api_key: None,
            ca_certs: None,
        }
    }
}

/// An open session.
#[derive(Debug)]
pub struct Connection {
    /// Sends events; clone it to send from several tasks.
    pub sender: EventSender,
    /// Receives events.
    pub receiver: EventReceiver,
    /// The session as `session.created` announced it.
    pub session: Session,
}

/// TLS trusting the system's roots plus the PEM certificates in `path`.
fn tls_connector(path: &std::path::Path) -> Result<tokio_tungstenite::Connector, ClientError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let bad =
        |reason: String| ClientError::Media(format!("--ca-cert {}: {reason}", path.display()));
    let mut roots = rustls::RootCertStore::empty();
    // Unreadable system certificates are skipped; the given file is what matters here.
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    let mut added = 0;
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(e.to_string()))? {
        roots
            .add(cert.map_err(|e| bad(e.to_string()))?)
            .map_err(|e| bad(e.to_string()))?;
        added += 1;
    }
    if added == 0 {
        return Err(bad("no certificate in the file".into()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_tungstenite::Connector::Rustls(Arc::new(config)))
}

/// Connects to `url` (`ws://host:port/v1/realtime` or `wss://…`) and waits for `session.created`.
pub async fn connect(url: &str, options: &ConnectOptions) -> Result<Connection, ClientError> {
    let connect_error = |err| ClientError::Connect {
        url: url.to_string(),
        err: Box::new(err),
    };
    let mut request = url.into_client_request().map_err(connect_error)?;
    if let Some(key) = &options.api_key {
        let value = HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| {
            ClientError::Media("api key contains characters not allowed in a header".into())
        })?;
        request.headers_mut().insert("authorization", value);
    }
    let connector = match &options.ca_certs {
        Some(path) => Some(tls_connector(path)?),
        None => None,
    };
    let started = Instant::now();
    let (socket, _response) = tokio::time::timeout(
        options.connect_timeout,
        // Nagle off: audio frames and events are small and must not wait for ACKs.
        tokio_tungstenite::connect_async_tls_with_config(request, None, true, connector),
    )
    .await
    .map_err(|_| ClientError::Timeout {
        what: format!("websocket handshake with {url}"),
        after: options.connect_timeout,
    })?
    .map_err(connect_error)?;

    let (sink, stream) = socket.split();
    let (tx, rx) = mpsc::channel(SEND_QUEUE);
    tokio::spawn(write_loop(sink, rx));
    let sender = EventSender {
        tx,
        counters: Arc::new(Counters {
            started,
            audio_sequence: AtomicU32::new(0),
            video_sequence: AtomicU32::new(0),
            audio_ms: AtomicU64::new(0),
        }),
        send_timeout: options.send_timeout,
    };
    let mut receiver = EventReceiver { stream };

    // The server announces the session first.
    let remaining = options.connect_timeout.saturating_sub(started.elapsed());
    let first = receiver.next_event(remaining).await?;
    let session = match first.event {
        ServerEvent::SessionCreated(created) => created.session,
        ServerEvent::Error(err) => return Err(ClientError::Server(err.error.to_protocol_error())),
        other => {
            return Err(ClientError::Unexpected {
                got: other.type_name().to_string(),
                expected: "session.created".into(),
            })
        }
    };
    Ok(Connection {
        sender,
        receiver,
        session,
    })
}

/// Owns the write half; ends when every sender is dropped or the socket fails.
async fn write_loop(
    mut sink: futures_util::stream::SplitSink<Socket, Message>,
    mut rx: mpsc::Receiver<Message>,
) {
    while let Some(message) = rx.recv().await {
        let closing = matches!(message, Message::Close(_));
        if let Err(err) = sink.send(message).await {
            tracing::debug!(?err, "websocket write failed");
            return;
        }
        if closing {
            return;
        }
    }
    let _ = sink.close().await;
}

/// Per-connection media clocks and sequence numbers, shared by sender clones.
#[derive(Debug)]
struct Counters {
    started: Instant,
    audio_sequence: AtomicU32,
    video_sequence: AtomicU32,
    /// Audio sent so far, in ms of media time: the binary audio timestamp.
    audio_ms: AtomicU64,
}

/// The sending half of a session. Cloning shares the socket and the media clocks.
#[derive(Debug, Clone)]
pub struct EventSender {
    tx: mpsc::Sender<Message>,
    counters: Arc<Counters>,
    send_timeout: Duration,
}

impl EventSender {
    async fn queue(&self, message: Message, what: &str) -> Result<(), ClientError> {
        match tokio::time::timeout(self.send_timeout, self.tx.send(message)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(ClientError::Closed {
                reason: "the connection's writer has stopped".into(),
            }),
            Err(_) => Err(ClientError::Timeout {
                what: format!("sending {what}"),
                after: self.send_timeout,
            }),
        }
    }

    /// Sends any client event as JSON.
    pub async fn send(&self, event: &ClientEvent) -> Result<(), ClientError> {
        let text = serde_json::to_string(event).expect("client events always serialize");
        self.queue(Message::text(text), event.type_name()).await
    }

    /// Sends one binary media frame.
    pub async fn send_binary(
        &self,
        header: &FrameHeader,
        payload: &[u8],
    ) -> Result<(), ClientError> {
        let bytes = encode_frame(header, payload)?;
        self.queue(Message::binary(bytes), "binary frame").await
    }

    /// `session.update`.
    pub async fn update_session(&self, session: SessionUpdate) -> Result<(), ClientError> {
        self.send(&ClientEvent::SessionUpdate(SessionUpdateEvent {
            event_id: None,
            session,
        }))
        .await
    }

    /// `input_audio_buffer.append` with PCM16 little-endian bytes (base64 in JSON).
    pub async fn append_audio(&self, pcm16: &[u8]) -> Result<(), ClientError> {
        self.send(&ClientEvent::InputAudioBufferAppend(
            InputAudioBufferAppend {
                event_id: None,
                audio: Base64Bytes(pcm16.to_vec()),
            },
        ))
        .await
    }

    /// A binary audio frame (PCM16 bytes or one Opus packet) covering `duration_ms`.
    pub async fn send_audio_frame(
        &self,
        kind: FrameKind,
        payload: &[u8],
        duration_ms: u64,
        commit: bool,
    ) -> Result<(), ClientError> {
        let sequence = self.counters.audio_sequence.fetch_add(1, Ordering::Relaxed);
        let timestamp_ms = self
            .counters
            .audio_ms
            .fetch_add(duration_ms, Ordering::Relaxed);
        let mut header = FrameHeader::audio(kind, sequence, timestamp_ms);
        if commit {
            header.flags |= mmrt_protocol::binary::FLAG_COMMIT;
        }
        self.send_binary(&header, payload).await
    }

    /// `input_audio_buffer.commit`.
    pub async fn commit(&self) -> Result<(), ClientError> {
        self.send(&ClientEvent::InputAudioBufferCommit(
            InputAudioBufferCommit::default(),
        ))
        .await
    }

    /// `input_audio_buffer.clear`.
    pub async fn clear(&self) -> Result<(), ClientError> {
        self.send(&ClientEvent::InputAudioBufferClear(
            InputAudioBufferClear::default(),
        ))
        .await
    }

    /// `conversation.item.create` with a user message.
    pub async fn create_item(&self, content: Vec<ContentPart>) -> Result<(), ClientError> {
        self.send(&ClientEvent::ConversationItemCreate(
            ConversationItemCreate {
                event_id: None,
                previous_item_id: None,
                item: Item::user(content),
            },
        ))
        .await
    }

    /// A user message with one text part.
    pub async fn send_text(&self, text: &str) -> Result<(), ClientError> {
        self.create_item(vec![ContentPart::text(text)]).await
    }

    /// A user message with one image part (JPEG or PNG bytes).
    pub async fn send_image(&self, format: ImageFormat, bytes: Vec<u8>) -> Result<(), ClientError> {
        self.create_item(vec![ContentPart::image(format, bytes)])
            .await
    }

    /// One video frame, as `mmrt.input_video.frame` JSON or a binary frame.
    ///
    /// The timestamp is the time since the connection opened.
    pub async fn send_video_frame(
        &self,
        format: ImageFormat,
        bytes: &[u8],
        dims: Option<(u16, u16)>,
        binary: bool,
    ) -> Result<(), ClientError> {
        let timestamp_ms = self.counters.started.elapsed().as_millis() as u64;
        let (width, height) = dims.unwrap_or((0, 0));
        if binary {
            let kind = match format {
                ImageFormat::Jpeg => FrameKind::VideoJpeg,
                ImageFormat::Png => FrameKind::VideoPng,
                ImageFormat::RawRgb => FrameKind::VideoRawRgb,
            };
            let sequence = self.counters.video_sequence.fetch_add(1, Ordering::Relaxed);
            let header = FrameHeader::video(kind, sequence, timestamp_ms, width, height);
            return self.send_binary(&header, bytes).await;
        }
        let dim = |d: u16| (d != 0).then_some(u32::from(d));
        self.send(&ClientEvent::InputVideoFrame(InputVideoFrame {
            event_id: None,
            data: Base64Bytes(bytes.to_vec()),
            format,
            width: dim(width),
            height: dim(height),
            timestamp_ms,
        }))
        .await
    }

    /// `response.create`, with optional overrides.
    pub async fn create_response(&self, params: Option<ResponseParams>) -> Result<(), ClientError> {
        self.send(&ClientEvent::ResponseCreate(ResponseCreate {
            event_id: None,
            response: params,
        }))
        .await
    }

    /// `response.cancel` for the running response.
    pub async fn cancel_response(&self) -> Result<(), ClientError> {
        self.send(&ClientEvent::ResponseCancel(ResponseCancel::default()))
            .await
    }

    /// Sends a close frame; the writer stops after it.
    pub async fn close(&self) -> Result<(), ClientError> {
        self.queue(Message::Close(None), "close").await
    }
}

/// A server event with the moment it was read from the socket.
#[derive(Debug, Clone)]
pub struct TimedEvent {
    /// When this client read it.
    pub received_at: Instant,
    /// The event.
    pub event: ServerEvent,
}

/// The receiving half of a session.
#[derive(Debug)]
pub struct EventReceiver {
    stream: futures_util::stream::SplitStream<Socket>,
}

impl EventReceiver {
    /// The next server event, `error` events included, within `timeout`.
    ///
    /// Event types this client does not know are skipped (servers may add events in a
    /// minor version). A close frame or the end of the stream is [`ClientError::Closed`].
    pub async fn next_event(&mut self, timeout: Duration) -> Result<TimedEvent, ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let message = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .map_err(|_| ClientError::Timeout {
                    what: "a server event".into(),
                    after: timeout,
                })?;
            let received_at = Instant::now();
            let text = match message {
                None => {
                    return Err(ClientError::Closed {
                        reason: "stream ended".into(),
                    })
                }
                Some(Err(err)) => return Err(err.into()),
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(Message::Close(frame))) => {
                    let reason = match frame {
                        Some(frame) => format!("{} {}", u16::from(frame.code), frame.reason),
                        None => "no close frame payload".into(),
                    };
                    return Err(ClientError::Closed { reason });
                }
                // Pings are answered by tungstenite; the server sends no binary.
                Some(Ok(_)) => continue,
            };
            match parse_server_event(text.as_str()) {
                Ok(event) => return Ok(TimedEvent { received_at, event }),
                Err(err) if err.code == ErrorCode::UnknownEvent => {
                    tracing::debug!(message = %err.message, "skipping unknown server event");
                }
                Err(err) => return Err(ClientError::BadServerMessage(err)),
            }
        }
    }

    /// Skips events until one matches `wanted`; an `error` event is returned as
    /// [`ClientError::Server`].
    pub async fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        mut wanted: impl FnMut(&ServerEvent) -> bool,
    ) -> Result<TimedEvent, ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let timed = self.next_event(remaining).await.map_err(|err| match err {
                ClientError::Timeout { .. } => ClientError::Timeout {
                    what: what.to_string(),
                    after: timeout,
                },
                other => other,
            })?;
            if let ServerEvent::Error(err) = &timed.event {
                return Err(ClientError::Server(err.error.to_protocol_error()));
            }
            if wanted(&timed.event) {
                return Ok(timed);
            }
        }
    }

    /// Waits for `session.updated` and returns the new session.
    pub async fn wait_session_updated(
        &mut self,
        timeout: Duration,
    ) -> Result<Session, ClientError> {
        let timed = self
            .wait_for("session.updated", timeout, |event| {
                matches!(event, ServerEvent::SessionUpdated(_))
            })
            .await?;
        match timed.event {
            ServerEvent::SessionUpdated(updated) => Ok(updated.session),
            other => Err(ClientError::Unexpected {
                got: other.type_name().to_string(),
                expected: "session.updated".into(),
            }),
        }
    }
}
