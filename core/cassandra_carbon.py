"""``CarbonStore`` on Cassandra (tables ``carbon_by_day``, ``carbon_by_subject``, ``carbon_by_model``,
migration 0012): each record is written to all three, one per read path; every write is an upsert."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from cassandra.concurrent import execute_concurrent_with_args

from core.carbon import CarbonBreakdown, CarbonMeasurement, CarbonRecord, CarbonStore, CarbonTimepoint, SubjectKind
from core.cassandra.statements import CassandraRepository, as_utc

VALUES = ("model_id", "requests", "energy_kwh", "emissions_kg", "duration_seconds", "carbon_intensity", "location",
          "breakdown", "timeline")
COLUMNS = ("recorded_at", "subject_kind", "subject_id", *VALUES)
SELECT = ", ".join(COLUMNS)
# A summary reads one partition per day; a longer period is refused by the caller (api/routers/carbon.py).
MAX_DAYS = 366


def _insert(table: str, key: tuple[str, ...]) -> str:
    columns = (*key, *(c for c in COLUMNS if c not in key))
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"


INSERT_DAY = _insert("carbon_by_day", ("day",))
INSERT_SUBJECT = _insert("carbon_by_subject", ())
INSERT_MODEL = _insert("carbon_by_model", ())


def day_of(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%d")


def _timeline_json(points: Sequence[CarbonTimepoint]) -> str:
    return json.dumps([[p.timestamp.isoformat(), p.emissions_kg, p.power_w] for p in points])


def _timeline(text: str | None) -> tuple[CarbonTimepoint, ...]:
    return tuple(CarbonTimepoint(datetime.fromisoformat(t), float(e), float(w)) for t, e, w in json.loads(text or "[]"))


class CassandraCarbonStore(CassandraRepository, CarbonStore):

    @staticmethod
    def _values(r: CarbonRecord) -> tuple[Any, ...]:
        m = r.measurement
        values = {"recorded_at": r.recorded_at, "subject_kind": r.subject_kind.value, "subject_id": r.subject_id,
                  "model_id": r.model_id, "requests": r.requests, "energy_kwh": m.energy_kwh,
                  "emissions_kg": m.emissions_kg, "duration_seconds": m.duration_seconds,
                  "carbon_intensity": m.carbon_intensity, "location": m.location,
                  "breakdown": json.dumps(m.breakdown.as_dict()), "timeline": _timeline_json(m.timeline)}
        return tuple(values[c] for c in COLUMNS)

    @staticmethod
    def _row(row: Any) -> CarbonRecord:
        measurement = CarbonMeasurement(
            energy_kwh=row.energy_kwh or 0.0, emissions_kg=row.emissions_kg or 0.0,
            duration_seconds=row.duration_seconds or 0.0, carbon_intensity=row.carbon_intensity or 0.0,
            location=row.location or "", breakdown=CarbonBreakdown(**json.loads(row.breakdown or "{}")),
            timeline=_timeline(row.timeline))
        return CarbonRecord(SubjectKind(row.subject_kind), row.subject_id, row.model_id or "",
                            as_utc(row.recorded_at) or datetime.now(UTC), measurement, row.requests or 0)

    def record(self, records: Sequence[CarbonRecord]) -> None:
        if not records:
            return
        rows = [self._values(r) for r in records]
        by_day = [(day_of(r.recorded_at), *v) for r, v in zip(records, rows, strict=True)]
        for statement, params in ((INSERT_DAY, by_day), (INSERT_SUBJECT, rows), (INSERT_MODEL, rows)):
            for ok, result in execute_concurrent_with_args(self.session, self._q(statement), params,
                                                           concurrency=32, raise_on_first_error=False):
                if not ok:
                    raise result

    def between(self, start: datetime, end: datetime) -> list[CarbonRecord]:
        if end <= start:
            return []
        first, last = start.astimezone(UTC).date(), end.astimezone(UTC).date()
        days = (last - first).days + 1
        if days > MAX_DAYS:
            raise ValueError(f"a carbon period spans at most {MAX_DAYS} days")
        out: list[CarbonRecord] = []
        for offset in range(days):
            day = (first + timedelta(days=offset)).isoformat()
            rows = self._run(f"SELECT {SELECT} FROM carbon_by_day WHERE day = ? AND recorded_at >= ? "
                             "AND recorded_at < ?", day, start, end)
            out.extend(self._row(r) for r in rows)
        return out

    def for_subject(self, kind: SubjectKind, subject_id: str) -> list[CarbonRecord]:
        rows = self._run(f"SELECT {SELECT} FROM carbon_by_subject WHERE subject_kind = ? AND subject_id = ?",
                         kind.value, subject_id)
        return [self._row(r) for r in rows]

    def for_model(self, model_id: str) -> list[CarbonRecord]:
        rows = self._run(f"SELECT {SELECT} FROM carbon_by_model WHERE model_id = ?", model_id)
        return [self._row(r) for r in rows]
