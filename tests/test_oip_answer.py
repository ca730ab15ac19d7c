"""An OIP inference answer on the hot path (issue 15): ``protocol.infer`` hands back a pre-encoded
answer (``services.http.Encoded``) that ``routes.HotEndpoint`` sends as two ASGI messages with
every header an OIP client needs — and the documented FastAPI copy of the route answers the very
same bytes. Plus what every answer runs: the codec's datatype lookup (every datatype, either
byte order), aligned binary tensors, the pixel checks and the softmax.

In-process over the tiny real ONNX models of ``tests/kinds_support.py``: seconds."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import orjson
import pytest
from starlette.testclient import TestClient

from services import codecs, oip_codec, routes
from services.dataplane import DataPlane
from services.errors import InvalidInput
from services.http import Encoded
from services.kinds.base import labels_bytes
from services.routes import create_app, hot_app
from tests.kinds_support import plane_of

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

PATH = "/v2/models/mnist-fc/infer"
IMAGE = np.random.default_rng(3).random((2, 784), dtype=np.float32)


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DataPlane]:
    with plane_of(tmp_path_factory.mktemp("oip-answer")) as plane:
        yield plane


def _request(binary: bool, extra: dict[str, Any] | None = None) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """An mnist-fc inference request of ``IMAGE``, binary in and (``binary``) binary out."""
    header = orjson.dumps({"id": "7", "inputs": [{
        "name": "image", "datatype": "FP32", "shape": list(IMAGE.shape),
        "parameters": {"binary_data_size": IMAGE.nbytes}}],
        "parameters": {"binary_data_output": binary}, **(extra or {})})
    body = header + IMAGE.tobytes()
    return body, [(b"content-type", b"application/octet-stream"), (b"content-length", b"%d" % len(body)),
                  (b"inference-header-content-length", b"%d" % len(header))]


def _drive(app: Any, body: bytes, headers: list[tuple[bytes, bytes]]) -> list[dict[str, Any]]:
    """The ASGI messages ``app`` sends for one POST to ``PATH``."""
    scope = {"type": "http", "http_version": "1.1", "method": "POST", "path": PATH,
             "raw_path": PATH.encode(), "query_string": b"", "root_path": "", "scheme": "http",
             "server": ("127.0.0.1", 1), "client": ("127.0.0.1", 2), "headers": headers}
    sent: list[dict[str, Any]] = []
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


def _strings(raw: bytes) -> list[str]:
    """BYTES elements: each a 4-byte little-endian length, then the bytes."""
    out, at = [], 0
    while at < len(raw):
        size = int.from_bytes(raw[at:at + 4], "little")
        out.append(raw[at + 4:at + 4 + size].decode())
        at += 4 + size
    return out


def _outputs(body: bytes, length: int | None) -> dict[str, np.ndarray]:
    """The answer's output tensors, binary or JSON."""
    header = orjson.loads(body if length is None else body[:length])
    out, at = {}, length or 0
    for entry in header["outputs"]:
        size = entry.get("parameters", {}).get("binary_data_size")
        if entry["datatype"] == "BYTES":
            out[entry["name"]] = entry["data"] if size is None else _strings(body[at:at + size])
        elif size is None:
            out[entry["name"]] = np.reshape(entry["data"], entry["shape"])
        else:
            out[entry["name"]] = np.frombuffer(body[at:at + size], np.float32).reshape(entry["shape"])
        at += size or 0
    assert at == (len(body) if length is not None else 0)  # the binary parts fill the body exactly
    return out


@pytest.mark.parametrize("binary", [True, False])
def test_the_hot_app_sends_an_oip_answer_as_two_messages_with_every_header(
        plane: DataPlane, binary: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    def not_on_the_hot_path(*_: Any) -> None:
        raise AssertionError("an OIP answer went through Response headers (routes._finish)")

    monkeypatch.setattr(routes, "_finish", not_on_the_hot_path)
    start, last = _drive(hot_app(plane), *_request(binary))
    assert start["type"] == "http.response.start" and last["type"] == "http.response.body"
    assert start["status"] == 200 and not last.get("more_body", False)
    headers = dict(start["headers"])
    assert len(headers) == len(start["headers"])  # each header once
    version = plane.repo().stable["mnist-fc"]
    assert headers[b"podium-model"] == b"mnist-fc" and headers[b"podium-model-version"] == version.encode()
    assert headers[b"content-length"] == b"%d" % len(last["body"])
    if binary:
        assert headers[b"content-type"] == b"application/octet-stream"
        length: int | None = int(headers[b"inference-header-content-length"])
    else:
        assert headers[b"content-type"] == b"application/json"
        assert b"inference-header-content-length" not in headers
        length = None
    answer = orjson.loads(last["body"][:length])
    assert (answer["model_name"], answer["model_version"], answer["id"]) == ("mnist-fc", version, "7")
    out = _outputs(last["body"], length)
    assert out["probabilities"].shape == (2, 10)
    assert np.allclose(out["probabilities"].sum(axis=1), 1, atol=1e-5)
    assert out["label"] == [str(d) for d in out["probabilities"].argmax(axis=1)]


@pytest.mark.parametrize("binary", [True, False])
def test_the_documented_fastapi_route_answers_the_same_bytes(plane: DataPlane, binary: bool) -> None:
    body, headers = _request(binary)
    start, last = _drive(hot_app(plane), body, headers)
    with TestClient(create_app(plane)) as client:
        r = client.post(PATH, content=body, headers={k.decode(): v.decode() for k, v in headers})
    assert r.status_code == 200 and r.content == last["body"]
    hot = {k.decode(): v.decode() for k, v in start["headers"]}
    assert {k: r.headers[k] for k in hot} == hot


def test_oip_mistakes_on_the_hot_app_stay_json_errors_with_the_version_headers(plane: DataPlane) -> None:
    wrong = {"outputs": [{"name": "nope", "parameters": {"binary_data": True}}]}
    start, last = _drive(hot_app(plane), *_request(True, wrong))
    headers = dict(start["headers"])
    assert start["status"] == 400 and headers[b"content-type"] == b"application/json"
    assert headers[b"podium-model"] == b"mnist-fc"
    assert "unknown output 'nope'" in orjson.loads(last["body"])["error"]


def test_an_encoded_answer_is_a_response_carrying_its_headers_once() -> None:
    answer = Encoded(b"abc", b"application/octet-stream", ((b"x-one", b"1"),))
    assert answer.status_code == 200 and answer.body == b"abc"
    assert answer.headers["content-length"] == "3" and answer.headers["x-one"] == "1"
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(answer.send(send, ((b"x-two", b"2"),)))
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[0]["headers"] == [(b"content-type", b"application/octet-stream"),
                                  (b"content-length", b"3"), (b"x-one", b"1"), (b"x-two", b"2")]


@pytest.mark.parametrize("datatype", sorted(oip_codec.DTYPES))
@pytest.mark.parametrize("order", ["<", ">"])
def test_datatype_of_names_every_datatype_in_either_byte_order(datatype: str, order: str) -> None:
    dtype = oip_codec.DTYPES[datatype]
    array = np.zeros(3, dtype=dtype if dtype.byteorder == "|" else dtype.newbyteorder(order))
    assert oip_codec.datatype_of(array) == datatype


def test_a_big_endian_output_goes_out_little_endian_and_row_major() -> None:
    array = np.arange(6, dtype=">f4").reshape(2, 3).T  # big-endian and not C-contiguous
    body, length = oip_codec.encode_response({}, [("t", array, True)])
    assert length is not None
    (entry,) = orjson.loads(body[:length])["outputs"]
    assert entry["shape"] == [3, 2] and entry["datatype"] == "FP32"
    assert np.frombuffer(body[length:], "<f4").reshape(3, 2).tolist() == array.tolist()


@pytest.mark.parametrize("pad", range(8))
def test_binary_tensors_come_out_aligned_whatever_the_header_length(pad: int) -> None:
    """The tensor bytes start where the JSON header ends; NumPy's unaligned loops are slower (the
    pixel checks of every image request), so the codec hands out aligned arrays."""
    array = np.arange(12, dtype=np.float64).reshape(3, 4)
    header = orjson.dumps({"inputs": [{"name": "t", "datatype": "FP64", "shape": [3, 4],
                                       "parameters": {"binary_data_size": array.nbytes}}]}) + b" " * pad
    decoded = oip_codec.decode_request(header + array.tobytes(), str(len(header)))
    got = decoded.inputs["t"].array
    assert got.flags.aligned and got.dtype == np.dtype("<f8") and (got == array).all()


# -- the pixel checks and the softmax every OIP image answer runs (services.codecs) -------------

@pytest.mark.parametrize(("bad", "message"), [
    (np.nan, "NaN or infinity"), (np.inf, "NaN or infinity"), (-np.inf, "NaN or infinity"),
    (1.5, "must be in [0, 1]"), (-0.1, "must be in [0, 1]")])
@pytest.mark.parametrize("where", [0, 783])
def test_the_two_pass_pixel_check_still_names_each_bad_pixel(bad: float, message: str, where: int) -> None:
    pixels = np.full((2, 1, 28, 28), 0.5, np.float32)
    pixels.reshape(-1)[784 + where] = bad
    with pytest.raises(InvalidInput, match=re.escape(message)):
        codecs.normalize_pixels(pixels, "image")
    assert codecs.normalize_pixels(np.clip(np.nan_to_num(pixels), 0, 1), "image").dtype == np.float32


@pytest.mark.parametrize("rows", [2, codecs.SMALL_SCORES // 10 + 1])  # the Python path, NumPy's
def test_softmax_of_odd_rows_matches_numpys_in_either_path(rows: int) -> None:
    logits = np.zeros((rows, 10), np.float32)
    logits[0, 3] = np.nan  # NaN anywhere in a row: the whole row NaN
    logits[-1, :] = -np.inf
    logits[-1, 2] = 0.0  # -inf elsewhere: probability 0
    got = codecs.softmax(logits)
    assert np.isnan(got[0]).all()
    assert got[-1, 2] == 1.0 and (np.delete(got[-1], 2) == 0).all()


def test_labels_bytes_takes_from_one_encoded_table_without_sharing_it() -> None:
    labels = ("zero", "one", "two")
    first = labels_bytes(labels, np.array([2, 0, 2]))
    assert first.dtype == object and first.tolist() == [b"two", b"zero", b"two"]
    first[0] = b"changed"  # an answer is its own array
    assert labels_bytes(labels, np.array([2])).tolist() == [b"two"]
    with pytest.raises(IndexError):
        labels_bytes(labels, np.array([3]))


def test_softmax_in_place_matches_the_textbook_and_keeps_float32() -> None:
    for shape in ((4, 10), (1, 10), (1024, 10), (3, 1000), (64, 1), (100, 1000)):
        logits = np.random.default_rng(5).normal(0, 20, shape).astype(np.float32)
        got = codecs.softmax(logits)
        exp = np.exp(logits.astype(np.float64) - logits.max(axis=1, keepdims=True))
        assert got.dtype == np.float32 and got.shape == shape and got.flags.c_contiguous
        assert np.allclose(got, exp / exp.sum(axis=1, keepdims=True), atol=1e-6)
        assert not np.shares_memory(got, logits)


def test_an_all_binary_answers_cached_head_is_the_one_built_afresh() -> None:
    """Issue 15: an all-binary answer without an ``id`` takes its JSON header from a cache keyed
    by what decides it; the bytes equal the header built afresh (the general path, via an output
    asked as JSON first), for several batch sizes and label lengths; an ``id`` is never cached
    (each request's own); the cache stays bounded."""
    oip_codec._heads.clear()
    header = {"model_name": "m", "model_version": "1"}
    for n in (1, 2, 1, 5, 1):
        for labels in ([b"7"] * n, [b"seven"] * n):
            outs = [("logits", np.arange(10 * n, dtype=np.float32).reshape(n, 10), True),
                    ("label", np.array(labels, dtype=object), True)]
            body, length = oip_codec.encode_response(header, outs)
            assert length is not None
            entries = orjson.loads(body[:length])["outputs"]
            assert [e["shape"] for e in entries] == [[n, 10], [n]]
            assert entries[1]["parameters"]["binary_data_size"] == n * (4 + len(labels[0]))
            assert body[length:] == outs[0][1].tobytes() + b"".join(
                len(b).to_bytes(4, "little") + b for b in labels)
            # the general path (one output as JSON) writes the same entries for the binary one
            mixed, mixed_length = oip_codec.encode_response(header, [outs[0], ("x", outs[0][1], False)])
            assert orjson.loads(mixed[:mixed_length])["outputs"][0] == entries[0]
    assert len(oip_codec._heads) == 6  # three batch sizes × two label lengths: one head each
    with_id, id_length = oip_codec.encode_response({**header, "id": "r1"}, outs)
    assert orjson.loads(with_id[:id_length])["id"] == "r1" and len(oip_codec._heads) == 6
    for n in range(3 * oip_codec._HEADS_MAX):
        oip_codec.encode_response(header, [("t", np.zeros((n + 1, 1), np.float32), True)])
        assert len(oip_codec._heads) <= oip_codec._HEADS_MAX
