//! The media every virtual client sends, read and encoded once: speech clips cut into
//! ready-to-send 20 ms payloads, one payload of silence, and the video frames.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use mmrt_client::audio::{pcm16_bytes, FRAME_MS};
use mmrt_client::media::{list_frames, load_image};
use mmrt_client::{OpusFrameEncoder, Pcm16Audio};
use mmrt_protocol::ImageFormat;
use serde::Deserialize;

use crate::error::LoadError;
use crate::options::{CodecArg, LoadOptions};

/// One speech clip as 20 ms payloads (PCM16 bytes or Opus packets).
#[derive(Debug)]
pub struct Clip {
    /// The file it came from.
    pub path: PathBuf,
    /// One payload per 20 ms frame.
    pub frames: Vec<Vec<u8>>,
}

/// One video frame, ready to send.
#[derive(Debug)]
pub struct VideoFrame {
    /// JPEG or PNG.
    pub format: ImageFormat,
    /// The file's bytes.
    pub bytes: Vec<u8>,
}

/// Everything the clients send; shared read-only between them.
#[derive(Debug)]
pub struct Inputs {
    /// Speech, used in turn by each client.
    pub clips: Vec<Clip>,
    /// 20 ms of silence in the same encoding.
    pub silence: Vec<u8>,
    /// Video frames, looped.
    pub video: Vec<VideoFrame>,
}

/// `samples/manifest.json`: a list of samples (or an object with a `samples` list).
#[derive(Debug, Deserialize)]
#[serde(from = "ManifestFile")]
struct Manifest {
    samples: Vec<ManifestSample>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ManifestFile {
    List(Vec<ManifestSample>),
    Wrapped { samples: Vec<ManifestSample> },
}

impl From<ManifestFile> for Manifest {
    fn from(file: ManifestFile) -> Manifest {
        match file {
            ManifestFile::List(samples) | ManifestFile::Wrapped { samples } => Manifest { samples },
        }
    }
}

#[derive(Debug, Deserialize)]
struct ManifestSample {
    audio: Option<String>,
    #[serde(default)]
    images: Vec<String>,
    frames: Option<ManifestFrames>,
}

#[derive(Debug, Deserialize)]
struct ManifestFrames {
    dir: String,
}

impl Inputs {
    /// Reads the files named by the options, or the samples manifest's defaults (or,
    /// without a manifest, the WAV and image files directly in the samples folder).
    pub fn load(options: &LoadOptions) -> Result<Arc<Inputs>, LoadError> {
        let manifest = read_manifest(&options.samples)?;
        let root = &options.samples;

        // Speech: the named files, else every audio sample.
        let audio_paths: Vec<PathBuf> = if options.audio.is_empty() {
            match &manifest {
                Some(m) => m
                    .samples
                    .iter()
                    .filter_map(|s| s.audio.as_ref().map(|a| root.join(a)))
                    .collect(),
                None => files_with(root, &["wav"]),
            }
        } else {
            options.audio.clone()
        };
        if audio_paths.is_empty() {
            return Err(LoadError::BadOption {
                flag: "--audio",
                value: String::new(),
                reason: format!(
                    "no speech to send: name WAV files or provide {}",
                    root.join("manifest.json").display()
                ),
            });
        }
        let mut clips = Vec::new();
        for path in audio_paths {
            let audio = Pcm16Audio::from_wav_file(&path)?.resampled(options.rate)?;
            let frames = encode_frames(&audio, options.codec)?;
            clips.push(Clip { path, frames });
        }
        let silence = Pcm16Audio {
            rate: options.rate,
            samples: vec![0; (options.rate * FRAME_MS / 1000) as usize],
        };
        let silence = encode_frames(&silence, options.codec)?
            .pop()
            .expect("20 ms of silence is one frame");

        // Video: the named folder, else the first clip, else the sample images.
        let mut video = Vec::new();
        if options.fps > 0.0 {
            let frame_paths = match &options.frames {
                Some(dir) => list_frames(dir)?,
                None => default_frames(manifest.as_ref(), root)?,
            };
            for path in frame_paths {
                let (format, bytes) = load_image(&path)?;
                video.push(VideoFrame { format, bytes });
            }
            if video.is_empty() {
                return Err(LoadError::BadOption {
                    flag: "--frames",
                    value: String::new(),
                    reason: "no video frames found; name a folder or pass --fps 0".into(),
                });
            }
        }
        Ok(Arc::new(Inputs {
            clips,
            silence,
            video,
        }))
    }
}

fn read_manifest(samples: &Path) -> Result<Option<Manifest>, LoadError> {
    let path = samples.join("manifest.json");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(LoadError::Io { path, err }),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|err| LoadError::Manifest { path, err })
}

fn default_frames(manifest: Option<&Manifest>, root: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let Some(manifest) = manifest else {
        return Ok(files_with(root, &["png", "jpg", "jpeg"]));
    };
    if let Some(dir) = manifest.samples.iter().find_map(|s| s.frames.as_ref()) {
        return Ok(list_frames(&root.join(&dir.dir))?);
    }
    Ok(manifest
        .samples
        .iter()
        .flat_map(|s| s.images.iter().map(|i| root.join(i)))
        .collect())
}

/// The files directly in `dir` with one of `exts`, sorted; none when it cannot be read.
fn files_with(dir: &Path, exts: &[&str]) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| exts.contains(&e.to_ascii_lowercase().as_str()))
        })
        .collect();
    files.sort();
    files
}

/// Cuts audio into 20 ms payloads in the wire encoding.
fn encode_frames(audio: &Pcm16Audio, codec: CodecArg) -> Result<Vec<Vec<u8>>, LoadError> {
    match codec {
        CodecArg::Pcm16 => Ok(audio.frames(FRAME_MS).map(pcm16_bytes).collect()),
        CodecArg::Opus => {
            let mut encoder = OpusFrameEncoder::new(audio.rate)?;
            let mut packets = Vec::new();
            for frame in audio.frames(FRAME_MS) {
                packets.push(encoder.encode(frame)?);
            }
            Ok(packets)
        }
    }
}
