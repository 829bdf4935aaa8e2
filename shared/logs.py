"""How the gateway's processes write their logs: text for people, or one JSON object per line for
log pipelines (``--log-format json``).

A record made while a request or a job is being served names it: :data:`log_context` holds, for
the task serving it, anything with ``request_id`` and ``client_request_id`` attributes (the front
door's request record, a worker's job), and both formats add those two. So a worker's warning
about a job carries the id the client sent, without every log call spelling it.

A record may carry ``fields`` (``logger.info("request", extra={"fields": {...}})``): the JSON form
merges them into its object, the text form appends them as ``key=value``, quoting any value that
could break the line (a client's path, an upstream's message).
"""

from __future__ import annotations

import logging
import re
import time
from contextvars import ContextVar
from typing import Any

import msgspec

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# The request or job the current task serves; set by whoever starts serving it.
log_context: ContextVar[Any] = ContextVar("reactor_log_context", default=None)

_CONTEXT_FIELDS = ("request_id", "client_request_id")
# A text value left unquoted: nothing in it could end the line or blur a key=value pair.
_BARE = re.compile(r"[A-Za-z0-9._:/+@-]+")
_encoder = msgspec.json.Encoder(enc_hook=str)
# Query parameters that carry credentials when a client puts one in the URL. The front door refuses
# such a request (``api/auth.py``); uvicorn's access line still names its URL, so the value is masked.
CREDENTIAL_QUERY_PARAMS = frozenset({"access_token", "token", "api_key", "key"})
_CREDENTIAL_IN_QUERY = re.compile(
    r"([?&](?:" + "|".join(sorted(CREDENTIAL_QUERY_PARAMS)) + r")=)[^&#\s]*", re.IGNORECASE)


class MaskQueryCredentials(logging.Filter):
    """Masks credential values in the URL of uvicorn's access lines (its arguments are
    ``client, method, path_with_query, http_version, status``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 5 and isinstance(args[2], str) and "=" in args[2]:
            record.args = (args[0], args[1], _CREDENTIAL_IN_QUERY.sub(r"\1[redacted]", args[2]), *args[3:])
        return True


def _context(record: logging.LogRecord) -> dict[str, Any]:
    ctx = log_context.get()
    if ctx is None:
        return {}
    out = {}
    for name in _CONTEXT_FIELDS:
        value = getattr(ctx, name, None)
        if value is not None:
            out[name] = value
    return out


def _text_value(value: Any) -> str:
    if type(value) is int or type(value) is float:
        return repr(value)
    text = value if isinstance(value, str) else _encoder.encode(value).decode()
    return text if _BARE.fullmatch(text) else _encoder.encode(text).decode()


class TextFormatter(logging.Formatter):
    """The classic one-line format, with the request's ids and the record's fields appended."""

    def __init__(self, fmt: str = TEXT_FORMAT) -> None:
        super().__init__(fmt)

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        pairs = {**_context(record), **(getattr(record, "fields", None) or {})}
        if not pairs:
            return line
        return line + "".join(f" {k}={_text_value(v)}" for k, v in pairs.items() if v is not None)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message``, the
    request's ids, the record's fields, and ``exception`` (the traceback) when there is one.

    uvicorn's access lines (``--access-log``) get ``client``, ``method``, ``path`` and ``status``.
    """

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update(_context(record))
        fields = getattr(record, "fields", None)
        if fields:
            out.update(fields)
        if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) == 5:
            client, method, path, _, status = record.args
            out.update(client=client, method=method, path=path, status=status)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        return _encoder.encode(out).decode()


def configure(level: str, fmt: str = "text") -> None:
    """Send every record at ``level`` and above to stderr in ``fmt`` (one of :data:`FORMATS`)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler])
    # On the logger, not the handler: uvicorn's own logging config keeps a logger's filters.
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, MaskQueryCredentials) for f in access.filters):
        access.addFilter(MaskQueryCredentials())
