"""Photos of digits (issue 12): the preprocessing turns what people upload into MNIST digits.

In process: the generated photo set against its clean glyphs and against a model-free reader
(nearest neighbours over real MNIST training digits); polarity under uneven light, tiny digits,
digits touching the border, every Pillow mode, blank images. Through a real server: the
``?preview=1`` answer and the 400 for a blank image.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from services.codecs import mnist_from_image, normalize_pixels, open_image
from services.digits import NoDigit, already_mnist, frame, preview_png
from services.errors import InvalidInput
from training import data, photos

PHOTOS = 150  # half the shipped set: every source, polarity and mode, in a few seconds


@pytest.fixture(scope="module")
def mnist() -> data.MnistData:
    return data.load_mnist()


@pytest.fixture(scope="module")
def photo_set(mnist: data.MnistData) -> list[photos.Photo]:
    return list(photos.photo_set(PHOTOS, mnist_test=(mnist.test_x, mnist.test_y)))


def decode(blob: bytes) -> np.ndarray:
    return mnist_from_image(open_image(blob, "photo", 10**8))[0]


def corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def glyph(label: int = 7, height: int = 120) -> np.ndarray:
    """A clean pen-stroke digit: ink coverage in [0, 1], ``height`` pixels tall."""
    image = Image.new("L", (height, height), 0)
    points = [(0.15 + 0.7 * x, 0.05 + 0.9 * y) for x, y in photos.STROKES[label][0]]
    ImageDraw.Draw(image).line([(height * x, height * y) for x, y in points], fill=255,
                               width=max(2, height // 9), joint="curve")
    return np.asarray(image, np.float32) / 255


def photo(ink: np.ndarray, side: int = 300, at: tuple[int, int] | None = None,
          light_on_dark: bool = False, shading: float = 0.5, noise: float = 6.0, seed: int = 0,
          fmt: str = "JPEG") -> bytes:
    """``ink`` on unevenly lit paper: a strong gradient (``shading``), noise, slight blur."""
    rng = np.random.default_rng(seed)
    h, w = ink.shape
    top, left = at if at is not None else ((side - h) // 2, (side - w) // 2)
    cover = np.zeros((side, side), np.float32)
    cover[max(top, 0): top + h, max(left, 0): left + w] = ink[max(-top, 0): side - top,
                                                              max(-left, 0): side - left]
    paper, pen = (40.0, 210.0) if light_on_dark else (215.0, 40.0)
    x = np.linspace(-0.5, 0.5, side)[None]
    light = 1 + shading * x - 0.3 * x.T ** 2
    gray = (paper + (pen - paper) * cover) * light + rng.normal(0, noise, (side, side))
    image = Image.fromarray(gray.clip(0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(1))
    buf = io.BytesIO()
    image.save(buf, fmt)
    return buf.getvalue()


# ------------------------------------------------------------------------------ the photo set

def test_the_set_is_reproducible(mnist: data.MnistData) -> None:
    args = (12, photos.SEED, (mnist.test_x, mnist.test_y))
    first, again = list(photos.photo_set(*args)), list(photos.photo_set(*args))
    assert [p.data for p in first] == [p.data for p in again]
    other = list(photos.photo_set(12, photos.SEED + 1, (mnist.test_x, mnist.test_y)))
    assert [p.data for p in first] != [p.data for p in other]
    assert {p.label for p in first} == set(range(10))


def test_photos_come_out_as_their_clean_digits(photo_set: list[photos.Photo]) -> None:
    """Each photo, preprocessed, looks like its glyph framed cleanly (no camera): the old
    preprocessing scored a median correlation of 0.37 here, this one 0.98."""
    scores = np.array([corr(decode(p.data), frame(p.glyph, p.glyph > 0)) for p in photo_set])
    assert np.median(scores) > 0.9, np.median(scores)
    assert np.percentile(scores, 10) > 0.75, np.sort(scores)[:15]


def nearest_neighbour_accuracy(mnist: data.MnistData, inputs: np.ndarray, labels: list[int]) -> float:
    """A model-free reader: 3 nearest neighbours among 20 000 real MNIST training digits (93.8 %
    on the MNIST test set)."""
    train = mnist.train_x[:20000].reshape(20000, -1).astype(np.float32) / 255
    distance = (train ** 2).sum(1)[None] - 2 * inputs.reshape(len(inputs), -1) @ train.T
    nearest = mnist.train_y[:20000][np.argpartition(distance, 3, axis=1)[:, :3]]
    votes = np.array([np.bincount(v, minlength=10).argmax() for v in nearest])
    return float((votes == labels).mean())


def test_nearest_neighbours_read_the_photos(mnist: data.MnistData,
                                            photo_set: list[photos.Photo]) -> None:
    """The preprocessed photos read nearly as well as MNIST itself (measured 89 %; the old
    preprocessing: 23 %)."""
    inputs = np.stack([decode(p.data) for p in photo_set])
    accuracy = nearest_neighbour_accuracy(mnist, inputs, [p.label for p in photo_set])
    assert accuracy >= 0.85, accuracy


def as_png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def test_mnist_digits_sent_as_png_files_come_back_as_they_were(mnist: data.MnistData) -> None:
    """Already-MNIST images pass through untouched: a PNG of an MNIST digit whose outer ring of
    pixels is empty (98.9 % of the test set) decodes to exactly the pixels the tensor path makes
    of the same digit, and the others (a stroke touching the edge) still read as themselves."""
    exact, close = [], []
    for digit in mnist.test_x[:500]:
        decoded = decode(as_png(digit))
        ring_empty = not (digit[0].any() or digit[-1].any() or digit[:, 0].any() or digit[:, -1].any())
        if ring_empty:
            exact.append(np.array_equal(decoded, normalize_pixels(digit[None], "x")[0]))
        else:
            close.append(corr(decoded, digit) > 0.85)
    assert len(exact) >= 480 and all(exact), (len(exact), exact.count(False))
    assert all(close), close


def test_only_mnist_form_passes_through_untouched(mnist: data.MnistData) -> None:
    """Not in MNIST's form, a 28×28 image takes the photo steps: dark ink on white (polarity
    found, then framed), one grey pixel on the edge (a photo's ground is never exactly black)."""
    digit = mnist.test_x[0]
    untouched = normalize_pixels(digit[None], "x")[0]
    inverted = decode(as_png(255 - digit))
    assert not np.array_equal(inverted, untouched) and corr(inverted, digit) > 0.85
    edged = digit.copy()
    edged[0, 0] = 1
    assert not np.array_equal(decode(as_png(edged)), untouched)
    assert already_mnist(Image.fromarray(digit)) is not None
    assert already_mnist(Image.fromarray(edged)) is None
    assert already_mnist(Image.fromarray(np.zeros((28, 28), np.uint8))) is None  # blank: NoDigit


# ---------------------------------------------------------------------------------- hard cases

@pytest.mark.parametrize("light_on_dark", [False, True])
@pytest.mark.parametrize("shading", [0.0, 0.6, -0.6])
def test_polarity_holds_under_uneven_light(light_on_dark: bool, shading: float) -> None:
    ink = glyph(4)
    decoded = decode(photo(ink, light_on_dark=light_on_dark, shading=shading))
    assert corr(decoded, frame(ink, ink > 0)) > 0.85


def test_a_bold_digit_filling_the_frame_keeps_its_polarity() -> None:
    ink = np.asarray(Image.fromarray((glyph(8, 80) * 255).astype(np.uint8)).filter(
        ImageFilter.MaxFilter(9)), np.float32) / 255
    decoded = decode(photo(ink, side=100, shading=0.5))
    assert corr(decoded, frame(ink, ink > 0)) > 0.85


def test_tiny_digits_on_a_large_canvas(mnist: data.MnistData) -> None:
    """Handwritten digits 10–25 px tall on 300–420 px photos: the full-resolution second look
    makes them readable (nearest neighbours: measured 72 %; 47 % without it)."""
    rng = np.random.default_rng(5)
    inputs, labels = [], []
    for i in range(100):
        label, height = i % 10, int(rng.integers(10, 26))
        digit = mnist.test_x[rng.choice(np.flatnonzero(mnist.test_y == label))]
        ink = np.asarray(Image.fromarray(digit).resize((height, height), Image.Resampling.BICUBIC),
                         np.float32) / 255
        blob = photo(ink, side=int(rng.integers(300, 421)), noise=4, seed=i,
                     at=(int(rng.integers(10, 250)), int(rng.integers(10, 250))))
        inputs.append(decode(blob))
        labels.append(label)
    assert nearest_neighbour_accuracy(mnist, np.stack(inputs), labels) >= 0.65


def test_a_digit_touching_the_border() -> None:
    ink = glyph(7, 150)
    blob = photo(ink, side=200, at=(-10, 60))  # the top of the 7 is cut by the edge
    visible = ink[10:]
    assert corr(decode(blob), frame(visible, visible > 0)) > 0.85


def test_specks_and_a_paper_edge_are_not_the_digit() -> None:
    side = 260
    clean = np.zeros((side, side), np.float32)
    clean[80:180, 80:180] = glyph(3, 100)
    cover = clean.copy()
    cover[:, :12] = 1.0  # the table beside the sheet
    rng = np.random.default_rng(1)
    for y, x in rng.integers(20, side - 20, (12, 2)):
        cover[y: y + 3, x: x + 3] = 1.0  # dust
    assert corr(decode(photo(cover, side=side, at=(0, 0))),
                decode(photo(clean, side=side, at=(0, 0)))) > 0.95


# ------------------------------------------------------------------------------- modes, blanks

def _in_mode(mode: str) -> Image.Image:
    ink = glyph(5, 60)
    dark = (255 - 215 * ink).astype(np.uint8)  # dark strokes on white
    if mode == "LA":  # light strokes on a transparent canvas
        return Image.fromarray(np.dstack([np.full_like(dark, 255), (255 * ink).astype(np.uint8)]), "LA")
    if mode == "P-transparent":
        image = Image.fromarray(dark).convert("P")
        image.info["transparency"] = int(np.asarray(image)[0, 0])
        return image
    if mode == "I;16":
        return Image.fromarray(dark.astype(np.uint16) * 257)
    if mode == "F":
        return Image.fromarray(dark.astype(np.float32) / 255)
    return Image.fromarray(dark).convert(mode)


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "LA", "P", "P-transparent", "I;16", "I", "F",
                                  "1", "CMYK"])
def test_every_mode_gives_the_same_digit(mode: str) -> None:
    reference = mnist_from_image(Image.fromarray((255 - 215 * glyph(5, 60)).astype(np.uint8)))[0]
    assert corr(mnist_from_image(_in_mode(mode))[0], reference) > 0.9


def test_a_phone_photo_is_read_upright_by_its_exif_orientation() -> None:
    upright = Image.open(io.BytesIO(photo(glyph(7), side=200)))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display": the sensor stored it turned left
    buf = io.BytesIO()
    upright.transpose(Image.Transpose.ROTATE_90).save(buf, "JPEG", exif=exif)
    assert corr(decode(buf.getvalue()), mnist_from_image(upright)[0]) > 0.95


@pytest.mark.parametrize("image", [
    Image.new("L", (64, 64), 255),
    Image.new("RGB", (300, 200), (20, 20, 20)),
    Image.new("RGBA", (40, 40), (0, 0, 0, 0)),
    Image.fromarray(np.random.default_rng(0).normal(128, 10, (200, 200)).clip(0, 255).astype(np.uint8)),
    Image.fromarray(np.linspace(60, 230, 300)[None].repeat(300, 0).astype(np.uint8)),  # shading only
    Image.new("L", (1, 1), 0),
], ids=["white", "black", "transparent", "noise", "gradient", "one-pixel"])
def test_a_blank_image_is_a_clear_400(image: Image.Image) -> None:
    with pytest.raises(NoDigit, match="no digit found") as raised:
        mnist_from_image(image)
    assert isinstance(raised.value, InvalidInput)


def test_preview_is_the_model_input_as_a_png() -> None:
    digit = mnist_from_image(_in_mode("L"))
    png = Image.open(io.BytesIO(base64.b64decode(preview_png(digit))))
    assert (png.mode, png.size) == ("L", (28, 28))
    assert np.abs(np.asarray(png) / 255 - digit[0]).max() <= 0.5 / 255 + 1e-6


# ---------------------------------------------------------------------------------------- HTTP

def test_preview_over_http(server, photo_set: list[photos.Photo]) -> None:
    blob = photo_set[3].data
    with server.client() as client:
        plain = client.post("/v1/models/mnist-cnn/predict", content=blob,
                            headers={"content-type": "image/jpeg"})
        shown = client.post("/v1/models/mnist-cnn/predict?preview=1", content=blob,
                            headers={"content-type": "image/jpeg"})
    assert plain.status_code == shown.status_code == 200
    assert "preview" not in plain.json()["predictions"][0]
    answer = shown.json()["predictions"][0]
    seen = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["preview"]))), np.float32) / 255
    assert np.abs(seen - decode(blob)).max() <= 0.5 / 255 + 1e-6
    assert answer["digit"] == plain.json()["predictions"][0]["digit"]


def test_blank_image_over_http_is_a_400(server) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (120, 90), (240, 240, 235)).save(buf, "PNG")
    with server.client() as client:
        answer = client.post("/v1/models/mnist-fc/predict", content=buf.getvalue(),
                             headers={"content-type": "image/png"})
    assert answer.status_code == 400
    assert "no digit found" in answer.json()["error"]


def test_a_blank_file_in_a_multipart_upload_is_named(server) -> None:
    digit, blank = io.BytesIO(), io.BytesIO()
    Image.new("L", (28, 28), 255).save(blank, "PNG")
    canvas = Image.new("L", (64, 64), 255)
    canvas.paste(0, (28, 10, 36, 54))  # a dark "1"
    canvas.save(digit, "PNG")
    files = [("images", ("one.png", digit.getvalue(), "image/png")),
             ("images", ("empty-page.png", blank.getvalue(), "image/png"))]
    with server.client() as client:
        answer = client.post("/v1/models/mnist-fc/predict", files=files)
    assert answer.status_code == 400
    assert "empty-page.png" in answer.json()["error"] and "no digit found" in answer.json()["error"]
