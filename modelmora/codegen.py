"""Generate ``modelmora.v1``'s Python modules from ``protos/`` with grpcio-tools.

A build-time tool (``make protos`` after changing a ``.proto``): the modules it writes are committed,
so no process generates code when it starts. ``tests/unit/test_generated_code.py`` fails when they
no longer match the protos. It generates into a temporary folder and moves finished files into place
(``os.replace`` is atomic), so nothing ever imports a half-written module.
"""

from __future__ import annotations

import os
import sys
import tempfile
from importlib import resources
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent / "v1"
PROTO_ROOT = Path(__file__).resolve().parents[1] / "protos"
PROTO_DIR = PROTO_ROOT / "modelmora" / "v1"
SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def proto_files() -> list[Path]:
    return sorted(PROTO_DIR.glob("*.proto"))


def generated_files(proto: Path) -> list[Path]:
    return [PACKAGE_DIR / f"{proto.stem}{suffix}" for suffix in SUFFIXES]


def generate() -> list[Path]:
    """Run protoc on every ``.proto``; returns the modules written."""
    from grpc_tools import protoc  # build-time tool: only needed when generating

    protos = proto_files()
    if not protos:
        raise FileNotFoundError(f"no .proto files under {PROTO_DIR}")
    well_known = resources.files("grpc_tools") / "_proto"  # google/protobuf/struct.proto and friends
    with tempfile.TemporaryDirectory(dir=PACKAGE_DIR.parent, prefix=".codegen-") as scratch:
        args = ["grpc_tools.protoc", f"-I{PROTO_ROOT}", f"-I{well_known}", f"--python_out={scratch}",
                f"--pyi_out={scratch}", f"--grpc_python_out={scratch}", *map(str, protos)]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {', '.join(p.name for p in protos)}")
        written = []
        for proto in protos:
            for target in generated_files(proto):
                os.replace(Path(scratch) / "modelmora" / "v1" / target.name, target)
                written.append(target)
    return written


if __name__ == "__main__":
    for path in generate():
        print(path.relative_to(PACKAGE_DIR.parents[1]), file=sys.stderr)
