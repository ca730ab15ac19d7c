"""Version rollout on a real server: canary share, sticky keys and pins, promote and rollback
under concurrent load with zero failed requests, shadow agreement, automatic rollback of a bad
candidate, refusal of a corrupted one, the admin token, the CLI, several workers and restarts."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.launch import serve
from services.rollout import FileStore, Limits, compare, sticky_fraction
from tests.conftest import ROOT

TOKEN = "test-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ROW = {"rows": [[6, 148, 72, 35, 0, 33.6, 0.627, 50], [1, 85, 66, 29, 0, 26.6, 0.351, 31]]}
PREDICT = "/v1/models/diabetes/predict"


def env_for(rollout_versions: dict[str, Any], state: Path, **extra: str) -> dict[str, str]:
    return {"PODIUM_MODELS": '["diabetes"]', "PODIUM_VERSIONS": f'{{"diabetes": "{rollout_versions["v1"]}"}}',
            "PODIUM_ROLLOUT_STATE": str(state), "PODIUM_ROLLOUT_POLL_MS": "50",
            "PODIUM_INTRA_OP_THREADS": "1", **extra}


@pytest.fixture(scope="module")
def server(rollout_versions: dict[str, Any], tmp_path_factory: pytest.TempPathFactory):
    logs = tmp_path_factory.mktemp("rollout-logs")
    with serve(rollout_versions["home"], logs, env_for(rollout_versions, logs / "state.json",
                                              PODIUM_ADMIN_TOKEN=TOKEN)) as running:
        yield running


@pytest.fixture
def client(server):
    with server.client() as c:
        yield c
        state = c.get("/admin/rollout/diabetes", headers=AUTH).json()
        if state.get("candidate"):  # leave no rollout behind for the next test
            c.post("/admin/rollout/diabetes/rollback", headers=AUTH)


def admin(c: httpx.Client, action: str, body: dict[str, Any] | None = None,
          status: int = 200) -> dict[str, Any]:
    r = c.post(f"/admin/rollout/diabetes/{action}", json=body, headers=AUTH)
    assert r.status_code == status, r.text
    return r.json()


def rollout_status(c: httpx.Client) -> dict[str, Any]:
    return c.get("/admin/rollout/diabetes", headers=AUTH).json()["models"]["diabetes"]


def wait_for(check, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


# -- load with a timeline of what may legitimately answer ------------------------------------
class Load:
    """Client threads sending predictions throughout, recording (sent, answered, version)."""

    def __init__(self, url: str, threads: int = 4, new_connections: bool = False) -> None:
        self.url, self.new_connections = url, new_connections
        self.results: list[tuple[float, float, str]] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        client = httpx.Client(base_url=self.url, timeout=30)
        while not self._stop.is_set():
            if self.new_connections:
                client.close()
                client = httpx.Client(base_url=self.url, timeout=30)
            sent = time.monotonic()
            try:
                r = client.post(PREDICT, json=ROW)
                version = r.headers.get("podium-model-version", "")
                if r.status_code != 200 or r.json()["version"] != version:
                    self.failures.append(f"{r.status_code} {r.text[:200]}")
                    continue
            except Exception as exc:
                self.failures.append(repr(exc))
                continue
            self.results.append((sent, time.monotonic(), version))
        client.close()

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)

    def wait(self, n: int, since: float, timeout: float = 60.0) -> None:
        wait_for(lambda: sum(1 for s, _, _ in self.results if s >= since) >= n, timeout)


class Timeline:
    """Which versions may answer when: a change's new set from the moment the call is sent, the
    old set until the call returned plus ``settle`` (the time other workers take to follow)."""

    def __init__(self, allowed: set[str], settle: float) -> None:
        self.settle = settle
        self.spans: list[list[Any]] = [[0.0, float("inf"), set(allowed)]]

    def change(self, allowed: set[str], action) -> Any:
        sent = time.monotonic()
        result = action()
        self.spans[-1][1] = time.monotonic() + self.settle
        self.spans.append([sent, float("inf"), set(allowed)])
        return result

    def illegitimate(self, results: list[tuple[float, float, str]]) -> list[tuple]:
        return [(s, e, v) for s, e, v in results
                if not any(v in ok and s <= end and e >= start for start, end, ok in self.spans)]


# -- unit checks ------------------------------------------------------------------------------
def test_sticky_fraction_is_stable_and_uniform() -> None:
    assert sticky_fraction("alice", "r1") == sticky_fraction("alice", "r1")
    values = [sticky_fraction(f"client-{i}", "r1") for i in range(4000)]
    assert abs(sum(v < 0.2 for v in values) / len(values) - 0.2) < 0.03


def test_compare_labels_and_difference() -> None:
    import numpy as np

    p = np.array([[0.2], [0.7]], np.float32)
    assert compare(p, p) == (2, 2, 0.0)
    agreed, items, diff = compare(p, 1 - p)
    assert (agreed, items) == (0, 2) and diff == pytest.approx(0.6, abs=1e-6)
    logits = np.array([[1.0, 3.0], [2.0, 0.0]])
    assert compare(logits, logits[:, ::-1])[0] == 0


def test_limits_validation() -> None:
    from services.errors import InvalidInput

    base = Limits(60, 20, 0.05, 1000, 0)
    assert base.updated({"max_error_rate": 0.1}).max_error_rate == 0.1
    for bad in ({"max_error_rate": 2}, {"nope": 1}, {"min_agreement": "high"}):
        with pytest.raises(InvalidInput):
            base.updated(bad)


def test_file_store_swaps_on_revision_only(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "state.json")
    assert store.read() is None
    assert store.swap(0, {"revision": 1, "models": {}})
    assert not store.swap(0, {"revision": 1, "models": {"m": {}}})  # a lost race changes nothing
    assert not store.swap(None, {"revision": 9, "models": {}})  # only an unreadable state is replaced
    assert json.loads(store.read()) == {"revision": 1, "models": {}}
    (tmp_path / "state.json").write_text("{damaged")
    assert store.swap(None, {"revision": 2, "models": {}})
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# -- the admin API ----------------------------------------------------------------------------
def test_admin_requires_the_token(client: httpx.Client) -> None:
    r = client.get("/admin/rollout")
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert client.get("/admin/rollout", headers={"Authorization": "Bearer wrong"}).status_code == 403
    assert client.post("/admin/rollout/diabetes/promote").status_code == 401
    assert client.post(PREDICT, json=ROW).status_code == 200  # predictions stay open
    assert client.get("/admin/rollout", headers=AUTH).status_code == 200


def test_admin_validates_input(client: httpx.Client, rollout_versions: dict[str, Any]) -> None:
    r = client.post("/admin/rollout/mnist-cnn/start", json={"version": "x"}, headers=AUTH)
    assert r.status_code == 404 and "not served" in r.json()["error"]
    assert admin(client, "start", {"version": "nosuchversion"}, 404)["error"]
    assert admin(client, "start", {"version": rollout_versions["v2"], "mode": "blue"}, 400)["field"] == "mode"
    assert admin(client, "start", {"version": rollout_versions["v2"], "percent": 150}, 400)
    assert admin(client, "start", {"version": rollout_versions["v2"], "limits": {"max_error_rate": 3}}, 400)
    assert admin(client, "start", {"version": rollout_versions["v1"]}, 409)["error"].endswith(
        "already the stable version")
    assert "no rollout" in admin(client, "promote", None, 409)["error"]
    refused = admin(client, "start", {"version": rollout_versions["corrupt"]}, 422)["error"]
    assert "checksum" in refused and f"{rollout_versions['v1']} keeps serving" in refused
    r = client.post(PREDICT, json=ROW)
    assert r.status_code == 200 and r.headers["podium-model-version"] == rollout_versions["v1"]
    assert rollout_status(client)["candidate"] is None


def test_latest_prefix_and_unknown_versions(client: httpx.Client, rollout_versions: dict[str, Any],
                                            server) -> None:
    v1, v2 = rollout_versions["v1"], rollout_versions["v2"]
    started = admin(client, "start", {"version": v2[:5], "percent": 0})  # a unique prefix
    assert started["event"]["candidate"] == v2 and started["status"]["candidate"] == v2
    admin(client, "rollback")
    assert "not in the model store" in admin(client, "promote", {"version": "nosuch"}, 404)["error"]
    assert rollout_status(client)["stable"] == v1  # nothing changed
    promoted = admin(client, "promote", {"version": "latest"})  # the newest: stored as its version
    assert promoted["event"]["to"] == v2 and promoted["status"]["stable"] == v2
    r = client.post(PREDICT, json=ROW)
    assert r.status_code == 200 and r.headers["podium-model-version"] == v2
    assert client.get("/v1/models/diabetes").json()["stable"] == v2
    admin(client, "rollback")
    # a stored state naming no exact version (written by hand, or by an older Podium) is refused
    path = Path(client.get("/admin/rollout", headers=AUTH).json()["store"])
    state = json.loads(path.read_text())
    good = json.dumps(state)
    state["revision"] += 1
    state["models"]["diabetes"]["stable"] = "latest"
    path.write_text(json.dumps(state))
    wait_for(lambda: "'latest' is not a full version of diabetes" in server.logs(), timeout=10)
    r = client.post(PREDICT, json=ROW)
    assert r.status_code == 200 and r.headers["podium-model-version"] == v1
    info = client.get("/v1/models/diabetes")
    assert info.status_code == 200 and info.json()["stable"] == v1
    state = json.loads(good)
    state["revision"] += 2
    path.write_text(json.dumps(state))  # repaired: the next revision applies again


def test_canary_promote_rollback_under_load(server, client: httpx.Client,
                                            rollout_versions: dict[str, Any]) -> None:
    v1, v2 = rollout_versions["v1"], rollout_versions["v2"]
    timeline = Timeline({v1}, settle=0.05)
    with Load(server.url) as load:
        load.wait(100, 0)
        timeline.change({v1, v2}, lambda: admin(client, "start", {
            "version": v2, "percent": 20, "limits": {"max_p99_ms": 0}}))
        canary_from = time.monotonic()
        load.wait(2000, canary_from)
        # a client key sticks to one side; a pin picks a side
        for key in ("alice", "bob", "carol"):
            seen = {client.post(PREDICT, json=ROW, headers={"Podium-Client-Key": key})
                    .headers["podium-model-version"] for _ in range(10)}
            assert len(seen) == 1
        for side, version in (("candidate", v2), ("stable", v1)):
            r = client.post(PREDICT, json=ROW, headers={"Podium-Pin": side})
            assert r.headers["podium-model-version"] == version
        assert client.post(PREDICT, json=ROW, headers={"Podium-Pin": "left"}).status_code == 400
        canary_to = time.monotonic()
        timeline.change({v2}, lambda: admin(client, "promote"))
        promoted = time.monotonic()
        load.wait(300, promoted)
        rolling_back = time.monotonic()
        timeline.change({v1}, lambda: admin(client, "rollback", {"reason": "test"}))
        rolled_back = time.monotonic()
        load.wait(300, rolled_back)

    assert load.failures == []
    assert timeline.illegitimate(load.results) == []
    canary = Counter(v for s, e, v in load.results if s >= canary_from and e <= canary_to)
    share = 100 * canary[v2] / sum(canary.values())
    assert sum(canary.values()) >= 1000 and abs(share - 20) <= 3, canary
    assert {v for s, e, v in load.results if s > promoted and e < rolling_back} == {v2}
    assert {v for s, _, v in load.results if s > rolled_back} == {v1}
    status = rollout_status(client)
    assert status["stable"] == v1 and status["candidate"] is None
    assert [e["action"] for e in status["events"]][-3:] == ["start", "promote", "rollback"]
    metrics = client.get("/metrics").text
    assert f'version="{v2}"' in metrics and f'version="{v1}"' in metrics


def test_shadow_records_agreement(client: httpx.Client, rollout_versions: dict[str, Any]) -> None:
    v1, v2 = rollout_versions["v1"], rollout_versions["v2"]
    admin(client, "start", {"version": v2, "mode": "shadow"})
    for _ in range(60):
        r = client.post(PREDICT, json=ROW)
        assert r.status_code == 200 and r.headers["podium-model-version"] == v1
    shadow = wait_for(lambda: (s := rollout_status(client)["shadow"])["compared"] >= 60 and s)
    assert shadow["items"] == 120 and 0 <= shadow["agreement"] <= 1
    assert shadow["max_abs_diff"] >= 0
    status = rollout_status(client)
    assert status["versions"][v2]["requests"] >= 60 and status["versions"][v2]["share_percent"] == 0
    admin(client, "rollback")


def test_wrong_candidate_rolls_back_by_itself(client: httpx.Client, rollout_versions: dict[str, Any],
                                               server) -> None:
    v1, wrong = rollout_versions["v1"], rollout_versions["wrong"]
    admin(client, "start", {"version": wrong, "mode": "shadow",
                            "limits": {"min_agreement": 0.9, "min_requests": 20}})
    for _ in range(40):
        r = client.post(PREDICT, json=ROW)
        assert r.status_code == 200 and r.headers["podium-model-version"] == v1
    status = wait_for(lambda: (s := rollout_status(client))["candidate"] is None and s)
    event = status["events"][-1]
    assert event["action"] == "rollback" and event["actor"] == "auto"
    assert "agreement" in event["reason"] and event["from"] == wrong
    assert "automatic" in server.logs()


def test_slow_canary_rolls_back_by_itself(client: httpx.Client, rollout_versions: dict[str, Any]) -> None:
    v1, v2 = rollout_versions["v1"], rollout_versions["v2"]
    admin(client, "start", {"version": v2, "percent": 50,
                            "limits": {"max_p99_ms": 0.001, "min_requests": 10}})
    failures = [r.text for r in (client.post(PREDICT, json=ROW) for _ in range(100))
                if r.status_code != 200]
    assert failures == []
    status = wait_for(lambda: (s := rollout_status(client))["candidate"] is None and s)
    # the store says so first; the worker follows within a poll
    wait_for(lambda: client.get("/admin/rollout", headers=AUTH).json()["applied_everywhere"])
    assert "p99" in status["events"][-1]["reason"] and status["stable"] == v1
    assert {client.post(PREDICT, json=ROW).headers["podium-model-version"]
            for _ in range(20)} == {v1}


def test_cli(server, rollout_versions: dict[str, Any]) -> None:
    def cli(*args: str, token: str = TOKEN) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "podium.rollout_cli", "--url", server.url,
                               "--token", token, *args], cwd=ROOT, capture_output=True,
                              text=True, timeout=60)

    start = cli("start", "diabetes", rollout_versions["v2"][:6], "--percent", "5", "--wait")
    assert start.returncode == 0 and "canary 5%" in start.stdout, start.stderr
    # the version prefix resolved
    assert "applied by 1 worker(s)" in start.stdout and rollout_versions["v2"] in start.stdout
    status = cli("status", "diabetes")
    assert status.returncode == 0 and rollout_versions["v2"] in status.stdout and "candidate" in status.stdout
    assert "revision" in status.stdout and "worker" in status.stdout
    analysis = cli("analysis", "diabetes")
    assert analysis.returncode == 0 and "pending" in analysis.stdout, analysis.stdout
    rollback = cli("rollback", "diabetes", "--reason", "cli test")
    assert rollback.returncode == 0 and "stable " + rollout_versions["v1"] in rollback.stdout
    bad = cli("status", token="wrong")
    assert bad.returncode == 1 and "403" in bad.stderr


def test_two_workers_follow_promote_and_state_survives_restart(
        rollout_versions: dict[str, Any], tmp_path: Path) -> None:
    v1, v2 = rollout_versions["v1"], rollout_versions["v2"]
    state = tmp_path / "state.json"
    with serve(rollout_versions["home"], tmp_path, env_for(rollout_versions, state, PODIUM_WORKERS="2",
                                                   PODIUM_ADMIN_TOKEN=TOKEN)) as running, \
            running.client() as c:
        # every worker writes a heartbeat: wait until both are seen
        wait_for(lambda: len(c.get("/admin/rollout", headers=AUTH).json()["workers"]) == 2)
        timeline = Timeline({v1}, settle=1.0)
        with Load(running.url, threads=3, new_connections=True) as load:
            load.wait(50, 0)
            timeline.change({v1, v2}, lambda: admin(c, "start", {"version": v2, "percent": 50}))
            load.wait(200, time.monotonic())
            timeline.change({v2}, lambda: admin(c, "promote"))
            revision = c.get("/admin/rollout", headers=AUTH).json()["revision"]
            wait_for(lambda: {w["revision"] for w in c.get("/admin/rollout", headers=AUTH)
                              .json()["workers"]} == {revision})
            settled = time.monotonic()
            load.wait(200, settled)
        assert load.failures == []
        assert timeline.illegitimate(load.results) == []
        assert {v for s, _, v in load.results if s > settled} == {v2}
    # a restart serves the promoted version; without a token the admin API is off
    with serve(rollout_versions["home"], tmp_path, env_for(rollout_versions, state)) as again, \
            again.client() as c:
        assert c.post(PREDICT, json=ROW).headers["podium-model-version"] == v2
        r = c.get("/admin/rollout", headers=AUTH)
        assert r.status_code == 403 and "disabled" in r.json()["error"]
