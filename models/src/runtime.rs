//! Finding, fetching and loading the ONNX Runtime shared library.
//!
//! mmrt loads ONNX Runtime dynamically. The library comes, in this order of preference,
//! from an explicit path in [`RuntimeConfig`], the `ORT_DYLIB_PATH` environment variable,
//! or a pinned ONNX Runtime wheel from the Python package index: downloaded once, checked
//! against its sha256, unpacked into the cache folder and reused offline after that.
//! A missing or unusable library is an error that says how to fix it, never a panic.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::error::ModelError;
use crate::packages::{self, ArchiveFormat};

/// A pinned wheel that carries `libonnxruntime.so`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PinnedWheel {
    /// `cpu` or `gpu`: the name users pick in configuration.
    pub flavour: &'static str,
    pub version: &'static str,
    pub arch: &'static str,
    pub url: &'static str,
    pub sha256: &'static str,
    /// Member of the wheel (a zip archive) that is the library.
    pub member: &'static str,
}

/// The wheels mmrt knows how to fetch. The GPU wheel also carries the CUDA and
/// TensorRT provider libraries, which are unpacked beside the runtime.
pub const PINNED_WHEELS: &[PinnedWheel] = &[
    PinnedWheel {
        flavour: "cpu",
        version: "1.32.0",
        arch: "x86_64",
        url: "https://files.pythonhosted.org/packages/a3/81/55845186c20cba59f614991f4065dea148e48eeb9749893768c85ce64327/onnxruntime-1.32.0-cp312-cp312-manylinux_2_28_x86_64.whl",
        sha256: "99e1074c4b2197accd5073052a465361be17b89c093b8ffb6e6bd8f986c52df8",
        member: "onnxruntime/capi/libonnxruntime.so.1.32.0",
    },
    PinnedWheel {
        flavour: "cpu",
        version: "1.32.0",
        arch: "aarch64",
        url: "https://files.pythonhosted.org/packages/4a/8f/1e43fb994513c7c7a9c6965272ef89d963c1bd4080993a6267bf913701d1/onnxruntime-1.32.0-cp312-cp312-manylinux_2_28_aarch64.whl",
        sha256: "e36c187006e7a7c8b8d6d57f1a209dd63f52430dca6c282b177718ad6b841054",
        member: "onnxruntime/capi/libonnxruntime.so.1.32.0",
    },
    PinnedWheel {
        flavour: "gpu",
        version: "1.31.1",
        arch: "x86_64",
        url: "https://files.pythonhosted.org/packages/22/97/9531b4d9e566cf2a0f04b4b5c26a3bc0ef2e2e0b6bc943a02c0eead98cf7/onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl",
        sha256: "05d548956197b9d01f59b625de740e0d6be3593f874e241a12dc0362650ecdf7",
        member: "onnxruntime/capi/libonnxruntime.so.1.31.1",
    },
];

/// Where the runtime library comes from and how sessions run.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// An explicit library path; wins over everything else.
    pub library_path: Option<PathBuf>,
    /// `cpu` or `gpu`: which pinned wheel to fetch when no path is given.
    pub flavour: String,
    /// Folder for fetched libraries and TensorRT engines.
    pub cache_dir: PathBuf,
    /// Never touch the network: fail if the library is not already cached.
    pub offline: bool,
    pub execution_provider: ExecutionProviderKind,
    /// Intra-op threads per session (0 lets ONNX Runtime choose).
    pub intra_threads: usize,
    pub cuda_device: i32,
    pub tensorrt_fp16: bool,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            library_path: None,
            flavour: "cpu".to_string(),
            cache_dir: default_cache_dir(),
            offline: false,
            execution_provider: ExecutionProviderKind::Cpu,
            intra_threads: 1,
            cuda_device: 0,
            tensorrt_fp16: false,
        }
    }
}

impl RuntimeConfig {
    /// The default configuration, adjusted by the `ORT_DYLIB_PATH`, `MMRT_ORT_FLAVOUR`,
    /// `MMRT_CACHE_DIR` and `MMRT_OFFLINE` environment variables.
    pub fn from_env() -> Self {
        let mut config = RuntimeConfig::default();
        if let Some(path) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
            config.library_path = Some(PathBuf::from(path));
        }
        if let Ok(flavour) = std::env::var("MMRT_ORT_FLAVOUR") {
            config.flavour = flavour;
        }
        if let Some(dir) = std::env::var_os("MMRT_CACHE_DIR").filter(|p| !p.is_empty()) {
            config.cache_dir = PathBuf::from(dir);
        }
        config.offline = std::env::var("MMRT_OFFLINE").is_ok_and(|v| v == "1" || v == "true");
        config
    }
}

/// Which execution provider sessions ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExecutionProviderKind {
    #[default]
    Cpu,
    Cuda,
    TensorRt,
    /// TensorRT, then CUDA, then CPU: the first that works for each model.
    Auto,
}

impl std::str::FromStr for ExecutionProviderKind {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda),
            "tensorrt" => Ok(Self::TensorRt),
            "auto" => Ok(Self::Auto),
            other => Err(ModelError::Config(format!(
                "unknown execution provider `{other}`; expected cpu, cuda, tensorrt or auto"
            ))),
        }
    }
}

/// `$XDG_CACHE_HOME/mmrt`, else `$HOME/.cache/mmrt`, else `.mmrt-cache`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|p| !p.is_empty()) {
        return PathBuf::from(dir).join("mmrt");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|p| !p.is_empty()) {
        return PathBuf::from(home).join(".cache").join("mmrt");
    }
    PathBuf::from(".mmrt-cache")
}

/// The pinned wheel for this machine and flavour.
pub fn pinned_wheel(flavour: &str) -> Result<&'static PinnedWheel, ModelError> {
    let arch = std::env::consts::ARCH;
    PINNED_WHEELS
        .iter()
        .find(|w| w.flavour == flavour && w.arch == arch)
        .ok_or_else(|| {
            ModelError::Runtime(format!(
                "no pinned ONNX Runtime wheel for flavour `{flavour}` on {arch}; \
                 set ORT_DYLIB_PATH to a libonnxruntime.so (1.31 or newer)"
            ))
        })
}

/// Returns the path of a usable library: configured, from the environment, cached, or
/// freshly fetched.
pub fn locate_library(config: &RuntimeConfig) -> Result<PathBuf, ModelError> {
    if let Some(path) = &config.library_path {
        if !path.is_file() {
            return Err(ModelError::Runtime(format!(
                "the ONNX Runtime library `{}` (ORT_DYLIB_PATH or --ort-library) does not exist; \
                 point it at a libonnxruntime.so, or unset it to fetch the pinned one",
                path.display()
            )));
        }
        return Ok(path.clone());
    }
    let wheel = pinned_wheel(&config.flavour)?;
    let folder = config.cache_dir.join(format!(
        "onnxruntime-{}-{}-{}",
        wheel.flavour, wheel.version, wheel.arch
    ));
    let library = folder.join(file_name(wheel.member));
    // The marker is written last, so a half-unpacked folder is never taken as complete.
    if library.is_file() && folder.join("COMPLETE").is_file() {
        return Ok(library);
    }
    if config.offline {
        return Err(ModelError::Runtime(format!(
            "ONNX Runtime {} is not in the cache `{}` and offline mode is on; \
             run once with network access to the Python package index, or set ORT_DYLIB_PATH",
            wheel.version,
            folder.display()
        )));
    }
    fetch_wheel(wheel, &folder)?;
    Ok(library)
}

fn file_name(member: &str) -> &str {
    member.rsplit('/').next().unwrap_or(member)
}

/// Downloads the wheel, checks its digest and unpacks the runtime (and, for the GPU
/// wheel, its provider libraries) into `folder`.
fn fetch_wheel(wheel: &PinnedWheel, folder: &Path) -> Result<(), ModelError> {
    tracing::info!(url = wheel.url, folder = %folder.display(), "fetching onnx runtime");
    let fail = |what: String| {
        ModelError::Runtime(format!(
            "could not fetch ONNX Runtime {} from the Python package index: {what}; \
             set ORT_DYLIB_PATH to a libonnxruntime.so, or MMRT_CACHE_DIR to a folder \
             that already holds it",
            wheel.version
        ))
    };
    let bytes = packages::download_verified(wheel.url, wheel.sha256).map_err(fail)?;

    // Each library is renamed into place complete (several processes may fetch at
    // once); the marker that declares the folder complete comes last.
    packages::extract_members(ArchiveFormat::Zip, &bytes, |name| {
        let wanted = name == wheel.member
            || (name.starts_with("onnxruntime/capi/libonnxruntime_providers_")
                && name.ends_with(".so"));
        wanted.then(|| folder.join(file_name(name)))
    })
    .map_err(fail)?;
    fs::write(folder.join("COMPLETE"), wheel.sha256).map_err(|e| fail(e.to_string()))?;
    Ok(())
}

/// The process-wide ONNX Runtime environment (the runtime allows one per process).
static ENVIRONMENT: OnceLock<Result<(ort::environment::Environment, PathBuf), String>> =
    OnceLock::new();

/// Loads the library and creates the environment once per process; later calls return
/// the same environment (or the same error).
pub fn environment(
    config: &RuntimeConfig,
) -> Result<&'static ort::environment::Environment, ModelError> {
    let entry = ENVIRONMENT.get_or_init(|| {
        let path = locate_library(config).map_err(|e| e.to_string())?;
        let builder = ort::init_from(&path).map_err(|e| {
            format!(
                "could not load ONNX Runtime from `{}`: {e}; set ORT_DYLIB_PATH to a \
                 libonnxruntime.so of version 1.31 or newer",
                path.display()
            )
        })?;
        let env = builder
            .with_name("mmrt")
            .with_telemetry(false)
            .build()
            .map_err(|e| format!("could not create the ONNX Runtime environment: {e}"))?;
        tracing::info!(library = %path.display(), "onnx runtime loaded");
        Ok((env, path))
    });
    match entry {
        Ok((env, _)) => Ok(env),
        Err(message) => Err(ModelError::Runtime(message.clone())),
    }
}

/// The path of the loaded library, once [`environment`] has succeeded.
pub fn loaded_library() -> Option<&'static Path> {
    ENVIRONMENT
        .get()
        .and_then(|entry| entry.as_ref().ok())
        .map(|(_, path)| path.as_path())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_configured_library_names_the_path() {
        let config = RuntimeConfig {
            library_path: Some(PathBuf::from("/nonexistent/libonnxruntime.so")),
            ..RuntimeConfig::default()
        };
        let err = locate_library(&config).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/libonnxruntime.so"), "{err}");
        assert!(err.contains("ORT_DYLIB_PATH"), "{err}");
    }

    #[test]
    fn offline_with_an_empty_cache_says_how_to_fix_it() {
        let dir = std::env::temp_dir().join(format!("mmrt-empty-cache-{}", std::process::id()));
        let config = RuntimeConfig {
            cache_dir: dir,
            offline: true,
            ..RuntimeConfig::default()
        };
        let err = locate_library(&config).unwrap_err().to_string();
        assert!(err.contains("offline"), "{err}");
        assert!(err.contains("ORT_DYLIB_PATH"), "{err}");
    }

    #[test]
    fn unknown_flavour_is_refused() {
        assert!(pinned_wheel("tpu").is_err());
        assert!(pinned_wheel("cpu").is_ok());
    }

    #[test]
    fn provider_names_parse() {
        assert_eq!(
            "auto".parse::<ExecutionProviderKind>().unwrap(),
            ExecutionProviderKind::Auto
        );
        assert!("gpu".parse::<ExecutionProviderKind>().is_err());
    }
}
