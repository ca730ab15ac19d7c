"""Podium's own pages, instead of BentoML's defaults: the index at ``/`` (what Podium is, its
version, the loaded models, the routes to call), the Swagger UI at ``/docs`` and the OpenAPI
document at ``/docs.json`` with Podium's title, version and description.

BentoML's index is a Swagger UI page with a Google Tag Manager tag, and its OpenAPI description
is BentoML's README ("podium:dev", version "None", badges from img.shields.io and badgen.net,
links to BentoML's Slack): a browser showing them calls third parties. These pages load nothing
from another host: the Swagger UI assets are the ones BentoML ships and serves at
``/static_content/``, and the online validator (which would send the spec's URL to
validator.swagger.io) is off.

The pages are a Starlette app mounted after the inference routes (``services.service``), so
BentoML's own ``/`` and ``/docs.json`` routes, matched after every mount, never answer.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from services.dataplane import DataPlane
from services.errors import PodiumError
from services.http import ERROR_RESPONSES, error_response
from services.protocol import server_version as podium_version
from services.repository import LoadedVersion
from services.routes import TABLE

SUMMARY = ("Podium serves the six PyTorch lecture models (diabetes, four MNIST classifiers, "
           "char-rnn) and imported ONNX or TorchScript models from a versioned BentoML model "
           "store, on ONNX Runtime, with adaptive batching, the Open Inference Protocol and "
           "version rollout.")

# The pages beside the route table's routes (``services.routes.TABLE``), which the index lists too.
PAGES = (
    ("/docs", "GET", "the OpenAPI UI: every route, with example bodies (Try it out)"),
    ("/docs.json", "GET", "the OpenAPI document"),
    ("/schema.json", "GET", "the typed BentoML APIs, as bentoml.SyncHTTPClient reads them"),
    ("/readyz", "GET", "200 once every model is loaded and warm"),
    ("/metrics", "GET", "Prometheus metrics"),
)

STYLE = """
body { font: 15px/1.5 system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem;
       color: #1b1b1b; }
h1 { margin-bottom: 0; } .version { color: #666; margin-top: 0; }
table { border-collapse: collapse; width: 100%; margin: 1rem 0 2rem; }
th, td { text-align: left; padding: .35rem .6rem; border-bottom: 1px solid #ddd; vertical-align: top; }
th { background: #f4f4f4; } code { background: #f4f4f4; padding: 0 .25rem; }
"""

SWAGGER = """<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>Podium API</title>
<link rel="stylesheet" href="/static_content/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/static_content/swagger-ui-bundle.js"></script>
<script>
window.ui = SwaggerUIBundle({url: "/docs.json", dom_id: "#swagger-ui", deepLinking: true,
  validatorUrl: null, presets: [SwaggerUIBundle.presets.apis], layout: "BaseLayout"});
</script></body></html>
"""


def _cells(*values: str) -> str:
    return "<tr>" + "".join(f"<td>{value}</td>" for value in values) + "</tr>"


def _loaded(plane: DataPlane) -> dict[str, LoadedVersion] | str:
    """Each served model's stable version, or why there is none yet (a plane still loading)."""
    try:
        repo = plane.repo()
    except PodiumError as exc:
        return exc.message
    return {name: repo.model(name)[stable] for name, stable in sorted(repo.stable.items())}


def _models(plane: DataPlane, loaded: dict[str, LoadedVersion] | str) -> str:
    """The loaded models: kind, stable version, the other versions, runtime and device. Names and
    descriptions come from the store (an imported model's are the user's): escaped."""
    if isinstance(loaded, str):
        return f"<p>{html.escape(loaded)}</p>"
    rows = []
    for name, stable in loaded.items():
        others = ", ".join(v for v in plane.repo().model(name) if v != stable.version) or "–"
        rows.append(_cells(f'<a href="/v1/models/{html.escape(name)}">{html.escape(name)}</a>',
                           html.escape(stable.kind.name), f"<code>{html.escape(stable.version)}</code>",
                           html.escape(others),
                           html.escape(f"{stable.runtime.kind} on {stable.runtime.device}"),
                           html.escape(stable.spec.description)))
    head = "<tr><th>model</th><th>kind</th><th>stable</th><th>other versions</th><th>runtime</th>" \
           "<th>what</th></tr>"
    return f"<table>{head}{''.join(rows)}</table>" if rows else "<p>No model is loaded.</p>"


def _routes(loaded: dict[str, LoadedVersion] | str) -> str:
    """The route table's routes (a model's, not each version's) and the pages; a ``/v1`` model
    endpoint names the loaded models whose kind serves it."""
    served = {} if isinstance(loaded, str) else loaded
    rows = []
    for path, method, what in (*PAGES, *((r.path, r.method, r.summary) for r in TABLE
                                         if "{version}" not in r.path)):
        endpoint = path.rsplit("/", 1)[-1]
        models = [name for name, v in served.items()
                  if path.startswith("/v1/models/{name}/") and endpoint in v.kind.endpoints]
        if models:
            what = f"{what} ({', '.join(models)})"
        linked = "{" not in path and method == "GET"
        cell = f'<a href="{path}">{path}</a>' if linked else f"<code>{path}</code>"
        rows.append(_cells(cell, method, html.escape(what)))
    return "".join(rows)


def render_index(plane: DataPlane, apis: dict[str, Any]) -> str:
    """The index page's HTML: nothing in it loads from the network."""
    loaded = _loaded(plane)
    typed = "".join(_cells(f"<code>{html.escape(name)}</code>",
                           html.escape((api.doc or "").strip().split("\n\n")[0]))
                    for name, api in apis.items())
    return f"""<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>Podium {podium_version()}</title><style>{STYLE}</style></head>
<body>
<h1>Podium</h1><p class="version">version {html.escape(podium_version())}</p>
<p>{SUMMARY}</p>
<h2>Models</h2>{_models(plane, loaded)}
<h2>Routes</h2><table><tr><th>path</th><th>method</th><th>what</th></tr>{_routes(loaded)}</table>
<h2>From Python</h2>
<p><code>bentoml.SyncHTTPClient(url)</code> (or <code>AsyncHTTPClient</code>) calls these typed
APIs, over the same batching, limits, metrics and rollout as <code>/v1</code>:</p>
<table><tr><th>method</th><th>what</th></tr>{typed}</table>
</body></html>
"""


def openapi_info() -> dict[str, Any]:
    """Podium's ``info`` object of the OpenAPI document (BentoML's names the BentoML team)."""
    return {"title": "Podium", "version": podium_version(),
            "description": f"{SUMMARY}\n\nThe model kinds' routes are under `/v1` and `/v2`; "
                           f"the typed BentoML APIs (for `bentoml.SyncHTTPClient`) at the top "
                           f"level. The index page `/` lists the loaded models."}


def _openapi_types(node: Any) -> Any:
    """BentoML writes a NumPy field inside a model as ``{"type": "tensor"}``, which is no
    OpenAPI type (tools reject the document): it is an array of numbers in JSON."""
    if isinstance(node, dict):
        if node.get("type") == "tensor":
            return {"type": "array", "items": {}, "description": "a tensor as nested lists"}
        return {key: _openapi_types(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_openapi_types(value) for value in node]
    return node


def create_app(plane: DataPlane, service: Callable[[], Any]) -> Starlette:
    """The pages as an ASGI app; ``service()`` is the BentoML service (its typed APIs and its
    OpenAPI document, once it exists)."""

    async def index(request: Request) -> Response:
        return HTMLResponse(render_index(plane, service().apis))

    async def docs(request: Request) -> Response:
        return HTMLResponse(SWAGGER)

    async def docs_json(request: Request) -> Response:
        try:
            spec = service().openapi_spec.asdict()
        except Exception as exc:  # logged, a JSON 500 naming nothing internal
            return error_response(exc)
        spec["info"] = openapi_info()
        for api in service().apis.values():  # they answer Podium's errors, not BentoML's shape
            operation = spec["paths"].get(api.route, {}).get("post")
            if operation is not None:
                operation["responses"] = {code: answer for code, answer in operation["responses"].items()
                                          if str(code).startswith("2")} | ERROR_RESPONSES
        # Its response codes are int keys: the json module's JSONResponse, not orjson.
        return JSONResponse(_openapi_types(spec))

    return Starlette(routes=[Route("/", index, methods=["GET"]), Route("/docs", docs, methods=["GET"]),
                             Route("/docs.json", docs_json, methods=["GET"])])
