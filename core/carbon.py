"""Carbon accounting (seed 003 §1 ``CarbonEmissions``, §2 ``CarbonMetrics``, §5 carbon schemas).

Energy and emissions come from codecarbon (offline mode: no network, no files) and are recorded
per *subject*: a training job or one inference batch. The API:

``CarbonMeter(settings)`` -- a training job's meter, a context manager or ``start()``/``stop()``::

    with CarbonMeter(settings) as meter:
        for step in ...:
            train_step()
            meter.sample()            # optional: a CarbonTimepoint for the job's timeline
    measurement = meter.measurement   # CarbonMeasurement (also what stop() returns)
    job["carbon"] = measurement.metrics()                      # seed CarbonMetrics
    store.record([CarbonRecord.of(SubjectKind.TRAINING_JOB, job_id, model_id, measurement)])

  ``model_id``: the model the job trains (its base model until the adapter's model exists); the
  job's ``CarbonMetrics`` is ``job_metrics(store.for_subject(SubjectKind.TRAINING_JOB, job_id))``.
  A job measured in segments (stopped, resumed in another process) records one record per segment
  (each with its own ``recorded_at``); the breakdown and metrics add them up.

  It runs codecarbon's ``OfflineEmissionsTracker`` in ``tracking_mode="process"`` with the
  configured country (``TRIBUTARY_CARBON_COUNTRY_ISO``) or intensity
  (``TRIBUTARY_CARBON_INTENSITY_G_PER_KWH``), ``output_methods=[]`` (no CSV, API, logger or
  Prometheus output) and a temporary output dir.
  Starting a tracker costs ~1.8 s the first time in a process (hardware probe) and 30-80 ms
  after, so it is used for training jobs, not per inference batch.

``PowerModel.from_codecarbon(settings)`` + ``CpuTimeMeter`` -- per inference batch. The model takes
  codecarbon's own numbers once per process (CPU TDP from its table or its 4 W-per-thread default,
  thread count, RAM power for this process's memory, grid intensity for the country) and prices a
  batch as ``cpu_seconds x TDP/threads + ram_watts x wall_seconds`` -- the same formula codecarbon's
  process mode applies between two samples when there is no RAPL (CPU load x TDP). ``CpuTimeMeter``
  splits the process's CPU time among the batches running at once, so overlapping batches do not
  count the same CPU second twice.

``CarbonStore`` -- records by (subject kind, subject id, model id, timestamp); ``InMemoryCarbonStore``
  here, ``CassandraCarbonStore`` in ``core/cassandra_carbon.py``; ``tests/carbon_store_contract.py``
  runs against both. ``summarize``/``job_details``/``model_emissions`` turn records into the seed's
  ``CarbonSummary``, ``JobCarbonDetails`` and ``CarbonEmissions``.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from functools import lru_cache
from typing import Any

from schemas.clock import utcnow
from settings import Settings

log = logging.getLogger(__name__)

JOULES_PER_KWH = 3_600_000.0


class SubjectKind(StrEnum):
    TRAINING_JOB = "training_job"
    INFERENCE_BATCH = "inference_batch"


@dataclass(frozen=True)
class CarbonBreakdown:
    """Seed ``CarbonBreakdown``: average power and energy per component."""

    cpu_power_w: float = 0.0
    gpu_power_w: float = 0.0
    ram_power_w: float = 0.0
    cpu_energy_kwh: float = 0.0
    gpu_energy_kwh: float = 0.0
    ram_energy_kwh: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {"gpu_power_w": self.gpu_power_w, "cpu_power_w": self.cpu_power_w, "ram_power_w": self.ram_power_w,
                "gpu_energy_kwh": self.gpu_energy_kwh, "cpu_energy_kwh": self.cpu_energy_kwh,
                "ram_energy_kwh": self.ram_energy_kwh}


@dataclass(frozen=True)
class CarbonTimepoint:
    """Seed ``CarbonTimepoint``: emissions so far at ``timestamp`` and the power since the last point."""

    timestamp: datetime
    emissions_kg: float
    power_w: float

    def as_dict(self) -> dict[str, Any]:
        return {"timestamp": self.timestamp, "emissions_kg": self.emissions_kg, "power_w": self.power_w}


@dataclass(frozen=True)
class CarbonMeasurement:
    """What one meter measured: energy (kWh), emissions (kg CO2e), intensity (g/kWh)."""

    energy_kwh: float
    emissions_kg: float
    duration_seconds: float
    carbon_intensity: float  # g CO2e per kWh
    location: str
    breakdown: CarbonBreakdown = field(default_factory=CarbonBreakdown)
    timeline: tuple[CarbonTimepoint, ...] = ()

    @property
    def emissions_g(self) -> float:
        return self.emissions_kg * 1000.0

    def metrics(self) -> dict[str, Any]:
        """Seed ``CarbonMetrics`` (``TrainingJob.carbon``)."""
        return {"emissions_kg": self.emissions_kg, "energy_kwh": self.energy_kwh,
                "duration_seconds": self.duration_seconds, "carbon_intensity": self.carbon_intensity,
                "location": self.location, "breakdown": self.breakdown.as_dict()}


@dataclass(frozen=True)
class CarbonRecord:
    """One stored measurement of one subject. ``requests``: inference requests the batch answered
    (0 for a training job). A subject may have several records (a job measured in segments, e.g.
    before and after a resume); (kind, id, recorded_at) identifies a record, rewriting it is a no-op."""

    subject_kind: SubjectKind
    subject_id: str
    model_id: str
    recorded_at: datetime
    measurement: CarbonMeasurement
    requests: int = 0

    @classmethod
    def of(cls, kind: SubjectKind, subject_id: str, model_id: str, measurement: CarbonMeasurement, *,
           requests: int = 0, recorded_at: datetime | None = None) -> CarbonRecord:
        return cls(kind, subject_id, model_id, recorded_at or utcnow(), measurement, requests)


# ---------------------------------------------------------------------------------------------
# Store


class CarbonStore(ABC):
    @abstractmethod
    def record(self, records: Sequence[CarbonRecord]) -> None:
        """Store records; a record with the same (kind, subject id, recorded_at) replaces the old one."""

    @abstractmethod
    def between(self, start: datetime, end: datetime) -> list[CarbonRecord]:
        """Records with ``start <= recorded_at < end``, oldest first."""

    @abstractmethod
    def for_subject(self, kind: SubjectKind, subject_id: str) -> list[CarbonRecord]:
        """Every record of one subject, oldest first."""

    @abstractmethod
    def for_model(self, model_id: str) -> list[CarbonRecord]:
        """Every record of one model (training and inference), oldest first."""


class InMemoryCarbonStore(CarbonStore):
    def __init__(self) -> None:
        self._rows: dict[tuple[str, str, datetime], CarbonRecord] = {}
        self._lock = threading.Lock()

    def record(self, records: Sequence[CarbonRecord]) -> None:
        with self._lock:
            for r in records:
                self._rows[(r.subject_kind.value, r.subject_id, r.recorded_at)] = r

    def _sorted(self, keep: Callable[[CarbonRecord], bool]) -> list[CarbonRecord]:
        with self._lock:
            rows = [r for r in self._rows.values() if keep(r)]
        return sorted(rows, key=lambda r: (r.recorded_at, r.subject_kind.value, r.subject_id))

    def between(self, start: datetime, end: datetime) -> list[CarbonRecord]:
        return self._sorted(lambda r: start <= r.recorded_at < end)

    def for_subject(self, kind: SubjectKind, subject_id: str) -> list[CarbonRecord]:
        return self._sorted(lambda r: r.subject_kind is kind and r.subject_id == subject_id)

    def for_model(self, model_id: str) -> list[CarbonRecord]:
        return self._sorted(lambda r: r.model_id == model_id)


# ---------------------------------------------------------------------------------------------
# Aggregation into the seed's shapes


def _combine(measurements: Sequence[CarbonMeasurement]) -> CarbonMeasurement | None:
    """Sum of segments: energies and durations add; powers are duration-weighted averages."""
    if not measurements:
        return None
    energy = sum(m.energy_kwh for m in measurements)
    emissions = sum(m.emissions_kg for m in measurements)
    duration = sum(m.duration_seconds for m in measurements)

    def avg_power(get: Callable[[CarbonBreakdown], float]) -> float:
        if duration <= 0:
            return 0.0
        return sum(get(m.breakdown) * m.duration_seconds for m in measurements) / duration

    breakdown = CarbonBreakdown(
        cpu_power_w=avg_power(lambda b: b.cpu_power_w), gpu_power_w=avg_power(lambda b: b.gpu_power_w),
        ram_power_w=avg_power(lambda b: b.ram_power_w),
        cpu_energy_kwh=sum(m.breakdown.cpu_energy_kwh for m in measurements),
        gpu_energy_kwh=sum(m.breakdown.gpu_energy_kwh for m in measurements),
        ram_energy_kwh=sum(m.breakdown.ram_energy_kwh for m in measurements))
    # the intensity that turns the total energy into the total emissions (the same one when constant)
    intensity = emissions * 1000.0 / energy if energy > 0 else measurements[-1].carbon_intensity
    offset = 0.0
    timeline: list[CarbonTimepoint] = []
    for m in measurements:  # later segments continue the cumulative emissions of earlier ones
        timeline.extend(CarbonTimepoint(p.timestamp, p.emissions_kg + offset, p.power_w) for p in m.timeline)
        offset += m.emissions_kg
    locations = sorted({m.location for m in measurements})
    return CarbonMeasurement(energy, emissions, duration, intensity, ", ".join(locations), breakdown,
                             tuple(timeline))


def job_details(job_id: str, records: Sequence[CarbonRecord]) -> dict[str, Any] | None:
    """Seed ``JobCarbonDetails`` of a training job's records; None when it has none."""
    total = _combine([r.measurement for r in sorted(records, key=lambda r: r.recorded_at)])
    if total is None:
        return None
    return {"job_id": job_id, "total_emissions_kg": total.emissions_kg, "total_energy_kwh": total.energy_kwh,
            "duration_seconds": total.duration_seconds, "carbon_intensity": total.carbon_intensity,
            "location": total.location, "breakdown": total.breakdown.as_dict(),
            "timeline": [p.as_dict() for p in total.timeline]}


def job_metrics(records: Sequence[CarbonRecord]) -> dict[str, Any] | None:
    """Seed ``CarbonMetrics`` of a training job (``TrainingJob.carbon``); None when not measured yet."""
    total = _combine([r.measurement for r in sorted(records, key=lambda r: r.recorded_at)])
    return None if total is None else total.metrics()


def model_emissions(records: Iterable[CarbonRecord]) -> dict[str, Any]:
    """Seed ``CarbonEmissions`` of one model from its records."""
    training = [r for r in records if r.subject_kind is SubjectKind.TRAINING_JOB]
    inference = [r for r in records if r.subject_kind is SubjectKind.INFERENCE_BATCH]
    return {"training_kg": sum(r.measurement.emissions_kg for r in training),
            "training_duration_hours": sum(r.measurement.duration_seconds for r in training) / 3600.0,
            "training_energy_kwh": sum(r.measurement.energy_kwh for r in training),
            "inference_kg": sum(r.measurement.emissions_kg for r in inference),
            "inference_requests": sum(r.requests for r in inference)}


def summarize(records: Iterable[CarbonRecord], start: datetime, end: datetime,
              model_names: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Seed ``CarbonSummary`` over ``[start, end)``; ``by_model`` is sorted by emissions, largest first."""
    rows = [r for r in records if start <= r.recorded_at < end]
    training = [r for r in rows if r.subject_kind is SubjectKind.TRAINING_JOB]
    inference = [r for r in rows if r.subject_kind is SubjectKind.INFERENCE_BATCH]
    total_kg = sum(r.measurement.emissions_kg for r in rows)
    per_model: dict[str, float] = defaultdict(float)
    for r in rows:
        per_model[r.model_id] += r.measurement.emissions_kg
    names = model_names or {}
    by_model = [{"model_id": m, "model_name": names.get(m, m), "emissions_kg": kg,
                 "percentage": min(100.0, kg / total_kg * 100.0) if total_kg > 0 else 0.0}
                for m, kg in sorted(per_model.items(), key=lambda item: (-item[1], item[0]))]
    return {"total_emissions_kg": total_kg,
            "training_emissions_kg": sum(r.measurement.emissions_kg for r in training),
            "inference_emissions_kg": sum(r.measurement.emissions_kg for r in inference),
            "total_energy_kwh": sum(r.measurement.energy_kwh for r in rows),
            "num_training_jobs": len({r.subject_id for r in training}),
            "num_inference_requests": sum(r.requests for r in inference),
            "period": {"start": start, "end": end},
            "by_model": by_model}


# ---------------------------------------------------------------------------------------------
# Measuring


def _codecarbon_kwargs(settings: Settings, output_dir: str) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "country_iso_code": settings.carbon_country_iso, "output_methods": [], "output_dir": output_dir,
        "tracking_mode": "process", "log_level": "error", "measure_power_secs": settings.carbon_tracking_interval_s,
        "allow_multiple_runs": True,
    }
    if settings.carbon_intensity_g_per_kwh is not None:
        kwargs["force_carbon_intensity_g_co2e_kwh"] = settings.carbon_intensity_g_per_kwh
    return kwargs


@lru_cache(maxsize=16)
def grid_intensity(country_iso: str, forced_g_per_kwh: float | None) -> tuple[float, str]:
    """(g CO2e/kWh, location) for a country from codecarbon's offline energy-mix data, or the forced value."""
    from codecarbon.core.emissions import Emissions
    from codecarbon.core.units import Energy
    from codecarbon.external.geography import GeoMetadata
    from codecarbon.input import DataSource

    source = DataSource()  # type: ignore[no-untyped-call]
    mix = source.get_global_energy_mix_data().get(country_iso)
    if mix is None and forced_g_per_kwh is None:
        raise ValueError(f"codecarbon has no energy mix for country {country_iso!r}; set TRIBUTARY_CARBON_COUNTRY_ISO "
                         "to an ISO 3166-1 alpha-3 code or TRIBUTARY_CARBON_INTENSITY_G_PER_KWH")
    location = f"{mix['country_name']} ({country_iso})" if mix else country_iso
    if forced_g_per_kwh is not None:
        return float(forced_g_per_kwh), location
    geo = GeoMetadata(country_iso_code=country_iso, country_name=mix["country_name"] if mix else None)
    kg_per_kwh = Emissions(source).get_country_emissions(Energy.from_energy(kWh=1.0), geo)
    return float(kg_per_kwh) * 1000.0, location


@dataclass(frozen=True)
class PowerModel:
    """Per-process power of a CPU machine as codecarbon models it without RAPL.

    ``cpu_watts_per_busy_thread`` = the CPU's TDP / its hardware threads (a process busy on one
    thread draws that; idle draws nothing attributed to it), ``ram_watts`` = codecarbon's RAM model
    for this process's memory, ``gpu_watts`` = 0 (no GPU is tracked on these workers)."""

    cpu_watts_per_busy_thread: float
    ram_watts: float
    carbon_intensity: float  # g CO2e/kWh
    location: str
    method: str = ""

    @classmethod
    def from_codecarbon(cls, settings: Settings) -> PowerModel:
        from codecarbon.core.cpu import TDP
        from codecarbon.core.util import count_cpus, count_physical_cpus
        from codecarbon.external.hardware import POWER_CONSTANT
        from codecarbon.external.ram import RAM

        # codecarbon's CPU table; an unknown CPU gets its 4 W-per-thread default
        tdp = TDP()  # type: ignore[no-untyped-call]
        threads = max(1, int(count_cpus()))
        if tdp.tdp is not None:
            sockets = max(1, int(count_physical_cpus()))  # type: ignore[no-untyped-call]
            machine_w, source = float(tdp.tdp) * sockets, f"TDP of {tdp.model}"
        else:
            machine_w, source = float(POWER_CONSTANT), "codecarbon's generic CPU constant"
        ram_w = float(RAM(tracking_mode="process").total_power().W)
        intensity, location = grid_intensity(settings.carbon_country_iso, settings.carbon_intensity_g_per_kwh)
        method = (f"codecarbon {_codecarbon_version()} cpu-load x TDP: {machine_w:g} W ({source}) / {threads} "
                  f"threads per busy thread-second; RAM {ram_w:g} W while a batch runs; {intensity:g} g/kWh")
        return cls(machine_w / threads, ram_w, intensity, location, method)

    def measure(self, cpu_seconds: float, wall_seconds: float) -> CarbonMeasurement:
        cpu_kwh = max(0.0, cpu_seconds) * self.cpu_watts_per_busy_thread / JOULES_PER_KWH
        ram_kwh = max(0.0, wall_seconds) * self.ram_watts / JOULES_PER_KWH
        energy = cpu_kwh + ram_kwh
        cpu_w = cpu_kwh * JOULES_PER_KWH / wall_seconds if wall_seconds > 0 else 0.0
        breakdown = CarbonBreakdown(cpu_power_w=cpu_w, ram_power_w=self.ram_watts if wall_seconds > 0 else 0.0,
                                    cpu_energy_kwh=cpu_kwh, ram_energy_kwh=ram_kwh)
        return CarbonMeasurement(energy, energy * self.carbon_intensity / 1000.0, max(0.0, wall_seconds),
                                 self.carbon_intensity, self.location, breakdown)


def _codecarbon_version() -> str:
    from importlib.metadata import version
    return version("codecarbon")


class CpuTimeMeter:
    """Process CPU time and wall time of spans that may overlap (batches of different models).

    Between any two span boundaries the process's CPU time is split evenly among the spans open
    then, so the CPU seconds of all spans add up to the process's (none counted twice)."""

    def __init__(self, cpu_clock: Callable[[], float] = time.process_time,
                 wall_clock: Callable[[], float] = time.monotonic) -> None:
        self.cpu_clock, self.wall_clock = cpu_clock, wall_clock
        self._lock = threading.Lock()
        self._open: dict[int, list[float]] = {}  # token -> [cpu seconds so far, wall start]
        self._last_cpu = 0.0
        self._tokens = 0

    def _advance(self) -> None:
        now = self.cpu_clock()
        if self._open:
            share = (now - self._last_cpu) / len(self._open)
            for span in self._open.values():
                span[0] += share
        self._last_cpu = now

    def start(self) -> int:
        with self._lock:
            self._advance()
            self._tokens += 1
            self._open[self._tokens] = [0.0, self.wall_clock()]
            return self._tokens

    def stop(self, token: int) -> tuple[float, float]:
        """(CPU seconds, wall seconds) of the span."""
        with self._lock:
            self._advance()
            cpu, wall_start = self._open.pop(token)
            return cpu, self.wall_clock() - wall_start


class CarbonMeter:
    """A training job's meter on codecarbon's ``OfflineEmissionsTracker`` (see the module docstring).

    ``tracker_factory`` builds the tracker from codecarbon's keyword arguments (tests pass a fake).
    ``sample()`` flushes the tracker and appends a ``CarbonTimepoint`` (each flush measures power,
    a few ms). With ``auto_sample`` (the default) a thread of the meter samples every
    ``TRIBUTARY_CARBON_TRACKING_INTERVAL_S``, so a job's timeline fills without the trainer's help."""

    def __init__(self, settings: Settings, *, tracker_factory: Callable[..., Any] | None = None,
                 clock: Callable[[], datetime] = utcnow, monotonic: Callable[[], float] = time.monotonic,
                 auto_sample: bool = True) -> None:
        self.settings = settings
        self.auto_sample = auto_sample
        self._lock = threading.Lock()
        self._stop_sampling = threading.Event()
        self._sampler: threading.Thread | None = None
        self.clock, self.monotonic = clock, monotonic
        self._factory = tracker_factory
        self._tracker: Any = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._timeline: list[CarbonTimepoint] = []
        self._started = 0.0
        self._last = (0.0, 0.0)  # (monotonic, energy kWh) at the last sample
        self.intensity, self.location = 0.0, settings.carbon_country_iso
        self.measurement: CarbonMeasurement | None = None

    @property
    def timeline(self) -> tuple[CarbonTimepoint, ...]:
        """The points sampled so far (the job's timeline while it runs)."""
        with self._lock:
            return tuple(self._timeline)

    def __enter__(self) -> CarbonMeter:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        if self._tracker is not None:
            raise RuntimeError("CarbonMeter already started")
        self.intensity, self.location = grid_intensity(self.settings.carbon_country_iso,
                                                       self.settings.carbon_intensity_g_per_kwh)
        self._dir = tempfile.TemporaryDirectory(prefix="tributary-carbon-")  # codecarbon wants one; nothing lands
        kwargs = _codecarbon_kwargs(self.settings, self._dir.name)
        if self._factory is None:
            from codecarbon import OfflineEmissionsTracker
            self._tracker = OfflineEmissionsTracker(**kwargs)
        else:
            self._tracker = self._factory(**kwargs)
        self._tracker.start()
        self._started = self.monotonic()
        self._last = (self._started, 0.0)
        if self.auto_sample:
            self._stop_sampling.clear()
            self._sampler = threading.Thread(target=self._sample_periodically, name="carbon-meter", daemon=True)
            self._sampler.start()

    def _sample_periodically(self) -> None:
        while not self._stop_sampling.wait(self.settings.carbon_tracking_interval_s):
            try:
                self.sample()
            except Exception:  # never let the meter take the job down
                log.exception("carbon sample failed")

    def sample(self) -> CarbonTimepoint | None:
        """Flush the tracker and add a timepoint; None when codecarbon could not measure."""
        with self._lock:
            tracker = self._tracker
            if tracker is None:
                raise RuntimeError("CarbonMeter not started")
            emissions_kg = tracker.flush()  # codecarbon returns None when it swallowed an error
            if emissions_kg is None:
                return None
            return self._point(float(emissions_kg), self.monotonic())

    def _point(self, emissions_kg: float, now: float) -> CarbonTimepoint:
        energy = emissions_kg * 1000.0 / self.intensity if self.intensity > 0 else 0.0
        last_t, last_e = self._last
        power = (energy - last_e) * JOULES_PER_KWH / (now - last_t) if now > last_t else 0.0
        self._last = (now, energy)
        point = CarbonTimepoint(self.clock(), emissions_kg, max(0.0, power))
        self._timeline.append(point)
        return point

    def stop(self) -> CarbonMeasurement | None:
        """Stop the tracker; the measurement, or None when codecarbon measured nothing."""
        self._stop_sampling.set()
        if self._sampler is not None:
            self._sampler.join()
            self._sampler = None
        with self._lock:
            if self._tracker is None:
                return self.measurement
            tracker, self._tracker = self._tracker, None
            try:
                tracker.stop()
                data = getattr(tracker, "final_emissions_data", None)
            finally:
                if self._dir is not None:
                    self._dir.cleanup()
        if data is None:
            log.warning("codecarbon produced no measurement")
            return None
        now = self.monotonic()
        if not self._timeline or now > self._last[0]:  # the run's last point: its total
            self._point(float(data.emissions), now)
        energy = float(data.energy_consumed)
        intensity = float(data.emissions) * 1000.0 / energy if energy > 0 else self.intensity
        duration = float(data.duration)

        def average_w(kwh: float) -> float:  # codecarbon's *_power fields are the last sample only
            return kwh * JOULES_PER_KWH / duration if duration > 0 else 0.0

        breakdown = CarbonBreakdown(
            cpu_power_w=average_w(float(data.cpu_energy)), gpu_power_w=average_w(float(data.gpu_energy)),
            ram_power_w=average_w(float(data.ram_energy)), cpu_energy_kwh=float(data.cpu_energy),
            gpu_energy_kwh=float(data.gpu_energy),
            ram_energy_kwh=float(data.ram_energy))
        self.measurement = CarbonMeasurement(energy, float(data.emissions), duration, intensity,
                                             self.location, breakdown, tuple(self._timeline))
        return self.measurement
