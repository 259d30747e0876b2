"""One test suite for every ``DatasetStore`` (memory in unit, Cassandra in integration).

Each implementation's module defines a ``datasets`` fixture returning a fresh store (or one whose
other rows these tests ignore) and does ``from tests.dataset_store_contract import *``.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from core.datasets.models import ColumnType, Dataset, DatasetFormat, DatasetSchema, DatasetStatistics
from core.datasets.store import DatasetStore

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def dataset(created_at: datetime = T0, **kw: object) -> Dataset:
    dataset_id = f"ds-{uuid.uuid4().hex}"
    fields: dict[str, object] = {
        "dataset_id": dataset_id, "name": "finance-qa", "format": DatasetFormat.JSONL, "size_bytes": 1234,
        "num_samples": 3, "s3_key": f"datasets/{dataset_id}/data.jsonl", "sha256": "ab" * 32,
        "created_at": created_at, "created_by": "key-1", **kw}
    return Dataset(**fields)  # type: ignore[arg-type]


def test_create_then_get_reads_back_every_field(datasets: DatasetStore) -> None:
    record = dataset(description="Finance Q&A", source_url="https://example.org/qa.jsonl",
                     schema=DatasetSchema(columns=["instruction", "input", "output", "n"],
                                          sample={"instruction": "Say", "input": "", "output": "hi", "n": 1},
                                          column_types={"n": ColumnType.INTEGER}),
                     statistics=DatasetStatistics(avg_input_length=2.5, avg_output_length=1.0, max_length=4,
                                                  min_length=3, total_tokens=10))
    assert datasets.create(record) is True
    assert datasets.get(record.dataset_id) == record


def test_create_refuses_a_taken_id_and_keeps_the_first(datasets: DatasetStore) -> None:
    first = dataset()
    assert datasets.create(first)
    assert datasets.create(dataset(dataset_id=first.dataset_id, name="other")) is False
    stored = datasets.get(first.dataset_id)
    assert stored is not None and stored.name == "finance-qa"


def test_get_of_an_unknown_id_is_none(datasets: DatasetStore) -> None:
    assert datasets.get(f"ds-{uuid.uuid4().hex}") is None


def test_list_pages_newest_first_with_the_total(datasets: DatasetStore) -> None:
    base = datetime.now(UTC).replace(microsecond=0) + timedelta(days=3650)  # newer than any other row
    mine = [dataset(created_at=base + timedelta(minutes=i)) for i in range(5)]
    for record in mine:
        datasets.create(record)
    first = datasets.list(page=1, page_size=2)
    second = datasets.list(page=2, page_size=2)
    assert first.total == second.total >= 5
    newest = [r.dataset_id for r in reversed(mine)]
    assert [r.dataset_id for r in first.items] == newest[:2]
    assert [r.dataset_id for r in second.items] == newest[2:4]


def test_delete_returns_the_record_once(datasets: DatasetStore) -> None:
    record = dataset()
    datasets.create(record)
    assert datasets.delete(record.dataset_id) == record
    assert datasets.get(record.dataset_id) is None
    assert datasets.delete(record.dataset_id) is None
