"""Locust scenario: a whole version rollout while under load. Zero failures is the only pass.

    PODIUM_ADMIN_TOKEN=secret locust -f loadtests/rollout_locust.py --headless -u 16 -r 16 \
        --host http://127.0.0.1:3000 --candidate VERSION [--model diabetes] [--percent 20] \
        [--phase-s 10] [--settle-s 1] [--replicas URL,URL,...]

``Predictor`` users send predictions throughout. One ``Operator`` walks the rollout through the
admin API — steady → canary at ``--percent`` → shadow → promote → rollback — each phase
``--phase-s`` long, then ends the run. A prediction fails unless it is a 200 whose body and
``Podium-Model-Version`` header name a version that was legitimately serving when it was sent or
answered (a change's new version from the moment the admin call is sent; the old one until the
call returned plus ``--settle-s``, the time every worker has to follow). With ``--replicas``
(several servers on one shared rollout store, as behind a load balancer) the predictors are
spread over them round-robin while the operator drives ``--host``: a change made on one replica
must reach the others within ``--settle-s``. At the end the candidate's measured canary share is
printed and the process exits 1 unless there were no failures.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from typing import Any

import gevent
from locust import HttpUser, constant, events, task

log = logging.getLogger("podium.rollout-load")

PAYLOADS = {"diabetes": {"rows": [[6, 148, 72, 35, 0, 33.6, 0.627, 50],
                                  [1, 85, 66, 29, 0, 26.6, 0.351, 31]]},
            "mnist": {"instances": [[0.0] * 784]}}


class Timeline:
    """Which versions may answer when (see the module docstring)."""

    def __init__(self) -> None:
        self.spans: list[list[Any]] = []
        self.results: list[tuple[float, float, str]] = []
        self.canary: tuple[float, float] | None = None
        self._lock = threading.Lock()

    def begin(self, allowed: set[str]) -> None:
        self.spans = [[time.monotonic() - 3600, float("inf"), set(allowed)]]

    def sent(self, allowed: set[str], sent: float) -> None:
        """A change is on its way: its versions may answer from now on (checks run while the
        admin call is in flight, so the new set must be known before it returns)."""
        self.spans.append([sent, float("inf"), set(allowed)])

    def returned(self, until: float) -> None:
        """The change returned: the versions before it may answer until ``until``."""
        self.spans[-2][1] = until

    def legitimate(self, version: str, sent: float, answered: float) -> bool:
        return any(version in ok and sent <= end and answered >= start
                   for start, end, ok in list(self.spans))

    def share(self, candidate: str) -> tuple[int, float]:
        if self.canary is None:
            return 0, 0.0
        start, stop = self.canary
        seen = [v for s, e, v in self.results if s >= start and e <= stop]
        return len(seen), 100 * seen.count(candidate) / len(seen) if seen else 0.0


TIMELINE = Timeline()
_REPLICA = itertools.count()


@events.init_command_line_parser.add_listener
def _arguments(parser: Any) -> None:
    parser.add_argument("--model", default="diabetes", env_var="PODIUM_ROLLOUT_MODEL",
                        help="model to roll out (diabetes or an mnist-* model)")
    parser.add_argument("--candidate", default="", env_var="PODIUM_ROLLOUT_CANDIDATE",
                        help="the version to roll out (required)")
    parser.add_argument("--percent", type=float, default=20.0, help="canary share (default 20)")
    parser.add_argument("--phase-s", type=float, default=10.0, help="seconds per phase")
    parser.add_argument("--settle-s", type=float, default=1.0,
                        help="seconds the workers may take to follow a change")
    parser.add_argument("--admin-token", default=os.environ.get("PODIUM_ADMIN_TOKEN", ""),
                        help="admin token (default: $PODIUM_ADMIN_TOKEN)")
    parser.add_argument("--replicas", default="",
                        help="comma-separated replica URLs the predictors spread over "
                             "(default: --host only)")


class Predictor(HttpUser):
    wait_time = constant(0)
    weight = 10

    def on_start(self) -> None:
        opts = self.environment.parsed_options
        self.model = opts.model
        self.body = PAYLOADS["diabetes" if opts.model == "diabetes" else "mnist"]
        replicas = [u for u in opts.replicas.split(",") if u]
        if replicas:
            self.client.base_url = replicas[next(_REPLICA) % len(replicas)]
        while not TIMELINE.spans:  # the operator has read the stable version
            gevent.sleep(0.05)

    @task
    def predict(self) -> None:
        sent = time.monotonic()
        with self.client.post(f"/v1/models/{self.model}/predict", json=self.body,
                              name="predict", catch_response=True) as r:
            answered = time.monotonic()
            if r.status_code != 200:
                r.failure(f"status {r.status_code}: {r.text[:200]}")
                return
            version = r.headers.get("Podium-Model-Version", "")
            if r.json().get("version") != version:
                r.failure(f"body version differs from header {version!r}")
            elif not TIMELINE.legitimate(version, sent, answered):
                r.failure(f"answered by {version!r}, which was not serving then")
                log.error("mislabelled: %s sent %.3f answered %.3f (s since start); spans %s",
                          version, sent - TIMELINE.spans[0][0], answered - TIMELINE.spans[0][0],
                          [(round(a, 3), round(b, 3), sorted(v)) for a, b, v in TIMELINE.spans])
            else:
                TIMELINE.results.append((sent, answered, version))


class Operator(HttpUser):
    fixed_count = 1
    wait_time = constant(0)

    def _admin(self, method: str, action: str = "", body: dict[str, Any] | None = None
               ) -> dict[str, Any]:
        opts = self.environment.parsed_options
        path = f"/admin/rollout/{opts.model}" + (f"/{action}" if action else "")
        with self.client.request(method, path, json=body, name=f"admin {action or 'status'}",
                                 headers={"Authorization": f"Bearer {opts.admin_token}"},
                                 catch_response=True) as r:
            if r.status_code != 200:
                r.failure(f"{r.status_code}: {r.text[:300]}")
                raise RuntimeError(f"admin {action or 'status'} failed: {r.text[:300]}")
            return r.json()

    def _change(self, allowed: set[str], action: str, body: dict[str, Any] | None = None) -> None:
        TIMELINE.sent(allowed, time.monotonic())
        self._admin("POST", action, body)
        TIMELINE.returned(time.monotonic() + self.environment.parsed_options.settle_s)
        log.info("rollout: %s done", action)

    @task
    def rollout(self) -> None:
        opts = self.environment.parsed_options
        try:
            if not opts.candidate:
                raise RuntimeError("--candidate (PODIUM_ROLLOUT_CANDIDATE) is required")
            stable, cand = self._admin("GET")["models"][opts.model]["stable"], opts.candidate
            TIMELINE.begin({stable})
            gevent.sleep(opts.phase_s)
            self._change({stable, cand}, "start", {"version": cand, "percent": opts.percent})
            canary_from = time.monotonic() + opts.settle_s
            gevent.sleep(opts.phase_s)
            TIMELINE.canary = (canary_from, time.monotonic())
            self._change({stable}, "rollback", {"reason": "load test: canary → shadow"})
            self._change({stable}, "start", {"version": cand, "mode": "shadow"})
            gevent.sleep(opts.phase_s)
            self._change({cand}, "promote")
            gevent.sleep(opts.phase_s)
            self._change({stable}, "rollback", {"reason": "load test: back to the start"})
            gevent.sleep(opts.phase_s)
        except Exception as exc:
            log.error("rollout scenario stopped: %s", exc)
            self.environment.process_exit_code = 1
        gevent.spawn(self.environment.runner.quit)  # not from this greenlet: quit() kills it
        gevent.sleep(3600)  # never run the scenario twice


@events.quitting.add_listener
def _verdict(environment: Any, **_: Any) -> None:
    stats = environment.stats.total
    opts = environment.parsed_options
    n, share = TIMELINE.share(opts.candidate)
    print(f"rollout under load: {stats.num_requests} requests, {stats.num_failures} failed; "
          f"canary share {share:.1f}% of {n} (target {opts.percent:g}%)", flush=True)
    if stats.num_failures or environment.process_exit_code:
        environment.process_exit_code = 1
