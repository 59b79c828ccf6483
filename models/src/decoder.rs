//! The autoregressive decoder and its KV cache.
//!
//! Each sequence keeps its own compact cache. A forward pass gathers the rows of a
//! batch into padded tensors (past and new positions left-padded to the longest row and
//! masked), runs the graph once, and appends each row's new keys and values to its own
//! cache. Prefill and decode steps are the same call with more or fewer new positions,
//! so sequences of any past length share a batch.

use crate::encoders::{f32_input, i64_input};
use crate::error::ModelError;
use crate::manifest::{DType, DecoderSpec, Dim, Modality};
use crate::session::Graph;

/// One sequence's keys and values for every layer, position-major:
/// `[position][kv_head][head_dim]`, so that appending is cheap.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    len: usize,
    /// The modality id of every cached position.
    modality: Vec<i64>,
    /// Position id the next new token gets.
    next_position: i64,
}

impl KvCache {
    /// Cached positions.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes held by the cache, for accounting.
    pub fn bytes(&self) -> usize {
        let floats: usize = self.keys.iter().chain(&self.values).map(Vec::len).sum();
        floats * 4 + self.modality.len() * 8
    }

    /// Forgets everything (a new conversation).
    pub fn clear(&mut self) {
        *self = KvCache::default();
    }

    /// Drops positions from `len` on, e.g. to undo a cancelled response.
    pub fn truncate(&mut self, len: usize, per_position: usize) {
        if len >= self.len {
            return;
        }
        for k in self.keys.iter_mut().chain(self.values.iter_mut()) {
            k.truncate(len * per_position);
        }
        self.modality.truncate(len);
        self.next_position = self.next_position.min(len as i64);
        self.len = len;
    }
}

/// What a row feeds the decoder at this pass.
#[derive(Debug, Clone)]
pub enum RowInput {
    /// `[positions, hidden]` embeddings, row-major.
    Embeds(Vec<f32>),
    /// Token ids, for decoders that embed themselves.
    Ids(Vec<u32>),
}

/// One sequence's part in a forward pass.
#[derive(Debug)]
pub struct DecodeRow<'a> {
    pub cache: &'a mut KvCache,
    pub input: RowInput,
    /// The modality of each new position.
    pub modality: Vec<Modality>,
}

/// The decoder graph and what the manifest says about it.
#[derive(Debug)]
pub struct Decoder {
    graph: Graph,
    spec: DecoderSpec,
    hidden: usize,
    vocab: usize,
    past_key: Vec<String>,
    past_value: Vec<String>,
    present_key: Vec<String>,
    present_value: Vec<String>,
}

impl Decoder {
    pub(crate) fn new(
        graph: Graph,
        spec: &DecoderSpec,
        hidden: usize,
    ) -> Result<Decoder, ModelError> {
        let sym = |s: &str| Dim::Symbol(s.to_string());
        if let Some(embeds) = &spec.inputs_embeds {
            graph.expect_input(embeds)?;
        }
        if let Some(ids) = &spec.input_ids {
            graph.expect_input(ids)?;
        }
        if let Some(name) = &spec.attention_mask {
            graph.expect(true, name, &[sym("batch"), sym("total")], DType::I64)?;
        }
        if let Some(name) = &spec.position_ids {
            graph.expect(true, name, &[sym("batch"), sym("seq")], DType::I64)?;
        }
        if let Some(name) = &spec.modality_ids {
            graph.expect(true, name, &[sym("batch"), sym("total")], DType::I64)?;
        }
        graph.expect(
            false,
            &spec.logits,
            &[sym("batch"), sym("seq"), sym("vocab")],
            DType::F32,
        )?;
        let kv_shape = |len: &str| {
            vec![
                sym("batch"),
                Dim::Fixed(spec.num_kv_heads as i64),
                sym(len),
                Dim::Fixed(spec.head_dim as i64),
            ]
        };
        let names = |pattern: &str| -> Vec<String> {
            (0..spec.num_layers)
                .map(|i| DecoderSpec::layer_name(pattern, i))
                .collect()
        };
        let (past_key, past_value) = (names(&spec.past_key), names(&spec.past_value));
        let (present_key, present_value) = (names(&spec.present_key), names(&spec.present_value));
        for name in past_key.iter().chain(&past_value) {
            graph.expect(true, name, &kv_shape("past"), DType::F32)?;
        }
        for name in present_key.iter().chain(&present_value) {
            graph.expect(false, name, &kv_shape("total"), DType::F32)?;
        }
        // A graph input the manifest does not account for would be left unfed.
        let known: Vec<&str> = spec
            .inputs_embeds
            .iter()
            .chain(&spec.input_ids)
            .map(|t| t.name.as_str())
            .chain(spec.attention_mask.as_deref())
            .chain(spec.position_ids.as_deref())
            .chain(spec.modality_ids.as_deref())
            .chain(past_key.iter().map(String::as_str))
            .chain(past_value.iter().map(String::as_str))
            .collect();
        if let Some(extra) = graph
            .session
            .inputs()
            .iter()
            .find(|o| !known.contains(&o.name()))
        {
            return Err(ModelError::Graph {
                file: graph.file.clone(),
                tensor: extra.name().to_string(),
                message:
                    "the graph takes this input but the manifest's decoder section does not name it"
                        .into(),
            });
        }
        Ok(Decoder {
            vocab: 0,
            graph,
            spec: spec.clone(),
            hidden,
            past_key,
            past_value,
            present_key,
            present_value,
        })
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    pub fn spec(&self) -> &DecoderSpec {
        &self.spec
    }

    /// Vocabulary size, known after the first pass.
    pub fn vocab_size(&self) -> usize {
        self.vocab
    }

    /// Floats one cached position takes in one layer's keys (or values).
    pub fn per_position(&self) -> usize {
        self.spec.num_kv_heads * self.spec.head_dim
    }

    /// Whether rows of different lengths can share a batch (needs a mask and explicit
    /// positions).
    pub fn supports_padding(&self) -> bool {
        self.spec.attention_mask.is_some() && self.spec.position_ids.is_some()
    }

    fn modality_id(&self, m: Modality) -> i64 {
        self.spec
            .modality_ids_map
            .get(m.as_str())
            .copied()
            .unwrap_or(0)
    }

    /// Runs the new positions of every row through the decoder in one pass, extends
    /// each row's cache, and returns each row's logits at its last new position.
    pub fn forward(&mut self, rows: &mut [DecodeRow<'_>]) -> Result<Vec<Vec<f32>>, ModelError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let batch = rows.len();
        let per_pos = self.per_position();
        let layers = self.spec.num_layers;

        // Sizes of every row, checked against the graph's limits.
        let mut new_lens = Vec::with_capacity(batch);
        for row in rows.iter() {
            let q = match &row.input {
                RowInput::Embeds(e) => {
                    if self.spec.inputs_embeds.is_none() {
                        return Err(ModelError::InvalidInput(
                            "this decoder takes token ids".into(),
                        ));
                    }
                    if e.len() % self.hidden != 0 {
                        return Err(ModelError::InvalidInput(format!(
                            "{} embedding values is not a whole number of {}-wide positions",
                            e.len(),
                            self.hidden
                        )));
                    }
                    e.len() / self.hidden
                }
                RowInput::Ids(ids) => {
                    if self.spec.input_ids.is_none() {
                        return Err(ModelError::InvalidInput(
                            "this decoder takes embeddings".into(),
                        ));
                    }
                    ids.len()
                }
            };
            if q == 0 || row.modality.len() != q {
                return Err(ModelError::InvalidInput(format!(
                    "a decoder row needs at least one position and a modality per position \
                     ({q} positions, {} modalities)",
                    row.modality.len()
                )));
            }
            let needed = row.cache.len + q;
            if needed > self.spec.max_positions {
                return Err(ModelError::ContextFull {
                    needed,
                    limit: self.spec.max_positions,
                });
            }
            new_lens.push(q);
        }
        let past_max = rows.iter().map(|r| r.cache.len).max().unwrap_or(0);
        let new_max = new_lens.iter().copied().max().unwrap_or(0);
        let total = past_max + new_max;
        let padded = rows
            .iter()
            .zip(&new_lens)
            .any(|(r, q)| r.cache.len != past_max || *q != new_max);
        if padded && !self.supports_padding() {
            return Err(ModelError::InvalidInput(
                "rows of different lengths need a decoder with attention_mask and position_ids"
                    .into(),
            ));
        }

        // New positions, left-padded.
        let mut inputs = Vec::new();
        if let Some(spec) = &self.spec.inputs_embeds {
            let mut data = vec![0.0f32; batch * new_max * self.hidden];
            for (b, (row, q)) in rows.iter().zip(&new_lens).enumerate() {
                if let RowInput::Embeds(e) = &row.input {
                    let start = (b * new_max + new_max - q) * self.hidden;
                    data[start..start + e.len()].copy_from_slice(e);
                }
            }
            inputs.push(f32_input(
                &spec.name,
                vec![batch, new_max, self.hidden],
                data,
            )?);
        } else if let Some(spec) = &self.spec.input_ids {
            let mut data = vec![0i64; batch * new_max];
            for (b, (row, q)) in rows.iter().zip(&new_lens).enumerate() {
                if let RowInput::Ids(ids) = &row.input {
                    let start = b * new_max + new_max - q;
                    for (i, id) in ids.iter().enumerate() {
                        data[start + i] = *id as i64;
                    }
                }
            }
            inputs.push(i64_input(&spec.name, vec![batch, new_max], data)?);
        }

        // Mask, positions and modality tags.
        if let Some(name) = &self.spec.attention_mask {
            let mut mask = vec![0i64; batch * total];
            for (b, (row, q)) in rows.iter().zip(&new_lens).enumerate() {
                let base = b * total;
                mask[base + past_max - row.cache.len..base + past_max].fill(1);
                mask[base + total - q..base + total].fill(1);
            }
            inputs.push(i64_input(name, vec![batch, total], mask)?);
        }
        if let Some(name) = &self.spec.position_ids {
            let mut positions = vec![0i64; batch * new_max];
            for (b, (row, q)) in rows.iter().zip(&new_lens).enumerate() {
                for i in 0..*q {
                    positions[b * new_max + new_max - q + i] = row.cache.next_position + i as i64;
                }
            }
            inputs.push(i64_input(name, vec![batch, new_max], positions)?);
        }
        if let Some(name) = self.spec.modality_ids.clone() {
            let mut tags = vec![0i64; batch * total];
            for (b, (row, q)) in rows.iter().zip(&new_lens).enumerate() {
                let base = b * total;
                let past_start = base + past_max - row.cache.len;
                tags[past_start..base + past_max].copy_from_slice(&row.cache.modality);
                for (i, m) in row.modality.iter().enumerate() {
                    tags[base + total - q + i] = self.modality_id(*m);
                }
            }
            inputs.push(i64_input(&name, vec![batch, total], tags)?);
        }

        // Past keys and values, gathered from each row's cache into
        // [batch, kv_heads, past, head_dim].
        let heads = self.spec.num_kv_heads;
        let head_dim = self.spec.head_dim;
        for layer in 0..layers {
            for (is_value, name) in [
                (false, &self.past_key[layer]),
                (true, &self.past_value[layer]),
            ] {
                let mut data = vec![0.0f32; batch * heads * past_max * head_dim];
                for (b, row) in rows.iter().enumerate() {
                    let cache = if is_value {
                        &row.cache.values
                    } else {
                        &row.cache.keys
                    };
                    let Some(src) = cache.get(layer) else {
                        continue;
                    };
                    let offset = past_max - row.cache.len;
                    for p in 0..row.cache.len {
                        for h in 0..heads {
                            let from = p * per_pos + h * head_dim;
                            let to = ((b * heads + h) * past_max + offset + p) * head_dim;
                            data[to..to + head_dim].copy_from_slice(&src[from..from + head_dim]);
                        }
                    }
                }
                inputs.push(f32_input(
                    name,
                    vec![batch, heads, past_max, head_dim],
                    data,
                )?);
            }
        }

        // Run, then copy out the last logits and the new keys and values.
        let file = self.graph.file.clone();
        let outputs = self
            .graph
            .session
            .run(inputs)
            .map_err(|e| ModelError::inference(&file, e))?;
        let extract = |name: &str| -> Result<(Vec<usize>, &[f32]), ModelError> {
            let value = outputs
                .get(name)
                .ok_or_else(|| ModelError::inference(&file, format!("output `{name}` missing")))?;
            let (shape, data) = value
                .try_extract_tensor::<f32>()
                .map_err(|e| ModelError::inference(&file, format!("output `{name}`: {e}")))?;
            Ok((shape.iter().map(|d| (*d).max(0) as usize).collect(), data))
        };
        let (logit_shape, logits) = extract(&self.spec.logits)?;
        if logit_shape.len() != 3 || logit_shape[0] != batch || logit_shape[1] != new_max {
            return Err(ModelError::inference(
                &file,
                format!("logits shape {logit_shape:?}, expected [{batch}, {new_max}, vocab]"),
            ));
        }
        let vocab = logit_shape[2];
        let last_logits: Vec<Vec<f32>> = (0..batch)
            .map(|b| {
                let start = (b * new_max + new_max - 1) * vocab;
                logits[start..start + vocab].to_vec()
            })
            .collect();

        for layer in 0..layers {
            for (is_value, name) in [
                (false, &self.present_key[layer]),
                (true, &self.present_value[layer]),
            ] {
                let (shape, data) = extract(name)?;
                if shape != [batch, heads, total, head_dim] {
                    return Err(ModelError::inference(
                        &file,
                        format!("`{name}` shape {shape:?}, expected [{batch}, {heads}, {total}, {head_dim}]"),
                    ));
                }
                for (b, (row, q)) in rows.iter_mut().zip(&new_lens).enumerate() {
                    let cache = if is_value {
                        &mut row.cache.values
                    } else {
                        &mut row.cache.keys
                    };
                    if cache.len() < layers {
                        cache.resize_with(layers, Vec::new);
                    }
                    let dst = &mut cache[layer];
                    dst.reserve(q * per_pos);
                    for p in total - q..total {
                        for h in 0..heads {
                            let from = ((b * heads + h) * total + p) * head_dim;
                            dst.extend_from_slice(&data[from..from + head_dim]);
                        }
                    }
                }
            }
        }
        drop(outputs);

        for (row, q) in rows.iter_mut().zip(&new_lens) {
            let tags: Vec<i64> = row.modality.iter().map(|m| self.modality_id(*m)).collect();
            row.cache.modality.extend(tags);
            row.cache.len += q;
            row.cache.next_position += *q as i64;
        }
        self.vocab = vocab;
        Ok(last_logits)
    }
}
