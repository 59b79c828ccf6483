//! The bundle's tokenizer and incremental detokenization.

use std::path::Path;

use tokenizers::Tokenizer;

use crate::error::ModelError;
use crate::manifest::SpecialTokens;

/// A `tokenizers` tokenizer with the bundle's special token ids resolved.
#[derive(Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
    pub bos: Option<u32>,
    pub eos: u32,
    pub pad: Option<u32>,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("vocab", &self.inner.get_vocab_size(true))
            .field("eos", &self.eos)
            .finish()
    }
}

impl TextTokenizer {
    pub fn load(path: &Path, special: &SpecialTokens) -> Result<TextTokenizer, ModelError> {
        let inner = Tokenizer::from_file(path)
            .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", path.display())))?;
        let id = |token: &str| {
            inner.token_to_id(token).ok_or_else(|| {
                ModelError::Tokenizer(format!(
                    "special token `{token}` is not a single token of {}",
                    path.display()
                ))
            })
        };
        Ok(TextTokenizer {
            bos: special.bos.as_deref().map(id).transpose()?,
            eos: id(&special.eos)?,
            pad: special.pad.as_deref().map(id).transpose()?,
            inner,
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Token ids of `text`; special tokens written in it are recognised.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        let encoding = self
            .inner
            .encode(text, false)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Text of `ids`, without special tokens.
    pub fn decode(&self, ids: &[u32]) -> Result<String, ModelError> {
        self.inner
            .decode(ids, true)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))
    }
}

/// Turns a growing list of token ids into text deltas that never split a character.
///
/// Decoding a token alone can be wrong (byte-level pieces of one character, spaces that
/// depend on the previous token), so each step decodes a short window that starts a few
/// tokens back and emits only what it adds to the text already sent. A window ending in
/// an incomplete UTF-8 sequence (decoded as U+FFFD) waits for more tokens.
#[derive(Debug, Clone, Default)]
pub struct IncrementalDecoder {
    ids: Vec<u32>,
    /// Start of the context window that is decoded but not emitted again.
    prefix_start: usize,
    /// End of what has been emitted.
    emitted_end: usize,
    text: String,
}

impl IncrementalDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a token; returns the new text it completes, if any.
    pub fn push(&mut self, tokenizer: &TextTokenizer, id: u32) -> Result<String, ModelError> {
        self.ids.push(id);
        let prefix = tokenizer.decode(&self.ids[self.prefix_start..self.emitted_end])?;
        let full = tokenizer.decode(&self.ids[self.prefix_start..])?;
        if full.len() <= prefix.len() || full.ends_with('\u{FFFD}') || !full.starts_with(&prefix) {
            return Ok(String::new());
        }
        let delta = full[prefix.len()..].to_string();
        self.prefix_start = self.emitted_end;
        self.emitted_end = self.ids.len();
        self.text.push_str(&delta);
        Ok(delta)
    }

    /// Ends the stream: returns any text still held back (an incomplete character at
    /// the very end is dropped, since no later token can complete it).
    pub fn finish(&mut self, tokenizer: &TextTokenizer) -> Result<String, ModelError> {
        let all = tokenizer.decode(&self.ids)?;
        let all = all.trim_end_matches('\u{FFFD}');
        let delta = match all.strip_prefix(self.text.as_str()) {
            Some(rest) => rest.to_string(),
            None => String::new(),
        };
        self.text.push_str(&delta);
        self.prefix_start = self.ids.len();
        self.emitted_end = self.ids.len();
        Ok(delta)
    }

    /// Everything emitted so far.
    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn ids(&self) -> &[u32] {
        &self.ids
    }
}
