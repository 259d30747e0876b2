"""Python client SDK for the Tributary REST API (device side, operator side and model serving)
and, for streaming inference, its gRPC ``InferStream`` (seed 001 §6.1, §6.2).

Retries come from tenacity: transport errors and 429/502/503/504 are retried with exponential
backoff and full jitter, and a ``Retry-After`` the server sends is honoured (bounded by
``RetryPolicy.max_wait_s``); anything else raises ``ApiError`` with the server's error envelope.
Serving calls return typed results (``InferenceResult``, ``JobReference``, ``JobStatus``,
``Model``, ``ModelStatus``). Used by the README walkthrough, the demo and the tests.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import random
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    retry_if_result,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
    wait_fixed,
)

RETRYABLE = {429, 502, 503, 504}
T = TypeVar("T")
TERMINAL_JOB_STATES = frozenset({"completed", "failed", "cancelled"})


class ApiError(Exception):
    def __init__(self, status_code: int, body: dict[str, Any]) -> None:
        super().__init__(f"{status_code} {body.get('error_code') or body.get('error')}: {body.get('message')}")
        self.status_code = status_code
        self.body = body

    @classmethod
    def of(cls, response: httpx.Response) -> ApiError:
        """The error an answer of 400 or more is (its envelope, or its text when it is not JSON)."""
        try:
            body = response.json()
        except ValueError:
            body = {"message": response.text}
        return cls(response.status_code, body)

    @property
    def code(self) -> str | None:
        value = self.body.get("error_code")
        return value if isinstance(value, str) else None


class ModelFailed(Exception):
    """``wait_ready``: the model's status became ``failed``; ``reason`` says why."""

    def __init__(self, model_id: str, reason: str | None) -> None:
        super().__init__(f"model {model_id} failed: {reason or 'no reason given'}")
        self.model_id = model_id
        self.reason = reason


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    max_wait_s: float = 30.0
    backoff_s: float = 0.2


# --- typed results ------------------------------------------------------------------------------

@dataclass(frozen=True)
class InferenceResult:
    """Seed 001 ``InferenceResponse``; from a stream also the request's id, or its error."""

    model_id: str
    output_data: dict[str, Any]
    metadata: dict[str, Any] = field(default_factory=dict)
    request_id: str | None = None
    error: dict[str, Any] | None = None  # stream answers only: {"code", "message", "details"}

    @property
    def embedding(self) -> list[float] | None:
        value = self.output_data.get("embedding")
        return value if isinstance(value, list) else None

    @property
    def embeddings(self) -> list[list[float]] | None:
        value = self.output_data.get("embeddings")
        return value if isinstance(value, list) else None

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> InferenceResult:
        return cls(str(body.get("model_id") or ""), dict(body.get("output_data") or {}),
                   dict(body.get("metadata") or {}))


@dataclass(frozen=True)
class JobReference:
    job_id: str
    status: str
    created_at: str
    status_url: str

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> JobReference:
        return cls(str(body["job_id"]), str(body["status"]), str(body["created_at"]), str(body["status_url"]))


@dataclass(frozen=True)
class JobStatus:
    job_id: str
    model_id: str
    status: str
    progress: float = 0.0
    priority: str | None = None
    created_at: str | None = None
    started_at: str | None = None
    completed_at: str | None = None
    cancelled_at: str | None = None
    error: dict[str, Any] | None = None
    message: str | None = None  # cancel's answer

    @property
    def done(self) -> bool:
        return self.status in TERMINAL_JOB_STATES

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> JobStatus:
        return cls(job_id=str(body["job_id"]), model_id=str(body.get("model_id") or ""), status=str(body["status"]),
                   progress=float(body.get("progress") or 0.0), priority=body.get("priority"),
                   created_at=body.get("created_at"), started_at=body.get("started_at"),
                   completed_at=body.get("completed_at"), cancelled_at=body.get("cancelled_at"),
                   error=body.get("error"), message=body.get("message"))


@dataclass(frozen=True)
class Model:
    """A registry entry (seed 001 ``ModelResponse`` view of the catalog); ``raw`` keeps every field."""

    id: str
    model_id: str
    status: str
    task_type: str | None
    version: str | None
    status_reason: str | None
    raw: dict[str, Any]

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> Model:
        return cls(id=str(body.get("id") or body.get("model_id")), model_id=str(body.get("model_id") or body["id"]),
                   status=str(body.get("status") or ""), task_type=body.get("task_type"), version=body.get("version"),
                   status_reason=body.get("status_reason"), raw=dict(body))


@dataclass(frozen=True)
class ModelStatus:
    """``load``/``unload`` answers: the model's state and the workers that hold (held) it."""

    model_id: str
    state: str
    workers: list[str]
    raw: dict[str, Any]

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> ModelStatus:
        return cls(str(body["model_id"]), str(body["state"]), list(body.get("workers") or []), dict(body))


@dataclass(frozen=True)
class DownloadedFile:
    """``download_file``: what was written (sha256 hex and size computed while streaming)."""

    sha256: str
    size_bytes: int
    filename: str | None  # the server's Content-Disposition name (its suffix says the format)


# --- retries ------------------------------------------------------------------------------------

class WaitRetryAfter:
    """Tenacity wait: the server's ``Retry-After`` (plus a little jitter) when the last answer has
    one, else exponential backoff with jitter; never longer than ``max_wait_s``."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.max_wait_s = policy.max_wait_s
        self.backoff = wait_exponential_jitter(multiplier=policy.backoff_s, max=policy.max_wait_s,
                                               jitter=policy.backoff_s)
        self.jitter_s = policy.backoff_s

    def __call__(self, state: RetryCallState) -> float:
        outcome = state.outcome
        if outcome is not None and not outcome.failed:
            header = outcome.result().headers.get("Retry-After")
            try:
                seconds = float(header) if header is not None else None
            except ValueError:
                seconds = None  # an HTTP date: fall back to our own backoff
            if seconds is not None and seconds >= 0:
                return float(min(seconds + self.jitter_s * _unit_jitter(), self.max_wait_s))
        return float(self.backoff(state))


def _unit_jitter() -> float:
    return random.random()


def _last_answer(state: RetryCallState) -> httpx.Response:
    """After the last attempt: the last response (it becomes ApiError), or the transport error."""
    assert state.outcome is not None
    result: httpx.Response = state.outcome.result()  # re-raises the last exception, if any
    return result


class TributaryClient:
    """One HTTP connection pool, one API key; ``grpc_target`` (host:port) for ``infer_stream``."""

    def __init__(self, base_url: str, api_key: str | None = None, *, timeout_s: float = 30.0,
                 retry: RetryPolicy | None = None, sleep: Callable[[float], None] = time.sleep,
                 grpc_target: str | None = None, transport: httpx.BaseTransport | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        """``headers`` go with every request (e.g. an ``X-Trace-Id``); ``transport`` is httpx's (tests)."""
        self.api_key = api_key
        self.retry = retry or RetryPolicy()
        self.grpc_target = grpc_target
        self._sleep = sleep
        self._http = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout_s, transport=transport,
                                  headers=dict(headers or {}))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> TributaryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _retrying(self) -> Retrying:
        return Retrying(
            retry=retry_if_exception_type(httpx.TransportError)
            | retry_if_result(lambda response: response.status_code in RETRYABLE),
            stop=stop_after_attempt(self.retry.attempts), wait=WaitRetryAfter(self.retry), sleep=self._sleep,
            retry_error_callback=_last_answer, reraise=True)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}) or {})
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"

        def attempt() -> httpx.Response:
            files = kwargs.get("files")
            if files:  # rewind uploads so a retry resends the whole file
                for value in (files.values() if isinstance(files, dict) else (v for _, v in files)):
                    if isinstance(value, tuple) and hasattr(value[1], "seek"):
                        value[1].seek(0)
            return self._http.request(method, path, headers=headers, **kwargs)

        response: httpx.Response = self._retrying()(attempt)
        if response.status_code >= 400:
            raise ApiError.of(response)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        data: dict[str, Any] = self.request(method, path, **kwargs).json()
        return data

    # --- devices ------------------------------------------------------------------------
    def register_device(self, device_id: str, platform: str = "python",
                        capabilities: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Registers and adopts the returned key (shown once: keep it)."""
        body = self._json("POST", "/api/v1/devices/register",
                          json={"device_id": device_id, "platform": platform, "capabilities": dict(capabilities or {})})
        self.api_key = body["api_key"]
        return body

    def heartbeat(self, device_id: str, metrics: Mapping[str, Any] | None = None,
                  status: str = "active") -> dict[str, Any]:
        return self._json("PUT", f"/api/v1/devices/{device_id}/heartbeat",
                          json={"status": status, "metrics": dict(metrics or {})})

    def assignment(self, device_id: str) -> dict[str, Any]:
        """The models assigned to the device, each with where to download it and its routing decision:
        ``{"device_id", "assignments": [...], "generated_at"}`` (the heartbeat answer carries the same)."""
        return self._json("GET", f"/api/v1/devices/{device_id}/assignment")

    def report_telemetry(self, device_id: str, window: Mapping[str, Any]) -> dict[str, Any]:
        """One telemetry window: ``{"window_start", "window_end", "models": [...]}`` (202)."""
        return self._json("POST", f"/api/v1/devices/{device_id}/telemetry", json=dict(window))

    def get_device(self, device_id: str) -> dict[str, Any]:
        return self._json("GET", f"/api/v1/devices/{device_id}")

    def rotate_device_key(self, device_id: str) -> dict[str, Any]:
        """A device swaps its key for a new one and adopts it (the old one stops working everywhere)."""
        body = self._json("POST", f"/api/v1/devices/{device_id}/keys/rotate")
        self.api_key = body["api_key"]
        return body

    def delete_device(self, device_id: str) -> dict[str, Any]:
        """Operators: the device's row and keys go; a device_deleted event says so."""
        return self._json("DELETE", f"/api/v1/devices/{device_id}")

    # --- keys (operators) ---------------------------------------------------------------
    def create_key(self, role: str, subject: str | None = None, label: str | None = None,
                   rate_limit_per_minute: int | None = None) -> dict[str, Any]:
        """A new key; its ``api_key`` is in this answer only."""
        body = {"role": role, "subject": subject, "label": label, "rate_limit_per_minute": rate_limit_per_minute}
        return self._json("POST", "/api/v1/keys", json={k: v for k, v in body.items() if v is not None})

    def list_keys(self, subject: str | None = None) -> list[dict[str, Any]]:
        keys: list[dict[str, Any]] = self._json("GET", "/api/v1/keys",
                                                params={"subject": subject} if subject else None)["keys"]
        return keys

    def rotate_key(self, key_id: str) -> dict[str, Any]:
        return self._json("POST", f"/api/v1/keys/{key_id}/rotate")

    def revoke_key(self, key_id: str) -> dict[str, Any]:
        return self._json("POST", f"/api/v1/keys/{key_id}/revoke")

    # --- rounds -------------------------------------------------------------------------
    def start_round(self, target_devices: int, min_devices: int, timeout_seconds: int = 300,
                    global_model_id: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"target_devices": target_devices, "min_devices": min_devices,
                                "timeout_seconds": timeout_seconds}
        if global_model_id:
            body["global_model_id"] = global_model_id
        return self._json("POST", "/api/v1/training/rounds/start", json=body)

    def current_round(self) -> dict[str, Any]:
        return self._json("GET", "/api/v1/training/rounds/current")

    def round_status(self, round_id: str) -> dict[str, Any]:
        return self._json("GET", f"/api/v1/training/rounds/{round_id}/status")

    def cancel_round(self, round_id: str) -> dict[str, Any]:
        """Operators: end a pending, active or aggregating round (409 once it has finished)."""
        return self._json("POST", f"/api/v1/training/rounds/{round_id}/cancel")

    # --- rollouts (operators) ------------------------------------------------------------
    def create_rollout(self, model_id: str, version: int, stages: list[Mapping[str, Any]],
                       cohort: Mapping[str, Any] | None = None,
                       baseline_version: int | None = None) -> dict[str, Any]:
        """Roll a catalog version out in stages (``[{"percent", "hold_s", "min_inference_count",
        "max_error_rate", "max_crash_rate", "max_p95_latency_ms"}]``); 409 while one is active."""
        body: dict[str, Any] = {"model_id": model_id, "version": version, "stages": [dict(s) for s in stages]}
        if cohort is not None:
            body["cohort"] = dict(cohort)
        if baseline_version is not None:
            body["baseline_version"] = baseline_version
        return self._json("POST", "/api/v1/rollouts", json=body)

    def list_rollouts(self, model_id: str | None = None) -> list[dict[str, Any]]:
        rollouts: list[dict[str, Any]] = self._json(
            "GET", "/api/v1/rollouts", params={"model_id": model_id} if model_id else None)["rollouts"]
        return rollouts

    def get_rollout(self, rollout_id: str) -> dict[str, Any]:
        """The rollout with its gates, current telemetry per version and device counts per version."""
        return self._json("GET", f"/api/v1/rollouts/{rollout_id}")

    def command_rollout(self, rollout_id: str, command: str, reason: str | None = None) -> dict[str, Any]:
        """``pause``, ``resume``, ``advance`` or ``rollback`` (202: the rollouts processor applies it)."""
        return self._json("POST", f"/api/v1/rollouts/{rollout_id}/{command}",
                          json={"reason": reason} if reason else None)

    def submit_update(self, round_id: str, weights: bytes, num_samples: int, *, local_loss: float | None = None,
                      local_accuracy: float | None = None, training_time_seconds: int | None = None) -> dict[str, Any]:
        form = {"num_samples": str(num_samples)}
        for key, value in (("local_loss", local_loss), ("local_accuracy", local_accuracy),
                           ("training_time_seconds", training_time_seconds)):
            if value is not None:
                form[key] = str(value)
        files = {"file": ("update.pt", io.BytesIO(weights), "application/octet-stream")}
        return self._json("POST", f"/api/v1/training/rounds/{round_id}/updates", data=form, files=files)

    # --- catalog ------------------------------------------------------------------------
    def create_model(self, **fields: Any) -> dict[str, Any]:
        return self._json("POST", "/api/v1/models", json=fields)

    def list_models(self, **params: Any) -> dict[str, Any]:
        return self._json("GET", "/api/v1/models", params=params)

    def get_model(self, model_id: str) -> dict[str, Any]:
        return self._json("GET", f"/api/v1/models/{model_id}")

    def upload_version(self, model_id: str, data: bytes, filename: str, fmt: str | None = None,
                       description: str | None = None) -> dict[str, Any]:
        form = {k: v for k, v in (("format", fmt), ("description", description)) if v is not None}
        files = {"file": (filename, io.BytesIO(data), "application/octet-stream")}
        return self._json("POST", f"/api/v1/models/{model_id}/versions/upload", data=form, files=files)

    def download_version(self, model_id: str, version: int, fmt: str | None = None) -> httpx.Response:
        params = {"format": fmt} if fmt else None
        return self.request("GET", f"/api/v1/models/{model_id}/versions/{version}/download", params=params)

    def download_file(self, url: str, dest: Path, chunk_bytes: int = 1 << 20) -> DownloadedFile:
        """Stream ``url`` (a path of this API, e.g. an assignment's ``download_url``) into ``dest``
        without holding it in memory; returns its sha256, size and the server's file name. Retried
        like every call (a transport error or 429/502/503/504 starts the file again); other statuses
        raise ``ApiError``."""
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

        def attempt() -> httpx.Response | DownloadedFile:
            digest, size = hashlib.sha256(), 0
            with self._http.stream("GET", url, headers=headers) as response:
                if response.status_code >= 400:
                    response.read()
                    return response
                with open(dest, "wb") as out:
                    for chunk in response.iter_bytes(chunk_bytes):
                        digest.update(chunk)
                        size += len(chunk)
                        out.write(chunk)
                disposition = re.search(r'filename="?([^";]+)"?', response.headers.get("Content-Disposition", ""))
            return DownloadedFile(digest.hexdigest(), size, disposition.group(1) if disposition else None)

        answer = Retrying(
            retry=retry_if_exception_type(httpx.TransportError)
            | retry_if_result(lambda r: isinstance(r, httpx.Response) and r.status_code in RETRYABLE),
            stop=stop_after_attempt(self.retry.attempts), wait=WaitRetryAfter(self.retry), sleep=self._sleep,
            retry_error_callback=_last_answer, reraise=True)(attempt)
        if isinstance(answer, httpx.Response):
            raise ApiError.of(answer)
        return answer

    # --- model serving (seed 001 §6.1) ------------------------------------------------------
    @staticmethod
    def _model_path(model_id: str) -> str:
        return quote(model_id, safe="")  # 'org/name' as one path segment (%2F)

    def infer(self, model_id: str, input_data: Mapping[str, Any], parameters: Mapping[str, Any] | None = None,
              priority: str = "medium", timeout_seconds: int = 60) -> InferenceResult:
        """Synchronous inference; a large input (a 20 MB image) is fine: the server sends it by reference."""
        body = {"input_data": dict(input_data), "parameters": dict(parameters or {}), "priority": priority,
                "timeout_seconds": timeout_seconds}
        return InferenceResult.of(self._json("POST", f"/api/v1/infer/{self._model_path(model_id)}", json=body,
                                             timeout=timeout_seconds + 30))

    def infer_images(self, model_id: str, images: bytes | list[bytes], parameters: Mapping[str, Any] | None = None,
                     priority: str = "medium", timeout_seconds: int = 60) -> InferenceResult:
        """Synchronous inference on raw image bytes, uploaded as multipart (no base64 on the client)."""
        files: list[tuple[str, tuple[str, io.BytesIO, str]]] = (
            [("file", ("image", io.BytesIO(images), "application/octet-stream"))] if isinstance(images, bytes)
            else [("files", (f"image-{i}", io.BytesIO(b), "application/octet-stream")) for i, b in enumerate(images)])
        form = {"parameters": _json_text(parameters or {}), "priority": priority,
                "timeout_seconds": str(timeout_seconds)}
        return InferenceResult.of(self._json("POST", f"/api/v1/infer/{self._model_path(model_id)}/upload",
                                             data=form, files=files, timeout=timeout_seconds + 30))

    def infer_async(self, model_id: str, input_data: Mapping[str, Any], parameters: Mapping[str, Any] | None = None,
                    priority: str = "low", timeout_seconds: int = 300) -> JobReference:
        body = {"input_data": dict(input_data), "parameters": dict(parameters or {}), "priority": priority,
                "timeout_seconds": timeout_seconds}
        return JobReference.of(self._json("POST", f"/api/v1/infer/{self._model_path(model_id)}/async", json=body))

    def job(self, job_id: str) -> JobStatus:
        return JobStatus.of(self._json("GET", f"/api/v1/jobs/{job_id}"))

    def result(self, job_id: str) -> InferenceResult:
        """A completed job's result (``ApiError`` 409 ``JOB_NOT_READY`` while it runs)."""
        return InferenceResult.of(self._json("GET", f"/api/v1/jobs/{job_id}/result"))

    def cancel(self, job_id: str) -> JobStatus:
        """Idempotent cancel (seed 004): the job's state afterwards and what happened."""
        return JobStatus.of(self._json("POST", f"/api/v1/jobs/{job_id}/cancel"))

    def wait_job(self, job_id: str, timeout_s: float = 300.0, poll_s: float = 0.5) -> JobStatus:
        """Poll until the job is completed, failed or cancelled; ``TimeoutError`` after ``timeout_s``."""
        return self._poll(lambda: self.job(job_id), lambda job: job.done, timeout_s, poll_s,
                          f"job {job_id} still running after {timeout_s}s")

    def register_model(self, model_id: str, task_type: str, version: str = "main", *,
                       source_url: str | None = None, display_name: str | None = None,
                       description: str | None = None, resource_requirements: Mapping[str, Any] | None = None,
                       config: Mapping[str, Any] | None = None) -> Model:
        """Seed 001 ``registerModel``: a registry entry (``registered``), fetched later by ``download``."""
        body: dict[str, Any] = {"model_id": model_id, "task_type": task_type, "version": version}
        for key, value in (("source_url", source_url), ("display_name", display_name),
                           ("description", description), ("config", config),
                           ("resource_requirements", resource_requirements)):
            if value is not None:
                body[key] = dict(value) if isinstance(value, Mapping) else value
        return Model.of(self._json("POST", "/api/v1/models", json=body))

    def update_model(self, model_id: str, **changes: Any) -> Model:
        """Operators: change a registry entry (``display_name``, ``description``, ``config``,
        ``resource_requirements``; what is not given stays)."""
        return Model.of(self._json("PUT", f"/api/v1/models/{self._model_path(model_id)}", json=changes))

    def routing_policy(self, model_id: str) -> dict[str, Any]:
        """The model's routing policy: ``{"model_id", "policy" (effective), "overrides", "memory_mb"}``."""
        return self._json("GET", f"/api/v1/models/{self._model_path(model_id)}/routing-policy")

    def set_routing_policy(self, model_id: str, **policy: Any) -> dict[str, Any]:
        """Operators: replace the model's routing policy (``mode``, ``min_battery_pct``,
        ``download_networks``, ``memory_headroom``, ``platforms``; what is left out takes the default)."""
        return self._json("PUT", f"/api/v1/models/{self._model_path(model_id)}/routing-policy", json=policy)

    def model(self, model_id: str) -> Model:
        return Model.of(self._json("GET", f"/api/v1/models/{self._model_path(model_id)}"))

    def download(self, model_id: str) -> dict[str, Any]:
        """Ask the platform to fetch the model's ``source_url``; its status then moves
        ``downloading`` -> ``ready`` | ``failed`` (``wait_ready``)."""
        return self._json("POST", f"/api/v1/models/{self._model_path(model_id)}/download")

    def wait_ready(self, model_id: str, timeout_s: float = 300.0, poll_s: float = 1.0) -> Model:
        """Poll the registry until the model is ``ready`` (returned) or ``failed`` (``ModelFailed`` with
        the reason); ``TimeoutError`` when neither within ``timeout_s``."""
        model = self._poll(lambda: self.model(model_id), lambda m: m.status in ("ready", "failed"), timeout_s,
                           poll_s, f"model {model_id} not ready after {timeout_s}s")
        if model.status == "failed":
            raise ModelFailed(model_id, model.status_reason)
        return model

    def load(self, model_id: str) -> ModelStatus:
        """Load the model on the workers; answers once one reports it loaded."""
        return ModelStatus.of(self._json("POST", f"/api/v1/models/{self._model_path(model_id)}/load"))

    def unload(self, model_id: str) -> ModelStatus:
        return ModelStatus.of(self._json("POST", f"/api/v1/models/{self._model_path(model_id)}/unload"))

    def _poll(self, read: Callable[[], T], finished: Callable[[T], bool], timeout_s: float, poll_s: float,
              timeout_message: str) -> T:
        retrying = Retrying(retry=retry_if_result(lambda value: not finished(value)),
                            stop=stop_after_delay(timeout_s), wait=wait_fixed(poll_s), sleep=self._sleep,
                            retry_error_callback=lambda state: _timed_out(timeout_message))
        value: T = retrying(read)
        return value

    def infer_stream(self, model_id: str, inputs: Iterable[Mapping[str, Any]],
                     parameters: Mapping[str, Any] | None = None, priority: str = "medium",
                     timeout_seconds: int = 60) -> Iterator[InferenceResult]:
        """Many requests on one gRPC ``InferStream`` call (``grpc_target``), answered as they complete.

        Each input is a seed 001 ``input_data`` (``text``, ``texts``, ``image`` as bytes or base64, or
        custom fields); every answer carries its ``request_id`` (``"0"``, ``"1"``, ... in input order)
        and, when that request failed, ``error`` instead of output: the stream goes on.
        """
        import grpc

        from modelmora.v1 import common_pb2, inference_pb2, inference_pb2_grpc

        if not self.grpc_target:
            raise ValueError("infer_stream needs grpc_target (host:port of the gRPC server)")
        levels = {"high": common_pb2.PRIORITY_HIGH, "medium": common_pb2.PRIORITY_MEDIUM,
                  "low": common_pb2.PRIORITY_LOW}

        def requests() -> Iterator[inference_pb2.InferenceRequest]:
            for index, item in enumerate(inputs):
                message = inference_pb2.InferenceRequest(model_id=model_id, request_id=str(index),
                                                         priority=levels[priority], timeout_seconds=timeout_seconds)
                _fill_input(message.input_data, item)
                if parameters:
                    message.parameters.update(dict(parameters))
                yield message

        metadata = (("authorization", f"Bearer {self.api_key}"),) if self.api_key else ()
        with grpc.insecure_channel(self.grpc_target, options=[("grpc.max_receive_message_length", -1)]) as channel:
            stub = inference_pb2_grpc.InferenceServiceStub(channel)
            for response in stub.InferStream(requests(), metadata=metadata):
                yield _stream_result(response)


def _timed_out(message: str) -> Any:
    raise TimeoutError(message)


def _json_text(value: Mapping[str, Any]) -> str:
    return json.dumps(dict(value))


def _fill_input(message: Any, item: Mapping[str, Any]) -> None:
    """A seed 001 ``input_data`` dict into ``modelmora.v1.InputData`` (typed fields, the rest custom)."""
    rest = dict(item)
    text, texts, image = rest.pop("text", None), rest.pop("texts", None), rest.pop("image", None)
    if isinstance(text, str):
        message.text = text
    elif text is not None:
        rest["text"] = text
    if isinstance(texts, list) and all(isinstance(t, str) for t in texts):
        message.text_batch.texts.extend(texts)
    elif texts is not None:
        rest["texts"] = texts  # sent as given: the server names what is wrong with it
    if isinstance(image, bytes | str):
        message.image = image if isinstance(image, bytes) else base64.b64decode(image)
    elif image is not None:
        rest["image"] = image
    if rest:
        message.custom_data.update(rest)


def _stream_result(response: Any) -> InferenceResult:
    from google.protobuf import json_format

    output = response.output_data
    custom = json_format.MessageToDict(output.custom_data) if output.HasField("custom_data") else {}
    request_id = custom.pop("request_id", None)
    data: dict[str, Any] = dict(custom)
    kind = output.WhichOneof("data")
    if kind == "embedding":
        data["embedding"] = list(output.embedding.values)
    elif kind == "embedding_batch":
        data["embeddings"] = [list(row.values) for row in output.embedding_batch.embeddings]
    elif kind in ("text", "image_url"):
        data[kind] = getattr(output, kind)
    elif kind == "image_data":
        data["image_data"] = base64.b64encode(output.image_data).decode()
    error = None
    if response.HasField("error"):
        details = dict(response.error.details)
        request_id = request_id or details.get("request_id")
        error = {"code": response.error.code, "message": response.error.message, "details": details}
    meta = response.metadata
    metadata = {"inference_time_ms": meta.inference_time_ms, "total_time_ms": meta.total_time_ms,
                "batch_size": meta.batch_size, "device": meta.device}
    return InferenceResult(response.model_id, data, metadata, request_id=request_id, error=error)
