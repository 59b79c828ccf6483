//! Images and folders of video frames on disk.

use std::path::{Path, PathBuf};

use mmrt_protocol::ImageFormat;

use crate::error::ClientError;

/// Reads a JPEG or PNG file; the format comes from its bytes, not its name.
pub fn load_image(path: &Path) -> Result<(ImageFormat, Vec<u8>), ClientError> {
    let bytes = std::fs::read(path).map_err(|err| ClientError::Io {
        path: path.to_path_buf(),
        err,
    })?;
    match ImageFormat::sniff(&bytes) {
        Some(format) => Ok((format, bytes)),
        None => Err(ClientError::Media(format!(
            "{}: not a JPEG or PNG file",
            path.display()
        ))),
    }
}

/// The JPEG and PNG files of a folder, sorted by name (`frame_0001.jpg`, ...).
pub fn list_frames(dir: &Path) -> Result<Vec<PathBuf>, ClientError> {
    let io_error = |err| ClientError::Io {
        path: dir.to_path_buf(),
        err,
    };
    let mut frames = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_error)? {
        let path = entry.map_err(io_error)?.path();
        let is_image = path
            .extension()
            .and_then(|ext| ext.to_str())
            .is_some_and(|ext| matches!(ext.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png"));
        if is_image && path.is_file() {
            frames.push(path);
        }
    }
    if frames.is_empty() {
        return Err(ClientError::Media(format!(
            "{}: no .jpg, .jpeg or .png files",
            dir.display()
        )));
    }
    frames.sort();
    Ok(frames)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_loads_frames_in_order() {
        let dir = std::env::temp_dir().join(format!("mmrt-client-frames-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("b.png"), b"\x89PNG\r\n\x1a\nB").expect("write");
        std::fs::write(dir.join("a.JPG"), [0xFF, 0xD8, 0xFF, 0xE0]).expect("write");
        std::fs::write(dir.join("notes.txt"), b"x").expect("write");
        std::fs::write(dir.join("c.jpg"), b"not a jpeg").expect("write");

        let frames = list_frames(&dir).expect("lists");
        let names: Vec<_> = frames
            .iter()
            .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
            .collect();
        assert_eq!(names, ["a.JPG", "b.png", "c.jpg"]);
        assert_eq!(load_image(&frames[0]).expect("jpeg").0, ImageFormat::Jpeg);
        assert_eq!(load_image(&frames[1]).expect("png").0, ImageFormat::Png);
        assert!(matches!(load_image(&frames[2]), Err(ClientError::Media(_))));

        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
