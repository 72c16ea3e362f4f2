"""Logging: text or JSON lines on stderr, formatted and written by a thread of their own.

``configure()`` puts one handler on the root logger: it only queues each record. A
``LogWriter`` thread takes whatever has queued up, formats every record and writes the
lot with one flush. The access log does even less on the request path: ``AccessLogger``
queues a tuple (time, method, route, path, status, duration), and the writer thread
formats it straight to its line (the line its LogRecord would give; a record is made
only for a handler that needs one). So the event loop never formats a line or waits on
a write. ``LogWriter.stop()`` writes everything queued before it returns (nothing is lost
at shutdown) and hands the root logger back to a direct handler.

Formats (``--log-format``):

- ``text``: ``2025-05-28 14:03:07,123 INFO analytics.access: POST /events 202 1.2ms``
- ``json``: one object per line, ``{"time", "level", "logger", "message"}`` plus, on
  access lines, ``method``, ``route``, ``path``, ``status`` and ``duration_ms``, and
  ``exc_info`` when a record carries a traceback.
"""

from __future__ import annotations

import copy
import logging
import queue
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import lru_cache
from logging.handlers import QueueHandler
from typing import IO, Any

import orjson
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from pythonjsonlogger.orjson import OrjsonFormatter

ACCESS_LOGGER = "analytics.access"
# Stamped on each request by the first middleware (app.metrics.http_middleware):
# (when it reached the application, its route pattern). The time is time.perf_counter():
# aiohttp's own duration follows the loop's clock, which under uvloop ticks in whole
# milliseconds. A request aiohttp refused before routing (malformed HTTP) has no stamp.
REQUEST_STAMP = web.RequestKey("request_stamp", tuple)
UNMATCHED_ROUTE = "unmatched"  # no route pattern to name: a 404, a 405, malformed HTTP
ACCESS_MESSAGE = "%s %s %s %.1fms"  # method, path, status, duration in ms
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# How long the writer thread lets lines gather after the first one arrives: one write
# and one wake-up per interval under load, instead of one per line.
FLUSH_INTERVAL_S = 0.05

# (time.time(), method, route pattern, path, status, duration in ms)
AccessEntry = tuple[float, str, str, str, int, float]

_STOP = object()


# What every LogRecord has: anything else on a record is an extra field (JSON shows it).
_RECORD_ATTRIBUTES = frozenset(
    logging.LogRecord("", logging.INFO, "", 0, "", None, None).__dict__
) | {"message", "asctime"}


@lru_cache(maxsize=4)
def _local_second(second: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))


@lru_cache(maxsize=4)
def _utc_second(second: int) -> str:
    return datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")


class TextFormatter(logging.Formatter):
    """``2025-05-28 14:03:07,123 INFO name: message`` (logging's default time, local),
    with the date and time of day formatted once per second."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return f"{_local_second(int(record.created))},{int(record.msecs):03d}"

    def format_access(self, entry: AccessEntry) -> str:
        """``format(access_record(entry))``, without making the record (tests pin it)."""
        created, method, _, path, status, ms = entry
        asctime = f"{_local_second(int(created))},{_millis(created):03d}"
        return f"{asctime} INFO {ACCESS_LOGGER}: {method} {path} {status} {ms:.1f}ms"


class JsonFormatter(OrjsonFormatter):
    """python-json-logger with orjson: ``time`` (UTC, ISO 8601, milliseconds), ``level``,
    ``logger``, ``message``, then every extra attribute of the record."""

    def __init__(self) -> None:
        super().__init__(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            # The attributes this Python's LogRecord really has: the extras are the rest
            # (and the library's own list makes it check each one the slow way).
            reserved_attrs=sorted(_RECORD_ATTRIBUTES),
        )

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return f"{_utc_second(int(record.created))}.{int(record.msecs):03d}Z"

    def format_access(self, entry: AccessEntry) -> str:
        """``format(access_record(entry))``, without making the record (tests pin it)."""
        created, method, route, path, status, ms = entry
        line = {
            "time": f"{_utc_second(int(created))}.{_millis(created):03d}Z",
            "level": "INFO",
            "logger": ACCESS_LOGGER,
            "message": f"{method} {path} {status} {ms:.1f}ms",
            "method": method,
            "route": route,
            "path": path,
            "status": status,
            "duration_ms": round(ms, 3),
        }
        return orjson.dumps(line, option=orjson.OPT_NON_STR_KEYS).decode()


def formatter(log_format: str) -> logging.Formatter:
    """The formatter of ``--log-format`` (``text`` or ``json``)."""
    if log_format == "json":
        return JsonFormatter()
    if log_format == "text":
        return TextFormatter()
    raise ValueError(f"unknown log format {log_format!r}")


# An access record's attributes but the request's own; copied rather than built by
# LogRecord() (which looks up the process, thread and file names for every line).
_ACCESS_TEMPLATE = logging.LogRecord(
    ACCESS_LOGGER, logging.INFO, __file__, 0, ACCESS_MESSAGE, None, None
).__dict__


def _millis(created: float) -> int:
    """The millisecond of a ``time.time()``, as LogRecord computes ``msecs``."""
    return int((created - int(created)) * 1000)


def access_record(entry: AccessEntry) -> logging.LogRecord:
    """The log record of one access-log entry, stamped with the request's own time."""
    created, method, route, path, status, ms = entry
    record = logging.LogRecord.__new__(logging.LogRecord)
    record.__dict__.update(_ACCESS_TEMPLATE)
    record.__dict__.update(
        created=created,
        msecs=_millis(created) + 0.0,
        relativeCreated=_ACCESS_TEMPLATE["relativeCreated"]
        + (created - _ACCESS_TEMPLATE["created"]) * 1000,
        args=(method, path, status, ms),
        method=method,
        route=route,
        path=path,
        status=status,
        duration_ms=round(ms, 3),
    )
    return record


class _BatchStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A StreamHandler that leaves flushing to the end of the writer's batch."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(self.format(record) + self.terminator)
        except Exception:
            self.handleError(record)


class _QueueingHandler(QueueHandler):
    """Queues records for ``writer``. The message and traceback become text here, on the
    caller's thread, so later changes to the arguments can't alter the line; the
    formatting into a line happens on the writer thread."""

    def __init__(self, writer: LogWriter):
        super().__init__(writer.queue)  # type: ignore[arg-type]
        self.writer = writer

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        record = copy.copy(record)
        record.msg = record.getMessage()
        record.args = None
        if record.exc_info:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        return record


class LogWriter:
    """The thread that formats and writes every log line (see the module docstring)."""

    def __init__(self, handlers: Sequence[logging.Handler]):
        self.queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.handlers = list(handlers)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)
        self._thread.start()

    def put_access(self, entry: AccessEntry) -> None:
        """Queue an access-log entry (the request path's only cost)."""
        self.queue.put(entry)

    def stop(self) -> None:
        """Write everything queued so far, then stop the thread (idempotent)."""
        if self._thread is None:
            return
        self.queue.put(_STOP)
        self._thread.join()
        self._thread = None

    def _run(self) -> None:
        while True:
            items = [self.queue.get()]
            if items[0] is not _STOP:
                time.sleep(FLUSH_INTERVAL_S)  # let the lines of a busy moment gather
            while True:
                try:
                    items.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            stopping = False
            for item in items:
                if item is _STOP:
                    stopping = True
                else:
                    self._handle(item)
            for handler in self.handlers:
                handler.flush()
            if stopping:
                return

    def _handle(self, item: logging.LogRecord | AccessEntry) -> None:
        try:
            if isinstance(item, logging.LogRecord):
                for handler in self.handlers:
                    if item.levelno >= handler.level:
                        handler.handle(item)
                return
            record = None
            for handler in self.handlers:
                if handler.level > logging.INFO:
                    continue
                fast = getattr(handler.formatter, "format_access", None)
                if isinstance(handler, _BatchStreamHandler) and fast and not handler.filters:
                    # an access line is most lines: straight to text, no LogRecord (the
                    # lock: during stop() other threads may write through this handler)
                    with handler.lock:  # type: ignore[union-attr]
                        handler.stream.write(fast(item) + handler.terminator)
                else:
                    record = record or access_record(item)
                    handler.handle(record)
        except Exception:  # the writer thread must outlive any one bad record
            traceback.print_exc(file=sys.__stderr__)


class LogSetup:
    """What ``configure()`` installed; ``stop()`` flushes and reverts to direct writes."""

    def __init__(self, writer: LogWriter, handler: logging.Handler, queueing: logging.Handler):
        self.writer = writer
        self._handler = handler
        self._queueing = queueing

    def stop(self) -> None:
        root = logging.getLogger()
        if self._queueing in root.handlers:
            root.removeHandler(self._queueing)
            root.addHandler(self._handler)  # later records (interpreter exit) still print
        self.writer.stop()
        self._handler.flush()


def configure(
    level: str = "INFO", log_format: str = "text", stream: IO[str] | None = None
) -> LogSetup:
    """Route every log record through a ``LogWriter`` to ``stream`` (default: standard
    error, written in blocks rather than line by line)."""
    handler = _BatchStreamHandler(stream if stream is not None else _block_buffered_stderr())
    handler.setFormatter(formatter(log_format))
    writer = LogWriter([handler])
    queueing = _QueueingHandler(writer)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(queueing)
    root.setLevel(level.upper())
    # aiosqlite's DEBUG lines carry SQL arguments, i.e. user data: never log them.
    logging.getLogger("aiosqlite").setLevel(max(logging.INFO, root.level))
    writer.start()
    return LogSetup(writer, handler, queueing)


def _block_buffered_stderr() -> IO[str]:
    """Standard error without line buffering (the writer flushes once per batch)."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # replaced by a test harness: use as is
        return sys.stderr
    # Lives as long as the process; closefd=False: never closes fd 2.
    return open(
        fd, "w", buffering=1 << 16, encoding="utf-8", errors="backslashreplace", closefd=False
    )


def _writer_of(logger: logging.Logger) -> LogWriter | None:
    """The LogWriter behind the handlers ``logger`` reaches, if ``configure()`` ran."""
    current: logging.Logger | None = logger
    while current is not None:
        for handler in current.handlers:
            if isinstance(handler, _QueueingHandler):
                return handler.writer
        current = current.parent if current.propagate else None
    return None


class AccessLogger(AbstractAccessLogger):
    """One access line per request: method, route pattern, path, status and duration.

    With ``configure()`` in place the request path only queues a tuple; otherwise (a test
    harness's own logging) the record is built and handled at once.
    """

    def __init__(self, logger: logging.Logger, log_format: str) -> None:
        super().__init__(logger, log_format)
        writer = _writer_of(logger)
        self._put = writer.queue.put if writer is not None else None

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        if not self.logger.isEnabledFor(logging.INFO):
            return
        stamp = request.get(REQUEST_STAMP)
        if stamp is not None:
            began, route = stamp
            ms = (_clock() - began) * 1000
        else:
            route, ms = UNMATCHED_ROUTE, time * 1000
        entry = (_now(), request.method, route, request.path, response.status, ms)
        if self._put is not None:  # LogWriter.put_access, without the method call
            self._put(entry)
        else:
            self.logger.handle(access_record(entry))


_now = time.time
_clock = time.perf_counter


def runner_kwargs(access_log: bool) -> dict[str, Any]:
    """The access-log arguments of ``web.run_app`` / ``AppRunner`` / test servers."""
    return {
        "access_log_class": AccessLogger,
        "access_log": logging.getLogger(ACCESS_LOGGER) if access_log else None,
    }
