"""A photo or scan of one digit → the 28×28 input an MNIST model expects, made the way MNIST was.

MNIST digits are light strokes on black, scaled to fit a 20×20 box and placed with their centre
of mass at pixel (14, 14). A phone photo is nothing like that: dark ink on unevenly lit paper,
sensor noise, JPEG, an off-centre digit on a large canvas. An image already in MNIST's form (28×28,
light strokes on a ground of exact zeros, the outer ring of pixels empty: 98.9 % of the MNIST
test set) passes through unchanged, as its pixels would come as a tensor (a 28×28 PNG file
opened and decoded in ~0.2 ms instead of ~2 ms). Anything else takes the steps, all in 8-bit
Pillow or on a small NumPy working copy:

1. any mode → 8-bit grayscale, alpha composited onto the background the strokes contrast with;
2. box-reduced to at most ``WORK_SIDE`` pixels a side (no float copy of the full image);
3. polarity: ink is the minority class of Otsu's split of the image once its shading is
   flattened (so chalk on a board and ink on paper both hold under uneven light);
4. the paper's illumination (a gradient, a vignette) fitted as a smooth surface to the paper
   side of each cell and removed, leaving only ink;
5. a threshold: Otsu's, but never below the noise floor;
6. the digit's own connected component(s): the heaviest central one plus nearby heavy parts
   (a ``5``'s bar) and small parts inside its box, not specks, shadows or the paper's edge;
7. a small digit on a large canvas is looked at again at full resolution;
8. MNIST's framing: the strokes' background-free intensity, cropped, fitted to 20×20 and placed
   by centre of mass.

A blank image (nothing stands out of the noise) raises :class:`NoDigit` rather than letting a
model guess at an empty canvas.
"""

from __future__ import annotations

import base64
import functools
import io
import math
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from services.errors import InvalidInput

IMAGE_SIDE = 28
DIGIT_BOX = 20
# Analysis resolution: large enough that a digit a tenth of a 420-pixel canvas keeps ~16 pixels,
# small enough that the NumPy steps cost well under a millisecond.
WORK_SIDE = 160
# The weakest digit accepted: peak contrast, in 8-bit levels, above the paper.
MIN_CONTRAST = 24
# A digit spanning fewer working pixels than this is looked at again at full resolution.
DETAIL = 40
# Working pixels a digit's mask grows into fainter ink around the thresholded strokes.
EDGE = 1
_EXIF_ORIENTATION = 0x0112


class NoDigit(InvalidInput):
    """Nothing in the image stands out from its background."""


def to_gray(image: Image.Image) -> Image.Image:
    """Any Pillow image → mode ``L``, upright (EXIF), alpha composited onto a contrasting ground."""
    if image.getexif().get(_EXIF_ORIENTATION, 1) != 1:
        image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in image.info):
        return _composite(image.convert("LA"))
    if mode.startswith("I") or mode == "F":
        # 16/32-bit and float pixels: stretch their own range onto 0–255 (convert("L") would clip).
        if mode.startswith("I;16"):
            image = image.convert("I")
        low, high = image.getextrema()
        scale = 255.0 / (high - low) if high > low else 0.0
        image = image.point(lambda v: (v - low) * scale)
    return image.convert("L")


def _composite(la: Image.Image) -> Image.Image:
    gray, alpha = la.split()
    a = np.asarray(alpha)
    if a.min() == 255:
        return gray
    opaque = a > 127
    # The strokes are what is opaque: dark strokes go onto white paper, light ones onto black.
    ink = float(np.asarray(gray)[opaque].mean()) if opaque.any() else 0.0
    ground = Image.new("L", la.size, 255 if ink < 128 else 0)
    ground.paste(gray, mask=alpha)
    return ground


def _factor(size: tuple[int, int]) -> int:
    return -(-max(size) // WORK_SIDE)


def _cells(side: int) -> int:
    # About eight cells a side, never smaller than 4 pixels.
    return max(1, min(8, side // 4))


def _cell_quantiles(g: np.ndarray, qs: tuple[float, ...]) -> list[np.ndarray]:
    """Per-cell quantiles of an 8-bit image on a grid of about 8×8 cells (one uint8 sort; every
    other pixel of a larger image is plenty for a quantile)."""
    if min(g.shape) >= 64:
        g = g[::2, ::2]
    h, w = g.shape
    ny, nx = _cells(h), _cells(w)
    ch, cw = h // ny, w // nx
    blocks = np.sort(g[: ny * ch, : nx * cw].reshape(ny, ch, nx, cw).swapaxes(1, 2).reshape(ny, nx, -1))
    last = blocks.shape[-1] - 1
    return [blocks[..., round(q * last)].astype(np.float32) for q in qs]


@functools.cache
def _axis(n: int) -> np.ndarray:
    """Pixel or cell centres along a side of ``n``, in [-0.5, 0.5] (read-only: shared)."""
    axis = (np.arange(n, dtype=np.float32) + 0.5) / n - 0.5
    axis.flags.writeable = False
    return axis


@functools.cache
def _basis(ny: int, nx: int) -> np.ndarray:
    """The quadratic surface's terms at each of ny×nx cell centres (read-only: shared); a tiny
    grid gets one term, a paper level."""
    y, x = (a.ravel() for a in np.meshgrid(_axis(ny), _axis(nx), indexing="ij"))
    terms = 6 if ny * nx >= 16 else 1
    basis = np.stack([np.ones_like(x), x, y, x * x, x * y, y * y], 1)[:, :terms].copy()
    basis.flags.writeable = False
    return basis


def _median(values: np.ndarray) -> Any:
    """``np.median`` of a 1-D array without NaNs, to the bit: its selection, minus its generic
    machinery (~13 µs a call against ~1.5 µs; the digit pipeline takes a dozen per image)."""
    n = values.size
    half = n // 2
    zero = values.dtype.type(0)  # NumPy's mean sums from +0: a -0.0 median comes out +0.0
    if n % 2:
        return zero + np.partition(values, half)[half]
    low, high = np.partition(values, (half - 1, half))[half - 1: half + 1]
    return (zero + low + high) / 2


def _paper(cells: np.ndarray, shape: tuple[int, int], ink: int = 0) -> np.ndarray:
    """The paper's brightness everywhere: a smooth surface (a quadratic, as a gradient or a
    vignette is) fitted to the cells' paper-side values, refitted without the cells that stray.

    ``ink`` says on which side ink lies (+1 lighter, -1 darker, 0 unknown). When it is known,
    only cells on the ink side are dropped, starting from the paper-side half of the cells, so
    a bold digit covering many cells cannot pull the paper towards itself."""
    basis = _basis(*cells.shape)
    terms = basis.shape[1]
    values = cells.ravel()
    toward_ink = values * ink
    keep = toward_ink <= _median(toward_ink) if ink else np.ones(values.shape, bool)
    for _ in range(5):
        fit = basis[keep]
        coef = np.linalg.solve(fit.T @ fit + 1e-6 * np.eye(terms), fit.T @ values[keep])
        residual = values - basis @ coef
        spread = 1.4826 * float(_median(np.abs(residual[keep]))) + 1.0
        inliers = (residual * ink if ink else np.abs(residual)) <= 2.5 * spread
        if inliers.sum() < 2 * terms or (inliers == keep).all():
            break
        keep = inliers
    c0, cx, cy, cxx, cxy, cyy = np.concatenate([coef, np.zeros(6 - terms)]).astype(np.float32)
    # Evaluated separably: a column term, a row term and one outer product.
    y, x = _axis(shape[0])[:, None], _axis(shape[1])[None]
    return (c0 + cy * y + cyy * y * y) + (cx * x + cxx * x * x) + cxy * y * x


def _otsu(values: np.ndarray) -> float:
    hist = np.bincount(np.clip(values, 0, 255).astype(np.int64).ravel(), minlength=256).astype(np.float64)
    levels = np.arange(256)
    w0 = np.cumsum(hist)
    m0 = np.cumsum(hist * levels)
    total, mean = w0[-1], m0[-1]
    w1 = total - w0
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mean * w0 - total * m0) ** 2 / (w0 * w1)
    between[~np.isfinite(between)] = 0
    return float(np.argmax(between)) + 0.5


def ink_map(gray: Image.Image) -> tuple[np.ndarray, float]:
    """Working-resolution float32 map of ink above the paper (0 = paper), light-on-dark or not,
    and the paper's noise level (a standard deviation, in grey levels)."""
    factor = _factor(gray.size)
    g = np.asarray(gray.reduce(factor) if factor > 1 else gray)
    q25, mid, q75 = _cell_quantiles(g, (0.25, 0.5, 0.75))
    # Noise: the typical interquartile range of a cell (most cells are paper), as a std.
    noise = float(_median((q75 - q25).ravel())) / 1.349
    # Ink is the minority of the two classes Otsu's threshold makes of the flattened image.
    flat = np.clip(g - _paper(mid, g.shape) + 128, 0, 255)
    light = float((flat > _otsu(flat)).mean()) < 0.5
    paper = _paper(q25 if light else q75, g.shape, 1 if light else -1)  # each cell's paper side
    return np.maximum(g - paper if light else paper - g, 0), noise


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Horizontal runs of True: row, first column, last column + 1 (row-major order)."""
    padded = np.zeros((mask.shape[0], mask.shape[1] + 2), np.int8)
    padded[:, 1:-1] = mask
    edges = np.diff(padded, axis=1)
    rows, starts = np.nonzero(edges == 1)
    _, ends = np.nonzero(edges == -1)
    return rows, starts, ends


def _label_runs(rows: np.ndarray, starts: np.ndarray, ends: np.ndarray, width: int) -> np.ndarray:
    """8-connected component id of every run: runs of adjacent rows that touch (diagonals
    included) are linked, then ids spread to the smallest along the links."""
    n = len(rows)
    key = width + 2  # row * key + column orders runs exactly as they are ordered
    above = (rows - 1) * key
    # Runs of the row above that touch run i are the contiguous range [lo, hi).
    lo = np.searchsorted(rows * key + ends, above + starts, "left")
    hi = np.searchsorted(rows * key + starts, above + ends, "right")
    counts = np.maximum(hi - lo, 0)
    a = np.repeat(np.arange(n), counts)
    b = np.repeat(lo, counts) + np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    label = np.arange(n)
    for _ in range(n):  # converges in a few rounds; n bounds it
        low = np.minimum(label[a], label[b])
        before = label.copy()
        np.minimum.at(label, a, low)
        np.minimum.at(label, b, low)
        label = label[label]
        if np.array_equal(label, before):
            break
    return label


def _per_part(op: np.ufunc, part: np.ndarray, values: np.ndarray, n: int, start: int) -> np.ndarray:
    out = np.full(n, start)
    op.at(out, part, values)
    return out


def digit_mask(ink: np.ndarray, noise: float) -> np.ndarray | None:
    """The pixels of the digit in an ink map, or None when nothing stands out of the noise."""
    if float(ink.max()) < max(MIN_CONTRAST, 6 * noise):
        return None
    threshold = max(_otsu(ink), 3 * noise + 2)
    rows, starts, ends = _runs(ink > threshold)
    labels = _label_runs(rows, starts, ends, ink.shape[1])
    ids, run_comp = np.unique(labels, return_inverse=True)
    cum = np.concatenate([np.zeros((ink.shape[0], 1), np.float64), ink.cumsum(axis=1, dtype=np.float64)],
                         axis=1)
    run_mass = cum[rows, ends] - cum[rows, starts]
    n = len(ids)
    h, w = ink.shape
    mass = np.bincount(run_comp, run_mass, n)
    top, bottom = _per_part(np.minimum, run_comp, rows, n, h), _per_part(np.maximum, run_comp, rows, n, 0)
    left = _per_part(np.minimum, run_comp, starts, n, w)
    right = _per_part(np.maximum, run_comp, ends - 1, n, 0)
    cy, cx = (top + bottom) / 2 / h - 0.5, (left + right) / 2 / w - 0.5
    # Prefer heavy, central parts; a part spanning the whole frame is a shadow or a paper edge.
    spans = ((bottom - top + 1) > 0.95 * h) | ((right - left + 1) > 0.95 * w)
    score = mass * (1 - np.hypot(cy, cx)) * np.where(spans & (n > 1), 0.2, 1.0)
    main = int(np.argmax(score))
    size = max(bottom[main] - top[main], right[main] - left[main]) + 1
    near = ((top <= bottom[main] + size // 2) & (bottom >= top[main] - size // 2)
            & (left <= right[main] + size // 2) & (right >= left[main] - size // 2))
    inside = ((top >= top[main]) & (bottom <= bottom[main]) & (left >= left[main])
              & (right <= right[main]))
    # Heavy parts nearby (a 5's bar) and small ones within the digit's box (a broken stroke).
    keep = ((near & (mass >= 0.08 * mass[main])) | (inside & (mass >= 0.01 * mass[main]))) \
        & ~(spans & (np.arange(n) != main))
    keep[main] = True
    kept = keep[run_comp]
    edges = np.zeros((h, w + 1), np.int32)  # +1 where a kept run starts, -1 past its end
    np.add.at(edges, (rows[kept], starts[kept]), 1)
    np.add.at(edges, (rows[kept], ends[kept]), -1)
    mask = edges.cumsum(axis=1)[:, :w] > 0
    # The strokes' soft (anti-aliased, blurred) edges: grow into faint ink, never into noise.
    faint = ink > 3 * noise + 1
    for _ in range(EDGE):
        mask = _dilate(mask) & faint
    return mask


def _dilate(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    grown = out.copy()
    out[:, 1:] |= grown[:, :-1]
    out[:, :-1] |= grown[:, 1:]
    return out


def frame(ink: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """MNIST framing of the masked ink: fit 20×20 (aspect kept), centre of mass at (14, 14)."""
    strokes = np.where(mask, ink, 0)
    rows, cols = np.flatnonzero(strokes.any(1)), np.flatnonzero(strokes.any(0))
    crop = strokes[rows[0]: rows[-1] + 1, cols[0]: cols[-1] + 1]
    # Stroke cores at full intensity, as MNIST's are: scale by the bright end of the strokes.
    values = crop[crop > 0]
    k = int(0.9 * (values.size - 1))
    crop = np.minimum(crop / np.partition(values, k)[k], 1).astype(np.float32)
    h, w = crop.shape
    scale = DIGIT_BOX / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    digit = np.clip(np.asarray(Image.fromarray(crop, "F").resize(size, Image.Resampling.LANCZOS)), 0, 1)
    weights = digit.astype(np.float64)
    total = weights.sum()
    com_y = float(weights.sum(1) @ np.arange(size[1])) / total
    com_x = float(weights.sum(0) @ np.arange(size[0])) / total
    top = _clamp(_round(IMAGE_SIDE / 2 - com_y), IMAGE_SIDE - size[1])
    left = _clamp(_round(IMAGE_SIDE / 2 - com_x), IMAGE_SIDE - size[0])
    canvas = np.zeros((IMAGE_SIDE, IMAGE_SIDE), np.float32)
    canvas[top: top + size[1], left: left + size[0]] = digit
    return canvas


def _round(value: float) -> int:
    # Half up, with a margin: an MNIST digit's own centre of mass often sits exactly on a half
    # pixel, and rounding must not flip on float noise between equivalent inputs.
    return math.floor(value + 0.5 + 1e-6)


def _clamp(value: int, high: int) -> int:
    return min(max(value, 0), high)


def already_mnist(gray: Image.Image) -> np.ndarray | None:
    """A grayscale image already in MNIST's form — 28×28, its outer ring of pixels exactly 0 (a
    black ground: no photo, scan or JPEG has one), strokes standing out by ``MIN_CONTRAST`` — as
    [28, 28] in [0, 1], scaled exactly as the tensor path scales 0–255 pixels
    (``codecs.normalize_pixels``); None for anything else, which the photo steps read. Framing
    such an image again would only blur it (issue 15: a 28×28 PNG upload took ~2 ms of decoding)."""
    if gray.size != (IMAGE_SIDE, IMAGE_SIDE):
        return None
    pixels = np.asarray(gray)
    if (pixels[0].any() or pixels[-1].any() or pixels[:, 0].any() or pixels[:, -1].any()
            or pixels.max() < MIN_CONTRAST):
        return None
    return np.multiply(pixels, np.float32(1 / 255), dtype=np.float32)


def mnist_digit(image: Image.Image) -> np.ndarray:
    """Any image of one digit → float32 [1, 28, 28] in [0, 1]: a light digit on black, MNIST-style.

    Raises :class:`NoDigit` (a 400) when the image is blank.
    """
    gray = to_gray(image)
    same = already_mnist(gray)
    if same is not None:
        return same[None]
    ink, noise = ink_map(gray)
    mask = digit_mask(ink, noise)
    if mask is None:
        raise NoDigit(f"no digit found: nothing in the image stands out from its background by "
                      f"{MIN_CONTRAST} grey levels or more", field="image")
    factor = _factor(gray.size)
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    span = max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1
    if factor > 1 and span < DETAIL:
        # A small digit on a large canvas: look again at full resolution, around it only.
        margin = span // 2 + 2
        box = (max(0, (cols[0] - margin) * factor), max(0, (rows[0] - margin) * factor),
               min(gray.width, (cols[-1] + 1 + margin) * factor),
               min(gray.height, (rows[-1] + 1 + margin) * factor))
        detail_ink, detail_noise = ink_map(gray.crop(box))
        detail = digit_mask(detail_ink, detail_noise)
        if detail is not None:
            ink, mask = detail_ink, detail
    return frame(ink, mask)[None]


def preview_png(digit: np.ndarray) -> str:
    """A [28, 28] (or [1, 28, 28]) input in [0, 1] → base64 PNG (mode L): what the model saw."""
    pixels = np.clip(np.rint(np.asarray(digit, np.float32).reshape(IMAGE_SIDE, IMAGE_SIDE) * 255), 0, 255)
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8), "L").save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")
