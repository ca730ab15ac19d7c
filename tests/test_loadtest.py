"""Load tests (loadtests/): the response checks, the traffic profile, and short real headless
Locust runs against the tiny-store server — every request must pass — plus negative runs that
prove a wrong answer is counted as a failure."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from loadtests import checks, traffic
from loadtests.prepare import DEFAULT_CACHE, prepare
from loadtests.run import read_stats

ROOT = Path(__file__).resolve().parent.parent
LOCUST = str(Path(sys.executable).parent / "locust")
LOCUSTFILE = ROOT / "loadtests" / "locustfile.py"


# ------------------------------------------------------------------------------ checks

def _digit(d: int, p: float = 0.9) -> dict:
    return {"digit": d, "label": str(d), "probability": p,
            "top_k": [{"label": str(d), "probability": p}, {"label": "1", "probability": 0.05},
                      {"label": "2", "probability": 0.01}]}


GOOD = {"model": "mnist-fc", "version": "abc", "predictions": [_digit(7), _digit(2)]}
HEADERS = {"Podium-Model-Version": "abc"}


def test_checks_accept_a_good_answer() -> None:
    assert checks.check_envelope(200, HEADERS, GOOD, "mnist-fc") == "abc"
    assert checks.check_digits(GOOD, 2, 3) == [7, 2]
    body = {"predictions": [{"probability": 0.7, "label": "positive"},
                            {"probability": 0.2, "label": "negative"}]}
    assert checks.check_diabetes(body, 2) == [1, 0]
    checks.check_next({"prompt": "In", "next": [{"char": " ", "probability": 0.5},
                                                {"char": "e", "probability": 0.3}]}, "In", 2)
    checks.check_oip(200, {}, {"model_name": "mnist-fc", "model_version": "abc", "outputs": [
        {"name": "logits", "shape": [1, 10], "datatype": "FP32", "data": [[0.1] * 10]}]},
        "mnist-fc", "logits", [1, 10])


@pytest.mark.parametrize(("status", "headers", "body", "count", "reason"), [
    (400, HEADERS, {"error": "bad"}, 2, "HTTP 400"),
    (200, {}, GOOD, 2, "no Podium-Model-Version"),
    (200, {"Podium-Model-Version": "zzz"}, GOOD, 2, "header version"),
    (200, HEADERS, {**GOOD, "model": "mnist-cnn"}, 2, "not 'mnist-fc'"),
    (200, HEADERS, GOOD, 3, "2 predictions for 3 inputs"),
    (200, HEADERS, {**GOOD, "predictions": [_digit(7), {**_digit(2), "label": "3"}]}, 2,
     "does not name digit"),
    (200, HEADERS, {**GOOD, "predictions": [_digit(7), _digit(11)]}, 2, "not 0-9"),
    (200, HEADERS, {**GOOD, "predictions": [_digit(7), _digit(2, p=1.5)]}, 2, "[0, 1]"),
])
def test_checks_reject_a_wrong_answer(status: int, headers: dict, body: dict, count: int,
                                      reason: str) -> None:
    with pytest.raises(checks.Invalid, match=reason.replace("[", r"\[").replace("]", r"\]")):
        checks.check_envelope(status, headers, body, "mnist-fc")
        checks.check_digits(body, count, 3)


def test_checks_reject_wrong_diabetes_text_and_oip() -> None:
    with pytest.raises(checks.Invalid, match="disagrees"):
        checks.check_diabetes({"predictions": [{"probability": 0.9, "label": "negative"}]}, 1)
    with pytest.raises(checks.Invalid, match="asked for 10"):
        checks.check_generate({"prompt": "a", "text": "short", "unknown_chars": []}, "a", 10)
    with pytest.raises(checks.Invalid, match="output shape"):
        checks.check_oip(200, {}, {"model_name": "m", "model_version": "1", "outputs": [
            {"name": "logits", "shape": [2, 10], "datatype": "FP32", "data": [0.0] * 20}]},
            "m", "logits", [1, 10])


def test_weights_profile() -> None:
    users = traffic.user_specs()
    names = {u.name for u in users}
    assert {"MnistCnnJson", "MnistResnetOip", "DiabetesRows", "DiabetesOip", "CharRnnGenerate",
            "CharRnnNext"} <= names and len(names) == 4 * 5 + 2 + 2
    weights = traffic.resolve_weights(users, "*=0,mnist-cnn=2,oip=0,CharRnnNext=5")
    assert weights["MnistCnnJson"] == 2 and weights["MnistCnnOip"] == 0
    assert weights["CharRnnNext"] == 5 and weights["DiabetesRows"] == 0
    assert traffic.resolve_weights(users, "")["MnistFcJson"] == traffic.DEFAULT_WEIGHTS["json"]
    with pytest.raises(ValueError, match="name nothing"):
        traffic.resolve_weights(users, "mnist-xl=1")
    with pytest.raises(ValueError, match="bad weight"):
        traffic.resolve_weights(users, "json=-1")
    assert traffic.is_loopback("http://127.0.0.1:3000") and traffic.is_loopback("http://[::1]:1")
    assert not traffic.is_loopback("http://10.0.0.1:3000")


# ------------------------------------------------------------------------------ real runs

@pytest.fixture(scope="module")
def cache() -> Path:
    return prepare(DEFAULT_CACHE)


def locust(url: str, classes: list[str], out: Path, seconds: int = 5, users: int | None = None,
           locustfile: Path = LOCUSTFILE, extra: tuple[str, ...] = ()) -> tuple[int, object]:
    """A headless Locust run; returns its exit code and the aggregated stats."""
    users = users or len(classes)
    prefix = out / "locust"
    proc = subprocess.run(
        [LOCUST, "-f", str(locustfile), "--headless", "--host", url, "-u", str(users), "-r",
         str(users), "-t", f"{seconds}s", "--stop-timeout", "10", "--only-summary", "--csv",
         str(prefix), "--logfile", str(out / "locust.log"), *extra, *classes],
        cwd=ROOT, capture_output=True, text=True, timeout=seconds + 90)
    return proc.returncode, read_stats(Path(f"{prefix}_stats.csv"), "run", users)


def _oip_served(url: str) -> bool:
    return httpx.get(f"{url}/v2", timeout=10).status_code == 200


def test_every_user_class_passes_against_the_server(server, cache: Path, tmp_path: Path) -> None:
    """One user per (model, form) against every tiny model: any failure fails the test."""
    users = [u.name for u in traffic.user_specs(oip=False)]
    code, stats = locust(server.url, users, tmp_path, seconds=8, extra=("--gen-chars", "8"))
    failures = (tmp_path / "locust_failures.csv").read_text()
    assert stats.failures == 0, failures
    assert code == 0
    names = {r["name"].split("[")[0] for r in stats.rows}
    expected = {f"{u.model} {u.form}" for u in traffic.user_specs(oip=False)}
    assert expected <= names, f"never exercised: {expected - names}"


def test_oip_user_classes_pass(server, cache: Path, tmp_path: Path) -> None:
    if not _oip_served(server.url):
        pytest.skip("the Open Inference Protocol (/v2) is not served yet")
    users = [u.name for u in traffic.user_specs() if u.form == "oip"]
    code, stats = locust(server.url, users, tmp_path, seconds=4)
    assert stats.failures == 0, (tmp_path / "locust_failures.csv").read_text()
    assert code == 0 and stats.requests > 0


def test_make_loadtest_path_writes_reports(server, cache: Path, tmp_path: Path) -> None:
    """`python -m loadtests.run once` (what `make loadtest` runs): mixed traffic, CSV + HTML."""
    out = tmp_path / "once"
    proc = subprocess.run([sys.executable, "-m", "loadtests.run", "once", "--host", server.url,
                           "--users", "4", "--run-time", "4", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["result"]["failures"] == 0 and summary["result"]["requests"] > 0
    assert (out / "locust.html").stat().st_size > 0 and (out / "locust_stats.csv").is_file()
    assert summary["accuracy_pct"], "accuracy under load was not recorded"


def test_short_sweep_and_soak(server, cache: Path, tmp_path: Path) -> None:
    run = [sys.executable, "-m", "loadtests.run"]
    sweep = subprocess.run([*run, "sweep", "--host", server.url, "--models", "diabetes",
                            "--no-mixed", "--max-users", "2", "--step-s", "3", "--out",
                            str(tmp_path / "sweep")], cwd=ROOT, capture_output=True, text=True,
                           timeout=240)
    assert sweep.returncode == 0, sweep.stdout + sweep.stderr
    assert "| diabetes |" in (tmp_path / "sweep" / "sweep.md").read_text()
    assert (tmp_path / "sweep" / "sweep.png").stat().st_size > 0
    soak = subprocess.run([*run, "soak", "--host", server.url, "--row", "diabetes",
                           "--capacity", str(tmp_path / "sweep" / "sweep.json"), "--duration",
                           "8", "--warmup", "2", "--sample-s", "1", "--interval-s", "2",
                           "--out", str(tmp_path / "soak")], cwd=ROOT, capture_output=True,
                          text=True, timeout=240)
    summary = json.loads((tmp_path / "soak" / "summary.json").read_text())
    assert summary["result"]["failures"] == 0, soak.stdout + soak.stderr
    assert summary["rss_mib"]["end"] > 0 and summary["latency_drift"]["last_window"]
    assert (tmp_path / "soak" / "rss.csv").read_text().count("\n") > 3


# ------------------------------------------------------------------------------ negative runs

def test_a_wrong_model_is_a_failure(server, cache: Path, tmp_path: Path) -> None:
    """Users pointed at the wrong model: every request must count as failed."""
    wrong = tmp_path / "wrong_locustfile.py"
    wrong.write_text(
        f"import sys\nsys.path.insert(0, {str(ROOT / 'loadtests')!r})\n"
        "from locustfile import SingleRequest\n\n\n"
        "class ImagesToDiabetes(SingleRequest):\n    model, form = 'diabetes', 'json'\n\n\n"
        "class RowsToMnist(SingleRequest):\n    model, form = 'mnist-fc', 'rows'\n")
    code, stats = locust(server.url, [], tmp_path, seconds=3, users=2, locustfile=wrong)
    assert stats.requests > 0 and stats.failures == stats.requests
    assert code != 0


class _LyingHandler(BaseHTTPRequestHandler):
    """200 OK with answers that are wrong in a different way each time."""

    count = 0

    def do_POST(self) -> None:  # noqa: N802  (http.server's name)
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        model = self.path.split("/")[3]
        variants = [
            ({"model": model, "version": "v", "predictions": []}, {"Podium-Model-Version": "v"}),
            ({"model": model, "version": "v", "predictions": [_digit(3)] * 40}, {}),
            ({"model": "other", "version": "v", "predictions": [_digit(3)]},
             {"Podium-Model-Version": "v"}),
            ({"model": model, "version": "v",
              "predictions": [{**_digit(3), "label": "maybe", "probability": 2}] * 4},
             {"Podium-Model-Version": "v"}),
        ]
        body, headers = variants[_LyingHandler.count % len(variants)]
        _LyingHandler.count += 1
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def lying_server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _LyingHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_a_200_with_a_wrong_body_is_a_failure(lying_server: str, cache: Path,
                                              tmp_path: Path) -> None:
    code, stats = locust(lying_server, ["MnistFcJson", "MnistCnnNpy", "DiabetesRows"], tmp_path,
                         seconds=3)
    assert stats.requests > 0 and stats.failures == stats.requests
    assert code != 0


def test_a_remote_host_is_refused(cache: Path, tmp_path: Path) -> None:
    code, stats = locust("http://192.0.2.1:3000", ["MnistFcJson"], tmp_path, seconds=3)
    assert stats.requests == 0
    assert "not a loopback address" in (tmp_path / "locust.log").read_text()
