"""Settings: one table of (name, default, environment variable, help).

Every setting can come from the environment (``ANALYTICS_*``) and from a command-line
flag; flags win. ``create_app`` never reads the environment itself, so tests pass a
``Config`` directly.

A value is taken exactly as written, like every value the service reads: surrounding
whitespace, a trailing newline (a secret read from a file), ``1_000``, non-ASCII digits,
``1e3``, ``nan`` or ``inf`` are refused with a message, never silently read as something.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from schema.backends import describe, is_url

# A group commit takes up to one request (1,000 events) past commit_max_events; on
# PostgreSQL a transaction numbers at most 65,535 events (schema/postgres/lifecycle.py).
PG_COMMIT_MAX_EVENTS = 64_000

_INTEGER = re.compile(r"-?[0-9]+")
_DECIMAL = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")
_TEXT = re.compile(r"[^\x00-\x20\x7f](?:[^\x00-\x1f\x7f]*[^\x00-\x20\x7f])?")


def parse_int(value: str) -> int:
    """``-?[0-9]+`` exactly; ValueError otherwise (``int()`` also takes " 5\\n", "5_000")."""
    if not _INTEGER.fullmatch(value):
        raise ValueError(f"not a whole number: {value!r}")
    return int(value)


def parse_decimal(value: str) -> float:
    """``-?[0-9]+(.[0-9]+)?`` exactly; ValueError otherwise (``float()`` also takes "nan")."""
    if not _DECIMAL.fullmatch(value):
        raise ValueError(f"not a decimal number: {value!r}")
    return float(value)


def parse_text(value: str) -> str:
    """Any text without control characters or surrounding whitespace; may be empty.
    The message never quotes the value: it may be the admin token."""
    if value and not _TEXT.fullmatch(value):
        raise ValueError("has surrounding whitespace or a control character")
    return value


def _origins(value: str) -> tuple[str, ...]:
    """Comma-separated, spaces around the commas allowed: ``https://a.example, *``."""
    origins = tuple(parse_text(o.strip(" ")).rstrip("/") for o in value.split(","))
    return tuple(o for o in origins if o)


def _log_format(value: str) -> str:
    lowered = value.lower()
    if lowered not in LOG_FORMATS:
        raise ValueError(f"must be one of {', '.join(LOG_FORMATS)}, not {value!r}")
    return lowered


def _bool(value: str) -> bool:
    lowered = value.lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"not a boolean: {value!r}")


LOG_FORMATS = ("text", "json")


@dataclass(frozen=True)
class Setting:
    name: str
    default: Any
    parse: Callable[[str], Any]
    help: str

    @property
    def env(self) -> str:
        return "ANALYTICS_" + self.name.upper()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


# Upper limits: far above any sensible value, and below what the parts that use a setting can
# represent (a timedelta, a timer, a socket's backlog), so an extra digit is a clear startup error
# instead of an OverflowError once the database is open.
UPPER_LIMITS: dict[str, int] = {
    "retention_days": 36_525,  # a century
    "reconcile_minutes": 525_600,  # a year
    "idempotency_hours": 87_600,  # ten years
    "busy_timeout_ms": 3_600_000,  # an hour
    "body_timeout_s": 3_600,  # an hour
    "queue_max_events": 10_000_000,
    "commit_max_events": 1_000_000,
    "read_connections": 256,
}


SETTINGS: tuple[Setting, ...] = (
    Setting("db", "data/events.db", parse_text, "SQLite database file, or a postgresql:// URL"),
    Setting("host", "127.0.0.1", parse_text, "address to listen on"),
    Setting("port", 5000, parse_int, "port to listen on"),
    Setting(
        "admin_token", "", parse_text, "bearer token for /admin/*; empty disables the admin API"
    ),
    Setting("cors_origins", (), _origins, "comma-separated origins allowed cross-origin, or *"),
    Setting(
        "reconcile_minutes",
        10.0,
        parse_decimal,
        "minutes between rollup reconciliations; 0 disables",
    ),
    Setting(
        "retention_days",
        0,
        parse_int,
        "delete raw events older than this many whole UTC days (rollups are kept); 0 keeps all",
    ),
    Setting(
        "queue_max_events", 20_000, parse_int, "events that may wait for the writer before 503"
    ),
    Setting(
        "commit_max_events", 5_000, parse_int, "most events group-committed in one transaction"
    ),
    Setting(
        "busy_timeout_ms",
        5_000,
        parse_int,
        "how long a write waits for a locked database before 503 (PostgreSQL: lock_timeout)",
    ),
    Setting("read_connections", 4, parse_int, "database connections that serve reads concurrently"),
    Setting(
        "synchronous",
        "FULL",
        parse_text,
        "commit durability: FULL (power-cut safe; PostgreSQL synchronous_commit=on) or NORMAL "
        "(a crash may lose the last commits; PostgreSQL synchronous_commit=off)",
    ),
    Setting(
        "idempotency_hours", 24.0, parse_decimal, "how long Idempotency-Key replays are remembered"
    ),
    Setting(
        "body_timeout_s", 10.0, parse_decimal, "seconds a client may take to send its body (408)"
    ),
    Setting("log_level", "INFO", parse_text, "logging level: DEBUG, INFO, WARNING or ERROR"),
    Setting("log_format", "text", _log_format, "log lines as text or json (one object per line)"),
    Setting("access_log", True, _bool, "log one line per request"),
    Setting("metrics", True, _bool, "count and time requests and commits for GET /metrics"),
    Setting(
        "answer_cache",
        True,
        _bool,
        "SQLite: answer a repeated question from memory until the next commit",
    ),
)


@dataclass(frozen=True)
class Config:
    db: str = "data/events.db"
    host: str = "127.0.0.1"
    port: int = 5000
    admin_token: str = ""
    cors_origins: tuple[str, ...] = ()
    reconcile_minutes: float = 10.0
    retention_days: int = 0
    queue_max_events: int = 20_000
    commit_max_events: int = 5_000
    busy_timeout_ms: int = 5_000
    read_connections: int = 4
    synchronous: str = "FULL"
    idempotency_hours: float = 24.0
    body_timeout_s: float = 10.0
    log_level: str = "INFO"
    log_format: str = "text"
    access_log: bool = True
    metrics: bool = True
    answer_cache: bool = True

    def __post_init__(self) -> None:
        if self.synchronous.upper() not in {"FULL", "NORMAL", "EXTRA"}:
            raise ValueError("synchronous must be FULL, NORMAL or EXTRA")
        if not isinstance(logging.getLevelName(self.log_level.upper()), int):
            raise ValueError("log_level must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
        if self.log_format not in LOG_FORMATS:
            raise ValueError(f"log_format must be one of {', '.join(LOG_FORMATS)}")
        if min(self.queue_max_events, self.commit_max_events, self.read_connections) < 1:
            raise ValueError(
                "queue_max_events, commit_max_events and read_connections must be positive"
            )
        if not 0 <= self.port <= 65535:
            raise ValueError("port must be 0 (any free port) to 65535")
        if is_url(self.db) and self.commit_max_events > PG_COMMIT_MAX_EVENTS:
            raise ValueError(
                f"commit_max_events must be at most {PG_COMMIT_MAX_EVENTS} on PostgreSQL "
                "(a transaction numbers at most 65,535 events)"
            )
        if self.retention_days < 0:
            raise ValueError("retention_days must be 0 (keep everything) or a number of days")
        for name in ("reconcile_minutes", "idempotency_hours", "busy_timeout_ms", "body_timeout_s"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0")
        for name, most in UPPER_LIMITS.items():
            if getattr(self, name) > most:
                raise ValueError(f"{name} must be at most {most:,}")

    def __repr__(self) -> str:  # never print the admin token
        fields = dataclasses.asdict(self)
        if fields["admin_token"]:
            fields["admin_token"] = "***"
        fields["db"] = describe(self.db)  # a database URL's password
        return "Config(" + ", ".join(f"{k}={v!r}" for k, v in fields.items()) + ")"


def add_arguments(parser: argparse.ArgumentParser, names: tuple[str, ...] | None = None) -> None:
    """Add a flag per setting (all of them, or only ``names``); defaults stay unset."""
    for setting in SETTINGS:
        if names is None or setting.name in names:
            parser.add_argument(
                setting.flag,
                dest=setting.name,
                default=None,
                help=f"{setting.help} (env {setting.env}, default {setting.default!r})",
            )


def load(args: argparse.Namespace | None = None, environ: dict[str, str] | None = None) -> Config:
    """Build a Config from defaults, then the environment, then command-line flags."""
    environ = dict(os.environ) if environ is None else environ
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        raw = getattr(args, setting.name, None) if args is not None else None
        if raw is None:
            raw = environ.get(setting.env)
        if raw is None:
            continue
        try:
            values[setting.name] = setting.parse(raw)
        except ValueError as exc:
            raise SystemExit(f"invalid {setting.flag} / {setting.env}: {exc}") from None
    try:
        return Config(**values)
    except ValueError as exc:
        raise SystemExit(f"invalid settings: {exc}") from None
