"""RFC 9457 problem details: the one shape of every error answer.

``problem()`` builds the body; callers may add keys but never remove these:
``type``, ``title``, ``status``, ``detail`` and ``errors`` (a list of
``{"field", "message"}``, every problem found, not only the first).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from http import HTTPStatus
from typing import Any

import orjson
from aiohttp import web

from schema.errors import summary

PROBLEM_CONTENT_TYPE = "application/problem+json"


class Problem(Exception):
    """Raise from a handler to answer with a problem+json body."""

    def __init__(
        self,
        status: int,
        detail: str,
        errors: Sequence[dict[str, str]] = (),
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.errors = list(errors)
        self.headers = headers or {}


def problem_body(status: int, detail: str, errors: Iterable[dict[str, str]] = ()) -> dict[str, Any]:
    return {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "errors": list(errors),
    }


def problem_response(
    status: int,
    detail: str,
    errors: Iterable[dict[str, str]] = (),
    headers: dict[str, str] | None = None,
) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps(problem_body(status, detail, errors)),
        content_type=PROBLEM_CONTENT_TYPE,
        headers=headers,
    )


def bad_request(errors: Sequence[dict[str, str]]) -> Problem:
    return Problem(400, summary(errors), errors)
