"""Measure Tokenize and Detokenize throughput and latency against a real server.

By default it starts its own `tokenvault dev` (embedded PostgreSQL, mTLS on 127.0.0.1) in a
temporary state folder and stops it afterwards; ``--state DIR`` uses a running dev server.
Every scenario is bounded by ``--seconds`` and ``--max-requests``. Results print as a Markdown
table (and JSON with ``--json FILE``) for BENCHMARKS.md.

    python loadtest/bench.py --seconds 10 --concurrency 1 4 --batch 1 100
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from tokenvault_client import DetokenizeItem, Reveal, TlsConfig, TokenizeItem, TokenvaultClient

from vault.devstate import StatePaths
from vault.formats.luhn import luhn_checksum

IBANS = ["GB82WEST12345698765432", "DE89370400440532013000", "FR1420041010050500013M02606"]


@dataclass
class Result:
    scenario: str
    batch: int
    concurrency: int
    requests: int
    items_per_second: float
    p50_ms: float
    p95_ms: float
    p99_ms: float


def random_pan(prefix: str = "411111", length: int = 16) -> str:
    """Return a random Luhn-valid card number with a test BIN."""
    body = prefix + "".join(str(secrets.randbelow(10)) for _ in range(length - len(prefix) - 1))
    check = (10 - luhn_checksum(body + "0")) % 10
    return body + str(check)


@contextmanager
def dev_server(state: Path | None) -> Iterator[StatePaths]:
    if state is not None:
        yield StatePaths(state)
        return
    with tempfile.TemporaryDirectory() as scratch:
        paths = StatePaths(Path(scratch) / "state")
        process = subprocess.Popen(  # noqa: S603 - fixed command
            [
                sys.executable,
                "-m",
                "vault",
                "--log-level",
                "WARNING",
                "dev",
                "--no-demo",
                "--listen",
                "127.0.0.1:0",
                "--state",
                str(paths.root),
            ],
            stdout=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 120
            while not paths.endpoint.exists():
                if process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("tokenvault dev did not start; run it by hand to see why")
                time.sleep(0.2)
            yield paths
        finally:
            process.send_signal(signal.SIGINT)
            process.wait(timeout=60)
            from vault.store.embedded import EmbeddedPostgres

            EmbeddedPostgres(paths.root).destroy()


def client_for(paths: StatePaths, caller: str) -> TokenvaultClient:
    tls = TlsConfig.from_files(paths.ca_cert, paths.client_cert(caller), paths.client_key(caller))
    return TokenvaultClient(paths.endpoint.read_text().strip(), tls, timeout=60)


def run_scenario(
    name: str,
    make_request: Callable[[TokenvaultClient], int],
    paths: StatePaths,
    caller: str,
    *,
    batch: int,
    concurrency: int,
    seconds: float,
    max_requests: int,
) -> Result:
    latencies: list[float] = []
    items = 0
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def worker() -> None:
        nonlocal items
        with client_for(paths, caller) as client:
            make_request(client)  # warm-up: channel, TLS handshake, key cache
            while time.monotonic() < stop_at:
                with lock:
                    if len(latencies) >= max_requests:
                        return
                started = time.perf_counter()
                done = make_request(client)
                elapsed = time.perf_counter() - started
                with lock:
                    latencies.append(elapsed)
                    items += done

    began = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.monotonic() - began

    ordered = sorted(latencies)

    def percentile(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000

    return Result(
        scenario=name,
        batch=batch,
        concurrency=concurrency,
        requests=len(ordered),
        items_per_second=round(items / wall, 1),
        p50_ms=round(statistics.median(ordered) * 1000, 2),
        p95_ms=round(percentile(0.95), 2),
        p99_ms=round(percentile(0.99), 2),
    )


def scenarios(
    paths: StatePaths, batch: int
) -> list[tuple[str, str, Callable[[TokenvaultClient], int]]]:
    def tokenize(
        template: str, values: Callable[[], list[str]]
    ) -> Callable[[TokenvaultClient], int]:
        def request(client: TokenvaultClient) -> int:
            outcomes = client.tokenize([TokenizeItem(template, v) for v in values()])
            return sum(1 for o in outcomes if o.ok)

        return request

    def detokenize(template: str, tokens: list[str]) -> Callable[[TokenvaultClient], int]:
        def request(client: TokenvaultClient) -> int:
            outcomes = client.detokenize(
                [DetokenizeItem(template, t) for t in tokens], reveal=Reveal.FULL
            )
            return sum(1 for o in outcomes if o.ok)

        return request

    with client_for(paths, "gateway") as gateway:
        vaulted_tokens = [
            o.token or ""
            for o in gateway.tokenize([TokenizeItem("pan", random_pan()) for _ in range(batch)])
        ]
        fpe_tokens = [
            o.token or ""
            for o in gateway.tokenize([TokenizeItem("pan_fpe", random_pan()) for _ in range(batch)])
        ]

    return [
        (
            "tokenize pan_fpe (FF1)",
            "gateway",
            tokenize("pan_fpe", lambda: [random_pan() for _ in range(batch)]),
        ),
        (
            "tokenize iban (FF1)",
            "gateway",
            tokenize("iban", lambda: [IBANS[i % 3] for i in range(batch)]),
        ),
        (
            "tokenize pan (vaulted, new values)",
            "gateway",
            tokenize("pan", lambda: [random_pan() for _ in range(batch)]),
        ),
        ("detokenize pan_fpe (FF1)", "backoffice", detokenize("pan_fpe", fpe_tokens)),
        ("detokenize pan (vaulted)", "backoffice", detokenize("pan", vaulted_tokens)),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state", type=Path, help="state folder of a running `tokenvault dev`")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each run")
    parser.add_argument("--max-requests", type=int, default=100_000, help="cap per run")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 100])
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    options = parser.parse_args()

    results: list[Result] = []
    with dev_server(options.state) as paths:
        for batch in options.batch:
            for name, caller, request in scenarios(paths, batch):
                for concurrency in options.concurrency:
                    result = run_scenario(
                        name,
                        request,
                        paths,
                        caller,
                        batch=batch,
                        concurrency=concurrency,
                        seconds=options.seconds,
                        max_requests=options.max_requests,
                    )
                    results.append(result)
                    print(json.dumps(asdict(result)), file=sys.stderr, flush=True)

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print("| scenario | batch | concurrency | requests | items/s | p50 ms | p95 ms | p99 ms |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r.scenario} | {r.batch} | {r.concurrency} | {r.requests} | {r.items_per_second} "
            f"| {r.p50_ms} | {r.p95_ms} | {r.p99_ms} |"
        )
    if options.json:
        options.json.write_text(json.dumps([asdict(r) for r in results], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
