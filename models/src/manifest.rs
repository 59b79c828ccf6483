//! The bundle manifest (`bundle.toml`): its types, parsing and the checks that need no
//! ONNX Runtime (files present, checksums, consistent sizes). `docs/bundle-format.md`
//! is the reference for every field.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::error::ModelError;

/// The manifest format this crate reads.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub hidden_size: usize,
    pub tokenizer: TokenizerSpec,
    pub special_tokens: SpecialTokens,
    pub prompt: PromptSpec,
    #[serde(default)]
    pub generation: GenerationDefaults,
    #[serde(default)]
    pub encoders: Encoders,
    pub completion: Option<CompletionSpec>,
    pub decoder: DecoderSpec,
    /// Models that turn a modality into text before the decoder (a cascade).
    #[serde(default)]
    pub stages: Stages,
}

/// The cascade: each stage turns one input modality into text that fills its slot of
/// the prompt. A bundle has a stage or an encoder for a modality, not both.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stages {
    /// Speech to text.
    pub transcribe: Option<TranscribeStage>,
    /// Text seen in images to text.
    pub read: Option<ReadStage>,
}

/// `[stages.transcribe]`: an encoder-decoder speech recogniser.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TranscribeStage {
    /// `whisper`: Whisper's log-mel front end, an encoder that outputs every layer's
    /// cross-attention keys and values, a decoder with a self-attention KV cache.
    pub kind: String,
    pub encoder: FileRef,
    pub decoder: FileRef,
    pub tokenizer: FileRef,
    /// `trimmed` (the utterance plus `padding_frames`) or `full` (30 s).
    #[serde(default = "default_window")]
    pub window: String,
    #[serde(default = "default_padding_frames")]
    pub padding_frames: usize,
    #[serde(default = "default_transcript_tokens")]
    pub max_tokens: usize,
}

fn default_window() -> String {
    "trimmed".into()
}
fn default_padding_frames() -> usize {
    100
}
fn default_transcript_tokens() -> usize {
    128
}

/// `[stages.read]`: text detection and recognition.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadStage {
    /// `ppocr`: PP-OCR detection (`x` → probability map) and CTC recognition.
    pub kind: String,
    pub detector: FileRef,
    pub recognizer: FileRef,
    /// The recogniser's characters, one a line.
    pub keys: FileRef,
    /// Lines read with less confidence are left out.
    #[serde(default = "default_min_confidence")]
    pub min_confidence: f32,
}

fn default_min_confidence() -> f32 {
    0.5
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizerSpec {
    pub file: String,
    pub sha256: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpecialTokens {
    pub bos: Option<String>,
    pub eos: String,
    pub pad: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptSpec {
    pub template: Vec<String>,
    /// For decoders that read token ids: how each slot's text enters the prompt, `{}`
    /// marking the text (`image = "Text in view: {}\n"`). A slot without text is left out.
    #[serde(default)]
    pub slot_text: BTreeMap<String, String>,
    /// How one earlier exchange is written where the template has `{history}`, with
    /// `{user}` and `{assistant}` marking the texts.
    #[serde(default)]
    pub history_turn: Option<String>,
    /// Most earlier exchanges kept in the prompt, newest first.
    #[serde(default = "default_history_turns")]
    pub max_history_turns: usize,
}

fn default_history_turns() -> usize {
    8
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GenerationDefaults {
    pub max_new_tokens: usize,
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    pub stop: Vec<String>,
}

impl Default for GenerationDefaults {
    fn default() -> Self {
        GenerationDefaults {
            max_new_tokens: 64,
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            stop: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Encoders {
    pub text: Option<TextEncoderSpec>,
    pub image: Option<ImageEncoderSpec>,
    pub audio: Option<AudioEncoderSpec>,
}

/// Element type of a tensor named in the manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    F32,
    I64,
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DType::F32 => "f32",
            DType::I64 => "i64",
        })
    }
}

/// One dimension: fixed, or a symbolic name that matches anything.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Dim {
    Fixed(i64),
    Symbol(String),
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Symbol(s) => f.write_str(s),
        }
    }
}

/// A named tensor with its expected shape and type.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<Dim>,
    pub dtype: DType,
}

impl TensorSpec {
    /// The fixed size of dimension `axis`, if the manifest fixes it.
    pub fn fixed(&self, axis: usize) -> Option<usize> {
        match self.shape.get(axis) {
            Some(Dim::Fixed(n)) if *n >= 0 => Some(*n as usize),
            _ => None,
        }
    }

    pub fn shape_string(&self) -> String {
        let dims: Vec<String> = self.shape.iter().map(Dim::to_string).collect();
        format!("[{}]", dims.join(", "))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextEncoderSpec {
    pub file: String,
    pub sha256: Option<String>,
    pub input: TensorSpec,
    pub output: TensorSpec,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageEncoderSpec {
    pub file: String,
    pub sha256: Option<String>,
    pub input: TensorSpec,
    pub output: TensorSpec,
    pub preprocess: ImagePreprocessSpec,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageLayout {
    Nchw,
    Nhwc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResizeMode {
    Stretch,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImagePreprocessSpec {
    pub width: u32,
    pub height: u32,
    pub layout: ImageLayout,
    pub resize: ResizeMode,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AudioEncoderSpec {
    pub file: String,
    pub sha256: Option<String>,
    pub input: TensorSpec,
    pub output: TensorSpec,
    #[serde(default)]
    pub state: Vec<StateSpec>,
    pub features: AudioFeatureSpec,
}

/// A streaming state carried from one chunk's output to the next chunk's input.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateSpec {
    pub input: String,
    pub output: String,
    pub shape: Vec<Dim>,
    pub dtype: DType,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureKind {
    LogMel,
    Pcm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MelScale {
    Htk,
    Slaney,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MelNorm {
    None,
    Slaney,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AudioFeatureSpec {
    pub kind: FeatureKind,
    pub sample_rate: u32,
    pub chunk_frames: usize,
    #[serde(default)]
    pub n_fft: usize,
    #[serde(default)]
    pub win_length: usize,
    #[serde(default)]
    pub hop_length: usize,
    #[serde(default)]
    pub n_mels: usize,
    #[serde(default)]
    pub f_min: f32,
    #[serde(default)]
    pub f_max: f32,
    #[serde(default = "default_mel_scale")]
    pub mel_scale: MelScale,
    #[serde(default = "default_mel_norm")]
    pub mel_norm: MelNorm,
    #[serde(default = "default_log_offset")]
    pub log_offset: f32,
    #[serde(default)]
    pub mean: f32,
    #[serde(default = "one")]
    pub std: f32,
}

fn default_mel_scale() -> MelScale {
    MelScale::Htk
}
fn default_mel_norm() -> MelNorm {
    MelNorm::None
}
fn default_log_offset() -> f32 {
    1e-6
}
fn one() -> f32 {
    1.0
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompletionSpec {
    pub file: String,
    pub sha256: Option<String>,
    pub modalities: Vec<String>,
    pub summaries: Vec<TensorSpec>,
    pub present: TensorSpec,
    pub fills: BTreeMap<String, TensorSpec>,
    pub null_embeddings: Option<FileRef>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRef {
    pub file: String,
    pub sha256: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecoderSpec {
    pub file: String,
    pub sha256: Option<String>,
    pub inputs_embeds: Option<TensorSpec>,
    pub input_ids: Option<TensorSpec>,
    pub attention_mask: Option<String>,
    pub position_ids: Option<String>,
    pub modality_ids: Option<String>,
    pub logits: String,
    pub num_layers: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub max_positions: usize,
    #[serde(default = "default_past_key")]
    pub past_key: String,
    #[serde(default = "default_past_value")]
    pub past_value: String,
    #[serde(default = "default_present_key")]
    pub present_key: String,
    #[serde(default = "default_present_value")]
    pub present_value: String,
    #[serde(default)]
    pub modality_ids_map: BTreeMap<String, i64>,
}

fn default_past_key() -> String {
    "past_key_values.{i}.key".to_string()
}
fn default_past_value() -> String {
    "past_key_values.{i}.value".to_string()
}
fn default_present_key() -> String {
    "present.{i}.key".to_string()
}
fn default_present_value() -> String {
    "present.{i}.value".to_string()
}

impl DecoderSpec {
    /// A KV tensor name pattern with the layer index filled in.
    pub fn layer_name(pattern: &str, layer: usize) -> String {
        pattern.replace("{i}", &layer.to_string())
    }
}

/// The modalities a prompt can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Modality {
    Text,
    Image,
    Audio,
}

impl Modality {
    pub const ALL: [Modality; 3] = [Modality::Text, Modality::Image, Modality::Audio];

    pub fn as_str(self) -> &'static str {
        match self {
            Modality::Text => "text",
            Modality::Image => "image",
            Modality::Audio => "audio",
        }
    }

    pub fn parse(s: &str) -> Option<Modality> {
        Modality::ALL.into_iter().find(|m| m.as_str() == s)
    }
}

impl fmt::Display for Modality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One entry of the prompt template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplatePart {
    /// Tokenized and embedded as text.
    Literal(String),
    /// Replaced by a modality's embeddings (or, for a cascade, its text).
    Slot(Modality),
    /// Earlier exchanges of the conversation, written with `prompt.history_turn`.
    History,
}

impl PromptSpec {
    pub fn parts(&self) -> Result<Vec<TemplatePart>, String> {
        self.template
            .iter()
            .map(|entry| {
                if entry == "{history}" {
                    Ok(TemplatePart::History)
                } else if let Some(inner) =
                    entry.strip_prefix('{').and_then(|s| s.strip_suffix('}'))
                {
                    Modality::parse(inner)
                        .map(TemplatePart::Slot)
                        .ok_or_else(|| format!("unknown template slot `{entry}`"))
                } else {
                    Ok(TemplatePart::Literal(entry.clone()))
                }
            })
            .collect()
    }
}

impl Manifest {
    /// Reads and checks `bundle.toml` in `dir`: syntax, format version, consistency,
    /// presence and checksums of every file it names.
    pub fn load(dir: &Path) -> Result<Manifest, ModelError> {
        let path = dir.join("bundle.toml");
        let text = std::fs::read_to_string(&path).map_err(|e| ModelError::Manifest {
            path: path.clone(),
            message: format!("cannot read: {e}"),
        })?;
        let manifest = Manifest::parse(&text).map_err(|message| ModelError::Manifest {
            path: path.clone(),
            message,
        })?;
        manifest.check_files(dir)?;
        Ok(manifest)
    }

    /// Parses and checks the manifest text alone (no files are read).
    pub fn parse(text: &str) -> Result<Manifest, String> {
        let manifest: Manifest = toml::from_str(text).map_err(|e| e.to_string())?;
        manifest.check()?;
        Ok(manifest)
    }

    fn check(&self) -> Result<(), String> {
        if self.format != FORMAT_VERSION {
            return Err(format!(
                "format {} is not supported; this mmrt reads format {FORMAT_VERSION}",
                self.format
            ));
        }
        let parts = self.prompt.parts()?;
        for part in &parts {
            match part {
                TemplatePart::Slot(m) if self.decoder.input_ids.is_some() => {
                    let fed = match m {
                        Modality::Text => true,
                        Modality::Image => self.stages.read.is_some(),
                        Modality::Audio => self.stages.transcribe.is_some(),
                    };
                    if !fed {
                        let stage = if *m == Modality::Image {
                            "read"
                        } else {
                            "transcribe"
                        };
                        return Err(format!(
                            "prompt.template uses `{{{m}}}` but stages.{stage} is not defined"
                        ));
                    }
                }
                TemplatePart::Slot(m) => {
                    let present = match m {
                        Modality::Text => self.encoders.text.is_some(),
                        Modality::Image => self.encoders.image.is_some(),
                        Modality::Audio => self.encoders.audio.is_some(),
                    };
                    if !present {
                        return Err(format!(
                            "prompt.template uses `{{{m}}}` but encoders.{m} is not defined"
                        ));
                    }
                }
                TemplatePart::History if self.prompt.history_turn.is_none() => {
                    return Err(
                        "prompt.template uses `{history}` but prompt.history_turn is not set"
                            .into(),
                    );
                }
                TemplatePart::History if self.decoder.input_ids.is_none() => {
                    return Err(
                        "`{history}` needs a decoder that reads input_ids (a text prompt)".into(),
                    );
                }
                _ => {}
            }
        }
        for (slot, format) in &self.prompt.slot_text {
            if Modality::parse(slot).is_none() {
                return Err(format!("prompt.slot_text: unknown slot `{slot}`"));
            }
            if format.matches("{}").count() != 1 {
                return Err(format!(
                    "prompt.slot_text.{slot}: needs exactly one `{{}}` for the text"
                ));
            }
        }
        let has_stages = self.stages.transcribe.is_some() || self.stages.read.is_some();
        if has_stages && self.decoder.input_ids.is_none() {
            return Err("stages feed text, so the decoder must read input_ids".into());
        }
        if let Some(t) = &self.stages.transcribe {
            if t.kind != "whisper" {
                return Err(format!(
                    "stages.transcribe.kind `{}` is unknown; this mmrt knows `whisper`",
                    t.kind
                ));
            }
            if t.window != "trimmed" && t.window != "full" {
                return Err(format!(
                    "stages.transcribe.window `{}`: expected trimmed or full",
                    t.window
                ));
            }
            if self.encoders.audio.is_some() {
                return Err("give encoders.audio or stages.transcribe, not both".into());
            }
        }
        if let Some(r) = &self.stages.read {
            if r.kind != "ppocr" {
                return Err(format!(
                    "stages.read.kind `{}` is unknown; this mmrt knows `ppocr`",
                    r.kind
                ));
            }
            if self.encoders.image.is_some() {
                return Err("give encoders.image or stages.read, not both".into());
            }
        }
        let decoder = &self.decoder;
        match (&decoder.inputs_embeds, &decoder.input_ids) {
            (Some(_), Some(_)) => {
                return Err("decoder: give inputs_embeds or input_ids, not both".into());
            }
            (None, None) => return Err("decoder: give inputs_embeds or input_ids".into()),
            (Some(_), None) if self.encoders.text.is_none() => {
                return Err(
                    "decoder takes inputs_embeds, so encoders.text must be defined to embed \
                     text and generated tokens"
                        .into(),
                );
            }
            _ => {}
        }
        if let Some(spec) = &decoder.inputs_embeds {
            expect_width(&spec.shape, 2, self.hidden_size, "decoder.inputs_embeds")?;
        }
        if decoder.num_layers == 0 || decoder.num_kv_heads == 0 || decoder.head_dim == 0 {
            return Err("decoder: num_layers, num_kv_heads and head_dim must be positive".into());
        }
        if decoder.modality_ids.is_some() {
            for m in Modality::ALL {
                if !decoder.modality_ids_map.contains_key(m.as_str()) {
                    return Err(format!(
                        "decoder.modality_ids is set, so decoder.modality_ids_map needs `{m}`"
                    ));
                }
            }
        }
        if let Some(text) = &self.encoders.text {
            expect_width(
                &text.output.shape,
                2,
                self.hidden_size,
                "encoders.text.output",
            )?;
        }
        if let Some(image) = &self.encoders.image {
            expect_width(
                &image.output.shape,
                2,
                self.hidden_size,
                "encoders.image.output",
            )?;
            if image.output.fixed(1).is_none() {
                return Err("encoders.image.output: the token count (axis 1) must be fixed".into());
            }
            let p = &image.preprocess;
            if p.width == 0 || p.height == 0 || p.std.contains(&0.0) {
                return Err(
                    "encoders.image.preprocess: width, height and std must be non-zero".into(),
                );
            }
        }
        if let Some(audio) = &self.encoders.audio {
            expect_width(
                &audio.output.shape,
                2,
                self.hidden_size,
                "encoders.audio.output",
            )?;
            let f = &audio.features;
            if f.sample_rate == 0 || f.chunk_frames == 0 {
                return Err(
                    "encoders.audio.features: sample_rate and chunk_frames must be positive".into(),
                );
            }
            if f.kind == FeatureKind::LogMel {
                if f.n_fft == 0 || f.hop_length == 0 || f.n_mels == 0 {
                    return Err(
                        "encoders.audio.features: n_fft, hop_length and n_mels must be \
                         positive for log_mel"
                            .into(),
                    );
                }
                if f.win_length > f.n_fft {
                    return Err("encoders.audio.features: win_length exceeds n_fft".into());
                }
                if f.f_max <= f.f_min || f.f_max.is_nan() || f.f_max > f.sample_rate as f32 / 2.0 {
                    return Err(format!(
                        "encoders.audio.features: need f_min < f_max <= sample_rate/2, got {} and {}",
                        f.f_min, f.f_max
                    ));
                }
                if f.std == 0.0 {
                    return Err("encoders.audio.features: std must be non-zero".into());
                }
            }
        }
        if let Some(completion) = &self.completion {
            if completion.summaries.len() != completion.modalities.len() {
                return Err("completion: one summary per entry of modalities".into());
            }
            for m in completion.modalities.iter().chain(completion.fills.keys()) {
                if Modality::parse(m).is_none() {
                    return Err(format!("completion: unknown modality `{m}`"));
                }
            }
            for (m, spec) in &completion.fills {
                expect_width(
                    &spec.shape,
                    2,
                    self.hidden_size,
                    &format!("completion.fills.{m}"),
                )?;
            }
        }
        Ok(())
    }

    /// Every file the manifest names, with its checksum if given.
    pub fn files(&self) -> Vec<(&str, Option<&str>)> {
        let mut files = vec![(
            self.tokenizer.file.as_str(),
            self.tokenizer.sha256.as_deref(),
        )];
        if let Some(s) = &self.encoders.text {
            files.push((&s.file, s.sha256.as_deref()));
        }
        if let Some(s) = &self.encoders.image {
            files.push((&s.file, s.sha256.as_deref()));
        }
        if let Some(s) = &self.encoders.audio {
            files.push((&s.file, s.sha256.as_deref()));
        }
        if let Some(c) = &self.completion {
            files.push((&c.file, c.sha256.as_deref()));
            if let Some(n) = &c.null_embeddings {
                files.push((&n.file, n.sha256.as_deref()));
            }
        }
        files.push((&self.decoder.file, self.decoder.sha256.as_deref()));
        if let Some(t) = &self.stages.transcribe {
            for f in [&t.encoder, &t.decoder, &t.tokenizer] {
                files.push((&f.file, f.sha256.as_deref()));
            }
        }
        if let Some(r) = &self.stages.read {
            for f in [&r.detector, &r.recognizer, &r.keys] {
                files.push((&f.file, f.sha256.as_deref()));
            }
        }
        files
    }

    fn check_files(&self, dir: &Path) -> Result<(), ModelError> {
        for (file, sha) in self.files() {
            let path = resolve(dir, file)?;
            let bytes = std::fs::read(&path).map_err(|e| ModelError::BundleFile {
                path: path.clone(),
                message: format!("cannot read: {e}"),
            })?;
            if let Some(expected) = sha {
                let found = hex::encode(Sha256::digest(&bytes));
                if !found.eq_ignore_ascii_case(expected) {
                    return Err(ModelError::BundleFile {
                        path,
                        message: format!(
                            "sha256 mismatch: manifest says {expected}, file is {found}"
                        ),
                    });
                }
            }
        }
        Ok(())
    }
}

/// Joins a manifest file name to the bundle folder, refusing names that leave it.
pub fn resolve(dir: &Path, file: &str) -> Result<PathBuf, ModelError> {
    let rel = Path::new(file);
    if rel.is_absolute()
        || rel
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(ModelError::BundleFile {
            path: rel.to_path_buf(),
            message: "files must be named relative to the bundle folder".into(),
        });
    }
    Ok(dir.join(rel))
}

fn expect_width(shape: &[Dim], axis: usize, width: usize, what: &str) -> Result<(), String> {
    match shape.get(axis) {
        Some(Dim::Fixed(n)) if *n as usize == width => Ok(()),
        Some(Dim::Fixed(n)) => Err(format!(
            "{what}: axis {axis} is {n} but hidden_size is {width}"
        )),
        Some(Dim::Symbol(_)) => Err(format!(
            "{what}: axis {axis} must be fixed to hidden_size ({width})"
        )),
        None => Err(format!("{what}: shape needs at least {} axes", axis + 1)),
    }
}
