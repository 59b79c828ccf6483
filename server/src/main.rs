//! `mmrt`: the real-time multimodal inference server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use mmrt_models::{Bundle, ExecutionProviderKind, RuntimeConfig};
use mmrt_protocol::SessionLimits;
use mmrt_server::app::{router, AppState};
use mmrt_server::engine;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

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
    Serve(ServeArgs),
}

#[derive(Parser, Debug, Clone)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "MMRT_LISTEN", default_value = mmrt_protocol::DEFAULT_ADDR)]
    listen: SocketAddr,
    /// Model bundle folder; the built-in tiny bundle when not given.
    #[arg(long, env = "MMRT_BUNDLE")]
    bundle: Option<PathBuf>,
    /// Execution provider: cpu, cuda, tensorrt or auto.
    #[arg(long, env = "MMRT_EXECUTION_PROVIDER", default_value = "cpu")]
    execution_provider: String,
    /// ONNX Runtime library to load instead of the pinned one.
    #[arg(long, env = "ORT_DYLIB_PATH")]
    ort_library: Option<PathBuf>,
    /// Which pinned ONNX Runtime to fetch: cpu or gpu.
    #[arg(long, env = "MMRT_ORT_FLAVOUR", default_value = "cpu")]
    ort_flavour: String,
    /// Cache folder for the runtime library and TensorRT engines.
    #[arg(long, env = "MMRT_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Intra-op threads per model (0 lets ONNX Runtime choose).
    #[arg(long, env = "MMRT_INTRA_THREADS", default_value_t = 1)]
    intra_threads: usize,
    /// Most sessions at once; more are refused.
    #[arg(long, env = "MMRT_MAX_SESSIONS", default_value_t = 1000)]
    max_sessions: usize,
    /// Jobs waiting for the models before new ones are refused as overloaded.
    #[arg(long, env = "MMRT_QUEUE", default_value_t = 4096)]
    queue: usize,
    /// Seconds responses get to finish on shutdown.
    #[arg(long, env = "MMRT_DRAIN_SECONDS", default_value_t = 10)]
    drain_seconds: u64,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,ort=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::Serve(args)) => args,
        None => ServeArgs::parse_from(["mmrt"]),
    };
    serve(args)
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let provider: ExecutionProviderKind = args
        .execution_provider
        .parse()
        .with_context(|| format!("--execution-provider {}", args.execution_provider))?;
    if args.ort_flavour != "cpu" && args.ort_flavour != "gpu" {
        anyhow::bail!("--ort-flavour {}: expected cpu or gpu", args.ort_flavour);
    }
    let mut runtime = RuntimeConfig::from_env();
    runtime.execution_provider = provider;
    runtime.intra_threads = args.intra_threads;
    runtime.flavour = args.ort_flavour.clone();
    if let Some(path) = &args.ort_library {
        runtime.library_path = Some(path.clone());
    }
    if let Some(dir) = &args.cache_dir {
        runtime.cache_dir = dir.clone();
    }
    let bundle_dir = args
        .bundle
        .clone()
        .unwrap_or_else(mmrt_models::default_bundle_dir);
    let bundle = Bundle::load(&bundle_dir, &runtime)
        .with_context(|| format!("loading the bundle in {}", bundle_dir.display()))?;
    tracing::info!(bundle = %bundle.manifest.name, dir = %bundle_dir.display(), "bundle loaded");
    let engine = engine::start(bundle, args.queue);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let state = AppState {
            engine,
            limits: SessionLimits::default(),
            max_sessions: args.max_sessions,
            sessions: Arc::new(dashmap::DashMap::new()),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
        };
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("binding --listen {}", args.listen))?;
        let local = listener.local_addr()?;
        // Tests and scripts read this line to find an ephemeral port.
        println!("mmrt listening on {local}");
        tracing::info!(%local, "listening");
        let shutdown = state.shutdown.clone();
        let tasks = state.tasks.clone();
        let app = router(state);
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                wait_for_signal().await;
                tracing::info!("shutting down");
                shutdown.cancel();
            })
            .await
            .context("serving")?;
        tasks.close();
        if tokio::time::timeout(Duration::from_secs(args.drain_seconds), tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("sessions did not finish before the drain deadline");
        }
        Ok(())
    })
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
