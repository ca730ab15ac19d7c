"""The rollout's parts without a server: the pure transitions, the router, the judge's summed
verdict, and both stores (the file, and a real redis-server) with compare-and-set, heartbeats,
the lease and deployment namespaces."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest

from services.config import load_config
from services.errors import Conflict, InvalidInput
from services.rollout import state as t
from services.rollout.judge import Agreement, Counts, Outcomes, Recorder, verdict
from services.rollout.router import route
from services.rollout.state import Limits, ModelRollout, State
from services.rollout.store import FileStore, RedisStore, StoreUnavailable, open_store, redacted
from tests.redis_server import RedisServer

LIMITS = Limits(window_s=60, min_requests=30, max_error_rate=0.05, max_p99_ms=100, min_agreement=0.9)


# -- transitions --------------------------------------------------------------------------------
def test_begin_promote_rollback_are_pure_and_refuse_conflicts() -> None:
    base = ModelRollout(stable="a")
    canary, event = t.begin(base, "m", "b", "canary", 20, LIMITS, "r1", 5.0)
    assert (canary.candidate, canary.percent, canary.rollout_id, event["action"]) == ("b", 20, "r1", "start")
    assert base == ModelRollout(stable="a")  # nothing mutated
    retuned, event = t.begin(canary, "m", "b", "canary", 50, LIMITS, "r2", 9.0)
    assert (retuned.rollout_id, retuned.started, event["action"]) == ("r1", 5.0, "update")
    with pytest.raises(Conflict):
        t.begin(canary, "m", "c", "canary", 5, LIMITS, "r3", 0)
    with pytest.raises(Conflict):
        t.begin(base, "m", "a", "canary", 5, LIMITS, "r3", 0)
    with pytest.raises(InvalidInput):
        t.begin(base, "m", "b", "blue", 5, LIMITS, "r3", 0)
    promoted, event = t.promote(canary, "m", None)
    assert promoted == ModelRollout(stable="b", previous="a") and event["to"] == "b"
    back, event = t.rollback(promoted, "m")
    assert back == ModelRollout(stable="a") and event["from"] == "b"
    with pytest.raises(Conflict):
        t.rollback(back, "m")
    aborted, _ = t.rollback(canary, "m", actor="auto", expect="r1")
    assert aborted.candidate is None
    with pytest.raises(Conflict):  # the verdict acts once: a second one finds the rollout gone
        t.rollback(aborted, "m", actor="auto", expect="r1")


def test_state_round_trips_and_refuses_garbage() -> None:
    state = State().changed("m", ModelRollout(stable="a", candidate="b", mode="canary", percent=5,
                                              rollout_id="r", limits=LIMITS), {"action": "start"})
    assert state.revision == 1 and state.events[-1]["revision"] == 1
    assert State.from_json(json.loads(json.dumps(state.to_json())), LIMITS) == state
    for bad in ([], {"models": []}, {"models": {"m": {}}}, {"models": {}, "revision": "2"},
                {"models": {"m": {"stable": "a", "limits": {"max_error_rate": 7}}}}):
        with pytest.raises(t.StateInvalid):
            State.from_json(bad, LIMITS)


def test_router_pins_keys_and_shares() -> None:
    plan = ModelRollout(stable="a", candidate="b", mode="canary", percent=30, rollout_id="r")
    assert route(None, {}) is None and route(ModelRollout(stable="a"), {}) is None
    assert route(plan, {"podium-pin": "candidate"}) == "b"
    assert route(plan, {"podium-pin": "stable"}) is None
    with pytest.raises(InvalidInput):
        route(plan, {"podium-pin": "left"})
    picks = [route(plan, {"podium-client-key": f"k{i}"}) for i in range(3000)]
    assert abs(picks.count("b") / 3000 - 0.3) < 0.03
    assert route(plan, {"podium-client-key": "k1"}) == picks[1]
    shadow = ModelRollout(stable="a", candidate="b", mode="shadow", rollout_id="r")
    assert route(shadow, {}) is None


# -- the judge ----------------------------------------------------------------------------------
def test_verdict_sums_counts_that_each_replica_alone_would_not_judge() -> None:
    replicas = [{"requests": 20, "errors": 2, "slow": 0}, {"requests": 20, "errors": 1, "slow": 0}]
    for part in replicas:  # alone: too few requests to judge
        assert verdict(LIMITS, "canary", Counts.total([part]), None).result == "pending"
    found = verdict(LIMITS, "canary", Counts.total(replicas), None)
    assert found.result == "fail" and "error rate 7.5%" in found.reason
    assert found.figures["window_requests"] == 40
    slow = verdict(LIMITS, "canary", Counts(requests=100, errors=0, slow=2), None)
    assert slow.result == "fail" and "p99" in slow.reason
    assert verdict(LIMITS, "canary", Counts(requests=100, errors=0, slow=1), None).result == "pass"
    agreement = Agreement.total([{"items": 20, "agreed": 20}, {"items": 20, "agreed": 10}])
    assert verdict(LIMITS, "shadow", Counts(), agreement).result == "fail"


def test_outcomes_window_and_slow_counts() -> None:
    outcomes = Outcomes()
    for seconds, ok in ((0.01, True), (0.2, True), (0.01, False)):
        outcomes.add(seconds, ok, slow_s=0.1)
    snap = outcomes.snapshot(window_s=60)
    assert snap["window"] == {"requests": 3, "errors": 1, "slow": 1} and snap["requests"] == 3
    assert len(snap["recent_ms"]) == 3


def test_recorded_outcomes_are_counted_once_each_whoever_drains_them() -> None:
    """Issue 15: a request's outcome is queued (``Recorder.add``), counted when drained. A
    snapshot sees every outcome added before it; the event loop and the watcher thread draining
    at once count each outcome exactly once; a reset (a new rollout) leaves the outcomes queued
    for the old counts out of the new ones; a queue nobody drains stays bounded."""
    import threading

    recorder = Recorder()
    for i in range(30):
        recorder.add("m", "1", 0.2 if i % 10 == 0 else 0.01, ok=i % 3 != 0, slow_s=0.1)
    recorder.add("m", "2", 0.01, ok=True, slow_s=0.0)
    versions = recorder.snapshot(lambda name: 60)["m"]["versions"]
    assert versions["1"]["window"] == {"requests": 30, "errors": 10, "slow": 3}
    assert versions["1"]["requests"] == 30 and len(versions["1"]["recent_ms"]) == 30
    assert versions["2"]["window"] == {"requests": 1, "errors": 0, "slow": 0}

    stop = threading.Event()

    def drain_meanwhile() -> None:
        while not stop.is_set():
            recorder.drain()

    thread = threading.Thread(target=drain_meanwhile)
    thread.start()
    for _ in range(20000):
        recorder.add("m", "1", 0.01, ok=True, slow_s=0.1)
        if _ % 1000 == 0:
            recorder.drain()
    stop.set()
    thread.join()
    assert recorder.snapshot(lambda name: 60)["m"]["versions"]["1"]["requests"] == 20030

    recorder.add("m", "1", 0.01, ok=False, slow_s=0.1)  # queued for the old rollout's counts
    recorder.reset("m", "rollout-2")
    recorder.add("m", "1", 0.01, ok=True, slow_s=0.1)
    fresh = recorder.snapshot(lambda name: 60)["m"]["versions"]["1"]
    assert fresh["requests"] == 1 and fresh["errors"] == 0

    small = Recorder()
    small.PENDING_MAX = 100
    for _ in range(1000):
        small.add("m", "1", 0.01, ok=True, slow_s=0.1)
    assert len(small._pending) <= 101
    assert small.snapshot(lambda name: 60)["m"]["versions"]["1"]["requests"] == 1000


# -- the stores ---------------------------------------------------------------------------------
def exercise(make) -> None:
    """The same contract for both backends: CAS, repair, heartbeats, lease, namespaces."""
    a, b, other = make("dep-a"), make("dep-a"), make("dep-b")
    assert a.read() is None
    assert a.swap(0, {"revision": 1, "models": {}})
    assert not b.swap(0, {"revision": 1, "models": {"x": {}}})  # lost the race: nothing written
    assert json.loads(b.read())["revision"] == 1
    assert other.read() is None  # another deployment on the same store sees nothing
    assert not a.swap(None, {"revision": 5, "models": {}})  # a readable state is never "repaired"
    a.beat("w1", {"worker": "w1", "revision": 1})
    b.beat("w2", {"worker": "w2", "revision": 1})
    assert sorted(x["worker"] for x in a.beats()) == ["w1", "w2"] and other.beats() == []
    assert a.lease("w1", 5) and a.lease("w1", 5) and not b.lease("w2", 5)
    assert other.lease("w2", 5)


def test_file_store_contract(tmp_path: Path) -> None:
    exercise(lambda dep: FileStore(tmp_path / f"{dep}.json"))


def test_redis_store_contract(redis: RedisServer) -> None:  # the session's redis-server (conftest)
    exercise(lambda dep: RedisStore(redis.url, dep, timeout_s=1))


def test_redis_unreachable_is_503_naming_the_store() -> None:
    from services.launch import free_port

    store = RedisStore(f"redis://:hunter2@127.0.0.1:{free_port()}/0", "d", timeout_s=0.5)
    with pytest.raises(StoreUnavailable) as caught:
        store.read()
    assert caught.value.status == 503 and "hunter2" not in caught.value.message
    assert "***" in caught.value.message and "read failed" in caught.value.message


def test_open_store_namespaces_by_deployment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENTOML_HOME", str(tmp_path))
    one, two = open_store(load_config(port=3000)), open_store(load_config(port=3001))
    assert one.where != two.where and one.where.endswith("podium-rollout/podium-3000.json")
    named = open_store(load_config(port=3000, deployment="blue"))
    assert named.where.endswith("podium-rollout/blue.json")
    assert isinstance(open_store(load_config(rollout_store="redis://127.0.0.1:1/0")), RedisStore)
    with pytest.raises(ValueError):
        open_store(load_config(rollout_store="etcd://x"))
    assert redacted("redis://:pw@h:1/0") == "redis://:***@h:1/0"


# -- the controller over a file store, with a stand-in repository ---------------------------------
class StubRepository:
    """The slice of ``Repository`` the controller uses, over named versions (no model files):
    enough to test what is written, refused and applied without a server."""

    def __init__(self, stored: set[str]) -> None:
        self.stored = stored
        self.loaded: dict[str, dict[str, object]] = {"m": {"v1": object()}}
        self.stable = {"m": "v1"}

    def model(self, name: str) -> dict[str, object]:
        return self.loaded[name]

    def resolve(self, name: str, version: str) -> str:
        from services.errors import ModelNotFound

        matches = sorted(v for v in self.stored if v.startswith(version))
        if version == "latest":
            return max(self.stored)
        if len(matches) != 1:
            raise ModelNotFound(f"version {version!r} of model {name!r} is not in the model store")
        return matches[0]

    def load_version(self, name: str, version: str) -> object:
        if version.endswith("bad"):
            raise RuntimeError("out of memory")
        return self.loaded[name].setdefault(self.resolve(name, version), object())

    def get(self, name: str, version: str | None = None) -> object:
        from services.errors import ModelNotFound

        found = self.loaded[name].get(version or self.stable[name])
        if found is None:
            raise ModelNotFound(f"version {version!r} of model {name!r} is not loaded")
        return found

    def set_stable(self, name: str, version: str) -> None:
        self.stable[name] = version

    def retain(self, name: str, keep: list[str]) -> None:
        for v in [v for v in self.loaded[name] if v not in {*keep, self.stable[name]}]:
            del self.loaded[name][v]


def controller(path: Path, stored: set[str] = frozenset({"v1", "v2abc"})):
    from services.rollout import Rollout

    config = load_config(models=["diabetes"])
    rollout = Rollout(config, StubRepository(set(stored)), store=FileStore(path))  # type: ignore[arg-type]
    with contextlib.suppress(StoreUnavailable):
        rollout.sync()
    return rollout


def test_versions_are_resolved_before_anything_is_written(tmp_path: Path) -> None:
    from services.errors import ModelNotFound

    rollout = controller(tmp_path / "s.json")
    event = rollout.promote("m", "v2")  # a prefix
    assert event["to"] == "v2abc" and json.loads(rollout.store.read())["models"]["m"]["stable"] == "v2abc"
    with pytest.raises(ModelNotFound):
        rollout.promote("m", "nosuch")
    assert json.loads(rollout.store.read())["revision"] == 1  # nothing changed
    assert rollout.repository.stable["m"] == "v2abc"


def test_a_state_naming_no_exact_version_is_never_applied(tmp_path: Path) -> None:
    rollout = controller(tmp_path / "s.json")
    bad = State().changed("m", ModelRollout(stable="latest"), {"action": "promote"})
    rollout.store.swap(0, bad.to_json())
    rollout.sync()
    assert rollout.repository.stable["m"] == "v1" and "m" not in rollout.plans
    assert rollout.state.revision == 1  # seen, refused, not retried every poll
    (worker,) = rollout.status()["workers"]
    assert "not a full version" in worker["refused"]["m"]
    assert not rollout.status()["applied_everywhere"]


def test_rollback_works_over_a_damaged_state_and_errors_are_503(tmp_path: Path) -> None:
    rollout = controller(tmp_path / "s.json")
    rollout.begin("m", "v2abc", percent=50)
    (tmp_path / "s.json").write_text("{damaged")
    event = rollout.rollback("m")  # rebuilt from what the worker applied
    assert event["from"] == "v2abc" and json.loads(rollout.store.read())["revision"] == 2
    assert rollout.plans["m"].candidate is None
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    unwritable = controller(blocked / "s.json")  # its directory cannot exist: like a full disk
    with pytest.raises(StoreUnavailable) as caught:
        unwritable.promote("m", "v2abc")
    assert caught.value.status == 503 and "cannot be written" in caught.value.message


def test_a_candidate_that_cannot_load_counts_against_it(tmp_path: Path) -> None:
    rollout = controller(tmp_path / "s.json", stored={"v1", "v3bad"})
    plan = ModelRollout(stable="v1", candidate="v3bad", mode="canary", percent=100, rollout_id="r",
                        limits=LIMITS)
    rollout.store.swap(0, State().changed("m", plan, {"action": "start"}).to_json())
    rollout.sync()  # another worker started it; here the candidate fails to load
    assert rollout.plans["m"] == plan
    for _ in range(30):
        assert rollout.select("m", {}) is rollout.repository.loaded["m"]["v1"]  # stable answers
    found = rollout.analysis("m")
    assert found["verdict"] == "fail" and found["figures"]["window_errors"] == 30
