"""A throwaway PostgreSQL cluster for tests: initdb in a temp dir, a server on 127.0.0.1.

``postgres_cluster()`` is a context manager meant for a session-scoped pytest fixture::

    @pytest.fixture(scope="session")
    def pg() -> Iterator[PostgresCluster]:
        with postgres_cluster() as cluster:
            yield cluster

It finds Debian's binaries (``pg_config --bindir``, ``/usr/lib/postgresql/*/bin``, then
``PATH``; ``scripts/ensure-postgres`` installs them), runs ``initdb`` and ``pg_ctl start``
on a free port of 127.0.0.1 with the unix socket in the temp dir, creates a database and
yields the cluster (``cluster.url`` is a ``postgresql://`` URL). On exit the server is
stopped (``pg_ctl stop -m immediate``: nothing in it is worth a clean shutdown) and the
dir is deleted.

- **root**: ``initdb`` and ``postgres`` refuse to run as root, so when this process is
  root every server command runs as the ``postgres`` OS user (Debian's package creates
  it): ``subprocess`` switches user and group in the child (``user=``/``group=``, no
  ``su``/``runuser``, no shell, no ``preexec_fn``), and the temp dir is ``chown``-ed to it.
  The temp dir's parent must be traversable by that user: the default (``/tmp``) is.
- **durability**: ``fsync``, ``synchronous_commit`` and ``full_page_writes`` stay on unless
  ``durable=False``: a commit here costs what it costs in production, which is what the
  durability tests are about. ``settings`` overrides any ``postgresql.conf`` parameter.
- **authentication**: ``trust`` for TCP on 127.0.0.1 and the socket: no password.
- **a fresh database per test**: migrate one database once, ``make_template`` it, then
  ``clone`` it per test (``CREATE DATABASE … TEMPLATE …``, PostgreSQL 15's WAL_LOG
  strategy: ~50 ms over an open connection, ~150 ms through ``psql``). Dropping is the
  expensive part (``DROP DATABASE`` forces a checkpoint: ~1 s with fsync on), so leave
  the clones to the cluster's teardown::

      @pytest.fixture(scope="session")
      def pg_template(pg: PostgresCluster) -> str:
          pg.create_database("template_migrated")
          asyncio.run(migrate(pg.url_for("template_migrated")))  # the backend's migrations
          pg.make_template("template_migrated")
          return "template_migrated"

      @pytest.fixture
      def pg_url(pg: PostgresCluster, pg_template: str) -> str:
          return pg.clone(pg_template, f"test_{next(_numbers)}")

Client commands (``CREATE DATABASE`` and such) go through the cluster's own ``psql`` over
the unix socket, so this module needs no database driver and stays synchronous (call it
from sync fixtures, or via ``asyncio.to_thread``).

``python -m tests.postgres_cluster`` starts one, prints its URL and keeps it up until
Enter or Ctrl-C (for trying things by hand).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

DEFAULT_DBNAME = "analytics"
SUPERUSER = "postgres"  # the database role initdb creates (not the OS user)
OS_USER = "postgres"  # who runs the server when this process is root
START_ATTEMPTS = 3  # a free port can be taken between our probe and the server's bind
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,62}")


class PostgresUnavailableError(RuntimeError):
    """No PostgreSQL binaries, or the server would not initialise or start."""


def find_bindir() -> Path:
    """The directory holding ``initdb``, ``pg_ctl``, ``postgres`` and ``psql``.

    Tried in order: ``$PG_BINDIR``, ``pg_config --bindir`` (Debian's libpq-dev answers
    with the server's dir even when the server package is absent, hence the check),
    the newest ``/usr/lib/postgresql/*/bin``, then the dir of ``initdb`` on ``PATH``.
    """
    candidates: list[Path] = []
    if os.environ.get("PG_BINDIR"):
        candidates.append(Path(os.environ["PG_BINDIR"]))
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
            if out:
                candidates.append(Path(out))
    debian = Path("/usr/lib/postgresql").glob("*/bin")
    candidates.extend(sorted(debian, key=_version_key, reverse=True))
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).resolve().parent)
    for bindir in candidates:
        if all(os.access(bindir / tool, os.X_OK) for tool in ("initdb", "pg_ctl", "psql")):
            return bindir
    raise PostgresUnavailableError(
        "no PostgreSQL server binaries (initdb, pg_ctl, psql) found in "
        f"{[str(c) for c in candidates] or 'pg_config, /usr/lib/postgresql/*/bin or PATH'}; "
        "run scripts/ensure-postgres (installs Debian's postgresql package)"
    )


def _version_key(bindir: Path) -> tuple[int, ...]:
    """``/usr/lib/postgresql/15/bin`` → (15,): sort 9.6 < 10 < 15 numerically."""
    return tuple(int(p) for p in re.findall(r"\d+", bindir.parent.name)) or (0,)


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _conf_value(value: str | int | float | bool) -> str:
    """A postgresql.conf value: booleans as on/off, strings single-quoted."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int | float):
        return str(value)
    return "'" + str(value).replace("\\", "\\\\").replace("'", "''") + "'"


def _ident(name: str) -> str:
    """A database name safe to interpolate (tests choose them; keep them boring)."""
    if not _IDENTIFIER.fullmatch(name):
        raise ValueError(f"database name {name!r}: use [a-z_][a-z0-9_]*, at most 63 chars")
    return name


@dataclass
class PostgresCluster:
    """A running throwaway server. ``url`` names its default database."""

    bindir: Path
    base: Path  # the temp dir: data/, sock/, server.log
    port: int
    dbname: str
    run_as: str | None  # the OS user server commands run as (None: this process's user)

    @property
    def datadir(self) -> Path:
        return self.base / "data"

    @property
    def socket_dir(self) -> Path:
        return self.base / "sock"

    @property
    def logfile(self) -> Path:
        return self.base / "server.log"

    @property
    def url(self) -> str:
        return self.url_for(self.dbname)

    def url_for(self, dbname: str) -> str:
        """``postgresql://postgres@127.0.0.1:PORT/dbname`` (TCP, trust: no password)."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    # --- running commands --------------------------------------------------------

    def run(
        self, args: Sequence[str | os.PathLike[str]], *, timeout: float = 60, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """A server binary (``args[0]`` is looked up in ``bindir``) as the cluster's user."""
        return _run(self.bindir, self.run_as, self.base, args, timeout=timeout, check=check)

    def psql(self, sql: str, *, dbname: str = "postgres", timeout: float = 60) -> str:
        """Run ``sql`` (one or more statements; stops at the first error) and return the
        unaligned, tuples-only output. ``CREATE/DROP DATABASE`` need a lone statement."""
        return self.run(
            [
                "psql",
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                str(self.socket_dir),
                "-p",
                str(self.port),
                "-U",
                SUPERUSER,
                "-d",
                dbname,
                "-c",
                sql,
            ],
            timeout=timeout,
        ).stdout

    # --- databases -------------------------------------------------------------

    def create_database(self, name: str, *, template: str | None = None) -> str:
        """``CREATE DATABASE name [TEMPLATE template]``; returns its URL. A template must
        have no open connection while it is copied (PostgreSQL refuses otherwise)."""
        sql = f"CREATE DATABASE {_ident(name)}"
        if template:
            sql += f" TEMPLATE {_ident(template)}"
        self.psql(sql)
        return self.url_for(name)

    def make_template(self, name: str) -> None:
        """Mark ``name`` a template that takes no more connections, and end those it has
        (a pool a migration left open would make every later clone fail)."""
        self.psql(f"ALTER DATABASE {_ident(name)} WITH IS_TEMPLATE true ALLOW_CONNECTIONS false")
        self.psql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = '{_ident(name)}' AND pid <> pg_backend_pid()"
        )

    def clone(self, template: str, name: str) -> str:
        """A fresh copy of a migrated template (tens of ms; see module docstring)."""
        return self.create_database(name, template=template)

    def drop_database(self, name: str) -> None:
        """Drop ``name``, ending its connections first (``WITH (FORCE)``, PostgreSQL 13+)."""
        self.psql(f"DROP DATABASE IF EXISTS {_ident(name)} WITH (FORCE)")

    # --- lifecycle -------------------------------------------------------------

    def stop(self, mode: str = "immediate") -> None:
        """Stop the server (``immediate``: no checkpoint; the next start would recover).
        If ``pg_ctl`` cannot, the postmaster is killed by the pid it wrote."""
        pidfile = self.datadir / "postmaster.pid"
        if not pidfile.exists():
            return
        result = self.run(
            ["pg_ctl", "stop", "-D", self.datadir, "-m", mode, "-w", "-t", "30"], check=False
        )
        if result.returncode != 0 and pidfile.exists():
            with contextlib.suppress(OSError, ValueError, IndexError):
                os.kill(int(pidfile.read_text().split()[0]), signal.SIGKILL)

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        return ""


def _run(
    bindir: Path,
    run_as: str | None,
    cwd: Path,
    args: Sequence[str | os.PathLike[str]],
    *,
    timeout: float,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """``bindir/args[0] args[1:]``, as ``run_as`` when given (we are root then).

    The environment loses every ``PG*`` variable (a developer's ``PGDATA``/``PGHOST``
    must not redirect us) and gets a C locale; ``cwd`` is a dir the user can enter.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(LC_ALL="C", LANG="C")
    argv = [str(bindir / args[0]), *map(str, args[1:])]
    kwargs: dict[str, object] = {}
    if run_as is not None:
        entry = pwd.getpwnam(run_as)
        env.update(HOME=entry.pw_dir, USER=run_as, LOGNAME=run_as)
        kwargs = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
    result = subprocess.run(
        argv,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
        **kwargs,  # type: ignore[arg-type]
    )
    if check and result.returncode != 0:
        raise PostgresUnavailableError(
            f"{' '.join(argv)} exited {result.returncode}:\n{result.stdout}{result.stderr}"
        )
    return result


def _server_user(os_user: str) -> str | None:
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(os_user)
    except KeyError:
        raise PostgresUnavailableError(
            f"running as root, PostgreSQL must run as another OS user, and {os_user!r} does "
            "not exist (Debian's postgresql package creates it: scripts/ensure-postgres)"
        ) from None
    return os_user


@contextlib.contextmanager
def postgres_cluster(
    *,
    dbname: str = DEFAULT_DBNAME,
    durable: bool = True,
    settings: Mapping[str, str | int | float | bool] | None = None,
    parent_dir: str | os.PathLike[str] | None = None,
    os_user: str = OS_USER,
    keep: bool = False,
    timeout: float = 60,
) -> Iterator[PostgresCluster]:
    """Start a throwaway cluster, create ``dbname``, yield it; stop and delete on exit.

    ``durable=False`` turns off fsync, synchronous_commit and full_page_writes (only for
    tests that do not measure or test durability); ``settings`` (any postgresql.conf
    parameter) is applied last. ``keep`` leaves the dir in place (for a post-mortem).
    """
    bindir = find_bindir()
    run_as = _server_user(os_user)
    base = Path(tempfile.mkdtemp(prefix="pgtest-", dir=parent_dir))
    cluster: PostgresCluster | None = None
    try:
        if run_as is not None:
            entry = pwd.getpwnam(run_as)
            os.chown(base, entry.pw_uid, entry.pw_gid)
        cluster = _init_and_start(bindir, run_as, base, dbname, durable, settings, timeout)
        yield cluster
    finally:
        if cluster is not None:
            cluster.stop()
        if not keep:
            shutil.rmtree(base, ignore_errors=True)


def _init_and_start(
    bindir: Path,
    run_as: str | None,
    base: Path,
    dbname: str,
    durable: bool,
    settings: Mapping[str, str | int | float | bool] | None,
    timeout: float,
) -> PostgresCluster:
    cluster = PostgresCluster(bindir=bindir, base=base, port=0, dbname=dbname, run_as=run_as)
    # --no-sync: initdb's own final fsync of the new files (~0.1-1 s) protects against an
    # OS crash, which a throwaway cluster does not outlive anyway; the server below runs
    # with fsync on.
    cluster.run(
        [
            "initdb",
            "-D",
            cluster.datadir,
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-locale",
            "--no-sync",
        ],
        timeout=timeout,
    )
    # The socket dir belongs to the server's user, so it can create its socket there.
    _mkdir_as(base / "sock", run_as)
    conf: dict[str, str | int | float | bool] = {
        "listen_addresses": "127.0.0.1",
        "unix_socket_directories": str(cluster.socket_dir),
        "fsync": durable,
        "synchronous_commit": "on" if durable else "off",
        "full_page_writes": durable,
        "logging_collector": False,
        "log_lock_waits": True,
        "max_connections": 100,
    }
    conf.update(settings or {})
    last_error: PostgresUnavailableError | None = None
    for _ in range(START_ATTEMPTS):
        cluster.port = free_port()
        conf["port"] = cluster.port
        lines = [f"{key} = {_conf_value(value)}" for key, value in conf.items()]
        # postgresql.auto.conf is read last and rewritten whole: our block wins over the
        # defaults initdb wrote, and a retry replaces the previous port.
        (cluster.datadir / "postgresql.auto.conf").write_text(
            "# written by tests/postgres_cluster.py\n" + "\n".join(lines) + "\n"
        )
        result = cluster.run(
            [
                "pg_ctl",
                "start",
                "-D",
                cluster.datadir,
                "-l",
                cluster.logfile,
                "-w",
                "-t",
                str(int(timeout)),
            ],
            timeout=timeout + 10,
            check=False,
        )
        if result.returncode == 0:
            break
        last_error = PostgresUnavailableError(
            f"pg_ctl start failed (port {cluster.port}):\n{result.stderr}\n{cluster.log_tail()}"
        )
        cluster.stop()  # in case it half-started
        if "already in use" not in cluster.log_tail():
            raise last_error
        time.sleep(0.2)
    else:
        assert last_error is not None
        raise last_error
    try:
        cluster.create_database(dbname)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _mkdir_as(path: Path, run_as: str | None) -> None:
    path.mkdir(mode=0o700)
    if run_as is not None:
        entry = pwd.getpwnam(run_as)
        os.chown(path, entry.pw_uid, entry.pw_gid)


if __name__ == "__main__":
    with postgres_cluster() as pg:
        print(pg.url, flush=True)
        print(f"psql -h {pg.socket_dir} -p {pg.port} -U {SUPERUSER} {pg.dbname}", flush=True)
        with contextlib.suppress(KeyboardInterrupt, EOFError):
            input("Enter (or Ctrl-C) stops it and deletes its dir… ")
