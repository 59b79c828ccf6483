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

    /// Token ids of text a client sent: special tokens written in it are removed first,
    /// so that typed or transcribed text cannot forge the prompt's structure.
    pub fn encode_untrusted(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        let mut clean = text.to_string();
        for token in self.inner.get_added_tokens_decoder().values() {
            if token.special && !token.content.is_empty() {
                clean = clean.replace(&token.content, "");
            }
        }
        self.encode(&clean)
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

/// Watches streamed text for stop strings, holding back any tail that could be the
/// start of one, so that a stop string never reaches the client.
#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
    stopped: bool,
}

impl StopMatcher {
    pub fn new(stops: &[String]) -> StopMatcher {
        StopMatcher {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            held: String::new(),
            stopped: false,
        }
    }

    /// Whether a stop string has been seen.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Takes new text; returns what may be shown now.
    pub fn push(&mut self, delta: &str) -> String {
        if self.stopped {
            return String::new();
        }
        self.held.push_str(delta);
        let first_stop = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min();
        if let Some(at) = first_stop {
            self.stopped = true;
            let shown = self.held[..at].to_string();
            self.held.clear();
            return shown;
        }
        // Keep back the longest tail that is a prefix of some stop string.
        let mut keep = 0;
        for stop in &self.stops {
            for (i, _) in stop.char_indices().skip(1) {
                if self.held.ends_with(&stop[..i]) {
                    keep = keep.max(i);
                }
            }
        }
        let split = self.held.len() - keep;
        let shown = self.held[..split].to_string();
        self.held.drain(..split);
        shown
    }

    /// Ends the stream: whatever was held back (it did not become a stop string).
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_string_split_across_deltas_is_never_shown() {
        let mut m = StopMatcher::new(&["</s>".to_string()]);
        let mut shown = String::new();
        for delta in ["the an", "swer <", "/", "s> more"] {
            shown.push_str(&m.push(delta));
        }
        assert!(m.stopped());
        assert_eq!(shown, "the answer ");
    }

    #[test]
    fn a_false_start_is_released() {
        let mut m = StopMatcher::new(&["END".to_string()]);
        assert_eq!(m.push("an E"), "an ");
        assert_eq!(m.push("xit"), "Exit");
        assert_eq!(m.push(" EN"), " ");
        assert_eq!(m.finish(), "EN");
        assert!(!m.stopped());
    }
}
