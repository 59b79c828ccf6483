//! Shared helpers of the end-to-end tests: start the real `mmrt` binary on an
//! ephemeral loopback port, and read the samples' manifest.
//!
//! The tests in `tests/` speak the wire protocol through the `mmrt-client` library,
//! exactly as users' clients do.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde::Deserialize;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the repository root")
        .to_path_buf()
}

/// The `mmrt` binary of this build, built on first use.
pub fn mmrt_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| workspace_binary("mmrt-server", "mmrt"))
}

/// The `mmrt-client` binary of this build, built on first use.
pub fn client_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| workspace_binary("mmrt-client", "mmrt-client"))
}

/// Builds a binary of this workspace in the profile the tests run in.
fn workspace_binary(package: &str, bin: &str) -> PathBuf {
    // Tests run from target/<profile>/deps; binaries sit in target/<profile>.
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps layout")
        .to_path_buf();
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .current_dir(repo_root())
        .args(["build", "-q", "-p", package, "--bin", bin]);
    if release {
        build.arg("--release");
    }
    let status = build.status().expect("running cargo build");
    assert!(status.success(), "building {bin} failed");
    profile_dir.join(bin)
}

/// A running server; stopped when dropped.
pub struct Server {
    child: Child,
    pub addr: String,
}

impl Server {
    /// Starts `mmrt serve` on 127.0.0.1 with an ephemeral port and waits until it
    /// listens.
    pub fn start(extra_args: &[&str]) -> Server {
        let mut child = Command::new(mmrt_binary())
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(extra_args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting mmrt");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("mmrt listening on ") {
                    let _ = tx.send(addr.trim().to_string());
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(120);
        let addr = loop {
            if let Ok(addr) = rx.recv_timeout(Duration::from_millis(200)) {
                break addr;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("mmrt exited before listening: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "mmrt did not start listening in time"
            );
        };
        Server { child, addr }
    }

    /// The realtime WebSocket URL.
    pub fn url(&self) -> String {
        format!("ws://{}/v1/realtime", self.addr)
    }

    /// Sends SIGTERM and waits for the process, returning whether it exited cleanly.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(Instant::now() < deadline, "mmrt did not exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One entry of `samples/manifest.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct Sample {
    pub id: String,
    pub audio: Option<String>,
    #[serde(default)]
    pub images: Vec<String>,
    pub frames: Option<FramesSpec>,
    pub text: Option<String>,
    pub expected: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct FramesSpec {
    pub dir: String,
    pub fps: f32,
}

/// Every sample, with paths made absolute.
pub fn samples() -> Vec<Sample> {
    let root = repo_root().join("samples");
    let text = std::fs::read_to_string(root.join("manifest.json")).expect("samples/manifest.json");
    let value: serde_json::Value = serde_json::from_str(&text).expect("manifest is JSON");
    let list = value.get("samples").cloned().unwrap_or(value);
    let mut samples: Vec<Sample> = serde_json::from_value(list).expect("manifest entries");
    let abs = |p: &String| root.join(p).display().to_string();
    for s in samples.iter_mut() {
        s.audio = s.audio.as_ref().map(abs);
        s.images = s.images.iter().map(abs).collect();
        if let Some(f) = s.frames.as_mut() {
            f.dir = abs(&f.dir);
        }
    }
    samples
}
