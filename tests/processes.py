"""`tokenvault serve` as a separate process, configured the way an operator would."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from harness import ServiceHarness

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def write_config(harness: ServiceHarness, name: str, port: int, extra: str = "") -> Path:
    """Write a settings file for one server process that shares the harness's files and DB."""
    config = harness.folder / f"{name}.toml"
    config.write_text(
        f"""
[server]
listen = "127.0.0.1:{port}"
shutdown_grace_seconds = 1

[tls]
cert_file = "server.pem"
key_file = "server-key.pem"
client_ca_file = "ca.pem"

[database]
dsn_env = "TOKENVAULT_TEST_DSN"
min_connections = 1
max_connections = 4

[kek]
file = "kek.json"

[policy]
file = "policy.toml"
{extra}
"""
    )
    return config


class ServerProcess:
    def __init__(self, harness: ServiceHarness, name: str, extra_config: str = "") -> None:
        self.harness = harness
        self.port = free_port()
        self.config = write_config(harness, name, self.port, extra_config)
        self.stdout_path = harness.folder / f"{name}.out"
        self.stderr_path = harness.folder / f"{name}.err"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> ServerProcess:
        env = dict(
            os.environ, TOKENVAULT_TEST_DSN=self.harness.dsn, GRPC_ENABLE_FORK_SUPPORT="false"
        )
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self._process = subprocess.Popen(  # noqa: S603 - fixed command
                [
                    sys.executable,
                    "-m",
                    "vault",
                    "--log-format",
                    "json",
                    "serve",
                    "--config",
                    str(self.config),
                ],
                stdout=out,
                stderr=err,
                cwd=ROOT,
                env=env,
            )
        self._wait_serving()
        return self

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.send_signal(signal.SIGTERM)
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None

    def output(self) -> str:
        return self.stdout_path.read_text(errors="replace") + self.stderr_path.read_text(
            errors="replace"
        )

    def _wait_serving(self) -> None:
        tls = self.harness.tls("gateway")
        credentials = grpc.ssl_channel_credentials(tls.ca_cert, tls.client_key, tls.client_cert)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.output()[-4000:]}")
            try:
                with grpc.secure_channel(self.endpoint, credentials) as channel:
                    reply = health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(), timeout=2
                    )
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                time.sleep(0.2)
        raise RuntimeError(f"server did not start:\n{self.output()[-4000:]}")
