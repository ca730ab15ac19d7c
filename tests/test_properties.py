"""Property tests (hypothesis) for the edge codecs: whatever bytes or JSON a client sends,
``services.codecs`` and ``services.oip_codec`` return a result or raise a ``PodiumError`` (a 4xx),
never another exception — and what they accept, they decode like NumPy would.

Derandomized: the same examples every run, so CI is reproducible; raise ``max_examples`` locally
to search further.
"""

from __future__ import annotations

import gzip
import io
import json
import zlib
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from models import textcodec
from services import codecs, oip_codec, textgen
from services.config import ServeConfig
from services.errors import InvalidInput, PayloadTooLarge, PodiumError, clip
from services.http import parse_json

SETTINGS = settings(max_examples=150, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
MAX_ITEMS = 64

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=8)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=6), inner, max_size=6),
    max_leaves=20)


def _accepts_or_4xx(fn: Any, *args: Any) -> Any:
    """``fn(*args)``, or None when it refused with a client error; anything else fails."""
    try:
        return fn(*args)
    except PodiumError as exc:
        assert 400 <= exc.status < 500, exc
        assert exc.message and len(exc.message) <= 1000
        return None


# ------------------------------------------------------------------------------------ .npy

MNIST_SHAPES = st.sampled_from([(1, 28, 28), (3, 28, 28), (2, 1, 28, 28), (2, 784), (1, 783),
                                (0, 784), (28, 28), (784,), ()])
NPY_DTYPES = st.sampled_from(["u1", "<f4", ">f4", "<f8", "<i2", ">u2", "?", "<c8", "<U1"])


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


@SETTINGS
@given(hnp.arrays(NPY_DTYPES, MNIST_SHAPES), st.booleans())
def test_npy_decodes_like_numpy_or_refuses(array: np.ndarray, fortran: bool) -> None:
    if fortran and array.ndim > 1:
        array = np.asfortranarray(array)
    body = _npy(array)
    got = _accepts_or_4xx(codecs.decode_npy, body, MAX_ITEMS)
    if got is not None:
        expected = codecs.normalize_pixels(np.load(io.BytesIO(body)).reshape(-1, 1, 28, 28), "body")
        np.testing.assert_array_equal(got, expected)


@SETTINGS
@given(st.binary(max_size=400))
def test_npy_any_bytes(body: bytes) -> None:
    _accepts_or_4xx(codecs.decode_npy, body, MAX_ITEMS)


@SETTINGS
@given(st.lists(st.integers(0, 2**62), max_size=4), st.sampled_from(["<f4", "|u1", "<f8", "|O"]),
       st.binary(max_size=200))
def test_npy_any_declared_shape_never_allocates_it(shape: list[int], descr: str, tail: bytes) -> None:
    """The declared shape may be anything (10^18 items): refused from the header and the body's
    length, never allocated (a MemoryError or a hang here fails the test)."""
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {tuple(shape)}, }}"
    header += " " * (-(10 + len(header) + 1) % 64) + "\n"
    body = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + tail
    _accepts_or_4xx(codecs.decode_npy, body, MAX_ITEMS)


@SETTINGS
@given(hnp.arrays(st.sampled_from(["u1", "<f4", ">f4", "<f8", "<i8", "?", "<c8"]),
                  hnp.array_shapes(min_dims=0, max_dims=4, max_side=5)), st.booleans())
def test_npy_headers_kept_answer_as_numpy_reads_and_writes(array: np.ndarray, fortran: bool) -> None:
    """Issue 15: ``.npy`` headers are parsed once per exact header and built once per dtype and
    shape; the first and every later body with that header read as NumPy reads it, and an
    answer's bytes are NumPy's own."""
    if fortran and array.ndim > 1:
        array = np.asfortranarray(array)
    body = _npy(array)
    for _ in range(2):  # parsed, then from what was kept
        got = codecs.read_npy(body, 10)
        expected = np.load(io.BytesIO(body))
        assert got.dtype == expected.dtype and got.shape == expected.shape
        np.testing.assert_array_equal(got, expected)
        written = io.BytesIO()
        np.lib.format.write_array(written, np.ascontiguousarray(array), allow_pickle=False)
        assert codecs.encode_npy(array) == written.getvalue()


PIXEL_FLOATS = st.one_of(st.floats(0, 1), st.floats(width=32), st.floats(),
                         st.sampled_from([0.0, -0.0, 1.0, 1.0 + 2**-40, 1.0 + 2**-23, -2**-149,
                                          2**-1074, 3.5e38, float("nan"), float("inf"),
                                          -float("inf")]))


@SETTINGS
@given(st.lists(PIXEL_FLOATS, min_size=1, max_size=12), st.sampled_from([np.float32, np.float64]))
@example([0.5, 1.0 + 2**-23], np.float32)  # float32's next after 1.0: refused
@example([1.0 + 2**-52, 0.0], np.float64)  # rounds to 1.0 in float32: kept
@example([-0.0, 0.25], np.float32)  # -0.0 ≥ 0: kept, its sign bit as it was
@example([0.1, 3.5e38 * 2], np.float64)  # past float32's range: refused
@example([float("nan"), 0.5], np.float32)
def test_float_pixels_are_refused_or_kept_as_the_float32_range_check_decides(
        values: list[float], dtype: type) -> None:
    """Issue 15: the one-pass check of float pixels (their bits against 1.0's) decides exactly as
    casting to float32 and asking 0 ≤ x ≤ 1 does — -0.0, values that round to 1.0, subnormals,
    NaN, infinities and float64s past float32's range included — and keeps the same bits."""
    with np.errstate(over="ignore"):
        batch = np.asarray(values, np.float64).astype(dtype)
        cast = batch.astype(np.float32)
    accepted = bool(cast.min() >= 0.0 and cast.max() <= 1.0)
    if accepted:
        got = codecs.normalize_pixels(batch, "x")
        assert got.dtype == np.float32
        assert got.view(np.uint32).tolist() == cast.view(np.uint32).tolist()
    else:
        with pytest.raises(PodiumError):
            codecs.normalize_pixels(batch, "x")


def test_npy_header_kept_is_only_for_those_exact_bytes() -> None:
    """A kept header answers only a body whose header bytes are the same: another shape, dtype
    or order is parsed for itself, and a refused header is never kept."""
    a, b = np.zeros((2, 3), "<f4"), np.zeros((3, 2), "<f4")
    for _ in range(2):
        assert codecs.read_npy(_npy(a), 10).shape == (2, 3)
        assert codecs.read_npy(_npy(b), 10).shape == (3, 2)
        assert codecs.read_npy(_npy(a.astype("<f8")), 10).dtype == np.float64
        assert codecs.read_npy(_npy(np.asfortranarray(np.arange(6.0).reshape(2, 3))), 10)[0, 1] == 1.0
    bad = _npy(a).replace(b"'descr': '<f4'", b"'descr': '|O4'")
    for _ in range(2):
        with pytest.raises(PodiumError):
            codecs.read_npy(bad, 10)


# ------------------------------------------------------------------------- JSON tensors, rows

@SETTINGS
@given(json_values)
def test_json_images_any_json(value: Any) -> None:
    _accepts_or_4xx(codecs.decode_json_images, value, MAX_ITEMS)


@SETTINGS
@given(hnp.arrays(st.sampled_from(["<i2", "<f4", "<i8"]), MNIST_SHAPES,
                  elements={"min_value": -2, "max_value": 300}))
def test_json_images_tensors(array: np.ndarray) -> None:
    got = _accepts_or_4xx(codecs.decode_json_images, array.tolist(), MAX_ITEMS)
    if got is not None:
        assert got.dtype == np.float32 and got.shape[1:] == (1, 28, 28)
        assert got.min() >= 0 and got.max() <= 1


def _outcome(fn: Any, *args: Any) -> tuple[str, Any]:
    try:
        return "ok", fn(*args)
    except PodiumError as exc:
        return "refused", (exc.status, exc.message)


def _orjson_images(body: bytes, shape: tuple[int, int, int]) -> np.ndarray:
    """What a JSON image body gave before the simdjson path: orjson, then ``np.asarray``."""
    payload = parse_json(bytes(body))
    key = "instances" if "instances" in payload else "inputs"
    if not isinstance(payload, dict) or key not in payload:  # (the image kind names it so)
        raise InvalidInput("missing 'instances'", field="instances")
    return codecs.decode_json_images(payload[key], MAX_ITEMS, key, shape)


def _orjson_path(body: bytes, shape: tuple[int, int, int]) -> tuple[str, Any]:
    return _outcome(_orjson_images, body, shape)


def _assert_same(got: tuple[str, Any], want: tuple[str, Any]) -> None:
    """The same checked batch (dtype and bits) or the same refusal (status and message)."""
    assert got[0] == want[0], (got, want)
    if got[0] == "ok":
        assert got[1].dtype == want[1].dtype == np.float32
        assert got[1].shape == want[1].shape
        assert np.array_equal(got[1].view(np.uint32), want[1].view(np.uint32))
    else:
        assert got[1] == want[1]


def _deferred(body: bytes, shape: tuple[int, int, int]) -> tuple[str, Any] | None:
    """``body`` through ``codecs.JsonImages`` (the pixels parsed when the batch forms, into an
    array of the batch's): its outcome, or None where it is not deferred."""
    try:
        later = codecs.JsonImages.of(body, shape, MAX_ITEMS, lambda: _orjson_images(body, shape))
    except PodiumError as exc:
        return "refused", (exc.status, exc.message)
    if later is None:
        return None
    assert later.dtype == np.float32 and later.shape[1:] == shape
    out = np.full(later.shape, np.nan, np.float32)
    return _outcome(lambda: later.fill(out) or out)


def _same_as_orjson_path(body: bytes, shape: tuple[int, int, int] = codecs.MNIST_SHAPE) -> bool:
    """Whether ``json_images_fast`` took ``body``; when it did, the checked batch (or the refusal)
    is exactly the orjson path's, dtype and bits. A body deferred to its batch
    (``codecs.JsonImages``: every body of the plain form, those simdjson refuses included) gets
    the orjson path's answer too."""
    later = _deferred(body, shape)
    if later is not None:
        _assert_same(later, _orjson_path(body, shape))
    fast = codecs.json_images_fast(body, shape)
    if fast is None:
        return False
    assert later is not None  # the plain form: deferred as well
    key, array = fast
    _assert_same(_outcome(codecs.checked_images, array, key, MAX_ITEMS, shape),
                 _orjson_path(body, shape))
    return True


IMAGE_ITEMS = st.sampled_from([(1, 28, 28), (28, 28), (784,)])
PIXEL_VALUES = (st.integers(-3, 300) | st.integers(2**62, 2**65) | st.integers(-(2**64), -(2**62))
                | st.floats(allow_nan=False, allow_infinity=False)
                | st.floats(0, 1) | st.sampled_from([0, 1, 255, 0.0, -0.0, 1.0, 5e-324, 1e308]))


@SETTINGS
@given(hnp.arrays(st.sampled_from(["<i8", "<f8", "<f4", "<i2"]),
                  st.tuples(st.integers(1, 3), IMAGE_ITEMS).map(lambda t: (t[0], *t[1])),
                  elements={"min_value": -2, "max_value": 300}),
       st.sampled_from(["instances", "inputs"]), st.sampled_from([None, 0, 2]))
def test_json_images_fast_path_is_the_orjson_paths_answer(array: np.ndarray, key: str,
                                                          indent: int | None) -> None:
    """Plain bodies of every accepted item shape, integer or float pixels, in range or not,
    compact or indented: the simdjson path takes each and gives the orjson path's answer."""
    body = json.dumps({key: array.tolist()}, indent=indent).encode()
    assert _same_as_orjson_path(body)


@SETTINGS
@given(st.lists(PIXEL_VALUES, min_size=784, max_size=784), st.integers(0, 783),
       st.sampled_from([None, "", "null", "true", '"0.5"', "[]", "1e400", "01", "-"]))
def test_json_images_fast_path_keeps_numpys_meaning(pixels: list[Any], at: int, odd: str | None
                                                    ) -> None:
    """ints and floats mixed as NumPy mixes them (any float → float64, else int64), huge
    integers, -0.0, subnormals; one odd token (a null, a string, an invalid number, ...) puts the
    body on the orjson path, which names its problem."""
    body = json.dumps({"instances": [pixels]}).encode()
    if odd is not None:
        tokens = body.split(b", ")
        tokens[at] = (b'{"instances": [[' if at == 0 else b"") + odd.encode() \
            + (b"]]}" if at == 783 else b"")
        body = b", ".join(tokens)
    taken = _same_as_orjson_path(body)
    if odd is None and all(abs(v) < 2**63 for v in pixels if isinstance(v, int)):
        assert taken  # the plain body of numbers is the fast path's
    if odd not in (None, ""):
        assert not taken


@SETTINGS
@given(st.lists(st.tuples(st.integers(0, 4000), st.binary(min_size=1, max_size=3)), max_size=4))
def test_json_images_fast_path_on_damaged_bodies(edits: list[tuple[int, bytes]]) -> None:
    """Bytes replaced anywhere in a plain body: the fast path declines or agrees."""
    body = bytearray(json.dumps({"instances": [[[round(i / 784, 3) for i in range(28)]] * 28]}).encode())
    for at, data in edits:
        at %= len(body)
        body[at:at + len(data)] = data
    _same_as_orjson_path(bytes(body))
    _same_as_orjson_path(body)


def test_json_images_fast_path_declines_what_it_does_not_know() -> None:
    plain = {"instances": [[0.5] * 784]}
    assert codecs.json_images_fast(json.dumps(plain).encode()) is not None
    for body in [json.dumps({**plain, "top_k": 2}),  # another key: the orjson path reads it
                 json.dumps({"instan ces": plain["instances"]}),  # a key the skeleton can't tell
                 json.dumps({"instances": [[0.5] * 783]}),  # no accepted item shape
                 json.dumps({"instances": [[0.5] * 784, [0.5] * 783]}),  # ragged
                 json.dumps({"instances": []}), "[]", "", "{}",
                 json.dumps({"instances": [[0.5] * 784]}) + " x",  # trailing garbage
                 json.dumps({"instances": [[2**64] + [0] * 783]}),  # past uint64: NumPy's own rule
                 json.dumps({"instances": [[2**63] + [0] * 783]})]:  # past int64
        assert codecs.json_images_fast(body.encode()) is None, body
    assert codecs.json_images_fast(memoryview(json.dumps(plain).encode())) is None
    key, array = codecs.json_images_fast(bytearray(json.dumps(plain).encode()))  # uvicorn's body
    assert key == "instances" and array.dtype == np.float64 and array.shape == (1, 784)
    big = json.dumps({"instances": [[0.5] * 784] * 400}).encode()
    assert len(big) > codecs.JSON_FAST_MAX_BYTES and codecs.json_images_fast(big) is None
    # the thread's parser is reusable after every refusal above
    key, array = codecs.json_images_fast(json.dumps({"inputs": [[[1] * 28] * 28]}).encode())
    assert key == "inputs" and array.dtype == np.int64 and array.shape == (1, 28, 28)


def test_image_kinds_decode_plain_json_on_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The image kind's JSON decoding takes the simdjson path for a plain body (orjson is never
    asked) and the orjson path for any other (here: with ``top_k``)."""
    import asyncio
    from types import SimpleNamespace

    from models.catalog import get_spec
    from services.kinds import image, kind_for

    kind = kind_for(get_spec("mnist-cnn"))
    assert isinstance(kind, image.ImageClassifier)
    parsed: list[bytes] = []
    real_parse = image.parse_json
    monkeypatch.setattr(image, "parse_json", lambda body: parsed.append(body) or real_parse(body))
    pixels = [[round(i / 784, 4) for i in range(784)]]

    def decode(payload: dict[str, Any]) -> tuple[np.ndarray, Any]:
        body = bytearray(json.dumps(payload).encode())

        async def read() -> bytearray:
            return body
        request = SimpleNamespace(headers={"content-type": "application/json"})
        call = SimpleNamespace(plane=SimpleNamespace(config=ServeConfig()), request=request, body=read)
        return asyncio.run(kind._decode(call))

    fast, top_k = decode({"instances": pixels})
    assert not parsed and top_k is None
    slow, top_k = decode({"instances": pixels, "top_k": 2})
    assert len(parsed) == 1 and top_k == 2
    assert fast.dtype == np.float32 and fast.shape == (1, 1, 28, 28) and np.array_equal(fast, slow)


def test_image_kinds_defer_plain_json_to_the_batch_with_the_eager_answers() -> None:
    """``_decode(defer=True)`` (``v1_predict``'s): a plain body comes as ``codecs.JsonImages``
    whose filled pixels, or refusal, are the eager decoding's — a key the byte check cannot tell
    from ``instances`` and a number simdjson refuses included (the orjson path decides them);
    any other body is decoded at once, as ever; past the item limit, 413 at the request."""
    import asyncio
    from types import SimpleNamespace

    from models.catalog import get_spec
    from services.kinds import kind_for

    kind = kind_for(get_spec("mnist-cnn"))
    config = ServeConfig(max_items_per_request=4)

    def decode(body: bytes, defer: bool) -> tuple[str, Any]:
        async def read() -> bytearray:
            return bytearray(body)
        request = SimpleNamespace(headers={"content-type": "application/json"})
        call = SimpleNamespace(plane=SimpleNamespace(config=config), request=request, body=read)

        def run() -> Any:
            images, _ = asyncio.run(kind._decode(call, defer=defer))
            if isinstance(images, codecs.JsonImages) != defer:
                return "not deferred"
            return images.array() if defer else images
        return _outcome(run)

    row = [round(i / 784, 4) for i in range(784)]
    for body, deferred in [
            (json.dumps({"instances": [row, row]}), True),
            (json.dumps({"inputs": [[[7] * 28] * 28]}), True),
            (json.dumps({"instances": [row[:-1] + [1.5]]}), True),  # refused: out of range
            (json.dumps({"instances": [[300] * 784]}), True),  # refused: past 255
            (json.dumps({"instan5ces": [row]}), True),  # refused by orjson's path: no key
            (json.dumps({"instances": [row[:-1] + [1e400]]}), True),  # simdjson refuses: orjson
            (json.dumps({"instances": [row] * 5}), True),  # 413, at the request
            (json.dumps({"instances": [row], "top_k": 2}), False),
            (json.dumps({"instances": [row[:-1] + [None]]}), False)]:
        eager = decode(body.encode(), defer=False)
        got = decode(body.encode(), defer=deferred)
        assert not isinstance(got[1], str), (got, body[:40])  # deferred exactly when expected
        _assert_same(got, eager)


@SETTINGS
@given(json_values | st.lists(st.lists(st.integers(-5, 5) | st.floats(allow_nan=False), max_size=9),
                              max_size=4))
def test_rows_any_json(value: Any) -> None:
    got = _accepts_or_4xx(codecs.decode_rows, value, MAX_ITEMS)
    if got is not None:
        assert got.shape == (len(value), 8) and np.isfinite(got).all()


@SETTINGS
@given(json_values, st.sampled_from([int, float]))
def test_number_field_any_json(value: Any, kind: type) -> None:
    got = _accepts_or_4xx(codecs.number_field, {"x": value}, "x", 1, kind, 0, 100)
    if got is not None:
        assert isinstance(got, kind) and 0 <= got <= 100


# ----------------------------------------------------------------------------------- images

def _image_bytes(mode: str, size: tuple[int, int], fmt: str, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)
    buf = io.BytesIO()
    image.save(buf, fmt)
    return buf.getvalue()


# Every mode each format can store (Pillow refuses the other pairs).
FORMAT_MODES = {"PNG": "L RGB RGBA LA P 1 I;16", "TIFF": "L RGB RGBA 1 I F P CMYK", "BMP": "L RGB P 1",
                "GIF": "L P", "WEBP": "RGB RGBA", "JPEG": "L RGB CMYK"}
IMAGES = st.sampled_from([(f, m) for f, modes in FORMAT_MODES.items() for m in modes.split()]).flatmap(
    lambda pair: st.builds(_image_bytes, st.just(pair[1]), st.tuples(st.integers(1, 40), st.integers(1, 40)),
                           st.just(pair[0]), st.integers(0, 9)))


def _mangle(data: bytes, cut: int, flips: list[tuple[int, int]]) -> bytes:
    out = bytearray(data[:max(1, cut)])
    for at, value in flips:
        out[at % len(out)] = value
    return bytes(out)


@SETTINGS
@given(IMAGES)
def test_images_any_format_and_mode(data: bytes) -> None:
    got = _accepts_or_4xx(codecs.decode_images, [("img", data)], MAX_ITEMS, 4096**2, 4096**2)
    if got is not None:
        assert got.shape == (1, 1, 28, 28) and got.dtype == np.float32


@SETTINGS
@given(IMAGES, st.integers(0, 4000), st.lists(st.tuples(st.integers(0, 4000), st.integers(0, 255)),
                                              max_size=4))
def test_images_truncated_or_corrupt(data: bytes, cut: int, flips: list[tuple[int, int]]) -> None:
    _accepts_or_4xx(codecs.decode_images, [("img", _mangle(data, cut, flips))], MAX_ITEMS,
                    4096**2, 4096**2)


@SETTINGS
@given(st.binary(max_size=300))
def test_images_any_bytes(data: bytes) -> None:
    _accepts_or_4xx(codecs.decode_images, [("img", data)], MAX_ITEMS, 4096**2, 4096**2)


def _stroke_png(column: int) -> bytes:
    """A 20×20 white image with one dark vertical stroke: a digit, not noise (a blank or noisy
    image is refused as "no digit found", which is not what this test is about)."""
    pixels = np.full((20, 20), 255, dtype=np.uint8)
    pixels[3:17, column:column + 3] = 0
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def test_request_pixel_budget_counts_every_image() -> None:
    files = [(f"i{n}", _stroke_png(6 + 2 * n)) for n in range(3)]
    assert codecs.decode_images(files, MAX_ITEMS, 400, 1200).shape == (3, 1, 28, 28)
    with pytest.raises(PayloadTooLarge, match="1200 pixels in all exceed the 1199-pixel budget"):
        codecs.decode_images(files, MAX_ITEMS, 400, 1199)
    with pytest.raises(PayloadTooLarge, match="max_image_pixels"):
        codecs.decode_images(files, MAX_ITEMS, 399, 10**6)


# ---------------------------------------------------------------------- Open Inference Protocol

OIP_DTYPES = st.sampled_from(list(oip_codec.DTYPES) + ["FP8", None, 3])
tensors = st.fixed_dictionaries(
    {"name": st.text(max_size=6) | st.integers(), "datatype": OIP_DTYPES,
     "shape": st.lists(st.integers(-1, 6) | st.booleans(), max_size=3) | json_values},
    optional={"data": json_values | st.lists(st.integers(-300, 300) | st.floats(), max_size=12),
              "parameters": st.fixed_dictionaries({"binary_data_size": st.integers(-1, 64)}) | json_values})
oip_requests = st.fixed_dictionaries(
    {"inputs": st.lists(tensors, max_size=3) | json_values},
    optional={"id": json_values, "parameters": json_values,
              "outputs": st.lists(st.fixed_dictionaries({"name": st.text(max_size=4)},
                                                        optional={"parameters": json_values}),
                                  max_size=2) | json_values})


@SETTINGS
@given(oip_requests, st.binary(max_size=64), st.booleans())
def test_oip_any_request(payload: dict[str, Any], tail: bytes, binary: bool) -> None:
    header = json.dumps(payload).encode()
    body, length = (header + tail, str(len(header))) if binary else (header, None)
    got = _accepts_or_4xx(oip_codec.decode_request, body, length)
    if got is not None:
        for tensor in got.inputs.values():
            assert isinstance(tensor.array, np.ndarray)


@SETTINGS
@given(st.binary(max_size=300), st.none() | st.text(max_size=6) | st.integers(-5, 400).map(str))
def test_oip_any_bytes(body: bytes, length: str | None) -> None:
    _accepts_or_4xx(oip_codec.decode_request, body, length)


@SETTINGS
@given(hnp.arrays(st.sampled_from(["<f4", "u1", "<i8", "?", "<f2"]),
                  hnp.array_shapes(min_dims=1, max_dims=3, max_side=5)))
def test_oip_binary_round_trip(array: np.ndarray) -> None:
    """An output encoded binary decodes back, as an input, to the same tensor."""
    body, length = oip_codec.encode_response({}, [("t", array, True)])
    entry = json.loads(body[:length])["outputs"][0]
    request = {"inputs": [{**entry, "parameters": entry["parameters"]}]}
    header = json.dumps(request).encode()
    decoded = oip_codec.decode_request(header + body[length:], str(len(header)))
    np.testing.assert_array_equal(decoded.inputs["t"].array, array)


@SETTINGS
@given(st.binary(max_size=300), st.sampled_from(["gzip", "deflate", "br", "identity", ""]),
       st.booleans())
def test_decompress_any_body(body: bytes, encoding: str, valid: bool) -> None:
    if valid:
        body = gzip.compress(body) if encoding == "gzip" else zlib.compress(body)
    got = _accepts_or_4xx(oip_codec.decompress, body, encoding, 256)
    if got is not None:
        assert len(got) <= 256


# ------------------------------------------------------------------------------ char-rnn, errors

@SETTINGS
@given(hnp.arrays("<f4", st.integers(2, 70), elements={"min_value": -1e4, "max_value": 1e4}),
       st.floats(min_value=5e-324, max_value=5.0), st.none() | st.integers(1, 70))
def test_sampling_distribution_is_finite_for_any_temperature(logits: np.ndarray, temperature: float,
                                                             top_k: int | None) -> None:
    probs = textcodec.distribution(logits, temperature, top_k)
    assert np.isfinite(probs).all() and probs[0] == 0
    assert abs(probs.sum() - 1) < 1e-9


def test_tiny_temperature_is_greedy() -> None:
    probs = textcodec.distribution(np.array([9.0, 50.0, 10.0, -5.0], np.float32), 1e-308, None)
    assert probs.tolist() == [0.0, 1.0, 0.0, 0.0]


def test_work_bounds_name_their_setting() -> None:
    cfg = ServeConfig(max_prompt_chars=10, max_request_prompt_chars=20, max_request_generated_chars=30)
    textgen.check_work(["a" * 10, "b" * 10], 15, cfg)  # exactly at every bound
    with pytest.raises(PayloadTooLarge, match="max_request_prompt_chars"):
        textgen.check_work(["a" * 10, "b" * 10, "c"], 1, cfg)
    with pytest.raises(PayloadTooLarge, match="max_request_generated_chars"):
        textgen.check_work(["a", "b"], 16, cfg)
    with pytest.raises(PodiumError, match="max_prompt_chars"):
        textgen.check_work(["a" * 11], 1, cfg)


@given(st.text(max_size=3000), st.integers(2, 200))
def test_clip_bounds_any_string(text: str, limit: int) -> None:
    out = clip(text, limit)
    assert len(out) <= limit and (out == text or out.endswith("…"))


@SETTINGS
@given(st.sampled_from(["<f4", "<f8"]).flatmap(lambda dtype: hnp.arrays(
    dtype, st.integers(1, 80), elements={"allow_nan": False, "allow_infinity": False,
                                         "min_value": -1e6, "max_value": 1e6})))
def test_the_digit_pipelines_median_is_numpys_to_the_bit(values: np.ndarray) -> None:
    """``services.digits._median`` (issue 15: ~13 → ~1.5 µs a call, a dozen calls per photo)
    answers exactly what ``np.median`` does, odd and even lengths, float32 and float64."""
    from services.digits import _median

    ours, numpy = _median(values), np.median(values)
    assert ours.dtype == numpy.dtype and ours.tobytes() == numpy.tobytes(), (ours, numpy)


def _decoded(body: bytes | bytearray, length: str | None) -> tuple[Any, ...]:
    """``decode_request``'s outcome, comparable: every field and each tensor's bytes, or the
    refusal."""
    try:
        r = oip_codec.decode_request(body, length)
    except PodiumError as exc:
        return "refused", exc.status, exc.message
    return ("ok", r.id, r.parameters, r.outputs, r.binary_default,
            {n: (t.datatype, t.array.dtype.str, t.array.shape,
                 t.array.tolist() if t.array.dtype == object else t.array.tobytes())
             for n, t in r.inputs.items()})


binary_tensors = hnp.arrays(st.sampled_from(["<f4", "u1", "<i8"]),
                            hnp.array_shapes(min_dims=1, max_dims=3, max_side=4))


@SETTINGS
@given(oip_requests, st.binary(max_size=64), st.binary(max_size=64))
def test_oip_a_kept_header_decodes_as_a_fresh_one(payload: dict[str, Any], tail: bytes,
                                                   other: bytes) -> None:
    """Issue 15: a checked all-binary header is kept by its bytes (``oip_codec._plans``); any
    body behind it — the same tensors, other bytes, too few, too many — is decoded or refused
    exactly as with nothing kept."""
    header = json.dumps(payload).encode()
    length = str(len(header))
    for body in (header + tail, header + other):
        oip_codec._plans.clear()
        fresh = _decoded(body, length)
        for warm in (header + tail, header + other, body):
            _decoded(warm, length)  # keeps the header's plan where it is one
            assert _decoded(body, length) == fresh


@SETTINGS
@given(st.lists(binary_tensors, min_size=1, max_size=3), st.integers(-3, 3), st.booleans(),
       st.booleans())
def test_oip_binary_requests_decode_alike_kept_or_not(arrays: list[np.ndarray], extra: int,
                                                      outputs: bool, big: bool) -> None:
    """The headers clients send (every tensor binary, sizes that match) through the kept plan:
    the same tensors as a fresh decode, and a body a few bytes short or long refused alike;
    a body read in place (a ``bytearray``) alike."""
    inputs = [{"name": f"t{i}", "datatype": oip_codec.datatype_of(a), "shape": list(a.shape),
               "parameters": {"binary_data_size": a.nbytes}} for i, a in enumerate(arrays)]
    payload: dict[str, Any] = {"inputs": inputs, "parameters": {"binary_data_output": True}}
    if outputs:
        payload["outputs"] = [{"name": "label", "parameters": {"binary_data": False}}]
    header = json.dumps(payload).encode()
    length = str(len(header))
    exact = b"".join(a.tobytes() for a in arrays)
    raw = exact[:len(exact) + extra] if extra < 0 else exact + b"\0" * extra
    body: bytes | bytearray = bytearray(header + raw) if big else header + raw
    oip_codec._plans.clear()
    fresh = _decoded(body, length)
    assert (fresh[0] == "ok") == (extra == 0), fresh
    assert (header in oip_codec._plans) == (extra == 0)
    oip_codec.decode_request(header + exact, length)  # kept now, whatever ``body`` did
    assert header in oip_codec._plans
    assert _decoded(body, length) == fresh
    kept = oip_codec.decode_request(header + exact, length)
    for a, tensor in zip(arrays, kept.inputs.values(), strict=True):
        np.testing.assert_array_equal(tensor.array, a)
        assert tensor.array.dtype == a.dtype
    kept.parameters["binary_data_output"] = False  # the caller's copies, not the plan's
    if kept.outputs is not None:
        kept.outputs["label"] = True
    assert _decoded(body, length) == fresh


def test_oip_headers_kept_are_bounded_and_never_those_with_an_id() -> None:
    oip_codec._plans.clear()
    raw = np.zeros(4, "<f4").tobytes()
    for i in range(oip_codec.PLAN_CACHE_MAX + 10):
        header = json.dumps({"inputs": [{"name": f"x{i}", "datatype": "FP32", "shape": [4],
                                         "parameters": {"binary_data_size": 16}}]}).encode()
        oip_codec.decode_request(header + raw, str(len(header)))
        assert 0 < len(oip_codec._plans) <= oip_codec.PLAN_CACHE_MAX
    oip_codec._plans.clear()
    header = json.dumps({"id": "a", "inputs": [{"name": "x", "datatype": "FP32", "shape": [4],
                                                "parameters": {"binary_data_size": 16}}]}).encode()
    assert oip_codec.decode_request(header + raw, str(len(header))).id == "a"
    mixed = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [4],
                                    "parameters": {"binary_data_size": 16}},
                                   {"name": "y", "datatype": "FP32", "shape": [1], "data": [1]}]})
    oip_codec.decode_request(mixed.encode() + raw, str(len(mixed)))
    assert not oip_codec._plans


@SETTINGS
@given(hnp.arrays(st.sampled_from(["u1", "<i8", "<i2", "<f4", "<f8", "<f2", "?"]),
                  st.tuples(st.integers(1, 3), st.just(1), st.integers(1, 3), st.integers(1, 3))))
def test_oip_pixels_checked_with_their_batch_are_normalize_pixels(batch: np.ndarray) -> None:
    """Issue 15: an OIP image tensor's pixels are checked when its batch forms
    (``codecs.PixelsLater``): filled into a batch's rows or alone, the same float32 bits as
    ``normalize_pixels``, or the same refusal — a dtype that is no number refused at once."""
    want = _outcome(codecs.normalize_pixels, batch, "image")
    try:
        later = codecs.PixelsLater(batch, "image")
    except PodiumError as exc:
        assert batch.dtype == np.bool_ and want == ("refused", (exc.status, exc.message))
        return
    assert later.dtype == np.float32 and later.shape == batch.shape and later.size == batch.size
    rows = np.full((batch.shape[0] + 2, *batch.shape[1:]), np.nan, np.float32)
    for got in (_outcome(lambda: later.fill(rows[1:-1]) or rows[1:-1]), _outcome(later.array)):
        _assert_same(got, want)
    if want[0] == "ok":
        assert np.isnan(rows[0]).all() and np.isnan(rows[-1]).all()  # its rows only
