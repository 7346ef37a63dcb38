"""`tokenvault serve --config FILE`: production mode."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from pathlib import Path

from vault.server import RunningServer, start_server
from vault.settings import load_settings

logger = logging.getLogger(__name__)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run the service from a configuration file (production mode)",
        description="Serve the Tokenization API over mutual TLS with the settings in FILE.",
    )
    parser.add_argument(
        "--config",
        type=Path,
        required=True,
        metavar="FILE",
        help="TOML settings file (see vault/settings.py for every key)",
    )
    parser.set_defaults(func=run)


def run(options: argparse.Namespace) -> int:
    settings = load_settings(options.config)
    asyncio.run(serve_until_signalled(lambda: start_server(settings)))
    return 0


async def serve_until_signalled(start) -> RunningServer:  # type: ignore[no-untyped-def]
    """Start a server and run it until SIGINT or SIGTERM, then stop it gracefully."""
    running: RunningServer = await start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await running.stop()
    return running
