//! The server under test when the load test starts it: `mmrt serve` on an ephemeral
//! loopback port, its resident memory from `/proc`, and the prefill times it logs.
//!
//! The engine measures each response's prompt assembly and prefill; the session logs it
//! at debug level (`prefilled session_id=... prefill=...`). The spawned server runs
//! with only that module at debug, and a thread collects those lines by session, so
//! that the report can subtract the model's own time from the time to first token.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::LoadError;

/// Prefill times (µs) by session id, in the order the responses started.
pub type Prefills = Arc<Mutex<HashMap<String, Vec<u64>>>>;

/// A running `mmrt serve`; killed when dropped.
#[derive(Debug)]
pub struct SpawnedServer {
    child: Child,
    /// `host:port` it listens on.
    pub addr: String,
    /// What the log said about prefills so far.
    pub prefills: Prefills,
}

impl SpawnedServer {
    /// Starts `binary serve --listen 127.0.0.1:0 extra_args...` and waits (up to two
    /// minutes: the first start may fetch ONNX Runtime) for its "listening" line.
    pub fn start(binary: &Path, extra_args: &[String]) -> Result<SpawnedServer, LoadError> {
        let mut child = Command::new(binary)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(extra_args)
            .env("RUST_LOG", "warn,ort=warn,mmrt_server::session=debug")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|err| LoadError::Server(format!("starting {}: {err}", binary.display())))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");

        // Stdout carries the address; stderr the log, of which we keep prefills and
        // echo warnings and errors.
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("mmrt listening on ") {
                    let _ = addr_tx.send(addr.trim().to_string());
                }
            }
        });
        let prefills: Prefills = Arc::default();
        let sink = prefills.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                match parse_prefill_line(&line) {
                    Some((session, micros)) => {
                        if let Ok(mut map) = sink.lock() {
                            map.entry(session).or_default().push(micros);
                        }
                    }
                    None if line.contains(" DEBUG ") => {}
                    None => eprintln!("[mmrt] {line}"),
                }
            }
        });

        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Ok(addr) = addr_rx.recv_timeout(Duration::from_millis(200)) {
                return Ok(SpawnedServer {
                    child,
                    addr,
                    prefills,
                });
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(LoadError::Server(format!(
                    "exited before listening: {status}"
                )));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(LoadError::Server("did not listen within 120 s".into()));
            }
        }
    }

    /// The realtime WebSocket URL.
    pub fn url(&self) -> String {
        format!("ws://{}{}", self.addr, mmrt_protocol::REALTIME_PATH)
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident and peak resident bytes now.
    pub fn memory(&self) -> Result<ProcessMemory, LoadError> {
        read_memory(self.pid())
    }

    /// Takes the prefill times logged so far.
    pub fn take_prefills(&self) -> HashMap<String, Vec<u64>> {
        self.prefills
            .lock()
            .map(|mut map| std::mem::take(&mut *map))
            .unwrap_or_default()
    }

    /// Asks the server to stop (SIGTERM) and waits up to 15 s, then kills it.
    pub fn stop(mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for SpawnedServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Resident memory of a process.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct ProcessMemory {
    /// `VmRSS` in bytes.
    pub rss_bytes: u64,
    /// `VmHWM` (peak resident) in bytes.
    pub peak_rss_bytes: u64,
}

/// Reads `VmRSS` and `VmHWM` from `/proc/PID/status`.
pub fn read_memory(pid: u32) -> Result<ProcessMemory, LoadError> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).map_err(LoadError::io(&path))?;
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().strip_suffix("kB"))
            .and_then(|kb| kb.trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .ok_or_else(|| LoadError::Server(format!("{path}: no {name}")))
    };
    Ok(ProcessMemory {
        rss_bytes: field("VmRSS:")?,
        peak_rss_bytes: field("VmHWM:")?,
    })
}

/// `(session_id, prefill µs)` from a `prefilled` debug line.
fn parse_prefill_line(line: &str) -> Option<(String, u64)> {
    if !line.contains("prefilled") {
        return None;
    }
    let mut session = None;
    let mut prefill = None;
    for word in line.split_whitespace() {
        // The id is a field of the line or of its span (`response{session_id=…`).
        if let Some(at) = word.find("session_id=") {
            let id = &word[at + "session_id=".len()..];
            session = Some(id.trim_end_matches(['}', ':', ',']).to_string());
        } else if let Some(value) = word.strip_prefix("prefill=") {
            prefill = parse_debug_duration(value);
        }
    }
    Some((session?, prefill?))
}

/// A `Duration`'s `Debug` text (`812.3µs`, `1.25ms`, `2s`) in microseconds.
fn parse_debug_duration(text: &str) -> Option<u64> {
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().ok()?;
    let micros = match unit {
        "ns" => value / 1000.0,
        "µs" | "us" => value,
        "ms" => value * 1000.0,
        "s" => value * 1_000_000.0,
        _ => return None,
    };
    Some(micros.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefill_lines_parse() {
        let line = "2026-01-01T00:00:00.000001Z DEBUG mmrt_server::session: prefilled \
                    session_id=sess_abc prefill=1.5ms input_tokens=70";
        assert_eq!(parse_prefill_line(line), Some(("sess_abc".into(), 1500)));
        // As the server logs it now: inside the response's span.
        let line = "2026-01-01T00:00:00.000001Z DEBUG response{session_id=sess_abc \
                    response_id=resp_1}: mmrt_server::session::response: prefilled \
                    prefill=2ms input_tokens=70";
        assert_eq!(parse_prefill_line(line), Some(("sess_abc".into(), 2000)));
        assert_eq!(parse_debug_duration("812.4µs"), Some(812));
        assert_eq!(parse_debug_duration("2s"), Some(2_000_000));
        assert_eq!(parse_debug_duration("900ns"), Some(1));
        assert_eq!(parse_prefill_line("WARN something else"), None);
    }

    #[test]
    fn own_memory_reads() {
        let memory = read_memory(std::process::id()).expect("/proc/self");
        assert!(memory.rss_bytes > 0 && memory.peak_rss_bytes >= memory.rss_bytes);
    }
}
