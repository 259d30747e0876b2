"""Where dataset records live: ``DatasetStore`` is the interface, ``InMemoryDatasetStore`` serves
unit tests and ``core.datasets.cassandra_store.CassandraDatasetStore`` every environment;
``tests/dataset_store_contract.py`` runs against both. The file itself is in S3 (``ArtifactStore``)."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass

from core.datasets.models import Dataset


@dataclass(frozen=True)
class DatasetPage:
    items: list[Dataset]
    total: int


class DatasetStore(ABC):
    @abstractmethod
    def create(self, dataset: Dataset) -> bool:
        """Insert a new record; False (and nothing written) when the id is taken."""

    @abstractmethod
    def get(self, dataset_id: str) -> Dataset | None: ...

    @abstractmethod
    def list(self, page: int, page_size: int) -> DatasetPage:
        """Newest first (``created_at``, then id); ``page`` counts from 1."""

    @abstractmethod
    def delete(self, dataset_id: str) -> Dataset | None:
        """Remove the record and return what it was (None when there was none)."""


def newest_first(datasets: list[Dataset], page: int, page_size: int) -> DatasetPage:
    ordered = sorted(datasets, key=lambda d: (d.created_at, d.dataset_id), reverse=True)
    start = (page - 1) * page_size
    return DatasetPage(ordered[start:start + page_size], len(ordered))


class InMemoryDatasetStore(DatasetStore):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows: dict[str, Dataset] = {}

    def create(self, dataset: Dataset) -> bool:
        with self._lock:
            if dataset.dataset_id in self._rows:
                return False
            self._rows[dataset.dataset_id] = dataset
            return True

    def get(self, dataset_id: str) -> Dataset | None:
        with self._lock:
            return self._rows.get(dataset_id)

    def list(self, page: int, page_size: int) -> DatasetPage:
        with self._lock:
            rows = list(self._rows.values())
        return newest_first(rows, page, page_size)

    def delete(self, dataset_id: str) -> Dataset | None:
        with self._lock:
            return self._rows.pop(dataset_id, None)
