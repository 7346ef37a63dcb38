"""Connection options and call-error messages shared by the commands that call a server.

The options select the server and the mutual-TLS material: explicit flags (--target, --ca,
--cert, --key, --server-name) or the state folder that `tokenvault dev` creates (--state, --as).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import grpc
from tokenvault_client import TlsConfig, TokenvaultClientError

from vault.devstate import DEMO_CALLERS, STATE_DIR_ENV, StatePaths, default_state_dir

DEFAULT_TIMEOUT_SECONDS = 10.0


class CommandError(Exception):
    """Usage, input or connection problem that the command prints before exiting with 2."""


def add_connection_arguments(
    parser: argparse.ArgumentParser, *, default_caller: str, timeout_flag: str = "--timeout"
) -> None:
    """Add the connection options to ``parser``, with the request deadline stored as ``timeout``.

    ``timeout_flag`` renames the deadline option for commands that use --timeout for a longer
    wait of their own.
    """
    group = parser.add_argument_group(
        "connection",
        "Settings not given as flags are read from the state folder that `tokenvault dev` "
        "creates: endpoint, ca.pem and clients/CALLER.pem with clients/CALLER-key.pem.",
    )
    group.add_argument("--target", metavar="HOST:PORT", help="server address")
    group.add_argument("--ca", metavar="FILE", help="PEM file of the CA that signed the server")
    group.add_argument("--cert", metavar="FILE", help="PEM client certificate (needs --key)")
    group.add_argument("--key", metavar="FILE", help="PEM private key of --cert")
    group.add_argument(
        "--server-name",
        metavar="NAME",
        help="host name to verify in the server certificate instead of the one in the target",
    )
    group.add_argument(
        "--state",
        metavar="DIR",
        type=Path,
        help=f"dev state folder (default: ${STATE_DIR_ENV} or .tokenvault)",
    )
    group.add_argument(
        "--as",
        dest="caller",
        default=default_caller,
        metavar="CALLER",
        help="demo caller whose certificate is taken from the state folder "
        f"({', '.join(DEMO_CALLERS)}; default: %(default)s)",
    )
    group.add_argument(
        timeout_flag,
        dest="timeout",
        type=positive_float,
        default=DEFAULT_TIMEOUT_SECONDS,
        metavar="SECONDS",
        help="deadline of each request (default: %(default)s)",
    )


def positive_int(text: str) -> int:
    """Parse an argparse value that must be an integer of at least 1."""
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer: {text!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def positive_float(text: str) -> float:
    """Parse an argparse value that must be a finite number of seconds above 0."""
    try:
        number = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number: {text!r}") from None
    if not 0 < number < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return number


# Call errors


def describe_call_error(error: TokenvaultClientError, target: str) -> str:
    """Return the stderr message for a failed call, with a hint for the usual causes."""
    if error.code == grpc.StatusCode.UNAVAILABLE:
        return (
            f"{error}. Check that the server at {target} is running (`tokenvault dev` starts "
            "one) and that --ca names the CA that signed its certificate"
        )
    if error.code == grpc.StatusCode.UNAUTHENTICATED:
        return f"{error}. The server did not accept the client certificate; check --cert/--as"
    if error.code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"{error}. Raise --timeout or lower --batch-size"
    if error.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        retry_after = getattr(error, "retry_after", None)
        hint = f"; the server asks to retry after {retry_after:g} s" if retry_after else ""
        return f"{error}{hint}"
    return str(error)


# Connection


def resolve_connection(args: argparse.Namespace) -> tuple[str, TlsConfig]:
    """Return the target and TLS settings from the flags, filling gaps from the state folder.

    Explicit flags win. A setting taken from the state folder whose file is missing raises
    CommandError naming the file and suggesting `tokenvault dev`.
    """
    if (args.cert is None) != (args.key is None):
        raise CommandError("--cert and --key must be given together")
    caller = args.caller
    if not caller or Path(caller).name != caller or caller in (".", ".."):
        raise CommandError(f"invalid --as {caller!r}: expected a caller name such as gateway")
    state = StatePaths(args.state if args.state is not None else default_state_dir())

    if args.target:
        target = args.target
    else:
        endpoint = _read_state_file(state, state.endpoint, "dev server address", "--target")
        target = endpoint.decode("utf-8", errors="replace").strip()
        if not target:
            raise CommandError(
                f"{state.endpoint} is empty: restart `tokenvault dev` or pass --target HOST:PORT"
            )

    ca_cert = (
        _read_flag_file(args.ca, "--ca")
        if args.ca
        else _read_state_file(state, state.ca_cert, "CA certificate", "--ca")
    )
    if args.cert:
        client_cert = _read_flag_file(args.cert, "--cert")
        client_key = _read_flag_file(args.key, "--key")
    else:
        alternative = "--as CALLER, or --cert and --key"
        description = f"certificate of caller {caller}"
        client_cert = _read_state_file(state, state.client_cert(caller), description, alternative)
        description = f"private key of caller {caller}"
        client_key = _read_state_file(state, state.client_key(caller), description, alternative)

    return target, TlsConfig(ca_cert, client_cert, client_key, server_name=args.server_name)


def _read_flag_file(path: str, flag: str) -> bytes:
    try:
        content = Path(path).read_bytes()
    except FileNotFoundError:
        raise CommandError(f"{flag}: file not found: {path}") from None
    except OSError as error:
        raise CommandError(f"{flag}: cannot read {path}: {error.strerror}") from None
    if not content:
        raise CommandError(f"{flag}: file is empty: {path}")
    return content


def _read_state_file(state: StatePaths, path: Path, description: str, alternative: str) -> bytes:
    try:
        content = path.read_bytes()
    except FileNotFoundError:
        raise CommandError(
            f"missing file {path} ({description}). Run `tokenvault dev` to create the state folder "
            f"{state.root} and start a server, point --state or ${STATE_DIR_ENV} at an "
            f"existing one, or pass {alternative}"
        ) from None
    except OSError as error:
        raise CommandError(f"cannot read {path} ({description}): {error.strerror}") from None
    if not content:
        raise CommandError(f"file is empty: {path} ({description}). Rerun `tokenvault dev`")
    return content
