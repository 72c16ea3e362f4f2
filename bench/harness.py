"""Shared pieces of the benchmark: settings from the environment, servers as child
processes, wrk runs, peak RSS, machine facts, and the results files."""

from __future__ import annotations

import json
import os
import platform
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
WORK = BENCH / "work"  # generated databases and logs (gitignored)
RESULTS = BENCH / "results"  # committed: JSON per section and the plots
WRK_DIR = BENCH / "wrk"
PY = sys.executable
HOST = "127.0.0.1"  # only ever the loopback interface


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def env_list(name: str, default: str) -> list[str]:
    return [part.strip() for part in os.environ.get(name, default).split(",") if part.strip()]


@dataclass(frozen=True)
class Settings:
    """Every knob of ``make bench``, from ``BENCH_*`` environment variables."""

    sizes: list[int] = field(
        default_factory=lambda: [int(s) for s in env_list("BENCH_SIZES", "1000000")]
    )
    duration: int = field(default_factory=lambda: env_int("BENCH_DURATION", 5))
    warmup: int = field(default_factory=lambda: env_int("BENCH_WARMUP", 2))
    repeats: int = field(default_factory=lambda: env_int("BENCH_REPEATS", 3))
    connections: list[int] = field(
        default_factory=lambda: [int(c) for c in env_list("BENCH_CONNECTIONS", "64,256")]
    )
    threads: int = field(default_factory=lambda: env_int("BENCH_THREADS", 2))
    batch_sizes: list[int] = field(
        default_factory=lambda: [int(b) for b in env_list("BENCH_BATCH_SIZES", "100,1000")]
    )
    batch_connections: int = field(default_factory=lambda: env_int("BENCH_BATCH_CONNECTIONS", 8))
    query_seconds: int = field(default_factory=lambda: env_int("BENCH_QUERY_SECONDS", 2))
    # Where the ingest databases go: BENCH_DB_DIR=/dev/shm takes the disk (fsync) out of
    # the measurement, to see what the CPU alone allows. Default: bench/work.
    db_dir: str = field(default_factory=lambda: os.environ.get("BENCH_DB_DIR", ""))
    cost_variants: bool = field(
        default_factory=lambda: os.environ.get("BENCH_COST_VARIANTS", "1") != "0"
    )
    only: list[str] = field(
        default_factory=lambda: env_list(
            "BENCH_ONLY",
            "ingest,metrics,batch,queries,concurrency,before,rebuild,generator,report",
        )
    )
    generator_count: int = field(
        default_factory=lambda: env_int("BENCH_GENERATOR_COUNT", 1_000_000)
    )

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# --- machine and run facts ---------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": mem_gib,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "wrk": (wrk.stdout or wrk.stderr).split("[")[0].strip(),
        "load_average_at_start": os.getloadavg(),
    }


def git_commit() -> str:
    out = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    )
    return out.stdout.strip() or "unknown"


def stamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def save(section: str, data: dict[str, Any], settings: Settings) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{section}.json"
    body = {
        "section": section,
        "date": stamp(),
        "commit": git_commit(),
        "command": command_line(settings),
        "machine": machine(),
        "settings": settings.as_dict(),
        **data,
    }
    path.write_text(json.dumps(body, indent=2) + "\n")
    return path


def load(section: str) -> dict[str, Any] | None:
    path = RESULTS / f"{section}.json"
    return json.loads(path.read_text()) if path.exists() else None


def command_line(settings: Settings) -> str:
    overrides = " ".join(
        f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("BENCH_")
    )
    return (overrides + " make bench").strip()


# --- servers -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def peak_rss_mib(pid: int) -> float | None:
    """VmHWM: the most resident memory the process ever had."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def thread_cpu_seconds(pid: int) -> dict[str, float]:
    """User + system CPU seconds of ``pid``'s main thread and of all its other threads."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {"loop": 0.0, "other": 0.0}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        fields = stat.rpartition(")")[2].split()
        seconds = (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        out["loop" if int(tid) == pid else "other"] += seconds
    return out


class Server:
    """A server child process on a free loopback port; ``stop()`` sends SIGTERM (the
    service drains its writer) and returns the peak RSS it reached."""

    def __init__(self, name: str, argv: Sequence[str], port: int, cwd: Path = ROOT):
        self.name = name
        self.port = port
        self.url = f"http://{HOST}:{port}"
        WORK.mkdir(parents=True, exist_ok=True)
        self.log_path = WORK / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            list(argv), cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT
        )
        self.peak_rss_mib: float | None = None
        self._wait_ready()

    def _wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited early; see {self.log_path}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} did not answer /healthz within {timeout} s")

    def rss(self) -> float | None:
        return peak_rss_mib(self.proc.pid)

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time so far: ``loop`` (the main thread, which runs the event loop) and
        ``other`` (the SQLite writer, the log writer and every other thread)."""
        return thread_cpu_seconds(self.proc.pid)

    def stop(self) -> float | None:
        if self.proc.poll() is None:
            self.peak_rss_mib = self.rss()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.peak_rss_mib

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def service(
    name: str,
    db: Path,
    *,
    access_log: bool = False,
    extra: Sequence[str] = (),
    code: Path = ROOT,
) -> Server:
    """The service under test: ``python -m app serve`` on ``db``, from the source tree
    ``code`` (another checkout runs another version with the same interpreter)."""
    port = free_port()
    argv = [
        PY,
        "-m",
        "app",
        "serve",
        "--db",
        str(db),
        "--host",
        HOST,
        "--port",
        str(port),
        "--access-log",
        "true" if access_log else "false",
        "--reconcile-minutes",
        "0",  # no scheduled pass in the middle of a measurement
        *extra,
    ]
    return Server(name, argv, port, cwd=code)


def baseline(name: str = "baseline") -> Server:
    port = free_port()
    return Server(name, [PY, str(BENCH / "baseline_server.py"), "--port", str(port)], port)


# --- wrk ---------------------------------------------------------------------------------


def wrk(
    url: str,
    script: str,
    *,
    connections: int,
    threads: int,
    seconds: int,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """One wrk run; its Lua ``done()`` prints a JSON summary (latencies in µs)."""
    argv = [
        "wrk",
        f"-t{min(threads, connections)}",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "10s",
        "-s",
        str(WRK_DIR / script),
        url,
    ]
    full_env = {**os.environ, "BENCH_WRK_DIR": str(WRK_DIR), **(env or {})}
    out = subprocess.run(argv, capture_output=True, text=True, env=full_env, check=False)
    for line in out.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            summary = json.loads(line[len("BENCH_JSON ") :])
            break
    else:
        raise RuntimeError(f"wrk printed no summary:\n{out.stdout}\n{out.stderr}")
    seconds_run = summary["duration_us"] / 1e6
    errors = summary["errors"]
    summary["non_2xx"] = errors["status"]
    summary["socket_errors"] = errors["connect"] + errors["read"] + errors["write"]
    summary["timeouts"] = errors["timeout"]
    summary["ok"] = summary["requests"] - errors["status"]
    summary["rps"] = summary["ok"] / seconds_run
    summary["p50_ms"] = summary["latency_us"]["percentiles"]["50"] / 1000
    summary["p99_ms"] = summary["latency_us"]["percentiles"]["99"] / 1000
    summary["connections"] = connections
    return summary


def ratios_within_repeats(
    mine: list[dict[str, Any]], bases: list[dict[str, Any]], key: str
) -> list[float]:
    """Each run of ``mine`` divided by the run of ``bases`` from the same repeat (by the
    figure ``key``): the ratios this bench reports, taken within a repeat because the
    machine's speed drifts between repeats."""
    by_repeat = {b["repeat"]: b[key] for b in bases}
    return [r[key] / by_repeat[r["repeat"]] for r in mine if by_repeat.get(r["repeat"])]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def db_counts(db: Path) -> tuple[int, int]:
    """``(events in the log, SUM of the daily rollup)``."""
    events, daily, _ = rollup_sums(db)
    return events, daily


def rollup_sums(db: Path) -> tuple[int, int, int | None]:
    """``(events in the log, SUM of the daily rollup, SUM of the 15-minute rollup)``; the
    last is None for a database without one (code before migration 0002)."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        (events,) = conn.execute("SELECT COUNT(*) FROM events").fetchone()
        (daily,) = conn.execute("SELECT COALESCE(SUM(count), 0) FROM daily_event_counts").fetchone()
        quarters = None
        if conn.execute(
            "SELECT 1 FROM sqlite_master WHERE name = 'quarter_hour_event_counts'"
        ).fetchone():
            (quarters,) = conn.execute(
                "SELECT COALESCE(SUM(count), 0) FROM quarter_hour_event_counts"
            ).fetchone()
    finally:
        conn.close()
    return events, daily, quarters


def db_bytes(db: Path) -> int:
    return sum(p.stat().st_size for p in db.parent.glob(db.name + "*") if p.is_file())


def remove_db(db: Path) -> None:
    for p in db.parent.glob(db.name + "*"):
        p.unlink()


def load_average() -> float:
    """The 1-minute load average (the machine is shared: every run records it)."""
    return round(os.getloadavg()[0], 2)


def say(text: str) -> None:
    print(text, flush=True)
