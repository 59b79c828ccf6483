//! Helpers shared by the tests of the pretrained assistant bundle: where the repository
//! and the installed bundle are, the committed references, and the skip rule.

#![allow(dead_code)] // Each test file uses its own subset.

use std::path::{Path, PathBuf};

use mmrt_models::RuntimeConfig;
use serde_json::Value;

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("models/ is in the repository")
        .to_path_buf()
}

pub fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A JSON list of token ids.
pub fn ids(value: &Value) -> Vec<u32> {
    value
        .as_array()
        .expect("a list of token ids")
        .iter()
        .map(|v| v.as_u64().expect("token id") as u32)
        .collect()
}

/// `$MMRT_ASSISTANT_DIR`, else `<cache>/bundles/assistant-en`.
pub fn assistant_dir() -> PathBuf {
    match std::env::var_os("MMRT_ASSISTANT_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => RuntimeConfig::from_env()
            .cache_dir
            .join("bundles/assistant-en"),
    }
}

/// Says a test is skipped because `what` is not installed in `dir`, or fails it when
/// `MMRT_REQUIRE_ASSISTANT` is set (CI installs the bundle and sets it).
pub fn skip_missing(test: &str, what: &str, dir: &Path) {
    assert!(
        std::env::var_os("MMRT_REQUIRE_ASSISTANT").is_none(),
        "{test}: MMRT_REQUIRE_ASSISTANT is set but no {what} is in {}",
        dir.display()
    );
    eprintln!(
        "SKIPPED {test}: no {what} in {}; install it with `models/assistant/install.sh` \
         (or `mmrt models install assistant-en`), or set MMRT_ASSISTANT_DIR",
        dir.display()
    );
}
