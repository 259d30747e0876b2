"""The device agent (issue 20 item 6): what runs on a device beside the app.

Each ``step`` sends one heartbeat with the device's conditions (``installed_models``, free memory,
battery, network), follows the assignments the answer carries (downloads an assigned version
through its ``download_url``, checks its sha256, switches the local file atomically and drops the
old one), reports a telemetry window when one is due, and, when a training round awaits the
device and a ``train`` callable is given, trains and submits an update (seed 000).

``infer`` routes each request by the server's decision for the model: ``on_device`` runs the
local file (ONNX Runtime for ``.onnx``; any other format through a runner factory the app
passes), ``cloud`` calls the serving plane (``POST /api/v1/infer/{model_id}``) with the device's
own key; a local failure falls back to the cloud, and every request lands in the telemetry
window it reports: counts, errors, crashes, cloud fallbacks and latency percentiles measured
here. It speaks HTTP only, through ``TributaryClient`` (tenacity retries).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx

from sdk.client import ApiError, InferenceResult, TributaryClient

# model file -> (input_data -> output_data); what runs a model on the device
Runner = Callable[[Mapping[str, Any]], dict[str, Any]]
RunnerFactory = Callable[["LocalModel"], Runner]
Trainer = Callable[[bytes | None], tuple[bytes, int, dict[str, Any]]]
NETWORKS = ("wifi", "cellular", "ethernet", "offline")
MANIFEST = "installed.json"
SUFFIX = {"onnx": "onnx", "pytorch": "pt", "tensorflow": "h5", "sklearn": "pkl", "xgboost": "json",
          "tflite": "tflite", "coreml": "mlmodel"}


class RunnerCrashed(Exception):
    """A runner says the model crashed (its process died, the file cannot be opened): counted as a
    crash, not an error, in telemetry. The agent raises it when a model file fails to load."""


class NoLocalRunner(RunnerCrashed):
    """No runner for this file's format on this device."""


class ModelVerificationFailed(Exception):
    """A downloaded file's sha256 (or size) is not the assignment's: it is thrown away."""


@dataclass(frozen=True)
class LocalModel:
    """One installed model version: the verified file and what the assignment said of it."""

    model_id: str
    version: str
    sha256: str
    path: Path
    format: str

    def record(self) -> dict[str, str]:
        return {"model_id": self.model_id, "version": self.version, "sha256": self.sha256, "path": str(self.path),
                "format": self.format}


@dataclass(frozen=True)
class Routing:
    decision: str  # on_device | cloud
    reason: str
    cloud_url: str | None = None


@dataclass(frozen=True)
class Assignment:
    """One entry of the server's assignment (``GET .../assignment`` or the heartbeat answer)."""

    model_id: str
    version: str
    rollout_id: str | None
    stage: int | None
    download_url: str | None
    size_bytes: int | None
    sha256: str | None
    downloaded: bool
    routing: Routing

    @classmethod
    def of(cls, entry: Mapping[str, Any]) -> Assignment:
        routing = entry.get("routing") or {}
        return cls(model_id=str(entry["model_id"]), version=str(entry["version"]), rollout_id=entry.get("rollout_id"),
                   stage=entry.get("stage"), download_url=entry.get("download_url"),
                   size_bytes=entry.get("size_bytes"), sha256=_hex(entry.get("sha256")) or None,
                   downloaded=bool(entry.get("downloaded")),
                   routing=Routing(str(routing.get("decision") or "cloud"), str(routing.get("reason") or ""),
                                   routing.get("cloud_url")))


# Reasons the server gives with ``cloud`` that mean: this device should not fetch the model now.
NO_DOWNLOAD_REASONS = frozenset({"cloud_only_policy", "unsupported_platform", "unsupported_runtime",
                                 "insufficient_memory", "memory_unknown", "download_deferred"})


@dataclass
class _Counts:
    inference_count: int = 0
    error_count: int = 0
    crash_count: int = 0
    cloud_fallback_count: int = 0
    latencies_ms: list[float] = field(default_factory=list)


def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0-100) of a non-empty sample: a value that was measured."""
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


class Telemetry:
    """The current window's counts per (model_id, version); thread-safe (inference runs on the app's
    threads, reports on the agent's)."""

    def __init__(self, clock: Callable[[], datetime]) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._start = clock()
        self._counts: dict[tuple[str, str], _Counts] = {}

    def record(self, model_id: str, version: str, *, latency_ms: float | None, error: bool = False,
               crash: bool = False, cloud: bool = False) -> None:
        with self._lock:
            counts = self._counts.setdefault((model_id, version), _Counts())
            counts.inference_count += 1
            counts.error_count += int(error)
            counts.crash_count += int(crash)
            counts.cloud_fallback_count += int(cloud)
            if latency_ms is not None:
                counts.latencies_ms.append(latency_ms)

    def window(self) -> dict[str, Any] | None:
        """The window so far, as the telemetry endpoint takes it (None when nothing was counted)."""
        with self._lock:
            return self._render(self._start, self._clock(), self._counts)

    def take(self) -> tuple[dict[str, Any], tuple[datetime, dict[tuple[str, str], _Counts]]] | None:
        """Close the window: its report, and what ``restore`` needs to count it again if it is not
        delivered. The next window starts where this one ends."""
        with self._lock:
            end = self._clock()
            report = self._render(self._start, end, self._counts)
            if report is None:
                return None
            taken = (self._start, self._counts)
            self._start, self._counts = end, {}
            return report, taken

    def restore(self, taken: tuple[datetime, dict[tuple[str, str], _Counts]]) -> None:
        """A window the server did not take goes back into the current one (which starts at its start)."""
        start, counts = taken
        with self._lock:
            self._start = min(start, self._start)
            for key, old in counts.items():
                current = self._counts.setdefault(key, _Counts())
                for name in ("inference_count", "error_count", "crash_count", "cloud_fallback_count"):
                    setattr(current, name, getattr(current, name) + getattr(old, name))
                current.latencies_ms = old.latencies_ms + current.latencies_ms

    @staticmethod
    def _render(start: datetime, end: datetime, counts: Mapping[tuple[str, str], _Counts]) -> dict[str, Any] | None:
        if not counts:
            return None
        models = []
        for (model_id, version), c in sorted(counts.items()):
            entry: dict[str, Any] = {"model_id": model_id, "version": wire_version(version),
                                     "inference_count": c.inference_count,
                                     "error_count": c.error_count, "crash_count": c.crash_count,
                                     "cloud_fallback_count": c.cloud_fallback_count}
            if c.latencies_ms:  # no answered request, no latency: left out rather than made up
                entry["latency_ms"] = {f"p{q}": round(percentile(c.latencies_ms, q), 3) for q in (50, 95, 99)}
            models.append(entry)
        return {"window_start": _iso(start), "window_end": _iso(end), "models": models}


class ModelStore:
    """The device's installed models: one verified file per model, listed in a manifest that is
    replaced atomically (write, fsync, rename), so a crash leaves either the old or the new state."""

    def __init__(self, root: Path) -> None:
        self.root = root  # made at the first install: an agent that never downloads leaves no trace
        self._lock = threading.Lock()
        self._models: dict[str, LocalModel] = self._read()

    def _read(self) -> dict[str, LocalModel]:
        try:
            raw = json.loads((self.root / MANIFEST).read_text())
        except (OSError, ValueError):
            return {}
        models = {}
        for item in raw.get("models", []):
            model = LocalModel(item["model_id"], str(item["version"]), item["sha256"], Path(item["path"]),
                               item.get("format") or "")
            if model.path.is_file():  # a file removed behind our back is not installed
                models[model.model_id] = model
        return models

    def get(self, model_id: str) -> LocalModel | None:
        with self._lock:
            return self._models.get(model_id)

    def installed(self) -> list[LocalModel]:
        with self._lock:
            return sorted(self._models.values(), key=lambda m: m.model_id)

    def staging_path(self, model_id: str) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        return self.root / f".{_safe(model_id)}.{os.getpid()}.{threading.get_ident()}.part"

    def install(self, staged: Path, model_id: str, version: str, sha256: str, fmt: str) -> LocalModel | None:
        """Move a verified file into place as the model's version, record it, and return the version it
        replaced (whose file is deleted); the switch is two renames (file, then manifest)."""
        final = self.root / f"{_safe(model_id)}--v{_safe(version)}.{SUFFIX.get(fmt, 'bin')}"
        os.replace(staged, final)
        model = LocalModel(model_id, version, sha256, final, fmt)
        with self._lock:
            old = self._models.get(model_id)
            self._models[model_id] = model
            self._write()
        if old is not None and old.path != final:
            old.path.unlink(missing_ok=True)
        return old

    def _write(self) -> None:
        tmp = self.root / f".{MANIFEST}.tmp"
        with open(tmp, "w") as out:
            json.dump({"models": [m.record() for m in self._models.values()]}, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.root / MANIFEST)


def onnx_runner(model: LocalModel) -> Runner:
    """ONNX Runtime on the CPU with the serving plane's generic tensor contract:
    ``{"inputs": rows}`` -> ``{"outputs": rows}`` (a single row without the batch dimension is answered
    without it), so a device and the cloud give the app the same shape."""
    import numpy as np
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(model.path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # a file ONNX Runtime cannot open: the model crashed on this device
        raise RunnerCrashed(f"ONNX Runtime could not open {model.path.name}: {exc}") from exc
    first = session.get_inputs()[0]
    dtype = {"tensor(double)": np.float64, "tensor(int64)": np.int64, "tensor(int32)": np.int32}.get(
        first.type, np.float32)
    rank = len(first.shape or [])

    def run(input_data: Mapping[str, Any]) -> dict[str, Any]:
        rows = np.asarray(input_data["inputs"], dtype=dtype)
        squeezed = rank > 0 and rows.ndim == rank - 1
        outputs = session.run(None, {first.name: rows[None] if squeezed else rows})[0]
        return {"outputs": (outputs[0] if squeezed else outputs).tolist()}

    return run


def default_runners(model: LocalModel) -> Runner:
    if model.format == "onnx":
        return onnx_runner(model)
    raise NoLocalRunner(f"no runner for {model.format or 'unknown'} files on this device")


def system_conditions() -> dict[str, Any]:
    """What this machine can say of itself: free memory (Linux ``MemAvailable``) and battery
    (``/sys/class/power_supply``); anything it cannot read is left out. Apps on phones pass their own."""
    out: dict[str, Any] = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                out["memory_available_mb"] = int(line.split()[1]) // 1024
    except OSError:
        pass
    for battery in sorted(Path("/sys/class/power_supply").glob("BAT*")):
        try:
            out["battery_level"] = int((battery / "capacity").read_text().strip())
            out["charging"] = (battery / "status").read_text().strip() in ("Charging", "Full")
        except (OSError, ValueError):
            continue
        break
    return out


def device_capabilities() -> dict[str, Any]:
    """Registration ``capabilities`` of this machine: its memory and the runtimes it has."""
    capabilities: dict[str, Any] = {"runtimes": []}
    with contextlib.suppress(ValueError, OSError, AttributeError):  # not POSIX: memory not reported
        capabilities["memory_mb"] = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // (1024 * 1024)
    try:
        import onnxruntime  # noqa: F401

        capabilities["runtimes"].append("onnx")
    except ImportError:
        pass
    return capabilities


class DeviceAgent:
    """A device's loop: heartbeat with its conditions, follow assignments, route inference, report
    telemetry, and (with ``train``) take part in training rounds."""

    def __init__(self, client: TributaryClient, device_id: str, train: Trainer | None = None, *,
                 models_dir: Path | str | None = None, heartbeat_interval_s: float = 30.0,
                 telemetry_interval_s: float = 60.0,
                 conditions: Callable[[], Mapping[str, Any]] = system_conditions,
                 runners: RunnerFactory = default_runners,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        """``conditions`` returns the heartbeat's ``memory_available_mb``, ``battery_level``,
        ``charging`` and ``network`` (what it leaves out is not reported); ``runners`` opens a local
        model file; ``train`` is seed 000's local training (global model bytes or None -> update
        bytes, num_samples, metrics)."""
        self.client = client
        self.device_id = device_id
        self.train = train
        self.heartbeat_interval_s = heartbeat_interval_s
        self.telemetry_interval_s = telemetry_interval_s
        self.conditions = conditions
        self.runners = runners
        self.store = ModelStore(Path(models_dir) if models_dir is not None else Path.home() / ".tributary" / "models"
                                / _safe(device_id))
        self.telemetry = Telemetry(clock)
        self.assignments: dict[str, Assignment] = {}
        self.submitted: set[str] = set()
        self.download_errors: dict[str, str] = {}  # model_id -> why its last download was refused
        self._runners: dict[tuple[str, str], Runner] = {}
        self._runner_lock = threading.Lock()
        self._last_report = time.monotonic()
        self._stop = threading.Event()

    # --- the loop -------------------------------------------------------------------------------
    def metrics(self) -> dict[str, Any]:
        """The heartbeat's metrics: the installed models and the device's conditions."""
        reported = {k: v for k, v in dict(self.conditions()).items() if v is not None}
        if reported.get("network") is not None and reported["network"] not in NETWORKS:
            reported.pop("network")
        return {**reported, "installed_models": [{"model_id": m.model_id, "version": wire_version(m.version),
                                                  "sha256": m.sha256} for m in self.store.installed()]}

    def step(self) -> str | None:
        """One heartbeat; follows the assignments in its answer, reports telemetry when a window is due,
        and trains and submits when a round awaits this device. Returns the round id it submitted to."""
        answer = self.client.heartbeat(self.device_id, self.metrics())
        if "assignments" in answer and answer["assignments"] is not None:
            self.follow(answer["assignments"])
        if time.monotonic() - self._last_report >= self.telemetry_interval_s:
            self.report_telemetry()
        return self._take_part(answer.get("pending_round_id"))

    def refresh(self) -> list[Assignment]:
        """Ask for the assignment now (``GET .../assignment``) and follow it."""
        return self.follow(self.client.assignment(self.device_id).get("assignments") or [])

    def follow(self, entries: Sequence[Mapping[str, Any]]) -> list[Assignment]:
        """Adopt the server's assignments: download what is assigned and may be downloaded, switch to it."""
        assignments = [Assignment.of(entry) for entry in entries]
        self.assignments = {a.model_id: a for a in assignments}
        for assignment in assignments:
            local = self.store.get(assignment.model_id)
            if local is not None and local.version == assignment.version and \
                    (assignment.sha256 is None or local.sha256 == assignment.sha256):
                continue
            if assignment.routing.reason in NO_DOWNLOAD_REASONS or not assignment.download_url:
                continue
            try:
                self.install(assignment)
            except (ModelVerificationFailed, ApiError, httpx.HTTPError, OSError) as exc:
                self.download_errors[assignment.model_id] = str(exc)
        return assignments

    def install(self, assignment: Assignment) -> LocalModel:
        """Download the assigned version, verify it, and switch to it (the old version is dropped)."""
        assert assignment.download_url is not None
        staged = self.store.staging_path(assignment.model_id)
        try:
            downloaded = self.client.download_file(assignment.download_url, staged)
            digest, size = downloaded.sha256, downloaded.size_bytes
            if assignment.sha256 and digest != assignment.sha256:
                raise ModelVerificationFailed(f"{assignment.model_id} v{assignment.version}: sha256 {digest} is not "
                                              f"the assignment's {assignment.sha256}")
            if assignment.size_bytes is not None and size != assignment.size_bytes:
                raise ModelVerificationFailed(f"{assignment.model_id} v{assignment.version}: {size} bytes, the "
                                              f"assignment says {assignment.size_bytes}")
            fmt = _format_of(assignment.download_url, downloaded.filename)
            old = self.store.install(staged, assignment.model_id, assignment.version, digest, fmt)
        finally:
            staged.unlink(missing_ok=True)
        with self._runner_lock:  # the old version's session goes with its file
            if old is not None:
                self._runners.pop((old.model_id, old.version), None)
        self.download_errors.pop(assignment.model_id, None)
        installed = self.store.get(assignment.model_id)
        assert installed is not None
        return installed

    def _take_part(self, round_id: str | None) -> str | None:
        if self.train is None or not round_id or round_id in self.submitted:
            return None
        round_ = self.client.round_status(round_id)
        weights, num_samples, metrics = self.train(self._global_model(round_))
        self.client.submit_update(round_id, weights, num_samples, **metrics)
        self.submitted.add(round_id)
        return str(round_id)

    def _global_model(self, round_: Mapping[str, Any]) -> bytes | None:
        path = round_.get("global_model_path")
        if not path:
            return None
        # s3://bucket/models/<id>/v<N>/model.pt → download through the API, not S3.
        parts = str(path).split("/")
        if "models" in parts and len(parts) >= parts.index("models") + 3:
            model_id, version = parts[parts.index("models") + 1], parts[parts.index("models") + 2].lstrip("v")
            return self.client.download_version(model_id, int(version)).content
        return None

    def report_telemetry(self) -> bool:
        """Send the window so far; True when the server took it (a refused window keeps counting)."""
        self._last_report = time.monotonic()
        closed = self.telemetry.take()
        if closed is None:
            return False
        window, taken = closed
        try:
            self.client.report_telemetry(self.device_id, window)
        except (ApiError, httpx.HTTPError):
            self.telemetry.restore(taken)
            return False
        return True

    def run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(ApiError, httpx.HTTPError):  # server or network away: next interval
                self.step()
            self._stop.wait(self.heartbeat_interval_s)

    def stop(self) -> None:
        self._stop.set()

    # --- inference ------------------------------------------------------------------------------
    def infer(self, model_id: str, input_data: Mapping[str, Any], parameters: Mapping[str, Any] | None = None,
              **cloud: Any) -> InferenceResult:
        """Run one inference where the policy says. ``metadata["served_by"]`` says which ran it
        (``on_device`` or ``cloud``); ``cloud`` keyword arguments go to ``TributaryClient.infer``."""
        assignment = self.assignments.get(model_id)
        version = assignment.version if assignment is not None else None
        started = time.perf_counter()
        local = self.store.get(model_id)
        on_device = (assignment is not None and assignment.routing.decision == "on_device" and local is not None
                     and local.version == assignment.version)
        error = crash = False
        if on_device and local is not None:
            try:
                output = self._runner(local)(input_data)
            except RunnerCrashed:
                crash = error = True
            except Exception:  # the local model failed: the cloud answers instead
                error = True
            else:
                result = InferenceResult(model_id, output, {"served_by": "on_device", "version": local.version})
                self._count(model_id, version, started, answered=True)
                return result
        try:
            answer = self.client.infer(model_id, input_data, parameters, **cloud)
        except Exception:
            self._count(model_id, version, started, answered=False, error=True, crash=crash, cloud=True)
            raise
        self._count(model_id, version, started, answered=True, error=error, crash=crash, cloud=True)
        return InferenceResult(answer.model_id, answer.output_data, {**answer.metadata, "served_by": "cloud"},
                               answer.request_id, answer.error)

    def _runner(self, model: LocalModel) -> Runner:
        key = (model.model_id, model.version)
        with self._runner_lock:
            runner = self._runners.get(key)
            if runner is None:
                runner = self.runners(model)
                self._runners[key] = runner
            return runner

    def _count(self, model_id: str, version: str | None, started: float, *, answered: bool, error: bool = False,
               crash: bool = False, cloud: bool = False) -> None:
        if version is None:  # a model not assigned to this device has no version to report for
            return
        latency = (time.perf_counter() - started) * 1000 if answered else None
        self.telemetry.record(model_id, version, latency_ms=latency, error=error or not answered, crash=crash,
                              cloud=cloud)


def _format_of(download_url: str, filename: str | None) -> str:
    """The file's format: the download URL's ``format`` parameter, else the file name's suffix."""
    query = parse_qs(urlparse(download_url).query)
    if query.get("format"):
        return query["format"][0]
    suffix = (filename or urlparse(download_url).path).rsplit(".", 1)[-1].lower()
    return {v: k for k, v in SUFFIX.items()}.get(suffix, "")


def wire_version(version: str) -> int | str:
    """A catalog version as the server spells it (an integer), kept as text only if it is not one."""
    return int(version) if version.isdigit() else version


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def _hex(digest: Any) -> str:
    return str(digest or "").lower().removeprefix("sha256:")


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")
