"""Every ``web.AppKey`` of the service, in one module any part may import.

A handler reaches shared resources only through these keys; each resource is either
owned by one task (the writer) or safe to share between concurrent requests (the store's
read pool, the rollup runner's lock).
"""

from __future__ import annotations

from aiohttp import web

from app.config import Config
from app.inflight import InFlight
from app.metrics import Metrics
from ingest.writer import Writer
from rollup.service import RollupRunner
from schema.storage import Storage

CONFIG = web.AppKey("config", Config)
STORE = web.AppKey("store", Storage)
WRITER = web.AppKey("writer", Writer)
RUNNER = web.AppKey("rollup_runner", RollupRunner)
BODY_TIMEOUT = web.AppKey("body_timeout", float)
INFLIGHT = web.AppKey("inflight", InFlight)
METRICS = web.AppKey("metrics", Metrics)
