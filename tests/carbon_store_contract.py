"""One test suite for every ``CarbonStore`` (memory in unit, Cassandra in integration).

Each implementation's module defines a ``carbon_store`` fixture and does
``from tests.carbon_store_contract import *``.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from core.carbon import CarbonBreakdown, CarbonMeasurement, CarbonRecord, CarbonStore, CarbonTimepoint, SubjectKind

T0 = datetime(2026, 11, 1, 23, 59, 58, tzinfo=UTC)  # two seconds before a UTC day boundary


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def measurement(kwh: float, *, timeline: tuple[CarbonTimepoint, ...] = ()) -> CarbonMeasurement:
    return CarbonMeasurement(energy_kwh=kwh, emissions_kg=kwh * 0.4, duration_seconds=2.5, carbon_intensity=400.0,
                             location="Germany (DEU)",
                             breakdown=CarbonBreakdown(cpu_power_w=3.5, ram_power_w=10.0, cpu_energy_kwh=kwh / 4,
                                                       ram_energy_kwh=kwh * 3 / 4),
                             timeline=timeline)


def test_record_reads_back_every_field_on_each_path(carbon_store: CarbonStore) -> None:
    job, model = uid("job"), uid("model")
    points = (CarbonTimepoint(T0, 1e-6, 12.5), CarbonTimepoint(T0 + timedelta(seconds=15), 3e-6, 13.0))
    record = CarbonRecord(SubjectKind.TRAINING_JOB, job, model, T0, measurement(1e-5, timeline=points))
    carbon_store.record([record])
    assert carbon_store.for_subject(SubjectKind.TRAINING_JOB, job) == [record]
    assert carbon_store.for_model(model) == [record]
    assert record in carbon_store.between(T0, T0 + timedelta(milliseconds=1))


def test_rewriting_a_record_replaces_it(carbon_store: CarbonStore) -> None:
    batch, model = uid("batch"), uid("model")
    first = CarbonRecord(SubjectKind.INFERENCE_BATCH, batch, model, T0, measurement(1e-6), requests=3)
    again = CarbonRecord(SubjectKind.INFERENCE_BATCH, batch, model, T0, measurement(2e-6), requests=3)
    carbon_store.record([first])
    carbon_store.record([again])  # a redelivered write
    assert carbon_store.for_subject(SubjectKind.INFERENCE_BATCH, batch) == [again]
    assert carbon_store.for_model(model) == [again]


def test_subject_and_model_reads_are_oldest_first_and_separate(carbon_store: CarbonStore) -> None:
    job, model, other_model = uid("job"), uid("model"), uid("model")
    later = CarbonRecord(SubjectKind.TRAINING_JOB, job, model, T0 + timedelta(seconds=30), measurement(2e-5))
    earlier = CarbonRecord(SubjectKind.TRAINING_JOB, job, model, T0, measurement(1e-5))
    batch = CarbonRecord(SubjectKind.INFERENCE_BATCH, uid("batch"), model, T0 + timedelta(seconds=1),
                         measurement(1e-7), requests=2)
    elsewhere = CarbonRecord(SubjectKind.INFERENCE_BATCH, uid("batch"), other_model, T0, measurement(1e-7), requests=1)
    carbon_store.record([later, earlier, batch, elsewhere])
    assert carbon_store.for_subject(SubjectKind.TRAINING_JOB, job) == [earlier, later]
    assert carbon_store.for_subject(SubjectKind.INFERENCE_BATCH, job) == []  # kind is part of the subject
    assert carbon_store.for_model(model) == [earlier, batch, later]
    assert carbon_store.for_model(other_model) == [elsewhere]
    assert carbon_store.for_model(uid("model")) == []


def test_between_crosses_days_and_excludes_its_end(carbon_store: CarbonStore) -> None:
    model = uid("model")
    times = [T0 - timedelta(seconds=1), T0, T0 + timedelta(seconds=3), T0 + timedelta(seconds=5)]  # 3rd is next day
    records = [CarbonRecord(SubjectKind.INFERENCE_BATCH, uid("batch"), model, t, measurement(1e-7), requests=1)
               for t in times]
    carbon_store.record(records)
    inside = [r for r in carbon_store.between(T0, T0 + timedelta(seconds=5)) if r.model_id == model]
    assert inside == records[1:3]
    assert carbon_store.between(T0 + timedelta(seconds=5), T0) == []
