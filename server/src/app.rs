//! HTTP routes and the WebSocket plumbing of a session: a receive task and a send task
//! joined to the session actor by bounded channels; when one side ends, the others are
//! cancelled.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use dashmap::DashMap;
use futures_util::{SinkExt, StreamExt};
use mmrt_protocol::{new_id, ErrorCode, ProtocolError, ServerEvent, SessionLimits};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::auth::{Auth, AuthError, REALTIME_SUBPROTOCOL};
use crate::engine::EngineHandle;
use crate::limits::ServerLimits;
use crate::metrics::metrics;
use crate::session::{Inbound, Outbound, SessionActor};
use crate::vad_thread::VadHandle;

/// What every connection shares.
#[derive(Clone)]
pub struct AppState {
    pub engine: EngineHandle,
    /// The Silero VAD thread, when the server runs `--vad-model silero`.
    pub vad: Option<VadHandle>,
    pub limits: SessionLimits,
    pub server_limits: ServerLimits,
    pub max_sessions: usize,
    /// Live sessions, for lookup, counting and shutdown; each actor owns its own state.
    pub sessions: Arc<DashMap<String, SessionInfo>>,
    /// Fires on shutdown; every session listens and drains.
    pub shutdown: CancellationToken,
    /// How long sessions get to finish their responses once `shutdown` fires.
    pub drain: Duration,
    /// Tracks session tasks so shutdown can wait for them.
    pub tasks: TaskTracker,
    pub auth: Arc<Auth>,
    /// Set once the bundle is loaded and a warm-up generation ran.
    pub ready: Arc<AtomicBool>,
}

/// What the registry knows of a session.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub started: Instant,
    pub peer: Option<SocketAddr>,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route(mmrt_protocol::REALTIME_PATH, get(realtime))
        .with_state(state)
}

async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    let body = serde_json::json!({
        "status": "ok",
        "bundle": state.engine.info().name,
        "sessions": state.sessions.len(),
        "active_responses": state.engine.active_responses(),
    });
    (StatusCode::OK, axum::Json(body))
}

/// Ready for traffic: the bundle is warmed up and the server is not shutting down.
async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let (status, text) = if state.shutdown.is_cancelled() {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting_down")
    } else if state.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "warming_up")
    };
    (status, text)
}

async fn metrics_text(State(state): State<AppState>) -> impl IntoResponse {
    metrics()
        .queue_depth
        .with_label_values(&["engine_jobs"])
        .set(state.engine.queued_jobs() as i64);
    (
        [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
        metrics().render(),
    )
}

/// An HTTP refusal before the upgrade, with the same error body as the `error` event.
fn refuse(status: StatusCode, err: ProtocolError) -> Response {
    metrics().error(err.code);
    metrics()
        .sessions_closed
        .with_label_values(&[err.code.code()])
        .inc();
    let body = ServerEvent::error(&err).to_json();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn realtime(
    State(state): State<AppState>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    if state.shutdown.is_cancelled() {
        let err = ProtocolError::new(ErrorCode::ShuttingDown, "the server is shutting down");
        return refuse(StatusCode::SERVICE_UNAVAILABLE, err);
    }
    if let Err(err) = state.auth.check(&headers) {
        let status = match err {
            AuthError::OriginNotAllowed => StatusCode::FORBIDDEN,
            AuthError::MissingKey | AuthError::BadKey => StatusCode::UNAUTHORIZED,
        };
        tracing::info!(reason = %err, "connection refused");
        return refuse(status, ProtocolError::new(err.code(), err.to_string()));
    }
    let max_message = state.limits.max_event_bytes as usize;
    upgrade
        // Browsers sending a key as a subprotocol also offer `realtime`, and fail the
        // connection unless the server picks one of theirs.
        .protocols([REALTIME_SUBPROTOCOL])
        .max_message_size(max_message)
        .max_frame_size(max_message)
        // Per-connection buffers dominate an idle session's memory: read in 8 KiB
        // pieces (larger messages still arrive whole) and write each event at once.
        .read_buffer_size(8 << 10)
        .write_buffer_size(0)
        .on_upgrade(move |socket| {
            let tasks = state.tasks.clone();
            tasks.track_future(serve_socket(state, socket))
        })
}

/// Runs one connection to its end.
async fn serve_socket(state: AppState, socket: WebSocket) {
    let (mut sink, mut stream) = socket.split();
    let id = new_id("sess");

    if state.sessions.len() >= state.max_sessions {
        let err = ProtocolError::new(
            ErrorCode::SessionLimit,
            format!("the server holds at most {} sessions", state.max_sessions),
        );
        metrics().error(err.code);
        metrics()
            .sessions_closed
            .with_label_values(&[err.code.code()])
            .inc();
        let _ = sink
            .send(Message::Text(ServerEvent::error(&err).to_json().into()))
            .await;
        let _ = sink
            .send(Message::Close(Some(CloseFrame {
                code: 1013,
                reason: ErrorCode::SessionLimit.code().into(),
            })))
            .await;
        return;
    }
    state.sessions.insert(
        id.clone(),
        SessionInfo {
            started: Instant::now(),
            peer: None,
        },
    );
    metrics().sessions_opened.inc();
    metrics().sessions_active.inc();
    let span = tracing::info_span!("session", session_id = %id);
    span.in_scope(|| tracing::info!("session opened"));

    // Ends every task of this connection once any of them ends.
    let connection = CancellationToken::new();
    let limits = state.server_limits.clone();
    // Backpressure: a client that sends faster than the actor works waits on TCP.
    let (in_tx, in_rx) = mpsc::channel::<Inbound>(64);
    // Bounded: a client that stops reading is closed once this fills.
    let (out_tx, mut out_rx) = mpsc::channel::<Outbound>(limits.send_queue);

    let send_task = {
        let connection = connection.clone();
        let limits = limits.clone();
        async move {
            let mut ping = tokio::time::interval(limits.ping_interval);
            ping.tick().await;
            loop {
                let message = tokio::select! {
                    message = out_rx.recv() => match message {
                        Some(Outbound::Event(event)) => Message::Text(event.to_json().into()),
                        Some(Outbound::Close { code, reason }) => {
                            let frame = CloseFrame { code, reason: reason.into() };
                            Message::Close(Some(frame))
                        }
                        None => Message::Close(None),
                    },
                    _ = ping.tick() => Message::Ping(Vec::new().into()),
                    _ = connection.cancelled() => break,
                };
                let closing = matches!(message, Message::Close(_));
                // A write that cannot finish (the client stopped reading and TCP is
                // full) ends the connection instead of holding it forever.
                let written = tokio::select! {
                    r = tokio::time::timeout(limits.send_timeout, sink.send(message)) => {
                        matches!(r, Ok(Ok(())))
                    }
                    _ = connection.cancelled() => false,
                };
                if !written || closing {
                    break;
                }
            }
            connection.cancel();
        }
    };

    let recv_task = {
        let connection = connection.clone();
        // The server pings every interval, so a live client is never silent longer.
        let silence = limits.ping_interval + limits.pong_timeout;
        async move {
            let mut reason = None;
            loop {
                let message = tokio::select! {
                    message = tokio::time::timeout(silence, stream.next()) => message,
                    _ = connection.cancelled() => break,
                };
                let inbound = match message {
                    Err(_) => {
                        tracing::info!("no pong in time, closing");
                        reason = Some(ErrorCode::Timeout.code());
                        break;
                    }
                    Ok(Some(Ok(Message::Text(text)))) => Inbound::Text(text.to_string()),
                    Ok(Some(Ok(Message::Binary(bytes)))) => Inbound::Binary(bytes.to_vec()),
                    Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                    Ok(Some(Ok(Message::Close(_))) | None) => break,
                    Ok(Some(Err(err))) => {
                        tracing::debug!(?err, "websocket read failed");
                        break;
                    }
                };
                if in_tx.send(inbound).await.is_err() {
                    break;
                }
            }
            connection.cancel();
            reason
        }
    };

    let actor = SessionActor::new(
        id.clone(),
        state.engine.clone(),
        state.limits.clone(),
        out_tx,
    )
    .with_server_limits(&limits, state.drain)
    .with_vad_model(state.vad.clone());
    let actor_task = {
        let connection = connection.clone();
        let shutdown = state.shutdown.clone();
        async move {
            let reason = tokio::select! {
                reason = actor.run(in_rx, shutdown) => reason,
                _ = connection.cancelled() => return None,
            };
            if reason == ErrorCode::SlowConsumer.code() {
                // Nothing more will be read by this client; drop it now.
                connection.cancel();
            } else {
                // Let the send task deliver what is queued and the close frame.
                tokio::select! {
                    _ = tokio::time::sleep(limits.send_timeout) => connection.cancel(),
                    _ = connection.cancelled() => {}
                }
            }
            Some(reason)
        }
    };
    let ((), recv_reason, actor_reason) = async { tokio::join!(send_task, recv_task, actor_task) }
        .instrument(span.clone())
        .await;
    state.sessions.remove(&id);
    let reason = actor_reason
        .or(recv_reason)
        .unwrap_or(crate::session::CLIENT_CLOSED);
    metrics().sessions_active.dec();
    metrics().sessions_closed.with_label_values(&[reason]).inc();
    span.in_scope(|| tracing::info!(reason, "session closed"));
}
