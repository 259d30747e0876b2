"""Carbon accounting without codecarbon's hardware: meters on fake clocks/trackers, aggregation math."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from core.carbon import (
    JOULES_PER_KWH,
    CarbonBreakdown,
    CarbonMeasurement,
    CarbonMeter,
    CarbonRecord,
    CpuTimeMeter,
    PowerModel,
    SubjectKind,
    job_details,
    job_metrics,
    model_emissions,
    summarize,
)
from settings import Settings

pytestmark = pytest.mark.unit

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.value = 0.0

    def __call__(self) -> float:
        return self.value


def test_cpu_time_meter_gives_a_lone_span_all_process_cpu_time() -> None:
    cpu, wall = Clock(), Clock()
    meter = CpuTimeMeter(cpu, wall)
    token = meter.start()
    cpu.value, wall.value = 0.3, 0.5
    assert meter.stop(token) == pytest.approx((0.3, 0.5))


def test_cpu_time_meter_splits_overlapping_spans_without_double_counting() -> None:
    cpu, wall = Clock(), Clock()
    meter = CpuTimeMeter(cpu, wall)
    a = meter.start()
    cpu.value, wall.value = 1.0, 1.0   # a alone: 1.0 s
    b = meter.start()
    cpu.value, wall.value = 3.0, 2.0   # a and b together: 2.0 s, 1.0 each
    a_cpu, a_wall = meter.stop(a)
    cpu.value, wall.value = 3.5, 3.0   # b alone: 0.5 s
    b_cpu, b_wall = meter.stop(b)
    assert (a_cpu, a_wall) == pytest.approx((2.0, 2.0))
    assert (b_cpu, b_wall) == pytest.approx((1.5, 2.0))
    assert a_cpu + b_cpu == pytest.approx(3.5)  # the process's CPU time, once


def test_power_model_prices_cpu_seconds_at_tdp_per_thread_and_ram_by_wall_time() -> None:
    model = PowerModel(cpu_watts_per_busy_thread=4.0, ram_watts=10.0, carbon_intensity=400.0, location="DEU")
    m = model.measure(cpu_seconds=0.5, wall_seconds=0.25)
    cpu_kwh, ram_kwh = 0.5 * 4.0 / JOULES_PER_KWH, 0.25 * 10.0 / JOULES_PER_KWH
    assert m.breakdown.cpu_energy_kwh == pytest.approx(cpu_kwh)
    assert m.breakdown.ram_energy_kwh == pytest.approx(ram_kwh)
    assert m.energy_kwh == pytest.approx(cpu_kwh + ram_kwh)
    assert m.emissions_kg == pytest.approx((cpu_kwh + ram_kwh) * 0.4)
    assert m.emissions_g == pytest.approx(m.emissions_kg * 1000)
    assert m.breakdown.cpu_power_w == pytest.approx(8.0)  # two busy threads on average
    assert m.duration_seconds == 0.25 and m.carbon_intensity == 400.0 and m.location == "DEU"


def test_power_model_from_codecarbon_uses_the_configured_intensity() -> None:
    model = PowerModel.from_codecarbon(Settings(carbon_country_iso="FRA", carbon_intensity_g_per_kwh=123.0))
    assert model.carbon_intensity == 123.0
    assert model.cpu_watts_per_busy_thread > 0 and model.ram_watts > 0
    assert model.location == "France (FRA)" and "TDP" in model.method


def test_power_model_from_codecarbon_reads_the_country_mix() -> None:
    france = PowerModel.from_codecarbon(Settings(carbon_country_iso="FRA"))
    germany = PowerModel.from_codecarbon(Settings(carbon_country_iso="DEU"))
    assert 0 < france.carbon_intensity < germany.carbon_intensity  # nuclear vs coal-and-gas grid


def test_unknown_country_without_intensity_is_refused() -> None:
    with pytest.raises(ValueError, match="TRIBUTARY_CARBON_COUNTRY_ISO"):
        PowerModel.from_codecarbon(Settings(carbon_country_iso="XXX"))


class FakeTracker:
    """Stands in for OfflineEmissionsTracker: cumulative emissions per flush, final data at stop."""

    instances: list[FakeTracker] = []

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.flushes = iter([2e-6, 5e-6])
        self.final_emissions_data: Any = None
        FakeTracker.instances.append(self)

    def start(self) -> None:
        pass

    def flush(self) -> float:
        return next(self.flushes)

    def stop(self) -> float:
        self.final_emissions_data = SimpleNamespace(
            emissions=8e-6, energy_consumed=2e-5, duration=30.0, cpu_energy=5e-6, gpu_energy=0.0, ram_energy=1.5e-5,
            cpu_power=99.0, gpu_power=0.0, ram_power=10.0)
        return 8e-6


def test_carbon_meter_runs_codecarbon_offline_without_files_and_builds_a_timeline() -> None:
    ticks = iter([0.0, 10.0, 20.0, 30.0])
    settings = Settings(carbon_country_iso="DEU", carbon_intensity_g_per_kwh=400.0, carbon_tracking_interval_s=10)
    meter = CarbonMeter(settings, tracker_factory=FakeTracker, clock=lambda: T0, monotonic=lambda: next(ticks),
                        auto_sample=False)
    with meter:
        first = meter.sample()
        second = meter.sample()
    tracker = FakeTracker.instances[-1]
    assert tracker.kwargs["output_methods"] == [] and tracker.kwargs["country_iso_code"] == "DEU"
    assert tracker.kwargs["force_carbon_intensity_g_co2e_kwh"] == 400.0
    assert tracker.kwargs["tracking_mode"] == "process" and tracker.kwargs["measure_power_secs"] == 10
    # 2e-6 kg at 400 g/kWh = 5e-6 kWh in 10 s = 1.8 W
    assert first is not None and first.power_w == pytest.approx(5e-6 * JOULES_PER_KWH / 10)
    assert second is not None and second.power_w == pytest.approx(7.5e-6 * JOULES_PER_KWH / 10)
    m = meter.measurement
    assert m is not None
    assert (m.energy_kwh, m.emissions_kg, m.duration_seconds) == (2e-5, 8e-6, 30.0)
    assert m.carbon_intensity == pytest.approx(400.0) and m.location == "Germany (DEU)"
    # average power over the run, not codecarbon's last sample (99 W)
    assert m.breakdown.cpu_power_w == pytest.approx(5e-6 * JOULES_PER_KWH / 30)
    assert [p.emissions_kg for p in m.timeline] == [2e-6, 5e-6, 8e-6]
    assert m.metrics()["breakdown"]["ram_energy_kwh"] == 1.5e-5


def test_carbon_meter_with_real_codecarbon_measures_energy() -> None:
    settings = Settings(carbon_country_iso="FRA")
    with CarbonMeter(settings) as meter:
        sum(i * i for i in range(200_000))
    m = meter.measurement
    assert m is not None and m.energy_kwh > 0 and m.emissions_kg > 0 and m.duration_seconds > 0
    assert m.carbon_intensity == pytest.approx(PowerModel.from_codecarbon(settings).carbon_intensity)


def _m(kwh: float, kg: float, seconds: float, intensity: float = 400.0, location: str = "DEU",
       cpu_w: float = 0.0) -> CarbonMeasurement:
    return CarbonMeasurement(kwh, kg, seconds, intensity, location,
                             CarbonBreakdown(cpu_power_w=cpu_w, cpu_energy_kwh=kwh))


def test_summary_adds_kinds_counts_jobs_and_requests_and_ranks_models() -> None:
    records = [
        CarbonRecord(SubjectKind.TRAINING_JOB, "job-1", "m-a", T0, _m(1.0, 0.4, 10)),
        CarbonRecord(SubjectKind.TRAINING_JOB, "job-1", "m-a", T0 + timedelta(minutes=1), _m(0.5, 0.2, 5)),
        CarbonRecord(SubjectKind.TRAINING_JOB, "job-2", "m-b", T0, _m(0.25, 0.1, 5)),
        CarbonRecord(SubjectKind.INFERENCE_BATCH, "b-1", "m-b", T0, _m(0.5, 0.2, 1), requests=3),
        CarbonRecord(SubjectKind.INFERENCE_BATCH, "b-2", "m-c", T0, _m(0.25, 0.1, 1), requests=2),
        CarbonRecord(SubjectKind.INFERENCE_BATCH, "late", "m-c", T0 + timedelta(hours=2), _m(9, 9, 1), requests=9),
    ]
    s = summarize(records, T0, T0 + timedelta(hours=1), {"m-a": "Model A"})
    assert s["total_emissions_kg"] == pytest.approx(1.0)
    assert s["training_emissions_kg"] == pytest.approx(0.7)
    assert s["inference_emissions_kg"] == pytest.approx(0.3)
    assert s["total_energy_kwh"] == pytest.approx(2.5)
    assert s["num_training_jobs"] == 2 and s["num_inference_requests"] == 5
    assert s["period"] == {"start": T0, "end": T0 + timedelta(hours=1)}
    assert [(m["model_id"], m["model_name"]) for m in s["by_model"]] == [
        ("m-a", "Model A"), ("m-b", "m-b"), ("m-c", "m-c")]
    assert [m["percentage"] for m in s["by_model"]] == pytest.approx([60.0, 30.0, 10.0])


def test_summary_of_nothing_is_zeros_not_a_division_error() -> None:
    s = summarize([], T0, T0 + timedelta(days=1))
    assert s["total_emissions_kg"] == 0 and s["by_model"] == [] and s["num_inference_requests"] == 0


def test_job_details_combine_segments_with_weighted_power_and_continued_timeline() -> None:
    from core.carbon import CarbonTimepoint
    first = CarbonMeasurement(1.0, 0.4, 10.0, 400.0, "DEU", CarbonBreakdown(cpu_power_w=10.0, cpu_energy_kwh=1.0),
                              (CarbonTimepoint(T0, 0.4, 10.0),))
    resumed = CarbonMeasurement(0.5, 0.1, 30.0, 200.0, "FRA", CarbonBreakdown(cpu_power_w=2.0, cpu_energy_kwh=0.5),
                                (CarbonTimepoint(T0 + timedelta(minutes=5), 0.1, 2.0),))
    records = [CarbonRecord(SubjectKind.TRAINING_JOB, "job-1", "m", T0 + timedelta(minutes=5), resumed),
               CarbonRecord(SubjectKind.TRAINING_JOB, "job-1", "m", T0, first)]
    d = job_details("job-1", records)
    assert d is not None
    assert d["total_energy_kwh"] == 1.5 and d["total_emissions_kg"] == pytest.approx(0.5)
    assert d["duration_seconds"] == 40.0
    assert d["carbon_intensity"] == pytest.approx(0.5 * 1000 / 1.5)
    assert d["breakdown"]["cpu_power_w"] == pytest.approx((10 * 10 + 2 * 30) / 40)
    assert d["location"] == "DEU, FRA"
    assert [p["emissions_kg"] for p in d["timeline"]] == pytest.approx([0.4, 0.5])
    metrics = job_metrics(records)
    assert metrics is not None and metrics["emissions_kg"] == pytest.approx(0.5)
    assert job_details("job-2", []) is None and job_metrics([]) is None


def test_model_emissions_split_training_and_inference() -> None:
    records = [CarbonRecord(SubjectKind.TRAINING_JOB, "job-1", "m", T0, _m(0.8, 0.45, 9000)),
               CarbonRecord(SubjectKind.INFERENCE_BATCH, "b-1", "m", T0, _m(0.1, 0.05, 1), requests=4)]
    e = model_emissions(records)
    assert e == {"training_kg": 0.45, "training_duration_hours": 2.5, "training_energy_kwh": 0.8,
                 "inference_kg": 0.05, "inference_requests": 4}


def test_carbon_meter_samples_on_its_own_every_tracking_interval() -> None:
    settings = Settings(carbon_country_iso="FRA", carbon_tracking_interval_s=0.2)
    with CarbonMeter(settings) as meter:
        deadline = time.monotonic() + 10
        while len(meter.timeline) < 3 and time.monotonic() < deadline:
            sum(i * i for i in range(20_000))
    m = meter.measurement
    assert m is not None and len(m.timeline) >= 4  # three or more samples, then the final point
    emissions = [p.emissions_kg for p in m.timeline]
    assert emissions == sorted(emissions) and emissions[-1] == m.emissions_kg
