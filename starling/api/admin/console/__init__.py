"""The web admin console: static files shipped in the package and served at
``/_starling/admin/`` on the client listener (no build step, no external network).

The page itself needs no authentication; everything it shows comes from the admin API
with the token the admin logs in for. A strict Content-Security-Policy allows only this
origin's script and style, so injected markup could not run even if it got in.
"""

from __future__ import annotations

from importlib import resources

from aiohttp import web

PREFIX = "/_starling/admin"
_FILES = {
    "index.html": "text/html",
    "console.js": "text/javascript",
    "console.css": "text/css",
}
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self';"
        " img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _load() -> dict[str, bytes]:
    root = resources.files(__name__)
    return {name: root.joinpath(name).read_bytes() for name in _FILES}


def add_console_routes(app: web.Application) -> None:
    """GET /_starling/admin/ (and its two assets); /_starling/admin redirects there."""
    files = _load()

    async def serve(request: web.Request) -> web.Response:
        name = request.match_info.get("name") or "index.html"
        if name not in files:
            raise web.HTTPNotFound()
        return web.Response(
            body=files[name],
            content_type=_FILES[name],
            charset="utf-8",
            headers=_SECURITY_HEADERS,
        )

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound(PREFIX + "/")

    app.router.add_get(PREFIX, redirect)
    app.router.add_get(PREFIX + "/", serve)
    app.router.add_get(PREFIX + "/{name}", serve)
