"""Log lines are JSON objects that carry the service, trace_id and correlation_id."""

from __future__ import annotations

import json
import logging

import pytest

from core.logs import JsonFormatter, correlation_id_var, trace_id_var

pytestmark = pytest.mark.unit


def test_json_line_carries_ids() -> None:
    record = logging.LogRecord("tributary.test", logging.WARNING, __file__, 1, "round %s failed", ("r1",), None)
    trace_id_var.set("t" * 32)
    correlation_id_var.set("c-1")
    line = JsonFormatter("round-processor").format(record)
    entry = json.loads(line)
    assert entry["service"] == "round-processor" and entry["level"] == "warning"
    assert entry["message"] == "round r1 failed"
    assert (entry["trace_id"], entry["correlation_id"]) == ("t" * 32, "c-1")
    assert entry["ts"].endswith("Z")
