"""``podium rollout start|status|promote|rollback|analysis``: drive a version rollout on a
running server through its admin API (``/admin/rollout``).

The server is ``--url`` (default ``$PODIUM_URL``, else http://127.0.0.1:3000) and the token is
``--token`` (default ``$PODIUM_ADMIN_TOKEN``). Behind a load balancer any replica will do: they
share one rollout store, and ``--wait`` waits until every worker of every replica has applied
the change. Also runnable alone: ``python -m podium.rollout_cli``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

DEFAULT_URL = "http://127.0.0.1:3000"


class RolloutCliError(RuntimeError):
    """A failed admin call, printed as one line by the ``podium`` command."""


def _percent(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"{text!r} must be from 0 to 100")
    return value


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``rollout`` and its subcommands to the ``podium`` subparsers."""
    r = sub.add_parser("rollout", help="roll out a new version on a running server (admin API)")
    r.add_argument("--url", default=os.environ.get("PODIUM_URL", DEFAULT_URL),
                   help=f"server address (default: $PODIUM_URL or {DEFAULT_URL})")
    r.add_argument("--token", default=os.environ.get("PODIUM_ADMIN_TOKEN"),
                   help="admin token (default: $PODIUM_ADMIN_TOKEN)")
    r.add_argument("--json", action="store_true", help="print the server's JSON answer")
    actions = r.add_subparsers(dest="action", required=True, metavar="ACTION")

    start = actions.add_parser("start", help="start a canary or shadow rollout of VERSION")
    start.add_argument("name", metavar="NAME")
    start.add_argument("version", metavar="VERSION")
    side = start.add_mutually_exclusive_group()
    side.add_argument("--percent", type=_percent, default=10.0,
                      help="canary: share of traffic for the candidate (default: 10)")
    side.add_argument("--shadow", action="store_true",
                      help="shadow: stable answers everything, the candidate gets a copy")
    start.add_argument("--max-error-rate", type=float, help="auto-rollback above this (0–1)")
    start.add_argument("--max-p99-ms", type=float, help="auto-rollback above this p99 (0 = off)")
    start.add_argument("--min-agreement", type=float,
                       help="shadow: auto-rollback below this label agreement (0–1)")
    start.add_argument("--window-s", type=float, help="judge the candidate over this window")
    start.add_argument("--min-requests", type=int, help="requests in the window before judging")

    status = actions.add_parser("status", help="versions, shares, outcomes and events")
    status.add_argument("name", nargs="?", metavar="NAME")

    promote = actions.add_parser("promote", help="make the candidate the stable version")
    promote.add_argument("name", metavar="NAME")
    promote.add_argument("version", nargs="?", metavar="VERSION",
                         help="promote this version directly (no rollout in progress)")

    rollback = actions.add_parser("rollback",
                                  help="abort the rollout, or return to the previous version")
    rollback.add_argument("name", metavar="NAME")
    rollback.add_argument("--reason", default="", help="kept in the event log")

    for change in (start, promote, rollback):
        change.add_argument("--wait", action="store_true",
                            help="wait until every worker of every replica has applied it")
        change.add_argument("--wait-timeout", type=float, default=30.0, metavar="S",
                            help="give up waiting after S seconds (exit 1; default 30)")

    analysis = actions.add_parser("analysis",
                                  help="the automatic-rollback verdict over every replica")
    analysis.add_argument("name", metavar="NAME")
    return r


def _call(args: argparse.Namespace, method: str, path: str,
          body: dict[str, Any] | None = None) -> dict[str, Any]:
    import httpx

    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    try:
        response = httpx.request(method, args.url.rstrip("/") + path, json=body,
                                 headers=headers, timeout=120)
    except httpx.HTTPError as exc:
        raise RolloutCliError(f"cannot reach {args.url}: {exc}") from None
    try:
        payload = response.json()
    except ValueError:
        payload = {"error": response.text.strip() or response.reason_phrase}
    if response.status_code != 200:
        raise RolloutCliError(f"{response.status_code}: {payload.get('error', payload)}")
    return payload


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _wait(args: argparse.Namespace, revision: int) -> None:
    """Poll status until every live worker has applied ``revision`` (or a later one)."""
    started = time.monotonic()
    while True:
        workers = _call(args, "GET", "/admin/rollout")["workers"]
        refused = [f"{w['worker']}: {w['refused']}" for w in workers if w.get("refused")]
        if refused:
            raise RolloutCliError(f"refused by {'; '.join(refused)}")
        behind = [w["worker"] for w in workers if w["revision"] < revision]
        if not behind:
            print(f"applied by {len(workers)} worker(s) in {time.monotonic() - started:.1f}s")
            return
        if time.monotonic() - started > args.wait_timeout:
            raise RolloutCliError(f"revision {revision} not applied after {args.wait_timeout:g}s "
                                  f"by: {', '.join(behind)}")
        time.sleep(0.2)


def _print_status(models: dict[str, Any]) -> None:
    for name, m in models.items():
        if m["candidate"]:
            how = (f"canary {m['percent']:g}%" if m["mode"] == "canary" else "shadow")
            print(f"{name}: rollout of {m['candidate']} ({how}), stable {m['stable']}")
        else:
            print(f"{name}: stable {m['stable']}" +
                  (f" (previous {m['previous']})" if m["previous"] else ""))
        print(f"  {'VERSION':<18} {'ROLE':<10} {'SHARE':>6} {'REQUESTS':>9} {'ERRORS':>7} "
              f"{'P50 ms':>7} {'P99 ms':>7}")
        for version, v in m["versions"].items():
            print(f"  {version:<18} {v['role']:<10} {v['share_percent']:>5g}% {v['requests']:>9} "
                  f"{v['errors']:>7} {_ms(v['p50_ms']):>7} {_ms(v['p99_ms']):>7}")
        shadow = m.get("shadow")
        if shadow:
            rate = shadow["agreement"]
            print(f"  shadow: {shadow['compared']} compared, agreement "
                  f"{'-' if rate is None else f'{rate:.1%}'}, max|Δ| {shadow['max_abs_diff']:.3g}, "
                  f"{shadow['skipped']} skipped")
        for event in m["events"][-3:]:
            extra = f" ({event['reason']})" if event.get("reason") else ""
            print(f"  event: {event['action']} by {event.get('actor')}{extra}")


def _print_workers(answer: dict[str, Any]) -> None:
    print(f"store {answer['store']}, revision {answer['revision']}"
          + ("" if answer["applied_everywhere"] else " (not yet applied everywhere)"))
    for w in answer["workers"]:
        print(f"  worker {w['worker']}: revision {w['revision']} (seen {w['age_s']:g}s ago)"
              + "".join(f"; refused {m}: {why}" for m, why in w.get("refused", {}).items()))
    if answer.get("error"):
        print(f"  store error: {answer['error']}")


def run(args: argparse.Namespace) -> int:
    if args.action == "analysis":
        answer = _call(args, "GET", f"/admin/rollout/{args.name}/analysis")
        print(json.dumps(answer, indent=2) if args.json else
              f"{args.name}: {answer['verdict']} ({answer['reason']}) over {answer['workers']} "
              f"worker(s); figures {answer['figures']}")
        return 0
    if args.action == "status":
        answer = _call(args, "GET", f"/admin/rollout/{args.name}" if args.name else "/admin/rollout")
        models = answer["models"]
        if not args.json:
            _print_workers(answer)
    else:
        if args.action == "start":
            limits = {key: getattr(args, key) for key in
                      ("max_error_rate", "max_p99_ms", "min_agreement", "window_s", "min_requests")
                      if getattr(args, key) is not None}
            body = {"version": args.version, "mode": "shadow" if args.shadow else "canary",
                    "percent": args.percent, "limits": limits}
        elif args.action == "promote":
            body = {"version": args.version} if args.version else {}
        else:
            body = {"reason": args.reason} if args.reason else {}
        answer = _call(args, "POST", f"/admin/rollout/{args.name}/{args.action}", body)
        models = {args.name: answer["status"]}
        event = answer["event"]
        if not args.json:
            print(f"{event['action']} {args.name}: " + ", ".join(
                f"{k}={v}" for k, v in event.items() if k not in ("action", "model", "time")))
        if args.wait:
            _wait(args, event["revision"])
    if args.json:
        print(json.dumps(answer, indent=2))
    else:
        _print_status(models)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="podium")
    add_parser(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    args = parser.parse_args(["rollout", *(sys.argv[1:] if argv is None else argv)])
    try:
        return run(args)
    except RolloutCliError as exc:
        print(f"podium: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
