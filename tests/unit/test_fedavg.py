"""Streaming FedAvg (issue 18): the float32 sum's stated tolerance against a float64 reference, updates
mapped from their spool file rather than read, no per-update checkpoint, and a restarted round processor
that rebuilds the exact sum from the updates stored in S3 (with or without a checkpoint)."""

from __future__ import annotations

import asyncio
import hashlib
import io
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import torch

from core.artifacts import CHUNK, MemoryArtifactStore
from core.errors import DomainError
from core.fleet.memory_store import InMemoryFleetStore
from core.fleet.models import RoundStatus
from core.fleet.processing import RoundProcessor
from core.fleet.service import FleetService
from core.fleet.weights import FedAvgAccumulator, dump_state_dict, load_state_dict_file, load_update_file, spooled
from settings import Settings
from tests.recording_sink import RecordingSink
from tests.store_contract import make_round, make_update

pytestmark = pytest.mark.unit
T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
EPS32 = 2.0**-24  # float32's unit roundoff


def state(seed: int, scale: float = 1.0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(64, 33, generator=generator) * scale, "b": torch.randn(33, generator=generator) * scale}


def reference(states: list[dict[str, torch.Tensor]], samples: list[int]) -> dict[str, torch.Tensor]:
    total = sum(samples)
    return {name: sum((s[name].double() * n for s, n in zip(states, samples, strict=True)),
                      torch.zeros_like(states[0][name], dtype=torch.float64)) / total
            for name in states[0]}


# --- the accumulator ---------------------------------------------------------------------------


def test_the_float32_mean_of_50_updates_is_within_the_stated_bound_of_the_float64_mean() -> None:
    states = [state(i, scale=10.0 ** (i % 5 - 2)) for i in range(50)]  # magnitudes from 0.01 to 100
    samples = [1 + (i * 7919) % 5000 for i in range(50)]
    acc = FedAvgAccumulator(precision="float32")
    for i, (s, n) in enumerate(zip(states, samples, strict=True)):
        assert acc.add(f"u{i}", s, n)
    assert all(total.dtype == torch.float32 for total in acc.weighted_sum.values())  # one model in memory
    got, expected = acc.take_average(), reference(states, samples)
    max_abs = max(float(s[name].abs().max()) for s in states for name in s)
    for name in expected:
        assert got[name].dtype == torch.float32
        error = float((got[name].double() - expected[name]).abs().max())
        assert error <= (len(states) + 1) * EPS32 * max_abs, (name, error)


def test_the_float64_setting_matches_the_float64_mean_to_rounding() -> None:
    states, samples = [state(i) for i in range(50)], [3 + i for i in range(50)]
    acc = FedAvgAccumulator(precision="float64")
    for i, (s, n) in enumerate(zip(states, samples, strict=True)):
        acc.add(f"u{i}", s, n)
    assert all(total.dtype == torch.float64 for total in acc.weighted_sum.values())
    got, expected = acc.take_average(), reference(states, samples)
    for name in expected:  # only the final cast to the parameters' float32 rounds
        assert torch.allclose(got[name].double(), expected[name], rtol=EPS32, atol=0)


def test_float64_parameters_and_integer_buffers_are_summed_in_float64_and_cast_back() -> None:
    acc = FedAvgAccumulator(precision="float32")
    for i, n in enumerate((1, 3)):
        acc.add(f"u{i}", {"w": torch.full((2,), float(i), dtype=torch.float64),
                          "steps": torch.tensor(10 * (i + 1)), "h": torch.ones(2, dtype=torch.float16)}, n)
    assert {k: v.dtype for k, v in acc.weighted_sum.items()} == {
        "w": torch.float64, "steps": torch.float64, "h": torch.float32}
    got = acc.take_average()
    assert got["w"].dtype == torch.float64 and torch.equal(got["w"], torch.full((2,), 0.75, dtype=torch.float64))
    assert got["steps"].dtype == torch.int64 and int(got["steps"]) == 17  # (10 + 60) / 4, truncated as before
    assert got["h"].dtype == torch.float16


def test_a_refused_update_leaves_the_sum_as_it_was() -> None:
    acc = FedAvgAccumulator()
    acc.add("u0", {"a": torch.ones(2), "b": torch.ones(3)}, 2)
    before = {k: v.clone() for k, v in acc.weighted_sum.items()}
    with pytest.raises(DomainError) as refused:  # "a" would fit, "b" does not: nothing is added
        acc.add("u1", {"a": torch.ones(2), "b": torch.ones(4)}, 5)
    assert refused.value.code == "INCOMPATIBLE_UPDATE"
    assert all(torch.equal(acc.weighted_sum[k], before[k]) for k in before)
    assert acc.included == {"u0"} and acc.total_samples == 2
    assert acc.add("u0", {"a": torch.zeros(2), "b": torch.zeros(3)}, 1) is False  # redelivered: no change


def test_a_checkpoint_round_trips_and_an_older_format_is_refused() -> None:
    acc = FedAvgAccumulator()
    acc.add("u0", state(0), 4)
    again = FedAvgAccumulator.from_bytes(acc.to_bytes())
    assert again.included == {"u0"} and again.total_samples == 4 and again.dtypes == acc.dtypes
    assert all(torch.equal(again.weighted_sum[k], acc.weighted_sum[k]) for k in acc.weighted_sum)
    old = io.BytesIO()  # what the processor wrote before this format (float64 sum, no dtypes)
    torch.save({"weighted_sum": {"w": torch.zeros(2, dtype=torch.float64)}, "total_samples": torch.tensor(1),
                "included": ["u0"]}, old)
    with pytest.raises(ValueError):
        FedAvgAccumulator.from_bytes(old.getvalue())


def mapped(path: Path, tensor: torch.Tensor) -> bool:
    """Whether the tensor's memory lies in a mapping of ``path`` (/proc/self/maps)."""
    pointer = tensor.data_ptr()
    for line in Path("/proc/self/maps").read_text().splitlines():
        if line.endswith(str(path)):
            low, high = (int(x, 16) for x in line.split()[0].split("-"))
            if low <= pointer < high:
                return True
    return False


def test_a_spooled_update_is_hashed_while_written_and_its_tensors_are_mapped_from_the_file() -> None:
    buffer = io.BytesIO()
    torch.save(state(1), buffer)
    data = buffer.getvalue()
    with spooled(data[i:i + 1000] for i in range(0, len(data), 1000)) as (path, digest):
        assert digest == hashlib.sha256(data).hexdigest()
        loaded = load_state_dict_file(path)
        assert all(mapped(path, tensor) for tensor in loaded.values())  # no second copy in memory
        assert all(torch.equal(loaded[k], state(1)[k]) for k in loaded)
    assert not path.exists()
    legacy = io.BytesIO()  # a pre-zip torch.save archive is still accepted (read, not mapped)
    torch.save(state(2), legacy, _use_new_zipfile_serialization=False)
    with spooled([legacy.getvalue()]) as (path, _):
        assert torch.equal(load_state_dict_file(path)["w"], state(2)["w"])
    with spooled([b"not a state dict"]) as (path, _), pytest.raises(DomainError) as bad:
        load_state_dict_file(path)
    assert bad.value.code == "INVALID_MODEL_FILE"


def resident_bytes(path: Path) -> int:
    """How much of the mappings of ``path`` is in this process's memory (/proc/self/smaps Rss)."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if "-" in line.split(" ", 1)[0] and len(line.split()) >= 5:  # a mapping's header line
            inside = line.endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1]) * 1024
    return total


def test_a_folded_tensors_mapped_pages_are_given_back_and_the_sum_is_unchanged() -> None:
    update = {"a": torch.randn(1024, 1024), "b": torch.randn(512, 1024), "bias": torch.randn(7)}
    with spooled([dump_state_dict(update)]) as (path, _):
        loaded, release = load_update_file(path)
        assert release is not None  # a zip archive: mapped
        for tensor in loaded.values():
            tensor.sum()  # touch every page, as a fold does
        touched = resident_bytes(path)
        kept, released = FedAvgAccumulator(), FedAvgAccumulator()
        kept.add("u", {k: v.clone() for k, v in update.items()}, 3)
        released.add("u", loaded, 3, release)
        assert touched >= 6 * 1024 * 1024 and resident_bytes(path) < touched // 8  # ~6 MB back
        assert all(torch.equal(released.weighted_sum[k], kept.weighted_sum[k]) for k in update)
        # Touched again after release, the pages come back from the file: nothing was lost.
        assert all(torch.equal(loaded[k], update[k]) for k in update)


# --- the round processor: no per-update write, and a restart that rebuilds the sum --------------


class CountingStore(MemoryArtifactStore):
    """A memory S3 that records the updates read and the objects written."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []
        self.writes: list[str] = []

    def stream(self, key: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        if key.startswith("updates/"):
            self.reads.append(key)
        return super().stream(key, chunk_size)

    def put(self, key: str, data: Any, content_type: str = "application/octet-stream") -> Any:
        self.writes.append(key)
        return super().put(key, data, content_type)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


class Round:
    """A round with ``target`` devices whose updates are stored as the ingress stores them."""

    def __init__(self, target: int, **settings: Any) -> None:
        self.settings = Settings(straggler_grace_s=3600, **settings)
        self.store, self.sink, self.artifacts, self.clock = (InMemoryFleetStore(), RecordingSink(), CountingStore(),
                                                             Clock())
        self.round = make_round(target_devices=target, min_devices=target)
        self.store.create_active_round(self.round)
        self.store.transition_round(self.round.id, RoundStatus.PENDING, RoundStatus.ACTIVE,
                                    selected_devices=[f"d{i}" for i in range(target)],
                                    timeout_at=T0 + timedelta(hours=1))
        self.states: list[dict[str, torch.Tensor]] = []
        self.samples: list[int] = []

    def processor(self) -> RoundProcessor:
        """A (re)started processor: nothing in memory."""
        fleet = FleetService(self.settings, self.store, self.artifacts, self.sink, self.clock)
        return RoundProcessor(self.settings, self.store, self.artifacts, self.sink, fleet, self.clock)

    def submit(self, i: int) -> dict[str, Any]:
        s, n = state(100 + i), 10 + 7 * i
        self.states.append(s)
        self.samples.append(n)
        buffer = io.BytesIO()
        torch.save(s, buffer)
        data = buffer.getvalue()
        key = f"updates/{self.round.id}/d{i}.pt"
        MemoryArtifactStore.put(self.artifacts, key, data)  # the ingress's write, not counted
        update = make_update(self.round.id, f"d{i}")
        update = type(update)(**{**update.__dict__, "num_samples": n, "artifact_key": key,
                                  "sha256": hashlib.sha256(data).hexdigest(), "created_at": self.clock.now})
        self.store.add_update(update)
        return {"update_id": update.id, "round_id": self.round.id, "artifact_key": key, "sha256": update.sha256,
                "num_samples": n}

    def checkpoint_writes(self) -> int:
        return self.artifacts.writes.count(RoundProcessor.checkpoint_key(self.round.id))

    def assert_completed_with_the_exact_mean(self) -> None:
        done = self.store.get_round(self.round.id)
        assert done is not None and done.status is RoundStatus.COMPLETED, done
        assert done.completed_devices == len(self.states) and done.aggregated_model_id
        (version,) = self.store.list_versions(done.aggregated_model_id)
        got = torch.load(io.BytesIO(self.artifacts.objects[version.artifact_key]), weights_only=True)
        expected = reference(self.states, self.samples)
        max_abs = max(float(s[name].abs().max()) for s in self.states for name in s)
        for name in expected:
            assert float((got[name].double() - expected[name]).abs().max()) <= (
                len(self.states) + 1) * EPS32 * max_abs


def test_folding_updates_writes_nothing_back_to_s3_until_the_aggregate() -> None:
    r = Round(target=4)  # default settings: checkpoint every 300 s, the clock does not move
    processor = r.processor()

    async def scenario() -> None:
        for i in range(4):
            await processor.on_update(r.submit(i))

    asyncio.run(scenario())
    r.assert_completed_with_the_exact_mean()
    assert r.checkpoint_writes() == 0
    assert [key for key in r.artifacts.writes if not key.startswith("models/")] == []  # only the model's file
    assert sorted(r.artifacts.reads) == sorted(f"updates/{r.round.id}/d{i}.pt" for i in range(4))  # each once


def test_a_processor_restarted_mid_round_without_a_checkpoint_rebuilds_the_sum_from_the_stored_updates() -> None:
    r = Round(target=5, fedavg_checkpoint_interval_s=0, fedavg_checkpoint_every=0)

    async def scenario() -> None:
        first = r.processor()
        records = []
        for i in range(3):
            records.append(r.submit(i))
            await first.on_update(records[-1])
        records.append(r.submit(3))  # stored; the processor is killed before its event: its sum is lost
        restarted = r.processor()
        await restarted.on_update(records[2])  # redelivered (its offset was not committed)
        stored = r.store.get_round(r.round.id)
        assert stored is not None and stored.completed_devices == 4  # rebuilt from every stored update
        await restarted.on_update(records[3])  # already in the rebuilt sum: not read again
        await restarted.on_update(r.submit(4))

    asyncio.run(scenario())
    r.assert_completed_with_the_exact_mean()
    assert r.checkpoint_writes() == 0
    assert len(r.artifacts.reads) == 3 + 4 + 1  # the first processor's 3, the rebuild's 4, the last one


def test_checkpoints_by_count_bound_what_a_restart_reads_again() -> None:
    r = Round(target=5, fedavg_checkpoint_every=2, fedavg_checkpoint_interval_s=0)

    async def scenario() -> None:
        first = r.processor()
        records = []
        for i in range(3):
            records.append(r.submit(i))
            await first.on_update(records[-1])
        assert r.checkpoint_writes() == 1  # after the 2nd update, not after each
        r.artifacts.reads.clear()
        records.append(r.submit(3))
        restarted = r.processor()
        await restarted.on_update(records[2])
        await restarted.on_update(records[3])
        await restarted.on_update(r.submit(4))

    asyncio.run(scenario())
    r.assert_completed_with_the_exact_mean()
    assert sorted(r.artifacts.reads) == sorted(f"updates/{r.round.id}/d{i}.pt" for i in (2, 3, 4))  # not 0 and 1


def test_checkpoints_by_time() -> None:
    r = Round(target=4, fedavg_checkpoint_interval_s=60)
    processor = r.processor()

    async def scenario() -> None:
        await processor.on_update(r.submit(0))
        await processor.on_update(r.submit(1))
        assert r.checkpoint_writes() == 0
        r.clock.now += timedelta(seconds=61)
        await processor.on_update(r.submit(2))
        assert r.checkpoint_writes() == 1
        await processor.on_update(r.submit(3))

    asyncio.run(scenario())
    r.assert_completed_with_the_exact_mean()
    assert r.checkpoint_writes() == 1


@pytest.mark.parametrize("checkpoint", [b"garbage", None], ids=["unreadable", "older-format"])
def test_a_checkpoint_that_cannot_be_read_is_rebuilt_from_the_updates(checkpoint: bytes | None) -> None:
    r = Round(target=3)
    records = [r.submit(i) for i in range(3)]
    if checkpoint is None:
        old = io.BytesIO()
        torch.save({"weighted_sum": {"w": torch.zeros(64, 33, dtype=torch.float64)},
                    "total_samples": torch.tensor(99), "included": [records[0]["update_id"]]}, old)
        checkpoint = old.getvalue()
    MemoryArtifactStore.put(r.artifacts, RoundProcessor.checkpoint_key(r.round.id), checkpoint)

    async def scenario() -> None:
        processor = r.processor()
        for record in records:
            await processor.on_update(record)

    asyncio.run(scenario())
    r.assert_completed_with_the_exact_mean()


def test_a_rebuild_refuses_a_corrupt_stored_update_once_and_counts_it_failed() -> None:
    r = Round(target=3)
    records = [r.submit(i) for i in range(3)]
    r.artifacts.objects[records[0]["artifact_key"]] = b"tampered"

    async def scenario() -> None:
        await r.processor().on_update(records[1])  # a restart: rebuilds from all three stored

    asyncio.run(scenario())
    stored = r.store.get_round(r.round.id)
    assert stored is not None and (stored.completed_devices, stored.failed_devices) == (2, 1)
    rejected = [e for e in r.sink.of_type("fleet_event") if e["event_type"] == "update_rejected"]
    assert [(e["details"]["update_id"], e["details"]["reason"]) for e in rejected] == [
        (records[0]["update_id"], "sha256 mismatch")]


def test_the_sum_of_a_round_that_left_the_slot_is_dropped_at_the_next_tick() -> None:
    r = Round(target=3)
    processor = r.processor()

    async def scenario() -> None:
        await processor.on_update(r.submit(0))
        assert r.round.id in processor._accumulators
        r.store.transition_round(r.round.id, RoundStatus.ACTIVE, RoundStatus.CANCELLED)
        await processor.tick()

    asyncio.run(scenario())
    assert processor._accumulators == {} and processor._failed == {}


def test_an_update_withdrawn_after_it_was_folded_is_left_out_of_the_mean() -> None:
    r = Round(target=3, fedavg_checkpoint_interval_s=0, fedavg_checkpoint_every=0)

    async def scenario() -> None:
        processor = r.processor()
        await processor.on_update(r.submit(0))
        await processor.on_update(r.submit(1))  # folded into the running sum
        assert r.store.withdraw_update(r.round.id, "d1")  # its device was deleted
        r.states.pop(), r.samples.pop()
        await processor.on_update(r.submit(2))
        r.clock.now += timedelta(hours=2)  # past the timeout: min_devices is met by what remains
        await processor.tick()

    r.round.min_devices = 2
    r.store.rounds[r.round.id].min_devices = 2
    asyncio.run(scenario())
    r.assert_completed_with_the_exact_mean()  # d0 and d2 only
