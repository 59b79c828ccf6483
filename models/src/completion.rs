//! Filling missing modalities: the completion model (stand-ins predicted from what is
//! present) and the learned null embeddings.

use std::collections::BTreeMap;
use std::path::Path;

use crate::encoders::{f32_input, run_graph};
use crate::error::ModelError;
use crate::manifest::{CompletionSpec, Modality};
use crate::session::Graph;

/// What is known of one prompt's modalities: the mean embedding of each present one.
#[derive(Debug, Clone, Default)]
pub struct CompletionInput {
    pub summaries: BTreeMap<Modality, Vec<f32>>,
}

/// The completion graph.
#[derive(Debug)]
pub struct CompletionModel {
    graph: Graph,
    spec: CompletionSpec,
    order: Vec<Modality>,
    fills: Vec<(Modality, String, usize)>,
    hidden: usize,
}

impl CompletionModel {
    pub(crate) fn new(
        graph: Graph,
        spec: &CompletionSpec,
        hidden: usize,
    ) -> Result<CompletionModel, ModelError> {
        for summary in &spec.summaries {
            graph.expect_input(summary)?;
        }
        graph.expect_input(&spec.present)?;
        let mut fills = Vec::new();
        for (name, tensor) in &spec.fills {
            graph.expect_output(tensor)?;
            let modality = Modality::parse(name).ok_or_else(|| ModelError::Graph {
                file: graph.file.clone(),
                tensor: tensor.name.clone(),
                message: format!("unknown modality `{name}`"),
            })?;
            let tokens = tensor.fixed(1).ok_or_else(|| ModelError::Graph {
                file: graph.file.clone(),
                tensor: tensor.name.clone(),
                message: "fill token count (axis 1) must be fixed".into(),
            })?;
            fills.push((modality, tensor.name.clone(), tokens));
        }
        let order = spec
            .modalities
            .iter()
            .filter_map(|m| Modality::parse(m))
            .collect();
        Ok(CompletionModel {
            graph,
            spec: spec.clone(),
            order,
            fills,
            hidden,
        })
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Whether this model can stand in for `modality`.
    pub fn fills(&self, modality: Modality) -> bool {
        self.fills.iter().any(|(m, _, _)| *m == modality)
    }

    /// Predicts stand-ins for every fillable modality of each row.
    pub fn complete(
        &mut self,
        rows: &[CompletionInput],
    ) -> Result<Vec<BTreeMap<Modality, Vec<f32>>>, ModelError> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let batch = rows.len();
        let hidden = self.hidden;
        let mut inputs = Vec::new();
        for (modality, spec) in self.order.iter().zip(&self.spec.summaries) {
            let mut data = vec![0.0f32; batch * hidden];
            for (b, row) in rows.iter().enumerate() {
                if let Some(summary) = row.summaries.get(modality) {
                    if summary.len() != hidden {
                        return Err(ModelError::InvalidInput(format!(
                            "{modality} summary has {} values, expected {hidden}",
                            summary.len()
                        )));
                    }
                    data[b * hidden..(b + 1) * hidden].copy_from_slice(summary);
                }
            }
            inputs.push(f32_input(&spec.name, vec![batch, hidden], data)?);
        }
        let width = self.order.len();
        let mut present = vec![0.0f32; batch * width];
        for (b, row) in rows.iter().enumerate() {
            for (i, m) in self.order.iter().enumerate() {
                if row.summaries.contains_key(m) {
                    present[b * width + i] = 1.0;
                }
            }
        }
        inputs.push(f32_input(
            &self.spec.present.name,
            vec![batch, width],
            present,
        )?);
        let names: Vec<&str> = self.fills.iter().map(|(_, n, _)| n.as_str()).collect();
        let outputs = run_graph(&mut self.graph, inputs, &names)?;
        let mut result = vec![BTreeMap::new(); batch];
        for ((modality, _, tokens), (_, data)) in self.fills.iter().zip(outputs) {
            let per = tokens * hidden;
            if data.len() != batch * per {
                return Err(ModelError::inference(
                    &self.graph.file,
                    "fill has the wrong size",
                ));
            }
            for (b, row) in data.chunks_exact(per).enumerate() {
                result[b].insert(*modality, row.to_vec());
            }
        }
        Ok(result)
    }
}

/// The mean over tokens of `[tokens, hidden]` embeddings.
pub fn summarize(embeds: &[f32], hidden: usize) -> Vec<f32> {
    let tokens = embeds.len() / hidden.max(1);
    let mut mean = vec![0.0f32; hidden];
    if tokens == 0 {
        return mean;
    }
    for token in embeds.chunks_exact(hidden) {
        for (m, v) in mean.iter_mut().zip(token) {
            *m += v;
        }
    }
    for m in mean.iter_mut() {
        *m /= tokens as f32;
    }
    mean
}

/// Learned null embeddings, one `[tokens, hidden]` tensor per modality.
#[derive(Debug, Clone, Default)]
pub struct NullEmbeddings {
    by_modality: BTreeMap<Modality, Vec<f32>>,
}

impl NullEmbeddings {
    pub fn load(path: &Path, hidden: usize) -> Result<NullEmbeddings, ModelError> {
        let err = |message: String| ModelError::BundleFile {
            path: path.to_path_buf(),
            message,
        };
        let bytes = std::fs::read(path).map_err(|e| err(format!("cannot read: {e}")))?;
        let tensors = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| err(format!("not a safetensors file: {e}")))?;
        let mut by_modality = BTreeMap::new();
        for (name, view) in tensors.tensors() {
            let Some(modality) = Modality::parse(&name) else {
                return Err(err(format!(
                    "tensor `{name}` is not named after a modality"
                )));
            };
            if view.dtype() != safetensors::Dtype::F32 {
                return Err(err(format!("tensor `{name}` must be f32")));
            }
            let shape = view.shape();
            if shape.len() != 2 || shape[1] != hidden {
                return Err(err(format!(
                    "tensor `{name}` has shape {shape:?}, expected [tokens, {hidden}]"
                )));
            }
            let data = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            by_modality.insert(modality, data);
        }
        Ok(NullEmbeddings { by_modality })
    }

    pub fn get(&self, modality: Modality) -> Option<&[f32]> {
        self.by_modality.get(&modality).map(Vec::as_slice)
    }
}
