//! A loaded bundle: every graph checked against the manifest, the tokenizer, the
//! preprocessors, prompt assembly with modality filling, and a synchronous generation
//! loop over batches of sequences.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::audio::AudioChunker;
use crate::completion::{summarize, CompletionInput, CompletionModel, NullEmbeddings};
use crate::decoder::{DecodeRow, Decoder, KvCache, RowInput};
use crate::encoders::{AudioEncoder, ImageEncoder, TextEncoder};
use crate::error::ModelError;
use crate::image_prep::ImagePreprocessor;
use crate::manifest::{resolve, Manifest, Modality, TemplatePart};
use crate::ocr::OcrReader;
use crate::runtime::RuntimeConfig;
use crate::sampling::{Sampler, SamplingParams};
use crate::session::Graph;
use crate::text::{IncrementalDecoder, StopMatcher, TextTokenizer};
use crate::whisper::{Transcriber, TranscriberConfig, WhisperWindow};

/// How a modality missing from a turn is stood in for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FillPolicy {
    /// The completion model's prediction from the modalities present (null embedding
    /// where the model cannot fill this modality).
    Completion,
    /// The learned null embedding.
    #[default]
    Null,
    /// Nothing: the template slot is dropped.
    Omit,
}

impl std::str::FromStr for FillPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "completion" => Ok(FillPolicy::Completion),
            "null" => Ok(FillPolicy::Null),
            "omit" => Ok(FillPolicy::Omit),
            other => Err(format!(
                "unknown fill policy `{other}`; expected completion, null or omit"
            )),
        }
    }
}

/// What happened to one modality when a prompt was assembled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotOutcome {
    Present,
    FilledByCompletion,
    FilledByNull,
    Omitted,
}

/// One turn's inputs, already encoded: `[tokens, hidden]` per present modality; for a
/// cascade (a decoder that reads token ids), each modality's text instead, and the
/// earlier exchanges of the conversation.
#[derive(Debug, Clone, Default)]
pub struct TurnEmbeddings {
    pub by_modality: BTreeMap<Modality, Vec<f32>>,
    /// Typed text, the transcript of speech, the text read in an image.
    pub texts: BTreeMap<Modality, String>,
    /// Earlier (user, assistant) exchanges, oldest first.
    pub history: Vec<(String, String)>,
}

/// A decoder prefix: embeddings (or token ids, for decoders that embed themselves)
/// plus the modality of each position.
#[derive(Debug, Clone, Default)]
pub struct Prefix {
    pub embeds: Vec<f32>,
    pub ids: Vec<u32>,
    pub modality: Vec<Modality>,
}

impl Prefix {
    /// What the decoder's first pass takes.
    pub fn into_input(self) -> RowInput {
        if self.embeds.is_empty() {
            RowInput::Ids(self.ids)
        } else {
            RowInput::Embeds(self.embeds)
        }
    }

    pub fn len(&self) -> usize {
        self.modality.len()
    }

    pub fn is_empty(&self) -> bool {
        self.modality.is_empty()
    }
}

/// Limits and sampling for one generation.
#[derive(Debug, Clone)]
pub struct GenerationParams {
    pub sampling: SamplingParams,
    pub max_new_tokens: usize,
    pub stop: Vec<String>,
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    Eos,
    Stop,
    Length,
}

/// The result of [`Bundle::generate_batch`] for one sequence.
#[derive(Debug, Clone)]
pub struct Generation {
    pub token_ids: Vec<u32>,
    pub text: String,
    pub finish: FinishReason,
}

/// Everything of a bundle, loaded and checked.
#[derive(Debug)]
pub struct Bundle {
    pub manifest: Manifest,
    pub dir: PathBuf,
    pub tokenizer: TextTokenizer,
    pub text: Option<TextEncoder>,
    pub image: Option<ImageEncoder>,
    pub image_preprocessor: Option<ImagePreprocessor>,
    pub audio: Option<AudioEncoder>,
    pub completion: Option<CompletionModel>,
    pub nulls: NullEmbeddings,
    pub decoder: Decoder,
    /// The cascade's speech stage.
    pub transcriber: Option<Transcriber>,
    /// The cascade's reading stage.
    pub reader: Option<OcrReader>,
    template: Vec<TemplatePart>,
}

impl Bundle {
    /// Loads the bundle in `dir`: manifest, checksums, tokenizer and every graph, each
    /// checked against the manifest.
    pub fn load(dir: &Path, config: &RuntimeConfig) -> Result<Bundle, ModelError> {
        let runtime_config = config;
        let manifest = Manifest::load(dir)?;
        let hidden = manifest.hidden_size;
        let template = manifest
            .prompt
            .parts()
            .map_err(|message| ModelError::Manifest {
                path: dir.join("bundle.toml"),
                message,
            })?;
        let tokenizer = TextTokenizer::load(
            &resolve(dir, &manifest.tokenizer.file)?,
            &manifest.special_tokens,
        )?;
        let graph = |file: &str| Graph::load(&resolve(dir, file)?, config);

        let pad = tokenizer.pad.unwrap_or(0);
        let text = match &manifest.encoders.text {
            Some(spec) => Some(TextEncoder::new(graph(&spec.file)?, spec, hidden, pad)?),
            None => None,
        };
        let (image, image_preprocessor) = match &manifest.encoders.image {
            Some(spec) => (
                Some(ImageEncoder::new(graph(&spec.file)?, spec, hidden)?),
                Some(ImagePreprocessor::new(&spec.preprocess)),
            ),
            None => (None, None),
        };
        let audio = match &manifest.encoders.audio {
            Some(spec) => {
                // Build a chunker once so a bad feature spec fails at load time.
                AudioChunker::new(&spec.features)?;
                Some(AudioEncoder::new(graph(&spec.file)?, spec, hidden)?)
            }
            None => None,
        };
        let (completion, nulls) = match &manifest.completion {
            Some(spec) => {
                let nulls = match &spec.null_embeddings {
                    Some(file) => NullEmbeddings::load(&resolve(dir, &file.file)?, hidden)?,
                    None => NullEmbeddings::default(),
                };
                (
                    Some(CompletionModel::new(graph(&spec.file)?, spec, hidden)?),
                    nulls,
                )
            }
            None => (None, NullEmbeddings::default()),
        };
        let decoder = Decoder::new(graph(&manifest.decoder.file)?, &manifest.decoder, hidden)?;
        let transcriber = match &manifest.stages.transcribe {
            Some(stage) => {
                let window = match stage.window.as_str() {
                    "full" => WhisperWindow::Full,
                    _ => WhisperWindow::Trimmed {
                        padding_frames: stage.padding_frames,
                    },
                };
                let config = TranscriberConfig {
                    window,
                    max_tokens: stage.max_tokens,
                    ..TranscriberConfig::default()
                };
                Some(Transcriber::load_files(
                    &resolve(dir, &stage.encoder.file)?,
                    &resolve(dir, &stage.decoder.file)?,
                    &resolve(dir, &stage.tokenizer.file)?,
                    config,
                    runtime_config,
                )?)
            }
            None => None,
        };
        let reader = match &manifest.stages.read {
            Some(stage) => Some(OcrReader::load(
                &resolve(dir, &stage.detector.file)?,
                &resolve(dir, &stage.recognizer.file)?,
                &resolve(dir, &stage.keys.file)?,
                runtime_config,
            )?),
            None => None,
        };
        Ok(Bundle {
            manifest,
            dir: dir.to_path_buf(),
            tokenizer,
            text,
            image,
            image_preprocessor,
            audio,
            completion,
            nulls,
            decoder,
            transcriber,
            reader,
            template,
        })
    }

    pub fn hidden_size(&self) -> usize {
        self.manifest.hidden_size
    }

    /// The generation defaults of the manifest.
    pub fn default_params(&self) -> GenerationParams {
        let g = &self.manifest.generation;
        GenerationParams {
            sampling: SamplingParams {
                temperature: g.temperature,
                top_k: g.top_k,
                top_p: g.top_p,
                seed: 0,
            },
            max_new_tokens: g.max_new_tokens,
            stop: g.stop.clone(),
        }
    }

    /// A fresh audio chunker for one stream, if the bundle takes audio.
    pub fn audio_chunker(&self) -> Option<AudioChunker> {
        self.manifest
            .encoders
            .audio
            .as_ref()
            .and_then(|a| AudioChunker::new(&a.features).ok())
    }

    /// Embeds text for the text slot.
    pub fn embed_text(&mut self, text: &str) -> Result<Vec<f32>, ModelError> {
        let ids = self.tokenizer.encode(text)?;
        let encoder = self
            .text
            .as_mut()
            .ok_or_else(|| ModelError::InvalidInput("this bundle has no text encoder".into()))?;
        Ok(encoder.embed(&[&ids])?.remove(0))
    }

    /// Encodes a whole utterance of PCM at the model's rate, chunk by chunk with the
    /// state carried (the streaming path does the same as samples arrive).
    pub fn encode_audio(&mut self, pcm: &[f32]) -> Result<Vec<f32>, ModelError> {
        let mut chunker = self
            .audio_chunker()
            .ok_or_else(|| ModelError::InvalidInput("this bundle has no audio encoder".into()))?;
        let encoder = self
            .audio
            .as_mut()
            .ok_or_else(|| ModelError::InvalidInput("this bundle has no audio encoder".into()))?;
        let mut state = encoder.new_state();
        let mut chunks = chunker.push(pcm);
        chunks.extend(chunker.finish());
        let mut out = Vec::new();
        for chunk in &chunks {
            out.extend(
                encoder
                    .encode_chunks(&mut [(&mut state, chunk.as_slice())])?
                    .remove(0),
            );
        }
        Ok(out)
    }

    /// Decodes, preprocesses and encodes one encoded image (JPEG or PNG).
    pub fn encode_image_bytes(&mut self, bytes: &[u8]) -> Result<Vec<f32>, ModelError> {
        let pre = self
            .image_preprocessor
            .as_ref()
            .ok_or_else(|| ModelError::InvalidInput("this bundle has no image encoder".into()))?;
        let pixels = pre.preprocess_bytes(bytes)?;
        let encoder = self
            .image
            .as_mut()
            .ok_or_else(|| ModelError::InvalidInput("this bundle has no image encoder".into()))?;
        Ok(encoder.encode(&[&pixels])?.remove(0))
    }

    /// Builds the decoder prefix for a turn from the template, filling or omitting the
    /// modalities that are missing as `policy` says; reports what it did per slot.
    pub fn assemble_prefix(
        &mut self,
        turn: &TurnEmbeddings,
        policy: &dyn Fn(Modality) -> FillPolicy,
    ) -> Result<(Prefix, BTreeMap<Modality, SlotOutcome>), ModelError> {
        if self.decoder.spec().input_ids.is_some() {
            return self.assemble_text_prefix(turn);
        }
        let hidden = self.hidden_size();
        let slots: Vec<Modality> = self
            .template
            .iter()
            .filter_map(|p| match p {
                TemplatePart::Slot(m) => Some(*m),
                TemplatePart::Literal(_) | TemplatePart::History => None,
            })
            .collect();
        let wants_completion = slots.iter().any(|m| {
            !turn.by_modality.contains_key(m)
                && policy(*m) == FillPolicy::Completion
                && self.completion.as_ref().is_some_and(|c| c.fills(*m))
        });
        let fills = if wants_completion {
            let input = CompletionInput {
                summaries: turn
                    .by_modality
                    .iter()
                    .map(|(m, e)| (*m, summarize(e, hidden)))
                    .collect(),
            };
            let completion = self
                .completion
                .as_mut()
                .expect("checked by wants_completion");
            completion.complete(&[input])?.remove(0)
        } else {
            BTreeMap::new()
        };

        let mut prefix = Prefix::default();
        let mut report = BTreeMap::new();
        let template = self.template.clone();
        for part in &template {
            let (embeds, modality) = match part {
                TemplatePart::History => continue,
                TemplatePart::Literal(text) => (self.embed_text(text)?, Modality::Text),
                TemplatePart::Slot(m) => {
                    let (outcome, embeds) = if let Some(e) = turn.by_modality.get(m) {
                        (SlotOutcome::Present, Some(e.clone()))
                    } else {
                        match policy(*m) {
                            FillPolicy::Completion if fills.contains_key(m) => {
                                (SlotOutcome::FilledByCompletion, fills.get(m).cloned())
                            }
                            FillPolicy::Completion | FillPolicy::Null => match self.nulls.get(*m) {
                                Some(n) => (SlotOutcome::FilledByNull, Some(n.to_vec())),
                                None => (SlotOutcome::Omitted, None),
                            },
                            FillPolicy::Omit => (SlotOutcome::Omitted, None),
                        }
                    };
                    report.insert(*m, outcome);
                    match embeds {
                        Some(e) => (e, *m),
                        None => continue,
                    }
                }
            };
            if embeds.len() % hidden != 0 {
                return Err(ModelError::InvalidInput(format!(
                    "{modality} embeddings are not a whole number of {hidden}-wide tokens"
                )));
            }
            prefix
                .modality
                .extend(std::iter::repeat_n(modality, embeds.len() / hidden));
            prefix.embeds.extend(embeds);
        }
        Ok((prefix, report))
    }

    /// The prompt of a decoder that reads token ids: the template's text with each
    /// slot's text (typed, transcribed, read) and the recent history written in. Slots
    /// without text are left out; fill policies do not apply to text.
    fn assemble_text_prefix(
        &self,
        turn: &TurnEmbeddings,
    ) -> Result<(Prefix, BTreeMap<Modality, SlotOutcome>), ModelError> {
        let prompt = &self.manifest.prompt;
        let mut prefix = Prefix::default();
        let mut report = BTreeMap::new();
        let push = |ids: Vec<u32>, modality: Modality, prefix: &mut Prefix| {
            prefix
                .modality
                .extend(std::iter::repeat_n(modality, ids.len()));
            prefix.ids.extend(ids);
        };
        for part in &self.template {
            match part {
                TemplatePart::Literal(text) => {
                    push(self.tokenizer.encode(text)?, Modality::Text, &mut prefix)
                }
                TemplatePart::History => {
                    let format = prompt.history_turn.as_deref().unwrap_or_default();
                    let skip = turn.history.len().saturating_sub(prompt.max_history_turns);
                    for (user, assistant) in &turn.history[skip..] {
                        // Literal structure from the manifest, client text cleaned.
                        let (head, rest) = format.split_once("{user}").unwrap_or((format, ""));
                        let (middle, tail) = rest.split_once("{assistant}").unwrap_or((rest, ""));
                        push(self.tokenizer.encode(head)?, Modality::Text, &mut prefix);
                        push(
                            self.tokenizer.encode_untrusted(user)?,
                            Modality::Text,
                            &mut prefix,
                        );
                        push(self.tokenizer.encode(middle)?, Modality::Text, &mut prefix);
                        push(
                            self.tokenizer.encode_untrusted(assistant)?,
                            Modality::Text,
                            &mut prefix,
                        );
                        push(self.tokenizer.encode(tail)?, Modality::Text, &mut prefix);
                    }
                }
                TemplatePart::Slot(m) => {
                    let text = turn.texts.get(m).map(|t| t.trim()).unwrap_or_default();
                    if text.is_empty() {
                        report.insert(*m, SlotOutcome::Omitted);
                        continue;
                    }
                    report.insert(*m, SlotOutcome::Present);
                    let format = prompt
                        .slot_text
                        .get(m.as_str())
                        .map_or("{}", |f| f.as_str());
                    let (head, tail) = format.split_once("{}").unwrap_or((format, ""));
                    push(self.tokenizer.encode(head)?, *m, &mut prefix);
                    push(self.tokenizer.encode_untrusted(text)?, *m, &mut prefix);
                    push(self.tokenizer.encode(tail)?, *m, &mut prefix);
                }
            }
        }
        Ok((prefix, report))
    }

    /// Generates for several prefixes at once: one batched prefill, then batched decode
    /// steps; sequences leave the batch as they finish.
    pub fn generate_batch(
        &mut self,
        prefixes: &[Prefix],
        params: &GenerationParams,
    ) -> Result<Vec<Generation>, ModelError> {
        let n = prefixes.len();
        let mut caches = vec![KvCache::default(); n];
        let mut samplers: Vec<Sampler> = (0..n)
            .map(|i| {
                let mut sampling = params.sampling.clone();
                sampling.seed = sampling.seed.wrapping_add(i as u64);
                Sampler::new(sampling)
            })
            .collect();
        let mut detok = vec![IncrementalDecoder::new(); n];
        let mut stops = vec![StopMatcher::new(&params.stop); n];
        let mut texts = vec![String::new(); n];
        let mut finish: Vec<Option<FinishReason>> = vec![None; n];
        let mut inputs: Vec<RowInput> = prefixes.iter().map(|p| p.clone().into_input()).collect();
        let mut modalities: Vec<Vec<Modality>> =
            prefixes.iter().map(|p| p.modality.clone()).collect();
        let eos = self.tokenizer.eos;

        loop {
            let active: Vec<usize> = (0..n).filter(|i| finish[*i].is_none()).collect();
            if active.is_empty() {
                break;
            }
            let logits = {
                let mut rows: Vec<DecodeRow<'_>> = Vec::with_capacity(active.len());
                let mut cache_refs: Vec<Option<&mut KvCache>> =
                    caches.iter_mut().map(Some).collect();
                for &i in &active {
                    rows.push(DecodeRow {
                        cache: cache_refs[i].take().expect("each row once"),
                        input: std::mem::replace(&mut inputs[i], RowInput::Ids(Vec::new())),
                        modality: std::mem::take(&mut modalities[i]),
                    });
                }
                self.decoder.forward(&mut rows)?
            };
            let mut next_ids = Vec::new();
            for (&i, row_logits) in active.iter().zip(&logits) {
                let id = samplers[i].sample(row_logits);
                if id == eos {
                    finish[i] = Some(FinishReason::Eos);
                    continue;
                }
                let delta = detok[i].push(&self.tokenizer, id)?;
                texts[i].push_str(&stops[i].push(&delta));
                if stops[i].stopped() {
                    finish[i] = Some(FinishReason::Stop);
                } else if detok[i].ids().len() >= params.max_new_tokens {
                    finish[i] = Some(FinishReason::Length);
                } else {
                    next_ids.push((i, id));
                }
            }
            if next_ids.is_empty() {
                continue;
            }
            let id_rows: Vec<[u32; 1]> = next_ids.iter().map(|(_, id)| [*id]).collect();
            let id_refs: Vec<&[u32]> = id_rows.iter().map(|r| r.as_slice()).collect();
            let embeds = match self.text.as_mut() {
                Some(encoder) if self.decoder.spec().inputs_embeds.is_some() => {
                    encoder.embed(&id_refs)?
                }
                _ => Vec::new(),
            };
            for (k, (i, id)) in next_ids.iter().enumerate() {
                inputs[*i] = match embeds.get(k) {
                    Some(e) => RowInput::Embeds(e.clone()),
                    None => RowInput::Ids(vec![*id]),
                };
                modalities[*i] = vec![Modality::Text];
            }
        }

        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let rest = detok[i].finish(&self.tokenizer)?;
            texts[i].push_str(&stops[i].push(&rest));
            if !stops[i].stopped() {
                texts[i].push_str(&stops[i].finish());
            }
            let text = std::mem::take(&mut texts[i]);
            out.push(Generation {
                token_ids: detok[i].ids().to_vec(),
                text,
                finish: finish[i].unwrap_or(FinishReason::Length),
            });
        }
        Ok(out)
    }
}
