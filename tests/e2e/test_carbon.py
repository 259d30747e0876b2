"""Carbon accounting end to end: a generation through REST -> Kafka -> inference worker carries the
measured carbon_emissions_g of its batch, and the worker's record reaches Cassandra, where
``/api/v1/carbon/summary`` and ``/api/v1/carbon/models/{id}`` find non-zero energy and emissions."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from core.serving.builtin_specs import TRANSLATE_EN_PT_ID
from tests.e2e.conftest import RunningSystem
from tests.e2e.serving import HTTP_TIMEOUT

pytestmark = pytest.mark.e2e

ENCODED = TRANSLATE_EN_PT_ID.replace("/", "%2F")


def _until(fetch: Any, done: Any, timeout_s: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = fetch()
        if done(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.5)


def test_generation_carries_measured_emissions_and_the_summary_counts_them(system: RunningSystem) -> None:
    admin = {"Authorization": f"Bearer {system.admin_key}"}
    before = httpx.get(f"{system.base_url}/api/v1/carbon/models/{ENCODED}", headers=admin, timeout=30)
    assert before.status_code == 200, before.text
    requests_before = before.json()["inference_requests"]

    generated = httpx.post(f"{system.base_url}/api/v1/infer/{ENCODED}", headers=admin, timeout=HTTP_TIMEOUT,
                           json={"input_data": {"prompt": "The children were playing in the garden."},
                                 "priority": "medium"})
    assert generated.status_code == 200, generated.text
    body = generated.json()
    assert body["output_data"]["generated_text"]
    assert body["output_data"]["carbon_emissions_g"] > 0
    assert body["metadata"]["energy_kwh"] > 0
    assert body["metadata"]["carbon_emissions_g"] == body["output_data"]["carbon_emissions_g"]

    chat = httpx.post(f"{system.base_url}/api/v1/infer/{ENCODED}", headers=admin, timeout=HTTP_TIMEOUT,
                      json={"input_data": {"messages": [{"role": "user", "content": "Good morning!"}]},
                            "priority": "medium"})
    assert chat.status_code == 200, chat.text
    assert chat.json()["output_data"]["carbon_emissions_g"] > 0

    # the worker writes its records in the background (TRIBUTARY_CARBON_FLUSH_INTERVAL_S)
    model = _until(lambda: httpx.get(f"{system.base_url}/api/v1/carbon/models/{ENCODED}", headers=admin,
                                     timeout=30).json(),
                   lambda m: m["inference_requests"] >= requests_before + 2)
    assert model["inference_requests"] >= requests_before + 2 and model["inference_kg"] > 0

    summary = httpx.get(f"{system.base_url}/api/v1/carbon/summary", headers=admin, timeout=30)
    assert summary.status_code == 200, summary.text
    totals = summary.json()
    assert totals["total_energy_kwh"] > 0 and totals["inference_emissions_kg"] > 0
    assert totals["num_inference_requests"] >= 2
    [entry] = [m for m in totals["by_model"] if m["model_id"] == TRANSLATE_EN_PT_ID]
    assert entry["emissions_kg"] > 0 and 0 < entry["percentage"] <= 100


def test_devices_may_not_read_carbon_figures(system: RunningSystem, caller: dict[str, str]) -> None:
    response = httpx.get(f"{system.base_url}/api/v1/carbon/summary", headers=caller, timeout=30)
    assert response.status_code == 403, response.text
