"""A throwaway PostgreSQL cluster for tests: ``initdb`` into a temp dir, ``pg_ctl start`` on a unix socket.

* The server binaries are looked up with ``shutil.which`` (``initdb``, ``pg_ctl``) and then in
  ``/usr/lib/postgresql/*/bin`` (Debian's layout), newest version first; ``PG_BIN`` overrides both.
* No TCP at all (``listen_addresses = ''``): clients connect through the socket in the temp dir.
* PostgreSQL refuses to run as root. When the tests run as root, the cluster runs as the
  unprivileged ``postgres`` user (or ``nobody``), via ``subprocess``'s ``user=``/``group=``;
  the temp dir is created under ``/tmp`` (pytest's own tmp dirs are 0700 root) and chowned to it.
* ``fsync = off`` and ``full_page_writes = off``: fast, and acceptable for a TEST cluster only
  (a crash of this throwaway cluster loses nothing anyone cares about). ``synchronous_commit = off``
  is set cluster-wide on purpose: the store must switch its own sessions back to ``on``, and a test
  checks that it does.
* The superuser is ``pgadmin`` (trust auth on the socket); the gateway connects as the
  non-superuser role ``gateway`` that owns the databases it uses, so triggers and privileges apply.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

SUPERUSER = "pgadmin"
APP_ROLE = "gateway"
PORT = 54329  # only names the socket file; nothing listens on TCP


def find_pg_bin() -> Path | None:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``, or None."""
    candidates: list[Path] = []
    if os.environ.get("PG_BIN"):
        candidates.append(Path(os.environ["PG_BIN"]))
    which = shutil.which("initdb")
    if which:
        candidates.append(Path(which).resolve().parent)
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: _version_key(p), reverse=True)
    candidates.extend(Path(p) for p in debian)
    for directory in candidates:
        if all((directory / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return directory
    return None


def _version_key(path: str) -> tuple[int, ...]:
    version = Path(path).parent.name
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def _server_user() -> pwd.struct_passwd | None:
    """The unprivileged account to run the server as when we are root; None when not root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise RuntimeError("running as root and neither a 'postgres' nor a 'nobody' account exists for the server")


@dataclass
class PgCluster:
    bin_dir: Path
    root: Path
    account: pwd.struct_passwd | None
    _names: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "sock"

    def dsn(self, dbname: str = "postgres", user: str = APP_ROLE) -> str:
        return f"host={self.socket_dir} port={PORT} dbname={dbname} user={user}"

    def superuser_connect(self, dbname: str = "postgres") -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(self.dsn(dbname, SUPERUSER), autocommit=True)

    def create_database(self, prefix: str = "t") -> str:
        """A fresh, empty database owned by the gateway role; returns its DSN for that role."""
        name = f"{prefix}_{next(self._names)}"
        with self.superuser_connect() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(APP_ROLE)))
        return self.dsn(name)

    def drop_database(self, dsn: str) -> None:
        name = dsn.rsplit("dbname=", 1)[1].split()[0]
        with self.superuser_connect() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        kwargs: dict[str, object] = {}
        if self.account is not None:
            kwargs = {"user": self.account.pw_uid, "group": self.account.pw_gid, "extra_groups": []}
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "TZ": "UTC"}
        return subprocess.run(  # type: ignore[call-overload,no-any-return]
            args, check=True, capture_output=True, text=True, env=env, cwd=self.root, timeout=120, **kwargs
        )

    def start(self) -> None:
        if self.account is not None:
            for path in (self.root, self.socket_dir):
                os.chown(path, self.account.pw_uid, self.account.pw_gid)
        self._run(
            str(self.bin_dir / "initdb"),
            "-D",
            str(self.data_dir),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )
        options = " ".join(
            [
                "-c listen_addresses=''",
                f"-c unix_socket_directories={self.socket_dir}",
                f"-p {PORT}",
                "-c fsync=off",
                "-c full_page_writes=off",
                "-c synchronous_commit=off",
                "-c max_connections=60",
                "-c shared_buffers=32MB",
            ]
        )
        self._run(
            str(self.bin_dir / "pg_ctl"),
            "-D",
            str(self.data_dir),
            "-l",
            str(self.root / "server.log"),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        )
        with self.superuser_connect() as conn:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(APP_ROLE)))

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
            self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join((self.root / "server.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def start_cluster(bin_dir: Path) -> PgCluster:
    root = Path(tempfile.mkdtemp(prefix="gw-pg-", dir="/tmp"))
    (root / "sock").mkdir()
    cluster = PgCluster(bin_dir=bin_dir, root=root, account=_server_user())
    try:
        cluster.start()
    except subprocess.CalledProcessError as exc:
        detail = f"{exc.stderr}\n{cluster.log_tail()}"
        cluster.stop()
        raise RuntimeError(f"could not start the test PostgreSQL cluster: {detail}") from exc
    except BaseException:
        cluster.stop()
        raise
    return cluster
