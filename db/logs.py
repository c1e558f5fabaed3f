"""Structured logs: one JSON object per line, carrying the ids that let an operator follow work.

The API and the workers log through the standard ``logging`` module; ``log_context`` binds
ids (request, datastore, unit, worker) for the code that runs inside it, and every record
logged there carries them, whatever logger it went through. A build keeps the id of the
request that created it, so a request can be followed from the API's access line to every
unit a worker ran for it.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

_EMPTY: Mapping[str, Any] = MappingProxyType({})
_context: ContextVar[Mapping[str, Any]] = ContextVar("gradstore_log_context", default=_EMPTY)

# attributes every LogRecord has; anything else on a record came from ``extra=``
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "color_message",  # uvicorn's message with terminal colours
}


def current(name: str) -> Any:
    """A bound id (``request_id``, ``datastore_id``, ...) or None."""
    return _context.get().get(name)


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Bind ids to every record logged inside (in this thread or task, and what it starts)."""
    token = _context.set({**_context.get(), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


def bind(**fields: Any) -> None:
    """Bind ids for the rest of the current context (a request's task, a worker's thread)."""
    _context.set({**_context.get(), **{k: v for k, v in fields.items() if v is not None}})


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "message", <bound ids>, <extra fields>, "exception"}``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(_context.get())
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)  # ASCII: one line per record, whatever the text


class TextFormatter(logging.Formatter):
    """Human-readable lines for a terminal, with the bound ids at the end."""

    def __init__(self):
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = {**_context.get()}
        fields.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if fields:
            line += " " + " ".join(f"{k}={v}" for k, v in fields.items())
        return line


def configure_logging(fmt: str = "json", level: str = "INFO") -> None:
    """Send every logger (uvicorn's included) to stderr in one format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
