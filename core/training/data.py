"""What a training job reads from a dataset, and which checkpoints it keeps.

Objective (MiniLM is a sentence-embedding model): multiple-negatives ranking over (anchor, positive)
pairs. Each anchor should embed closest to its own positive among every positive of its batch (the
other rows are its negatives), as sentence-transformers' MultipleNegativesRankingLoss does. The pair is
the dataset's ``anchor`` and ``positive`` columns when it has them, else seed 003's instruction-tuning
columns: ``instruction`` (with ``input`` appended when non-empty) as anchor and ``output`` as positive.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from core.training.schemas import TrainingCheckpoint

PAIR_COLUMNS: tuple[tuple[str, ...], ...] = (("anchor", "positive"), ("instruction", "output"))


class DatasetUnusable(ValueError):
    """The dataset cannot give (anchor, positive) pairs; the message says why."""


def pair_columns(columns: Iterable[str]) -> tuple[str, ...]:
    present = set(columns)
    for option in PAIR_COLUMNS:
        if set(option) <= present:
            return option
    raise DatasetUnusable(f"the dataset needs columns {' and '.join(PAIR_COLUMNS[0])}, or "
                          f"{' and '.join(PAIR_COLUMNS[1])} (with optional input); it has {sorted(present)}")


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def pairs_from_rows(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """(anchor, positive) per row; rows with an empty side are skipped."""
    if not rows:
        raise DatasetUnusable("the dataset has no rows")
    columns = pair_columns(rows[0].keys())
    pairs = []
    for row in rows:
        if columns == ("anchor", "positive"):
            anchor, positive = _text(row.get("anchor")), _text(row.get("positive"))
        else:
            anchor = " ".join(filter(None, (_text(row.get("instruction")), _text(row.get("input")))))
            positive = _text(row.get("output"))
        if anchor and positive:
            pairs.append((anchor, positive))
    if len(pairs) < 2:
        raise DatasetUnusable("multiple-negatives ranking needs at least 2 non-empty (anchor, positive) pairs")
    return pairs


def retain(checkpoints: list[TrainingCheckpoint], limit: int | None) -> tuple[list[TrainingCheckpoint],
                                                                              list[TrainingCheckpoint]]:
    """(kept, dropped): the newest ``limit`` checkpoints by step are kept (all when ``limit`` is None)."""
    ordered = sorted(checkpoints, key=lambda c: c.step)
    if limit is None or len(ordered) <= limit:
        return ordered, []
    return ordered[-limit:], ordered[:-limit]
