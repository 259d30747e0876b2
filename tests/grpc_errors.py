"""Reading the spec's error off a failed gRPC call, for the unit and end-to-end gRPC tests."""

from __future__ import annotations

import grpc
from grpc_status import rpc_status

from modelmora.v1 import common_pb2


def spec_error(exc: grpc.RpcError) -> common_pb2.Error | None:
    """The ``modelmora.v1.Error`` in the call's ``google.rpc.Status`` details; None when the call
    has none (a deadline the client enforced itself)."""
    status = rpc_status.from_call(exc)
    if status is None:
        return None
    error = common_pb2.Error()
    assert status.details[0].Unpack(error), status.details
    return error
