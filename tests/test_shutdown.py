"""SIGTERM drains the real process: what is being received is read to its end, answered and
committed; new connections are refused; idle connections close; the process exits 0.

Each test runs ``python -m app serve`` as a child process (``scripts/crash_test.Service``)
and talks raw HTTP/1.1 over sockets, so a body can stop half way. The waits below are
generous bounds that only a hang (or a shutdown that waits out a body timeout) exceeds,
not measurements.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest

from scripts.crash_test import Service

pytestmark = pytest.mark.slow

EXIT_WITHIN_S = 15.0  # far below the 60 s body timeout the services here run with
TOKEN = "drain-test-token"


def event_body(user: str) -> bytes:
    return json.dumps(
        {"user_id": user, "event_type": "view", "payload": {"url": "https://example.com/"}}
    ).encode()


def post_head(path: str, length: int, *, close: bool = False) -> bytes:
    connection = b"Connection: close\r\n" if close else b""
    return (
        (
            f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n"
        ).encode()
        + connection
        + b"\r\n"
    )


def read_response(sock: socket.socket, timeout: float = 30.0) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length: ``(status, headers, body)``.
    Raises ``ConnectionError`` when the server closes the connection before answering."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    while len(body) < int(headers.get("content-length", "0")):
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed inside the body")
        body += chunk
    return int(status_line.split()[1]), headers, body


def closed_by_server(sock: socket.socket, timeout: float = 10.0) -> bool:
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def users_in_log(db: Path) -> list[str]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return [u for (u,) in conn.execute("SELECT user_id FROM events ORDER BY user_id")]
    finally:
        conn.close()


def wait_for(proc: subprocess.Popen[bytes]) -> int:
    return proc.wait(timeout=EXIT_WITHIN_S)


def sigterm(service: Service) -> None:
    assert service.proc is not None
    service.proc.terminate()


class Harness:
    """Services on fresh databases and raw connections to them, all cleaned up afterwards."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.services: list[Service] = []
        self.sockets: list[socket.socket] = []

    def start(self, *flags: str) -> Service:
        service = Service(self.tmp_path / f"drain{len(self.services)}.db", *flags)
        service.start()
        self.services.append(service)
        return service

    def connect(self, service: Service) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", service.port), timeout=10)
        self.sockets.append(sock)
        return sock

    def started_body(self, service: Service, path: str, body: bytes, sent: int) -> socket.socket:
        """A connection that has sent the head and ``sent`` bytes of ``body``; its handler is
        then reading the body (aiohttp starts the handler once the head is parsed)."""
        sock = self.connect(service)
        sock.sendall(post_head(path, len(body)) + body[:sent])
        time.sleep(0.3)  # let the server parse the head and start the handler
        return sock

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        for service in self.services:
            service.kill()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path)
    yield harness
    harness.close()


def test_a_body_still_arriving_at_sigterm_is_read_to_its_end_committed_and_answered(serve):
    service = serve.start("--body-timeout-s", "60")
    body = event_body("half-sent")
    sock = serve.started_body(service, "/events", body, len(body) // 2)
    sigterm(service)
    time.sleep(0.3)
    sock.sendall(body[len(body) // 2 :])
    status, headers, answer = read_response(sock)
    assert status == 202, answer
    assert headers["connection"] == "close"  # draining: no further request on it
    assert closed_by_server(sock)
    assert wait_for(service.proc) == 0
    assert users_in_log(service.db) == ["half-sent"]
    assert json.loads(answer)["event_id"]


def test_a_batch_arriving_in_pieces_during_the_drain_is_committed_whole(serve):
    service = serve.start("--body-timeout-s", "60")
    body = json.dumps(
        {
            "events": [
                {"user_id": f"b{i:03}", "event_type": "click", "payload": {"element_id": "x"}}
                for i in range(300)
            ]
        }
    ).encode()
    sock = serve.started_body(service, "/events/batch", body, 100)
    sigterm(service)
    for start in range(100, len(body), 4096):  # the rest in pieces, after the signal
        time.sleep(0.02)
        sock.sendall(body[start : start + 4096])
    status, _, answer = read_response(sock)
    assert status == 202, answer
    assert json.loads(answer)["accepted"] == 300
    assert wait_for(service.proc) == 0
    assert users_in_log(service.db) == [f"b{i:03}" for i in range(300)]


def test_a_body_that_never_completes_gets_408_in_the_body_timeout_then_the_process_exits(serve):
    service = serve.start("--body-timeout-s", "1")
    body = event_body("never-finished")
    sock = serve.started_body(service, "/events", body, 10)
    sigterm(service)
    status, headers, answer = read_response(sock, timeout=EXIT_WITHIN_S)
    assert status == 408, answer
    assert headers["connection"] == "close"
    assert wait_for(service.proc) == 0
    assert users_in_log(service.db) == []


def test_while_draining_new_connections_are_refused(serve):
    service = serve.start("--body-timeout-s", "60")
    body = event_body("holds-the-drain")
    sock = serve.started_body(service, "/events", body, 10)
    sigterm(service)
    time.sleep(0.3)
    with pytest.raises(ConnectionRefusedError):
        serve.connect(service).close()
    assert service.proc.poll() is None  # still draining: the body has not arrived
    sock.sendall(body[10:])
    assert read_response(sock)[0] == 202
    assert wait_for(service.proc) == 0


def test_an_idle_keep_alive_connection_is_closed_and_does_not_delay_the_exit(serve):
    service = serve.start("--body-timeout-s", "60")
    idle = serve.connect(service)
    idle.sendall(post_head("/events", len(event_body("before"))) + event_body("before"))
    status, headers, _ = read_response(idle)
    assert status == 202 and headers.get("connection") != "close"  # kept alive
    sigterm(service)
    assert closed_by_server(idle)
    assert wait_for(service.proc) == 0
    assert users_in_log(service.db) == ["before"]


def test_a_request_on_a_kept_alive_connection_during_the_drain_is_answered_and_committed(serve):
    """A client that sent its next request on an open connection just as SIGTERM came is
    answered (and told to close), not cut off without an answer."""
    service = serve.start("--body-timeout-s", "60")
    kept = serve.connect(service)
    kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
    assert read_response(kept)[0] == 200
    body = event_body("holds-the-drain")
    holder = serve.started_body(service, "/events", body, 10)
    sigterm(service)
    time.sleep(0.3)
    kept.sendall(post_head("/events", len(event_body("on-kept"))) + event_body("on-kept"))
    status, headers, answer = read_response(kept)
    assert status == 202, answer
    assert headers["connection"] == "close"
    holder.sendall(body[10:])
    assert read_response(holder)[0] == 202
    assert wait_for(service.proc) == 0
    assert users_in_log(service.db) == ["holds-the-drain", "on-kept"]


def test_readiness_says_unavailable_while_draining(serve):
    service = serve.start("--body-timeout-s", "60")
    kept = serve.connect(service)
    kept.sendall(b"GET /readyz HTTP/1.1\r\nHost: test\r\n\r\n")
    assert read_response(kept)[0] == 200
    body = event_body("holds-the-drain")
    holder = serve.started_body(service, "/events", body, 10)
    sigterm(service)
    time.sleep(0.3)
    kept.sendall(b"GET /readyz HTTP/1.1\r\nHost: test\r\n\r\n")
    status, _, answer = read_response(kept)
    assert status == 503
    assert "shutting down" in json.loads(answer)["problems"][0]
    holder.sendall(body[10:])
    assert read_response(holder)[0] == 202
    assert wait_for(service.proc) == 0


def test_an_http_rebuild_in_progress_stops_after_its_current_day_and_is_answered(serve):
    """SIGTERM does not wait for a whole long pass: it ends after the day it is on, its
    report says ``completed: false``, and every day it finished is consistent."""
    service = serve.start("--admin-token", TOKEN)
    conn = sqlite3.connect(service.db, isolation_level=None)
    with conn:  # 200,000 stray days: a rebuild of 200,000 transactions
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO daily_event_counts VALUES (?, 'view', 1)",
            [(date.fromordinal(500_000 + i).isoformat(),) for i in range(200_000)],
        )
    conn.close()
    sock = serve.connect(service)
    sock.sendall(
        b"POST /admin/rollups/rebuild HTTP/1.1\r\nHost: test\r\n"
        + f"Authorization: Bearer {TOKEN}\r\nContent-Length: 0\r\n\r\n".encode()
    )
    conn = sqlite3.connect(service.db)
    deadline = time.monotonic() + 30
    while stray_days(conn) == 200_000:  # until the pass has repaired a day
        assert time.monotonic() < deadline, "the rebuild did not start"
        time.sleep(0.05)
    sigterm(service)
    status, _, answer = read_response(sock, timeout=EXIT_WITHIN_S)
    assert status == 200, answer
    report = json.loads(answer)
    assert report["completed"] is False
    assert wait_for(service.proc) == 0
    assert stray_days(conn) == 200_000 - report["days_checked"]
    conn.close()


def test_requests_on_kept_alive_connections_around_sigterm_are_answered_or_not_stored(serve):
    """Twelve open connections each send one more event, whole or in two parts, from just
    before to just after SIGTERM. Each is answered 202 and stored, or cut off without an
    answer and not stored; never a 4xx (the service worker would drop it), never stored
    without an answer."""
    service = serve.start("--body-timeout-s", "60")
    conns = []
    for _ in range(12):
        sock = serve.connect(service)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
        assert read_response(sock)[0] == 200
        conns.append(sock)
    rests: list[tuple[socket.socket, bytes]] = []
    sent: dict[str, socket.socket] = {}
    for i, sock in enumerate(conns):
        if i == 4:
            sigterm(service)
        user = f"around-{i:02}"
        body = event_body(user)
        cut = len(body) if i % 2 else 20  # odd: whole; even: in two parts
        try:
            sock.sendall(post_head("/events", len(body)) + body[:cut])
            if cut < len(body):
                rests.append((sock, body[cut:]))
            sent[user] = sock
        except OSError:  # already closed by the drain: not sent, so nothing to store
            pass
        time.sleep(0.003)
    time.sleep(0.05)
    for sock, rest in rests:
        with contextlib.suppress(OSError):  # closed by the drain: that request is cut off
            sock.sendall(rest)
    answered = set()
    for user, sock in sent.items():
        try:
            status, _, answer = read_response(sock, timeout=EXIT_WITHIN_S)
        except (ConnectionError, OSError):
            continue
        assert status == 202, (user, answer)
        answered.add(user)
    assert wait_for(service.proc) == 0
    assert set(users_in_log(service.db)) == answered
    assert {"around-00", "around-01", "around-02", "around-03"} <= answered  # before SIGTERM


def test_a_scheduled_pass_running_at_sigterm_stops_after_its_current_day(serve):
    service = serve.start("--reconcile-minutes", "0.002")  # every 0.12 s
    conn = sqlite3.connect(service.db, isolation_level=None)
    with conn:
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO daily_event_counts VALUES (?, 'view', 1)",
            [(date.fromordinal(500_000 + i).isoformat(),) for i in range(200_000)],
        )
    deadline = time.monotonic() + 30
    while stray_days(conn) == 200_000:  # until a scheduled pass has repaired a day
        assert time.monotonic() < deadline, "no scheduled pass started"
        time.sleep(0.05)
    sigterm(service)
    assert wait_for(service.proc) == 0
    assert 0 < stray_days(conn) < 200_000  # stopped part way; each day its own transaction
    conn.close()


def stray_days(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT COUNT(*) FROM daily_event_counts").fetchone()[0]
