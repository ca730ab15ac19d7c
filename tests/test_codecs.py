"""Image decoding turns real digits, however sent, back into MNIST-looking 28×28 inputs."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from services.codecs import decode_npy, encode_npy, mnist_from_image, normalize_pixels, open_image
from services.errors import InvalidInput, PayloadTooLarge
from training import data


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return data.load_mnist().test_x[:40]


def encode(array: np.ndarray, mode: str, size: int | None, fmt: str) -> bytes:
    image = Image.fromarray(array).convert(mode)
    if size:
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    image.save(buf, fmt)
    return buf.getvalue()


@pytest.mark.parametrize(("invert", "mode", "size", "fmt"), [
    (False, "L", None, "PNG"),
    (True, "L", 140, "PNG"),
    (False, "RGB", 56, "JPEG"),
    (True, "RGB", 300, "BMP"),
    (False, "LA", None, "PNG"),
    (True, "RGBA", 64, "PNG"),
    (False, "RGB", None, "WEBP"),
])
def test_decoded_digits_match_the_originals(digits: np.ndarray, invert: bool, mode: str,
                                            size: int | None, fmt: str) -> None:
    scores = []
    for digit in digits:
        source = 255 - digit if invert else digit
        decoded = mnist_from_image(open_image(encode(source, mode, size, fmt), "x", 10**8))[0]
        assert decoded.shape == (28, 28) and decoded.min() >= 0.0 and decoded.max() <= 1.0
        scores.append(np.corrcoef(decoded.ravel(), digit.ravel() / 255.0)[0, 1])
    # MNIST digits are already centred by mass in a 20×20 box: decoding must land them back.
    assert np.median(scores) > 0.85, np.median(scores)


def test_transparent_canvas_with_dark_strokes(digits: np.ndarray) -> None:
    rgba = np.zeros((28, 28, 4), np.uint8)
    rgba[..., 3] = digits[0]  # black strokes, shape in alpha, transparent background
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, "PNG")
    decoded = mnist_from_image(open_image(buf.getvalue(), "x", 10**8))[0]
    assert np.corrcoef(decoded.ravel(), digits[0].ravel())[0, 1] > 0.85


def test_blank_image_is_a_clear_400() -> None:  # issue 12: no guess at an empty canvas
    buf = io.BytesIO()
    Image.new("L", (50, 50), 255).save(buf, "PNG")
    with pytest.raises(InvalidInput, match="no digit found"):
        mnist_from_image(open_image(buf.getvalue(), "x", 10**8))


def test_refusals() -> None:
    with pytest.raises(InvalidInput, match="not an image"):
        open_image(b"hello", "f", 10**8)
    with pytest.raises(InvalidInput, match="empty file"):
        open_image(b"", "f", 10**8)
    buf = io.BytesIO()
    Image.new("1", (5000, 5000)).save(buf, "PNG")
    with pytest.raises(PayloadTooLarge, match="pixel limit"):
        open_image(buf.getvalue(), "f", 1000 * 1000)


# -- .npy batches and pixel checks (issue 15: few passes, no copies, every refusal kept) ---------

@pytest.mark.parametrize(("pixels", "message"), [
    (np.array([[0.5, np.nan]], np.float32), "NaN or infinity"),
    (np.array([[np.nan, np.nan]]), "NaN or infinity"),
    (np.array([[0.5, np.inf]], np.float32), "NaN or infinity"),
    (np.array([[-np.inf, 0.1]]), "NaN or infinity"),
    (np.array([[0.2, 1e300]]), "NaN or infinity"),  # float64 past float32's range
    (np.array([[0.2, 1.5]], np.float32), r"float pixels must be in \[0, 1\]"),
    (np.array([[-0.01, 0.5]]), r"float pixels must be in \[0, 1\]"),
    (np.array([[0, 256]], np.int64), "integer pixels must be in 0–255"),
    (np.array([[-1, 3]], np.int8), "integer pixels must be in 0–255"),
    (np.array([[True]]), "pixels must be numbers"),
])
def test_pixels_refused(pixels: np.ndarray, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        normalize_pixels(pixels, "body")


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint16, np.int64])
def test_integer_pixels_scale_to_float32(dtype: type) -> None:
    pixels = np.arange(256, dtype=dtype).reshape(1, 256)
    out = normalize_pixels(pixels, "body")
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, pixels.astype(np.float32) * np.float32(1 / 255))


def test_float32_npy_batch_is_a_view_of_the_body(digits: np.ndarray) -> None:
    batch = (digits[:, None] / 255).astype(np.float32)
    body = encode_npy(batch)
    out = decode_npy(body, 100)
    np.testing.assert_array_equal(out, batch)
    assert np.shares_memory(out, np.frombuffer(body, np.uint8))  # no copy of 800k floats per request
    eight = decode_npy(encode_npy(digits), 100)  # uint8 [N,28,28]: scaled, one new array
    assert eight.shape == (len(digits), 1, 28, 28) and eight.dtype == np.float32
    np.testing.assert_allclose(eight, batch, rtol=1e-6)


def test_a_plain_json_forms_cache_answers_as_reading_afresh_and_stays_bounded() -> None:
    """Issue 15: a plain JSON body's form is looked up by its skeleton (its bytes less its
    numbers); the answer is the one reading it afresh gives — for 1 to 300 images in each item
    shape, integers and floats, and bodies that are not the plain form — and the cache holds at
    most ``_FORMS_MAX`` skeletons of at most ``_FORM_SKELETON_MAX`` bytes per image shape."""
    import orjson

    from services import codecs

    shape = (1, 28, 28)
    codecs._forms.pop(shape, None)
    rng = np.random.default_rng(0)
    for n in list(range(1, 41)) + [1, 2, 3]:  # a skeleton past _FORM_SKELETON_MAX from 6 images
        for item in ((1, 28, 28), (28, 28), (784,)):
            pixels = rng.integers(0, 256, (n, *item))
            for values in (pixels.tolist(), (pixels / 255).tolist()):
                body = orjson.dumps({"instances": values})
                fresh = codecs._skeleton_form(body.translate(None, codecs._NUMBER_BYTES), shape)
                got = codecs._plain_form(bytearray(body), shape)
                assert got is not None and fresh is not None
                assert got[:3] == fresh[:3] == ("instances", n, item)
                assert got[3] == (b"." in body)
                assert len(codecs._forms[shape]) <= codecs._FORMS_MAX
    assert all(len(k) <= codecs._FORM_SKELETON_MAX for k in codecs._forms[shape])
    for body in (b'{"instances":[[1,2],[3]]}', b'{"instances":[[1,2,3]],"top_k":2}', b'[1]',
                 b'{"inputs":[[' + b",".join([b"0"] * 784) + b"]]}"):
        for _ in range(2):  # read, then from the cache
            form = codecs._plain_form(body, shape)
            assert form == (None if not body.startswith(b'{"inputs"') else ("inputs", 1, (784,), False))
    for i in range(3 * codecs._FORMS_MAX):  # as many distinct short skeletons, none plain
        assert codecs._plain_form(b'{"instances":[[1]' + b",[1,1]" * i + b"]}", shape) is None
        assert len(codecs._forms[shape]) <= codecs._FORMS_MAX
    assert all(len(k) <= codecs._FORM_SKELETON_MAX for k in codecs._forms[shape])
