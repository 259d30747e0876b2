"""Model lifecycle end to end: a user's ONNX model uploaded to the catalog is loaded on the
workers by a ``load`` model command (broadcast over Kafka), reported in the residency table,
served by /infer, protected from deletion while loaded, and unloaded again; on the real
broker, Cassandra and S3 with the API, the processors and the three priority workers."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest

from core.serving.builtin_specs import MINILM_ID
from tests.e2e.conftest import RunningSystem
from tests.e2e.serving import ENCODED_MINILM, HTTP_TIMEOUT
from tests.onnx_models import expected, linear_onnx

pytestmark = pytest.mark.e2e

def until(call: Callable[[], httpx.Response], done: Callable[[httpx.Response], bool],
          timeout_s: float) -> httpx.Response:
    """Repeat ``call`` until ``done`` (e.g. a 503 while the workers are still joining)."""
    deadline = time.monotonic() + timeout_s
    while True:
        response = call()
        if done(response) or time.monotonic() > deadline:
            return response
        time.sleep(0.5)


def resident(system: RunningSystem, model_id: str) -> list[dict[str, Any]]:
    body = httpx.get(f"{system.base_url}/health/models", timeout=30).json()
    assert body["healthy_count"] + body["unhealthy_count"] == len(body["models"])
    return [m for m in body["models"] if m["model_id"] == model_id]


def test_uploaded_onnx_model_load_infer_delete_conflict_unload(system: RunningSystem,
                                                                caller: dict[str, str]) -> None:
    base, admin = system.base_url, {"Authorization": f"Bearer {system.admin_key}"}
    with httpx.Client(base_url=base, headers=admin, timeout=HTTP_TIMEOUT) as http:
        model_id = http.post("/api/v1/models", json={"description": "e2e linear"}).json()["id"]
        uploaded = http.post(f"/api/v1/models/{model_id}/versions/upload",
                             files={"file": ("linear.onnx", linear_onnx())}, data={"format": "onnx"})
        assert uploaded.status_code == 201, uploaded.text

        started = time.perf_counter()
        loaded = until(lambda: http.post(f"/api/v1/models/{model_id}/load"), lambda r: r.status_code != 503, 120)
        load_s = time.perf_counter() - started
        assert loaded.status_code == 200, loaded.text
        status = loaded.json()
        assert status["model_id"] == model_id and status["state"] == "loaded" and status["device"] == "cpu"
        assert status["health_status"]["healthy"] is True and status["memory_usage_mb"] > 0
        print(f"\nload of an uploaded ONNX model answered in {load_s:.2f}s (workers: {status['workers']})")

        # Served by /infer with the generic tensor contract, numbers as numpy computes them.
        rows = [[1.0, 2.0, 3.0], [-1.0, 0.0, 0.5]]
        inferred = httpx.post(f"{base}/api/v1/infer/{model_id}", headers=caller, timeout=HTTP_TIMEOUT,
                              json={"input_data": {"inputs": rows}, "priority": "high"})
        assert inferred.status_code == 200, inferred.text
        np.testing.assert_allclose(inferred.json()["output_data"]["outputs"], expected(rows), rtol=1e-5)
        bad = httpx.post(f"{base}/api/v1/infer/{model_id}", headers=caller, timeout=HTTP_TIMEOUT,
                         json={"input_data": {"text": "no inputs"}, "priority": "high"})
        assert bad.status_code == 400 and bad.json()["error_code"] == "INVALID_INPUT"

        # Every priority's worker applied the broadcast command and reports the model.
        def all_report() -> bool:
            return len({m["worker"] for m in resident(system, model_id) if m["state"] == "loaded"}) == 3

        deadline = time.monotonic() + 60
        while not all_report() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert all_report(), resident(system, model_id)
        assert {m["worker"].split("-")[2] for m in resident(system, model_id)} == {"high", "medium", "low"}
        status_body = http.get("/api/v1/status").json()
        assert model_id in {m["model_id"] for m in status_body["loaded_models"]}
        assert set(status_body["queue_depth"]) == {"high_priority", "medium_priority", "low_priority"}
        assert "total_devices" in status_body  # the fleet fields stay

        conflict = http.delete(f"/api/v1/models/{model_id}")
        assert conflict.status_code == 409 and conflict.json()["error_code"] == "MODEL_LOADED"
        assert len(conflict.json()["details"]["loaded_on"]) == 3

        unloaded = http.post(f"/api/v1/models/{model_id}/unload")
        assert unloaded.status_code == 200, unloaded.text
        assert unloaded.json()["state"] == "unloaded" and len(unloaded.json()["workers"]) == 3
        assert resident(system, model_id) == []
        again = http.post(f"/api/v1/models/{model_id}/unload")
        assert again.status_code == 404 and again.json()["error_code"] == "MODEL_NOT_LOADED"
        assert http.delete(f"/api/v1/models/{model_id}").status_code == 204

        missing = http.post("/api/v1/models/org/no-such-model/load")
        assert missing.status_code == 404 and missing.json()["error_code"] == "MODEL_NOT_FOUND"


def test_builtin_model_ids_with_a_slash_load_and_unload_encoded_or_not(system: RunningSystem) -> None:
    admin = {"Authorization": f"Bearer {system.admin_key}"}
    with httpx.Client(base_url=system.base_url, headers=admin, timeout=HTTP_TIMEOUT) as http:
        loaded = until(lambda: http.post(f"/api/v1/models/{ENCODED_MINILM}/load"),
                       lambda r: r.status_code != 503, 120)
        assert loaded.status_code == 200, loaded.text
        assert loaded.json()["model_id"] == MINILM_ID and loaded.json()["state"] == "loaded"
        assert any(m["state"] == "loaded" for m in resident(system, MINILM_ID))
        unloaded = http.post(f"/api/v1/models/{MINILM_ID}/unload")
        assert unloaded.status_code == 200, unloaded.text
        assert resident(system, MINILM_ID) == []
