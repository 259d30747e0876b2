"""Seed 003 §4 datasets: ``POST/GET /api/v1/datasets``, ``GET/DELETE /api/v1/datasets/{dataset_id}``.

``POST`` takes either a multipart upload (``file`` plus the metadata as form fields, ``schema`` as a
JSON string) or a JSON body with a ``source_url`` (fetched under the model-onboarding guard:
``core/onboarding/fetch.py``). Thin: parse, call, render."""

from __future__ import annotations

import json
import math
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import UploadFile

from api.context import AppContext, authenticated, context
from api.errors import ErrorEnvelope
from api.routers.fleet import read_upload
from core.auth import Principal
from core.datasets.models import DEFAULT_REQUIRED_COLUMNS, ColumnType, Dataset
from core.datasets.reading import Declared
from core.datasets.service import resolve_format
from core.errors import DomainError, ErrorKind, invalid

router = APIRouter(prefix="/api/v1/datasets", tags=["Datasets"])
Ctx = Annotated[AppContext, Depends(context)]
Caller = Annotated[Principal, Depends(authenticated)]
DatasetId = Annotated[str, Path(max_length=64, pattern=r"^[A-Za-z0-9_-]+$", description="e.g. ds-3f2a...")]
FormatName = Literal["csv", "json", "jsonl", "parquet"]
ColumnName = Annotated[str, Field(min_length=1, max_length=200)]


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorEnvelope} for code in (400, 401, 403, 429, 503, *codes)}


class DeclaredSchema(BaseModel):
    """Seed 003 ``DatasetSchema`` as the uploader declares it: ``required_columns`` (seed default
    instruction/input/output) must have a value in every row; ``columns`` must exist; ``column_types``
    (our extension) are checked value by value. ``sample`` is read from the file, never taken from here."""

    model_config = ConfigDict(extra="forbid")

    columns: list[ColumnName] = Field(default_factory=list, max_length=1000)
    sample: dict[str, Any] | None = Field(None, description="Ignored: the stored sample is the file's first row")
    required_columns: list[ColumnName] = Field(default_factory=lambda: list(DEFAULT_REQUIRED_COLUMNS),
                                               max_length=1000)
    column_types: dict[ColumnName, Literal["string", "integer", "number", "boolean"]] = Field(
        default_factory=dict, max_length=1000)

    def declared(self) -> Declared:
        return Declared(list(self.required_columns), {k: ColumnType(v) for k, v in self.column_types.items()},
                        list(self.columns))


class DatasetMetadata(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    description: str | None = Field(None, max_length=4000)
    format: FormatName | None = Field(None, description="Default: the file name's (or URL path's) extension")
    schema_: DeclaredSchema = Field(default_factory=DeclaredSchema, alias="schema")


class DatasetFromUrl(DatasetMetadata):
    """The JSON body of ``POST /api/v1/datasets``: fetch the file from ``source_url``."""

    source_url: str = Field(min_length=1, max_length=4096,
                            description="https:// (http:// if allowed), s3:// of our buckets, or file:// under "
                                        "the configured root")

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"name": "finance-qa", "source_url": "https://example.org/finance-qa.jsonl",
         "schema": {"required_columns": ["instruction", "input", "output"]}}]})


class DatasetUpload(BaseModel):
    """The multipart form of ``POST /api/v1/datasets``."""

    file: bytes = Field(json_schema_extra={"format": "binary"})
    name: str
    description: str | None = None
    format: FormatName | None = None
    schema_: str | None = Field(None, alias="schema", description="DatasetSchema as a JSON string")


class DatasetSchemaOut(BaseModel):
    columns: list[str]
    sample: dict[str, Any]
    required_columns: list[str]
    column_types: dict[str, str] = Field(default_factory=dict)


class DatasetStatisticsOut(BaseModel):
    """Seed 003 ``DatasetStatistics``: token lengths (all-MiniLM-L6-v2 WordPiece tokenizer)."""

    avg_input_length: float = Field(ge=0)
    avg_output_length: float = Field(ge=0)
    max_length: int = Field(ge=0)
    min_length: int = Field(ge=0)
    total_tokens: int | None = None


class DatasetOut(BaseModel):
    """Seed 003 ``Dataset`` (plus its sha256 and the redacted source_url it came from)."""

    model_config = ConfigDict(populate_by_name=True)

    dataset_id: str
    name: str
    description: str | None = None
    size_bytes: int = Field(ge=0)
    format: FormatName
    num_samples: int = Field(ge=0)
    path: str = Field(description="s3://bucket/datasets/<id>/data.<format>")
    created_at: datetime
    schema_: DatasetSchemaOut | None = Field(None, alias="schema")
    statistics: DatasetStatisticsOut | None = None
    sha256: str
    source_url: str | None = None


class DatasetList(BaseModel):
    """Seed 003 ``DatasetList``."""

    items: list[DatasetOut]
    total: int
    page: int = 1
    page_size: int = 20
    pages: int


def render(dataset: Dataset, bucket: str) -> DatasetOut:
    return DatasetOut.model_validate(dataset.view(bucket))


def _schema_field(raw: str | None) -> DeclaredSchema:
    if raw is None or not raw.strip():
        return DeclaredSchema()
    try:
        return DeclaredSchema.model_validate(json.loads(raw))
    except ValueError as exc:  # JSONDecodeError and ValidationError both
        raise invalid("VALIDATION_ERROR", "schema must be a DatasetSchema as a JSON object.",
                      errors=[{"field": "schema", "message": str(exc)[:500]}]) from exc


def _text(form: Any, name: str) -> str | None:
    value = form.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise invalid("VALIDATION_ERROR", f"{name} must be a text field.", field=name)
    return value


REQUEST_BODY = {"required": True, "content": {
    "multipart/form-data": {"schema": DatasetUpload.model_json_schema(by_alias=True)},
    "application/json": {"schema": DatasetFromUrl.model_json_schema(by_alias=True)},
}}


@router.post("", status_code=201, response_model=DatasetOut, response_model_by_alias=True,
             responses=_errors(409, 413, 415), summary="Upload a dataset (multipart) or fetch it by source_url",
             openapi_extra={"requestBody": REQUEST_BODY})
async def create_dataset(request: Request, ctx: Ctx, caller: Caller) -> DatasetOut:
    """The file (JSONL, JSON, CSV or Parquet) is read and checked against the declared schema: a
    malformed file is 400 ``DATASET_INVALID`` with ``details.row``/``line``/``column``; a file above
    ``TRIBUTARY_DATASET_MAX_BYTES`` is 413."""
    service = ctx.dataset_service()
    content_type = request.headers.get("content-type", "").lower()
    if content_type.startswith("multipart/form-data"):
        async with request.form(max_files=1, max_fields=10) as form:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise invalid("VALIDATION_ERROR", "Send the dataset as the multipart field 'file'.",
                              errors=[{"field": "file", "message": "required"}])
            try:
                metadata = DatasetMetadata.model_validate({
                    "name": _text(form, "name"), "description": _text(form, "description"),
                    "format": _text(form, "format") or None})
            except ValidationError as exc:
                raise RequestValidationError(exc.errors()) from exc
            declared = _schema_field(_text(form, "schema"))
            data = await read_upload(upload, service.max_bytes)
            fmt = resolve_format(metadata.format, upload.filename)
        dataset = await service.create(caller, name=metadata.name, description=metadata.description, fmt=fmt,
                                       declared=declared.declared(), data=data)
    elif content_type.startswith("application/json"):
        try:
            body = DatasetFromUrl.model_validate_json(await request.body())
        except ValidationError as exc:
            raise RequestValidationError(exc.errors()) from exc
        dataset = await service.create_from_url(caller, name=body.name, description=body.description,
                                                fmt=body.format, declared=body.schema_.declared(),
                                                source_url=body.source_url)
    else:
        raise DomainError(ErrorKind.UNSUPPORTED, "UNSUPPORTED_MEDIA_TYPE",
                          "Send multipart/form-data (a file) or application/json (a source_url).")
    return render(dataset, ctx.settings.s3_bucket)


@router.get("", response_model=DatasetList, response_model_by_alias=True, responses=_errors(),
            summary="List datasets")
async def list_datasets(ctx: Ctx, caller: Caller, page: Annotated[int, Query(ge=1, le=100_000)] = 1,
                        page_size: Annotated[int, Query(ge=1, le=100)] = 20) -> DatasetList:
    """Newest first; ``pages`` = ceil(total / page_size)."""
    result = await ctx.dataset_service().list(caller, page, page_size)
    return DatasetList(items=[render(d, ctx.settings.s3_bucket) for d in result.items], total=result.total,
                       page=page, page_size=page_size, pages=math.ceil(result.total / page_size))


@router.get("/{dataset_id}", response_model=DatasetOut, response_model_by_alias=True, responses=_errors(404),
            summary="Get a dataset")
async def get_dataset(dataset_id: DatasetId, ctx: Ctx, caller: Caller) -> DatasetOut:
    return render(await ctx.dataset_service().get(caller, dataset_id), ctx.settings.s3_bucket)


@router.delete("/{dataset_id}", response_model=DatasetOut, response_model_by_alias=True, responses=_errors(404),
               summary="Delete a dataset and its file")
async def delete_dataset(dataset_id: DatasetId, ctx: Ctx, caller: Caller) -> DatasetOut:
    """Answers the record as it was; its S3 file is deleted with it."""
    return render(await ctx.dataset_service().delete(caller, dataset_id), ctx.settings.s3_bucket)
