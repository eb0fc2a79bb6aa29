"""/docs: an interactive API page (Swagger UI) over this server's /openapi.json.

Served from the files of the `swagger-ui-bundle` package, installed with the server: no CDN,
since edge boxes are often offline. The page and its files are open (they hold nothing of the
server's); the document is not, where API keys are on: the page then asks for a key, fetches the
document with it and hands it to Swagger UI's Authorize, which every "try it out" call carries.
Off with --no-docs (EDGE_EMBED_DOCS=false): the routes are not added at all.
"""

from __future__ import annotations

from functools import cache

from aiohttp import web
from swagger_ui_bundle import swagger_ui_path

DOCS_PATH = "/docs"
DOCS_ASSET_PATH = "/docs/{asset}"
_JS = "text/javascript"
_CSS = "text/css"
_PAGE_SCRIPT = "edge-embed-docs.js"
# The page's files by name, with their media types: Swagger UI's two, and the page's own script.
ASSETS = {"swagger-ui-bundle.js": _JS, "swagger-ui.css": _CSS, _PAGE_SCRIPT: _JS}
# The files change only with the installed package; an hour keeps a reload cheap without
# holding an upgraded server's page back for long.
ASSET_MAX_AGE_S = 3600

# URLs relative to the page, so that it works behind a proxy that serves it under a prefix.
_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>edge-embed API</title>
<link rel="stylesheet" href="docs/swagger-ui.css">
<style>
#key-form { font-family: sans-serif; margin: 2em; }
#key-form input { width: 28em; padding: .4em; }
#key-error { color: #b00; }
</style>
</head>
<body>
<form id="key-form" hidden>
<p>This server needs an API key to show its API.</p>
<input id="key" type="password" placeholder="API key" autocomplete="off">
<button type="submit">Show the API</button>
<p id="key-error"></p>
</form>
<div id="swagger-ui"></div>
<script src="docs/swagger-ui-bundle.js"></script>
<script src="docs/edge-embed-docs.js"></script>
</body>
</html>
"""

_SCRIPT = """"use strict";
// Loads /openapi.json (with the key typed in, where the server asks for one) and shows it in
// Swagger UI, the key passed to its Authorize so that "try it out" calls carry it.
(function () {
  const form = document.getElementById("key-form");
  const error = document.getElementById("key-error");
  const specUrl = new URL("openapi.json", location.href).href;

  async function show(key) {
    const headers = key ? {Authorization: "Bearer " + key} : {};
    let resp;
    try {
      resp = await fetch(specUrl, {headers: headers});
    } catch (e) {
      error.textContent = "Could not reach the server: " + e;
      form.hidden = false;
      return;
    }
    if (resp.status === 401) {
      error.textContent = key ? "The server refused this key." : "";
      form.hidden = false;
      return;
    }
    const spec = await resp.json();
    if (!resp.ok) {
      error.textContent = (spec.error && spec.error.message) || resp.statusText;
      form.hidden = false;
      return;
    }
    form.hidden = true;
    // The calls go where the document came from, prefix included.
    spec.servers = [{url: new URL(".", specUrl).href.replace(/\\/$/, "")}];
    window.ui = SwaggerUIBundle({
      spec: spec,
      dom_id: "#swagger-ui",
      deepLinking: true,
      validatorUrl: null,  // its default is a public validator: nothing leaves this server
      onComplete: function () {
        if (key) {
          window.ui.preauthorizeApiKey("bearer", key);
        }
      },
    });
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    show(document.getElementById("key").value.trim());
  });
  show("");
})();
"""


@cache
def _asset(name: str) -> bytes:
    if name == _PAGE_SCRIPT:
        return _SCRIPT.encode()
    return bytes((swagger_ui_path / name).read_bytes())


async def page(request: web.Request) -> web.Response:
    return web.Response(text=_PAGE, content_type="text/html")


async def asset(request: web.Request) -> web.Response:
    name = request.match_info["asset"]
    media = ASSETS.get(name)
    if media is None:
        raise web.HTTPNotFound()
    return web.Response(body=_asset(name), content_type=media,
                        headers={"Cache-Control": f"max-age={ASSET_MAX_AGE_S}"})


def add_routes(app: web.Application) -> None:
    app.router.add_get(DOCS_PATH, page)
    app.router.add_get(DOCS_ASSET_PATH, asset)
