"""Datasets end to end through the real ingress, Cassandra and S3: a multipart upload and two
``source_url`` fetches (our S3, and an HTTP server on loopback) are read, checked and stored; list,
get and delete see the record and the S3 object come and go; a malformed file is 400 with its row
and column, a big one 413; device keys are refused; create and delete are on the audit topic."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from botocore.exceptions import ClientError

from core.artifacts import s3_client
from tests.e2e.conftest import RunningSystem
from tests.e2e.serving import HTTP_TIMEOUT, records_until
from topology.topics import AUDIT_EVENTS

pytestmark = pytest.mark.e2e

ROWS = [{"instruction": "Translate to Portuguese", "input": f"Good morning number {i}", "output": f"Bom dia {i}"}
        for i in range(20)]
JSONL = b"".join(json.dumps(r).encode() + b"\n" for r in ROWS)
CSV = ("instruction,input,output\n" + "".join(f'"{r["instruction"]}","{r["input"]}","{r["output"]}"\n'
                                              for r in ROWS)).encode()


@pytest.fixture(scope="module")
def service_key(system: RunningSystem) -> dict[str, str]:
    created = httpx.post(f"{system.base_url}/api/v1/keys", json={"role": "service", "label": "datasets-e2e"},
                         headers={"Authorization": f"Bearer {system.admin_key}"}, timeout=HTTP_TIMEOUT)
    assert created.status_code == 201, created.text
    return {"Authorization": f"Bearer {created.json()['api_key']}"}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    root = tmp_path_factory.mktemp("served-datasets")
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), partial(http.server.SimpleHTTPRequestHandler, directory=str(root)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def s3_object(system: RunningSystem, path: str) -> dict[str, Any] | None:
    bucket, _, key = path.removeprefix("s3://").partition("/")
    try:
        return dict(s3_client(system.settings).head_object(Bucket=bucket, Key=key))
    except ClientError:
        return None


def test_multipart_upload_list_get_delete_with_the_file_in_s3(system: RunningSystem,
                                                               service_key: dict[str, str]) -> None:
    url = f"{system.base_url}/api/v1/datasets"
    created = httpx.post(url, headers=service_key, files={"file": ("qa.jsonl", JSONL)},
                         data={"name": "qa-e2e", "description": "twenty rows"}, timeout=HTTP_TIMEOUT)
    assert created.status_code == 201, created.text
    body = created.json()
    assert (body["format"], body["num_samples"], body["size_bytes"]) == ("jsonl", 20, len(JSONL))
    assert body["sha256"] == hashlib.sha256(JSONL).hexdigest()
    assert body["statistics"]["total_tokens"] > 0 and body["schema"]["sample"] == ROWS[0]
    head = s3_object(system, body["path"])
    assert head is not None and head["ContentLength"] == len(JSONL)
    dataset_id = body["dataset_id"]
    assert httpx.get(f"{url}/{dataset_id}", headers=service_key, timeout=HTTP_TIMEOUT).json() == body
    listed = httpx.get(url, params={"page_size": 100}, headers=service_key, timeout=HTTP_TIMEOUT).json()
    assert dataset_id in [d["dataset_id"] for d in listed["items"]] and listed["pages"] >= 1
    deleted = httpx.delete(f"{url}/{dataset_id}", headers=service_key, timeout=HTTP_TIMEOUT)
    assert deleted.status_code == 200
    assert s3_object(system, body["path"]) is None
    assert httpx.get(f"{url}/{dataset_id}", headers=service_key, timeout=HTTP_TIMEOUT).status_code == 404
    audits = records_until(system.settings, AUDIT_EVENTS,
                           keep=lambda r: r.get("subject") == f"dataset/{dataset_id}",
                           enough=lambda found: len(found) >= 2, timeout_s=30)
    assert sorted(r["action"] for r in audits) == ["dataset.create", "dataset.delete"]


def test_source_url_from_our_s3_and_from_http(system: RunningSystem, service_key: dict[str, str],
                                              served: tuple[Path, str]) -> None:
    key = f"incoming/{uuid.uuid4().hex}/qa.csv"
    s3_client(system.settings).put_object(Bucket=system.settings.s3_bucket, Key=key, Body=CSV)
    from_s3 = httpx.post(f"{system.base_url}/api/v1/datasets", headers=service_key, timeout=HTTP_TIMEOUT,
                         json={"name": "qa-s3", "source_url": f"s3://{system.settings.s3_bucket}/{key}"})
    assert from_s3.status_code == 201, from_s3.text
    assert from_s3.json()["format"] == "csv" and from_s3.json()["num_samples"] == 20
    assert from_s3.json()["source_url"] == f"s3://{system.settings.s3_bucket}/{key}"
    root, base = served
    (root / "qa.jsonl").write_bytes(JSONL)
    from_http = httpx.post(f"{system.base_url}/api/v1/datasets", headers=service_key, timeout=HTTP_TIMEOUT,
                           json={"name": "qa-http", "source_url": f"{base}/qa.jsonl",
                                 "schema": {"column_types": {"output": "string"}}})
    assert from_http.status_code == 201, from_http.text
    stored = s3_object(system, from_http.json()["path"])
    assert stored is not None and stored["ContentLength"] == len(JSONL)
    missing = httpx.post(f"{system.base_url}/api/v1/datasets", headers=service_key, timeout=HTTP_TIMEOUT,
                         json={"name": "nope", "source_url": f"{base}/nope.jsonl"})
    assert missing.status_code == 400 and missing.json()["error_code"] == "DOWNLOAD_FAILED"


def test_malformed_is_400_with_row_and_column_and_big_is_413(system: RunningSystem, served: tuple[Path, str],
                                                             service_key: dict[str, str]) -> None:
    url = f"{system.base_url}/api/v1/datasets"
    ragged = CSV + b'"only","two"\n'
    refused = httpx.post(url, headers=service_key, files={"file": ("qa.csv", ragged)}, data={"name": "bad"},
                         timeout=HTTP_TIMEOUT)
    assert refused.status_code == 400 and refused.json()["error_code"] == "DATASET_INVALID"
    assert refused.json()["details"]["line"] == 22 and refused.json()["details"]["row"] == 21
    typed = httpx.post(url, headers=service_key, files={"file": ("qa.jsonl", JSONL + b'{"instruction": "x"}\n')},
                       data={"name": "bad"}, timeout=HTTP_TIMEOUT)
    assert typed.status_code == 400
    assert (typed.json()["details"]["row"], typed.json()["details"]["column"]) == (21, "input")
    big = JSONL * (system.settings.dataset_max_bytes // len(JSONL) + 1)
    too_big = httpx.post(url, headers=service_key, files={"file": ("big.jsonl", big)}, data={"name": "big"},
                         timeout=HTTP_TIMEOUT)
    assert too_big.status_code == 413 and too_big.json()["error_code"] == "FILE_TOO_LARGE"
    root, base = served
    (root / "big.jsonl").write_bytes(big)
    fetched = httpx.post(url, headers=service_key, json={"name": "big", "source_url": f"{base}/big.jsonl"},
                         timeout=HTTP_TIMEOUT)
    assert fetched.status_code == 413


def test_device_keys_may_not_see_or_upload_datasets(system: RunningSystem, caller: dict[str, str]) -> None:
    url = f"{system.base_url}/api/v1/datasets"
    assert httpx.get(url, headers=caller, timeout=HTTP_TIMEOUT).status_code == 403
    upload = httpx.post(url, headers=caller, files={"file": ("qa.jsonl", JSONL)}, data={"name": "x"},
                        timeout=HTTP_TIMEOUT)
    assert upload.status_code == 403
