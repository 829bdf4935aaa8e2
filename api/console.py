"""The operator console at ``/ai/console``: the static files that ``console/`` builds.

The console is served by the front door itself rather than by a separate web server, so it is on
the same origin as the API: the page calls ``/auth/v1`` and ``/ai/v1`` with a bearer token, needs
no CORS and carries no secret. The built files (``console/`` → ``api/console_dist/``, Vite) are
package data, so ``pip install .`` ships them and no Node is needed where the gateway runs; an
installation made without building them answers a 404 that says how to build them.

Caching follows the build: file names under ``assets/`` carry a content hash, so they are cached
for a year as immutable, while ``index.html`` (which names the current assets) is revalidated on
every load with its ETag. Files are read once per change and kept in memory with a gzip copy for
clients that accept it; the whole console is a few hundred kilobytes. The page runs under a
Content-Security-Policy that allows only its own scripts and styles and calls to its own origin.
"""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path
from typing import NamedTuple

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from shared.errors import NotFound

PREFIX = "/ai/console"
DIST = Path(__file__).resolve().parent / "console_dist"
INDEX = "index.html"

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".webp": "image/webp",
    ".woff2": "font/woff2",
    ".txt": "text/plain; charset=utf-8",
}
COMPRESSIBLE = {".html", ".js", ".mjs", ".css", ".json", ".map", ".svg", ".txt"}
GZIP_MIN_BYTES = 1024

IMMUTABLE = "public, max-age=31536000, immutable"   # assets/: their names change with their content
REVALIDATE = "no-cache"                             # index.html: always asks whether it changed
SHORT = "public, max-age=3600"                      # anything else (the icon)

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
# The page: its own scripts and styles only, API calls to its own origin, never framed.
PAGE_HEADERS = {
    **SECURITY_HEADERS,
    "Content-Security-Policy": ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                                "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'; "
                                "object-src 'none'"),
    "X-Frame-Options": "DENY",
}

NOT_BUILT = ("The operator console is not built in this installation: run `npm ci && npm run build` in the "
             "repository's console/ directory, then reinstall (`pip install .`).")


class Loaded(NamedTuple):
    stamp: tuple[int, int]      # mtime_ns and size: a rebuild is seen at once
    body: bytes
    gzipped: bytes | None
    etag: str


class ConsoleFiles:
    """Serves one built console directory.

    :param directory: the build output (``index.html`` and ``assets/``).
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory.resolve()
        self._cache: dict[Path, Loaded] = {}

    def _locate(self, relative: str) -> Path | None:
        """The file for a request path under the prefix, or None: never outside the directory, never
        a dotfile, never a directory."""
        parts = [p for p in relative.split("/") if p]
        if any(p.startswith(".") or "\\" in p or "\x00" in p for p in parts):
            return None
        path = self.directory.joinpath(*parts) if parts else self.directory / INDEX
        try:
            resolved = path.resolve(strict=True)
        except (OSError, RuntimeError):
            return None
        if not resolved.is_relative_to(self.directory) or not resolved.is_file():
            return None
        return resolved

    def _load(self, path: Path) -> Loaded:
        stat = path.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        cached = self._cache.get(path)
        if cached is not None and cached.stamp == stamp:
            return cached
        body = path.read_bytes()
        gzipped = None
        if path.suffix in COMPRESSIBLE and len(body) >= GZIP_MIN_BYTES:
            gzipped = gzip.compress(body, compresslevel=9, mtime=0)
        loaded = Loaded(stamp, body, gzipped, f'"{hashlib.sha256(body).hexdigest()[:32]}"')
        self._cache[path] = loaded
        return loaded

    def response(self, request: Request, relative: str) -> Response:
        if not (self.directory / INDEX).is_file():
            raise NotFound(NOT_BUILT)
        path = self._locate(relative)
        if path is None:
            raise NotFound(f"No console file at {request.url.path}.")
        loaded = self._load(path)
        rel = path.relative_to(self.directory)
        is_page = rel.suffix == ".html"
        headers = dict(PAGE_HEADERS if is_page else SECURITY_HEADERS)
        headers["Cache-Control"] = REVALIDATE if is_page else IMMUTABLE if rel.parts[0] == "assets" else SHORT
        headers["ETag"] = loaded.etag
        if loaded.gzipped is not None:
            headers["Vary"] = "Accept-Encoding"
        if loaded.etag in {tag.strip() for tag in request.headers.get("if-none-match", "").split(",")}:
            return Response(status_code=304, headers=headers)
        body = loaded.body
        if loaded.gzipped is not None and "gzip" in request.headers.get("accept-encoding", "").lower():
            body = loaded.gzipped
            headers["Content-Encoding"] = "gzip"
        media_type = CONTENT_TYPES.get(rel.suffix.lower(), "application/octet-stream")
        return Response(body, media_type=media_type, headers=headers)


def routes(directory: Path = DIST) -> list[Route]:
    """``/ai/console`` and everything under it, served from ``directory``."""
    files = ConsoleFiles(directory)

    async def console_page(request: Request) -> Response:
        return files.response(request, "")

    async def console_file(request: Request) -> Response:
        return files.response(request, request.path_params["path"])

    return [
        Route(PREFIX, console_page, methods=["GET"]),
        Route(PREFIX + "/{path:path}", console_file, methods=["GET"]),
    ]


ROUTES = routes()
