"""Locust users for Podium: every model, every input form, real test-split payloads, checked
answers.

    locust -f loadtests/locustfile.py --host http://127.0.0.1:3000            # web UI
    locust -f loadtests/locustfile.py --host http://127.0.0.1:3000 MnistCnnJson   # one user class

User classes (``{Model}{Form}``): for each MNIST model (MnistFc, MnistCnn, MnistGooglenet,
MnistResnet) ``Json`` (``{"instances": [N,784]}`` 0–255 pixels), ``Npy`` (an ``.npy`` batch),
``Image`` (one PNG body), ``Multipart`` (several PNG files) and ``Oip`` (Open Inference Protocol
``/v2/models/{m}/infer``); ``DiabetesRows``, ``DiabetesOip``; ``CharRnnGenerate``,
``CharRnnNext``. Every response is checked (``loadtests.checks``): status, model, version header,
one prediction per input, valid labels and probabilities; a wrong answer is a Locust failure.
Right-or-wrong against the test label is counted too and reported as accuracy under load.

Custom arguments (also in the web UI, and as environment variables):
  --weights / PODIUM_LOAD_WEIGHTS   mixed-traffic weights, ``key=w,...``; a key is a class name,
                                    a model (``mnist-cnn``), a form (``oip``) or ``*``; later
                                    entries win; weight 0 drops the class. Default: the profile
                                    in ``DEFAULT_WEIGHTS``.
  --batch / PODIUM_LOAD_BATCH       inputs per request for batch forms; 0 = per-form default
  --rps / PODIUM_LOAD_RPS           total request rate to pace to (0 = closed loop, no wait)
  --gen-chars                       characters per char-rnn generate request (default 32)
  --payload-cache                   payload cache (built on first use by loadtests.prepare)
  --interval-log                    append per-interval latency/failure stats (JSON lines)
  --allow-remote                    permit a non-loopback --host (refused by default)

Runs in its own process: it reads the payload cache (NumPy, JSON, PNG bytes) and never imports
torch or the training code.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import random
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gevent
import numpy as np
from locust import events, task
from locust.contrib.fasthttp import FastHttpUser
from locust.user.wait_time import constant_throughput

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _path in (str(ROOT), str(HERE)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from checks import (  # noqa: E402  (path set above so `locust -f` works from anywhere)
    VERSION_HEADER,
    Invalid,
    check_diabetes,
    check_digits,
    check_envelope,
    check_generate,
    check_next,
    check_oip,
)
from traffic import DEFAULT_BATCH, UserSpec, is_loopback, resolve_weights, user_specs  # noqa: E402

from models.catalog import CATALOG, DIABETES_FEATURES  # noqa: E402  (torch-free)

log = logging.getLogger("podium.loadtest")

DEFAULT_CACHE = ROOT / "runs" / "loadtest-cache"
POOL = 256  # distinct pre-serialised bodies per (form, batch): varied inputs, cheap to send
TOP_K = 3
NEXT_TOP_K = 5
ACCURACY: dict[str, list[int]] = {}  # request name → [correct, total]


# ------------------------------------------------------------------------------ payloads

@dataclass(frozen=True)
class Body:
    data: bytes
    content_type: str
    labels: tuple[int, ...]


class Payloads:
    """Request bodies built from the cached test splits, serialised once per (form, batch)."""

    def __init__(self, cache: Path) -> None:
        if not (cache / "manifest.json").is_file():
            log.info("building the payload cache in %s (python -m loadtests.prepare)", cache)
            # Its own process: the data loaders live beside torch, which Locust must not import.
            subprocess.run([sys.executable, "-m", "loadtests.prepare", "--cache", str(cache)],
                           cwd=ROOT, check=True)
        mnist = np.load(cache / "mnist.npz")
        self.images, self.digits = mnist["x"], mnist["y"]
        self.pngs = [(p.read_bytes(), int(p.stem.split("_")[1]))
                     for p in sorted((cache / "png").glob("*.png"))]
        pima = json.loads((cache / "pima.json").read_text())
        if pima["features"] != list(DIABETES_FEATURES):
            raise RuntimeError(f"{cache}: stale payload cache (features differ); rebuild it")
        self.rows, self.outcomes = pima["rows"], pima["labels"]
        self.prompts: list[str] = json.loads((cache / "prompts.json").read_text())
        self.rng = np.random.default_rng(0)
        self._bodies: dict[tuple[str, int], list[Body]] = {}

    def _picks(self, n: int, batch: int) -> list[np.ndarray]:
        return [self.rng.choice(n, size=batch, replace=False) for _ in range(POOL)]

    def bodies(self, form: str, batch: int) -> list[Body]:
        key = (form, batch)
        if key not in self._bodies:
            self._bodies[key] = self._build(form, batch)
        return self._bodies[key]

    def _build(self, form: str, batch: int) -> list[Body]:
        if form == "json":
            return [Body(json.dumps({"instances": self.images[i].reshape(batch, 784).tolist(),
                                     "top_k": TOP_K}).encode(), "application/json",
                         tuple(self.digits[i].tolist())) for i in self._picks(len(self.images), batch)]
        if form == "npy":
            out = []
            for i in self._picks(len(self.images), batch):
                buf = io.BytesIO()
                np.save(buf, self.images[i][:, None])  # uint8 [N,1,28,28]
                out.append(Body(buf.getvalue(), "application/x-npy", tuple(self.digits[i].tolist())))
            return out
        if form == "image":
            return [Body(png, "image/png", (label,)) for png, label in self.pngs]
        if form == "multipart":
            return [self._multipart(i) for i in self._picks(len(self.pngs), batch)]
        if form == "oip-image":
            return [self._oip("image", [batch, 1, 28, 28],
                              np.round(self.images[i] / 255.0, 4).reshape(-1).tolist(),
                              self.digits[i]) for i in self._picks(len(self.images), batch)]
        if form == "rows":
            # Alternate the two accepted row shapes: named fields and plain 8-number lists.
            return [Body(json.dumps({"rows": [dict(zip(DIABETES_FEATURES, self.rows[j], strict=True))
                                              if k % 2 else self.rows[j] for k, j in enumerate(i)]}
                                    ).encode(), "application/json",
                         tuple(self.outcomes[j] for j in i)) for i in self._picks(len(self.rows), batch)]
        if form == "oip-rows":
            return [self._oip("features", [batch, 8],
                              [v for j in i for v in self.rows[j]],
                              np.asarray([self.outcomes[j] for j in i]))
                    for i in self._picks(len(self.rows), batch)]
        raise ValueError(f"unknown payload form {form!r}")

    def _multipart(self, picks: np.ndarray) -> Body:
        boundary = uuid.uuid4().hex
        parts = []
        for k in picks:
            png, _ = self.pngs[k]
            parts.append(f"--{boundary}\r\nContent-Disposition: form-data; name=\"images\"; "
                         f"filename=\"{k}.png\"\r\nContent-Type: image/png\r\n\r\n".encode()
                         + png + b"\r\n")
        data = b"".join(parts) + f"--{boundary}--\r\n".encode()
        return Body(data, f"multipart/form-data; boundary={boundary}",
                    tuple(self.pngs[k][1] for k in picks))

    @staticmethod
    def _oip(name: str, shape: list[int], data: list[float], labels: np.ndarray) -> Body:
        request = {"id": uuid.uuid4().hex[:8],
                   "inputs": [{"name": name, "shape": shape, "datatype": "FP32", "data": data}]}
        return Body(json.dumps(request).encode(), "application/json", tuple(labels.tolist()))


@functools.cache
def payloads(cache: str) -> Payloads:
    return Payloads(Path(cache))


# ------------------------------------------------------------------------------ options

@events.init_command_line_parser.add_listener
def _arguments(parser: Any) -> None:
    parser.add_argument("--weights", env_var="PODIUM_LOAD_WEIGHTS", default="",
                       help="mixed-traffic weights key=w,... (key: class, model, form or *)")
    parser.add_argument("--batch", env_var="PODIUM_LOAD_BATCH", type=int, default=0,
                       help="inputs per request for batch forms (0 = per-form default)")
    parser.add_argument("--rps", env_var="PODIUM_LOAD_RPS", type=float, default=0.0,
                       help="total requests/s to pace to (0 = closed loop)")
    parser.add_argument("--gen-chars", env_var="PODIUM_LOAD_GEN_CHARS", type=int, default=32,
                       help="characters per char-rnn generate request")
    parser.add_argument("--payload-cache", env_var="PODIUM_LOAD_CACHE", default=str(DEFAULT_CACHE),
                       help="payload cache folder (built on first use)")
    parser.add_argument("--interval-log", env_var="PODIUM_LOAD_INTERVAL_LOG", default="",
                       include_in_web_ui=False, help="append per-interval stats here (JSON lines)")
    parser.add_argument("--interval-s", env_var="PODIUM_LOAD_INTERVAL_S", type=float, default=10.0,
                       include_in_web_ui=False, help="interval length for --interval-log")
    parser.add_argument("--allow-remote", env_var="PODIUM_LOAD_ALLOW_REMOTE", action="store_true",
                       default=False, help="permit a non-loopback host")


_SELECTED: list[type[PodiumUser]] = []


@events.init.add_listener
def _remember_classes(environment: Any, **_: Any) -> None:
    _SELECTED[:] = [c for c in environment.user_classes if issubclass(c, PodiumUser)]


@events.test_start.add_listener
def _configure(environment: Any, **_: Any) -> None:
    """Loopback check, then the classes to run and their weights (re-read at every start, so
    the web UI's custom parameters apply)."""
    options = environment.parsed_options
    host = environment.host or ""
    if not options.allow_remote and not is_loopback(host):
        log.error("refusing to load %r: not a loopback address (pass --allow-remote to permit)",
                  host)
        environment.runner.quit()
        return
    try:
        weights = resolve_weights(user_specs(), options.weights)
    except ValueError as exc:
        log.error("%s", exc)
        environment.runner.quit()
        return
    chosen = list(_SELECTED)
    if not options.user_classes and MixedTraffic in chosen:
        chosen = [MixedTraffic]  # no classes named: the default is the weighted mix
    MixedTraffic.configure([u for u in user_specs() if weights[u.name] > 0], weights)
    for cls in chosen:
        cls.weight = 1 if cls is MixedTraffic else weights[cls.__name__]
    chosen = [c for c in chosen if c.weight > 0 and (c is not MixedTraffic or c.mix)]
    if not chosen:
        log.error("nothing to run: every user class or request has weight 0 under --weights %r",
                  options.weights)
        environment.runner.quit()
        return
    environment.user_classes[:] = chosen
    log.info("user classes: %s", ", ".join(f"{c.__name__}={c.weight:g}" for c in chosen))
    if MixedTraffic in chosen:
        log.info("mixed traffic: %s", ", ".join(f"{u.name}={w:g}" for u, w in
                                               zip(MixedTraffic.mix, MixedTraffic.mix_weights,
                                                   strict=True)))
    ACCURACY.clear()
    if options.interval_log:
        gevent.spawn(_interval_writer, environment, Path(options.interval_log), options.interval_s)


@events.quitting.add_listener
def _report_accuracy(environment: Any, **_: Any) -> None:
    for name, (correct, total) in sorted(ACCURACY.items()):
        log.info("accuracy under load  %-28s %6.2f %%  (%d of %d inputs)", name,
                 100 * correct / max(total, 1), correct, total)
    options = environment.parsed_options
    if options is not None and options.interval_log:
        with open(options.interval_log, "a") as fh:
            fh.write(json.dumps({"accuracy": {k: {"correct": c, "inputs": t}
                                              for k, (c, t) in ACCURACY.items()}}) + "\n")


def _interval_writer(environment: Any, path: Path, every: float) -> None:
    """Every ``every`` seconds: requests, failures and latency percentiles of that window only."""
    window: list[float] = []
    failures = [0]

    def on_request(response_time: float, exception: Any, **_: Any) -> None:
        window.append(response_time)
        if exception is not None:
            failures[0] += 1

    environment.events.request.add_listener(on_request)
    started = time.monotonic()
    while environment.runner is not None and environment.runner.state not in ("stopped", "quitting"):
        gevent.sleep(every)
        times, window[:] = np.asarray(window), []
        failed, failures[0] = failures[0], 0
        row = {"t": round(time.monotonic() - started, 1), "requests": int(times.size),
               "failures": failed, "rps": round(times.size / every, 2),
               "users": environment.runner.user_count}
        if times.size:
            row.update({f"p{q}_ms": round(float(np.percentile(times, q)), 2) for q in (50, 95, 99)})
        with open(path, "a") as fh:
            fh.write(json.dumps(row) + "\n")


# ------------------------------------------------------------------------------ users

class PodiumUser(FastHttpUser):
    """Sends and checks Podium requests. ``wait_time`` paces to --rps (shared by all users)."""

    abstract = True
    model = ""
    form = ""
    network_timeout = 60.0
    connection_timeout = 10.0

    def wait_time(self) -> float:
        rps = self.environment.parsed_options.rps if self.environment.parsed_options else 0
        if rps <= 0:
            return 0.0
        users = max(1, self.environment.runner.target_user_count or 1)
        return constant_throughput(rps / users)(self)

    @property
    def options(self) -> Any:
        return self.environment.parsed_options

    @property
    def data(self) -> Payloads:
        return payloads(self.options.payload_cache if self.options else str(DEFAULT_CACHE))

    def batch(self, form: str) -> int:
        return (self.options.batch if self.options and self.options.batch > 0 else 0) \
            or DEFAULT_BATCH[form]

    def request(self, model: str, form: str) -> None:
        """One request of ``form`` to ``model``, judged by its check."""
        if form == "oip":
            self._oip(model)
        elif form == "rows":
            self._rows(model)
        elif form == "generate":
            self._generate(model)
        elif form == "next":
            self._next(model)
        else:
            self._image(model, form)

    def post(self, path: str, body: bytes, content_type: str, name: str, check: Any) -> None:
        """POST and judge the answer with ``check(status, headers, parsed_body)``."""
        with self.client.post(path, data=body, headers={"Content-Type": content_type},
                              name=name, catch_response=True) as resp:
            try:
                try:
                    parsed = json.loads(resp.content or b"")
                except ValueError:
                    raise Invalid(f"HTTP {resp.status_code}: body is not JSON") from None
                version = resp.headers.get(VERSION_HEADER) if resp.headers else None
                check(resp.status_code, {VERSION_HEADER: version} if version else {}, parsed)
            except Invalid as exc:
                resp.failure(str(exc))
            else:
                resp.success()

    @staticmethod
    def score(name: str, predicted: list[int], truth: tuple[int, ...]) -> None:
        counts = ACCURACY.setdefault(name, [0, 0])
        counts[0] += sum(int(p == t) for p, t in zip(predicted, truth, strict=True))
        counts[1] += len(truth)

    def _image(self, model: str, form: str) -> None:
        body = random.choice(self.data.bodies(form, 1 if form == "image" else self.batch(form)))
        name = f"{model} {form}[{len(body.labels)}]"

        def check(status: int, headers: dict[str, str], parsed: Any) -> None:
            check_envelope(status, headers, parsed, model)
            self.score(name, check_digits(parsed, len(body.labels), TOP_K), body.labels)

        self.post(f"/v1/models/{model}/predict", body.data, body.content_type, name, check)

    def _oip(self, model: str) -> None:
        tabular = CATALOG[model].kind == "tabular"
        batch = self.batch("oip")
        body = random.choice(self.data.bodies("oip-rows" if tabular else "oip-image", batch))
        output = CATALOG[model].outputs[0]
        shape = [batch, *output.shape[1:]]
        name = f"{model} oip[{batch}]"

        def check(status: int, headers: dict[str, str], parsed: Any) -> None:
            scores = np.asarray(check_oip(status, headers, parsed, model, output.name, shape))
            scores = scores.reshape(shape)
            predicted = (scores[:, 0] >= 0.5).astype(int) if tabular else scores.argmax(axis=1)
            self.score(name, predicted.tolist(), body.labels)

        self.post(f"/v2/models/{model}/infer", body.data, body.content_type, name, check)

    def _rows(self, model: str) -> None:
        body = random.choice(self.data.bodies("rows", self.batch("rows")))
        name = f"{model} rows[{len(body.labels)}]"

        def check(status: int, headers: dict[str, str], parsed: Any) -> None:
            check_envelope(status, headers, parsed, model)
            self.score(name, check_diabetes(parsed, len(body.labels)), body.labels)

        self.post(f"/v1/models/{model}/predict", body.data, body.content_type, name, check)

    def _generate(self, model: str) -> None:
        prompt = random.choice(self.data.prompts)
        chars = self.options.gen_chars if self.options else 32
        request = {"prompt": prompt, "max_new_chars": chars, "temperature": 0.8, "top_k": 10,
                   "seed": random.randrange(2**31)}

        def check(status: int, headers: dict[str, str], parsed: Any) -> None:
            check_envelope(status, headers, parsed, model)
            check_generate(parsed, prompt, chars)

        self.post(f"/v1/models/{model}/generate", json.dumps(request).encode(),
                  "application/json", f"{model} generate[{chars}]", check)

    def _next(self, model: str) -> None:
        prompt = random.choice(self.data.prompts)

        def check(status: int, headers: dict[str, str], parsed: Any) -> None:
            check_envelope(status, headers, parsed, model)
            check_next(parsed, prompt, NEXT_TOP_K)

        self.post(f"/v1/models/{model}/next",
                  json.dumps({"prompt": prompt, "top_k": NEXT_TOP_K}).encode(),
                  "application/json", f"{model} next", check)


class MixedTraffic(PodiumUser):
    """The default: every iteration picks a (model, form) request by the --weights profile."""

    mix: list[UserSpec] = []
    mix_weights: list[float] = []

    @classmethod
    def configure(cls, mix: list[UserSpec], weights: dict[str, float]) -> None:
        cls.mix, cls.mix_weights = mix, [weights[u.name] for u in mix]

    @task
    def mixed(self) -> None:
        pick = random.choices(self.mix, self.mix_weights)[0]
        self.request(pick.model, pick.form)


class SingleRequest(PodiumUser):
    """One (model, form) only; the concrete classes below are named after it."""

    abstract = True

    @task
    def single(self) -> None:
        self.request(self.model, self.form)


# One class per (model, form): MnistCnnJson, MnistCnnNpy, ..., DiabetesRows, CharRnnGenerate.
for _user in user_specs():
    globals()[_user.name] = type(_user.name, (SingleRequest,), {
        "model": _user.model, "form": _user.form, "__module__": __name__,
        "__doc__": f"{_user.form} requests to {_user.model}"})
