"""Run the whole container path once and write its report (results/container/ by default).

    make container-report                 # = python deploy/container/report.py results/container
    make container-gpu-report             # the GPU image: ... results/container --gpu
    FORCE_BASE=1 make container-report    # also rebuild the debootstrap base from scratch

Steps, each timed: the base image (build-base.sh; skipped when it exists unless FORCE_BASE=1),
`make bento`, `make container` (bento + `bentoml containerize`), `make container-lint`
(hadolint), `make container-smoke` (for --gpu: GPU=1, `make container-gpu`, `make
container-gpu-smoke`). Writes report.json / report-gpu.json (everything) and README.md (a summary
of both); stops at the first failing step, writing what it has. The report passes only if every
step and every smoke check passed.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(cmd: list[str], env: dict[str, str] | None = None, timeout: float = 1800) -> dict:
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True,
                          text=True, timeout=timeout)
    return {"cmd": " ".join(cmd), "rc": proc.returncode, "seconds": round(time.monotonic() - t0, 1),
            "output": (proc.stdout + proc.stderr)[-6000:]}


def sh(cmd: str) -> str:
    return subprocess.run(cmd, shell=True, cwd=ROOT, capture_output=True, text=True).stdout.strip()


REPORTS = {"cpu": "report.json", "gpu": "report-gpu.json"}


def main() -> int:
    args = [a for a in sys.argv[1:] if a != "--gpu"]
    variant = "gpu" if "--gpu" in sys.argv[1:] else "cpu"
    out = Path(args[0] if args else ROOT / "results" / "container")
    out.mkdir(parents=True, exist_ok=True)
    build_dir = Path(os.environ.get("BENTO_BUILD_DIR")
                     or Path(os.environ.get("TMPDIR") or "/tmp") / "podium-bento-build")
    make = ["make", "--no-print-directory"]
    targets = {"bento": ["bento"], "container": ["container"], "lint": ["container-lint"],
               "smoke": ["container-smoke"]}
    if variant == "gpu":  # mk/container.mk's GPU_BUILD_DIR: the GPU bento's own build folder
        build_dir = build_dir.with_name(build_dir.name + "-gpu")
        gpu_bento = [f"BENTO_BUILD_DIR={build_dir}"]
        targets = {"bento": ["bento", "GPU=1", *gpu_bento], "container": ["container-gpu"],
                   "lint": ["container-lint", *gpu_bento], "smoke": ["container-gpu-smoke"]}
    image = os.environ.get("IMAGE", "podium-gpu:latest" if variant == "gpu" else "podium:latest")
    base = os.environ.get("PODIUM_BASE_IMAGE", "localhost/podium-base:bookworm-py311")
    report: dict = {
        "variant": variant, "when": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "git": sh("git rev-parse --short HEAD"), "host": {
            "cpus": os.cpu_count(), "podman": sh("podman --version"), "kernel": sh("uname -r"),
            "bentoml": sh(f"{ROOT}/.venv/bin/bentoml --version 2>/dev/null | tail -n1").split()[-1]},
        "store": os.environ.get("BENTOML_HOME", str(Path.home() / "bentoml")), "steps": {}}
    steps = report["steps"]

    def finish(ok: bool) -> int:
        report["ok"] = ok
        (out / REPORTS[variant]).write_text(json.dumps(report, indent=2) + "\n")
        (out / "README.md").write_text(readme(out))
        print(summary(report))
        return 0 if ok else 1

    existed = subprocess.run(["podman", "image", "exists", base]).returncode == 0
    steps["base"] = run(["deploy/container/build-base.sh"],
                        env={"FORCE": "1"} if os.environ.get("FORCE_BASE") == "1" else None)
    steps["base"]["rebuilt"] = os.environ.get("FORCE_BASE") == "1" or not existed
    if steps["base"]["rebuilt"]:
        # Keep the debootstrap log's step lines (with their own timings), not the chatter.
        steps["base"]["output"] = "\n".join(line for line in steps["base"]["output"].splitlines()
                                            if line.startswith("[build-base"))
    if steps["base"]["rc"]:
        return finish(False)
    for name, env in (("bento", None), ("container", None), ("lint", None),
                      ("smoke", {"SMOKE_REPORT": str(out / "smoke.json")})):
        steps[name] = run([*make, *targets[name]], env=env)
        if name == "container":
            steps[name]["output"] = "\n".join(  # the build log is long; keep the outcome
                line for line in steps[name]["output"].splitlines()
                if not line.startswith("INFO:  ") and "STEP" not in line and "-->" not in line)[-3000:]
        if steps[name]["rc"] and name != "lint":
            return finish(False)
    report["bento"] = (build_dir / "bento-tag").read_text().strip()
    report["image"] = {
        "name": image, "bytes": int(sh(f"podman image inspect --format '{{{{.Size}}}}' {image}") or 0),
        "base_bytes": int(sh(f"podman image inspect --format '{{{{.Size}}}}' {base}") or 0),
        "layers": [layer(line) for line in sh(
            f"podman history --no-trunc --format '{{{{.Size}}}}\\t{{{{.CreatedBy}}}}' {image}").splitlines()
            if not line.startswith("0 B")]}
    report["bento_models"] = sh(f"{ROOT}/.venv/bin/python -c \"import bentoml; print(*[str(m.tag) "
                                f"for m in bentoml.get('{report['bento']}').info.models])\"")
    dockerfile = sh(f"{ROOT}/.venv/bin/bentoml get {report['bento']} -o path") + "/env/docker/Dockerfile"
    lint = subprocess.run([f"{ROOT}/.venv/bin/hadolint", "--no-fail", "-f", "json", dockerfile],
                          capture_output=True, text=True)
    report["hadolint"] = [{k: f[k] for k in ("code", "level", "line", "message")}
                          for f in json.loads(lint.stdout or "[]")]
    if (out / "smoke.json").is_file():
        report["smoke"] = json.loads((out / "smoke.json").read_text())
        (out / "smoke.json").unlink()
    report["leftover_containers"] = sh("podman ps -a --filter name=podium-smoke --format '{{.Names}}'")
    return finish(steps["lint"]["rc"] == 0 and not report["leftover_containers"]
                  and report.get("smoke", {}).get("ok", False))


def layer(line: str) -> str:
    size, _, created = line.partition("\t")
    step = created.split("/bin/sh -c ", 1)[-1].replace("#(nop) ", "").strip()
    return f"{size:>9}  {step[:100]}"


def readme(out: Path) -> str:
    """Both images' summaries, from whichever reports exist."""
    parts = ["# Container builds and smoke tests", "",
             "Produced by `make container-report` (the CPU image) and `make container-gpu-report` (the GPU "
             "image, smoke-tested on this machine, which has no GPU); raw data in report.json and "
             "report-gpu.json.", ""]
    for name in REPORTS.values():
        if (out / name).is_file():
            parts.append(summary(json.loads((out / name).read_text())))
    return "\n".join(parts)


def summary(r: dict) -> str:
    s = r["steps"]
    title = ("GPU image (onnxruntime-gpu + CUDA/cuDNN wheels), on a machine without a GPU"
             if r.get("variant") == "gpu" else "CPU image")
    lines = [f"## {title}: last run {r['when']} (git {r['git']})", "",
             f"Host: {r['host']['cpus']} CPUs, {r['host']['podman']}, BentoML {r['host']['bentoml']}; "
             f"store `{r['store']}`.", "",
             f"Result: **{'PASS' if r.get('ok') else 'FAIL'}**", "", "| step | seconds | result |",
             "|---|---:|---|"]
    gpu = " GPU=1" if r.get("variant") == "gpu" else ""
    labels = {"base": "base image (build-base.sh)", "bento": f"`make bento{gpu}`",
              "container": f"`make container{'-gpu' if gpu else ''}` (bento + containerize)",
              "lint": f"`make container-lint{gpu}`",
              "smoke": f"`make container{'-gpu' if gpu else ''}-smoke` (start, /readyz, checks, stop)"}
    for key, label in labels.items():
        if key in s:
            note = ""
            if key == "base":
                note = "rebuilt from scratch" if s[key].get("rebuilt") else "existed, reused"
            lines.append(f"| {label} | {s[key]['seconds']} | rc={s[key]['rc']} {note} |")
    image = r.get("image")
    if image:
        lines += ["", f"Image `{image['name']}` (bento `{r['bento']}`): **{image['bytes'] / 1e6:.0f} MB**, "
                  f"of which the base {image['base_bytes'] / 1e6:.0f} MB.", "", "Layers with content:", "",
                  "```", *image["layers"], "```"]
    if r.get("bento_models"):
        lines += ["", f"Models carried: `{r['bento_models']}`"]
    if r.get("smoke"):
        smoke = r["smoke"]
        lines += ["", f"Smoke checks (strict: any failure fails the run; one request per model on 127.0.0.1, "
                  f"--network=host; every model expected on {smoke.get('device', 'cpu')}):", ""]
        for name, m in smoke["models"].items():
            if "accuracy" in m:
                detail = f"accuracy {m['accuracy']:.3f} on {m['items']} real item(s)"
            elif "text" in m:
                detail = m["text"][:50].replace("\n", " ")
            elif "status" in m:
                detail = f"HTTP {m['status']}"
            else:
                detail = m.get("error", "")
            where = f" on {m['device']} ({m['providers']})" if "providers" in m else ""
            lines.append(f"- {name}: {'ok' if m['ok'] else 'NOT OK'} {m.get('version', '')} {detail}"
                         f"{' (equals offline ONNX)' if m.get('offline_equal') else ''}{where}"
                         f"{' ' + str(m['ms']) + ' ms' if 'ms' in m else ''}")
        logged = [line.split("] ", 1)[1] for line in s.get("smoke", {}).get("output", "").splitlines()
                  if line.startswith("[smoke") and "] log: " in line]
        lines += [f"- container {line}" for line in logged]  # e.g. the GPU image's CPU-fallback warning
    if "hadolint" in r:
        levels = {}
        for f in r["hadolint"]:
            levels.setdefault(f["level"], []).append(f"{f['code']} (line {f['line']})")
        lines += ["", "hadolint 2.15.1 on the generated Dockerfile: "
                  + ("; ".join(f"{lvl}: {', '.join(v)}" for lvl, v in levels.items()) or "no findings")
                  + ". No error-level finding; the rest come from BentoML's template (deploy/README.md)."]
    lines += ["", f"Containers left afterwards: {r.get('leftover_containers') or 'none'}", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
