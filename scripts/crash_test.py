#!/usr/bin/env python3
"""Crash and shutdown test of the real service: nothing acknowledged is ever lost.

Each crash round starts ``python -m app serve`` on one database file, drives concurrent
POSTs (single events and batches) that record every acknowledged (202) ``event_id``,
``kill -9``s the service at a random moment, restarts it on the same file and checks:

* every acknowledged event is in the log (lost == 0), no event is in the log twice, and
  events stored without an answer are at most those in flight at the kill;
* the rollup equals ``GROUP BY`` day and type on the log, and ``python -m app reconcile
  --dry-run`` finds no day to repair;
* the restarted service serves: it is ready, takes an event and counts exactly.

The shutdown round sends SIGTERM under load instead and checks the process exits 0, every
request got 202 or 503 (or a connection error once the listener had closed, with nothing of
that request stored) and every 202 is in the log.

    .venv/bin/python scripts/crash_test.py --rounds 5 --duration 2 --seed 1 [--shutdown]

Everything runs on 127.0.0.1 and every loop is bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
_VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
PYTHON = str(_VENV_PYTHON) if _VENV_PYTHON.exists() else sys.executable
JSON = {"Content-Type": "application/json"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """``python -m app serve`` as a child process on 127.0.0.1."""

    def __init__(self, db: Path | str, *args: str, log_path: Path | None = None) -> None:
        """``db``: a SQLite file, or a ``postgresql://`` URL (then ``log_path`` is needed)."""
        self.db = db
        self.port = free_port()
        self.args = args
        if log_path is None:
            assert isinstance(db, Path), "a database URL needs a log_path"
            log_path = db.with_suffix(".log")
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> None:
        command = [PYTHON, "-m", "app", "serve", "--db", str(self.db), "--port", str(self.port)]
        command += ["--access-log", "false", "--reconcile-minutes", "0", *self.args]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                command, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited with {self.proc.returncode}: {self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    if sock.recv(64).startswith(b"HTTP/1.1 200"):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"service not ready within {timeout}s: {self.log()}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=10)

    def terminate(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""


@dataclass
class Load:
    """What the clients saw. ``sent`` maps each request's marker to its events' user_ids."""

    acknowledged: set[str] = field(default_factory=set)
    acked_users: set[str] = field(default_factory=set)
    unanswered_users: set[str] = field(default_factory=set)
    statuses: dict[int, int] = field(default_factory=dict)
    connection_errors: int = 0
    requests: int = 0


def _event(user: str, rng: random.Random) -> dict[str, object]:
    kind = rng.choice(("view", "click", "location"))
    if kind == "view":
        payload: dict[str, object] = {"url": f"https://example.com/{rng.randrange(100)}"}
    elif kind == "click":
        payload = {"element_id": "buy", "text": "Buy"}
    else:
        payload = {"latitude": rng.uniform(-90, 90), "longitude": rng.uniform(-180, 180)}
    return {"user_id": user, "event_type": kind, "payload": payload}


async def drive(
    url: str,
    *,
    tag: str,
    seconds: float,
    workers: int = 12,
    seed: int = 0,
    stop: asyncio.Event | None = None,
    until_refused: bool = False,
) -> Load:
    """POST single events and batches from ``workers`` tasks for at most ``seconds``.

    A worker ends at the deadline, when ``stop`` is set, or (``until_refused``) on its
    first connection error; otherwise connection errors are counted and retried.
    """
    load = Load()
    deadline = time.monotonic() + seconds
    stop = stop or asyncio.Event()

    async def worker(n: int, session: aiohttp.ClientSession) -> None:
        rng = random.Random(f"{seed}-{n}")
        seq = 0
        while time.monotonic() < deadline and not stop.is_set():
            batch = rng.random() < 0.4
            size = rng.randint(1, 25) if batch else 1
            users = [f"{tag}-{n}-{seq}-{i}" for i in range(size)]
            seq += 1
            events = [_event(u, rng) for u in users]
            path, body = ("/events/batch", {"events": events}) if batch else ("/events", events[0])
            load.requests += 1
            try:
                async with session.post(url + path, json=body) as response:
                    data = await response.read()
                    load.statuses[response.status] = load.statuses.get(response.status, 0) + 1
                    if response.status == 202:
                        answer = json.loads(data)
                        ids = (
                            [e["event_id"] for e in answer["events"]]
                            if batch
                            else [answer["event_id"]]
                        )
                        load.acknowledged.update(ids)
                        load.acked_users.update(users)
            except (TimeoutError, aiohttp.ClientError, OSError):
                load.connection_errors += 1
                load.unanswered_users.update(users)
                if until_refused:
                    return
                await asyncio.sleep(0.02)

    timeout = aiohttp.ClientTimeout(total=seconds + 30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(worker(n, session) for n in range(workers)))
    return load


@dataclass
class Round:
    acknowledged: int
    in_log: int
    lost: int
    stored_unanswered: int
    statuses: dict[int, int]
    connection_errors: int
    kill_after_s: float


def check_database(db: Path) -> tuple[set[str], int]:
    """Every event_id in the log (asserting none twice) and its row count; assert the
    rollup equals the log's GROUP BY."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        ids = [i for (i,) in conn.execute("SELECT event_id FROM events")]
        assert len(ids) == len(set(ids)), "an event_id is in the log twice"
        from_log = {
            (day, kind): n
            for day, kind, n in conn.execute(
                "SELECT substr(timestamp, 1, 10), event_type, COUNT(*) FROM events GROUP BY 1, 2"
            )
        }
        rollup = {
            (day, kind): n
            for day, kind, n in conn.execute(
                "SELECT day, event_type, count FROM daily_event_counts WHERE count != 0"
            )
        }
        assert rollup == from_log, f"rollup {rollup} != log {from_log}"
        return set(ids), len(ids)
    finally:
        conn.close()


def users_in_log(db: Path, users: set[str]) -> set[str]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return {u for (u,) in conn.execute("SELECT user_id FROM events") if u in users}
    finally:
        conn.close()


def reconcile_dry_run(db: Path) -> list[object]:
    """``python -m app reconcile --dry-run --json``: the days it would repair."""
    result = subprocess.run(
        [PYTHON, "-m", "app", "reconcile", "--db", str(db), "--dry-run", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(result.stdout)["days_changed"]


async def _serves(url: str, db: Path) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(
            url + "/events", json=_event("after-restart", random.Random())
        ) as r:
            assert r.status == 202, await r.text()
        async with session.get(url + "/analytics/event-counts") as r:
            total = (await r.json())["total_events"]
    assert total == check_database(db)[1], "the API count differs from COUNT(*) on the log"


def crash_round(db: Path, n: int, *, duration: float, rng: random.Random) -> Round:
    service = Service(db)
    service.start()
    kill_after = rng.uniform(0.2, duration)

    seed = rng.randrange(10**9)

    async def load_then_kill() -> Load:
        stop = asyncio.Event()
        task = asyncio.ensure_future(
            drive(service.url, tag=f"r{n}", seconds=duration + 5, seed=seed, stop=stop)
        )
        await asyncio.sleep(kill_after)
        service.kill()  # SIGKILL: no drain, no cleanup, whatever is in flight
        stop.set()
        return await task

    load = asyncio.run(load_then_kill())
    service = Service(db)
    service.start()  # the restart: same database file
    try:
        in_log, _ = check_database(db)
        lost = load.acknowledged - in_log
        stored_unanswered = users_in_log(db, load.unanswered_users)
        asyncio.run(_serves(service.url, db))
    finally:
        service.terminate()
    try:
        days = reconcile_dry_run(db)
    except FileNotFoundError:
        days = []
    assert not days, f"reconcile found differences: {days}"
    assert not lost, f"{len(lost)} acknowledged events lost"
    return Round(
        acknowledged=len(load.acknowledged),
        in_log=len(in_log),
        lost=len(lost),
        stored_unanswered=len(stored_unanswered),
        statuses=load.statuses,
        connection_errors=load.connection_errors,
        kill_after_s=round(kill_after, 3),
    )


def crash_rounds(
    workdir: Path, rounds: int, *, duration: float = 1.5, seed: int | None = None
) -> list[Round]:
    """``rounds`` crash rounds on one database (the log grows across rounds)."""
    rng = random.Random(seed)
    db = workdir / "crash.db"
    return [crash_round(db, n, duration=duration, rng=rng) for n in range(rounds)]


@dataclass
class Shutdown:
    exit_code: int
    acknowledged: int
    statuses: dict[int, int]
    connection_errors: int
    stored_unanswered: int
    seconds_to_exit: float


def graceful_shutdown(workdir: Path, *, load_s: float = 1.0, seed: int | None = None) -> Shutdown:
    """SIGTERM under load: exit 0, every request answered or refused, every 202 stored."""
    rng = random.Random(seed)
    db = workdir / "shutdown.db"
    service = Service(db)
    service.start()
    term_after = rng.uniform(0.3, load_s)

    async def load_then_term() -> tuple[Load, int, float]:
        task = asyncio.ensure_future(
            drive(service.url, tag="t", seconds=load_s + 20, until_refused=True, workers=16)
        )
        await asyncio.sleep(term_after)
        started = time.monotonic()
        code = await asyncio.to_thread(service.terminate, 30.0)
        took = time.monotonic() - started
        return await task, code, took

    load, code, took = asyncio.run(load_then_term())
    in_log, _ = check_database(db)
    assert code == 0, f"exit code {code}: {service.log()}"
    assert set(load.statuses) <= {202, 503}, load.statuses
    lost = load.acknowledged - in_log
    assert not lost, f"{len(lost)} acknowledged events lost"
    stored_unanswered = users_in_log(db, load.unanswered_users)
    assert not stored_unanswered, f"{len(stored_unanswered)} events stored without an answer"
    return Shutdown(
        exit_code=code,
        acknowledged=len(load.acknowledged),
        statuses=load.statuses,
        connection_errors=load.connection_errors,
        stored_unanswered=len(stored_unanswered),
        seconds_to_exit=round(took, 3),
    )


@dataclass
class Overload:
    accepted: int
    refused: int
    in_log: int
    locked_503_after_s: float


def overload(workdir: Path, *, flood: int = 300, hold_s: float = 0.15) -> Overload:
    """A flood against a 20-event write queue while another process holds the write lock:
    202 for what fits, 503 + Retry-After for the rest, and afterwards log == acknowledged.
    Then a lock held past the busy timeout: 503 within about that timeout, and recovery."""
    db = workdir / "overload.db"
    service = Service(db, "--queue-max-events", "20", "--busy-timeout-ms", "300")
    service.start()
    try:

        async def run() -> tuple[list[tuple[int, str | None, str]], float, int]:
            async with aiohttp.ClientSession() as session:

                async def one(i: int) -> tuple[int, str | None, str]:
                    event = _event(f"flood-{i}", random.Random(i))
                    async with session.post(service.url + "/events", json=event) as r:
                        body = await r.read()
                        return r.status, r.headers.get("Retry-After"), body.decode()

                blocker = sqlite3.connect(db, isolation_level=None, timeout=5)
                blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
                tasks = [asyncio.ensure_future(one(i)) for i in range(flood)]
                await asyncio.sleep(hold_s)  # shorter than busy_timeout: the queue waits
                blocker.execute("ROLLBACK")
                results = await asyncio.gather(*tasks)

                blocker.execute("BEGIN IMMEDIATE")  # now past the busy timeout: 503, no hang
                started = time.monotonic()
                locked = await one(flood)
                took = time.monotonic() - started
                blocker.execute("ROLLBACK")
                blocker.close()
                after = await one(flood + 1)  # recovers by itself
                return [*results, after], took, locked[0]

        results, took, locked_status = asyncio.run(run())
    finally:
        service.terminate()
    statuses = {status for status, _, _ in results}
    assert statuses <= {202, 503}, statuses
    assert locked_status == 503 and took < 0.3 + 2.0, (locked_status, took)
    assert results[-1][0] == 202, "the service did not recover after the lock was released"
    acknowledged = {json.loads(body)["event_id"] for status, _, body in results if status == 202}
    for status, retry_after, _ in results:
        if status == 503:
            assert retry_after is not None and retry_after.isdigit()
    in_log, n = check_database(db)
    assert in_log == acknowledged, "log != acknowledged"
    return Overload(
        accepted=sum(1 for status, _, _ in results[:-1] if status == 202),
        refused=sum(1 for status, _, _ in results[:-1] if status == 503),
        in_log=n,
        locked_503_after_s=round(took, 3),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="crash rounds (default 5)")
    parser.add_argument(
        "--duration", type=float, default=2.0, help="longest load before the kill, s"
    )
    parser.add_argument("--seed", type=int, default=None, help="random seed (kill points)")
    parser.add_argument(
        "--shutdown", action="store_true", help="also run the SIGTERM and overload rounds"
    )
    parser.add_argument("--workdir", type=Path, default=None, help="keep the database here")
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        workdir = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        workdir.mkdir(parents=True, exist_ok=True)
        totals = {"acknowledged": 0, "lost": 0}
        for n, result in enumerate(
            crash_rounds(workdir, args.rounds, duration=args.duration, seed=args.seed)
        ):
            totals["acknowledged"] += result.acknowledged
            totals["lost"] += result.lost
            print(f"round {n}: {result}")
        print(
            f"crash rounds: {args.rounds}, acknowledged events checked: "
            f"{totals['acknowledged']}, lost: {totals['lost']}"
        )
        if args.shutdown:
            print(f"shutdown: {graceful_shutdown(workdir, seed=args.seed)}")
            print(f"overload: {overload(workdir)}")
    return 0


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())
