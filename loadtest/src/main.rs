//! `mmrt-loadtest`: runs the load described by its flags and writes the reports.

use anyhow::Context;
use clap::Parser;
use mmrt_loadtest::{memory, run_sweep, LoadOptions};

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let options = LoadOptions::parse();
    options.validate()?;
    let out = options.out.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let report = runtime.block_on(async move {
        match options.memory.clone() {
            Some(steps) => memory::run_memory(options, &steps).await,
            None => run_sweep(options).await,
        }
    })?;
    for path in report.write(&out)? {
        println!("wrote {}", path.display());
    }
    print!("{}", report.markdown());
    Ok(())
}
