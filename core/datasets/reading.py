"""Reading a dataset file with pyarrow, checking it against its declared schema, and the statistics.

The file is read, never trusted: JSONL with ``pyarrow.json``, CSV with ``pyarrow.csv`` (single
threaded, so a ragged row's line number is known), Parquet with ``pyarrow.parquet``, and the seed's
``json`` format (one array of objects) with the stdlib parser into an Arrow table. Whatever is wrong
is a ``DomainError`` 400 ``DATASET_INVALID`` whose ``details`` name the ``row`` (1-based data record),
the ``line`` of the file where the format has lines (JSONL, CSV), and the ``column``.

A CSV value is text: a column declared ``string`` accepts whatever CSV type inference made of it.
Quoted values spanning lines are not supported in CSV (line numbers would lie).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from core.datasets.models import ColumnType, DatasetFormat, DatasetSchema, DatasetStatistics
from core.datasets.tokens import count_tokens, statistics_tokenizer
from core.errors import DomainError, ErrorKind

INPUT_COLUMNS = ("instruction", "input")
OUTPUT_COLUMNS = ("output",)


def malformed(message: str, *, row: int | None = None, column: str | None = None, line: int | None = None,
              **extra: Any) -> DomainError:
    details: dict[str, Any] = {"row": row, "column": column}
    if line is not None:
        details["line"] = line
    details.update(extra)
    return DomainError(ErrorKind.INVALID, "DATASET_INVALID", message, details=details,
                       hint="Fix the named row and column, or declare the schema the file really has.")


@dataclass(frozen=True)
class Declared:
    """What the uploader declares: the columns every row must hold, optionally their types, and
    optionally the columns the file must have (a value may be missing in some rows)."""

    required_columns: list[str]
    column_types: dict[str, ColumnType]
    columns: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ReadDataset:
    table: pa.Table
    schema: DatasetSchema
    statistics: DatasetStatistics | None


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null"


def _locate_jsonl_error(data: bytes, reader_message: str) -> DomainError:
    """pyarrow refused the file; its row numbers count within a block, so find the exact line with the
    stdlib-compatible parser (orjson) to name it (only on this error path)."""
    kinds: dict[str, str] = {}
    row = 0
    for number, raw in enumerate(data.splitlines(), start=1):
        if not raw.strip():
            continue
        row += 1
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return malformed(f"line {number} is not valid JSON: {exc}", row=row, line=number,
                             reader_message=reader_message)
        if not isinstance(value, dict):
            return malformed(f"line {number} is a JSON {_kind(value)}, not an object", row=row, line=number,
                             reader_message=reader_message)
        for column, item in value.items():
            kind = _kind(item)
            if kind == "null":
                continue
            seen = kinds.setdefault(column, kind)
            if seen != kind:
                return malformed(f"column {column!r} is a {kind} on line {number} but a {seen} before",
                                 row=row, line=number, column=column, reader_message=reader_message)
    return malformed(f"the file could not be read as JSON Lines: {reader_message}", reader_message=reader_message)


def _read_jsonl(data: bytes) -> pa.Table:
    try:
        return pa_json.read_json(io.BytesIO(data))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise _locate_jsonl_error(data, str(exc)) from exc


def _read_json_array(data: bytes) -> pa.Table:
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise malformed(f"the file is not valid JSON: {exc}") from exc
    if not isinstance(value, list):
        raise malformed("a 'json' dataset is one JSON array of objects; use 'jsonl' for one object per line")
    for index, item in enumerate(value, start=1):
        if not isinstance(item, dict):
            raise malformed(f"item {index} is a JSON {_kind(item)}, not an object", row=index)
    try:
        return pa.Table.from_pylist(value)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        # mixed types in a column: name the first item that disagrees with the ones before it
        kinds: dict[str, str] = {}
        for index, item in enumerate(value, start=1):
            for column, cell in item.items():
                kind = _kind(cell)
                if kind != "null" and kinds.setdefault(column, kind) != kind:
                    raise malformed(f"column {column!r} is a {kind} in item {index} but a {kinds[column]} before",
                                    row=index, column=column) from exc
        raise malformed(f"the file could not be read: {exc}") from exc


def _read_csv(data: bytes) -> pa.Table:
    ragged: list[Any] = []

    def on_invalid(row: Any) -> str:
        ragged.append(row)
        return "error"

    try:
        return pa_csv.read_csv(
            io.BytesIO(data), read_options=pa_csv.ReadOptions(use_threads=False),
            parse_options=pa_csv.ParseOptions(invalid_row_handler=on_invalid),
            convert_options=pa_csv.ConvertOptions(strings_can_be_null=False))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        if ragged:
            bad = ragged[0]
            line = bad.number
            raise malformed(f"line {line} has {bad.actual_columns} columns; the header has {bad.expected_columns}",
                            row=line - 1 if line else None, line=line, expected_columns=bad.expected_columns,
                            actual_columns=bad.actual_columns) from exc
        raise malformed(f"the file could not be read as CSV: {exc}") from exc


def _read_parquet(data: bytes) -> pa.Table:
    try:
        return pq.read_table(io.BytesIO(data))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
        raise malformed(f"the file is not a readable Parquet file: {exc}") from exc


READERS = {DatasetFormat.JSONL: _read_jsonl, DatasetFormat.JSON: _read_json_array, DatasetFormat.CSV: _read_csv,
           DatasetFormat.PARQUET: _read_parquet}


def read_table(data: bytes, fmt: DatasetFormat) -> pa.Table:
    """The file as an Arrow table, or ``DATASET_INVALID``."""
    try:
        table = READERS[fmt](data)
        table.column_names  # noqa: B018 - Arrow decodes the names only here; a CSV header may not be UTF-8
    except UnicodeDecodeError as exc:
        raise malformed(f"the file's column names are not UTF-8 text: {exc}") from exc
    return table


def _matches(arrow_type: pa.DataType, declared: ColumnType, fmt: DatasetFormat) -> bool:
    if pa.types.is_null(arrow_type):
        return True  # every value null: the null check names the row
    if declared is ColumnType.STRING:
        if fmt is DatasetFormat.CSV:
            return not pa.types.is_nested(arrow_type)  # CSV cells are text, whatever inference made of them
        return bool(pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type))
    if declared is ColumnType.INTEGER:
        return bool(pa.types.is_integer(arrow_type))
    if declared is ColumnType.NUMBER:
        return bool(pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type)
                    or pa.types.is_decimal(arrow_type))
    return bool(pa.types.is_boolean(arrow_type))


def _csv_text_matches(text: str, declared: ColumnType) -> bool:
    """A CSV cell is text: it is of a declared type if it parses as one."""
    if declared is ColumnType.BOOLEAN:
        return text.strip().lower() in ("true", "false")
    try:
        int(text) if declared is ColumnType.INTEGER else float(text)
    except ValueError:
        return False
    return True


def _value_matches(value: Any, declared: ColumnType, fmt: DatasetFormat) -> bool:
    if fmt is DatasetFormat.CSV and isinstance(value, str) and declared is not ColumnType.STRING:
        return _csv_text_matches(value, declared)
    if declared is ColumnType.STRING:
        return isinstance(value, str)
    if declared is ColumnType.BOOLEAN:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if declared is ColumnType.INTEGER:
        return isinstance(value, int)
    return isinstance(value, int | float)


def _line(fmt: DatasetFormat, data: bytes, row: int) -> int | None:
    """The file line of 1-based data record ``row`` (JSONL: blank lines skipped; CSV: after the header)."""
    if fmt is DatasetFormat.CSV:
        return row + 1
    if fmt is DatasetFormat.JSONL:
        seen = 0
        for number, raw in enumerate(data.splitlines(), start=1):
            if raw.strip():
                seen += 1
                if seen == row:
                    return number
    return None


def check_schema(table: pa.Table, declared: Declared, fmt: DatasetFormat, data: bytes) -> None:
    """Every required column present with a value in every row; every typed column of its type."""
    if table.num_rows == 0:
        raise malformed("the dataset has no rows", row=None)
    names = set(table.column_names)
    for column in dict.fromkeys([*declared.columns, *declared.required_columns]):
        if column not in names:
            raise malformed(f"declared column {column!r} is missing (the file has {sorted(names)})", row=1,
                            line=_line(fmt, data, 1), column=column, columns=sorted(names))
    for column in declared.required_columns:
        values = table.column(column)
        if values.null_count:
            row = values.to_pylist().index(None) + 1
            raise malformed(f"row {row} has no value in required column {column!r}", row=row,
                            line=_line(fmt, data, row), column=column)
    for column, kind in declared.column_types.items():
        if column not in names:
            raise malformed(f"declared column {column!r} is missing (the file has {sorted(names)})", row=1,
                            line=_line(fmt, data, 1), column=column, columns=sorted(names))
        arrow_type = table.schema.field(column).type
        if _matches(arrow_type, kind, fmt):
            continue
        for index, value in enumerate(table.column(column).to_pylist(), start=1):
            if value is not None and not _value_matches(value, kind, fmt):
                raise malformed(f"row {index} column {column!r} holds {value!r}, not a {kind.value}", row=index,
                                line=_line(fmt, data, index), column=column, expected=kind.value,
                                found=str(arrow_type))
        # every value is of the declared type although the column's is not (CSV text such as " 7")


def _texts(table: pa.Table, columns: tuple[str, ...]) -> list[str]:
    present = [c for c in columns if c in table.column_names]
    if not present:
        return [""] * table.num_rows
    cells = [table.column(c).to_pylist() for c in present]
    return [" ".join(str(v) for v in row if v not in (None, "")) for row in zip(*cells, strict=True)]


def compute_statistics(table: pa.Table) -> DatasetStatistics | None:
    """Token lengths of ``instruction`` + ``input`` (input) and ``output`` (output) per sample; when a
    dataset has none of those columns, every string column counts as input. None without a tokenizer."""
    tokenizer = statistics_tokenizer()
    if tokenizer is None or table.num_rows == 0:
        return None
    input_columns = INPUT_COLUMNS
    if not any(c in table.column_names for c in (*INPUT_COLUMNS, *OUTPUT_COLUMNS)):
        input_columns = tuple(f.name for f in table.schema
                              if pa.types.is_string(f.type) or pa.types.is_large_string(f.type))
    inputs = count_tokens(tokenizer, _texts(table, input_columns))
    outputs = count_tokens(tokenizer, _texts(table, OUTPUT_COLUMNS))
    lengths = [i + o for i, o in zip(inputs, outputs, strict=True)]
    rows = table.num_rows
    return DatasetStatistics(avg_input_length=round(sum(inputs) / rows, 3),
                             avg_output_length=round(sum(outputs) / rows, 3),
                             max_length=max(lengths), min_length=min(lengths), total_tokens=sum(lengths))


def _plain(value: Any) -> Any:
    """A JSON-safe copy of a sample row (Parquet may hold bytes, dates, decimals)."""
    return json.loads(json.dumps(value, default=str))


def read_dataset(data: bytes, fmt: DatasetFormat, declared: Declared) -> ReadDataset:
    """Read, check and measure a dataset file (CPU-bound: callers run it off the event loop)."""
    table = read_table(data, fmt)
    check_schema(table, declared, fmt, data)
    first = table.slice(0, 1).to_pylist()[0]
    schema = DatasetSchema(columns=list(table.column_names), sample=_plain(first),
                           required_columns=list(declared.required_columns), column_types=dict(declared.column_types))
    return ReadDataset(table, schema, compute_statistics(table))


def rows_of(table: pa.Table, batch_rows: int = 1024) -> Iterator[dict[str, Any]]:
    for batch in table.to_batches(max_chunksize=batch_rows):
        yield from batch.to_pylist()
