"""Seed 002: signature (401), decryption (400), privacy rules (403), threshold-triggered retraining."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from api.context import AppContext
from core.api_keys import new_api_key
from core.fleet.learning_graphs import encrypt_graph, privacy_violations
from core.fleet.memory_store import InMemoryFleetStore
from core.fleet.models import CatalogModel, ModelUpdate, Round, RoundStatus
from settings import Settings
from tests.memory_app import app_client, memory_context
from tests.recording_sink import RecordingSink

pytestmark = pytest.mark.unit
HMAC_KEY = b"graph-signing-key"
AES_KEY = os.urandom(32)
GOOD = {"emotions": {"joy": "high", "anger": 0.25}, "intents": ["time_query"],
        "privacy": {"noise": {"mechanism": "laplace", "epsilon": 1.0}}}


@pytest.fixture
def ctx() -> AppContext:
    settings = Settings(admin_api_key=SecretStr(new_api_key()), learning_graph_threshold=3,
                        learning_graph_hmac_key=SecretStr(HMAC_KEY.decode()),
                        learning_graph_aes_key=SecretStr(AES_KEY.hex()))
    return memory_context(settings)


@pytest.fixture
def client(ctx: AppContext) -> Iterator[tuple[TestClient, dict[str, str]]]:
    with app_client(ctx) as api:
        key = api.post("/api/v1/devices/register", json={"device_id": "pcpos-1"}).json()["api_key"]
        yield api, {"Authorization": f"Bearer {key}"}


def body(graph: dict[str, Any], *, signature: str | None = None, data: str | None = None) -> dict[str, Any]:
    encrypted, sig = encrypt_graph(graph, AES_KEY, HMAC_KEY)
    return {"deviceIdHash": "ab" * 16, "appVersion": "1.4.0", "modelVersion": "granite-3b-v1",
            "encryptedData": data or encrypted, "signature": signature or sig,
            "timestamp": datetime.now(UTC).isoformat()}


def test_accepted_graphs_trigger_retraining_at_the_threshold(client: tuple[TestClient, dict[str, str]],
                                                              ctx: AppContext) -> None:
    api, auth = client
    for _ in range(3):
        response = api.post("/api/v1/learning-graphs/submit", json=body(GOOD), headers=auth)
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "accepted"
    assert "retraining requested with 3 graphs" in response.json()["message"]
    events = ctx.events
    assert isinstance(events, RecordingSink)
    submitted = events.of_type("learning_graph_submitted")
    assert [e["retraining_requested"] for e in submitted] == [False, False, True]
    assert [e["event_type"] for e in events.of_type("fleet_event")].count("retraining_requested") == 1


def test_bad_signature_is_401(client: tuple[TestClient, dict[str, str]]) -> None:
    api, auth = client
    response = api.post("/api/v1/learning-graphs/submit", json=body(GOOD, signature="0" * 64), headers=auth)
    assert response.status_code == 401 and response.json()["error_code"] == "INVALID_SIGNATURE"


@pytest.mark.parametrize(("overrides", "status", "code"), [
    # non-ASCII: hmac.compare_digest raised TypeError, a 500 (found by tests/e2e/test_api_fuzz.py, issue 7)
    ({"signature": "\u00ea}GSK|\u00f18\u00eaO\u00d2iWR\u00af\u00ca"}, 401, "INVALID_SIGNATURE"),
    ({"encryptedData": "\u00e8y\u00acz8\u00d1x\u00d5\u00e1\u00c5\u00a9\u0095a\u00b2" * 2}, 401, "INVALID_SIGNATURE"),
    # unpaired surrogates never reach the service
    ({"signature": "d\ud800" + "0" * 30}, 400, "VALIDATION_ERROR"),
])
def test_undecodable_signatures_are_refused_not_500(client: tuple[TestClient, dict[str, str]],
                                                    overrides: dict[str, str], status: int, code: str) -> None:
    api, auth = client
    payload = {**body(GOOD), **overrides}
    response = api.post("/api/v1/learning-graphs/submit", content=json.dumps(payload),
                        headers={**auth, "content-type": "application/json"})
    assert response.status_code == status and response.json()["error_code"] == code, response.text


def test_undecryptable_data_is_400(client: tuple[TestClient, dict[str, str]]) -> None:
    import hashlib
    import hmac

    api, auth = client
    garbage = "Z2FyYmFnZSBnYXJiYWdlIGdhcmJhZ2U="
    sig = hmac.new(HMAC_KEY, garbage.encode(), hashlib.sha256).hexdigest()
    response = api.post("/api/v1/learning-graphs/submit", json=body(GOOD, signature=sig, data=garbage), headers=auth)
    assert response.status_code == 400 and response.json()["error_code"] == "DECRYPTION_FAILED"


@pytest.mark.parametrize(("graph", "rule"), [
    (GOOD | {"transcript": "what time is it"}, "raw_text"),
    (GOOD | {"notes": "x" * 65}, "raw_text"),
    (GOOD | {"emotions": {"joy": 0.73}}, "not_bucketed"),
    ({"emotions": {"joy": "high"}}, "missing_noise"),
    (GOOD | {"privacy": {"noise": {"mechanism": "laplace", "epsilon": 0}}}, "missing_noise"),
])
def test_privacy_violations_are_403(client: tuple[TestClient, dict[str, str]], graph: dict[str, Any],
                                    rule: str) -> None:
    api, auth = client
    response = api.post("/api/v1/learning-graphs/submit", json=body(graph), headers=auth)
    assert response.status_code == 403, response.text
    assert response.json()["error_code"] == "PRIVACY_VIOLATION"
    assert any(v.startswith(rule) for v in response.json()["details"]["violations"])
    assert privacy_violations(GOOD) == []


def test_submission_needs_a_key(client: tuple[TestClient, dict[str, str]]) -> None:
    api, _ = client
    assert api.post("/api/v1/learning-graphs/submit", json=body(GOOD)).status_code == 401


def test_latest_model_reports_the_newest_aggregate(client: tuple[TestClient, dict[str, str]],
                                                   ctx: AppContext) -> None:
    api, auth = client
    assert api.get("/api/v1/models/latest", headers=auth).status_code == 404
    admin = {"Authorization": f"Bearer {ctx.settings.admin_api_key.get_secret_value()}"}
    model = api.post("/api/v1/models", json={"framework": "pytorch", "is_baseline": True}, headers=admin).json()
    api.post(f"/api/v1/models/{model['id']}/versions/upload", files={"file": ("m.json", b"{}")},
             data={"format": "xgboost"}, headers=admin)
    latest = api.get("/api/v1/models/latest", headers=auth)
    assert latest.status_code == 200, latest.text
    assert latest.json()["version"] == f"{model['id']}/v1"
    assert latest.json()["download_url"].endswith("/versions/1/download")


def test_latest_model_improvements_are_computed_from_the_rounds(client: tuple[TestClient, dict[str, str]],
                                                                ctx: AppContext) -> None:
    """Two rounds' aggregates: the newer one's entry names what its devices' training improved, and
    no delta size is claimed for a download that is the whole model."""
    api, auth = client
    store = ctx.store
    assert isinstance(store, InMemoryFleetStore)
    for number, losses in ((1, [(0.80, 100), (0.60, 300)]), (2, [(0.50, 100), (0.30, 100)])):
        round_ = Round(id=str(uuid.uuid4()), round_number=number, status=RoundStatus.COMPLETED, target_devices=2,
                       min_devices=1, timeout_seconds=60, created_at=datetime(2026, 1, number, tzinfo=UTC))
        store.rounds[round_.id] = round_
        for loss, samples in losses:
            assert store.add_update(ModelUpdate(
                id=str(uuid.uuid4()), round_id=round_.id, device_id=str(uuid.uuid4()), model_path="s3://b/k",
                artifact_key="k", model_size_bytes=1, sha256="x", num_samples=samples,
                created_at=round_.created_at, local_loss=loss))
        at = datetime(2026, 1, number, 1, tzinfo=UTC)
        store.create_model(CatalogModel(id=str(uuid.uuid4()), is_baseline=False, created_at=at, updated_at=at,
                                        round_id=round_.id, latest_version=1, model_path="s3://b/m",
                                        model_size_bytes=2_500_000, description="not an improvement"))
    latest = api.get("/api/v1/models/latest", headers=auth).json()
    # round 1: (0.8*100 + 0.6*300) / 400 = 0.65; round 2: 0.40; accuracy was never reported
    assert latest["improvements"] == ["mean local loss 0.6500 -> 0.4000 (round 1 -> 2)"]
    assert latest["delta_size_mb"] is None and latest["size_mb"] == 2.5
