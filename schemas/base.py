"""What the codec and the JSON views both stand on: where the schema files live, and the error
a record that breaks its schema raises. Kept below both so neither imports the other for it."""

from __future__ import annotations

from pathlib import Path

AVRO_DIR = Path(__file__).parent / "avro"
JSON_DIR = Path(__file__).parent / "json"


class SchemaValidationError(ValueError):
    """A record that does not match its schema; the message names the field."""
