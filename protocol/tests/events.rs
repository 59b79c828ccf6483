//! Parsing and serializing events: round trips, every client-facing error, and
//! messages exactly as OpenAI Realtime clients send them.

use mmrt_protocol::client::{
    ConversationItemCreate, InputAudioBufferAppend, InputVideoFrame, ResponseCreate,
    ResponseParams, SessionUpdateEvent,
};
use mmrt_protocol::server::{ErrorEvent, OutputTextDelta};
use mmrt_protocol::session::{MaxTokens, MmrtSessionUpdate};
use mmrt_protocol::*;

fn code_of(text: &str) -> (ErrorCode, Option<String>, Option<String>) {
    let err = parse_client_event(text).expect_err(text);
    (err.code, err.param, err.event_id)
}

#[test]
fn client_events_round_trip() {
    let events: Vec<ClientEvent> = vec![
        ClientEvent::SessionUpdate(SessionUpdateEvent {
            event_id: Some("e1".into()),
            session: SessionUpdate {
                turn_detection: Some(None),
                mmrt: Some(MmrtSessionUpdate {
                    max_age_ms: Some(900),
                    ..Default::default()
                }),
                ..Default::default()
            },
        }),
        ClientEvent::InputAudioBufferAppend(InputAudioBufferAppend {
            event_id: None,
            audio: Base64Bytes(vec![1, 2, 3, 4]),
        }),
        ClientEvent::ConversationItemCreate(ConversationItemCreate {
            event_id: Some("e2".into()),
            previous_item_id: None,
            item: Item::user(vec![
                ContentPart::text("what is this?"),
                ContentPart::image(ImageFormat::Png, b"\x89PNG\r\n\x1a\n...".to_vec()),
                ContentPart::audio(vec![0; 8]),
            ]),
        }),
        ClientEvent::ResponseCreate(ResponseCreate {
            event_id: None,
            response: Some(ResponseParams {
                max_output_tokens: Some(MaxTokens::Count(64)),
                temperature: Some(0.5),
                ..Default::default()
            }),
        }),
        ClientEvent::InputVideoFrame(InputVideoFrame {
            event_id: None,
            data: Base64Bytes(vec![7; 2 * 3 * 3]),
            format: ImageFormat::RawRgb,
            width: Some(2),
            height: Some(3),
            timestamp_ms: 1234,
        }),
    ];
    for event in events {
        let text = serde_json::to_string(&event).expect("serializes");
        let back = parse_client_event(&text).expect("own output parses");
        assert_eq!(back, event, "{text}");
    }
}

#[test]
fn null_turn_detection_survives_round_trip() {
    let text = r#"{"type":"session.update","session":{"turn_detection":null}}"#;
    let event = parse_client_event(text).expect("valid");
    let ClientEvent::SessionUpdate(update) = &event else {
        panic!("wrong variant {event:?}");
    };
    assert_eq!(update.session.turn_detection, Some(None));
    let again = serde_json::to_string(&event).expect("serializes");
    assert!(again.contains(r#""turn_detection":null"#), "{again}");
}

#[test]
fn server_events_round_trip() {
    let session = Session::new("sess_1", "mmrt-tiny", SessionLimits::default());
    let events = vec![
        ServerEvent::SessionCreated(server::SessionEvent {
            event_id: new_event_id(),
            session,
        }),
        ServerEvent::OutputTextDelta(OutputTextDelta {
            event_id: new_event_id(),
            response_id: "resp_1".into(),
            item_id: "item_2".into(),
            output_index: 0,
            content_index: 0,
            delta: "Hel".into(),
        }),
        ServerEvent::ResponseDone(server::ResponseEvent {
            event_id: new_event_id(),
            response: Response {
                status: ResponseStatus::Completed,
                usage: Some(Usage::new(10, 3)),
                ..Response::in_progress("resp_1", 64)
            },
        }),
        ServerEvent::error(
            &ProtocolError::invalid_field("session.temperature", "too hot")
                .with_event_id(Some("e9".into())),
        ),
    ];
    for event in events {
        let text = event.to_json();
        let back = parse_server_event(&text).expect("own output parses");
        assert_eq!(back, event, "{text}");
    }
}

#[test]
fn error_event_shape_matches_openai() {
    let event = ServerEvent::error(
        &ProtocolError::new(ErrorCode::BufferEmpty, "nothing to commit")
            .with_event_id(Some("evt_c1".into())),
    );
    let value: serde_json::Value = serde_json::from_str(&event.to_json()).expect("json");
    assert_eq!(value["type"], "error");
    assert!(value["event_id"]
        .as_str()
        .is_some_and(|id| id.starts_with("event_")));
    assert_eq!(value["error"]["type"], "invalid_request_error");
    assert_eq!(value["error"]["code"], "buffer_empty");
    assert_eq!(value["error"]["message"], "nothing to commit");
    assert_eq!(value["error"]["param"], serde_json::Value::Null);
    assert_eq!(value["error"]["event_id"], "evt_c1");
    let ServerEvent::Error(ErrorEvent { error, .. }) = event else {
        unreachable!()
    };
    assert_eq!(error.to_protocol_error().code, ErrorCode::BufferEmpty);
}

#[test]
fn every_client_error_kind() {
    assert_eq!(code_of("{not json").0, ErrorCode::InvalidJson);
    assert_eq!(code_of("[1,2]").0, ErrorCode::InvalidJson);
    assert_eq!(
        code_of(r#"{"event_id":"a","type":"nope.nope"}"#),
        (
            ErrorCode::UnknownEvent,
            Some("type".into()),
            Some("a".into())
        )
    );
    assert_eq!(
        code_of(r#"{"event_id":"b"}"#),
        (
            ErrorCode::InvalidField,
            Some("type".into()),
            Some("b".into())
        )
    );
    assert_eq!(
        code_of(r#"{"event_id":"c","type":"input_audio_buffer.append"}"#),
        (
            ErrorCode::InvalidField,
            Some("audio".into()),
            Some("c".into())
        )
    );
    assert_eq!(
        code_of(r#"{"event_id":"d","type":"input_audio_buffer.append","audio":"@@@"}"#),
        (
            ErrorCode::InvalidBase64,
            Some("audio".into()),
            Some("d".into())
        )
    );
    assert_eq!(
        code_of(r#"{"type":"input_audio_buffer.append","audio":"AAAA"}"#).0,
        ErrorCode::InvalidAudio
    );
    assert_eq!(
        code_of(
            r#"{"type":"session.update","session":{"audio":{"input":{"format":
                {"type":"audio/pcmu"}}}}}"#
        )
        .1
        .as_deref(),
        Some("session.audio.input.format.type")
    );
    assert_eq!(
        code_of(r#"{"type":"session.update","session":{"temperature":"hot"}}"#).1,
        Some("session.temperature".into())
    );
    assert_eq!(
        code_of(
            r#"{"type":"conversation.item.create","item":{"type":"message","role":"assistant",
                "content":[{"type":"input_text","text":"hi"}]}}"#
        )
        .1,
        Some("item.role".into())
    );
    assert_eq!(
        code_of(
            r#"{"type":"conversation.item.create","item":{"type":"message","role":"user",
                "content":[{"type":"input_text","text":"hi"},
                {"type":"input_image","image_url":"data:image/gif;base64,AAAA"}]}}"#
        ),
        (
            ErrorCode::InvalidImage,
            Some("item.content[1].image_url".into()),
            None
        )
    );
    assert_eq!(
        code_of(
            r#"{"type":"mmrt.input_video.frame","data":"AAAA","format":"jpeg","timestamp_ms":1}"#
        )
        .0,
        ErrorCode::InvalidImage
    );
    assert_eq!(
        code_of(
            r#"{"type":"mmrt.input_video.frame","data":"AAAA","format":"raw_rgb",
                "width":1,"height":2,"timestamp_ms":1}"#
        )
        .0,
        ErrorCode::InvalidImage
    );
}

#[test]
fn hostile_input_never_panics() {
    let inputs = [
        "",
        "null",
        "\"x\"",
        "{\"type\":null}",
        "{\"type\":\"session.update\",\"session\":null}",
        "{\"type\":\"response.create\",\"response\":{\"max_output_tokens\":-1}}",
        "{\"type\":\"conversation.item.create\",\"item\":{\"content\":[{}]}}",
        "{\"type\":\"input_audio_buffer.append\",\"audio\":12}",
        "{\"event_id\":5,\"type\":\"input_audio_buffer.commit\"}",
    ];
    for input in inputs {
        let _ = parse_client_event(input);
        let _ = parse_server_event(input);
    }
    // Deep nesting is refused by serde_json's recursion limit, not the stack.
    let deep = "[".repeat(100_000);
    assert_eq!(
        parse_client_event(&deep).map_err(|e| e.code),
        Err(ErrorCode::InvalidJson)
    );
}

/// `session.update` as the OpenAI Agents SDK / GA reference shows it (audio output
/// settings, semantic VAD, tools), which must be accepted as is.
#[test]
fn openai_ga_session_update_literal() {
    let text = r#"{
        "type": "session.update",
        "event_id": "event_123",
        "session": {
            "type": "realtime",
            "model": "gpt-realtime",
            "output_modalities": ["audio"],
            "instructions": "You are a helpful assistant.",
            "audio": {
                "input": {
                    "format": {"type": "audio/pcm", "rate": 24000},
                    "transcription": null,
                    "noise_reduction": null,
                    "turn_detection": {"type": "semantic_vad", "eagerness": "auto"}
                },
                "output": {"format": {"type": "audio/pcm"}, "voice": "marin", "speed": 1.0}
            },
            "tools": [],
            "tool_choice": "auto",
            "max_output_tokens": "inf",
            "tracing": null
        }
    }"#;
    let event = parse_client_event(text).expect("GA session.update parses");
    assert_eq!(event.event_id(), Some("event_123"));
    let ClientEvent::SessionUpdate(update) = event else {
        panic!("wrong variant");
    };
    let mut session = Session::new("s", "m", SessionLimits::default());
    session.apply_update(&update.session).expect("applies");
    assert_eq!(session.input_rate(), 24_000);
    assert!(session.server_vad().is_some());
    assert_eq!(session.instructions, "You are a helpful assistant.");
}

/// The beta shape older clients send.
#[test]
fn openai_beta_session_update_literal() {
    let text = r#"{"event_id":"event_123","type":"session.update","session":{"modalities":["text","audio"],"instructions":"You are a helpful assistant.","voice":"sage","input_audio_format":"pcm16","output_audio_format":"pcm16","input_audio_transcription":{"model":"whisper-1"},"turn_detection":{"type":"server_vad","threshold":0.5,"prefix_padding_ms":300,"silence_duration_ms":500,"create_response":true},"tools":[],"tool_choice":"auto","temperature":0.8,"max_response_output_tokens":"inf"}}"#;
    let ClientEvent::SessionUpdate(update) = parse_client_event(text).expect("parses") else {
        panic!("wrong variant");
    };
    let mut session = Session::new("s", "m", SessionLimits::default());
    session.apply_update(&update.session).expect("applies");
    assert_eq!(
        session.server_vad().map(|v| v.silence_duration_ms),
        Some(500)
    );
}

#[test]
fn openai_literal_append_item_and_response() {
    let append =
        r#"{"event_id":"event_456","type":"input_audio_buffer.append","audio":"AAABAAIA"}"#;
    let ClientEvent::InputAudioBufferAppend(append) = parse_client_event(append).expect("ok")
    else {
        panic!("wrong variant");
    };
    assert_eq!(append.audio.as_bytes(), &[0, 0, 1, 0, 2, 0]);

    let commit = r#"{"event_id":"event_789","type":"input_audio_buffer.commit"}"#;
    assert!(matches!(
        parse_client_event(commit),
        Ok(ClientEvent::InputAudioBufferCommit(_))
    ));

    let item = r#"{"type":"conversation.item.create","item":{"type":"message","role":"user","content":[{"type":"input_text","text":"What is in this image?"},{"type":"input_image","image_url":"data:image/jpeg;base64,/9j/4AAQ"}]}}"#;
    let ClientEvent::ConversationItemCreate(create) = parse_client_event(item).expect("ok") else {
        panic!("wrong variant");
    };
    assert_eq!(create.item.content.len(), 2);

    let response = r#"{"type":"response.create","response":{"output_modalities":["text"],"instructions":"Answer briefly.","max_output_tokens":200}}"#;
    let ClientEvent::ResponseCreate(create) = parse_client_event(response).expect("ok") else {
        panic!("wrong variant");
    };
    let session = Session::new("s", "m", SessionLimits::default());
    let settings = session
        .response_settings(create.response.as_ref())
        .expect("valid overrides");
    assert_eq!(settings.max_output_tokens, 200);

    let cancel = r#"{"type":"response.cancel"}"#;
    assert!(matches!(
        parse_client_event(cancel),
        Ok(ClientEvent::ResponseCancel(_))
    ));
}

#[test]
fn type_lists_match_the_enums() {
    assert_eq!(ClientEvent::TYPES.len(), 8);
    assert!(ServerEvent::TYPES.contains(&"conversation.item.added"));
    assert!(!ServerEvent::TYPES.contains(&"conversation.item.created"));
    let unknown = parse_server_event(r#"{"type":"rate_limits.updated","event_id":"x"}"#);
    assert_eq!(unknown.map_err(|e| e.code), Err(ErrorCode::UnknownEvent));
}
