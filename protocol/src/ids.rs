//! Unique ids for server events, sessions, items and responses.
//!
//! An id is a prefix, a per-process salt and a counter: unique within a process by
//! the counter, and unlikely to repeat across restarts thanks to the salt taken from
//! the clock and process id. They are not secrets.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

static COUNTER: AtomicU64 = AtomicU64::new(0);

fn salt() -> u32 {
    static SALT: OnceLock<u32> = OnceLock::new();
    *SALT.get_or_init(|| {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        // Mix so that nearby start times give unrelated salts.
        let mixed = (nanos ^ u64::from(std::process::id()).rotate_left(32))
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
        (mixed >> 32) as u32
    })
}

/// A new id such as `resp_3f2a9c01000000000000002a`.
pub fn new_id(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}_{:08x}{n:016x}", salt())
}

/// A new server `event_id`.
pub fn new_event_id() -> String {
    new_id("event")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique() {
        let ids: std::collections::HashSet<_> = (0..1000).map(|_| new_event_id()).collect();
        assert_eq!(ids.len(), 1000);
        assert!(new_id("resp").starts_with("resp_"));
    }
}
