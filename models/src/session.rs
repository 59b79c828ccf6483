//! One ONNX graph loaded into an ONNX Runtime session on the configured execution
//! provider, and the checks of its inputs and outputs against the manifest.

use std::path::Path;

use ort::ep;
use ort::session::Session;
use ort::value::{TensorElementType, ValueType};

use crate::error::ModelError;
use crate::manifest::{DType, Dim, TensorSpec};
use crate::runtime::{self, ExecutionProviderKind, RuntimeConfig};

/// A loaded graph: the session, its file name for messages, and the provider it got.
pub struct Graph {
    pub(crate) session: Session,
    pub(crate) file: String,
    provider: &'static str,
}

impl std::fmt::Debug for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Graph")
            .field("file", &self.file)
            .field("provider", &self.provider)
            .finish()
    }
}

impl Graph {
    /// Loads `path`, trying the providers that `config` asks for in order and keeping
    /// the first that builds a session.
    pub fn load(path: &Path, config: &RuntimeConfig) -> Result<Graph, ModelError> {
        let env = runtime::environment(config)?;
        let file = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        let candidates: &[&'static str] = match config.execution_provider {
            ExecutionProviderKind::Cpu => &["cpu"],
            ExecutionProviderKind::Cuda => &["cuda", "cpu"],
            ExecutionProviderKind::TensorRt => &["tensorrt", "cpu"],
            ExecutionProviderKind::Auto => &["tensorrt", "cuda", "cpu"],
        };
        let mut failures = Vec::new();
        for provider in candidates {
            match build_session(env, path, config, provider) {
                Ok(session) => {
                    tracing::info!(model = %file, provider, "model loaded");
                    if !failures.is_empty() {
                        tracing::warn!(model = %file, provider, fallbacks = ?failures, "execution provider fell back");
                    }
                    return Ok(Graph {
                        session,
                        file,
                        provider,
                    });
                }
                Err(e) => failures.push(format!("{provider}: {e}")),
            }
        }
        Err(ModelError::Graph {
            file,
            tensor: "-".into(),
            message: format!("could not create a session: {}", failures.join("; ")),
        })
    }

    /// The execution provider this graph runs on: `cpu`, `cuda` or `tensorrt`.
    pub fn provider(&self) -> &'static str {
        self.provider
    }

    pub fn file(&self) -> &str {
        &self.file
    }

    /// Checks that the graph has an input named as in `spec`, with its type and shape.
    pub fn expect_input(&self, spec: &TensorSpec) -> Result<(), ModelError> {
        self.expect(true, &spec.name, &spec.shape, spec.dtype)
    }

    /// Checks that the graph has an output named as in `spec`, with its type and shape.
    pub fn expect_output(&self, spec: &TensorSpec) -> Result<(), ModelError> {
        self.expect(false, &spec.name, &spec.shape, spec.dtype)
    }

    /// Checks a named input or output's type and shape.
    pub fn expect(
        &self,
        input: bool,
        name: &str,
        shape: &[Dim],
        dtype: DType,
    ) -> Result<(), ModelError> {
        let kind = if input { "input" } else { "output" };
        let outlets = if input {
            self.session.inputs()
        } else {
            self.session.outputs()
        };
        let Some(outlet) = outlets.iter().find(|o| o.name() == name) else {
            let names: Vec<&str> = outlets.iter().map(|o| o.name()).collect();
            return Err(self.mismatch(
                name,
                format!("the manifest names this {kind}, but the graph's {kind}s are {names:?}"),
            ));
        };
        let ValueType::Tensor {
            ty, shape: found, ..
        } = outlet.dtype()
        else {
            return Err(self.mismatch(name, format!("{kind} is not a tensor")));
        };
        let found_dtype = match ty {
            TensorElementType::Float32 => Some(DType::F32),
            TensorElementType::Int64 => Some(DType::I64),
            _ => None,
        };
        if found_dtype != Some(dtype) {
            return Err(self.mismatch(
                name,
                format!("{kind} type: manifest expects {dtype}, graph has {ty:?}"),
            ));
        }
        let found: Vec<i64> = found.iter().copied().collect();
        let shape_ok = found.len() == shape.len()
            && shape.iter().zip(&found).all(|(want, got)| match want {
                Dim::Symbol(_) => true,
                Dim::Fixed(n) => *got < 0 || *got == *n,
            });
        if !shape_ok {
            let want: Vec<String> = shape.iter().map(Dim::to_string).collect();
            let got: Vec<String> = found
                .iter()
                .map(|d| {
                    if *d < 0 {
                        "?".to_string()
                    } else {
                        d.to_string()
                    }
                })
                .collect();
            return Err(self.mismatch(
                name,
                format!(
                    "{kind} shape: manifest expects [{}], graph has [{}]",
                    want.join(", "),
                    got.join(", ")
                ),
            ));
        }
        Ok(())
    }

    /// Whether the graph has an input of this name.
    pub fn has_input(&self, name: &str) -> bool {
        self.session.inputs().iter().any(|o| o.name() == name)
    }

    fn mismatch(&self, tensor: &str, message: String) -> ModelError {
        ModelError::Graph {
            file: self.file.clone(),
            tensor: tensor.to_string(),
            message,
        }
    }
}

fn build_session(
    env: &ort::environment::Environment,
    path: &Path,
    config: &RuntimeConfig,
    provider: &str,
) -> ort::Result<Session> {
    let mut builder = Session::builder(env)?;
    if config.intra_threads > 0 {
        builder = builder.with_intra_threads(config.intra_threads)?;
    }
    builder = match provider {
        "tensorrt" => {
            let cache = config.cache_dir.join("tensorrt-engines");
            builder.with_execution_providers([ep::TensorRT::default()
                .with_device_id(config.cuda_device)
                .with_fp16(config.tensorrt_fp16)
                .with_engine_cache(true)
                .with_engine_cache_path(cache.display())
                .build()
                .error_on_failure()])?
        }
        "cuda" => builder.with_execution_providers([ep::CUDA::default()
            .with_device_id(config.cuda_device)
            .build()
            .error_on_failure()])?,
        _ => builder,
    };
    builder.commit_from_file(path)
}
