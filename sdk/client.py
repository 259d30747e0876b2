"""Python client SDK for the Tributary REST API (device side and operator side).

Retries 429/502/503/504 honouring ``Retry-After`` (bounded), raises ``ApiError`` with the
server's error envelope otherwise. Used by the README walkthrough, the demo and the tests.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

RETRYABLE = {429, 502, 503, 504}


class ApiError(Exception):
    def __init__(self, status_code: int, body: dict[str, Any]) -> None:
        super().__init__(f"{status_code} {body.get('error_code') or body.get('error')}: {body.get('message')}")
        self.status_code = status_code
        self.body = body

    @property
    def code(self) -> str | None:
        value = self.body.get("error_code")
        return value if isinstance(value, str) else None


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    max_wait_s: float = 30.0
    backoff_s: float = 0.2


class TributaryClient:
    """One HTTP connection pool, one API key."""

    def __init__(self, base_url: str, api_key: str | None = None, *, timeout_s: float = 30.0,
                 retry: RetryPolicy | None = None, sleep: Callable[[float], None] = time.sleep) -> None:
        self.api_key = api_key
        self.retry = retry or RetryPolicy()
        self._sleep = sleep
        self._http = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout_s)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> TributaryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}) or {})
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        for attempt in range(1, self.retry.attempts + 1):
            files = kwargs.get("files")
            if files:  # rewind uploads so a retry resends the whole file
                for value in files.values():
                    if isinstance(value, tuple) and hasattr(value[1], "seek"):
                        value[1].seek(0)
            try:
                response = self._http.request(method, path, headers=headers, **kwargs)
            except httpx.TransportError:
                if attempt == self.retry.attempts:
                    raise
                self._sleep(self.retry.backoff_s * 2 ** (attempt - 1))
                continue
            if response.status_code in RETRYABLE and attempt < self.retry.attempts:
                self._sleep(self._wait_for(response, attempt))
                continue
            if response.status_code >= 400:
                try:
                    body = response.json()
                except ValueError:
                    body = {"message": response.text}
                raise ApiError(response.status_code, body)
            return response
        raise AssertionError("unreachable")

    def _wait_for(self, response: httpx.Response, attempt: int) -> float:
        header = response.headers.get("Retry-After")
        try:
            wait = float(header) if header is not None else self.retry.backoff_s * 2 ** (attempt - 1)
        except ValueError:
            wait = self.retry.backoff_s * 2 ** (attempt - 1)
        return min(wait, self.retry.max_wait_s)

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


class DeviceAgent:
    """A device's loop: heartbeat, notice a pending round, train locally, submit once."""

    def __init__(self, client: TributaryClient, device_id: str,
                 train: Callable[[bytes | None], tuple[bytes, int, dict[str, Any]]],
                 heartbeat_interval_s: float = 30.0) -> None:
        self.client = client
        self.device_id = device_id
        self.train = train  # global model bytes (or None) -> (update bytes, num_samples, metrics)
        self.heartbeat_interval_s = heartbeat_interval_s
        self.submitted: set[str] = set()
        self._stop = threading.Event()

    def step(self) -> str | None:
        """One heartbeat; trains and submits when a round awaits this device. Returns the round id."""
        answer = self.client.heartbeat(self.device_id)
        round_id = answer.get("pending_round_id")
        if not round_id or round_id in self.submitted:
            return None
        round_ = self.client.round_status(round_id)
        global_model = self._global_model(round_)
        weights, num_samples, metrics = self.train(global_model)
        self.client.submit_update(round_id, weights, num_samples, **metrics)
        self.submitted.add(round_id)
        return str(round_id)

    def _global_model(self, round_: dict[str, Any]) -> bytes | None:
        path = round_.get("global_model_path")
        if not path:
            return None
        # s3://bucket/models/<id>/v<N>/model.pt → download through the API, not S3.
        parts = str(path).split("/")
        if "models" in parts and len(parts) >= parts.index("models") + 3:
            model_id, version = parts[parts.index("models") + 1], parts[parts.index("models") + 2].lstrip("v")
            return self.client.download_version(model_id, int(version)).content
        return None

    def run(self) -> None:
        while not self._stop.is_set():
            self.step()
            self._stop.wait(self.heartbeat_interval_s)

    def stop(self) -> None:
        self._stop.set()
