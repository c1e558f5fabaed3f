"""The outermost layer of every request: its id, its access log line, its metrics, and the
last word on errors nobody handled.

A pure ASGI middleware, not ``BaseHTTPMiddleware``: an unhandled exception is logged with
the request id and answered with a bare 500 problem right here, never re-raised, so the
server keeps the keep-alive connection open (uvicorn closes the connection of any exception
that reaches it) and the response is counted like any other.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gradstore.db.logs import log_context
from gradstore.service.metrics import REQUEST_SECONDS, REQUESTS
from gradstore.service.problems import internal_error_response

REQUEST_ID_HEADER = "X-Request-ID"
# accepted from a caller as is: short, printable, no spaces or quotes (safe in logs)
_ACCEPTED_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/+=@-]{0,127}")
_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}
_QUIET = {"/healthz", "/readyz", "/metrics"}  # probes and scrapes log at debug level

access_log = logging.getLogger("gradstore.access")
log = logging.getLogger("gradstore.api")


def request_id_from(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            if _ACCEPTED_ID.fullmatch(candidate):
                return candidate
            break
    return uuid.uuid4().hex


class RequestMiddleware:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(scope)
        started = time.perf_counter()
        sent: dict[str, int] = {}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                sent["status"] = message["status"]
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        with log_context(request_id=request_id):
            try:
                await self.app(scope, receive, send_with_id)
            except Exception:
                log.exception("unhandled error in %s %s", scope["method"], scope["path"])
                if "status" in sent:  # too late for a 500: the connection must close
                    self._record(scope, 500, started)
                    raise
                await internal_error_response(scope["path"])(scope, receive, send_with_id)
            self._record(scope, sent.get("status", 500), started)

    @staticmethod
    def _record(scope: Scope, status: int, started: float) -> None:
        seconds = time.perf_counter() - started
        route = getattr(scope.get("route"), "path", "unmatched")
        method = scope["method"] if scope["method"] in _METHODS else "OTHER"
        REQUESTS.labels(method, route, str(status)).inc()
        REQUEST_SECONDS.labels(method, route).observe(seconds)
        level = logging.DEBUG if scope["path"] in _QUIET and status < 500 else logging.INFO
        ids = {  # the resource ids of the route, so the line is found by datastore or dataset
            name: str(value)[:64]
            for name, value in (scope.get("path_params") or {}).items()
            if name.endswith("_id")
        }
        access_log.log(
            level,
            "%s %s %s",
            method,
            scope["path"][:512],
            status,
            extra={
                "method": method,
                "path": scope["path"][:512],
                "route": route,
                "status": status,
                "duration_ms": round(seconds * 1000, 2),
                "client": (scope.get("client") or ("", 0))[0],
                **ids,
            },
        )
