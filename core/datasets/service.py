"""Datasets (seed 003 §4): upload (bytes or ``source_url``), read and check, store, list, get, delete.

Order of a create: read and check the file (off the event loop), put it in S3, insert the record
(read-your-writes: the caller's next GET sees it), then the audit record. A record never points at
a file that is not there: a failed insert deletes the object it had just put.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import logging
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from core.artifacts import ArtifactStore
from core.auth import Action, Principal
from core.datasets.models import Dataset, DatasetFormat
from core.datasets.reading import Declared, read_dataset
from core.datasets.store import DatasetPage, DatasetStore
from core.errors import DomainError, ErrorKind, invalid, not_found
from core.events import EventSink
from core.onboarding.fetch import FetchError, FetchPolicy, SourceFetcher, redact
from schemas.clock import utcnow
from settings import Settings

log = logging.getLogger(__name__)

EXTENSIONS = {".jsonl": DatasetFormat.JSONL, ".ndjson": DatasetFormat.JSONL, ".json": DatasetFormat.JSON,
              ".csv": DatasetFormat.CSV, ".parquet": DatasetFormat.PARQUET, ".pq": DatasetFormat.PARQUET}
CONTENT_TYPES = {DatasetFormat.JSONL: "application/x-ndjson", DatasetFormat.JSON: "application/json",
                 DatasetFormat.CSV: "text/csv", DatasetFormat.PARQUET: "application/vnd.apache.parquet"}


def dataset_s3_key(dataset_id: str, fmt: DatasetFormat) -> str:
    return f"datasets/{dataset_id}/data.{fmt.extension}"


def too_large(limit: int) -> DomainError:
    return DomainError(ErrorKind.TOO_LARGE, "FILE_TOO_LARGE", f"The dataset exceeds the limit of {limit} bytes.",
                       details={"max_bytes": limit}, hint="Split the dataset or raise TRIBUTARY_DATASET_MAX_BYTES.")


def resolve_format(declared: str | None, name: str | None) -> DatasetFormat:
    """The declared ``format``, else the file name's (or URL path's) extension."""
    if declared:
        try:
            return DatasetFormat(declared.lower())
        except ValueError:
            raise invalid("VALIDATION_ERROR", f"format must be one of {[f.value for f in DatasetFormat]}",
                          field="format") from None
    suffix = PurePosixPath(name or "").suffix.lower()
    if suffix in EXTENSIONS:
        return EXTENSIONS[suffix]
    raise invalid("VALIDATION_ERROR", "Say the dataset's format (csv, json, jsonl, parquet) or name the file "
                  "with its extension.", field="format")


class DatasetService:
    def __init__(self, settings: Settings, store: DatasetStore, artifacts: ArtifactStore, events: EventSink,
                 *, s3_client: Callable[[], Any] | None = None, clock: Callable[[], datetime] = utcnow) -> None:
        self.settings = settings
        self.store = store
        self.artifacts = artifacts
        self.events = events
        self.clock = clock
        policy = FetchPolicy.from_settings(settings)
        self.fetcher = SourceFetcher(dataclasses.replace(policy, max_bytes=settings.dataset_max_bytes,
                                                         timeout_s=settings.dataset_fetch_timeout_s),
                                     s3_client=s3_client)

    @property
    def max_bytes(self) -> int:
        return self.settings.dataset_max_bytes

    async def create(self, principal: Principal, *, name: str, description: str | None, fmt: DatasetFormat,
                     declared: Declared, data: bytes, source_url: str | None = None) -> Dataset:
        principal.require(Action.DATASETS_WRITE)
        if len(data) > self.max_bytes:
            raise too_large(self.max_bytes)
        read = await asyncio.to_thread(read_dataset, data, fmt, declared)
        dataset_id = f"ds-{uuid.uuid4().hex}"
        key = dataset_s3_key(dataset_id, fmt)
        stored = await asyncio.to_thread(self.artifacts.put, key, data, CONTENT_TYPES[fmt])
        dataset = Dataset(dataset_id=dataset_id, name=name, description=description, format=fmt,
                          size_bytes=stored.size, num_samples=read.table.num_rows, s3_key=key, sha256=stored.sha256,
                          created_at=self.clock(), created_by=principal.key_id, schema=read.schema,
                          statistics=read.statistics, source_url=redact(source_url) if source_url else None)
        try:
            created = await asyncio.to_thread(self.store.create, dataset)
        except BaseException:
            await asyncio.to_thread(self.artifacts.delete, key)
            raise
        if not created:  # a uuid4 collision: nothing of ours to keep
            raise DomainError(ErrorKind.CONFLICT, "DATASET_EXISTS", f"Dataset {dataset_id} already exists.")
        await self.events.audit(actor=principal.key_id, action="dataset.create", subject=f"dataset/{dataset_id}",
                                outcome="created", after={"name": name, "format": fmt.value, "s3_key": key,
                                                          "sha256": stored.sha256, "size_bytes": stored.size,
                                                          "num_samples": dataset.num_samples,
                                                          "source_url": dataset.source_url})
        return dataset

    async def create_from_url(self, principal: Principal, *, name: str, description: str | None,
                              fmt: str | None, declared: Declared, source_url: str) -> Dataset:
        principal.require(Action.DATASETS_WRITE)
        resolved = resolve_format(fmt, urlsplit(source_url).path)
        buffer = io.BytesIO()
        try:
            await asyncio.to_thread(self.fetcher.fetch, source_url, buffer)
        except FetchError as exc:
            if exc.code == "FILE_TOO_LARGE":
                raise too_large(self.max_bytes) from exc
            raise invalid(exc.code, f"source_url: {exc.message}", field="source_url") from exc
        return await self.create(principal, name=name, description=description, fmt=resolved, declared=declared,
                                 data=buffer.getvalue(), source_url=source_url)

    async def get(self, principal: Principal, dataset_id: str) -> Dataset:
        principal.require(Action.DATASETS_READ)
        dataset = await asyncio.to_thread(self.store.get, dataset_id)
        if dataset is None:
            raise not_found("DATASET_NOT_FOUND", f"Dataset {dataset_id} not found.")
        return dataset

    async def list(self, principal: Principal, page: int, page_size: int) -> DatasetPage:
        principal.require(Action.DATASETS_READ)
        return await asyncio.to_thread(self.store.list, page, page_size)

    async def delete(self, principal: Principal, dataset_id: str) -> Dataset:
        principal.require(Action.DATASETS_WRITE)
        dataset = await asyncio.to_thread(self.store.delete, dataset_id)
        if dataset is None:
            raise not_found("DATASET_NOT_FOUND", f"Dataset {dataset_id} not found.")
        try:  # the record is gone first, so nobody is handed a file being deleted
            await asyncio.to_thread(self.artifacts.delete, dataset.s3_key)
        except Exception:
            log.exception("dataset %s: its S3 object %s was not deleted", dataset_id, dataset.s3_key)
        await self.events.audit(actor=principal.key_id, action="dataset.delete", subject=f"dataset/{dataset_id}",
                                outcome="deleted", before={"name": dataset.name, "s3_key": dataset.s3_key,
                                                           "sha256": dataset.sha256})
        return dataset
