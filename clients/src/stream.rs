//! Streaming media at real-time pace (or as fast as possible).
//!
//! Pacing is drift-free: frame `n` is sent at `start + n * period`, so a slow send
//! delays one frame, not every later one.

use std::path::PathBuf;
use std::time::Duration;

use mmrt_protocol::FrameKind;
use tokio::time::Instant;

use crate::audio::{pcm16_bytes, OpusFrameEncoder, Pcm16Audio, FRAME_MS};
use crate::connection::EventSender;
use crate::error::ClientError;
use crate::media::load_image;

/// How audio goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AudioCodec {
    /// Raw PCM16 at the session rate.
    Pcm16,
    /// One Opus packet per 20 ms frame; binary frames only.
    Opus,
}

/// How media is framed on the WebSocket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// JSON events with base64 payloads.
    Json,
    /// Binary frames with the mmrt header.
    Binary,
}

/// Options for [`stream_audio`].
#[derive(Debug, Clone, Copy)]
pub struct AudioStreamOptions {
    /// Codec.
    pub codec: AudioCodec,
    /// Framing.
    pub transport: Transport,
    /// Send one 20 ms frame every 20 ms; otherwise as fast as the socket takes them.
    pub realtime: bool,
}

/// Streams audio, already at the session rate, in 20 ms frames.
///
/// Returns the number of frames sent.
pub async fn stream_audio(
    sender: &EventSender,
    audio: &Pcm16Audio,
    options: AudioStreamOptions,
) -> Result<usize, ClientError> {
    let mut opus = match (options.codec, options.transport) {
        (AudioCodec::Opus, Transport::Json) => {
            return Err(ClientError::Media(
                "Opus audio travels only in binary frames".into(),
            ))
        }
        (AudioCodec::Opus, Transport::Binary) => Some(OpusFrameEncoder::new(audio.rate)?),
        (AudioCodec::Pcm16, _) => None,
    };
    let period = Duration::from_millis(u64::from(FRAME_MS));
    let start = Instant::now();
    let mut sent = 0;
    for (index, frame) in audio.frames(FRAME_MS).enumerate() {
        if options.realtime {
            tokio::time::sleep_until(start + period * index as u32).await;
        }
        let frame_ms = (frame.len() as u64 * 1000 / u64::from(audio.rate)).max(1);
        match (&mut opus, options.transport) {
            (Some(encoder), _) => {
                let packet = encoder.encode(frame)?;
                sender
                    .send_audio_frame(FrameKind::AudioOpus, &packet, frame_ms, false)
                    .await?
            }
            (None, Transport::Binary) => {
                sender
                    .send_audio_frame(FrameKind::AudioPcm16, &pcm16_bytes(frame), frame_ms, false)
                    .await?
            }
            (None, Transport::Json) => sender.append_audio(&pcm16_bytes(frame)).await?,
        }
        sent += 1;
    }
    Ok(sent)
}

/// Streams `duration` of silence in 20 ms frames (lets server VAD see the turn end).
pub async fn stream_silence(
    sender: &EventSender,
    rate: u32,
    duration: Duration,
    options: AudioStreamOptions,
) -> Result<usize, ClientError> {
    let samples = (u128::from(rate) * duration.as_millis() / 1000) as usize;
    let silence = Pcm16Audio {
        rate,
        samples: vec![0; samples],
    };
    stream_audio(sender, &silence, options).await
}

/// Sends image files as video frames at `fps` (or as fast as possible).
///
/// Returns the number of frames sent.
pub async fn stream_frames(
    sender: &EventSender,
    frames: &[PathBuf],
    fps: f32,
    transport: Transport,
    realtime: bool,
) -> Result<usize, ClientError> {
    if !(fps > 0.0 && fps.is_finite()) {
        return Err(ClientError::Media(format!(
            "frame rate must be above 0, got {fps}"
        )));
    }
    let period = Duration::from_secs_f32(1.0 / fps);
    let start = Instant::now();
    for (index, path) in frames.iter().enumerate() {
        let (format, bytes) = load_image(path)?;
        if realtime {
            tokio::time::sleep_until(start + period.mul_f64(index as f64)).await;
        }
        sender
            .send_video_frame(format, &bytes, None, transport == Transport::Binary)
            .await?;
    }
    Ok(frames.len())
}
