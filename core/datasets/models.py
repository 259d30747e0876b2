"""Dataset records (seed 003 §4): plain dataclasses; stores persist them, transports render them."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

# Seed 003 ``DatasetSchema.required_columns`` default: instruction-tuning triples.
DEFAULT_REQUIRED_COLUMNS = ("instruction", "input", "output")


class DatasetFormat(StrEnum):
    """Seed 003 ``DatasetFormat``."""

    CSV = "csv"
    JSON = "json"  # one JSON array of objects
    JSONL = "jsonl"  # one JSON object per line
    PARQUET = "parquet"

    @property
    def extension(self) -> str:
        return self.value


class ColumnType(StrEnum):
    """What a declared column may hold (our extension of seed 003 ``DatasetSchema``, whose columns
    are names only): checked against the values the file actually holds."""

    STRING = "string"
    INTEGER = "integer"
    NUMBER = "number"  # integer or floating point
    BOOLEAN = "boolean"


@dataclass(frozen=True)
class DatasetSchema:
    """Seed 003 ``DatasetSchema``: ``columns`` and ``sample`` are read from the file; the caller
    declares ``required_columns`` (and optionally ``column_types``)."""

    columns: list[str]
    sample: dict[str, Any]
    required_columns: list[str] = field(default_factory=lambda: list(DEFAULT_REQUIRED_COLUMNS))
    column_types: dict[str, ColumnType] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"columns": list(self.columns), "sample": dict(self.sample),
                "required_columns": list(self.required_columns),
                "column_types": {name: kind.value for name, kind in self.column_types.items()}}

    @classmethod
    def of(cls, value: dict[str, Any]) -> DatasetSchema:
        return cls(columns=list(value.get("columns") or []), sample=dict(value.get("sample") or {}),
                   required_columns=list(value.get("required_columns") or []),
                   column_types={k: ColumnType(v) for k, v in (value.get("column_types") or {}).items()})


@dataclass(frozen=True)
class DatasetStatistics:
    """Seed 003 ``DatasetStatistics``. Lengths are token counts of one sample (see
    ``core.datasets.tokens``): input = ``instruction`` + ``input``, output = ``output``, a sample's
    length = input + output."""

    avg_input_length: float
    avg_output_length: float
    max_length: int
    min_length: int
    total_tokens: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"avg_input_length": self.avg_input_length, "avg_output_length": self.avg_output_length,
                "max_length": self.max_length, "min_length": self.min_length, "total_tokens": self.total_tokens}

    @classmethod
    def of(cls, value: dict[str, Any]) -> DatasetStatistics:
        return cls(avg_input_length=float(value["avg_input_length"]),
                   avg_output_length=float(value["avg_output_length"]), max_length=int(value["max_length"]),
                   min_length=int(value["min_length"]), total_tokens=value.get("total_tokens"))


@dataclass(frozen=True)
class Dataset:
    """Seed 003 ``Dataset`` plus where its file lies in S3 (``s3_key``) and its sha256."""

    dataset_id: str
    name: str
    format: DatasetFormat
    size_bytes: int
    num_samples: int
    s3_key: str
    sha256: str
    created_at: datetime
    created_by: str  # the key id that uploaded it
    description: str | None = None
    schema: DatasetSchema | None = None
    statistics: DatasetStatistics | None = None
    source_url: str | None = None  # redacted (no credentials, no query)

    def path(self, bucket: str) -> str:
        """Seed 003 ``Dataset.path``: where the file is, as an S3 URL."""
        return f"s3://{bucket}/{self.s3_key}"

    def view(self, bucket: str) -> dict[str, Any]:
        """The seed's ``Dataset`` body."""
        return {"dataset_id": self.dataset_id, "name": self.name, "description": self.description,
                "size_bytes": self.size_bytes, "format": self.format.value, "num_samples": self.num_samples,
                "path": self.path(bucket), "created_at": self.created_at, "sha256": self.sha256,
                "source_url": self.source_url,
                "schema": self.schema.as_dict() if self.schema else None,
                "statistics": self.statistics.as_dict() if self.statistics else None}
