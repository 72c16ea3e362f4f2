"""Cross-cutting HTTP behaviour: problem+json errors, CORS, and quiet protocol errors.

The access log is in ``app.logs``; request counting and timing in ``app.metrics``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError
from pydantic import ValidationError

from app.problems import Problem, problem_response
from schema.errors import summary, validation_errors
from schema.storage import StorageBusyError, StorageUnavailableError

log = logging.getLogger("analytics.http")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_KEEP_HEADERS = ("Allow", "Retry-After", "WWW-Authenticate")
_ROUTING_ERRORS = {
    404: [{"field": "path", "message": "is not an endpoint of this service"}],
    405: [{"field": "method", "message": "is not allowed here (see the Allow header)"}],
}
_DETAILS = {
    404: "no such endpoint: {method} {path}",
    405: "{method} is not allowed on {path}",
}


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every error into application/problem+json; never leak internals."""
    try:
        return await handler(request)
    except Problem as exc:
        if exc.status >= 500:
            log.warning(
                "%s %s: %s", request.method, request.path, exc.detail, exc_info=exc.__cause__
            )
        return problem_response(exc.status, exc.detail, exc.errors, exc.headers, exc.omitted)
    except ValidationError as exc:
        errors = validation_errors(exc)
        return problem_response(400, summary(errors), errors, omitted=errors.omitted)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        template = _DETAILS.get(exc.status)
        detail = (
            template.format(method=request.method, path=request.path) if template else exc.reason
        )
        headers = {h: exc.headers[h] for h in _KEEP_HEADERS if h in exc.headers}
        return problem_response(exc.status, detail, _ROUTING_ERRORS.get(exc.status, ()), headers)
    except (StorageBusyError, StorageUnavailableError) as exc:
        # The database is busy, restarting or out of reach: the request may succeed later.
        log.warning("%s %s: %s", request.method, request.path, exc)
        return problem_response(
            503, "the database is unavailable or busy; retry shortly", (), {"Retry-After": "1"}
        )
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return problem_response(500, "internal server error; the cause is in the server log")


def cors_middleware(allowed: tuple[str, ...]) -> Callable[..., Awaitable[web.StreamResponse]]:
    """CORS for the ingestion and analytics endpoints; ``allowed`` may contain ``*``."""
    any_origin = "*" in allowed
    prefixes = ("/events", "/analytics/")

    def allow(origin: str) -> str | None:
        if any_origin:
            return "*"
        return origin if origin.rstrip("/") in allowed else None

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if origin is None or not request.path.startswith(prefixes):
            return await handler(request)
        permitted = allow(origin)
        preflight = (
            request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers
        )
        if preflight:
            methods = await _methods_of(request)
            if not methods:
                return await handler(request)  # unknown path: 404
            response = web.Response(status=204)
            if permitted:
                response.headers.update(
                    {
                        "Access-Control-Allow-Origin": permitted,
                        "Access-Control-Allow-Methods": ", ".join(methods),
                        "Access-Control-Allow-Headers": "Content-Type, Idempotency-Key, X-Sent-By",
                        "Access-Control-Max-Age": "600",
                    }
                )
            if permitted != "*":
                response.headers["Vary"] = "Origin"
            return response
        response = await handler(request)
        if permitted:
            response.headers["Access-Control-Allow-Origin"] = permitted
            # Cross-origin clients must see Retry-After to back off as asked.
            response.headers["Access-Control-Expose-Headers"] = "Retry-After"
        if not any_origin:  # the answer depends on Origin: caches must know
            response.headers["Vary"] = "Origin"
        return response

    return middleware


async def _methods_of(request: web.Request) -> list[str]:
    """The methods the router serves at this request's path (empty if none)."""
    for resource in request.app.router.resources():
        _, allowed = await resource.resolve(request)
        if allowed:
            return sorted(m for m in allowed if m not in {"HEAD", "OPTIONS"})
    return []


def _client_fault(exc: BaseException | None) -> BaseException | None:
    """The client's mistake behind an exception aiohttp logs, if it is one: malformed HTTP
    (``HttpProcessingError``) or a body that does not decode as its headers say
    (``RequestPayloadError``, caused by a ``ContentEncodingError`` or a bad chunk)."""
    if isinstance(exc, HttpProcessingError):
        return exc
    if isinstance(exc, RequestPayloadError):
        return exc.__cause__ if isinstance(exc.__cause__, HttpProcessingError) else exc
    return None


class ProtocolErrorFilter(logging.Filter):
    """aiohttp logs some client mistakes as an ERROR traceback, after answering them:

    - malformed HTTP (a request line or header over 8190 bytes, a bad header, a bad
      Content-Length), answered with a plain 400 before any handler runs;
    - a body that does not decode (``Content-Encoding: deflate`` on bytes that do not
      inflate, a bad chunk size): the handler answers 400, then aiohttp's lingering read of
      the unread rest of the body meets the same stored error and logs it as "Unhandled
      exception" (aiohttp.web_protocol, ``start``), once per such request.

    Both are the client's fault and already answered: keep one WARNING line without the
    traceback or the client's bytes, so a client cannot flood the log with tracebacks."""

    def filter(self, record: logging.LogRecord) -> bool:
        fault = _client_fault(record.exc_info[1] if record.exc_info else None)
        if fault is not None and record.levelno >= logging.ERROR:
            remote = record.args[0] if isinstance(record.args, tuple) and record.args else None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg = "refused a malformed HTTP request%s: %s (%s)"
            record.args = (
                f" from {remote}" if remote else "",
                type(fault).__name__,
                getattr(fault, "code", 400),
            )
            record.exc_info = record.exc_text = None
        return True


def quiet_protocol_errors() -> None:
    """Install ``ProtocolErrorFilter`` on aiohttp's server logger (idempotent); every app
    does it (``create_app``), whatever serves it."""
    logger = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, ProtocolErrorFilter) for f in logger.filters):
        logger.addFilter(ProtocolErrorFilter())
