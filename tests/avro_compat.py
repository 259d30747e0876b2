"""Avro schema-resolution compatibility, with problems that name the field (a test helper:
``tests/unit/test_schema_evolution.py`` checks every committed schema version with it).

Checks the rules a reader applies to a writer's data (Avro spec, "Schema Resolution"):
a reader field missing from the writer needs a default; a shared field's types must
resolve (same primitive, promotions int→long→float→double, enums the reader can map,
unions with a matching branch, records recursively).
"""

from __future__ import annotations

from typing import Any

_PROMOTIONS = {
    ("int", "long"), ("int", "float"), ("int", "double"), ("long", "float"), ("long", "double"),
    ("float", "double"), ("string", "bytes"), ("bytes", "string"),
}


def _name(t: Any) -> str:
    if isinstance(t, list):
        return "union"
    if isinstance(t, dict):
        return str(t["type"])
    return str(t)


def _compatible(writer: Any, reader: Any, path: str, problems: list[str]) -> bool:
    if isinstance(writer, list):
        # Every writer branch must be readable by the reader.
        ok = True
        for branch in writer:
            sub: list[str] = []
            if not _compatible(branch, reader, path, sub):
                problems.append(f"field '{path}': writer branch {_name(branch)} has no match in reader")
                ok = False
        return ok
    if isinstance(reader, list):
        for branch in reader:
            if _compatible(writer, branch, path, []):
                return True
        problems.append(f"field '{path}': reader union has no branch for writer type {_name(writer)}")
        return False
    w, r = _name(writer), _name(reader)
    if w != r:
        if (w, r) in _PROMOTIONS:
            return True
        problems.append(f"field '{path}': writer type {w} cannot be read as {r}")
        return False
    if isinstance(writer, dict) and writer.get("type") == "record":
        return not check_record(writer, reader, path, problems)
    if isinstance(writer, dict) and writer.get("type") == "enum":
        missing = set(writer["symbols"]) - set(reader["symbols"])
        if missing and "default" not in reader:
            problems.append(f"field '{path}': enum symbols {sorted(missing)} unknown to the reader (no default)")
            return False
    if isinstance(writer, dict) and writer.get("type") == "array":
        return _compatible(writer["items"], reader["items"], f"{path}[]", problems)
    return True


def check_record(writer: dict[str, Any], reader: dict[str, Any], prefix: str, problems: list[str]) -> list[str]:
    found: list[str] = []
    writer_fields = {f["name"]: f for f in writer["fields"]}
    for field in reader["fields"]:
        name = f"{prefix}.{field['name']}" if prefix else field["name"]
        aliases = [field["name"], *field.get("aliases", [])]
        source = next((writer_fields[a] for a in aliases if a in writer_fields), None)
        if source is None:
            if "default" not in field:
                found.append(f"field '{name}' is missing in the writer and has no default in the reader")
            continue
        _compatible(source["type"], field["type"], name, found)
    problems.extend(found)
    return found


def check_compatibility(writer: dict[str, Any], reader: dict[str, Any], label: str = "") -> list[str]:
    """Problems a reader with schema ``reader`` has reading data written with ``writer``."""
    problems: list[str] = []
    check_record(writer, reader, "", problems)
    return [f"{label}: {p}" if label else p for p in problems]
