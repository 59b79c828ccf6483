//! Running load: one concurrency level (clients ramped up, bounded in time, with a
//! progress bar), and a sweep of levels that writes one report.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use indicatif::{ProgressBar, ProgressStyle};
use tokio::time::Instant;

use crate::chaos::{run_misbehaving, ChaosCounts, ChaosReport};
use crate::client::{run_client, ClientPlan, Live};
use crate::error::LoadError;
use crate::inputs::Inputs;
use crate::options::LoadOptions;
use crate::report::{LevelReport, RunReport};
use crate::server::SpawnedServer;
use crate::stats::Stats;

/// What one level measured besides the well-behaved clients' stats.
#[derive(Debug, Default)]
pub struct LevelExtras {
    /// The misbehaving clients' counts, when there were any.
    pub chaos: Option<ChaosReport>,
    /// (seconds into the level, resident bytes) of the spawned server.
    pub memory_timeline: Vec<(f64, u64)>,
}

/// Runs `clients` virtual clients against `url` and merges what they measured.
///
/// Clients start evenly over `--ramp-up`; none starts a turn after `--duration`, and
/// each waits at most `--response-timeout` for its last answer, so the level ends by
/// itself. `server_pid`, when known, is sampled for resident memory as it runs.
pub async fn run_level(
    options: Arc<LoadOptions>,
    inputs: Arc<Inputs>,
    url: &str,
    clients: usize,
) -> Result<(Stats, Duration), LoadError> {
    run_level_with(options, inputs, url, clients, None)
        .await
        .map(|(stats, elapsed, _)| (stats, elapsed))
}

/// [`run_level`] plus misbehaving clients and memory sampling.
pub async fn run_level_with(
    options: Arc<LoadOptions>,
    inputs: Arc<Inputs>,
    url: &str,
    clients: usize,
    server_pid: Option<u32>,
) -> Result<(Stats, Duration, LevelExtras), LoadError> {
    let started = Instant::now();
    let stop_at = started + options.duration();
    let ramp = Duration::from_secs_f64(options.ramp_up);
    let live = Arc::new(Live::default());
    let progress = progress_bar(&options, clients);

    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..clients {
        let plan = ClientPlan {
            index,
            start_at: started + ramp.mul_f64(index as f64 / clients as f64),
            stop_at,
            url: url.to_string(),
        };
        tasks.spawn(run_client(
            plan,
            options.clone(),
            inputs.clone(),
            live.clone(),
        ));
    }

    let chaos = Arc::new(ChaosCounts::default());
    let mut misbehaving = tokio::task::JoinSet::new();
    for index in 0..options.misbehaving {
        let start_at = started + ramp.mul_f64(index as f64 / options.misbehaving as f64);
        misbehaving.spawn(run_misbehaving(
            index,
            url.to_string(),
            start_at,
            stop_at,
            chaos.clone(),
        ));
    }

    // Tick the bar while the clients run.
    let mut stats = Stats::default();
    let mut ticker = tokio::time::interval(Duration::from_millis(250));
    let every = Duration::from_secs_f64(options.memory_every.max(0.1));
    let mut next_sample = started;
    let mut timeline = Vec::new();
    loop {
        if let Some(pid) = server_pid {
            if Instant::now() >= next_sample {
                if let Ok(m) = crate::server::read_memory(pid) {
                    timeline.push((started.elapsed().as_secs_f64(), m.rss_bytes));
                }
                next_sample += every;
            }
        }
        tokio::select! {
            joined = tasks.join_next() => match joined {
                Some(Ok(client)) => stats.merge(client),
                Some(Err(err)) => {
                    tracing::error!(?err, "a virtual client panicked");
                    stats.error("client_panicked");
                }
                None => break,
            },
            _ = ticker.tick() => {
                progress.set_position(started.elapsed().as_secs().min(options.duration as u64));
                progress.set_message(format!(
                    "{clients} clients: {} open, {} turns, {} responses, {} errors",
                    live.sessions.load(Ordering::Relaxed),
                    live.turns.load(Ordering::Relaxed),
                    live.responses.load(Ordering::Relaxed),
                    live.errors.load(Ordering::Relaxed),
                ));
            }
        }
    }
    progress.finish_and_clear();
    while misbehaving.join_next().await.is_some() {}
    if let Some(pid) = server_pid {
        if let Ok(m) = crate::server::read_memory(pid) {
            timeline.push((started.elapsed().as_secs_f64(), m.rss_bytes));
        }
    }
    if stats.sessions.is_empty() {
        return Err(LoadError::NoSessions {
            clients,
            first: format!("{:?}", stats.errors),
        });
    }
    let extras = LevelExtras {
        chaos: (options.misbehaving > 0).then(|| chaos.report()),
        memory_timeline: timeline,
    };
    Ok((stats, started.elapsed(), extras))
}

fn progress_bar(options: &LoadOptions, clients: usize) -> ProgressBar {
    if options.no_progress {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(options.duration as u64);
    let style = ProgressStyle::with_template("{elapsed:>4} [{bar:30}] {pos}/{len} s  {msg}")
        .expect("the template is valid")
        .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(format!("{clients} clients"));
    bar
}

/// Runs every level of the options (starting the server first with
/// `--spawn-server`) and returns the report; writing it is the caller's choice.
pub async fn run_sweep(options: LoadOptions) -> Result<RunReport, LoadError> {
    options.validate()?;
    let options = Arc::new(options);
    let inputs = Inputs::load(&options)?;
    let started_unix_s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());

    let server = match &options.spawn_server {
        Some(binary) => {
            let binary = binary.clone();
            let args = options.server_args.clone();
            Some(
                tokio::task::spawn_blocking(move || SpawnedServer::start(&binary, &args))
                    .await
                    .map_err(|err| LoadError::Server(err.to_string()))??,
            )
        }
        None => None,
    };
    let url = server
        .as_ref()
        .map_or(options.url.clone(), SpawnedServer::url);

    let mut levels = Vec::new();
    for clients in options.levels() {
        let pid = server.as_ref().map(SpawnedServer::pid);
        let (stats, elapsed, extras) =
            run_level_with(options.clone(), inputs.clone(), &url, clients, pid).await?;
        // Responses may log their prefill a moment after the client saw them end.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let prefills = server.as_ref().map(SpawnedServer::take_prefills);
        let memory = server.as_ref().map(SpawnedServer::memory).transpose()?;
        let level = LevelReport::new(
            clients,
            elapsed.as_secs_f64(),
            &stats,
            prefills.as_ref(),
            memory,
        )
        .with_extras(extras);
        if !options.no_progress || options.levels().len() > 1 {
            eprintln!("{}", level_line(&level));
        }
        levels.push(level);
        // Let the server settle between levels.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    if let Some(server) = server {
        tokio::task::spawn_blocking(move || server.stop())
            .await
            .map_err(|err| LoadError::Server(err.to_string()))?;
    }
    Ok(RunReport {
        label: options.label.clone(),
        started_unix_s,
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        options: (*options).clone(),
        levels,
        memory: Vec::new(),
    })
}

/// One line per level for the terminal.
pub fn level_line(l: &LevelReport) -> String {
    let ms = |p: Option<crate::stats::Percentiles>| {
        p.map_or("-".into(), |p| format!("{:.1}/{:.1}", p.p50_ms, p.p99_ms))
    };
    let mut line = format!(
        "{:>4} clients: {} turns, {} responses, {} errors; first token p50/p99 {} ms, \
         turn {} ms, overhead {} ms",
        l.clients,
        l.turns,
        l.responses,
        l.error_count(),
        ms(l.first_token),
        ms(l.turn_total),
        ms(l.overhead)
    );
    if let Some(c) = &l.misbehaving {
        line.push_str(&format!(
            "; misbehaving: {} slow readers ({} closed), {} vanished, {} garbage sessions \
             ({} answered), {} stalls ({} dropped)",
            c.slow_readers,
            c.slow_readers_closed,
            c.vanished_mid_response,
            c.garbage_sessions,
            c.garbage_then_answered,
            c.stallers,
            c.stallers_dropped
        ));
    }
    line
}
