//! HTTP routes and the WebSocket plumbing of a session: a receive task and a send task
//! joined to the session actor by bounded channels; when one side ends, the others are
//! cancelled.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use dashmap::DashMap;
use futures_util::{SinkExt, StreamExt};
use mmrt_protocol::{new_id, ErrorCode, ProtocolError, ServerEvent, SessionLimits};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::engine::EngineHandle;
use crate::session::{Inbound, Outbound, SessionActor};

/// What every connection shares.
#[derive(Clone)]
pub struct AppState {
    pub engine: EngineHandle,
    pub limits: SessionLimits,
    pub max_sessions: usize,
    /// Live sessions, for lookup, counting and shutdown; each actor owns its own state.
    pub sessions: Arc<DashMap<String, SessionInfo>>,
    /// Fires on shutdown; every session listens.
    pub shutdown: CancellationToken,
    /// Tracks session tasks so shutdown can wait for them.
    pub tasks: TaskTracker,
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

async fn realtime(State(state): State<AppState>, upgrade: WebSocketUpgrade) -> Response {
    if state.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "server is shutting down").into_response();
    }
    let max_message = state.limits.max_event_bytes as usize;
    upgrade
        .max_message_size(max_message)
        .max_frame_size(max_message)
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
    let span = tracing::info_span!("session", session_id = %id);
    let _enter = span.enter();
    tracing::info!("session opened");
    drop(_enter);

    // Ends every task of this connection once any of them ends.
    let done = state.shutdown.child_token();
    let connection = CancellationToken::new();
    // Backpressure: a client that sends faster than the actor works waits on TCP.
    let (in_tx, in_rx) = mpsc::channel::<Inbound>(64);
    // Bounded: a client that stops reading is closed once this fills.
    let (out_tx, mut out_rx) = mpsc::channel::<Outbound>(512);

    let send_task = {
        let connection = connection.clone();
        async move {
            let mut ping = tokio::time::interval(Duration::from_secs(20));
            ping.tick().await;
            loop {
                tokio::select! {
                    message = out_rx.recv() => match message {
                        Some(Outbound::Event(event)) => {
                            let text = event.to_json();
                            if sink.send(Message::Text(text.into())).await.is_err() {
                                break;
                            }
                        }
                        Some(Outbound::Close { code, reason }) => {
                            let frame = CloseFrame { code, reason: reason.into() };
                            let _ = sink.send(Message::Close(Some(frame))).await;
                            break;
                        }
                        None => {
                            let _ = sink.send(Message::Close(None)).await;
                            break;
                        }
                    },
                    _ = ping.tick() => {
                        if sink.send(Message::Ping(Vec::new().into())).await.is_err() {
                            break;
                        }
                    }
                    _ = connection.cancelled() => break,
                }
            }
            connection.cancel();
        }
    };

    let recv_task = {
        let connection = connection.clone();
        async move {
            loop {
                let message = tokio::select! {
                    message = stream.next() => message,
                    _ = connection.cancelled() => break,
                };
                let inbound = match message {
                    Some(Ok(Message::Text(text))) => Inbound::Text(text.to_string()),
                    Some(Ok(Message::Binary(bytes))) => Inbound::Binary(bytes.to_vec()),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Close(_))) | None => break,
                    Some(Err(err)) => {
                        tracing::debug!(?err, "websocket read failed");
                        break;
                    }
                };
                if in_tx.send(inbound).await.is_err() {
                    break;
                }
            }
            connection.cancel();
        }
    };

    let actor = SessionActor::new(
        id.clone(),
        state.engine.clone(),
        state.limits.clone(),
        out_tx,
    );
    let actor_task = {
        let connection = connection.clone();
        let done = done.clone();
        async move {
            tokio::select! {
                _ = actor.run(in_rx, done) => {}
                _ = connection.cancelled() => {}
            }
        }
    };
    tokio::join!(send_task, recv_task, actor_task);
    state.sessions.remove(&id);
    tracing::info!(session_id = %id, "session closed");
}
