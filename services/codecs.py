"""Decoding and validation at the edge: request bodies → checked NumPy arrays, or a clear 4xx.

The model kinds (``services.kinds``) call these; nothing here knows a model name.

- tabular rows (named fields or lists, in the order of the model's features);
- image tensors from JSON (``[N,C,H,W]``; with one channel also ``[N,H,W]`` and ``[N,H*W]``;
  floats in [0, 1] or 0–255 integers) and from ``.npy`` bodies (read without pickle and without
  allocating what the header declares);
- images of any format, size and mode: turned into MNIST-looking digits by ``services.digits``
  (photos of digits on paper included), or resized to a model's own H×W and channels.
"""

from __future__ import annotations

import functools
import io
import math
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import simdjson
from PIL import Image, UnidentifiedImageError

from models.catalog import DIABETES_FEATURES
from services import digits
from services.batcher import Deferred
from services.errors import InvalidInput, PayloadTooLarge, clip

IMAGE_SIDE = digits.IMAGE_SIDE
MNIST_SHAPE = (1, IMAGE_SIDE, IMAGE_SIDE)  # channels, height, width of one MNIST input


# ------------------------------------------------------------------------------------ tabular

def decode_rows(rows: Any, max_items: int,
                features: Sequence[str] = DIABETES_FEATURES) -> np.ndarray:
    """``rows``: a list of {feature: number} objects or of number lists → float32 [N, features]."""
    if not isinstance(rows, list):
        raise InvalidInput("'rows' must be a list of rows", field="rows")
    if not rows:
        raise InvalidInput("empty batch: 'rows' has no rows", field="rows")
    if len(rows) > max_items:
        raise PayloadTooLarge(f"{len(rows)} rows in one request; the limit is {max_items}",
                              field="rows")
    out = np.empty((len(rows), len(features)), dtype=np.float32)
    for i, row in enumerate(rows):
        if isinstance(row, dict):
            missing = [f for f in features if f not in row]
            extra = [k for k in row if k not in features]
            if missing or extra:
                problem = f"missing {missing}" if missing else f"unknown {extra}"
                raise InvalidInput(f"row {i}: {problem}; the fields are {list(features)}",
                                   field=f"rows[{i}]")
            values: Sequence[Any] = [row[f] for f in features]
        elif isinstance(row, list):
            if len(row) != len(features):
                raise InvalidInput(f"row {i} has {len(row)} values; expected "
                                   f"{len(features)}: {list(features)}",
                                   field=f"rows[{i}]")
            values = row
        else:
            raise InvalidInput(f"row {i} must be an object of named features or a list of "
                               f"{len(features)} numbers", field=f"rows[{i}]")
        for j, value in enumerate(values):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidInput(f"row {i}: {features[j]} must be a number, got "
                                   f"{type(value).__name__}", field=f"rows[{i}].{features[j]}")
            if not math.isfinite(value):
                raise InvalidInput(f"row {i}: {features[j]} is not finite",
                                   field=f"rows[{i}].{features[j]}")
            out[i, j] = value
    return out


# ------------------------------------------------------------------------------------ tensors

def image_shapes(shape: tuple[int, int, int]) -> list[tuple[int, ...]]:
    """The item shapes accepted for images of ``shape`` (C, H, W): [C,H,W]; with one channel
    also [H,W] and [H*W]."""
    channels, height, width = shape
    return [shape, (height, width), (height * width,)] if channels == 1 else [shape]


def as_image_batch(array: np.ndarray, field: str, max_items: int,
                   shape: tuple[int, int, int] = MNIST_SHAPE) -> np.ndarray:
    """``array`` as an [N, C, H, W] batch of images of ``shape`` (C, H, W), within the item limit."""
    accepted = image_shapes(shape)
    if array.ndim >= 2 and array.shape[1:] in accepted:
        batch = array.reshape(-1, *shape)
    else:
        send = ", ".join(str(list((-1, *s))).replace("-1", "N").replace(" ", "") for s in accepted)
        raise InvalidInput(f"shape {list(array.shape)} is not a batch of {'×'.join(map(str, shape))} "
                           f"images; send {send}", field=field)
    if batch.shape[0] == 0:
        raise InvalidInput("empty batch: no images", field=field)
    check_image_count(batch.shape[0], max_items, field)
    return batch


def check_image_count(count: int, max_items: int, field: str) -> None:
    """413 for more than ``max_items`` images in one request."""
    if count > max_items:
        raise PayloadTooLarge(f"{count} images in one request; the limit is {max_items}",
                              field=field)


# Native float dtype → (the unsigned integer of its size, the bits of 1.0): for non-negative
# floats the bits order as the values do.
_ONE_BITS = {np.dtype(np.float32): (np.uint32, 0x3F800000),
             np.dtype(np.float64): (np.uint64, 0x3FF0000000000000)}


def normalize_pixels(batch: np.ndarray, field: str, out: np.ndarray | None = None) -> np.ndarray:
    """uint8 / integer 0–255 → /255; floats must already be in [0, 1]. Returns float32: ``out``
    (a float32 array of ``batch``'s shape) when given, written in place, else a new array (or
    ``batch`` itself when it is float32 already).

    Few passes over the pixels (a 1,024-image ``.npy`` batch is 800k of them): uint8 needs no
    range check, integers become float32 in one multiply, and a float batch is checked by its
    min and max alone — NaN makes both NaN and infinities fall outside [0, 1], so the pass that
    tells them apart runs only when the batch is refused."""
    check_pixel_dtype(batch, field)
    if batch.dtype.kind in "ui":
        if batch.dtype != np.uint8 and batch.size and (batch.min() < 0 or batch.max() > 255):
            raise InvalidInput("integer pixels must be in 0–255", field=field)
        return np.multiply(batch, np.float32(1 / 255), dtype=np.float32, out=out)
    ones = _ONE_BITS.get(batch.dtype)
    if ones is not None and batch.size and batch.view(ones[0]).max() <= ones[1]:
        # Every pixel's bits at most 1.0's: each is in [+0, 1] (a sign bit, NaN or infinity has
        # more), so one pass decides, and the cast to float32 cannot overflow. Anything else —
        # -0.0 included — takes the checks below, which decide as they always did.
        return _as_float32(batch, out)
    with np.errstate(over="ignore"):  # a float64 past float32's range becomes inf: refused next
        cast = _as_float32(batch, out)
    if cast.size and not (cast.min() >= 0.0 and cast.max() <= 1.0):
        if not np.isfinite(cast).all():
            raise InvalidInput("pixels contain NaN or infinity", field=field)
        raise InvalidInput("float pixels must be in [0, 1]; send integers for 0–255", field=field)
    return cast


def check_pixel_dtype(batch: np.ndarray, field: str) -> None:
    """400 unless ``batch`` holds numbers (integers or floats; not booleans)."""
    if batch.dtype == np.bool_ or batch.dtype.kind not in "uif":
        raise InvalidInput(f"pixels must be numbers, got dtype {batch.dtype}", field=field)


def _as_float32(batch: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    """``batch.astype(np.float32, copy=False)``, into ``out`` when given (the same rounding)."""
    if out is None:
        return batch.astype(np.float32, copy=False)
    np.copyto(out, batch, casting="same_kind")
    return out


def checked_images(array: np.ndarray, field: str, max_items: int,
                   shape: tuple[int, int, int] = MNIST_SHAPE) -> np.ndarray:
    """Decoded pixels as the model's float32 [N, C, H, W] batch: the shape, the item limit and
    the pixels' range checked (``as_image_batch``, ``normalize_pixels``)."""
    return normalize_pixels(as_image_batch(array, field, max_items, shape), field)


# -- JSON images without a Python object per pixel (issue 15) ------------------------------------
# orjson builds a Python float or int per pixel and ``np.asarray`` walks them again: ~40 µs of a
# one-image request's event-loop time, most of what the bare parse ceiling does. A body of the
# plain form — one key, "instances" or "inputs", whose value is a batch of images of an
# accepted item shape, nothing but numbers — is parsed by simdjson (a validating parser) into
# one flat buffer instead, and gives exactly the array ``np.asarray`` would have given. The form
# is checked on the body's bytes first: with every byte a JSON number or whitespace may hold
# deleted, what is left must be the key and the brackets and commas of N items of one accepted
# shape (so no string, null, boolean, other key or ragged row can be inside, and the shape is
# known), and the int-vs-float meaning follows NumPy's: all integer tokens (no ``.``, ``e`` or
# ``E``) → int64, else float64. Anything else — and any body simdjson refuses, a number outside
# int64 or double included — returns None: the orjson path decides it and names its problem.
JSON_FAST_MAX_BYTES = 1 << 20  # larger bodies take orjson (the parser keeps a buffer its size)
_NUMBER_BYTES = b"0123456789.eE+- \t\r\n"
_JSON_FAST_KEYS = {b'{"instancs":[': ("instances", 1), b'{"inputs":[': ("inputs", 0)}  # 'e's gone
_parsers = threading.local()


@functools.cache
def _item_skeletons(shape: tuple[int, int, int]) -> tuple[tuple[tuple[int, ...], bytes], ...]:
    """Per accepted item shape, the brackets and commas of one item and the comma after it."""
    def skeleton(dims: tuple[int, ...]) -> bytes:
        inner = skeleton(dims[1:]) if len(dims) > 1 else b""
        return b"[" + b",".join([inner] * dims[0]) + b"]"
    return tuple((item, skeleton(item) + b",") for item in image_shapes(shape))


# Skeletons (a body's bytes less its numbers) read before, per image shape → their form (or
# None): the usual request — one image, the same shape as the last — is one dict lookup on its
# skeleton instead of the reading below (~150 bytecodes and a copy or two of the skeleton,
# issue 15). Only short skeletons (a few images) are kept, at most ``_FORMS_MAX`` per shape;
# when full, the cache starts over.
_FORMS_MAX = 256
_FORM_SKELETON_MAX = 4096  # bytes: 256 × 4 KiB at most held
_forms: dict[tuple[int, int, int], dict[bytes, tuple[str, int, tuple[int, ...], int] | None]] = {}


def _plain_form(body: Any, shape: tuple[int, int, int]
                ) -> tuple[str, int, tuple[int, ...], bool] | None:
    """A plain JSON image body's key, item count, item shape and whether its numbers are floats,
    read from its bytes alone (above); None for any other body."""
    if not isinstance(body, (bytes, bytearray)) or len(body) > JSON_FAST_MAX_BYTES:
        return None  # (uvicorn hands a body over as a bytearray)
    rest = body.translate(None, _NUMBER_BYTES)
    if len(rest) > _FORM_SKELETON_MAX:
        form = _skeleton_form(rest, shape)
    else:
        rest = bytes(rest)
        seen = _forms.get(shape)
        if seen is None:
            seen = _forms[shape] = {}
        try:
            form = seen[rest]
        except KeyError:
            if len(seen) >= _FORMS_MAX:
                seen.clear()
            form = seen[rest] = _skeleton_form(rest, shape)
    if form is None:
        return None
    key, count, accepted, key_es = form
    return key, count, accepted, b"." in body or b"E" in body or body.count(b"e") > key_es


def _skeleton_form(rest: bytes | bytearray, shape: tuple[int, int, int]
                   ) -> tuple[str, int, tuple[int, ...], int] | None:
    """A body's skeleton (its bytes less every number byte) → its key, item count, item shape
    and the ``e``s of its key, if it has the plain form; else None."""
    head = bytes(rest[:rest.find(b"[") + 1])
    found = _JSON_FAST_KEYS.get(head)
    if found is None or rest[-2:] != b"]}":
        return None
    key, key_es = found
    items = rest[len(head):-2] + b","  # N × (one item's skeleton + ",")
    for accepted, unit in _item_skeletons(shape):
        count, left = divmod(len(items), len(unit))
        if not left and count and items == unit * count:
            return key, count, accepted, key_es
    return None


def _parse_plain(body: bytes | bytearray, key: str, count: int, item: tuple[int, ...],
                 floats: bool) -> np.ndarray | None:
    """A plain body's pixels as [count, *item] int64 or float64 (simdjson's flat buffer); None
    when simdjson refuses it (an invalid number, one out of range)."""
    parser = getattr(_parsers, "parser", None)
    if parser is None:
        parser = _parsers.parser = simdjson.Parser()
    try:
        flat = parser.parse(body)[key].as_buffer(of_type="d" if floats else "i")
    except (ValueError, KeyError, TypeError):  # invalid JSON, another key, a number out of range
        return None
    except RuntimeError:  # a document of this parser still referenced (none is kept): a new one
        _parsers.parser = simdjson.Parser()
        return None
    array = np.frombuffer(flat, np.float64 if floats else np.int64)
    if array.size != count * math.prod(item):
        return None
    return array.reshape(count, *item)


def json_images_fast(body: bytes, shape: tuple[int, int, int] = MNIST_SHAPE
                     ) -> tuple[str, np.ndarray] | None:
    """A plain JSON image body (above) → its key and its pixels as [N, *item] int64 or float64,
    as ``np.asarray`` of orjson's lists would be; None for any other body."""
    form = _plain_form(body, shape)
    if form is None:
        return None
    array = _parse_plain(body, *form)
    return None if array is None else (form[0], array)


class JsonImages(Deferred):
    """A plain JSON image body whose pixels are parsed when its batch forms (``Deferred``).

    ``of`` reads the body's form from its bytes at the request (the key, the item shape, the
    item count and limit) — no pixel is parsed. ``fill`` then parses and checks the pixels
    straight into the batch's own float32 array: one request after another in one tight loop,
    where each request's task parsed its own body between everything else it ran, and no
    float32 copy per request for the batch to concatenate (issue 15: in process ~15 % less CPU
    a request, live ~5 %; results/bench/NOTES.md). The pixels and every refusal are exactly
    the eager path's (``json_images_fast`` then ``checked_images``); a body simdjson refuses
    gets the ``fallback``'s array or error."""

    __slots__ = ("body", "field", "count", "item", "floats", "fallback", "shape", "size")
    dtype = np.dtype(np.float32)

    def __init__(self, body: bytes | bytearray, field: str, count: int, item: tuple[int, ...],
                 floats: bool, shape: tuple[int, int, int],
                 fallback: Callable[[], np.ndarray]) -> None:
        self.body, self.field, self.count, self.item, self.floats = body, field, count, item, floats
        self.fallback = fallback
        self.shape = (count, *shape)
        self.size = count * math.prod(shape)

    @classmethod
    def of(cls, body: Any, shape: tuple[int, int, int], max_items: int,
           fallback: Callable[[], np.ndarray]) -> JsonImages | None:
        """``body`` deferred if it has the plain form (None: decode it now), the item limit
        checked now (``as_image_batch``'s 413). ``fallback``: the eager decoding of the body,
        [N, *shape] float32 pixels or its error, for a body simdjson refuses."""
        form = _plain_form(body, shape)
        if form is None:
            return None
        key, count, item, floats = form
        check_image_count(count, max_items, key)
        return cls(body, key, count, item, floats, shape, fallback)

    def fill(self, out: np.ndarray) -> None:
        array = _parse_plain(self.body, self.field, self.count, self.item, self.floats)
        if array is None:  # the orjson path decides: its pixels or its refusal
            out[...] = self.fallback()
            return
        normalize_pixels(array.reshape(self.shape), self.field, out=out)


class PixelsLater(Deferred):
    """An image batch already decoded (an OIP binary tensor: [N, C, H, W], any accepted dtype)
    whose pixels are checked and made float32 when its batch forms, written straight into the
    batch's own array — as a plain JSON body's (``JsonImages``): no float32 copy per request for
    the batch to concatenate, and the checks of a batch's requests run one after another
    (issue 15: OIP binary no slower than /v1 JSON). The pixels and every refusal are
    ``normalize_pixels``'s."""

    __slots__ = ("batch", "field", "shape", "size")
    dtype = np.dtype(np.float32)

    def __init__(self, batch: np.ndarray, field: str) -> None:
        check_pixel_dtype(batch, field)  # refused now, as eagerly
        self.batch, self.field, self.shape, self.size = batch, field, batch.shape, batch.size

    def fill(self, out: np.ndarray) -> None:
        normalize_pixels(self.batch, self.field, out=out)

    def array(self) -> np.ndarray:
        """Alone in its batch: the pixels as ``normalize_pixels`` returns them (float32 ones
        themselves, no copy)."""
        return normalize_pixels(self.batch, self.field)


def decode_json_images(value: Any, max_items: int, field: str = "instances",
                       shape: tuple[int, int, int] = MNIST_SHAPE) -> np.ndarray:
    if not isinstance(value, list):
        raise InvalidInput(f"'{field}' must be a nested list of pixels", field=field)
    if not value:
        raise InvalidInput("empty batch: no images", field=field)
    try:
        array = np.asarray(value)
    except ValueError:
        raise InvalidInput("ragged tensor: every image must have the same shape", field=field) \
            from None
    if array.dtype == object or array.dtype.kind not in "uifb":
        raise InvalidInput("pixels must all be numbers, in nested lists of one shape", field=field)
    return checked_images(array, field, max_items, shape)


_NPY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
_NPY_MAGIC = b"\x93NUMPY"
# Parsed .npy headers by their exact bytes (magic, version, length, text): NumPy parses the text
# with ``ast.literal_eval``, ~20 µs a request, and a client sends the same few headers again and
# again (issue 15). Bounded: once full, a new header is parsed and not kept.
NPY_HEADER_CACHE_MAX = 256
_npy_headers: dict[bytes, tuple[tuple[int, ...], bool, np.dtype, int]] = {}


def _npy_header_bytes(body: bytes) -> bytes | None:
    """The header of a version 1.0 or 2.0 ``.npy`` body as bytes (the cache's key), or None."""
    if len(body) < 12 or body[:6] != _NPY_MAGIC:
        return None
    if body[6:8] == b"\x01\x00":
        end = 10 + int.from_bytes(body[8:10], "little")
    elif body[6:8] == b"\x02\x00":
        end = 12 + int.from_bytes(body[8:12], "little")
    else:
        return None
    return bytes(body[:end]) if end <= len(body) else None


def _parse_npy_header(body: bytes) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """NumPy's reading of an ``.npy`` header: shape, Fortran order, dtype, where the data begins."""
    stream = io.BytesIO(body)
    try:
        version = np.lib.format.read_magic(stream)
        read_header = _NPY_HEADERS.get(version)
        if read_header is None:
            raise InvalidInput(f"unsupported .npy format version {version}; send version 1.0 or 2.0",
                               field="body")
        shape, fortran, dtype = read_header(stream)
    except InvalidInput:
        raise
    except (ValueError, OSError, EOFError, SyntaxError, TypeError) as exc:
        raise InvalidInput(f"not a valid .npy array: {exc}", field="body") from None
    return shape, fortran, dtype, stream.tell()


def read_npy(body: bytes, max_items: int, what: str = "items") -> np.ndarray:
    """An ``.npy`` body → an array, without pickle and without allocating: the declared
    shape and dtype are checked against the body's length and the item limit first, then the
    array is a view of the body (``np.load`` would allocate whatever the header declares)."""
    key = _npy_header_bytes(body)
    parsed = _npy_headers.get(key) if key is not None else None
    if parsed is None:
        parsed = _parse_npy_header(body)
        if key is not None and parsed[3] == len(key) and len(_npy_headers) < NPY_HEADER_CACHE_MAX:
            _npy_headers[key] = parsed
    shape, fortran, dtype, start = parsed
    if dtype.hasobject:
        raise InvalidInput("object arrays are not accepted (no pickle); send numbers", field="body")
    if shape and shape[0] > max_items:
        raise PayloadTooLarge(f"{shape[0]} {what} in one request; the limit is {max_items}",
                              field="body")
    data = memoryview(body)[start:]
    needed = math.prod(shape) * dtype.itemsize
    if needed != len(data):
        raise InvalidInput(f"the .npy header declares shape {list(shape)} of {dtype} ({needed} bytes) "
                           f"but the body holds {len(data)} bytes of data", field="body")
    array = np.frombuffer(data, dtype=dtype)
    return array.reshape(shape[::-1]).T if fortran else array.reshape(shape)


_npy_heads: dict[tuple[str, tuple[int, ...]], bytes] = {}


def encode_npy(array: np.ndarray) -> bytes:
    """``array`` as an ``.npy`` file (version 1.0, no pickle): NumPy's header for its dtype and
    shape — built once per dtype and shape (``NPY_HEADER_CACHE_MAX`` of them), ~5 µs a small
    answer otherwise — then the data, in one copy."""
    array = np.ascontiguousarray(array)
    if array.dtype.hasobject:
        raise ValueError("object arrays cannot be written as .npy without pickle")
    key = (array.dtype.str, array.shape)
    head = _npy_heads.get(key)
    if head is None:
        buf = io.BytesIO()
        np.lib.format.write_array_header_1_0(buf, np.lib.format.header_data_from_array_1_0(array))
        head = buf.getvalue()
        if len(_npy_heads) < NPY_HEADER_CACHE_MAX:
            _npy_heads[key] = head
    return b"".join((head, array.data))


def decode_npy(body: bytes, max_items: int, shape: tuple[int, int, int] = MNIST_SHAPE) -> np.ndarray:
    """An ``.npy`` body of images → a checked float32 [N, C, H, W] batch in [0, 1]."""
    array = read_npy(body, max_items, "images")
    return checked_images(array, "body", max_items, shape)


# ------------------------------------------------------------------------------------- images

# Larger images are shrunk to this side before preprocessing (JPEGs are decoded at a reduced
# scale outright): an MNIST digit ends up 20 pixels tall, so more detail only costs memory and
# time — a 4096×4096 RGBA image would otherwise reach the preprocessing as 64 MB of pixels.
DECODE_SIDE = 1024


def open_image(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """An image opened lazily — its header read, nothing decoded — refusing non-images and
    declared sizes over ``max_pixels`` (decompression bombs)."""
    if not data:
        raise InvalidInput(f"{name}: empty file", field=name)
    Image.MAX_IMAGE_PIXELS = max_pixels  # Pillow's own guard (it refuses twice this in open())
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise PayloadTooLarge(f"{name}: the declared size exceeds the {max_pixels}-pixel limit; "
                              f"decompression bomb refused ({exc})", field=name) from None
    except UnidentifiedImageError:
        raise InvalidInput(f"{name}: not an image Pillow can read", field=name) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidInput(f"{name}: truncated or corrupt image ({exc})", field=name) from None
    width, height = image.size
    if not width or not height:
        raise InvalidInput(f"{name}: the image is {width}×{height}: no pixels", field=name)
    if width * height > max_pixels:
        raise PayloadTooLarge(f"{name}: {width}×{height} = {width * height} pixels exceeds the "
                              f"{max_pixels}-pixel limit (max_image_pixels)", field=name)
    return image


def load_image(image: Image.Image, name: str) -> Image.Image:
    """Decode an opened image, at most ``DECODE_SIDE`` pixels a side, in its own mode."""
    try:
        image.thumbnail((DECODE_SIDE, DECODE_SIDE))  # decodes; shrinks only when larger
        image.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidInput(f"{name}: truncated or corrupt image ({exc})", field=name) from None
    return image


def mnist_from_image(image: Image.Image) -> np.ndarray:
    """Any image of one digit → float32 [1, 28, 28] in [0, 1], MNIST-style (``services.digits``);
    a blank image is a 400 naming the problem."""
    return digits.mnist_digit(image)


def photo_tensor(image: Image.Image, shape: tuple[int, int, int]) -> np.ndarray:
    """Any image → float32 [C, H, W] in [0, 1]: converted to C channels (1 gray, 3 RGB, 4 RGBA)
    and resized to H×W (bilinear)."""
    channels, height, width = shape
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[channels]
    pixels = np.asarray(image.convert(mode).resize((width, height), Image.Resampling.BILINEAR),
                        dtype=np.float32) * np.float32(1 / 255)
    return pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)


def decode_images(files: list[tuple[str, bytes]], max_items: int, max_pixels: int,
                  max_request_pixels: int,
                  convert: Callable[[Image.Image], np.ndarray] | None = None) -> np.ndarray:
    """Image files → a float32 [N, C, H, W] batch: each image through ``convert`` (default: the
    MNIST digit pipeline, [N, 1, 28, 28]). Every header is read first: the request's
    declared pixels in all must fit ``max_request_pixels`` before any image is decoded. CPU-bound:
    the service runs it in its decode pool, off the event loop."""
    if not files:
        raise InvalidInput("no image in the request", field="images")
    check_image_count(len(files), max_items, "images")
    images = [(name, open_image(data, name, max_pixels)) for name, data in files]
    total = sum(image.width * image.height for _, image in images)
    if total > max_request_pixels:
        raise PayloadTooLarge(f"{len(images)} images of {total} pixels in all exceed the "
                              f"{max_request_pixels}-pixel budget of one request "
                              f"(max_request_pixels)", field="images")
    return np.stack([_convert(name, image, convert or mnist_from_image) for name, image in images])


def _convert(name: str, image: Image.Image, convert: Callable[[Image.Image], np.ndarray]) -> np.ndarray:
    """One decoded image → its model input; an image with no digit is named in the 400 (which of
    a multipart upload's files it was)."""
    try:
        return convert(load_image(image, name))
    except digits.NoDigit as exc:
        raise digits.NoDigit(f"{clip(name)}: {exc.message}", field=name) from None


# --------------------------------------------------------------------------------------- text

def number_field(payload: dict[str, Any], key: str, default: Any, kind: type, low: float,
                high: float, inclusive_low: bool = True) -> Any:
    """``payload[key]`` (or ``default``) checked to be a ``kind`` number in range, else 400."""
    value = payload.get(key, default)
    if value is None:
        return None
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if kind is int:
        ok = ok and float(value).is_integer()
    if not ok:
        raise InvalidInput(f"{key} must be {'an integer' if kind is int else 'a number'}", field=key)
    if not (low <= value <= high if inclusive_low else low < value <= high):
        bracket = "[" if inclusive_low else "("
        raise InvalidInput(f"{key}={value} is out of range {bracket}{low}, {high}]", field=key)
    return kind(value)


def exps_row(row: list[float]) -> list[float]:
    """``exp(x - max(row))`` of each of a row of Python floats: each ≤ 1, so no overflow; NaN
    in, NaN out."""
    top = max(row)
    return [math.exp(x - top) for x in row]


def softmax_row(row: list[float]) -> list[float]:
    """The softmax of one row of Python floats (float64 arithmetic)."""
    exps = exps_row(row)
    total = sum(exps)
    return [e / total for e in exps]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of [N, K] logits, a new C-contiguous array of their dtype.

    Up to ``SMALL_SCORES`` scores (the usual one-image request) it runs in plain Python: NumPy's
    per-call overhead (max, subtract, exp, sum, divide) cost ~12 µs of event-loop time for one
    row of ten, ~5 µs this way (issue 15). Many rows are computed on a transposed copy [K, N]:
    NumPy reduces a row of ten scores slowly, one row at a time, but K rows of N elementwise —
    [1024, 10] (a 1,024-image ``.npy`` answer) took 83 µs of event-loop time per request, 27 µs
    this way; under ``SOFTMAX_ROWS_TRANSPOSED`` rows the copies cost more than they save."""
    if 0 < logits.size <= SMALL_SCORES and logits.ndim == 2:
        return np.array([softmax_row(row) for row in logits.tolist()], dtype=logits.dtype)
    if logits.shape[0] < SOFTMAX_ROWS_TRANSPOSED:
        e = logits - logits.max(axis=1, keepdims=True)  # a new array: exp and the division reuse it
        np.exp(e, out=e)
        e /= e.sum(axis=1, keepdims=True)
        return e
    t = logits.T.copy(order="C")
    t -= t.max(axis=0)
    np.exp(t, out=t)
    t /= t.sum(axis=0)
    return np.ascontiguousarray(t.T)


# Up to this many scores (rows × classes), softmax (and the /v1 answers' top-k) run in plain
# Python: for the usual one-image request NumPy's per-call overhead is most of the cost.
SMALL_SCORES = 256
SOFTMAX_ROWS_TRANSPOSED = 64
