"""Datasets (seed 003 §4): records in a ``DatasetStore``, files in S3 (``ArtifactStore``).

The interface for consumers of a dataset (the trainer):

- ``DatasetStore.get(dataset_id) -> Dataset | None``: the record (``CassandraDatasetStore(session)``
  in production). ``Dataset.format``, ``.s3_key``, ``.sha256``, ``.num_samples``, ``.schema``.
- ``dataset_table(artifacts, dataset) -> pyarrow.Table``: the whole file, read with pyarrow and
  checked against the sha256 recorded at upload (``DATASET_CORRUPT`` otherwise).
- ``open_dataset_rows(artifacts, dataset) -> Iterator[dict]``: the same, one row per dict
  (column name -> value), in file order.

The file was checked at upload: every ``schema.required_columns`` column has a value in every row
(seed default: ``instruction``, ``input``, ``output``), and declared ``column_types`` hold.
Statistics are token counts with the all-MiniLM-L6-v2 tokenizer (``core.datasets.tokens``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from core.artifacts import ArtifactStore
from core.datasets.models import ColumnType, Dataset, DatasetFormat, DatasetSchema, DatasetStatistics
from core.datasets.reading import read_table, rows_of
from core.datasets.service import dataset_s3_key
from core.datasets.store import DatasetStore, InMemoryDatasetStore
from core.errors import DomainError, ErrorKind

__all__ = ["ColumnType", "Dataset", "DatasetFormat", "DatasetSchema", "DatasetStatistics", "DatasetStore",
           "InMemoryDatasetStore", "dataset_s3_key", "dataset_table", "open_dataset_rows"]


def dataset_table(artifacts: ArtifactStore, dataset: Dataset) -> pa.Table:
    data = artifacts.get(dataset.s3_key)
    if hashlib.sha256(data).hexdigest() != dataset.sha256:
        raise DomainError(ErrorKind.CONFLICT, "DATASET_CORRUPT",
                          f"The file of dataset {dataset.dataset_id} does not match its recorded sha256.")
    return read_table(data, dataset.format)


def open_dataset_rows(artifacts: ArtifactStore, dataset: Dataset) -> Iterator[dict[str, Any]]:
    return rows_of(dataset_table(artifacts, dataset))
