"""``/api/v1/datasets`` through the real app on in-memory stores: multipart and source_url (file://)
uploads, the 400 with row and column, the 413 size limit, pagination, get, delete and the audit trail."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from api.context import AppContext
from core.api_keys import new_api_key
from settings import Settings
from tests.memory_app import app_client, memory_context
from tests.recording_sink import RecordingSink

pytestmark = pytest.mark.unit

ADMIN_KEY = new_api_key()
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
ROWS = [{"instruction": "Translate", "input": f"sentence {i}", "output": f"frase {i}"} for i in range(4)]
JSONL = b"".join(json.dumps(r).encode() + b"\n" for r in ROWS)
LIMIT = 4096


@pytest.fixture
def app(tmp_path: Path) -> Iterator[tuple[AppContext, TestClient, Path]]:
    settings = Settings(admin_api_key=SecretStr(ADMIN_KEY), rate_limit_per_minute=100_000,
                        dataset_max_bytes=LIMIT, model_source_file_root=str(tmp_path))
    ctx = memory_context(settings)
    with app_client(ctx) as client:
        yield ctx, client, tmp_path


def upload(client: TestClient, data: bytes, filename: str = "qa.jsonl", **fields: str) -> Any:
    return client.post("/api/v1/datasets", headers=ADMIN, files={"file": (filename, data)},
                       data={"name": "qa", **fields})


def test_multipart_upload_is_stored_in_s3_with_schema_and_statistics(
        app: tuple[AppContext, TestClient, Path]) -> None:
    ctx, client, _ = app
    response = upload(client, JSONL, description="four rows")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["format"] == "jsonl" and body["num_samples"] == 4 and body["size_bytes"] == len(JSONL)
    assert body["schema"]["columns"] == ["instruction", "input", "output"]
    assert body["schema"]["sample"] == ROWS[0]
    assert body["statistics"]["total_tokens"] > 0 and body["statistics"]["min_length"] > 0
    key = body["path"].removeprefix(f"s3://{ctx.settings.s3_bucket}/")
    assert ctx.artifacts.get(key) == JSONL
    assert client.get(f"/api/v1/datasets/{body['dataset_id']}", headers=ADMIN).json() == body
    sink = ctx.events
    assert isinstance(sink, RecordingSink)
    assert [a["action"] for a in sink.audits if a["subject"] == f"dataset/{body['dataset_id']}"] == ["dataset.create"]


def test_source_url_upload_reads_through_the_onboarding_fetcher(app: tuple[AppContext, TestClient, Path]) -> None:
    _, client, root = app
    path = root / "qa.csv"
    path.write_text("instruction,input,output\nSay,hi,oi\nSay,bye,tchau\n")
    response = client.post("/api/v1/datasets", headers=ADMIN,
                           json={"name": "qa-csv", "source_url": path.as_uri()})
    assert response.status_code == 201, response.text
    assert response.json()["format"] == "csv" and response.json()["num_samples"] == 2
    refused = client.post("/api/v1/datasets", headers=ADMIN,
                          json={"name": "x", "source_url": "file:///etc/passwd", "format": "csv"})
    assert refused.status_code == 400 and refused.json()["error_code"] == "SOURCE_NOT_ALLOWED"


def test_a_malformed_file_is_400_with_row_and_column(app: tuple[AppContext, TestClient, Path]) -> None:
    _, client, _ = app
    bad = JSONL + json.dumps({"instruction": "x", "input": "y"}).encode() + b"\n"
    response = upload(client, bad)
    assert response.status_code == 400
    body = response.json()
    assert body["error_code"] == "DATASET_INVALID"
    assert body["details"]["row"] == 5 and body["details"]["column"] == "output" and body["details"]["line"] == 5


def test_a_declared_type_is_checked(app: tuple[AppContext, TestClient, Path]) -> None:
    _, client, _ = app
    data = b"instruction,input,output,score\nA,b,c,1\nA,b,c,many\n"
    response = upload(client, data, filename="s.csv", schema=json.dumps({"column_types": {"score": "integer"}}))
    assert response.status_code == 400
    details = response.json()["details"]
    assert (details["row"], details["line"], details["column"]) == (2, 3, "score")


def test_too_big_is_413_in_the_envelope(app: tuple[AppContext, TestClient, Path]) -> None:
    _, client, root = app
    big = JSONL * (LIMIT // len(JSONL) + 1)
    response = upload(client, big)
    assert response.status_code == 413 and response.json()["error_code"] == "FILE_TOO_LARGE"
    (root / "big.jsonl").write_bytes(big)
    fetched = client.post("/api/v1/datasets", headers=ADMIN,
                          json={"name": "big", "source_url": (root / "big.jsonl").as_uri()})
    assert fetched.status_code == 413 and fetched.json()["details"]["max_bytes"] == LIMIT


def test_list_pages_newest_first_then_delete_removes_record_and_file(
        app: tuple[AppContext, TestClient, Path]) -> None:
    ctx, client, _ = app
    ids = [upload(client, JSONL, name=f"qa-{i}").json()["dataset_id"] for i in range(3)]
    first = client.get("/api/v1/datasets", params={"page": 1, "page_size": 2}, headers=ADMIN).json()
    second = client.get("/api/v1/datasets", params={"page": 2, "page_size": 2}, headers=ADMIN).json()
    assert first["total"] == 3 and first["pages"] == 2 and first["page_size"] == 2
    listed = [d["dataset_id"] for d in first["items"] + second["items"]]
    assert sorted(listed) == sorted(ids) and len(second["items"]) == 1
    gone = client.delete(f"/api/v1/datasets/{ids[0]}", headers=ADMIN)
    assert gone.status_code == 200
    key = gone.json()["path"].removeprefix(f"s3://{ctx.settings.s3_bucket}/")
    assert key not in ctx.artifacts.objects  # type: ignore[attr-defined]
    assert client.get(f"/api/v1/datasets/{ids[0]}", headers=ADMIN).status_code == 404
    assert client.delete(f"/api/v1/datasets/{ids[0]}", headers=ADMIN).status_code == 404


def test_metadata_mistakes_are_400_not_500(app: tuple[AppContext, TestClient, Path]) -> None:
    _, client, _ = app
    assert upload(client, JSONL, filename="qa.txt").status_code == 400  # no format, no known extension
    assert upload(client, JSONL, schema="{not json").status_code == 400
    no_file = client.post("/api/v1/datasets", headers=ADMIN, data={"name": "qa"}, files={"other": ("a", b"b")})
    assert no_file.status_code == 400
    assert client.post("/api/v1/datasets", headers=ADMIN, json={"name": "qa"}).status_code == 400
    plain = client.post("/api/v1/datasets", headers={**ADMIN, "Content-Type": "text/plain"}, content=b"x")
    assert plain.status_code == 415
