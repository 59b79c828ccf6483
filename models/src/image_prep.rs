//! Image preprocessing: decode (with limits against decompression bombs), stretch to
//! the model's size, normalise, and lay out as the encoder expects.

use std::io::Cursor;

use image::{ImageReader, Limits, RgbImage};

use crate::error::ModelError;
use crate::manifest::{ImageLayout, ImagePreprocessSpec};

/// The largest width or height a client image may declare.
pub const MAX_IMAGE_SIDE: u32 = 8192;
/// The most memory decoding one image may take.
pub const MAX_IMAGE_ALLOC: u64 = 256 << 20;

/// Turns images into the encoder's input tensor.
#[derive(Debug, Clone)]
pub struct ImagePreprocessor {
    spec: ImagePreprocessSpec,
}

impl ImagePreprocessor {
    pub fn new(spec: &ImagePreprocessSpec) -> ImagePreprocessor {
        ImagePreprocessor { spec: spec.clone() }
    }

    /// Values in one preprocessed image.
    pub fn len(&self) -> usize {
        3 * self.spec.width as usize * self.spec.height as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Decodes an encoded image (JPEG or PNG, detected from its bytes).
    pub fn decode(bytes: &[u8]) -> Result<RgbImage, ModelError> {
        let mut reader = ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| ModelError::InvalidInput(format!("unreadable image: {e}")))?;
        let mut limits = Limits::default();
        limits.max_image_width = Some(MAX_IMAGE_SIDE);
        limits.max_image_height = Some(MAX_IMAGE_SIDE);
        limits.max_alloc = Some(MAX_IMAGE_ALLOC);
        reader.limits(limits);
        let image = reader
            .decode()
            .map_err(|e| ModelError::InvalidInput(format!("cannot decode image: {e}")))?;
        Ok(image.to_rgb8())
    }

    /// Wraps raw interleaved RGB bytes, checking the size.
    pub fn from_raw_rgb(width: u32, height: u32, bytes: Vec<u8>) -> Result<RgbImage, ModelError> {
        if width == 0 || height == 0 || width > MAX_IMAGE_SIDE || height > MAX_IMAGE_SIDE {
            return Err(ModelError::InvalidInput(format!(
                "raw image size {width}x{height} is outside 1..={MAX_IMAGE_SIDE}"
            )));
        }
        let expected = width as usize * height as usize * 3;
        if bytes.len() != expected {
            return Err(ModelError::InvalidInput(format!(
                "raw RGB {width}x{height} needs {expected} bytes, got {}",
                bytes.len()
            )));
        }
        RgbImage::from_raw(width, height, bytes)
            .ok_or_else(|| ModelError::InvalidInput("raw RGB buffer has the wrong size".into()))
    }

    /// Decodes and preprocesses an encoded image.
    pub fn preprocess_bytes(&self, bytes: &[u8]) -> Result<Vec<f32>, ModelError> {
        Ok(self.preprocess(&Self::decode(bytes)?))
    }

    /// Resizes and normalises a decoded image into the encoder's layout.
    ///
    /// The resize is the bundle format's `stretch`: bilinear with half-pixel centres and
    /// no antialiasing (output pixel `x` samples source coordinate
    /// `(x + 0.5) * W / width - 0.5`, clamped to the image). It reads four source pixels
    /// per output pixel, so its cost does not grow with the camera's resolution.
    pub fn preprocess(&self, image: &RgbImage) -> Vec<f32> {
        let (w, h) = (self.spec.width as usize, self.spec.height as usize);
        let (src_w, src_h) = (image.width() as usize, image.height() as usize);
        let xs = sample_coords(w, src_w);
        let ys = sample_coords(h, src_h);
        let raw = image.as_raw();
        let pixel = |x: usize, y: usize, c: usize| raw[(y * src_w + x) * 3 + c] as f64;
        let plane = w * h;
        let mut out = vec![0.0f32; 3 * plane];
        for (oy, &(y0, y1, fy)) in ys.iter().enumerate() {
            for (ox, &(x0, x1, fx)) in xs.iter().enumerate() {
                let i = oy * w + ox;
                for c in 0..3 {
                    let top = pixel(x0, y0, c) * (1.0 - fx) + pixel(x1, y0, c) * fx;
                    let bottom = pixel(x0, y1, c) * (1.0 - fx) + pixel(x1, y1, c) * fx;
                    let value = (top * (1.0 - fy) + bottom * fy) / 255.0;
                    let v = ((value as f32) - self.spec.mean[c]) / self.spec.std[c];
                    let index = match self.spec.layout {
                        ImageLayout::Nchw => c * plane + i,
                        ImageLayout::Nhwc => i * 3 + c,
                    };
                    out[index] = v;
                }
            }
        }
        out
    }
}

/// For each output coordinate: the two source neighbours and the weight of the second.
fn sample_coords(out_len: usize, in_len: usize) -> Vec<(usize, usize, f64)> {
    (0..out_len)
        .map(|o| {
            let c = ((o as f64 + 0.5) * in_len as f64 / out_len as f64 - 0.5)
                .clamp(0.0, (in_len - 1) as f64);
            let lo = c.floor() as usize;
            let hi = (lo + 1).min(in_len - 1);
            (lo, hi, c - lo as f64)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::ResizeMode;

    fn spec() -> ImagePreprocessSpec {
        ImagePreprocessSpec {
            width: 4,
            height: 4,
            layout: ImageLayout::Nchw,
            resize: ResizeMode::Stretch,
            mean: [0.5, 0.5, 0.5],
            std: [0.5, 0.5, 0.5],
        }
    }

    #[test]
    fn a_uniform_image_normalises_per_channel() {
        let image = RgbImage::from_pixel(16, 9, image::Rgb([255, 0, 128]));
        let out = ImagePreprocessor::new(&spec()).preprocess(&image);
        assert_eq!(out.len(), 48);
        assert!(out[..16].iter().all(|v| (v - 1.0).abs() < 1e-6));
        assert!(out[16..32].iter().all(|v| (v + 1.0).abs() < 1e-6));
        assert!(out[32..].iter().all(|v| v.abs() < 0.01));
    }

    #[test]
    fn halving_blends_neighbour_pairs() {
        // Columns alternate black and white: each output pixel sits half way between a
        // black and a white source column.
        let image = RgbImage::from_fn(8, 8, |x, _| {
            let v = if x % 2 == 0 { 0 } else { 255 };
            image::Rgb([v, v, v])
        });
        let out = ImagePreprocessor::new(&spec()).preprocess(&image);
        assert!(out.iter().all(|v| v.abs() < 1e-6), "{out:?}");
    }

    #[test]
    fn garbage_bytes_are_an_error_not_a_panic() {
        let err = ImagePreprocessor::new(&spec()).preprocess_bytes(b"not an image");
        assert!(err.is_err());
        let png_header_only = [0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a, 0, 0];
        assert!(ImagePreprocessor::decode(&png_header_only).is_err());
    }

    #[test]
    fn a_huge_declared_size_is_refused() {
        let mut png = Vec::new();
        RgbImage::from_pixel(1, 1, image::Rgb([0, 0, 0]))
            .write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        // Declare 100000 x 100000 pixels in the header (IHDR width and height): the
        // decoder must refuse it without trying to allocate.
        png[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        png[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        assert!(ImagePreprocessor::decode(&png).is_err());
    }

    #[test]
    fn raw_rgb_size_is_checked() {
        assert!(ImagePreprocessor::from_raw_rgb(2, 2, vec![0; 11]).is_err());
        assert!(ImagePreprocessor::from_raw_rgb(2, 2, vec![0; 12]).is_ok());
        assert!(ImagePreprocessor::from_raw_rgb(0, 2, vec![]).is_err());
    }
}
