"""Isolated SoftHSM2 environments for tests and development set-ups.

SoftHSM2 is a software implementation of a PKCS#11 token. ``SoftHsm.create`` writes a
``softhsm2.conf`` that keeps the tokens in a folder of its own, points ``SOFTHSM2_CONF`` at it
and initialises tokens with ``softhsm2-util``, so tests never touch the system token store in
``/var/lib/softhsm``.

One environment per process: SoftHSM2 2.6 reads ``SOFTHSM2_CONF`` and scans its token folder
only in ``C_Initialize``. python-pkcs11's ``pkcs11.lib()`` calls ``C_Initialize`` once when it
first loads the module and keeps the module initialised for the life of the process. A second
environment created later, or a token initialised after that first load, is therefore
invisible to the process until ``C_Finalize``, which also closes every open session. Create the
environment before anything loads the module, and in tests create one per test session.
``SoftHsm.create`` raises SoftHsmError when it is called a second time in one process.

This is not a secure token: keys are files under the given folder, protected only by the PIN.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_MODULE_PATHS = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
)
DEFAULT_TOKEN_LABEL = "tokenvault"  # noqa: S105 - a token label, not a PIN
CONFIG_ENV = "SOFTHSM2_CONF"

# CK_TOKEN_INFO stores the label in 32 bytes, padded with spaces.
MAX_TOKEN_LABEL_BYTES = 32
_INIT_TIMEOUT_SECONDS = 60
_INSTALL_HINT = "install the Debian package softhsm2 (apt-get install softhsm2)"

_create_lock = threading.Lock()
_created_config: Path | None = None


class SoftHsmError(RuntimeError):
    """SoftHSM2 is not installed, or setting up an environment failed."""


def find_softhsm_module(candidates: Iterable[str] = DEFAULT_MODULE_PATHS) -> str:
    """Return the first of ``candidates`` that is a file: the SoftHSM2 PKCS#11 module.

    Raises SoftHsmError, naming the paths searched and the package to install, if none exists.
    """
    searched = list(candidates)
    for path in searched:
        if os.path.isfile(path):
            return path
    raise SoftHsmError(
        f"the SoftHSM2 PKCS#11 module libsofthsm2.so was not found in {', '.join(searched)}; "
        f"{_INSTALL_HINT}"
    )


def find_softhsm_util() -> str:
    """Return the path of ``softhsm2-util``, or raise SoftHsmError naming the package."""
    path = shutil.which("softhsm2-util")
    if path is None:
        raise SoftHsmError(f"softhsm2-util was not found on PATH; {_INSTALL_HINT}")
    return path


@dataclass(frozen=True)
class SoftHsmToken:
    """An initialised token: its label and the PINs that ``SoftHsm.create`` chose."""

    label: str
    pin: str = field(repr=False)
    so_pin: str = field(repr=False)


@dataclass(frozen=True)
class SoftHsm:
    """A SoftHSM2 environment in ``folder`` and the tokens initialised in it.

    ``module_path``, ``token_label`` and ``pin`` are the settings that a PKCS#11 client needs
    for the first token.
    """

    folder: Path
    config_path: Path
    module_path: str
    tokens: tuple[SoftHsmToken, ...]

    @classmethod
    def create(
        cls,
        folder: Path | str,
        token_labels: Sequence[str] = (DEFAULT_TOKEN_LABEL,),
        *,
        module_path: str | None = None,
    ) -> SoftHsm:
        """Write the configuration, set ``SOFTHSM2_CONF`` and initialise one token per label.

        Each token gets a random user PIN and SO PIN. ``folder`` is created if needed, and its
        ``tokens`` subfolder must be empty. ``module_path`` defaults to
        ``find_softhsm_module()``. Raises SoftHsmError if SoftHSM2 is missing, if an
        environment was already created in this process or if ``softhsm2-util`` fails.
        """
        global _created_config
        folder = Path(folder).resolve()
        labels = list(token_labels)
        _check_token_labels(labels)
        util = find_softhsm_util()
        module = module_path if module_path is not None else find_softhsm_module()
        if not os.path.isfile(module):
            raise SoftHsmError(f"the PKCS#11 module {module} does not exist; {_INSTALL_HINT}")

        with _create_lock:
            if _created_config is not None:
                raise SoftHsmError(
                    f"a SoftHSM2 environment ({_created_config}) was already created in this "
                    "process, and SoftHSM2 reads its configuration only once per process; "
                    "create one environment per process (in tests, one per test session)"
                )
            config_path = _write_config(folder)
            os.environ[CONFIG_ENV] = str(config_path)
            _created_config = config_path

        try:
            tokens = tuple(_init_token(util, config_path, label) for label in labels)
        except BaseException:
            # Allow a retry, for example in a new folder, after softhsm2-util failed.
            with _create_lock:
                _created_config = None
            raise
        return cls(folder=folder, config_path=config_path, module_path=module, tokens=tokens)

    @property
    def token_label(self) -> str:
        """Label of the first token."""
        return self.tokens[0].label

    @property
    def pin(self) -> str:
        """User PIN of the first token."""
        return self.tokens[0].pin

    def token(self, label: str) -> SoftHsmToken:
        """Return the token with ``label``. Raises KeyError if this environment has none."""
        for token in self.tokens:
            if token.label == label:
                return token
        raise KeyError(label)


def _check_token_labels(labels: list[str]) -> None:
    if not labels:
        raise ValueError("token_labels is empty; give at least one token label")
    if len(set(labels)) != len(labels):
        raise ValueError(f"token_labels {labels} contains duplicates; labels must be unique")
    for label in labels:
        size = len(label.encode("utf-8"))
        if not label or size > MAX_TOKEN_LABEL_BYTES or label != label.strip():
            raise ValueError(
                f"token label {label!r} is invalid: it must be 1 to {MAX_TOKEN_LABEL_BYTES} "
                "bytes of UTF-8 without leading or trailing spaces"
            )


def _write_config(folder: Path) -> Path:
    # The configuration format is one "key = value" per line, so a newline would break it.
    if "\n" in str(folder) or "\r" in str(folder):
        raise SoftHsmError(
            f"folder {str(folder)!r} contains a line break, which softhsm2.conf cannot store; "
            "choose another folder"
        )
    token_dir = folder / "tokens"
    token_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if any(token_dir.iterdir()):
        raise SoftHsmError(
            f"token folder {token_dir} is not empty; create the environment in an empty folder"
        )

    config_path = folder / "softhsm2.conf"
    config_path.write_text(
        "# Written by keys.softhsm for an isolated test or development token store.\n"
        f"directories.tokendir = {token_dir}\n"
        "objectstore.backend = file\n"
        "log.level = ERROR\n"
        "slots.removable = false\n",
        encoding="utf-8",
    )
    config_path.chmod(0o600)
    return config_path


def _init_token(util: str, config_path: Path, label: str) -> SoftHsmToken:
    pin = secrets.token_hex(8)
    so_pin = secrets.token_hex(8)
    # NOTE: softhsm2-util takes the PINs as arguments, so other local users can read them in
    # the process list while it runs. That is acceptable for throw-away test tokens only.
    command = [
        util,
        "--init-token",
        "--free",
        "--label",
        label,
        "--so-pin",
        so_pin,
        "--pin",
        pin,
    ]
    try:
        result = subprocess.run(  # noqa: S603 - fixed arguments, no shell
            command,
            env={**os.environ, CONFIG_ENV: str(config_path)},
            capture_output=True,
            text=True,
            timeout=_INIT_TIMEOUT_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise SoftHsmError(
            f"softhsm2-util did not initialise token {label} within {_INIT_TIMEOUT_SECONDS} s"
        ) from None
    if result.returncode != 0:
        # The message leaves out the command line because it contains the PINs.
        output = (result.stderr or result.stdout).strip()
        raise SoftHsmError(
            f"softhsm2-util failed to initialise token {label} (exit status "
            f"{result.returncode}): {output}"
        )
    return SoftHsmToken(label=label, pin=pin, so_pin=so_pin)
