//! Errors of the model layer, each with a stable snake_case code.

use std::path::PathBuf;

/// Everything that can go wrong loading or running a bundle.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The ONNX Runtime library could not be found, fetched or loaded.
    #[error("{0}")]
    Runtime(String),
    /// A configuration value is invalid.
    #[error("{0}")]
    Config(String),
    /// The manifest is unreadable or inconsistent.
    #[error("bundle manifest {path}: {message}")]
    Manifest { path: PathBuf, message: String },
    /// A file named by the manifest is missing or its checksum differs.
    #[error("bundle file {path}: {message}")]
    BundleFile { path: PathBuf, message: String },
    /// A graph's inputs or outputs disagree with the manifest.
    #[error("{file}: tensor `{tensor}`: {message}")]
    Graph {
        file: String,
        tensor: String,
        message: String,
    },
    /// The tokenizer could not be loaded or used.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// Input the model cannot take: undecodable image, wrong length, and the like.
    #[error("{0}")]
    InvalidInput(String),
    /// A sequence would grow past the decoder's positions or its configured cap.
    #[error("context full: {needed} positions needed, {limit} allowed")]
    ContextFull { needed: usize, limit: usize },
    /// ONNX Runtime failed while running a graph.
    #[error("{model}: {message}")]
    Inference { model: String, message: String },
}

impl ModelError {
    /// The stable code used in error events, close reasons and metric labels.
    pub fn code(&self) -> &'static str {
        match self {
            ModelError::Runtime(_) => "runtime_unavailable",
            ModelError::Config(_) => "invalid_config",
            ModelError::Manifest { .. } => "invalid_manifest",
            ModelError::BundleFile { .. } => "invalid_bundle_file",
            ModelError::Graph { .. } => "graph_mismatch",
            ModelError::Tokenizer(_) => "tokenizer_error",
            ModelError::InvalidInput(_) => "invalid_input",
            ModelError::ContextFull { .. } => "context_full",
            ModelError::Inference { .. } => "model_error",
        }
    }

    pub(crate) fn inference(model: &str, err: impl std::fmt::Display) -> Self {
        ModelError::Inference {
            model: model.to_string(),
            message: err.to_string(),
        }
    }
}
