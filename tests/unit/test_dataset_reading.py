"""Dataset files are read with pyarrow and checked against the declared schema: every format, and each
malformed case answers 400 DATASET_INVALID naming the row (and line) and column."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core.datasets.models import ColumnType, DatasetFormat
from core.datasets.reading import Declared, read_dataset
from core.datasets.tokens import count_tokens, statistics_tokenizer
from core.errors import DomainError, ErrorKind

pytestmark = pytest.mark.unit

ROWS = [
    {"instruction": "Translate to Portuguese", "input": "Good morning", "output": "Bom dia"},
    {"instruction": "Summarise", "input": "", "output": "Nothing to summarise."},
    {"instruction": "Say hello", "input": "to the world", "output": "Hello, world!"},
]
TRIPLE = Declared(["instruction", "input", "output"], {})


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def csv(rows: list[dict[str, Any]]) -> bytes:
    header = ",".join(rows[0])
    return (header + "\n" + "".join(",".join(f'"{v}"' for v in r.values()) + "\n" for r in rows)).encode()


def parquet(rows: list[dict[str, Any]]) -> bytes:
    out = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), out)
    return out.getvalue()


Encoder = Callable[[list[dict[str, Any]]], bytes]
ENCODERS: dict[DatasetFormat, Encoder] = {
    DatasetFormat.JSONL: jsonl, DatasetFormat.CSV: csv, DatasetFormat.PARQUET: parquet,
    DatasetFormat.JSON: lambda rows: json.dumps(rows).encode()}


def refusal(data: bytes, fmt: DatasetFormat, declared: Declared = TRIPLE) -> dict[str, Any]:
    with pytest.raises(DomainError) as caught:
        read_dataset(data, fmt, declared)
    assert caught.value.kind is ErrorKind.INVALID and caught.value.code == "DATASET_INVALID"
    assert caught.value.details is not None
    return caught.value.details


@pytest.mark.parametrize("fmt", list(DatasetFormat))
def test_each_format_reads_rows_schema_and_token_statistics(fmt: DatasetFormat) -> None:
    read = read_dataset(ENCODERS[fmt](ROWS), fmt, TRIPLE)
    assert read.table.num_rows == 3
    assert read.schema.columns == ["instruction", "input", "output"]
    assert read.schema.sample == ROWS[0]
    tokenizer = statistics_tokenizer()
    assert tokenizer is not None
    inputs = count_tokens(tokenizer, [" ".join(v for v in (r["instruction"], r["input"]) if v) for r in ROWS])
    outputs = count_tokens(tokenizer, [r["output"] for r in ROWS])
    stats = read.statistics
    assert stats is not None
    assert stats.total_tokens == sum(inputs) + sum(outputs)
    assert stats.avg_input_length == round(sum(inputs) / 3, 3)
    assert stats.avg_output_length == round(sum(outputs) / 3, 3)
    assert stats.max_length == max(i + o for i, o in zip(inputs, outputs, strict=True))
    assert stats.min_length == min(i + o for i, o in zip(inputs, outputs, strict=True))


def test_a_bad_json_line_names_its_line_and_row() -> None:
    data = jsonl(ROWS[:1]) + b"\n" + b'{"instruction": "x", "input": "y",}\n' + jsonl(ROWS[1:])
    details = refusal(data, DatasetFormat.JSONL)
    assert details["line"] == 3 and details["row"] == 2  # the blank line 2 holds no record


def test_a_json_line_that_is_not_an_object_is_named() -> None:
    details = refusal(jsonl(ROWS[:2]) + b"[1, 2]\n", DatasetFormat.JSONL)
    assert details["line"] == 3 and details["row"] == 3


def test_a_jsonl_column_changing_type_names_row_and_column() -> None:
    rows = [dict(r) for r in ROWS] + [{**ROWS[0], "output": 42}]
    details = refusal(jsonl(rows), DatasetFormat.JSONL)
    assert details["row"] == 4 and details["column"] == "output"


def test_a_ragged_csv_row_names_its_line() -> None:
    data = csv(ROWS) + b'"only","two"\n'
    details = refusal(data, DatasetFormat.CSV)
    assert details["line"] == 5 and details["row"] == 4
    assert details["expected_columns"] == 3 and details["actual_columns"] == 2


def test_a_csv_header_that_is_not_utf8_is_refused_not_a_500() -> None:
    # found by the API fuzzer: Arrow decodes column names lazily and raised UnicodeDecodeError
    details = refusal(b"\x89instruction,input,output\na,b,c\n", DatasetFormat.CSV)
    assert details["row"] is None


def test_unreadable_parquet_is_refused() -> None:
    details = refusal(b"PAR1 this is not parquet at all PAR1", DatasetFormat.PARQUET)
    assert details["row"] is None and details["column"] is None


@pytest.mark.parametrize("fmt", list(DatasetFormat))
def test_a_missing_required_column_is_named(fmt: DatasetFormat) -> None:
    rows = [{"instruction": r["instruction"], "input": r["input"]} for r in ROWS]
    details = refusal(ENCODERS[fmt](rows), fmt)
    assert details["column"] == "output" and details["row"] == 1


@pytest.mark.parametrize("fmt", [DatasetFormat.JSONL, DatasetFormat.JSON, DatasetFormat.PARQUET])
def test_a_row_without_a_required_value_is_named(fmt: DatasetFormat) -> None:
    rows: list[dict[str, Any]] = [dict(r) for r in ROWS]
    del rows[2]["output"]
    if fmt is DatasetFormat.PARQUET:
        rows[2]["output"] = None
    details = refusal(ENCODERS[fmt](rows), fmt)
    assert details["row"] == 3 and details["column"] == "output"
    if fmt is DatasetFormat.JSONL:
        assert details["line"] == 3


@pytest.mark.parametrize("fmt", [DatasetFormat.JSONL, DatasetFormat.PARQUET, DatasetFormat.CSV])
def test_a_value_of_the_wrong_declared_type_names_row_and_column(fmt: DatasetFormat) -> None:
    rows = [{**r, "score": i} for i, r in enumerate(ROWS)]
    declared = Declared(["instruction", "input", "output"], {"score": ColumnType.INTEGER})
    assert read_dataset(ENCODERS[fmt](rows), fmt, declared).schema.column_types == {"score": ColumnType.INTEGER}
    if fmt is DatasetFormat.JSONL:  # a whole column of the wrong type (a mixed one fails at reading)
        rows = [{**r, "score": str(i)} for i, r in enumerate(ROWS)]
    else:
        rows = [{**r, "score": "high" if i == 1 else str(i)} for i, r in enumerate(ROWS)]
    details = refusal(ENCODERS[fmt](rows), fmt, declared)
    assert details["column"] == "score" and details["expected"] == "integer"
    assert details["row"] == (1 if fmt is DatasetFormat.JSONL else 1 if fmt is DatasetFormat.PARQUET else 2)


def test_csv_numbers_satisfy_a_declared_string_column() -> None:
    rows = [{**r, "output": str(100 + i)} for i, r in enumerate(ROWS)]
    read = read_dataset(csv(rows), DatasetFormat.CSV, Declared(["output"], {"output": ColumnType.STRING}))
    assert read.table.num_rows == 3


def test_a_json_file_that_is_not_an_array_is_refused() -> None:
    refusal(json.dumps(ROWS[0]).encode(), DatasetFormat.JSON)


def test_an_empty_file_has_no_rows() -> None:
    details = refusal(b"instruction,input,output\n", DatasetFormat.CSV)
    assert details["row"] is None
