//! The load test's error type: what stops a run, as opposed to the per-session errors
//! a run counts.

use std::path::PathBuf;

/// Why a load run could not start or finish.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A flag has a value the run cannot use.
    #[error("{flag} {value}: {reason}")]
    BadOption {
        /// The flag, e.g. `--url`.
        flag: &'static str,
        /// Its value as given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Input media could not be read.
    #[error("input media: {0}")]
    Media(#[from] mmrt_client::ClientError),
    /// A file could not be read or written.
    #[error("{path}: {err}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        err: std::io::Error,
    },
    /// The samples manifest does not parse.
    #[error("{path}: {err}")]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// Why.
        err: serde_json::Error,
    },
    /// The spawned server failed.
    #[error("server: {0}")]
    Server(String),
    /// Every session of a level failed to connect; numbers would be meaningless.
    #[error("no session of {clients} connected; first error: {first}")]
    NoSessions {
        /// How many were tried.
        clients: usize,
        /// The first failure.
        first: String,
    },
}

impl LoadError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> LoadError {
        let path = path.into();
        move |err| LoadError::Io { path, err }
    }
}
