"""The photo evaluation set: digits as people upload them, generated reproducibly from a seed.

Each image is one digit written or printed on paper and photographed: unevenly lit paper (a
gradient and a vignette), sensor noise, slight blur, JPEG, an off-centre digit rotated up to
±12°, canvases from 48 to 420 pixels, saved as RGB, L or RGBA, and a fifth of them light strokes
on a dark ground (chalk on a board). The digits come from three sources, in turn:

- ``font``: the DejaVu fonts of Debian's ``fonts-dejavu-core`` (skipped with a warning when the
  fonts are missing: ``apt-get install -y fonts-dejavu-core``);
- ``stroke``: hand-drawn-like pen strokes (jittered polylines, random slant and width);
- ``hand``: real handwriting — MNIST *test* digits — printed large on the paper.

Alongside every photo the set keeps the clean glyph (its ink coverage before the camera), so the
preprocessing can be checked without a model. Only Pillow and NumPy are needed.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

SEED = 20261130
SET_SIZE = 300
FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
FONTS = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf",
         "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf")
GLYPH = 160  # pixels: the height glyphs are drawn at before the camera shrinks them


@dataclass(frozen=True)
class Photo:
    index: int
    label: int
    source: str  # font | stroke | hand
    data: bytes  # the encoded file, as uploaded
    side: int  # canvas pixels
    light_on_dark: bool
    glyph: np.ndarray  # clean ink coverage in [0, 1], upright-rotated like the photo


def _arc(cx: float, cy: float, rx: float, ry: float, t0: float, t1: float) -> list[tuple[float, float]]:
    steps = max(4, int(abs(t1 - t0) / 12))
    return [(cx + rx * math.cos(math.radians(t)), cy + ry * math.sin(math.radians(t)))
            for t in np.linspace(t0, t1, steps)]


# Pen strokes per digit in a unit box (x right, y down), each a polyline.
STROKES: dict[int, list[list[tuple[float, float]]]] = {
    0: [_arc(0.5, 0.5, 0.3, 0.45, 0, 360)],
    1: [[(0.32, 0.22), (0.52, 0.05), (0.52, 0.95)]],
    2: [_arc(0.5, 0.3, 0.28, 0.25, 200, 375) + [(0.2, 0.95), (0.82, 0.95)]],
    3: [_arc(0.48, 0.28, 0.25, 0.22, -160, 90), _arc(0.48, 0.72, 0.28, 0.24, -90, 160)],
    4: [[(0.65, 0.95), (0.65, 0.05), (0.15, 0.65), (0.85, 0.65)]],
    5: [[(0.78, 0.05), (0.3, 0.05), (0.27, 0.45)] + _arc(0.5, 0.68, 0.28, 0.26, -130, 150)],
    6: [[(0.72, 0.05), (0.45, 0.2), (0.28, 0.45), (0.23, 0.7)] + _arc(0.5, 0.72, 0.27, 0.23, 180, 540)],
    7: [[(0.15, 0.05), (0.85, 0.05), (0.4, 0.95)]],
    8: [_arc(0.5, 0.27, 0.22, 0.21, 90, 450), _arc(0.5, 0.72, 0.27, 0.24, -90, 270)],
    9: [_arc(0.5, 0.3, 0.27, 0.24, 0, 360), [(0.77, 0.3), (0.7, 0.95)]],
}


def fonts() -> list[Path]:
    found = [FONT_DIR / f for f in FONTS if (FONT_DIR / f).is_file()]
    if not found:
        warnings.warn(f"no DejaVu fonts in {FONT_DIR}: the set has no font-rendered digits "
                      f"(apt-get install -y fonts-dejavu-core)", stacklevel=2)
    return found


def _font_glyph(label: int, font: Path) -> np.ndarray:
    face = ImageFont.truetype(str(font), GLYPH)
    canvas = Image.new("L", (GLYPH * 2, GLYPH * 2), 0)
    ImageDraw.Draw(canvas).text((GLYPH // 2, GLYPH // 4), str(label), fill=255, font=face)
    return np.asarray(canvas, np.float32) / 255


def _stroke_glyph(label: int, rng: np.random.Generator) -> np.ndarray:
    canvas = Image.new("L", (GLYPH * 2, GLYPH * 2), 0)
    draw = ImageDraw.Draw(canvas)
    width = int(GLYPH * rng.uniform(0.07, 0.14))
    aspect, shear = rng.uniform(0.75, 1.15), rng.uniform(-0.2, 0.2)
    for line in STROKES[label]:
        pts = np.asarray(line) + rng.normal(0, 0.025, (len(line), 2))
        xy = [(GLYPH * (0.5 + aspect * (x + shear * (0.5 - y))), GLYPH * (0.5 + y)) for x, y in pts]
        draw.line(xy, fill=255, width=width, joint="curve")
        r = width / 2
        for x, y in (xy[0], xy[-1]):  # round pen ends
            draw.ellipse((x - r, y - r, x + r, y + r), fill=255)
    return np.asarray(canvas, np.float32) / 255


def _hand_glyph(label: int, rng: np.random.Generator, mnist: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    images, labels = mnist
    digit = images[rng.choice(np.flatnonzero(labels == label))]
    big = Image.fromarray(digit).resize((GLYPH, GLYPH), Image.Resampling.BICUBIC)
    canvas = Image.new("L", (GLYPH * 2, GLYPH * 2), 0)
    canvas.paste(big, (GLYPH // 2, GLYPH // 2))
    return np.asarray(canvas, np.float32) / 255


def _crop(coverage: np.ndarray) -> np.ndarray:
    rows, cols = np.flatnonzero(coverage.max(1) > 0.05), np.flatnonzero(coverage.max(0) > 0.05)
    return coverage[rows[0]: rows[-1] + 1, cols[0]: cols[-1] + 1]


def _photograph(glyph: np.ndarray, label: int, rng: np.random.Generator, index: int, source: str,
                light_on_dark: bool) -> Photo:
    side = int(rng.integers(48, 421))
    height = side * rng.uniform(0.35, 0.8)
    gh, gw = glyph.shape
    scale = height / gh
    size = (max(2, round(gw * scale)), max(2, round(gh * scale)))
    ink = np.asarray(Image.fromarray(glyph, "F").resize(size, Image.Resampling.BILINEAR)).clip(0, 1)
    cov = np.zeros((side, side), np.float32)
    # Off-centre: anywhere the digit fits, sometimes grazing an edge.
    top = int(rng.integers(0, max(1, side - size[1] + 1)))
    left = int(rng.integers(0, max(1, side - size[0] + 1)))
    h, w = min(size[1], side - top), min(size[0], side - left)
    cov[top: top + h, left: left + w] = ink[:h, :w]
    if light_on_dark:
        paper, pen = rng.uniform(20, 90), rng.uniform(150, 240)
    else:
        paper, pen = rng.uniform(150, 245), rng.uniform(5, 90)
    yy, xx = np.mgrid[0:side, 0:side] / side - 0.5
    angle = rng.uniform(0, 2 * math.pi)
    light = (1 + rng.uniform(0, 0.35) * (xx * math.cos(angle) + yy * math.sin(angle))
             - rng.uniform(0, 0.35) * (xx ** 2 + yy ** 2))
    gray = (paper + (pen - paper) * cov) * light
    image = Image.fromarray(gray.clip(0, 255).astype(np.uint8), "L")
    blur = rng.uniform(0, 1.2) * side / 200
    if blur > 0.3:
        image = image.filter(ImageFilter.GaussianBlur(blur))
    mode = str(rng.choice(["RGB", "RGB", "L", "RGBA", "RGB"]))
    pixels = np.asarray(image, np.float32)
    if mode == "L":
        pixels = pixels[..., None]
    else:
        tint = rng.uniform(0.85, 1.0, 3)  # yellowish paper, bluish ink, a warm lamp
        pixels = pixels[..., None] * tint / tint.max()
    pixels = (pixels + rng.normal(0, rng.uniform(2, 10), pixels.shape)).clip(0, 255).astype(np.uint8)
    if mode == "RGBA":
        pixels = np.concatenate([pixels, np.full((side, side, 1), 255, np.uint8)], axis=2)
    out = Image.fromarray(pixels[..., 0] if mode == "L" else pixels, mode)
    fmt = "PNG" if mode == "RGBA" or rng.random() < 0.4 else "JPEG"
    buf = io.BytesIO()
    out.save(buf, fmt, **({"quality": int(rng.integers(50, 93))} if fmt == "JPEG" else {}))
    return Photo(index, label, source, buf.getvalue(), side, light_on_dark, glyph)


def photo_set(count: int = SET_SIZE, seed: int = SEED,
              mnist_test: tuple[np.ndarray, np.ndarray] | None = None) -> Iterator[Photo]:
    """The evaluation photos, in order; the same ``seed`` and ``count`` give the same files.

    ``mnist_test`` (images, labels) supplies the handwriting; without it that source is skipped.
    """
    faces = fonts()
    sources = ["font"] * bool(faces) + ["stroke"] + ["hand"] * (mnist_test is not None)
    for index in range(count):
        rng = np.random.default_rng([seed, index])
        label, source = index % 10, sources[(index // 10) % len(sources)]
        if source == "font":
            glyph = _font_glyph(label, faces[int(rng.integers(len(faces)))])
        elif source == "stroke":
            glyph = _stroke_glyph(label, rng)
        else:
            glyph = _hand_glyph(label, rng, mnist_test)
        tilt = rng.uniform(-12, 12)
        glyph = np.asarray(Image.fromarray(glyph, "F").rotate(tilt, Image.Resampling.BILINEAR))
        yield _photograph(_crop(glyph), label, rng, index, source, rng.random() < 0.2)
