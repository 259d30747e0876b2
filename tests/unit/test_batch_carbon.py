"""Every batch a worker runs is measured: its share lands in the seed 003 outputs and metadata, and
its record reaches the CarbonStore from the recorder (fake CPU clock, in-memory store)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from consumers.inference.carbon import BatchCarbon, CarbonRecorder
from consumers.inference.runtime import JsonDict, ModelRuntime
from consumers.inference.textgen import attach_carbon
from consumers.inference.worker import BATCH_META, TimedRuntime
from core.carbon import (
    JOULES_PER_KWH,
    CarbonMeasurement,
    CarbonRecord,
    CarbonStore,
    CpuTimeMeter,
    InMemoryCarbonStore,
    PowerModel,
    SubjectKind,
)

pytestmark = pytest.mark.unit

POWER = PowerModel(cpu_watts_per_busy_thread=4.0, ram_watts=10.0, carbon_intensity=500.0, location="TST")


class Clock:
    def __init__(self) -> None:
        self.value = 0.0

    def __call__(self) -> float:
        return self.value


class Burner(ModelRuntime):
    """A txt2txt-shaped model whose batch 'uses' 0.6 CPU seconds over 0.4 s of wall time."""

    task_type = "txt2txt"
    loaded = True
    memory_bytes = 0

    def __init__(self, cpu: Clock, wall: Clock, *, fail: bool = False) -> None:
        super().__init__("org/burner")
        self.cpu, self.wall, self.fail = cpu, wall, fail

    def load(self) -> None: ...

    def close(self) -> None: ...

    def infer_batch(self, inputs: list[JsonDict]) -> list[JsonDict]:
        self.cpu.value += 0.6
        self.wall.value += 0.4
        if self.fail:
            raise RuntimeError("model crashed")
        return [{"generated_text": "x", "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                 "latency_ms": 1.0, "finish_reason": "stop"} for _ in inputs]


def _carbon(store: CarbonStore) -> tuple[BatchCarbon, CarbonRecorder, Clock, Clock]:
    cpu, wall = Clock(), Clock()
    recorder = CarbonRecorder(lambda: store, interval_s=60)
    return BatchCarbon(lambda: POWER, recorder, CpuTimeMeter(cpu, wall)), recorder, cpu, wall


def test_each_request_of_a_batch_carries_its_share_of_the_measured_emissions() -> None:
    store = InMemoryCarbonStore()
    carbon, recorder, cpu, wall = _carbon(store)
    outputs = TimedRuntime(Burner(cpu, wall), carbon).infer_batch([{"prompt": "a"}, {"prompt": "b"}])
    batch_kwh = (0.6 * 4.0 + 0.4 * 10.0) / JOULES_PER_KWH
    batch_g = batch_kwh * 500.0
    assert batch_g > 0
    for output in outputs:
        assert output["carbon_emissions_g"] == pytest.approx(batch_g / 2)
        assert output[BATCH_META]["carbon_emissions_g"] == pytest.approx(batch_g / 2)
        assert output[BATCH_META]["energy_kwh"] == pytest.approx(batch_kwh / 2)
    assert recorder.pending() == 1 and store.for_model("org/burner") == []  # not written on the batch's thread
    assert recorder.flush() == 1
    [record] = store.for_model("org/burner")
    assert record.subject_kind is SubjectKind.INFERENCE_BATCH and record.requests == 2
    assert record.measurement.energy_kwh == pytest.approx(batch_kwh)
    assert record.measurement.emissions_g == pytest.approx(batch_g)


def test_a_failed_batch_still_records_the_energy_it_spent_with_no_requests() -> None:
    store = InMemoryCarbonStore()
    carbon, recorder, cpu, wall = _carbon(store)
    with pytest.raises(RuntimeError):
        TimedRuntime(Burner(cpu, wall, fail=True), carbon).infer_batch([{"prompt": "a"}])
    recorder.flush()
    [record] = store.for_model("org/burner")
    assert record.requests == 0 and record.measurement.energy_kwh > 0


def test_attach_carbon_fills_the_field_each_seed_shape_names() -> None:
    generate = {"generated_text": "t", "usage": {}, "latency_ms": 1.0, "finish_reason": "stop"}
    chat = {"id": "c", "object": "chat.completion", "choices": [], "usage": {}}
    batch = {"results": [], "total_latency_ms": 2.0}
    embedding = {"embedding": [0.1]}
    assert attach_carbon(generate, 0.25)["carbon_emissions_g"] == 0.25
    assert attach_carbon(chat, 0.25)["carbon_emissions_g"] == 0.25
    assert attach_carbon(batch, 0.25)["total_carbon_emissions_g"] == 0.25
    assert attach_carbon(embedding, 0.25) == embedding  # no carbon field in that shape


class FlakyStore(InMemoryCarbonStore):
    def __init__(self) -> None:
        super().__init__()
        self.down = True

    def record(self, records: list[CarbonRecord]) -> None:  # type: ignore[override]
        if self.down:
            raise ConnectionError("Cassandra unavailable")
        super().record(records)


def _record(i: int) -> CarbonRecord:
    m = CarbonMeasurement(1e-6, 5e-7, 0.1, 500.0, "TST")
    return CarbonRecord(SubjectKind.INFERENCE_BATCH, f"b{i}", "m", datetime(2026, 11, 1, 0, 0, i, tzinfo=UTC), m, 1)


def test_recorder_keeps_records_through_a_failed_write_and_bounds_its_buffer() -> None:
    store = FlakyStore()
    recorder = CarbonRecorder(lambda: store, interval_s=60, max_buffer=3)
    for i in range(2):
        recorder.add(_record(i))
    assert recorder.flush() == 0 and recorder.pending() == 2
    for i in range(2, 4):
        recorder.add(_record(i))
    assert recorder.pending() == 3 and recorder.dropped == 1  # the oldest went
    store.down = False
    recorder.close()
    assert [r.subject_id for r in store.for_model("m")] == ["b1", "b2", "b3"]
    assert recorder.written == 3 and recorder.pending() == 0
