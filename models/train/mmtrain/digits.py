"""Camera-like frames of a handwritten or printed digit, or of no digit at all.

Handwriting comes from the 8x8 digits set scikit-learn ships, upscaled; its last 20%
(DIGITS_EVAL_FROM on) is kept for evaluation (the set has no writer labels, and its
rows are grouped by writer, so a tail split keeps most writers apart). Printed
digits use Debian's DejaVu, Liberation and FreeFont faces; HELD_OUT_FONTS are for
evaluation only.
"""

import glob
import io
import math
import os
import random

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

FONT_DIRS = ["/usr/share/fonts/truetype/dejavu", "/usr/share/fonts/truetype/liberation",
             "/usr/share/fonts/truetype/freefont"]
HELD_OUT_FONTS = ["DejaVuSerifCondensed-Bold.ttf", "LiberationSansNarrow-Regular.ttf",
                  "FreeSerifItalic.ttf", "LiberationMono-Bold.ttf", "DejaVuSans-Oblique.ttf",
                  "FreeSans.ttf"]
DIGITS_EVAL_FROM = 1438


def fonts(held_out: bool) -> list:
    paths = sorted(p for d in FONT_DIRS for p in glob.glob(f"{d}/*.ttf")
                   if "MathTeX" not in p)
    return [p for p in paths if (os.path.basename(p) in HELD_OUT_FONTS) == held_out]


_DIGITS = None


def handwriting(held_out: bool):
    """(images [n, 8, 8] in [0, 1], labels [n])."""
    global _DIGITS
    if _DIGITS is None:
        from sklearn.datasets import load_digits
        d = load_digits()
        _DIGITS = (d.images / 16.0, d.target)
    images, labels = _DIGITS
    sl = slice(DIGITS_EVAL_FROM, None) if held_out else slice(0, DIGITS_EVAL_FROM)
    return images[sl], labels[sl]


def _colour(rng, lo, hi):
    return tuple(rng.randint(lo, hi) for _ in range(3))


def _glyph_mask(rng, digit, held_out, size):
    """An 'L' image of the digit's ink, about `size` pixels tall, with some margin."""
    if rng.random() < 0.6:  # handwriting is the harder half: a little more of it
        images, labels = handwriting(held_out)
        idx = rng.choice(np.flatnonzero(labels == digit))
        src = Image.fromarray((images[idx] * 255).astype(np.uint8), "L")
        w = max(8, int(size * rng.uniform(0.7, 1.1)))
        glyph = src.resize((w, size), rng.choice([Image.BILINEAR, Image.BICUBIC]))
        if rng.random() < 0.5:
            glyph = glyph.filter(ImageFilter.MaxFilter(3))
        return glyph, "hand"
    font = ImageFont.truetype(rng.choice(fonts(held_out)), size)
    text = str(digit)
    box = font.getbbox(text)
    glyph = Image.new("L", (box[2] - box[0] + 4, box[3] - box[1] + 4), 0)
    ImageDraw.Draw(glyph).text((2 - box[0], 2 - box[1]), text, fill=255, font=font)
    r = rng.random()
    if r < 0.25:
        glyph = glyph.filter(ImageFilter.MaxFilter(3))  # bolder
    elif r < 0.4 and size > 40:
        glyph = glyph.filter(ImageFilter.MinFilter(3))  # thinner
    return glyph, "font"


def _shear(rng, glyph):
    """Slant the glyph left or right, as italics and handwriting do."""
    k = rng.uniform(-0.35, 0.35)
    w, h = glyph.size
    pad = int(abs(k) * h) + 2
    wide = Image.new("L", (w + 2 * pad, h), 0)
    wide.paste(glyph, (pad, 0))
    return wide.transform(wide.size, Image.AFFINE, (1, k, -k * h / 2, 0, 1, 0),
                          resample=Image.BILINEAR)


def _clutter(rng, img, n):
    d = ImageDraw.Draw(img)
    w, h = img.size
    for _ in range(n):
        c = _colour(rng, 0, 255)
        x0, y0 = rng.randint(0, w), rng.randint(0, h)
        x1, y1 = x0 + rng.randint(-w // 3, w // 3), y0 + rng.randint(-h // 3, h // 3)
        kind = rng.random()
        box = [min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)]
        if kind < 0.4:
            d.line([x0, y0, x1, y1], fill=c, width=rng.randint(1, 3))
        elif kind < 0.7:
            d.ellipse(box, outline=c, width=rng.randint(1, 2))
        else:
            d.rectangle(box, fill=c if rng.random() < 0.5 else None, outline=c)


def render_frame(rng: random.Random, digit, held_out: bool, size=None):
    """An RGB uint8 frame (H, W, 3) showing `digit` (None: no digit) and its source."""
    if size is None:
        w = rng.randint(64, 176)
        h = int(w * rng.choice([1.0, 0.75, 1.25, 0.5625]))
    else:
        w, h = size
    # Background: a flat or graded colour, lit unevenly.
    bg = np.array(_colour(rng, 0, 255), np.float64)
    grad = np.linspace(rng.uniform(0.7, 1.0), rng.uniform(0.7, 1.3), w)[None, :, None]
    frame = np.clip(bg[None, None] * grad * np.ones((h, 1, 1)), 0, 255)
    img = Image.fromarray(frame.astype(np.uint8), "RGB")
    if rng.random() < 0.5:
        _clutter(rng, img, rng.randint(1, 4))
    source = "none"
    if digit is not None:
        glyph, source = _glyph_mask(rng, digit, held_out, int(min(w, h) * rng.uniform(0.5, 0.85)))
        if rng.random() < 0.5:
            glyph = _shear(rng, glyph)
        glyph = glyph.rotate(rng.uniform(-15, 15), resample=Image.BILINEAR, expand=True)
        bbox = glyph.getbbox()
        if bbox:
            glyph = glyph.crop(bbox)
        if glyph.height > h or glyph.width > w:
            s = min(h / glyph.height, w / glyph.width)
            glyph = glyph.resize((max(1, int(glyph.width * s)), max(1, int(glyph.height * s))))
        # Ink contrasts with the background behind it.
        lum = bg.mean()
        ink = _colour(rng, 0, 90) if lum > 127 else _colour(rng, 165, 255)
        x = rng.randint(0, w - glyph.width)
        y = rng.randint(0, h - glyph.height)
        img.paste(Image.new("RGB", glyph.size, ink), (x, y), glyph)
    if rng.random() < 0.3:
        _clutter(rng, img, rng.randint(1, 2))
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
    arr = np.asarray(img).astype(np.float64)
    arr = arr + np.random.default_rng(rng.randrange(1 << 30)).normal(
        0, rng.uniform(0, 12), arr.shape)
    arr = np.clip(arr, 0, 255).astype(np.uint8)
    if rng.random() < 0.3:
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, "JPEG", quality=rng.randint(40, 90))
        arr = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    return arr, source
