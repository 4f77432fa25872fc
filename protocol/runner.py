"""Run an experiment: ``clifvqa experiment run FILE --out DIR``.

Each run (:mod:`clifvqa.protocol.plan`) lives in its own folder ``DIR/runs/STAGE/SETTING/DATA/SPLIT``::

    protocol.json       what the run is: its resolved run config, videos, test sets, and the
                        finished run it starts from or scores (written first)
    manifest.csv        a training run's videos (train rows; val rows when validation is a set)
    train/              clifvqa train's folder (run.yaml, metrics.csv, best/, last/, summary.json)
    tests/SET.csv       the rows of each test set
    eval/SET/           clifvqa evaluate's predictions.csv and metrics.json
    done.json           the run's results, written last: a run without it is unfinished

A rerun skips finished runs, resumes an interrupted training (``train``'s resume: the same
numbers as an uninterrupted run), and refuses a run whose ``protocol.json`` would differ from
the recorded one (a changed file, or a redone run it starts from), naming the differing fields;
``redo_changed`` moves such a run's folder to ``DIR/replaced/`` and runs it again. Only
``device`` and ``workers`` may change (they do not change the numbers on a CPU).

``DIR/results.csv`` and ``DIR/tables.csv`` (:mod:`clifvqa.protocol.results`) are rebuilt from
every finished run and the file after each run, under a lock, so the tasks of a SLURM array
(``run_index``) can share one folder: every task writes only its own run's folder.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clifvqa._atomic import atomic_write_text, locked
from clifvqa.config_io import diff, format_diff, to_data
from clifvqa.features.sources import sha256_file
from clifvqa.manifests.io import Manifest, ManifestRow, write_manifest
from clifvqa.protocol import ExperimentError
from clifvqa.protocol.plan import RUN_MANIFEST, Plan, Run, plan_experiment, stores_of
from clifvqa.protocol.results import METRICS, Placement, ResultRow, write_placements, write_results
from clifvqa.protocol.spec import load_experiment
from clifvqa.train.checkpoint import MODEL_FILE
from clifvqa.train.config import RESUMABLE_CHANGES

RECORD_FILE = "protocol.json"
DONE_FILE = "done.json"
RESULTS_FILE = "results.csv"
PLACEMENTS_FILE = "tables.csv"
REPLACED_DIR = "replaced"
CHANGEABLE = tuple(f"config.{key}" for key in RESUMABLE_CHANGES)
"""Recorded fields a rerun may change (where and how fast it runs, not its numbers)."""

log = logging.getLogger("clifvqa.protocol")


@dataclass
class ExperimentRun:
    """What :func:`run_experiment` did.

    Attributes:
        plan: the runs of the experiment (after ``only``).
        ran: ids of the runs finished now; ``skipped``: already finished; ``redone``: changed
            runs moved to ``replaced/`` and run again.
        results: ``DIR/results.csv`` (every finished run of the experiment).
        seconds: wall time.
    """

    plan: Plan
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    redone: list[str] = field(default_factory=list)
    results: Path | None = None
    seconds: float = 0.0

    def summary(self) -> str:
        now = len(self.ran) + len(self.redone)
        return (f"{now} run{'s' * (now != 1)} finished now ({len(self.redone)} redone), {len(self.skipped)} "
                f"finished before; results: {self.results}; {self.seconds:.0f} s")


def _sha256(path: Path) -> str | None:
    return sha256_file(path) if path.is_file() else None


def record_of(run: Run, out: Path) -> dict[str, Any]:
    """The run's ``protocol.json``: what decides its numbers (its config, its videos, and the
    done-marker of the run it starts from or scores, or the weights of the checkpoint it scores,
    by sha256)."""
    upstream = run.init[0] if run.init else run.source
    return {
        "id": run.id,
        "kind": run.kind,
        "config": to_data(run.config),
        "store": run.store,
        "train": [[r.video, r.mos] for r in run.train],
        "val": [[r.video, r.mos] for r in run.val],
        "tests": {ref: [[r.video, r.mos] for r in rows] for ref, rows in run.tests.items()},
        "init_mode": run.init[1] if run.init else None,
        "upstream": upstream,
        "upstream_done_sha256": _sha256(out / "runs" / upstream / DONE_FILE) if upstream else None,
        "checkpoint": run.checkpoint,
        "checkpoint_sha256": _sha256(Path(run.checkpoint) / MODEL_FILE) if run.checkpoint else None,
    }


def changed_fields(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The recorded fields that differ, less those a rerun may change (:data:`CHANGEABLE`)."""
    return {k: v for k, v in diff(dict(old), dict(new)).items() if k not in CHANGEABLE}


def is_done(run: Run, out: Path) -> bool:
    return (run.folder(out) / DONE_FILE).is_file()


def collect_results(plan: Plan) -> list[ResultRow]:
    """The result rows of every finished run of ``plan``, in run order: one per test set."""
    rows: list[ResultRow] = []
    for run in plan.runs:
        done = run.folder(plan.out) / DONE_FILE
        if not done.is_file():
            continue
        result = json.loads(done.read_text(encoding="utf-8"))
        for ref in run.tests:
            metrics = result["tests"][ref]
            scores: dict[str, Any] = {m: float(metrics[m]) for m in METRICS}
            rows.append(ResultRow(run.stage, run.setting, run.split, ref, int(metrics["n"]), **scores,
                                  epoch=result.get("epoch")))
    return rows


def placements_of(plan: Plan) -> list[Placement]:
    """Where the stages' ``report`` puts each (stage, setting, test set), in the file's order."""
    out: dict[Placement, None] = {}
    for run in plan.runs:
        for report in plan.experiment.stages[run.stage].reports:
            row = report.row_of(run.setting)
            for ref in run.tests:
                column = report.column_of(ref)
                if row is not None and column is not None:
                    out[Placement(run.stage, run.setting, ref, report.table, row, column)] = None
    return list(out)


def rebuild_results(plan: Plan) -> Path:
    """Rewrite ``DIR/results.csv`` from the finished runs and ``DIR/tables.csv`` from the file
    (under the folder's lock)."""
    with locked(plan.out / ".lock"):
        write_placements(placements_of(plan), plan.out / PLACEMENTS_FILE)
        return write_results(collect_results(plan), plan.out / RESULTS_FILE)


def _write_rows(rows: Sequence[ManifestRow], path: Path, split: str | None = None) -> Path:
    """A manifest of ``rows`` (video, mos, split), tagged ``split`` when given."""
    tagged = [ManifestRow(r.video, r.mos, split or r.split) for r in rows]
    return write_manifest(Manifest(tagged, ["video", "mos", "split"]), path, overwrite=True)


def _evaluate_tests(run: Run, plan: Plan, checkpoint: Path, folder: Path, progress: bool) -> dict[str, dict]:
    from clifvqa.train.evaluate import evaluate

    tests = {}
    for ref, rows in run.tests.items():
        dataset = plan.experiment.dataset_of(ref)
        manifest = _write_rows(rows, folder / "tests" / f"{ref}.csv", split="test")
        stores = stores_of(plan.experiment, dataset.name, run.store, f"stages.{run.stage}")
        config = run.config
        result = evaluate(checkpoint, manifest, dataset.videos, list(stores) if config.model.uses_semantic else [],
                          folder / "eval" / ref, device=config.device, plot=False, seed=config.seed,
                          workers=config.workers, overwrite=True, progress=progress,
                          allow_stale=config.data.allow_stale)
        tests[ref] = {k: result.metrics[k] for k in ("n", *METRICS)}
    return tests


def _train(run: Run, folder: Path, progress: bool) -> int:
    """Train (or resume, or find finished) the run's model; returns the selected epoch."""
    from clifvqa.train.run_folder import RunFolder
    from clifvqa.train.trainer import run_training

    train_dir = folder / "train"
    summary = RunFolder(train_dir).read_summary()
    if not (summary and summary.get("finished")):
        _write_rows([ManifestRow(r.video, r.mos, "train") for r in run.train]
                    + [ManifestRow(r.video, r.mos, "val") for r in run.val], folder / RUN_MANIFEST)
        resume = train_dir.is_dir() and any(train_dir.iterdir())
        summary = run_training(run.config, train_dir, resume=resume, progress=progress)
        if not summary.get("finished"):
            raise ExperimentError(f"{run.id}: training stopped before its last epoch ({train_dir}); rerun to resume it")
    return int(summary["splits"][0]["best_epoch"])


def execute_run(run: Run, plan: Plan, *, progress: bool = True) -> dict[str, Any]:
    """Train and/or score one run whose dependencies are finished; writes done.json last."""
    folder = run.folder(plan.out)
    if run.kind == "train":
        epoch = _train(run, folder, progress)
        checkpoint = folder / "train" / "best"
    elif run.checkpoint is not None:
        checkpoint, epoch = Path(run.checkpoint), None
    else:
        assert run.source is not None  # a scoring run names a checkpoint or the run that trains it
        source = plan_run(plan, run.source)
        checkpoint = source.folder(plan.out) / "train" / "best"
        epoch = json.loads((source.folder(plan.out) / DONE_FILE).read_text(encoding="utf-8")).get("epoch")
    tests = _evaluate_tests(run, plan, checkpoint, folder, progress)
    done = {"id": run.id, "epoch": epoch, "tests": tests}
    atomic_write_text(folder / DONE_FILE, json.dumps(done, indent=2, allow_nan=True) + "\n")
    return done


def plan_run(plan: Plan, run_id: str) -> Run:
    return plan.by_id()[run_id]


def _prepare(run: Run, plan: Plan, redo_changed: bool) -> str:
    """``done``, ``redo`` or ``run`` for ``run``; refuses a changed run (unless ``redo_changed``)
    and a run whose dependencies are unfinished. Writes protocol.json for a new run."""
    folder = run.folder(plan.out)
    for dep in run.depends:
        if not is_done(plan_run(plan, dep), plan.out):
            raise ExperimentError(f"{run.id} starts from {dep}, which is not finished; run it first (its stage with "
                                  "--only, or the earlier --run-index; under SLURM: one array per stage, chained "
                                  "with --dependency=afterok)")
    record = record_of(run, plan.out)
    path = folder / RECORD_FILE
    state = "run"
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        changes = changed_fields(old, record)
        if not changes:
            return "done" if is_done(run, plan.out) else "run"
        if not redo_changed:
            raise ExperimentError(f"{run.id}: the experiment changed since this run was made ({folder}): "
                                  f"{format_diff(_short(changes))}; pass --redo-changed to run it again (its folder "
                                  f"moves to {plan.out / REPLACED_DIR}), or use another --out")
        target = plan.out / REPLACED_DIR / f"{run.id.replace('/', '__')}.{time.strftime('%Y%m%dT%H%M%S')}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(folder), str(target))
        state = "redo"
    elif folder.is_dir() and any(folder.iterdir()):
        raise ExperimentError(f"{folder} holds files but no {RECORD_FILE}: not a run of this experiment; "
                              "move it away or use another --out")
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(record, indent=1) + "\n")
    return state


def _short(changes: Mapping[str, tuple[Any, Any]]) -> dict[str, tuple[Any, Any]]:
    """Video lists are named, not printed."""
    return {k: ("...", "...") if isinstance(v[0], list) or isinstance(v[1], list) else v for k, v in changes.items()}


def run_experiment(
    file: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    variables: Mapping[str, str] | None = None,
    only: Sequence[str] | None = None,
    run_index: int | None = None,
    use_tiny: bool = False,
    device: str | None = None,
    redo_changed: bool = False,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> ExperimentRun:
    """Run every run of experiment ``file`` (or those of ``only``'s stages, or the one at
    ``run_index`` of that list) into ``out``, in dependency order; see the module docstring.
    ``use_tiny`` and ``device`` are as :func:`~clifvqa.protocol.plan.plan_experiment`'s.

    Raises:
        ExperimentError: a bad file (file, line, key path), a changed run without
            ``redo_changed`` (naming the fields), a run whose dependencies are unfinished, a
            ``run_index`` out of range.
    """
    start = time.perf_counter()
    experiment = load_experiment(file, variables)
    full = plan_experiment(experiment, out, use_tiny=use_tiny, device=device)
    plan = plan_experiment(experiment, out, use_tiny=use_tiny, only=only, device=device) if only else full
    runs = plan.runs
    if run_index is not None:
        if not 0 <= run_index < len(runs):
            raise ExperimentError(f"--run-index {run_index}: the experiment has {len(runs)} runs"
                                  f"{' in the stages ' + ', '.join(only) if only else ''} (0..{len(runs) - 1}; "
                                  "see --list-runs)")
        runs = [runs[run_index]]
    done = ExperimentRun(plan)
    for run in runs:
        state = _prepare(run, full, redo_changed)
        if state == "done":
            done.skipped.append(run.id)
            echo(f"[{run.index}] {run.id}: finished before, skipped")
            continue
        echo(f"[{run.index}] {run.id}: {'redoing (changed)' if state == 'redo' else 'running'}")
        result = execute_run(run, full, progress=progress)
        (done.redone if state == "redo" else done.ran).append(run.id)
        line = ", ".join(f"{ref} SROCC {m['srocc']:.4f} PLCC {m['plcc']:.4f} (n={m['n']})"
                         for ref, m in result["tests"].items())
        echo(f"[{run.index}] {run.id}: done: {line}")
        done.results = rebuild_results(full)
    done.results = rebuild_results(full)
    done.seconds = time.perf_counter() - start
    return done


def list_runs(file: str | os.PathLike[str], out: str | os.PathLike[str], *, variables: Mapping[str, str] | None = None,
              only: Sequence[str] | None = None, use_tiny: bool = False, device: str | None = None) -> str:
    """What ``--list-runs`` prints: ``INDEX ID STATUS``, one run a line (the indices ``--run-index`` takes)."""
    plan = plan_experiment(load_experiment(file, variables), out, use_tiny=use_tiny, only=only, device=device)
    return "\n".join(f"{i}\t{run.id}\t{'done' if is_done(run, plan.out) else 'todo'}"
                     for i, run in enumerate(plan.runs))
