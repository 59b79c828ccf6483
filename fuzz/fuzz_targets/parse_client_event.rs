//! Any text a client sends must parse or fail with a protocol error, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(event) = mmrt_protocol::parse_client_event(text) {
            // Checking and serializing what parsed must not panic either.
            let _ = event.validate();
            let _ = serde_json::to_string(&event);
        }
    }
});
