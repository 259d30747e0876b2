"""The README's "Add your own model" block, run as written (bash, curl, the venv's python) against the
running system, from a directory under the system's ``TRIBUTARY_MODEL_SOURCE_FILE_ROOT``."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from settings import REPO_ROOT
from tests.e2e.conftest import RunningSystem, client_address

pytestmark = pytest.mark.e2e


def readme_block(heading: str) -> str:
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```bash\n(.*?)```", section, re.S)
    assert match, f"no bash block under '## {heading}'"
    return match.group(1)


def json_documents(text: str) -> list[dict[str, Any]]:
    decoder, documents, index = json.JSONDecoder(), [], 0
    while index < len(text):
        if text[index].isspace():
            index += 1
            continue
        document, index = decoder.raw_decode(text, index)
        documents.append(document)
    return documents


def test_the_add_your_own_model_walkthrough_runs_as_written(system: RunningSystem) -> None:
    root = Path(system.settings.model_source_file_root)
    workdir = root / "walkthrough"
    workdir.mkdir(exist_ok=True)
    venv = workdir / ".venv"
    if not venv.exists():
        venv.symlink_to(Path(sys.prefix))  # the block calls .venv/bin/python, as from a checkout
    registered = httpx.post(f"{system.base_url}/api/v1/devices/register", json={"device_id": "readme-device"},
                            headers=client_address(), timeout=30)
    assert registered.status_code == 201, registered.text
    env = {"PATH": "/usr/bin:/bin", "HOME": str(workdir), "API": system.base_url, "ADMIN": system.admin_key,
           "KEY": registered.json()["api_key"]}
    run = subprocess.run(["bash", "-euo", "pipefail", "-c", readme_block("Add your own model")], cwd=workdir,
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr

    documents = json_documents(run.stdout)  # curl -s prints each answer without a newline
    assert len(documents) == 3, run.stdout  # registered, the model once ready, the inference answer
    registered_model, model, answer = documents
    assert registered_model["status"] == "downloading"
    assert model["model_id"] == "me/tiny" and model["status"] == "ready" and model["download"]["progress"] == 1.0
    assert model["signature"]["inputs"][0]["shape"] == [None, 4]
    rows = [[0.1, 0.2, 0.3, 0.4], [1, 0, 0, 1]]
    session = ort.InferenceSession(str(workdir / "my-models" / "tiny.onnx"), providers=["CPUExecutionProvider"])
    reference = session.run(None, {"features": np.asarray(rows, dtype=np.float32)})[0]
    np.testing.assert_allclose(answer["output_data"]["outputs"], reference, rtol=1e-5, atol=1e-6)
