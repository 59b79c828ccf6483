//! `mmrt`: the real-time multimodal inference server.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use mmrt_models::{Bundle, RuntimeConfig, SileroVad};
use mmrt_protocol::session::VadModel;
use mmrt_server::app::{router, AppState};
use mmrt_server::auth::Auth;
use mmrt_server::config::{LogFormat, Options, Settings};
use mmrt_server::limits::ServerLimits;
use mmrt_server::vad_thread::{self, VadHandle};
use mmrt_server::{engine, listener, warmup};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod models_command;

#[derive(Parser, Debug)]
#[command(
    name = "mmrt",
    version,
    about = "Real-time multimodal inference server"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the realtime WebSocket API (the default command).
    Serve(Box<Options>),
    /// List and install model bundles.
    Models(models_command::ModelsArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let options = match cli.command {
        Some(Command::Serve(options)) => *options,
        Some(Command::Models(args)) => return models_command::run(args),
        None => {
            #[derive(Parser)]
            struct Bare {
                #[command(flatten)]
                options: Options,
            }
            Bare::parse_from(["mmrt"]).options
        }
    };
    // Keys from the environment only: a flag would show them in `ps`.
    let settings = options.resolve(std::env::var("MMRT_API_KEYS").ok())?;
    init_logging(settings.log_format);
    serve(settings)
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,ort=warn".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().with_current_span(true).init(),
    }
}

fn serve(settings: Settings) -> anyhow::Result<()> {
    let mut runtime = RuntimeConfig::from_env();
    runtime.execution_provider = settings.execution_provider;
    runtime.intra_threads = settings.intra_threads;
    runtime.flavour = settings.ort_flavour.clone();
    if let Some(path) = &settings.ort_library {
        runtime.library_path = Some(path.clone());
    }
    if let Some(dir) = &settings.cache_dir {
        runtime.cache_dir = dir.clone();
    }
    let bundle_dir = settings
        .bundle
        .clone()
        .unwrap_or_else(mmrt_models::default_bundle_dir);
    if !bundle_dir.exists() {
        anyhow::bail!(
            "--bundle {}: no such folder; `mmrt models list` shows the installed bundles \
             and `mmrt models install assistant-en` installs the pretrained one",
            bundle_dir.display()
        );
    }
    let bundle = Bundle::load(&bundle_dir, &runtime)
        .with_context(|| format!("loading the bundle in {}", bundle_dir.display()))?;
    tracing::info!(bundle = %bundle.manifest.name, dir = %bundle_dir.display(), "bundle loaded");
    let engine = engine::start(bundle, settings.engine.clone());
    let vad = match settings.vad_model {
        VadModel::Energy => None,
        VadModel::Silero => Some(start_silero(&runtime, settings.max_sessions)?),
    };

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let state = AppState {
            engine: engine.clone(),
            vad,
            limits: settings.limits.clone(),
            server_limits: ServerLimits {
                max_frames_per_second: settings.max_frames_per_second,
                send_queue: settings.send_queue,
                send_timeout: settings.send_timeout,
                ping_interval: settings.ping_interval,
                pong_timeout: settings.pong_timeout,
            },
            max_sessions: settings.max_sessions,
            sessions: Arc::new(dashmap::DashMap::new()),
            shutdown: CancellationToken::new(),
            drain: settings.drain,
            tasks: TaskTracker::new(),
            auth: Arc::new(Auth::new(
                settings.api_keys.0.clone(),
                settings.allowed_origins.clone(),
            )),
            ready: Arc::new(AtomicBool::new(false)),
        };
        if state.auth.requires_key() {
            tracing::info!(keys = settings.api_keys.0.len(), "api keys required");
        }
        let tls = match &settings.tls {
            Some((cert, key)) => Some(listener::load_tls(cert, key)?),
            None => None,
        };
        let listener = tokio::net::TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("binding --listen {}", settings.listen))?;
        let local = listener.local_addr()?;
        // Tests and scripts read this line to find an ephemeral port.
        println!("mmrt listening on {local}");
        tracing::info!(%local, tls = tls.is_some(), "listening");

        // Ready once one generation has run end to end.
        let ready = state.ready.clone();
        tokio::spawn(async move {
            match warmup::run(&engine).await {
                Ok(took) => {
                    tracing::info!(?took, "warm-up done, ready");
                    ready.store(true, Ordering::Release);
                    mmrt_server::metrics::metrics().ready.set(1);
                }
                Err(err) => tracing::error!(%err, "warm-up failed; /readyz stays unready"),
            }
        });

        let shutdown = state.shutdown.clone();
        let tasks = state.tasks.clone();
        let drain = settings.drain;
        let app = router(state);
        tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                wait_for_signal().await;
                tracing::info!(?drain, "shutting down");
                shutdown.cancel();
            }
        });
        // Stops accepting at the signal; sessions drain under the deadline meanwhile.
        let serving = listener::serve(
            listener,
            app,
            tls,
            settings.handshake_timeout,
            shutdown.clone(),
        );
        let server = tokio::spawn(serving);
        shutdown.cancelled().await;
        tasks.close();
        // Sessions close themselves at the drain deadline; the margin covers the
        // close handshake.
        if tokio::time::timeout(drain + Duration::from_secs(2), tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("sessions did not finish before the drain deadline");
        }
        server.abort();
        Ok(())
    })
}

/// Loads the Silero VAD model (fetched once from its pinned package into the cache) and
/// starts its thread. Each session has at most one job queued, so the session limit
/// bounds the queue.
fn start_silero(runtime: &RuntimeConfig, max_sessions: usize) -> anyhow::Result<VadHandle> {
    let mut config = runtime.clone();
    // A window is a tiny graph; more threads per call only add overhead.
    config.intra_threads = 1;
    let model = SileroVad::load_pinned(&config).context(
        "--vad-model silero (env MMRT_VAD_MODEL, config key `vad_model`): loading the \
         Silero VAD model failed; fix the cause below or choose --vad-model energy",
    )?;
    tracing::info!(file = model.graph().file(), "silero vad loaded");
    vad_thread::start(model, max_sessions).context("starting the mmrt-vad thread")
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => return ctrl_c.await.unwrap_or(()),
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
