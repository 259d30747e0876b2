"""``/api/v1/carbon/*`` on in-memory stores: seed 003 §5 shapes computed from stored records."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from api.context import AppContext
from core.api_keys import new_api_key
from core.carbon import CarbonBreakdown, CarbonMeasurement, CarbonRecord, CarbonTimepoint, SubjectKind
from core.registry import seed_builtins
from core.serving.builtin_specs import TRANSLATE_EN_PT_ID
from schemas.clock import utcnow
from settings import Settings
from tests.memory_app import app_client, memory_context

pytestmark = pytest.mark.unit

ADMIN_KEY = new_api_key()
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
MODEL = TRANSLATE_EN_PT_ID  # a built-in: in the catalog once seeded


@pytest.fixture
def app() -> Iterator[tuple[AppContext, TestClient]]:
    ctx = memory_context(Settings(admin_api_key=SecretStr(ADMIN_KEY)))
    seed_builtins(ctx.store)
    with app_client(ctx) as client:
        yield ctx, client


def _m(kwh: float, seconds: float = 10.0, timeline: tuple[CarbonTimepoint, ...] = ()) -> CarbonMeasurement:
    return CarbonMeasurement(kwh, kwh * 0.4, seconds, 400.0, "Germany (DEU)",
                             CarbonBreakdown(cpu_power_w=4.0, ram_power_w=10.0, cpu_energy_kwh=kwh / 2,
                                             ram_energy_kwh=kwh / 2), timeline)


def test_summary_job_and_model_views_come_from_the_records(app: tuple[AppContext, TestClient]) -> None:
    ctx, client = app
    now = utcnow()
    point = CarbonTimepoint(now - timedelta(minutes=5), 0.0004, 40.0)
    ctx.carbon.record([
        CarbonRecord(SubjectKind.TRAINING_JOB, "job-1", MODEL, now - timedelta(minutes=5), _m(0.001, 36, (point,))),
        CarbonRecord(SubjectKind.INFERENCE_BATCH, "b-1", MODEL, now - timedelta(minutes=1), _m(0.0005), requests=4),
        CarbonRecord(SubjectKind.INFERENCE_BATCH, "b-2", "org/other", now - timedelta(minutes=1), _m(0.0005),
                     requests=1),
        CarbonRecord(SubjectKind.INFERENCE_BATCH, "old", MODEL, now - timedelta(days=40), _m(1.0), requests=9),
    ])
    summary = client.get("/api/v1/carbon/summary", headers=ADMIN)
    assert summary.status_code == 200, summary.text
    body = summary.json()
    assert body["total_energy_kwh"] == pytest.approx(0.002)  # the 40-day-old batch is outside 30 days
    assert body["training_emissions_kg"] == pytest.approx(0.0004)
    assert body["inference_emissions_kg"] == pytest.approx(0.0004)
    assert body["num_training_jobs"] == 1 and body["num_inference_requests"] == 5
    assert set(body["period"]) == {"start", "end"}
    first, second = body["by_model"]
    assert first["model_id"] == MODEL and first["percentage"] == pytest.approx(75.0)
    assert first["model_name"] != "" and second["model_name"] == "org/other"  # unknown to the catalog: its id

    job = client.get("/api/v1/carbon/jobs/job-1", headers=ADMIN).json()
    assert job["job_id"] == "job-1" and job["total_energy_kwh"] == pytest.approx(0.001)
    assert job["duration_seconds"] == 36 and job["carbon_intensity"] == pytest.approx(400.0)
    assert job["location"] == "Germany (DEU)" and job["breakdown"]["cpu_power_w"] == 4.0
    assert [p["power_w"] for p in job["timeline"]] == [40.0]

    model = client.get(f"/api/v1/carbon/models/{MODEL}", headers=ADMIN).json()
    assert model["training_kg"] == pytest.approx(0.0004) and model["training_energy_kwh"] == pytest.approx(0.001)
    assert model["training_duration_hours"] == pytest.approx(0.01)
    assert model["inference_kg"] == pytest.approx(0.0002 + 0.4) and model["inference_requests"] == 13


def test_unknown_job_and_model_are_404_in_the_envelope(app: tuple[AppContext, TestClient]) -> None:
    _, client = app
    job = client.get("/api/v1/carbon/jobs/no-such-job", headers=ADMIN)
    assert job.status_code == 404 and job.json()["error_code"] == "JOB_NOT_FOUND"
    model = client.get("/api/v1/carbon/models/org/nothing-here", headers=ADMIN)
    assert model.status_code == 404 and model.json()["error_code"] == "MODEL_NOT_FOUND"


def test_a_catalog_model_never_measured_has_zero_emissions(app: tuple[AppContext, TestClient]) -> None:
    _, client = app
    body = client.get(f"/api/v1/carbon/models/{MODEL}", headers=ADMIN).json()
    assert body == {"model_id": MODEL, "training_kg": 0.0, "training_duration_hours": 0.0,
                    "training_energy_kwh": 0.0, "inference_kg": 0.0, "inference_requests": 0}


@pytest.mark.parametrize("query", [
    "start=2026-01-02T00:00:00Z&end=2026-01-01T00:00:00Z",   # backwards
    "start=2020-01-01T00:00:00Z&end=2026-01-01T00:00:00Z",   # longer than a year
    "start=yesterday",                                        # not a date
])
def test_bad_periods_are_400_in_the_envelope(app: tuple[AppContext, TestClient], query: str) -> None:
    _, client = app
    response = client.get(f"/api/v1/carbon/summary?{query}", headers=ADMIN)
    assert response.status_code == 400, response.text
    assert response.json()["status_code"] == 400


def test_the_model_entity_carries_its_carbon_emissions(app: tuple[AppContext, TestClient]) -> None:
    ctx, client = app
    ctx.carbon.record([CarbonRecord(SubjectKind.INFERENCE_BATCH, "b-9", MODEL, utcnow(), _m(0.002), requests=3)])
    body = client.get(f"/api/v1/models/{MODEL}", headers=ADMIN).json()
    assert body["carbon_emissions"]["inference_requests"] == 3
    assert body["carbon_emissions"]["inference_kg"] == pytest.approx(0.0008)
    assert body["carbon_emissions"]["training_kg"] == 0.0
