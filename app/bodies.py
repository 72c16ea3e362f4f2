"""Reading a request body: to its end, within the body timeout and a size limit.

Every handler that takes a body reads it here, so each one answers a slow, oversized or
undecodable body the same way: 408, 413 or 400 (problem+json), never a truncated read.
"""

from __future__ import annotations

import asyncio
import zlib

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from app.keys import BODY_TIMEOUT
from app.problems import Problem

# Codings aiohttp's parser decodes when the header names exactly one of them (br and zstd
# only with libraries this service does not install: the parser refuses those itself). It
# passes any other value through undecoded, so that is refused here, not parsed as JSON.
DECODED = frozenset({"identity", "gzip", "deflate"})


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole body, decoded as its Content-Encoding says, at most ``limit`` bytes.

    Raises ``Problem`` 415 (a content coding that is not decoded here), 413 (declared or
    actual size over ``limit``), 408 (the body did not arrive within ``BODY_TIMEOUT``
    seconds), 400 (it does not decode).
    """
    codings = request.headers.getall("Content-Encoding", ())
    if codings and (len(codings) > 1 or codings[0].lower() not in DECODED):
        raise Problem(
            415,
            "Content-Encoding must be gzip or deflate (or none)",
            [{"field": "Content-Encoding", "message": "must be gzip or deflate (or none)"}],
        )
    if request.content_length is not None and request.content_length > limit:
        raise too_large(limit)
    try:
        if request.content.is_eof():
            # The whole body already arrived (the usual case for a small event): take it
            # from the buffer without a timer or a read loop. Same checks, same answers.
            raw = request.content.read_nowait()
            if len(raw) > limit:
                raise too_large(limit)
            return raw
        try:
            async with asyncio.timeout(request.app[BODY_TIMEOUT]):
                return await _read_limited(request, limit)
        except TimeoutError:
            raise Problem(408, "the request body did not arrive in time") from None
    except (HttpProcessingError, RequestPayloadError, zlib.error):  # e.g. gzip that won't inflate
        raise Problem(
            400,
            "the body could not be decoded as its Content-Encoding says",
            [{"field": "Content-Encoding", "message": "does not match the body"}],
        ) from None


async def _read_limited(request: web.Request, limit: int) -> bytes:
    chunks = []
    size = 0
    while chunk := await request.content.read(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def too_large(limit: int) -> Problem:
    return Problem(
        413,
        f"the body must be at most {limit} bytes",
        [{"field": "body", "message": f"must be at most {limit} bytes"}],
    )
