"""``DatasetStore`` on Cassandra (table ``datasets``, migration 0010). The schema and statistics are
JSON text columns: they are read and written whole, never queried into.

Listing reads the table's rows (datasets are few, each an operator's upload) and pages them in
memory, newest first, so that ``total`` and ``pages`` (seed 003 ``DatasetList``) are exact."""

from __future__ import annotations

import json
from typing import Any

from core.cassandra.statements import CassandraRepository, as_utc
from core.datasets.models import Dataset, DatasetFormat, DatasetSchema, DatasetStatistics
from core.datasets.store import DatasetPage, DatasetStore, newest_first

FIELDS = ("dataset_id", "name", "description", "format", "size_bytes", "num_samples", "s3_key", "sha256",
          "created_at", "created_by", "source_url", "schema_json", "statistics_json")
SELECT = f"SELECT {', '.join(FIELDS)} FROM datasets"


class CassandraDatasetStore(CassandraRepository, DatasetStore):
    @staticmethod
    def _row(row: Any) -> Dataset:
        created_at = as_utc(row.created_at)
        assert created_at is not None
        return Dataset(
            dataset_id=row.dataset_id, name=row.name, description=row.description,
            format=DatasetFormat(row.format), size_bytes=row.size_bytes, num_samples=row.num_samples,
            s3_key=row.s3_key, sha256=row.sha256, created_at=created_at, created_by=row.created_by,
            source_url=row.source_url,
            schema=DatasetSchema.of(json.loads(row.schema_json)) if row.schema_json else None,
            statistics=DatasetStatistics.of(json.loads(row.statistics_json)) if row.statistics_json else None,
        )

    def create(self, dataset: Dataset) -> bool:
        result = self._run(
            f"INSERT INTO datasets ({', '.join(FIELDS)}) VALUES ({', '.join('?' * len(FIELDS))}) IF NOT EXISTS",
            dataset.dataset_id, dataset.name, dataset.description, dataset.format.value, dataset.size_bytes,
            dataset.num_samples, dataset.s3_key, dataset.sha256, dataset.created_at, dataset.created_by,
            dataset.source_url, json.dumps(dataset.schema.as_dict(), default=str) if dataset.schema else None,
            json.dumps(dataset.statistics.as_dict()) if dataset.statistics else None)
        return bool(result.one().applied)

    def get(self, dataset_id: str) -> Dataset | None:
        row = self._run(f"{SELECT} WHERE dataset_id = ?", dataset_id).one()
        return self._row(row) if row is not None else None

    def list(self, page: int, page_size: int) -> DatasetPage:
        return newest_first([self._row(r) for r in self._run(SELECT)], page, page_size)

    def delete(self, dataset_id: str) -> Dataset | None:
        existing = self.get(dataset_id)
        if existing is None:
            return None
        self._run("DELETE FROM datasets WHERE dataset_id = ?", dataset_id)
        return existing
