//! The per-modality encoders: text embedding, image, and streaming audio. Each takes a
//! batch of independent items, so the scheduler can serve many sessions in one run.

use ort::session::SessionInputValue;
use ort::value::Tensor;

use crate::error::ModelError;
use crate::manifest::{
    AudioEncoderSpec, DType, Dim, ImageEncoderSpec, ImageLayout, StateSpec, TextEncoderSpec,
};
use crate::session::Graph;

/// A tensor copied out of a run: its shape and its values.
pub(crate) type OwnedTensor = (Vec<usize>, Vec<f32>);

/// Runs `graph` on named f32/i64 inputs and copies out the named f32 outputs.
pub(crate) fn run_graph(
    graph: &mut Graph,
    inputs: Vec<(String, SessionInputValue<'_>)>,
    outputs: &[&str],
) -> Result<Vec<OwnedTensor>, ModelError> {
    let file = graph.file.clone();
    let result = graph
        .session
        .run(inputs)
        .map_err(|e| ModelError::inference(&file, e))?;
    outputs
        .iter()
        .map(|name| {
            let value = result.get(*name).ok_or_else(|| {
                ModelError::inference(&file, format!("output `{name}` missing from the run"))
            })?;
            let (shape, data) = value
                .try_extract_tensor::<f32>()
                .map_err(|e| ModelError::inference(&file, format!("output `{name}`: {e}")))?;
            let shape = shape.iter().map(|d| (*d).max(0) as usize).collect();
            Ok((shape, data.to_vec()))
        })
        .collect()
}

pub(crate) fn f32_input(
    name: &str,
    shape: Vec<usize>,
    data: Vec<f32>,
) -> Result<(String, SessionInputValue<'static>), ModelError> {
    let tensor = Tensor::from_array((shape, data.into_boxed_slice()))
        .map_err(|e| ModelError::inference(name, e))?;
    Ok((name.to_string(), tensor.into()))
}

pub(crate) fn i64_input(
    name: &str,
    shape: Vec<usize>,
    data: Vec<i64>,
) -> Result<(String, SessionInputValue<'static>), ModelError> {
    let tensor = Tensor::from_array((shape, data.into_boxed_slice()))
        .map_err(|e| ModelError::inference(name, e))?;
    Ok((name.to_string(), tensor.into()))
}

/// Token embeddings: ids to `[tokens, hidden]` rows.
#[derive(Debug)]
pub struct TextEncoder {
    graph: Graph,
    spec: TextEncoderSpec,
    hidden: usize,
    pad_id: i64,
}

impl TextEncoder {
    pub(crate) fn new(
        graph: Graph,
        spec: &TextEncoderSpec,
        hidden: usize,
        pad_id: u32,
    ) -> Result<TextEncoder, ModelError> {
        graph.expect_input(&spec.input)?;
        graph.expect_output(&spec.output)?;
        Ok(TextEncoder {
            graph,
            spec: spec.clone(),
            hidden,
            pad_id: pad_id as i64,
        })
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Embeds each row of ids; rows may differ in length (they are padded together and
    /// the padding is cut off again).
    pub fn embed(&mut self, rows: &[&[u32]]) -> Result<Vec<Vec<f32>>, ModelError> {
        let width = rows.iter().map(|r| r.len()).max().unwrap_or(0);
        if rows.is_empty() || width == 0 {
            return Ok(rows.iter().map(|_| Vec::new()).collect());
        }
        let mut ids = vec![self.pad_id; rows.len() * width];
        for (r, row) in rows.iter().enumerate() {
            for (i, id) in row.iter().enumerate() {
                ids[r * width + i] = *id as i64;
            }
        }
        let input = i64_input(&self.spec.input.name, vec![rows.len(), width], ids)?;
        let out_name = self.spec.output.name.clone();
        let (_, data) = run_graph(&mut self.graph, vec![input], &[&out_name])?.remove(0);
        let hidden = self.hidden;
        Ok(rows
            .iter()
            .enumerate()
            .map(|(r, row)| {
                let start = r * width * hidden;
                data[start..start + row.len() * hidden].to_vec()
            })
            .collect())
    }
}

/// Image frames to a fixed number of embedding tokens each.
#[derive(Debug)]
pub struct ImageEncoder {
    graph: Graph,
    spec: ImageEncoderSpec,
    tokens: usize,
    hidden: usize,
}

impl ImageEncoder {
    pub(crate) fn new(
        graph: Graph,
        spec: &ImageEncoderSpec,
        hidden: usize,
    ) -> Result<ImageEncoder, ModelError> {
        graph.expect_input(&spec.input)?;
        graph.expect_output(&spec.output)?;
        let p = &spec.preprocess;
        let expected = match p.layout {
            ImageLayout::Nchw => [3, p.height as i64, p.width as i64],
            ImageLayout::Nhwc => [p.height as i64, p.width as i64, 3],
        };
        let matches = spec.input.shape.len() == 4
            && spec.input.shape[1..]
                .iter()
                .zip(expected)
                .all(|(d, e)| matches!(d, Dim::Symbol(_)) || *d == Dim::Fixed(e));
        if !matches {
            return Err(ModelError::Graph {
                file: graph.file.clone(),
                tensor: spec.input.name.clone(),
                message: format!(
                    "input shape {} disagrees with preprocess {}x{} {:?}",
                    spec.input.shape_string(),
                    p.width,
                    p.height,
                    p.layout
                ),
            });
        }
        let tokens = spec.output.fixed(1).unwrap_or(1);
        Ok(ImageEncoder {
            graph,
            spec: spec.clone(),
            tokens,
            hidden,
        })
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Embedding tokens per image.
    pub fn tokens_per_image(&self) -> usize {
        self.tokens
    }

    /// Encodes preprocessed images (see [`crate::ImagePreprocessor`]).
    pub fn encode(&mut self, images: &[&[f32]]) -> Result<Vec<Vec<f32>>, ModelError> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let p = &self.spec.preprocess;
        let per = 3 * p.width as usize * p.height as usize;
        let mut data = Vec::with_capacity(images.len() * per);
        for image in images {
            if image.len() != per {
                return Err(ModelError::InvalidInput(format!(
                    "preprocessed image has {} values, the encoder takes {per}",
                    image.len()
                )));
            }
            data.extend_from_slice(image);
        }
        let (h, w) = (p.height as usize, p.width as usize);
        let shape = match p.layout {
            ImageLayout::Nchw => vec![images.len(), 3, h, w],
            ImageLayout::Nhwc => vec![images.len(), h, w, 3],
        };
        let input = f32_input(&self.spec.input.name, shape, data)?;
        let out_name = self.spec.output.name.clone();
        let (shape, data) = run_graph(&mut self.graph, vec![input], &[&out_name])?.remove(0);
        split_rows(
            &self.graph,
            &shape,
            data,
            images.len(),
            self.tokens * self.hidden,
        )
    }
}

fn split_rows(
    graph: &Graph,
    shape: &[usize],
    data: Vec<f32>,
    batch: usize,
    per_row: usize,
) -> Result<Vec<Vec<f32>>, ModelError> {
    if data.len() != batch * per_row {
        return Err(ModelError::inference(
            &graph.file,
            format!("output shape {shape:?} is not {batch} rows of {per_row} values"),
        ));
    }
    Ok(data.chunks_exact(per_row).map(<[f32]>::to_vec).collect())
}

/// The carried state of one audio stream, for encoders that have one.
#[derive(Debug, Clone, Default)]
pub struct AudioStreamState {
    /// One entry per state pair of the manifest, the batch axis removed.
    values: Vec<Vec<f32>>,
}

/// Where a state's batch axis sits, and the sizes around it.
#[derive(Debug, Clone)]
struct StateLayout {
    spec: StateSpec,
    /// Product of the dims before the batch axis.
    outer: usize,
    /// Product of the dims after the batch axis.
    inner: usize,
    batch_axis: usize,
}

impl StateLayout {
    fn new(spec: &StateSpec, file: &str) -> Result<StateLayout, ModelError> {
        let err = |message: String| ModelError::Graph {
            file: file.to_string(),
            tensor: spec.input.clone(),
            message,
        };
        if spec.dtype != DType::F32 {
            return Err(err("streaming states must be f32".into()));
        }
        let batch_axis = spec
            .shape
            .iter()
            .position(|d| *d == Dim::Symbol("batch".into()))
            .ok_or_else(|| err("state shape needs a `batch` axis".into()))?;
        let mut sizes = Vec::new();
        for (axis, d) in spec.shape.iter().enumerate() {
            if axis == batch_axis {
                continue;
            }
            match d {
                Dim::Fixed(n) if *n > 0 => sizes.push(*n as usize),
                _ => return Err(err("state dims other than batch must be fixed".into())),
            }
        }
        Ok(StateLayout {
            spec: spec.clone(),
            outer: sizes[..batch_axis].iter().product(),
            inner: sizes[batch_axis..].iter().product(),
            batch_axis,
        })
    }

    fn row_len(&self) -> usize {
        self.outer * self.inner
    }

    fn batched_shape(&self, batch: usize) -> Vec<usize> {
        let mut shape: Vec<usize> = self
            .spec
            .shape
            .iter()
            .filter_map(|d| match d {
                Dim::Fixed(n) => Some(*n as usize),
                Dim::Symbol(_) => None,
            })
            .collect();
        shape.insert(self.batch_axis, batch);
        shape
    }

    fn stack(&self, rows: &[&[f32]]) -> Vec<f32> {
        let batch = rows.len();
        let mut out = vec![0.0; batch * self.row_len()];
        for (b, row) in rows.iter().enumerate() {
            for o in 0..self.outer {
                let src = &row[o * self.inner..(o + 1) * self.inner];
                let dst = o * batch * self.inner + b * self.inner;
                out[dst..dst + self.inner].copy_from_slice(src);
            }
        }
        out
    }

    fn unstack(&self, data: &[f32], batch: usize, b: usize) -> Vec<f32> {
        let mut row = Vec::with_capacity(self.row_len());
        for o in 0..self.outer {
            let src = o * batch * self.inner + b * self.inner;
            row.extend_from_slice(&data[src..src + self.inner]);
        }
        row
    }
}

/// The streaming audio encoder: one call per chunk of features, state carried.
#[derive(Debug)]
pub struct AudioEncoder {
    graph: Graph,
    spec: AudioEncoderSpec,
    states: Vec<StateLayout>,
    tokens: usize,
    hidden: usize,
}

impl AudioEncoder {
    pub(crate) fn new(
        graph: Graph,
        spec: &AudioEncoderSpec,
        hidden: usize,
    ) -> Result<AudioEncoder, ModelError> {
        graph.expect_input(&spec.input)?;
        graph.expect_output(&spec.output)?;
        let mut states = Vec::new();
        for state in &spec.state {
            graph.expect(true, &state.input, &state.shape, state.dtype)?;
            graph.expect(false, &state.output, &state.shape, state.dtype)?;
            states.push(StateLayout::new(state, &graph.file)?);
        }
        let tokens = spec.output.fixed(1).ok_or_else(|| ModelError::Graph {
            file: graph.file.clone(),
            tensor: spec.output.name.clone(),
            message: "the audio encoder's tokens per chunk (axis 1) must be fixed".into(),
        })?;
        Ok(AudioEncoder {
            graph,
            spec: spec.clone(),
            states,
            tokens,
            hidden,
        })
    }

    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    pub fn spec(&self) -> &AudioEncoderSpec {
        &self.spec
    }

    /// Embedding tokens each chunk produces.
    pub fn tokens_per_chunk(&self) -> usize {
        self.tokens
    }

    /// A fresh stream state (zeros), for the first chunk of a turn.
    pub fn new_state(&self) -> AudioStreamState {
        AudioStreamState {
            values: self.states.iter().map(|s| vec![0.0; s.row_len()]).collect(),
        }
    }

    /// Encodes one chunk for each of several streams, advancing each stream's state.
    pub fn encode_chunks(
        &mut self,
        items: &mut [(&mut AudioStreamState, &[f32])],
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        if items.is_empty() {
            return Ok(Vec::new());
        }
        let batch = items.len();
        let chunk_shape: Vec<usize> = self.spec.input.shape[1..]
            .iter()
            .map(|d| match d {
                Dim::Fixed(n) => *n as usize,
                Dim::Symbol(_) => 0,
            })
            .collect();
        let per: usize = chunk_shape.iter().product();
        let mut data = Vec::with_capacity(batch * per);
        for (state, chunk) in items.iter() {
            if chunk.len() != per || per == 0 {
                return Err(ModelError::InvalidInput(format!(
                    "audio chunk has {} values, the encoder takes {per}",
                    chunk.len()
                )));
            }
            if state.values.len() != self.states.len() {
                return Err(ModelError::InvalidInput(
                    "audio stream state does not belong to this encoder".into(),
                ));
            }
            data.extend_from_slice(chunk);
        }
        let mut shape = vec![batch];
        shape.extend(chunk_shape);
        let mut inputs = vec![f32_input(&self.spec.input.name, shape, data)?];
        for (i, layout) in self.states.iter().enumerate() {
            let rows: Vec<&[f32]> = items.iter().map(|(s, _)| s.values[i].as_slice()).collect();
            inputs.push(f32_input(
                &layout.spec.input,
                layout.batched_shape(batch),
                layout.stack(&rows),
            )?);
        }
        let mut names = vec![self.spec.output.name.clone()];
        names.extend(self.states.iter().map(|s| s.spec.output.clone()));
        let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut outputs = run_graph(&mut self.graph, inputs, &name_refs)?;
        for (i, layout) in self.states.iter().enumerate() {
            let (_, data) = &outputs[i + 1];
            if data.len() != batch * layout.row_len() {
                return Err(ModelError::inference(
                    &self.graph.file,
                    format!(
                        "state `{}` came back with the wrong size",
                        layout.spec.output
                    ),
                ));
            }
            for (b, (state, _)) in items.iter_mut().enumerate() {
                state.values[i] = layout.unstack(data, batch, b);
            }
        }
        let (shape, data) = outputs.swap_remove(0);
        split_rows(&self.graph, &shape, data, batch, self.tokens * self.hidden)
    }
}
