"""The folder of a training run: every file ``clifvqa train`` writes, read and written only here.

::

    run.yaml              the resolved run config (:class:`~clifvqa.train.config.RunConfig`)
    run.json              what follows from it and the data: splits, store, built model, init
                          (a resumed run must match both); both written before training
    metrics.jsonl         one row per epoch (also metrics.csv), rewritten after each epoch
    best/                 checkpoint of the epoch selected on validation
    last/                 checkpoint of the latest epoch + resume state
    test_predictions.csv  video, mos, prediction (raw), score (MOS scale)
    result.json           best epoch, why, validation and test metrics: written last, so a split
                          folder with it is finished
    summary.txt           per-split results as a table
    summary.json          the same with mean/std/median; written last, ``finished`` says whether
                          every split is

With several splits, each split's files (metrics to result.json) are in ``OUT/NAME`` and the
run's in ``OUT``; with one, all are in ``OUT``. Every write replaces its file or folder whole
(:mod:`clifvqa._atomic`); the checkpoints are :class:`~clifvqa.train.checkpoint.CheckpointSaver`'s,
saved at :attr:`RunFolder.best` and :attr:`RunFolder.last`. A writer starts with
:meth:`RunFolder.recover`: a save that a kill interrupted is completed or rolled back (resume
then goes on from the last complete epoch) and leftovers are removed.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from clifvqa._atomic import atomic_write_text, recover
from clifvqa.train.config import RunConfig, load_run_config
from clifvqa.train.data import DataError


class RunFolder:
    """The files of one training run folder (or one split's folder of it, :meth:`split`).

    With ``write=False`` (processes of rank > 0 under torchrun) writes do nothing; reads work.
    """

    CONFIG = "run.yaml"
    DERIVED = "run.json"
    METRICS = "metrics.jsonl"
    METRICS_CSV = "metrics.csv"
    BEST = "best"
    LAST = "last"
    TEST_PREDICTIONS = "test_predictions.csv"
    RESULT = "result.json"
    SUMMARY_TEXT = "summary.txt"
    SUMMARY = "summary.json"
    NAMES = (CONFIG, DERIVED, METRICS, METRICS_CSV, BEST, LAST, TEST_PREDICTIONS, RESULT, SUMMARY_TEXT, SUMMARY)
    """Every file and folder of a run, in the order they are first written."""

    def __init__(self, path: str | os.PathLike[str], *, write: bool = True) -> None:
        self.path = Path(path)
        self.write = write

    def split(self, name: str, *, alone: bool) -> RunFolder:
        """The folder of split ``name``: this one when it is the run's only split, else ``NAME`` in it."""
        return self if alone else RunFolder(self.path / name, write=self.write)

    @property
    def best(self) -> Path:
        return self.path / self.BEST

    @property
    def last(self) -> Path:
        return self.path / self.LAST

    def recover(self) -> None:
        """Complete or roll back what a kill interrupted and remove its leftovers (see
        :func:`clifvqa._atomic.recover`)."""
        if self.write:
            for name in self.NAMES:
                recover(self.path / name)

    # ---------------------------------------------------------------- the config
    def read_config(self) -> RunConfig | None:
        """The config of the run in this folder, None when there is none yet."""
        path = self.path / self.CONFIG
        return load_run_config(path) if path.exists() else None

    def read_derived(self) -> dict[str, Any] | None:
        path = self.path / self.DERIVED
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None

    def write_config(self, config: RunConfig, derived: Mapping[str, Any]) -> None:
        if self.write:
            atomic_write_text(self.path / self.CONFIG, config.to_yaml())
            atomic_write_text(self.path / self.DERIVED, json.dumps(derived, indent=2) + "\n")

    # ---------------------------------------------------------------- per-epoch metrics
    def metrics(self) -> list[dict[str, Any]]:
        """The metric rows of the epochs done. A torn last line (a kill while clifvqa before
        atomic metrics appended it) is left out: its epoch was never checkpointed."""
        path = self.path / self.METRICS
        if not path.exists():
            return []
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        rows = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                if number == len(lines) and not text.endswith("\n"):
                    break
                raise DataError(f"{path}:{number}: not a metric row ({exc}); the file is damaged: "
                                "restore it or train into a new --out") from exc
        return rows

    def append_metrics(self, row: Mapping[str, Any]) -> None:
        """Add the row of the epoch just done (metrics.jsonl and metrics.csv are rewritten whole)."""
        if self.write:
            self._write_metrics([*self.metrics(), {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}])

    def resume_metrics(self, epochs: int) -> list[dict[str, Any]]:
        """The rows of the first ``epochs`` epochs (those checkpointed in ``last/``), with the rows
        written after them (a kill between the two) dropped from the files.

        Raises:
            DataError: the files hold fewer epochs than ``last/`` (damaged or removed).
        """
        rows = [r for r in self.metrics() if r["epoch"] <= epochs]
        if [r["epoch"] for r in rows] != list(range(1, epochs + 1)):
            raise DataError(f"{self.path / self.METRICS} holds epochs {[r['epoch'] for r in rows]} but {self.last} is "
                            f"epoch {epochs}; the run cannot resume its model selection: train into a new --out")
        self._write_metrics(rows)
        return rows

    def clear_metrics(self) -> None:
        if self.write:
            (self.path / self.METRICS).unlink(missing_ok=True)
            (self.path / self.METRICS_CSV).unlink(missing_ok=True)

    def _write_metrics(self, rows: Sequence[Mapping[str, Any]]) -> None:
        if not self.write:
            return
        if not rows:
            self.clear_metrics()
            return
        atomic_write_text(self.path / self.METRICS, "".join(json.dumps(r, allow_nan=True) + "\n" for r in rows))
        self._write_csv(self.METRICS_CSV, list(rows[0]), [list(r.values()) for r in rows])

    # ---------------------------------------------------------------- results
    def write_test_predictions(self, rows: Sequence[Sequence[Any]]) -> None:
        """``rows``: (video, mos, prediction, score) per test video."""
        if self.write:
            self._write_csv(self.TEST_PREDICTIONS, ["video", "mos", "prediction", "score"], rows)

    def read_result(self) -> dict[str, Any] | None:
        """The split's result, None while the split is unfinished."""
        path = self.path / self.RESULT
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None

    def write_result(self, result: Mapping[str, Any]) -> None:
        if self.write:
            atomic_write_text(self.path / self.RESULT, json.dumps(result, indent=2) + "\n")

    def read_summary(self) -> dict[str, Any] | None:
        """The run's summary (``finished`` says whether every split is), None before the first."""
        path = self.path / self.SUMMARY
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        """summary.txt (``summary["table"]``), then summary.json."""
        if self.write:
            atomic_write_text(self.path / self.SUMMARY_TEXT, summary["table"] + "\n")
            atomic_write_text(self.path / self.SUMMARY, json.dumps(summary, indent=2) + "\n")

    def _write_csv(self, name: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        buffer = io.StringIO(newline="")
        writer = csv.writer(buffer)
        writer.writerow(header)
        writer.writerows(rows)
        atomic_write_text(self.path / name, buffer.getvalue())
