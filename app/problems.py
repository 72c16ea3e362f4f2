"""RFC 9457 problem details: the one shape of every error answer.

``problem_body()`` builds the body; callers may add keys but never remove these:
``type``, ``title``, ``status``, ``detail`` and ``errors`` (a list of
``{"field", "message"}``, every problem found, not only the first).

An error answer stays small and cheap whatever the input, and this is the one place that
makes it so: ``errors`` holds at most ``MAX_ERRORS`` entries, and when more problems were
found the body adds ``"errors_omitted": n``; ``detail`` and each ``field`` and ``message``
are shortened to a few hundred characters (a client's 60 KB key name is not echoed back).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from http import HTTPStatus
from typing import Any

import orjson
from aiohttp import web

from schema.errors import MAX_ERRORS, Errors, summary

PROBLEM_CONTENT_TYPE = "application/problem+json"
MAX_DETAIL_CHARS = 1024
MAX_ENTRY_CHARS = 256  # each field and message


class Problem(Exception):
    """Raise from a handler to answer with a problem+json body; ``omitted`` counts problems
    found but not in ``errors``."""

    def __init__(
        self,
        status: int,
        detail: str,
        errors: Sequence[dict[str, str]] = (),
        headers: dict[str, str] | None = None,
        omitted: int = 0,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.errors = list(errors)
        self.headers = headers or {}
        self.omitted = omitted


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def problem_body(
    status: int, detail: str, errors: Iterable[dict[str, str]] = (), omitted: int = 0
) -> dict[str, Any]:
    listed = []
    for error in errors:
        if len(listed) < MAX_ERRORS:
            listed.append(
                {
                    "field": _short(error["field"], MAX_ENTRY_CHARS),
                    "message": _short(error["message"], MAX_ENTRY_CHARS),
                }
            )
        else:
            omitted += 1
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": _short(detail, MAX_DETAIL_CHARS),
        "errors": listed,
    }
    if omitted:
        body["errors_omitted"] = omitted
    return body


def problem_response(
    status: int,
    detail: str,
    errors: Iterable[dict[str, str]] = (),
    headers: dict[str, str] | None = None,
    omitted: int = 0,
) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps(problem_body(status, detail, errors, omitted)),
        content_type=PROBLEM_CONTENT_TYPE,
        headers=headers,
    )


def bad_request(errors: Sequence[dict[str, str]]) -> Problem:
    """A 400 for ``errors`` (an ``Errors`` also brings its count of omitted problems)."""
    omitted = errors.omitted if isinstance(errors, Errors) else 0
    return Problem(400, summary(errors), errors, omitted=omitted)
