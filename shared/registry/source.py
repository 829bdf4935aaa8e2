"""Getting an overlay's text and its TOML tables: from a file, from a URL, and past the page's headers.

Every failure becomes a `RegistryError` that starts with the file path or URL, so start-up and a
hot reload can both report it as is.

The product page spells alias headers `[aliases.reasoning/cheapest]`, which TOML rejects because `/`
is not allowed in a bare key. People copy that spelling, so `parse_toml` quotes such header segments.
It leaves knowing where a statement starts to tomllib rather than lexing TOML itself: only when the
text does not parse is a line that reads as a table header quoted, and only if the lines before it
parse on their own, which proves it starts a statement rather than sitting inside a multi-line string
or array. Anything else wrong is reported by tomllib as usual.
"""

from __future__ import annotations

import asyncio
import os
import re
import tomllib
from pathlib import Path
from typing import Any

import httpx

from .model import _BARE_KEY, RegistryError, _quoted


def read_overlay_file(path: str | os.PathLike[str]) -> str:
    """The text of an overlay file.

    Parameters:
        path: the file, e.g. the `registry_overlay` setting from reactor.toml.

    Raises RegistryError naming `path` if it cannot be read or is not UTF-8, as TOML requires.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise RegistryError(f"{os.fspath(path)}: cannot read registry overlay: {exc.strerror or exc}") from exc
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RegistryError(f"{os.fspath(path)}: not UTF-8 text (bad byte at offset {exc.start})") from exc


async def fetch_overlay(url: str, timeout: float) -> str:
    """The text of an overlay served over HTTP(S), following redirects.

    Parameters:
        url: where to GET it, e.g. the `registry_url` setting from reactor.toml.
        timeout: seconds for the whole fetch, not per network operation, so a server that trickles
            bytes cannot hold start-up hostage.

    Raises RegistryError naming `url` on a network error, a timeout or any status but 200.
    """
    try:
        async with asyncio.timeout(timeout):
            async with httpx.AsyncClient(timeout=timeout, follow_redirects=True) as client:
                response = await client.get(url)
    except (TimeoutError, httpx.TimeoutException):
        raise RegistryError(f"{url}: no registry overlay within {timeout:g}s") from None
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise RegistryError(f"{url}: cannot fetch registry overlay: {type(exc).__name__}: {exc}") from exc
    if response.status_code != 200:
        raise RegistryError(
            f"{url}: expected HTTP 200 for the registry overlay, got {response.status_code} {response.reason_phrase}"
        )
    try:
        return response.content.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RegistryError(f"{url}: not UTF-8 text (bad byte at offset {exc.start})") from exc


# One dotted segment of a table header: a basic or literal string, or an unquoted run without
# whitespace, quotes, brackets, `#`, `=` or control characters (a line holding those is broken in
# some other way, which tomllib should report rather than we hide).
_SEGMENT = r"""\s*(?:"(?:[^"\\\n]|\\.)*"|'[^'\n]*'|[^\s\x00-\x1f\x7f"'.\[\]#=]+)\s*"""
_HEADER = re.compile(rf"(\s*\[\[?)({_SEGMENT}(?:\.{_SEGMENT})*)(\]\]?\s*(?:#.*)?)")
_STRING_OR_RUN = re.compile(r"""("(?:[^"\\]|\\.)*"|'[^']*')|[^\s"'.]+""")


def parse_toml(text: str, source: str) -> dict[str, Any]:
    """Parse registry TOML, accepting the page's unquoted `[aliases.reasoning/cheapest]` headers.

    Parameters:
        text: the TOML.
        source: the file path or URL it came from, for error messages.

    Raises RegistryError naming `source` if the text is not TOML even after quoting headers.
    """
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        pass
    lines = text.split("\n")
    start = 0  # a line known to begin a statement: the top, or the last header quoted
    for i, line in enumerate(lines):
        quoted = _quote_header(line)
        if quoted == line:
            continue
        # Line i is a header only if the lines since `start` parse on their own; each stretch is
        # parsed about once, so a file of many such headers costs two parses, not one per header.
        try:
            tomllib.loads("\n".join(lines[start:i]))
        except tomllib.TOMLDecodeError as exc:
            if str(exc).endswith("(at end of document)"):
                continue  # line i is inside a multi-line string or array
            break  # broken before line i: leave that to tomllib
        lines[i], start = quoted, i
    try:
        return tomllib.loads("\n".join(lines))
    except tomllib.TOMLDecodeError as exc:
        # Quoting never adds or removes lines, so tomllib's line numbers hold for the original text.
        raise RegistryError(f"{source}: invalid TOML: {exc}") from exc


def _quote_header(line: str) -> str:
    """`line` with header segments that TOML forbids in bare keys quoted: `[aliases."reasoning/cheapest"]`."""
    header = _HEADER.fullmatch(line)
    if header is None:
        return line
    key = _STRING_OR_RUN.sub(lambda m: m[0] if m[1] or _BARE_KEY.fullmatch(m[0]) else _quoted(m[0]), header[2])
    return header[1] + key + header[3]
