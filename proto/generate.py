"""Generate the Python gRPC bindings for proto/ into clients/python/tokenvault/.

Usage:
    python proto/generate.py          # rewrite the generated files
    python proto/generate.py --check  # exit 1 if the committed files differ from proto/

The generated package is named after the proto package (tokenvault.v1), so the imports that
protoc writes resolve without rewriting. Both the service and the client library import it.
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
OUTPUT_DIR = ROOT / "clients" / "python"
PACKAGE_DIR = Path("tokenvault") / "v1"


def _include_dirs() -> list[str]:
    import google.rpc  # googleapis-common-protos ships status.proto beside its module
    import grpc_tools

    googleapis_root = Path(google.rpc.__path__[0]).parent.parent
    well_known_root = Path(grpc_tools.__file__).parent / "_proto"
    return [str(PROTO_DIR), str(googleapis_root), str(well_known_root)]


def generate(output_dir: Path) -> None:
    """Run protoc for every .proto file under proto/tokenvault/v1 into output_dir."""
    from grpc_tools import protoc

    sources = sorted(
        str(p.relative_to(PROTO_DIR)) for p in (PROTO_DIR / PACKAGE_DIR).glob("*.proto")
    )
    args = ["grpc_tools.protoc"]
    args += [f"-I{d}" for d in _include_dirs()]
    args += [
        f"--python_out={output_dir}",
        f"--pyi_out={output_dir}",
        f"--grpc_python_out={output_dir}",
        *sources,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed; see the messages above")

    for package in (output_dir / "tokenvault", output_dir / PACKAGE_DIR):
        init = package / "__init__.py"
        if not init.exists():
            init.write_text('"""Generated from proto/ by proto/generate.py; do not edit."""\n')


def stale_files() -> list[str]:
    """Return the generated files that differ from a fresh run of protoc."""
    with tempfile.TemporaryDirectory() as scratch:
        fresh_root = Path(scratch)
        generate(fresh_root)
        fresh_dir = fresh_root / PACKAGE_DIR
        committed_dir = OUTPUT_DIR / PACKAGE_DIR
        names = {p.name for p in fresh_dir.iterdir() if p.is_file()}
        names |= {p.name for p in committed_dir.glob("*_pb2*")} if committed_dir.exists() else set()
        stale = []
        for name in sorted(names):
            fresh, committed = fresh_dir / name, committed_dir / name
            if not committed.exists() or not fresh.exists():
                stale.append(name)
            elif not filecmp.cmp(fresh, committed, shallow=False):
                stale.append(name)
        return stale


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale generated files")
    options = parser.parse_args()

    if options.check:
        stale = stale_files()
        if stale:
            print("generated code is out of date with proto/: " + ", ".join(stale), file=sys.stderr)
            print("run: python proto/generate.py", file=sys.stderr)
            return 1
        return 0

    generate(OUTPUT_DIR)
    return 0


if __name__ == "__main__":
    sys.exit(main())
