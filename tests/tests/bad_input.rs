//! Malformed input against the real binary: every bad message is answered with an
//! `error` event carrying a stable `code` and the offending `event_id`, and the session
//! goes on working, shown by a complete response after the errors.

mod raw;

use mmrt_protocol::binary::{FrameHeader, FrameKind};
use mmrt_protocol::encode_frame;
use mmrt_tests::Server;
use raw::Raw;
use serde_json::{json, Value};

fn b64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A PNG whose header declares `width` x `height` pixels, followed by a tiny data
/// chunk: a decoder that trusts the header would allocate width * height * 3 bytes.
fn png_declaring(width: u32, height: u32) -> Vec<u8> {
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |kind: &[u8], data: &[u8]| {
        png.extend((data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend(data);
        png.extend(&body);
        png.extend(crc32(&body).to_be_bytes());
    };
    let mut ihdr = Vec::new();
    ihdr.extend(width.to_be_bytes());
    ihdr.extend(height.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]); // 8-bit RGB, deflate, no filter, no interlace
    chunk(b"IHDR", &ihdr);
    // A zlib stream of zeros that would inflate far beyond what is sent.
    chunk(b"IDAT", &[0x78, 0x9c, 0x63, 0x60, 0x18, 0x05, 0x00, 0x00]);
    chunk(b"IEND", &[]);
    png
}

/// Asserts the error's code and echoed `event_id`.
fn assert_error(event: &Value, code: &str, event_id: Option<&str>) {
    assert_eq!(event["type"], "error", "{event}");
    assert_eq!(event["error"]["code"], code, "{event}");
    match event_id {
        Some(id) => assert_eq!(event["error"]["event_id"], id, "{event}"),
        None => assert!(event["error"]["event_id"].is_null(), "{event}"),
    }
    assert!(
        event["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{event}"
    );
}

/// Sends `message` and expects an error with `code` and `event_id`.
async fn expect_error(raw: &mut Raw, message: Value, code: &str, event_id: Option<&str>) {
    raw.send_json(message).await;
    let error = raw.next_error().await;
    assert_error(&error, code, event_id);
}

fn item_with(part: Value, event_id: &str) -> Value {
    json!({
        "type": "conversation.item.create", "event_id": event_id,
        "item": {"type": "message", "role": "user", "content": [part]}
    })
}

#[tokio::test]
async fn malformed_events_get_coded_errors_and_the_session_goes_on() {
    let server = Server::start(&[]);
    let mut raw = Raw::open(&server.url()).await;
    raw.manual_turns().await;

    // Not JSON at all, and JSON that is not an object.
    raw.send_text("{not json").await;
    assert_error(&raw.next_error().await, "invalid_json", None);
    raw.send_text("[1, 2, 3]").await;
    assert_error(&raw.next_error().await, "invalid_json", None);

    expect_error(
        &mut raw,
        json!({"type": "no.such.event", "event_id": "e_unknown"}),
        "unknown_event",
        Some("e_unknown"),
    )
    .await;
    expect_error(
        &mut raw,
        json!({"type": "input_audio_buffer.append", "event_id": "e_missing"}),
        "invalid_field",
        Some("e_missing"),
    )
    .await;
    expect_error(
        &mut raw,
        json!({"type": "response.create", "event_id": "e_typed",
               "response": {"max_output_tokens": "lots"}}),
        "invalid_field",
        Some("e_typed"),
    )
    .await;
    expect_error(
        &mut raw,
        json!({"type": "input_audio_buffer.append", "event_id": "e_b64", "audio": "!!not base64!!"}),
        "invalid_base64",
        Some("e_b64"),
    )
    .await;
    expect_error(
        &mut raw,
        json!({"type": "input_audio_buffer.append", "event_id": "e_odd", "audio": b64(&[1, 2, 3])}),
        "invalid_audio",
        Some("e_odd"),
    )
    .await;
    expect_error(
        &mut raw,
        item_with(
            json!({"type": "input_image", "image_url": format!("data:image/png;base64,{}", b64(b"not a png at all"))}),
            "e_image",
        ),
        "invalid_image",
        Some("e_image"),
    )
    .await;
    expect_error(
        &mut raw,
        item_with(
            json!({"type": "input_image",
                   "image_url": format!("data:image/png;base64,{}", b64(&png_declaring(100_000, 100_000)))}),
            "e_bomb",
        ),
        "invalid_image",
        Some("e_bomb"),
    )
    .await;
    expect_error(
        &mut raw,
        json!({"type": "input_audio_buffer.commit", "event_id": "e_empty"}),
        "buffer_empty",
        Some("e_empty"),
    )
    .await;
    expect_error(
        &mut raw,
        json!({"type": "response.cancel", "event_id": "e_cancel"}),
        "no_active_response",
        Some("e_cancel"),
    )
    .await;

    // Video frames whose timestamps go backwards.
    let frame = |ts: u64, id: &str| {
        json!({"type": "mmrt.input_video.frame", "event_id": id, "format": "raw_rgb",
               "width": 16, "height": 16, "data": b64(&[128u8; 16 * 16 * 3]), "timestamp_ms": ts})
    };
    raw.send_json(frame(1_000, "e_frame_1")).await;
    expect_error(
        &mut raw,
        frame(500, "e_frame_2"),
        "out_of_order_timestamp",
        Some("e_frame_2"),
    )
    .await;

    // Binary frames: a header that does not parse, and a corrupt Opus packet.
    raw.send_binary(vec![0u8; 10]).await;
    assert_error(&raw.next_error().await, "invalid_binary_frame", None);
    raw.send_binary(b"mXYZ not a frame header at all".to_vec())
        .await;
    assert_error(&raw.next_error().await, "invalid_binary_frame", None);
    let header = FrameHeader::audio(FrameKind::AudioOpus, 0, 0);
    let corrupt = encode_frame(&header, &[0xFF; 40]).expect("encodes");
    raw.send_binary(corrupt).await;
    assert_error(&raw.next_error().await, "invalid_audio", None);

    // After all that, a response still completes.
    let done = raw.text_response("what is two plus two").await;
    let status = done["response"]["status"].as_str().unwrap_or_default();
    assert!(
        status == "completed" || status == "incomplete",
        "a working session answers: {done}"
    );
}

#[tokio::test]
async fn a_second_response_create_while_one_runs_is_refused() {
    let server = Server::start(&[]);
    let mut raw = Raw::open(&server.url()).await;
    raw.manual_turns().await;
    raw.send_json(json!({
        "type": "conversation.item.create",
        "item": {"type": "message", "role": "user",
                 "content": [{"type": "input_text", "text": "count to ten"}]}
    }))
    .await;
    raw.wait_for("conversation.item.done").await;

    // Back to back, so the later ones arrive while the first generates; however fast
    // the model, the first cannot finish before the session reads the second.
    let ids = ["r1", "r2", "r3", "r4"];
    for id in ids {
        raw.send_json(json!({"type": "response.create", "event_id": id,
                             "response": {"max_output_tokens": 512}}))
            .await;
    }
    let (mut created, mut done, mut refused) = (0, 0, Vec::new());
    while created + refused.len() < ids.len() || done < created {
        let event = raw.next().await.expect("session open");
        match event["type"].as_str() {
            Some("response.created") => created += 1,
            Some("response.done") => done += 1,
            Some("error") => {
                assert_eq!(event["error"]["code"], "response_in_progress", "{event}");
                refused.push(
                    event["error"]["event_id"]
                        .as_str()
                        .unwrap_or("")
                        .to_string(),
                );
            }
            _ => {}
        }
    }
    assert!(created >= 1);
    assert!(
        !refused.is_empty() && refused.iter().all(|id| ids[1..].contains(&id.as_str())),
        "creates sent while a response runs are refused with their event_id: {refused:?}"
    );
    // The session still answers.
    raw.text_response("and now").await;
}
