"""The page of an experiment folder (``clifvqa experiment run -o``: results.csv, tables.csv, runs/).

Tables 1–5 as ``clifvqa experiment table`` computes them (:func:`clifvqa.protocol.tables.build_tables`:
mean ± std over splits, n splits, best per column in bold), each metric beside the paper's number
and the difference (ours − paper) from ``experiments/paper-reference.csv``; each cell links to the
training curves of the runs behind it, drawn further down the page from their metrics.jsonl.
"""

from __future__ import annotations

from pathlib import Path

from clifvqa.protocol.plan import RUNS_DIR
from clifvqa.protocol.results import ResultRow, read_placements, read_results
from clifvqa.protocol.tables import DEFAULT_METRICS, Reference, Table, build_tables, read_reference
from clifvqa.report import ReportError, figures
from clifvqa.report.html import Cell, Raw, Section, esc, figure, para, table
from clifvqa.train.run_folder import RunFolder

PAPER_REFERENCE = Path(__file__).resolve().parents[1] / "experiments" / "paper-reference.csv"
"""The paper's reported numbers (installed with the package)."""
MAX_RUN_CURVES = 120
"""Runs drawn at most (one small figure each); more are listed without curves."""


def run_folders(out: Path, row: ResultRow) -> list[tuple[str, Path]]:
    """``(run id, training folder)`` of the runs behind a results row: ``runs/STAGE/SETTING/DATA/SPLIT``
    (its ``train/`` when there is one) holding metrics.jsonl."""
    found = []
    for folder in sorted((out / RUNS_DIR / row.stage / row.setting).glob(f"*/{row.split}")):
        train = folder / "train" if (folder / "train").is_dir() else folder
        if (train / RunFolder.METRICS).is_file():
            found.append((folder.relative_to(out / RUNS_DIR).as_posix(), train))
    return found


def anchor(run_id: str) -> str:
    return "run-" + "".join(c if c.isalnum() else "-" for c in run_id)


def _links(run_ids: list[str]) -> str:
    if not run_ids:
        return ""
    return " " + " ".join(f'<a href="#{anchor(r)}" title="{esc(r)}">[{i + 1}]</a>' for i, r in enumerate(run_ids))


def table_html(t: Table, reference: Reference, cell_runs: dict[tuple[str, str], list[str]]) -> Raw:
    """One paper-shaped table: per column and metric, ours (mean ± std (n), linked to its runs), paper, Δ."""
    heads: list[object] = [t.title]
    for column in t.columns:
        for m in t.metrics:
            heads += [f"{column} {m.upper()}", "paper", "Δ"]
    rows = []
    for row in t.rows:
        cells: list[object] = [Cell(row, "l")]
        for column in t.columns:
            for m in t.metrics:
                c = t.cells.get((row, column, m))
                key = f"{t.key}|{row}|{column}|{m}"
                if c is None or c.n == 0:
                    cells.append(Cell("-", attrs={"data-cell": key}))
                else:
                    links = _links(cell_runs.get((row, column), []))
                    text = Raw(f'<span class="v">{c.mean:.3f}</span> ± {c.std:.3f} ({c.n}){links}')
                    cells.append(Cell(text, "best" if (row, column, m) in t.best else "", {"data-cell": key}))
                ref = reference.get((t.key, row, column, m))
                cells.append(Cell("-" if ref is None else f"{ref:.3f}", attrs={"data-paper": key}))
                if ref is None or c is None or c.n == 0:
                    cells.append("-")
                else:
                    d = c.mean - ref
                    cells.append(Cell(f"{d:+.3f}", "pos" if d >= 0 else "neg", {"data-delta": key}))
        rows.append(cells)
    return table(heads, rows, table_id=f"table-{t.key}",
                 caption="ours: mean ± std over splits (n splits), best per column in bold, [k] links to the runs' "
                         "curves; paper: the reported number; Δ = ours − paper")


def experiment_page(folder: Path) -> tuple[str, str, list[Section]]:
    """Title, subtitle and sections of the experiment page of ``folder``."""
    results = read_results(folder / "results.csv")
    placements = read_placements(folder / "tables.csv")
    tables = build_tables(results, placements, DEFAULT_METRICS)
    if not tables:
        raise ReportError(f"{folder}: no stage reports to a table (the stages' `report` in the experiment file)")
    reference = read_reference(PAPER_REFERENCE)
    # (table, row, column) -> the runs behind that cell, in results order
    runs: dict[str, Path] = {}
    cell_runs: dict[tuple[str, str, str], list[str]] = {}
    for p in placements:
        for r in results:
            if (r.stage, r.setting, r.test_set) != (p.stage, p.setting, p.test_set):
                continue
            for run_id, path in run_folders(folder, r):
                runs.setdefault(run_id, path)
                ids = cell_runs.setdefault((p.table, p.row, p.column), [])
                if run_id not in ids:
                    ids.append(run_id)
    sections = []
    for t in tables:
        s = Section(t.title, anchor=f"t{t.key}")
        per_table = {(row, column): ids for (key, row, column), ids in cell_runs.items() if key == t.key}
        s.body.append(table_html(t, reference, per_table))
        missing = sorted({f"{row} / {column}" for (k, row, column, _) in reference
                          if k == t.key and (row, column, t.metrics[0]) not in t.cells})
        if missing:
            s.body.append(para(f"paper entries without a result here: {', '.join(missing)}", "note"))
        sections.append(s)
    s = Section("Runs", anchor="runs")
    drawn = list(runs.items())[:MAX_RUN_CURVES]
    for run_id, path in drawn:
        rows = RunFolder(path).metrics()
        result = RunFolder(path).read_result()
        selected = int(result["best_epoch"]) if result else None
        s.body.append(f'<div id="{anchor(run_id)}"><h3>{esc(run_id)}</h3>')
        if rows:
            s.body.append(figure(figures.small_curves(rows, selected, run_id),
                                 f"Training loss and validation SROCC per epoch of run {run_id}"))
        s.body.append("</div>")
    if len(runs) > len(drawn):
        s.body.append(para(f"{len(runs) - len(drawn)} more runs not drawn: "
                           + ", ".join(list(runs)[len(drawn):]), "note"))
    sections.append(s)
    n_splits = len({(r.stage, r.setting, r.split) for r in results})
    return (f"Experiment: {folder}", f"{len(results)} results of {n_splits} runs; paper numbers from "
            "experiments/paper-reference.csv", sections)
