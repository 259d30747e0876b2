"""The committed ``modelmora.v1`` modules are what ``protos/`` compiles to (seed 001 §3), so no
process needs to generate code, and a ``.proto`` changed without ``make protos`` fails here."""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2
from grpc_tools import protoc

from modelmora.codegen import PROTO_DIR, PROTO_ROOT, generated_files, proto_files

pytestmark = pytest.mark.unit


def compiled_from_protos(tmp_path: Path) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    """Each .proto as protoc parses it today, keyed by its file name (e.g. modelmora/v1/common.proto)."""
    out = tmp_path / "protos.desc"
    well_known = resources.files("grpc_tools") / "_proto"
    args = ["grpc_tools.protoc", f"-I{PROTO_ROOT}", f"-I{well_known}", f"--descriptor_set_out={out}",
            *map(str, proto_files())]
    assert protoc.main(args) == 0
    files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    for file in files.file:
        _drop_json_names(file.message_type)  # protoc fills them in; generated Python code leaves them out
    return {f.name: f for f in files.file}


def _drop_json_names(messages: Iterable[descriptor_pb2.DescriptorProto]) -> None:
    for message in messages:
        for field in message.field:
            field.ClearField("json_name")
        _drop_json_names(message.nested_type)


def test_every_proto_has_its_committed_modules() -> None:
    assert proto_files(), f"no .proto under {PROTO_DIR}"
    missing = [str(path) for proto in proto_files() for path in generated_files(proto) if not path.is_file()]
    assert missing == []


def test_committed_modules_describe_exactly_the_protos(tmp_path: Path) -> None:
    expected = compiled_from_protos(tmp_path)
    for proto in proto_files():
        module = importlib.import_module(f"modelmora.v1.{proto.stem}_pb2")
        committed = descriptor_pb2.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb)
        # Compared as parsed descriptors, not bytes of Python: another grpcio-tools version writes
        # different code for the same protocol, and only the protocol must match.
        assert committed == expected[committed.name], f"{proto.name} changed: run `make protos` and commit"


def test_every_service_has_its_grpc_stub() -> None:
    for proto in proto_files():
        services = importlib.import_module(f"modelmora.v1.{proto.stem}_pb2").DESCRIPTOR.services_by_name
        stubs = importlib.import_module(f"modelmora.v1.{proto.stem}_pb2_grpc")
        for name in services:
            assert hasattr(stubs, f"{name}Stub") and hasattr(stubs, f"{name}Servicer"), name
