"""The Kubernetes manifests, offline: ``kubectl kustomize deploy/k8s`` renders, every object (and
the GPU Deployment applied on top) validates against the Kubernetes schemas of every version in
K8S_VERSIONS (kubernetes-validate, strict) — the one place the tests validate manifests — and the
Deployment is wired to the Redis rollout store (a StatefulSet keeping its append-only file on a
volume)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
# The oldest and newest Kubernetes minor versions the manifests are checked against.
K8S_VERSIONS = ("1.30.0", "1.32.0")


@pytest.fixture(scope="module")
def rendered() -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl:
        text = subprocess.run([kubectl, "kustomize", str(ROOT / "deploy" / "k8s")], check=True,
                              capture_output=True, text=True, timeout=60).stdout
    else:  # the same objects, unrendered: kustomize adds only the image name here
        listed = yaml.safe_load((ROOT / "deploy" / "k8s" / "kustomization.yaml").read_text())
        text = "\n---\n".join((ROOT / "deploy" / "k8s" / r).read_text() for r in listed["resources"])
    return [d for d in yaml.safe_load_all(text) if d]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_object_is_valid(rendered: list[dict], version: str) -> None:
    for doc in [*rendered, gpu_deployment()]:
        kubernetes_validate.validate(doc, version, strict=True)
    kinds = {(d["kind"], d["metadata"]["name"]) for d in rendered}
    assert {("StatefulSet", "podium-redis"), ("Service", "podium-redis"),
            ("Secret", "podium-redis"), ("Deployment", "podium")} <= kinds


def test_redis_keeps_its_append_only_file_on_a_volume(rendered: list[dict]) -> None:
    (sts,) = [d for d in rendered if d["kind"] == "StatefulSet"]
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    data_dir = args[args.index("--dir") + 1]
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert {"name": claim["metadata"]["name"], "mountPath": data_dir} in container["volumeMounts"]
    assert "$(REDIS_PASSWORD)" in args
    services = {d["metadata"]["name"]: d for d in rendered if d["kind"] == "Service"}
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert services["podium-redis"]["spec"]["selector"].items() <= labels.items()
    assert not services["podium"]["spec"]["selector"].items() <= labels.items()  # no HTTP to Redis


def gpu_deployment() -> dict:
    """The GPU variant of the Deployment, applied on top (not in the kustomization)."""
    return yaml.safe_load((ROOT / "deploy" / "k8s" / "deployment-gpu.yaml").read_text())


def podium_containers(rendered: list[dict]) -> list[dict]:
    """The serving containers: the CPU Deployment, and the GPU variant applied on top."""
    return [c for d in [*rendered, gpu_deployment()] if d["kind"] == "Deployment"
            for c in d["spec"]["template"]["spec"]["containers"]]


@pytest.mark.parametrize("which", [0, 1], ids=["cpu", "gpu"])
def test_podium_replicas_share_the_redis_store(rendered: list[dict], which: int) -> None:
    from services.rollout.store import redacted

    container = podium_containers(rendered)[which]
    env = {e["name"]: e for e in container["env"]}
    url = env["PODIUM_ROLLOUT_STORE"]["value"]
    assert url.startswith("redis://") and "@podium-redis:6379/" in url
    assert redacted(url.replace("$(REDIS_PASSWORD)", "pw")) == "redis://:***@podium-redis:6379/0"
    secret = env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert secret == {"name": "podium-redis", "key": "password"}
    # $(VAR) expands only from variables defined earlier in the list
    names = [e["name"] for e in container["env"]]
    assert names.index("REDIS_PASSWORD") < names.index("PODIUM_ROLLOUT_STORE")
    assert env["PODIUM_DEPLOYMENT"]["value"]
