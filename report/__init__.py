"""``clifvqa report``: one self-contained HTML page of what another command wrote.

:func:`write_report` looks at ``path`` and writes the page of its kind (:func:`detect_kind`):

- ``evaluation``: a folder of ``clifvqa evaluate -o`` (predictions.csv + metrics.json):
  :mod:`clifvqa.report.evaluation`.
- ``run``: a training run folder of ``clifvqa train -o`` (run.yaml, metrics.jsonl, ...):
  :mod:`clifvqa.report.run`.
- ``experiment``: an experiment folder of ``clifvqa experiment run -o`` (results.csv, tables.csv):
  :mod:`clifvqa.report.experiment`.
- ``video``: the output of ``clifvqa predict --explain -o`` (``out.json``, or ``out.csv`` with its
  ``out.explain.json``): :mod:`clifvqa.report.video`.
- ``demo``: a folder of ``clifvqa demo`` (``eval/`` and ``run/``): the evaluation page followed by
  the run's.

The page (:mod:`clifvqa.report.html`) holds its figures inline and loads nothing, so it can be
mailed or opened from a file:// URL. matplotlib is imported only when a page is drawn.
"""

from __future__ import annotations

import os
from pathlib import Path

from clifvqa.errors import ClifvqaError

REPORT_FILE = "report.html"
KINDS = ("evaluation", "run", "experiment", "video", "demo")


class ReportError(ClifvqaError):
    """``clifvqa report`` was given something it cannot make a page of (one line: what, where, what to do)."""


def detect_kind(path: str | os.PathLike[str]) -> str:
    """Which of :data:`KINDS` ``path`` is, from the files in it (see the module docstring)."""
    p = Path(path)
    if p.is_file():
        if p.suffix.lower() in (".json", ".csv"):
            return "video"
    elif p.is_dir():
        if (p / "metrics.json").is_file() and (p / "predictions.csv").is_file():
            return "evaluation"
        if (p / "results.csv").is_file() and (p / "tables.csv").is_file():
            return "experiment"
        if (p / "eval" / "metrics.json").is_file() and (p / "run").is_dir():
            return "demo"
        if (p / "run.yaml").is_file() or (p / "metrics.jsonl").is_file():
            return "run"
    elif not p.exists():
        raise ReportError(f"{p}: no such file or folder; give what evaluate -o, train -o, experiment run -o, "
                          "predict --explain -o or demo wrote")
    raise ReportError(f"{p}: not an evaluation folder (metrics.json + predictions.csv), a training run folder "
                      "(run.yaml), an experiment folder (results.csv + tables.csv), a demo folder or a predict "
                      "--explain output (.json, or .csv with its .explain.json); nothing to report")


def default_output(path: str | os.PathLike[str]) -> Path:
    """Where the page of ``path`` goes without ``out``: ``report.html`` in the folder (beside a file)."""
    p = Path(path)
    return (p.parent if p.is_file() else p) / REPORT_FILE


def render_report(path: str | os.PathLike[str], kind: str | None = None) -> str:
    """The HTML text of the page of ``path``."""
    from clifvqa.report import html

    kind = kind or detect_kind(path)
    p = Path(path)
    if kind == "evaluation":
        from clifvqa.report.evaluation import evaluation_page

        title, subtitle, sections = evaluation_page(p)
    elif kind == "run":
        from clifvqa.report.run import run_page

        title, subtitle, sections = run_page(p)
    elif kind == "experiment":
        from clifvqa.report.experiment import experiment_page

        title, subtitle, sections = experiment_page(p)
    elif kind == "video":
        from clifvqa.report.video import video_page

        title, subtitle, sections = video_page(p)
    elif kind == "demo":
        from clifvqa.report.evaluation import evaluation_page
        from clifvqa.report.run import run_page

        title, subtitle, sections = evaluation_page(p / "eval")
        sections += run_page(p / "run")[2]
        title = f"clifvqa demo: {p}"
    else:
        raise ReportError(f"unknown report kind {kind!r}; choose one of {', '.join(KINDS)}")
    return html.page(title, subtitle, sections)


def write_report(path: str | os.PathLike[str], out: str | os.PathLike[str] | None = None,
                 kind: str | None = None) -> Path:
    """Write the page of ``path`` (its kind detected unless given) to ``out`` (default:
    :func:`default_output`), atomically; returns where it went."""
    from clifvqa._atomic import atomic_write_text

    target = Path(out) if out is not None else default_output(path)
    return atomic_write_text(target, render_report(path, kind))
