"""The admin bearer token: one check for every route that needs it.

``/admin/*`` needs the token and is off (403) when none is configured (``require_admin``);
``/metrics`` needs it only when one is configured (``check_bearer`` when set). A missing
or wrong token is a 401 with ``WWW-Authenticate``; the token is compared in constant time
and never logged.
"""

from __future__ import annotations

import hmac

from aiohttp import web

from app.problems import Problem

_CHALLENGE = 'Bearer realm="admin"'


def check_bearer(request: web.Request, token: str) -> None:
    """401 unless the request carries ``Authorization: Bearer <token>``."""
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    given = given.lstrip(" ")  # RFC 6750: "Bearer" 1*SP token; the token is taken as sent
    if scheme.lower() != "bearer" or not given:
        raise Problem(
            401, "an admin bearer token is required", headers={"WWW-Authenticate": _CHALLENGE}
        )
    if not hmac.compare_digest(given.encode(), token.encode()):
        raise Problem(
            401,
            "the admin bearer token is not valid",
            headers={"WWW-Authenticate": _CHALLENGE + ', error="invalid_token"'},
        )


def require_admin(request: web.Request, token: str) -> None:
    """The admin API: 403 when no admin ``token`` is configured, else ``check_bearer``."""
    if not token:
        raise Problem(403, "the admin API is disabled: no admin token is configured")
    check_bearer(request, token)
