"""Podium's own pages (issue 14): ``/`` describes Podium and its loaded models, ``/docs`` is a
Swagger UI on local assets, ``/docs.json`` carries Podium's title and version — and none of them
makes a browser call another host (BentoML's defaults load Google Tag Manager and badges)."""

from __future__ import annotations

import importlib.metadata
import re

import httpx
import pytest

from services.dataplane import DataPlane
from services.index_page import render_index
from services.launch import Server

VERSION = importlib.metadata.version("podium")
URL = re.compile(r"""(?:https?:)?//([^/"'\s)<>]+)""")  # absolute and protocol-relative URLs


def foreign_hosts(text: str, server: Server) -> set[str]:
    own = f"127.0.0.1:{server.port}"
    return {host for host in URL.findall(text) if host != own}


def test_the_index_describes_podium_and_every_loaded_model(server: Server) -> None:
    page = httpx.get(f"{server.url}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert f"<title>Podium {VERSION}</title>" in html and f"version {VERSION}" in html
    assert "BentoML Prediction Service" not in html and "googletagmanager" not in html
    models = httpx.get(f"{server.url}/v1/models").json()["models"]
    assert models
    for model in models:
        info = httpx.get(f"{server.url}/v1/models/{model['name']}").json()
        assert f'<a href="/v1/models/{model["name"]}">' in html
        if model["stable"]:
            assert f"<code>{model['version']}</code>" in html
            assert f"{model['runtime']} on {model['device']}" in html
        assert f"<td>{info['kind']}</td>" in html
    for link in ("/docs", "/docs.json", "/v1/models", "/v2", "/metrics", "/schema.json"):
        assert f'href="{link}"' in html
        assert httpx.get(f"{server.url}{link}").status_code == 200, link
    for api in ("classify_images", "predict_rows", "generate_text", "infer_tensors"):
        assert f"<code>{api}</code>" in html
    assert foreign_hosts(html, server) == set()
    head = httpx.head(f"{server.url}/")
    assert head.status_code == 200 and head.content == b""


def test_the_swagger_ui_loads_only_local_assets(server: Server) -> None:
    page = httpx.get(f"{server.url}/docs")
    assert page.status_code == 200
    assert foreign_hosts(page.text, server) == set()
    assert "validatorUrl: null" in page.text  # else it sends the spec's URL to validator.swagger.io
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert len(assets) == 2
    for asset in assets:
        assert asset.startswith("/static_content/")
        assert httpx.get(f"{server.url}{asset}").status_code == 200, asset


def test_the_openapi_document_names_podium_and_its_version(server: Server) -> None:
    spec = httpx.get(f"{server.url}/docs.json").json()
    info = spec["info"]
    assert info["title"] == "Podium" and info["version"] == VERSION
    assert "contact" not in info and "created with BentoML" not in info["description"]
    assert URL.search(info["description"]) is None  # Swagger UI renders it: no badges, no links
    assert "/v1/models/{name}/predict" in spec["paths"] and "/classify_images" in spec["paths"]
    # The typed APIs document Podium's error body (BentoML's says "detail" is a string).
    errors = spec["paths"]["/predict_rows"]["post"]["responses"]
    assert errors["4XX"]["content"]["application/json"]["schema"]["required"] == ["error"]
    assert not {"400", "404", "500"} & set(errors)


@pytest.mark.parametrize("path", ["/", "/docs"])
def test_the_pages_only_answer_get_and_head(server: Server, path: str) -> None:
    answer = httpx.post(f"{server.url}{path}", content=b"{}")
    assert answer.status_code == 405 and "error" in answer.json()


def test_a_plane_still_loading_is_said_on_the_page() -> None:
    html = render_index(DataPlane(), {})
    assert "still loading its models" in html and f"version {VERSION}" in html
