"""The browser side, served by the service itself: the demo page (``/``), its service worker
(``/service-worker.js``), the dashboard (``/dashboard``) and their static files (``/static/…``).

Files are read once when the routes are set up (they are small) and served from memory with
an ETag. HTML pages carry a strict Content-Security-Policy (no inline script or style; the
pages have none), ``nosniff`` and a referrer policy.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from yarl import URL

WEB_DIR = Path(__file__).resolve().parent

_CONTENT_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".md": "text/plain",
    ".txt": "text/plain",
}
_TEXT = {"text/html", "text/javascript", "text/css", "image/svg+xml", "text/plain"}
# Only these are published under /static/ (source maps, Python files and the like are not).
_STATIC_SUFFIXES = {".js", ".css", ".svg", ".png"}
_VENDOR_SUFFIXES = {".js"}  # plus the license files, which are published too

# An origin we are willing to write into the CSP: scheme, host name or IPv4, optional port.
_SAFE_ORIGIN = re.compile(r"https?://[A-Za-z0-9.-]+(?::\d{1,5})?")  # fullmatch only

_COMMON_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


def _load(path: Path) -> Asset:
    body = path.read_bytes()
    return Asset(
        body=body,
        content_type=_CONTENT_TYPES[path.suffix],
        etag='"' + hashlib.sha256(body).hexdigest()[:32] + '"',
    )


def api_origin(raw: str | None) -> str | None:
    """The origin of an ``?api=`` base URL, if it is a plain http(s) origin; else None."""
    if not raw:
        return None
    try:
        url = URL(raw)
        if url.scheme not in {"http", "https"} or not url.host or url.user or url.password:
            return None
        origin = str(url.origin())
    except ValueError:
        return None
    return origin if _SAFE_ORIGIN.fullmatch(origin) else None


def content_security_policy(api: str | None, *, geolocation: bool) -> dict[str, str]:
    """Security headers for an HTML page; ``api`` is an extra origin the page may call."""
    connect = "'self'" + (f" {api}" if api else "")
    csp = "; ".join(
        (
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data:",
            f"connect-src {connect}",
            "worker-src 'self'",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        )
    )
    return {
        "Content-Security-Policy": csp,
        "Referrer-Policy": "strict-origin-when-cross-origin",
        "Cross-Origin-Opener-Policy": "same-origin",
        "Permissions-Policy": (
            "geolocation=(self), camera=(), microphone=()"
            if geolocation
            else "geolocation=(), camera=(), microphone=()"
        ),
    }


def _respond(request: web.Request, asset: Asset, headers: dict[str, str]) -> web.Response:
    headers = {**_COMMON_HEADERS, **headers, "ETag": asset.etag}
    if asset.etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    return web.Response(
        body=asset.body,
        content_type=asset.content_type,
        charset="utf-8" if asset.content_type in _TEXT else None,
        headers=headers,
    )


def _page(asset: Asset, *, geolocation: bool):
    async def handler(request: web.Request) -> web.Response:
        api = api_origin(request.query.get("api"))
        return _respond(request, asset, content_security_policy(api, geolocation=geolocation))

    return handler


def _script(asset: Asset):
    async def handler(request: web.Request) -> web.Response:
        return _respond(request, asset, {})

    return handler


def _static_assets() -> dict[str, Asset]:
    assets: dict[str, Asset] = {}
    for path in sorted((WEB_DIR / "static").iterdir()):
        if path.is_file() and path.suffix in _STATIC_SUFFIXES:
            assets[path.name] = _load(path)
    for path in sorted((WEB_DIR / "vendor").iterdir()):
        if path.is_file() and (path.suffix in _VENDOR_SUFFIXES or "LICENSE" in path.name):
            assets[f"vendor/{path.name}"] = _load(path)
    return assets


def setup_routes(app: web.Application) -> None:
    """``/``, ``/dashboard``, ``/service-worker.js`` and ``/static/{name}``."""
    assets = _static_assets()

    async def static(request: web.Request) -> web.Response:
        asset = assets.get(request.match_info["name"])
        if asset is None:
            raise web.HTTPNotFound()
        return _respond(request, asset, {})

    app.router.add_get("/", _page(_load(WEB_DIR / "index.html"), geolocation=True))
    app.router.add_get("/dashboard", _page(_load(WEB_DIR / "dashboard.html"), geolocation=False))
    # Served from the root, so its default scope ("/") covers the demo page.
    app.router.add_get("/service-worker.js", _script(_load(WEB_DIR / "service-worker.js")))
    app.router.add_get("/static/{name:.+}", static)
