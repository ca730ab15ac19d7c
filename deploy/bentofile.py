"""Write the build-time bentofile: bentofile.yaml with the exact model tags configured for serving.

``make bento`` runs this, then ``bentoml build -f <written file> .``. For every model Podium serves
(``models`` in the configuration) the bento carries the pinned version(s) (``PODIUM_VERSIONS`` or
podium.yaml ``versions:``; a list carries every listed version) or else the newest version in the
store, as an exact ``name:version`` tag. When versions are pinned, the same pins go into the
image's environment (``PODIUM_VERSIONS``), so the container serves what the bento was built for;
likewise ``PODIUM_MODELS`` when only some models are served, and ``PODIUM_SERVER_VERSION`` (the
pyproject version: the image holds the source, not the installed ``podium`` distribution).

The base image is the service's (``PODIUM_BASE_IMAGE`` or the local debootstrap one). Torch-free:
reads the configuration with services.config.load_config, the store with models.artifacts.get_version.

``--gpu`` writes the GPU variant: pyproject's ``gpu`` extra (``onnxruntime-gpu`` and NVIDIA's
CUDA/cuDNN runtime wheels) instead of ``onnxruntime``, and ``PODIUM_DEVICE=auto``; it builds on
the same base image as the CPU variant (no CUDA base image: the driver comes from the host).

Usage: python deploy/bentofile.py [--source bentofile.yaml] [--output PATH] [--gpu]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tomllib
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def bentoml_home() -> Path:
    return Path(os.environ.get("BENTOML_HOME") or Path.home() / "bentoml").expanduser().resolve()


def check_home_outside(repo: Path = ROOT) -> Path:
    """BentoML copies a store that sits inside the build context into the bento: refuse that."""
    home = bentoml_home()
    if home == repo or repo in home.parents:
        raise SystemExit(f"BENTOML_HOME={home} is inside the source tree {repo}; "
                         "keep the model store outside it (default ~/bentoml)")
    return home


def resolve_models() -> tuple[list[str], dict[str, list[str]], list[str]]:
    """(tags to carry, resolved versions per served model, the models whose versions are pinned)."""
    from bentoml.exceptions import NotFound

    from models.artifacts import get_version
    from services.config import load_config

    config = load_config()
    tags: list[str] = []
    versions: dict[str, list[str]] = {}
    pinned: list[str] = []
    for name in config.models:
        wanted = config.pinned(name)
        if wanted:
            pinned.append(name)
        resolved = []
        for version in wanted or [None]:
            try:
                stored = get_version(name, version)
            except NotFound:
                which = f"version {version}" if version else "no version"
                raise SystemExit(f"{name}: {which} in the store {bentoml_home()} "
                                 f"(train it: podium train {name})") from None
            resolved.append(stored.version)
            if stored.tag not in tags:
                tags.append(stored.tag)
        versions[name] = resolved
    return tags, versions, pinned


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement.strip(), maxsplit=1)[0].lower()


def build_bentofile(source: Path, gpu: bool = False) -> tuple[dict[str, Any], dict[str, list[str]]]:
    from models.catalog import MODEL_NAMES

    spec = yaml.safe_load(source.read_text())
    tags, versions, pinned = resolve_models()
    spec["models"] = tags
    generated = ("PODIUM_VERSIONS", "PODIUM_MODELS", "PODIUM_SERVER_VERSION")
    envs = [e for e in spec.get("envs") or [] if e["name"] not in generated]
    # The bento carries Podium's source, not its installed distribution: the release goes in here.
    release = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    envs.append({"name": "PODIUM_SERVER_VERSION", "value": release})
    if list(versions) != list(MODEL_NAMES):
        envs.append({"name": "PODIUM_MODELS", "value": ",".join(versions)})
    if pinned:
        served = {n: (versions[n][0] if len(versions[n]) == 1 else versions[n]) for n in pinned}
        envs.append({"name": "PODIUM_VERSIONS", "value": json.dumps(served, separators=(",", ":"))})
    spec["envs"] = envs
    if gpu:
        # Podium's `gpu` extra (onnxruntime-gpu and the CUDA/cuDNN wheels) replaces onnxruntime
        # (they share a folder). device=auto: the image uses CUDA where a GPU is visible and
        # serves on the CPU, with one logged warning, where none is (a deployment that must have
        # the GPU sets PODIUM_DEVICE=cuda: deploy/k8s/deployment-gpu.yaml).
        pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
        packages = [p for p in spec["python"]["packages"] if _name(p) != "onnxruntime"]
        spec["python"]["packages"] = [*packages, *pyproject["optional-dependencies"]["gpu"]]
        envs = [e for e in envs if e["name"] != "PODIUM_DEVICE"]
        envs.append({"name": "PODIUM_DEVICE", "value": "auto"})
        spec["envs"] = envs
        spec.setdefault("labels", {})["runtime"] = "onnx-gpu"
    return spec, versions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=ROOT / "bentofile.yaml")
    parser.add_argument("--output", type=Path, default=None,
                        help="where to write it (default: stdout)")
    parser.add_argument("--gpu", action="store_true",
                        help="the GPU variant: the gpu extra (onnxruntime-gpu + CUDA/cuDNN wheels) "
                             "instead of onnxruntime, PODIUM_DEVICE=auto")
    args = parser.parse_args(argv)
    home = check_home_outside()
    spec, versions = build_bentofile(args.source, gpu=args.gpu)
    text = ("# Generated by deploy/bentofile.py from bentofile.yaml; do not edit.\n"
            + yaml.safe_dump(spec, sort_keys=False))
    if args.output is None:
        sys.stdout.write(text)
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(f"bentofile: {args.output} (store {home})", file=sys.stderr)
    for name, vs in versions.items():
        print(f"  {name:<16} {', '.join(vs)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
