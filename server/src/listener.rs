//! Accepting connections: TCP, optional TLS, and the HTTP/1.1 handshake under a
//! deadline.
//!
//! Each accepted socket gets its own task, so a client that connects and then stalls
//! (never finishing TLS, or sending its request headers a byte at a time) holds up
//! nobody else, and is dropped once `handshake_timeout` passes. The deadline covers the
//! TLS handshake and the request headers; after the WebSocket upgrade the session's own
//! idle and ping/pong timeouts take over.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::connect_info::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::metrics::metrics;

/// Why the TLS configuration could not be loaded; the message names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("--tls-cert {path}: {reason}")]
    Cert { path: String, reason: String },
    #[error("--tls-key {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("--tls-cert/--tls-key: the key does not fit the certificate: {0}")]
    Mismatch(String),
}

/// Reads a PEM certificate chain and private key into a TLS acceptor.
pub fn load_tls(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let cert_err = |reason: String| TlsError::Cert {
        path: cert.display().to_string(),
        reason,
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| cert_err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_err(e.to_string()))?;
    if chain.is_empty() {
        return Err(cert_err("no certificate in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.display().to_string(),
        reason: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Mismatch(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Mismatch(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Accepts connections until `shutdown` fires, serving each on its own task.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<TlsAcceptor>,
    handshake_timeout: Duration,
    shutdown: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.cancelled() => break,
        };
        let (tcp, peer) = match accepted {
            Ok(pair) => pair,
            Err(err) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(%err, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Small event frames go out at once: Nagle's algorithm would hold a token's
        // delta back until the previous one is acknowledged.
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(?err, "could not set TCP_NODELAY");
        }
        let app = app.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            connection(tcp, peer, app, tls, handshake_timeout).await;
        });
    }
}

async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    app: Router,
    tls: Option<TlsAcceptor>,
    handshake_timeout: Duration,
) {
    match tls {
        None => http(TokioIo::new(tcp), peer, app, handshake_timeout).await,
        Some(acceptor) => {
            match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => http(TokioIo::new(stream), peer, app, handshake_timeout).await,
                Ok(Err(err)) => {
                    metrics()
                        .handshake_failures
                        .with_label_values(&["tls"])
                        .inc();
                    tracing::debug!(%peer, %err, "TLS handshake failed");
                }
                Err(_) => {
                    metrics()
                        .handshake_failures
                        .with_label_values(&["timeout"])
                        .inc();
                    tracing::debug!(%peer, "TLS handshake timed out");
                }
            }
        }
    }
}

async fn http<IO>(io: TokioIo<IO>, peer: SocketAddr, app: Router, handshake_timeout: Duration)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        app.clone().oneshot(request)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(handshake_timeout);
    if let Err(err) = builder.serve_connection(io, service).with_upgrades().await {
        if err.is_timeout() {
            metrics()
                .handshake_failures
                .with_label_values(&["timeout"])
                .inc();
        }
        tracing::debug!(%peer, %err, "connection ended with an error");
    }
}
