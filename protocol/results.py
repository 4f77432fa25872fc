"""The result files of an experiment folder.

``results.csv``: one row per (stage, setting, split, test set). Columns (:data:`RESULT_COLUMNS`):

- ``stage``, ``setting``, ``split``, ``test_set``: which run and which test set (``dataset.set``).
- ``n``: videos scored; ``srocc``, ``plcc`` (raw predictions, as FAST-VQA reports it),
  ``plcc_fit`` (after the 4-parameter logistic), ``krocc``, ``rmse`` (after the logistic):
  :func:`clifvqa.train.metrics.compute_metrics`; ``epoch``: the epoch model selection kept (for
  an evaluation stage, that of the run whose checkpoint it scores).

Numbers are written with ``repr`` (round-trip exact), rows in the experiment's run order, so
the file of a resumed experiment equals the file of an uninterrupted one byte for byte.

``tables.csv``: where results go in the paper-shaped tables (:mod:`clifvqa.protocol.tables`),
from the stages' ``report`` in the experiment file: one row per (stage, setting, test set) and
table, with the ``table``, ``row`` and ``column`` it is shown in (:data:`PLACEMENT_COLUMNS`).
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from clifvqa._atomic import atomic_write_text
from clifvqa.protocol import ExperimentError

METRICS: tuple[str, ...] = ("srocc", "plcc", "plcc_fit", "krocc", "rmse")
"""Metrics in results.csv; higher is better for all but ``rmse``."""

LOWER_IS_BETTER: frozenset[str] = frozenset({"rmse"})


@dataclass(frozen=True)
class ResultRow:
    """One test set scored by one run (see the module docstring for the fields)."""

    stage: str
    setting: str
    split: str
    test_set: str
    n: int
    srocc: float
    plcc: float
    plcc_fit: float
    krocc: float
    rmse: float
    epoch: int | None = None

    def metric(self, name: str) -> float:
        return float(getattr(self, name))


RESULT_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(ResultRow))


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    return str(value)


def format_results(rows: Iterable[ResultRow]) -> str:
    """The CSV text of ``rows`` (header first, ``\\n`` line ends)."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(RESULT_COLUMNS)
    for row in rows:
        writer.writerow([_text(getattr(row, name)) for name in RESULT_COLUMNS])
    return text.getvalue()


def write_results(rows: Sequence[ResultRow], path: str | os.PathLike[str]) -> Path:
    """Write ``rows`` to ``path`` atomically (a reader never sees half a file)."""
    return atomic_write_text(path, format_results(rows))


def _records(path: Path, columns: Sequence[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """``(line, record)`` of a CSV whose header must hold ``columns``."""
    if not path.is_file():
        raise ExperimentError(f"{path}: no such file; run `clifvqa experiment run` first, or name the "
                              "experiment folder that holds results.csv and tables.csv")
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise ExperimentError(f"{path} line 1: missing columns {', '.join(missing)}; expected {','.join(columns)}")
        yield from enumerate(reader, start=2)


def read_results(path: str | os.PathLike[str]) -> list[ResultRow]:
    """Read a results.csv; a missing column or a bad number is refused naming the file and line."""
    path = Path(path)
    rows = []
    for line, record in _records(path, RESULT_COLUMNS):
        try:
            texts: dict[str, Any] = {k: record[k] or "" for k in ("stage", "setting", "split", "test_set")}
            scores: dict[str, Any] = {k: float(record[k]) if record[k] else math.nan for k in METRICS}
            rows.append(ResultRow(
                **texts,
                n=int(record["n"]),
                **scores,
                epoch=int(record["epoch"]) if record["epoch"] else None,
            ))
        except (TypeError, ValueError) as exc:
            raise ExperimentError(f"{path} line {line}: {exc}; fix the row or rebuild the file with "
                                  "`clifvqa experiment run` (finished runs are not redone)") from None
    return rows


@dataclass(frozen=True)
class Placement:
    """Results of (``stage``, ``setting``, ``test_set``) are shown in ``table`` at ``row``, ``column``."""

    stage: str
    setting: str
    test_set: str
    table: str
    row: str
    column: str


PLACEMENT_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(Placement))


def write_placements(placements: Sequence[Placement], path: str | os.PathLike[str]) -> Path:
    """Write tables.csv atomically."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(PLACEMENT_COLUMNS)
    writer.writerows([getattr(p, c) for c in PLACEMENT_COLUMNS] for p in placements)
    return atomic_write_text(path, text.getvalue())


def read_placements(path: str | os.PathLike[str]) -> list[Placement]:
    """Read a tables.csv (a missing column is refused naming the file)."""
    records = _records(Path(path), PLACEMENT_COLUMNS)
    return [Placement(**{c: record[c] or "" for c in PLACEMENT_COLUMNS}) for _, record in records]
