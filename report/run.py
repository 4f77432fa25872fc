"""The page of a training run folder (``clifvqa train -o``; :class:`~clifvqa.train.run_folder.RunFolder`).

Per split (the folder itself, or its split folders): training and validation loss, validation
SROCC/PLCC, learning rate and seconds per epoch from metrics.jsonl, the selected epoch marked
with the reason result.json gives, the test metrics; then the run's summary table and its
config (run.yaml, collapsed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from clifvqa.report import ReportError, figures
from clifvqa.report.html import Cell, Section, details, esc, figure, para, pre, table
from clifvqa.train.metrics import format_metric
from clifvqa.train.run_folder import RunFolder


def split_folders(folder: Path) -> list[RunFolder]:
    """The run's split folders: the folder itself for a one-split run, else its subfolders with metrics."""
    root = RunFolder(folder)
    if (folder / RunFolder.METRICS).is_file():
        return [root]
    return [RunFolder(p) for p in sorted(folder.iterdir()) if (p / RunFolder.METRICS).is_file()]


def selected_epoch(rows: Sequence[Mapping[str, Any]], result: Mapping[str, Any] | None) -> tuple[int | None, str]:
    """The selected epoch and why: result.json's when the split finished, else the last row marked
    ``selected`` (the selection so far)."""
    if result is not None:
        selection = result.get("selection") or {}
        return int(result["best_epoch"]), selection.get("reason") or f"epoch {result['best_epoch']}"
    marked = [int(r["epoch"]) for r in rows if r.get("selected")]
    if marked:
        return marked[-1], f"epoch {marked[-1]}: the selection so far (the split has not finished)"
    return None, "no epoch selected yet"


def split_section(split: RunFolder, name: str) -> Section:
    rows = split.metrics()
    result = split.read_result()
    epoch, reason = selected_epoch(rows, result)
    s = Section(f"Training: {name}", anchor=f"split-{name}")
    if not rows:
        s.body.append(para("no epoch finished yet", "note"))
        return s
    s.body.append(_selected_line(epoch, reason))
    if result and (result.get("selection") or {}).get("warning"):
        s.body.append(para(result["selection"]["warning"], "warn"))
    s.body.append(figure(figures.training_curves(rows, epoch),
                         f"Training curves of {name}: loss, validation SROCC and PLCC, learning rate and seconds per "
                         f"epoch over {len(rows)} epochs; selected epoch {epoch}",
                         "Dashed line: the selected epoch."))
    best = next((r for r in rows if int(r["epoch"]) == epoch), None)
    parts = []
    if best is not None:
        parts.append(["validation (selected epoch)", *[Cell(format_metric(best.get(f"val_{k}")),
                                                            attrs={"data-metric": f"val_{k}"})
                                                       for k in ("srocc", "plcc", "krocc", "rmse")]])
    if result and result.get("test"):
        parts.append(["test", *[Cell(format_metric(result["test"].get(k)), attrs={"data-metric": f"test_{k}"})
                                for k in ("srocc", "plcc", "krocc", "rmse")]])
    if parts:
        s.body.append(table(["", "SROCC", "PLCC", "KROCC", "RMSE"], parts, table_id=f"metrics-{name}"))
    seconds = sum(float(r.get("seconds", 0.0)) for r in rows)
    s.body.append(para(f"{len(rows)} epochs done in {seconds:.1f} s"
                       + ("" if result is not None else " (unfinished)"), "note"))
    return s


def _selected_line(epoch: int | None, reason: str) -> str:
    return f'<p data-selected-epoch="{esc(epoch if epoch is not None else "")}"><b>Selected:</b> {esc(reason)}</p>'


def run_sections(folder: Path) -> list[Section]:
    splits = split_folders(folder)
    root = RunFolder(folder)
    if not splits and root.read_config() is None:
        raise ReportError(f"{folder}: no metrics.jsonl and no run.yaml; is it a clifvqa train -o folder?")
    out = [split_section(sp, sp.path.name if sp.path != folder else "run") for sp in splits]
    summary = root.read_summary()
    s = Section("Run", anchor="run-config")
    if summary is not None and summary.get("table"):
        s.body.append(pre(summary["table"]))
    config = folder / RunFolder.CONFIG
    if config.is_file():
        s.body.append(details("run config (run.yaml)", pre(config.read_text(encoding="utf-8"))))
    out.append(s)
    return out


def run_page(folder: Path) -> tuple[str, str, list[Section]]:
    """Title, subtitle and sections of the training run page of ``folder``."""
    sections = run_sections(folder)
    n = sum(1 for s in sections if s.anchor.startswith("split-"))
    return f"Training run: {folder}", f"{n} split{'s' if n != 1 else ''}", sections
