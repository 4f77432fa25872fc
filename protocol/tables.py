"""Paper-shaped tables of an experiment's ``results.csv``: ``clifvqa experiment table``.

``tables.csv`` places the results of (stage, setting, test set) in a ``table`` at a ``row`` and
``column`` (the stages' ``report`` in the experiment file). A cell for one metric is computed in
two steps over the results placed in it:

1. per split, the mean of the metric over the cell's test sets (one test set in Tables 1, 2, 4
   and 5; Table 3 averages the three fine-tuning datasets in one column, as the paper does);
2. over the splits: mean, standard deviation (population, as :func:`clifvqa.train.metrics.summarize`)
   and ``n``, the number of splits with a finite value.

The best mean of each (column, metric) is marked (the highest; the lowest for RMSE; every row
that ties), when at least two rows have a value. Rows and columns keep the order in which they
first appear in results.csv, which is the experiment file's order.

A reference file (``experiments/paper-reference.csv``: the paper's reported CLiF-VQA numbers)
is a CSV ``table,row,column,<metric>...``; its values are shown beside ours with the
difference (ours - reference) wherever the keys match.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clifvqa.protocol import ExperimentError
from clifvqa.protocol.results import LOWER_IS_BETTER, METRICS, Placement, ResultRow
from clifvqa.train.metrics import summarize

FORMATS = ("md", "csv", "latex")
DEFAULT_METRICS = ("srocc", "plcc")
"""The metrics the paper's tables report."""

Reference = dict[tuple[str, str, str, str], float]
"""``(table, row, column, metric) -> reported value``."""


@dataclass(frozen=True)
class Cell:
    """One table entry: mean and standard deviation over ``n`` splits."""

    mean: float
    std: float
    n: int


@dataclass
class Table:
    """One paper-shaped table: ``cells[(row, column, metric)]``; ``best`` holds the marked keys."""

    key: str
    rows: list[str]
    columns: list[str]
    metrics: tuple[str, ...]
    cells: dict[tuple[str, str, str], Cell] = field(default_factory=dict)
    best: set[tuple[str, str, str]] = field(default_factory=set)

    @property
    def title(self) -> str:
        return f"Table {self.key}" if self.key.isdigit() else self.key


def build_tables(results: Sequence[ResultRow], placements: Sequence[Placement],
                 metrics: Sequence[str] = DEFAULT_METRICS) -> list[Table]:
    """The tables of ``placements`` filled from ``results``, cells as described above; tables,
    rows and columns in the order of ``placements`` (the experiment file's)."""
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ExperimentError(f"unknown metrics {', '.join(unknown)}; choose from {', '.join(METRICS)}")
    tables: dict[str, Table] = {}
    where: dict[tuple[str, str, str], list[Placement]] = {}
    for p in placements:
        table = tables.setdefault(p.table, Table(p.table, [], [], tuple(metrics)))
        if p.row not in table.rows:
            table.rows.append(p.row)
        if p.column not in table.columns:
            table.columns.append(p.column)
        where.setdefault((p.stage, p.setting, p.test_set), []).append(p)
    # (table, row, column) -> split -> metric -> values over the cell's test sets
    values: dict[tuple[str, str, str], dict[str, dict[str, list[float]]]] = {}
    for r in results:
        for p in where.get((r.stage, r.setting, r.test_set), []):
            per_split = values.setdefault((p.table, p.row, p.column), {}).setdefault(r.split, {})
            for m in metrics:
                per_split.setdefault(m, []).append(r.metric(m))
    for (key, row, column), splits in values.items():
        table = tables[key]
        for m in metrics:
            stats = summarize([{m: _finite_mean(v[m])} for v in splits.values()], (m,))[m]
            table.cells[(row, column, m)] = Cell(stats["mean"], stats["std"], int(stats["count"]))
    for table in tables.values():
        _mark_best(table)
    return list(tables.values())


def _finite_mean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def _mark_best(table: Table) -> None:
    for column in table.columns:
        for m in table.metrics:
            means = {row: table.cells[(row, column, m)].mean for row in table.rows
                     if (row, column, m) in table.cells and math.isfinite(table.cells[(row, column, m)].mean)}
            if len(means) < 2:
                continue
            target = min(means.values()) if m in LOWER_IS_BETTER else max(means.values())
            table.best.update((row, column, m) for row, mean in means.items() if mean == target)


def read_reference(path: str | os.PathLike[str]) -> Reference:
    """Read a reference CSV (``table,row,column`` and metric columns; an empty value is "not
    reported"); a bad header or number is refused naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise ExperimentError(f"{path}: no such reference file (the paper's: experiments/paper-reference.csv)")
    reference: Reference = {}
    with open(path, newline="", encoding="utf-8-sig") as fh:
        rows = [(i, line) for i, line in enumerate(fh, start=1) if line.strip() and not line.lstrip().startswith("#")]
    reader = csv.reader(io.StringIO("".join(line for _, line in rows)))
    header = next(reader, None)
    if header is None:
        raise ExperimentError(f"{path}: empty reference file; expected a header table,row,column,srocc,plcc")
    header_line = rows[0][0]
    header = [h.strip() for h in header]
    if header[:3] != ["table", "row", "column"] or not header[3:]:
        raise ExperimentError(f"{path} line {header_line}: header must be table,row,column followed by metrics "
                              f"({', '.join(METRICS)}), got {','.join(header)}")
    unknown = [h for h in header[3:] if h not in METRICS]
    if unknown:
        raise ExperimentError(f"{path} line {header_line}: unknown metric columns {', '.join(unknown)}; "
                              f"known: {', '.join(METRICS)}")
    for (line, _), record in zip(rows[1:], reader):
        if len(record) != len(header):
            raise ExperimentError(f"{path} line {line}: {len(record)} fields, expected {len(header)} "
                                  f"({','.join(header)})")
        table, row, column = (f.strip() for f in record[:3])
        for metric, text in zip(header[3:], record[3:]):
            if not text.strip():
                continue
            try:
                value = float(text)
            except ValueError:
                raise ExperimentError(f"{path} line {line}: {metric} {text!r} is not a number") from None
            key = (table, row, column, metric)
            if key in reference:
                raise ExperimentError(f"{path} line {line}: {metric} of table {table} row {row!r} column "
                                      f"{column!r} is given twice")
            reference[key] = value
    return reference


def format_tables(tables: Sequence[Table], fmt: str = "md", reference: Reference | None = None) -> str:
    """``tables`` as Markdown (``md``), long-form CSV (``csv``) or LaTeX (``latex``) text.

    With ``reference``, each metric column is followed by the reference value and the difference
    (ours - reference); for the CSV, they are the ``reference`` and ``difference`` columns.
    """
    if fmt not in FORMATS:
        raise ExperimentError(f"unknown table format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "csv":
        return _format_csv(tables, reference)
    parts = [(_format_latex if fmt == "latex" else _format_md)(t, reference) for t in tables]
    return "\n\n".join(parts) + "\n"


def _headers(table: Table, reference: Reference | None) -> list[str]:
    heads = []
    for column in table.columns:
        for m in table.metrics:
            heads.append(f"{column} {m.upper()}")
            if reference is not None:
                heads += ["paper", "Δ"]
    return heads


def _entries(table: Table, row: str, reference: Reference | None, bold) -> list[str]:
    out = []
    for column in table.columns:
        for m in table.metrics:
            cell = table.cells.get((row, column, m))
            if cell is None or cell.n == 0:
                text = "-"
            else:
                mean = f"{cell.mean:.3f}"
                text = f"{bold(mean) if (row, column, m) in table.best else mean} ± {cell.std:.3f} ({cell.n})"
            out.append(text)
            if reference is not None:
                ref = reference.get((table.key, row, column, m))
                out.append("-" if ref is None else f"{ref:.3f}")
                out.append(f"{cell.mean - ref:+.3f}" if ref is not None and cell is not None and cell.n else "-")
    return out


def _unmatched(table: Table, reference: Reference | None) -> list[str]:
    """Reference entries of this table that no result matches (said under the table)."""
    if reference is None:
        return []
    return sorted({f"{row} / {column}" for (t, row, column, m) in reference
                   if t == table.key and (row, column, m) not in table.cells})


def _format_md(table: Table, reference: Reference | None) -> str:
    heads = _headers(table, reference)
    lines = [f"### {table.title}", "", "| | " + " | ".join(heads) + " |", "|---" * (len(heads) + 1) + "|"]
    for row in table.rows:
        lines.append(f"| {row} | " + " | ".join(_entries(table, row, reference, lambda s: f"**{s}**")) + " |")
    lines += ["", "mean ± std over splits (n splits); best per column in bold"]
    missing = _unmatched(table, reference)
    if missing:
        lines.append(f"reference entries without a result: {', '.join(missing)}")
    return "\n".join(lines)


def _latex_escape(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                 ("≤", r"$\le$"), ("Δ", r"$\Delta$"), ("±", r"$\pm$")):
        text = text.replace(a, b)
    return text


def _format_latex(table: Table, reference: Reference | None) -> str:
    heads = _headers(table, reference)
    lines = [f"% {table.title}: mean $\\pm$ std over splits (n splits); best per column in bold",
             r"\begin{tabular}{l" + "c" * len(heads) + "}", r"\hline",
             " & ".join([""] + [_latex_escape(h) for h in heads]) + r" \\", r"\hline"]
    for row in table.rows:
        entries = _entries(table, row, reference, lambda s: f"\\textbf{{{s}}}")
        lines.append(" & ".join([_latex_escape(row)] + [e.replace("±", r"$\pm$") for e in entries]) + r" \\")
    lines += [r"\hline", r"\end{tabular}"]
    return "\n".join(lines)


def _format_csv(tables: Sequence[Table], reference: Reference | None) -> str:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["table", "row", "column", "metric", "mean", "std", "n", "best", "reference", "difference"])
    for table in tables:
        for row in table.rows:
            for column in table.columns:
                for m in table.metrics:
                    cell = table.cells.get((row, column, m))
                    if cell is None:
                        continue
                    ref = reference.get((table.key, row, column, m)) if reference is not None else None
                    diff = cell.mean - ref if ref is not None and cell.n else None
                    writer.writerow([table.key, row, column, m, _num(cell.mean), _num(cell.std), cell.n,
                                     int((row, column, m) in table.best), _num(ref), _num(diff)])
    return text.getvalue()


def _num(value: float | None) -> str:
    return "" if value is None or not math.isfinite(value) else f"{value:.6f}"


def experiment_tables(folder: str | os.PathLike[str], *, fmt: str = "md",
                      reference: str | os.PathLike[str] | None = None,
                      metrics: Sequence[str] = DEFAULT_METRICS) -> str:
    """What ``clifvqa experiment table DIR`` prints: the tables of ``DIR/tables.csv`` filled from
    ``DIR/results.csv``, in ``fmt``, beside ``reference`` when given."""
    from clifvqa.protocol.results import read_placements, read_results

    path = Path(folder)
    tables = build_tables(read_results(path / "results.csv"), read_placements(path / "tables.csv"), metrics)
    if not tables:
        raise ExperimentError(f"{path}: no stage reports to a table (the stages' `report` in the experiment file)")
    return format_tables(tables, fmt, read_reference(reference) if reference is not None else None)
