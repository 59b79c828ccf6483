//! `mmrt-client`: send audio, images, video frames and text to an mmrt server and
//! print the answer as it streams.
//!
//! The answer goes to stdout, timings and the modality report to stderr. The exit
//! status is 0 for a completed (or cut short) response, 1 for an error event, a failed
//! response or any local error, and 2 for a timeout.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use mmrt_client::audio::Pcm16Audio;
use mmrt_client::media::{list_frames, load_image};
use mmrt_client::stream::stream_silence;
use mmrt_client::{
    collect_response, connect, stream_audio, stream_frames, AudioCodec, AudioStreamOptions,
    ClientError, CollectOptions, ConnectOptions, Transport,
};
use mmrt_protocol::client::ResponseParams;
use mmrt_protocol::session::{
    AudioFormat, AudioFormatType, AudioInputUpdate, AudioUpdate, MaxTokens, ServerVadUpdate,
    TurnDetectionUpdate,
};
use mmrt_protocol::{ContentPart, ResponseStatus, SessionUpdate};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Codec {
    Pcm16,
    Opus,
}

/// Send media to an mmrt realtime server and print the streamed answer.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// WebSocket URL of the realtime endpoint.
    #[arg(
        long,
        env = "MMRT_URL",
        default_value = "ws://127.0.0.1:8080/v1/realtime"
    )]
    url: String,
    /// API key, sent as a bearer token.
    #[arg(long, env = "MMRT_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// PEM certificate(s) to trust for wss:// besides the system's roots.
    #[arg(long, env = "MMRT_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// WAV file to stream (resampled to the session rate if needed).
    #[arg(long)]
    audio: Option<PathBuf>,
    /// Image to send in the user message (JPEG or PNG); repeatable.
    #[arg(long)]
    image: Vec<PathBuf>,
    /// Folder of JPEG/PNG frames to stream as video, in name order.
    #[arg(long)]
    frames: Option<PathBuf>,
    /// Frame rate for --frames.
    #[arg(long, default_value_t = 2.0)]
    fps: f32,
    /// Text to send in the user message.
    #[arg(long)]
    text: Option<String>,
    /// Audio codec; opus implies --binary.
    #[arg(long, value_enum, default_value = "pcm16")]
    codec: Codec,
    /// Send media as binary frames instead of base64 JSON.
    #[arg(long)]
    binary: bool,
    /// Send media as fast as possible instead of in real time.
    #[arg(long)]
    no_pace: bool,
    /// Let server VAD end the turn and start the response (default: manual commit).
    #[arg(long)]
    vad: bool,
    /// Input sample rate to ask for (16000 or 24000); default: the server's.
    #[arg(long)]
    rate: Option<u32>,
    /// Output token cap for the response.
    #[arg(long)]
    max_output_tokens: Option<u32>,
    /// Seconds to wait for the answer once all media is sent (also the connect limit).
    #[arg(long, default_value_t = 30.0)]
    timeout: f64,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    match run(Args::parse()).await {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            let timed_out = matches!(
                err.downcast_ref::<ClientError>(),
                Some(ClientError::Timeout { .. })
            );
            ExitCode::from(if timed_out { 2 } else { 1 })
        }
    }
}

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let timeout = Duration::try_from_secs_f64(args.timeout)
        .ok()
        .filter(|t| !t.is_zero())
        .with_context(|| format!("--timeout must be a positive number, got {}", args.timeout))?;
    let codec = match args.codec {
        Codec::Pcm16 => AudioCodec::Pcm16,
        Codec::Opus => AudioCodec::Opus,
    };
    let transport = if args.binary || codec == AudioCodec::Opus {
        Transport::Binary
    } else {
        Transport::Json
    };
    if args.audio.is_none() && args.image.is_empty() && args.frames.is_none() && args.text.is_none()
    {
        anyhow::bail!("nothing to send: give --audio, --image, --frames or --text");
    }

    // Read local media first, so a bad file fails before connecting.
    let audio = args
        .audio
        .as_deref()
        .map(Pcm16Audio::from_wav_file)
        .transpose()?;
    let images = args
        .image
        .iter()
        .map(|path| load_image(path))
        .collect::<Result<Vec<_>, _>>()?;
    let frames = args.frames.as_deref().map(list_frames).transpose()?;

    // Connect and configure the session.
    let options = ConnectOptions {
        connect_timeout: timeout,
        api_key: args.api_key.clone(),
        ca_certs: args.ca_cert.clone(),
        ..ConnectOptions::default()
    };
    let mut conn = connect(&args.url, &options).await?;
    let turn_detection = if args.vad {
        Some(TurnDetectionUpdate::ServerVad(ServerVadUpdate {
            create_response: Some(true),
            ..ServerVadUpdate::default()
        }))
    } else {
        None
    };
    let update = SessionUpdate {
        audio: Some(AudioUpdate {
            input: Some(AudioInputUpdate {
                format: args.rate.map(|rate| AudioFormat {
                    kind: AudioFormatType::Pcm,
                    rate: Some(rate),
                }),
                turn_detection: Some(turn_detection),
            }),
        }),
        max_output_tokens: args.max_output_tokens.map(MaxTokens::Count),
        ..SessionUpdate::default()
    };
    conn.sender.update_session(update).await?;
    let session = conn.receiver.wait_session_updated(timeout).await?;
    let rate = session.input_rate();
    let audio = audio.map(|audio| audio.resampled(rate)).transpose()?;

    // Everything is sent from one task while this one reads events, so that an error
    // event stops the run at once.
    let realtime = !args.no_pace;
    let media_time = audio.as_ref().map(Pcm16Audio::duration).unwrap_or_default()
        + frames
            .as_ref()
            .map(|f| Duration::from_secs_f32(f.len() as f32 / args.fps.max(0.001)))
            .unwrap_or_default();
    let sender = conn.sender.clone();
    let vad = args.vad;
    let text = args.text.clone();
    let fps = args.fps;
    let mut send = tokio::spawn(async move {
        let mut content: Vec<ContentPart> = images
            .into_iter()
            .map(|(format, bytes)| ContentPart::image(format, bytes))
            .collect();
        content.extend(text.map(ContentPart::text));
        if !content.is_empty() {
            sender.create_item(content).await?;
        }

        let audio_options = AudioStreamOptions {
            codec,
            transport,
            realtime,
        };
        let video = async {
            match &frames {
                Some(frames) => stream_frames(&sender, frames, fps, transport, realtime).await,
                None => Ok(0),
            }
        };
        let speech = async {
            match &audio {
                Some(audio) => stream_audio(&sender, audio, audio_options).await,
                None => Ok(0),
            }
        };
        let (video, speech) = tokio::join!(video, speech);
        video?;
        speech?;

        if vad {
            // Trailing silence lets the server's VAD see the end of the turn.
            stream_silence(&sender, rate, Duration::from_millis(1500), audio_options).await?;
            return Ok::<_, ClientError>(None);
        }
        if audio.is_some() {
            sender.commit().await?;
        }
        let end_of_turn = Instant::now();
        sender
            .create_response(Some(ResponseParams::default()))
            .await?;
        Ok(Some(end_of_turn))
    });

    let deadline = Instant::now() + media_time + timeout + Duration::from_secs(2);
    let collect = collect_response(
        &mut conn.receiver,
        CollectOptions {
            deadline,
            skip_cancelled: vad,
        },
        |delta| {
            let mut stdout = std::io::stdout().lock();
            let _ = stdout.write_all(delta.as_bytes());
            let _ = stdout.flush();
        },
    );
    tokio::pin!(collect);
    let mut manual_end_of_turn = None;
    let mut sending = true;
    let outcome = loop {
        tokio::select! {
            joined = &mut send, if sending => {
                sending = false;
                manual_end_of_turn = joined.context("send task panicked")??;
            }
            outcome = &mut collect => break outcome?,
        }
    };
    if sending {
        // The answer came before all media was out (server VAD); stop sending.
        send.abort();
    }
    println!();

    // Timings are measured from the end of the user's turn as this client saw it.
    let end_of_turn = manual_end_of_turn
        .or(outcome.speech_stopped_at)
        .or(outcome.created_at)
        .unwrap_or(outcome.done_at);
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let ttft = outcome
        .time_to_first_token(end_of_turn)
        .map_or("none".to_string(), |d| format!("{:.1}", ms(d)));
    let usage = outcome.response.usage.clone().unwrap_or_default();
    eprintln!(
        "status={:?} ttft_ms={ttft} total_ms={:.1} deltas={} input_tokens={} output_tokens={}",
        outcome.response.status,
        ms(outcome.total(end_of_turn)),
        outcome.deltas.len(),
        usage.input_tokens,
        usage.output_tokens,
    );
    for transcript in &outcome.transcripts {
        eprintln!("transcript={transcript:?}");
    }
    for state in outcome.modality_report.iter().flatten() {
        eprintln!(
            "modality={:?} status={:?} fill={:?} age_ms={:?}",
            state.modality, state.status, state.fill, state.age_ms
        );
    }
    let _ = conn.sender.close().await;

    Ok(match outcome.response.status {
        ResponseStatus::Failed => {
            if let Some(details) = &outcome.response.status_details {
                eprintln!("response failed: {details:?}");
            }
            ExitCode::from(1)
        }
        _ => ExitCode::SUCCESS,
    })
}
