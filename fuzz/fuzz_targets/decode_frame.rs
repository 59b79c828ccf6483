//! Any binary message must decode or fail with a frame error, never panic, and what
//! decodes must encode back to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = mmrt_protocol::decode_frame(data) {
        let encoded = mmrt_protocol::encode_frame(&frame.header, frame.payload)
            .expect("a decoded frame encodes");
        assert_eq!(encoded, data);
    }
});
