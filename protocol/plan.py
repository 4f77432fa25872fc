"""An experiment expanded into runs: stage × setting × data × split, in dependency order.

A run trains one model (pretrain, finetune and ablation stages) and scores it on its test sets,
or scores the selected checkpoint of another stage's run on further sets (evaluate stages).
Its id, ``stage/setting/data/split`` (e.g. ``finetune/base/livevqc.all/split_03``), is also its
folder under ``OUT/runs/``; ``setting`` is ``base`` for a stage without settings, ``data`` the set
trained on, ``split`` ``main`` (the manifest's split), ``seed_NN`` (pretrain ``seeds``) or
``split_NN`` (random split NN of the manifests' documented scheme:
:func:`clifvqa.manifests.split.random_splits` with the stage's ``split_seed``, so every stage
with the same ``data`` and ``split_seed`` trains and tests on the same videos).

Each training run's :class:`~clifvqa.train.config.RunConfig` is resolved here: the defaults
(the paper's settings), the file's ``config``, the stage's ``config``, the setting's overrides,
then what the protocol sets (``data.*``, ``seed`` + split or seed index, ``init.*``) and
``--tiny``. Runs come in dependency order (a run after the runs it starts from or scores), so
``--run-index I`` over ``range(len(runs))`` covers every run exactly once.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clifvqa.config_io import ConfigError, with_overrides
from clifvqa.manifests.io import Manifest, ManifestRow, read_manifest
from clifvqa.manifests.split import random_splits
from clifvqa.protocol import ExperimentError
from clifvqa.protocol.spec import (
    DEFAULT_STORE,
    STORE_KEY,
    EvaluateStage,
    Experiment,
    FinetuneStage,
    PretrainStage,
    Setting,
    Stage,
    TrainingStage,
    select_rows,
)
from clifvqa.train.config import RunConfig, tiny

RUNS_DIR = "runs"
RUN_MANIFEST = "manifest.csv"
"""A training run's videos (train rows, and val rows when validation is a named set), in its folder."""
BASE_SETTING = Setting("base", {})
INIT_KEYS = {"whole": "init.checkpoint", "spatial": "init.spatial"}
"""The run-config key each init mode sets to the source run's selected checkpoint."""
OFFICIAL_INITS = ("init.fastvqa", "init.swin_k400")
"""Official weight files a run started from another run's checkpoint does not also load."""


@dataclass(frozen=True)
class Run:
    """One run of an experiment (see the module docstring).

    Attributes:
        index: position in dependency order (``--run-index``).
        kind: ``train`` or ``evaluate``.
        config: the resolved run config (training runs; an evaluate run's is its source's).
        train, val: the manifest rows trained on and the explicit validation rows (empty when
            validation is carved from ``train`` by ``data.val_fraction``).
        tests: test set name -> its rows, scored after training (or by an evaluate run).
        dataset, test_datasets: the dataset of ``train`` and of each test set (videos, stores).
        store: the named store of the datasets this run reads.
        init: (run id, mode) this run starts from; ``source``: the run an evaluate run scores, or
            ``checkpoint``: the checkpoint folder it scores (an evaluate stage's ``checkpoint``).
        depends: ids of the runs that must be finished first.
    """

    index: int
    stage: str
    kind: str
    setting: str
    data: str
    split: str
    config: RunConfig
    store: str
    dataset: str
    train: tuple[ManifestRow, ...] = ()
    val: tuple[ManifestRow, ...] = ()
    tests: Mapping[str, tuple[ManifestRow, ...]] = field(default_factory=dict)
    init: tuple[str, str] | None = None
    source: str | None = None
    checkpoint: str | None = None
    depends: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        return f"{self.stage}/{self.setting}/{self.data}/{self.split}"

    def folder(self, out: str | os.PathLike[str]) -> Path:
        return Path(out) / RUNS_DIR / self.stage / self.setting / self.data / self.split


@dataclass
class Plan:
    """The runs of an experiment, in dependency order, and the experiment they come from."""

    experiment: Experiment
    out: Path
    runs: list[Run]

    def by_id(self) -> dict[str, Run]:
        return {run.id: run for run in self.runs}


def stores_of(experiment: Experiment, dataset: str, store: str, key: str) -> tuple[str, ...]:
    """The paths of ``dataset``'s store named ``store`` (none for a dataset without stores and the
    default name); an unknown name is refused naming ``key``."""
    stores = experiment.datasets[dataset].stores
    if store not in stores:
        if store == DEFAULT_STORE and not stores:
            return ()
        raise experiment.fail(key, f"dataset {dataset} has no store {store!r} (stores: {', '.join(stores) or 'none'})")
    return stores[store]


class _Planner:
    def __init__(self, experiment: Experiment, out: Path, use_tiny: bool, device: str | None) -> None:
        self.x, self.out, self.tiny, self.device = experiment, out, use_tiny, device
        self.manifests: dict[str, Manifest] = {}
        self.runs: list[Run] = []

    def rows(self, set_ref: str) -> list[ManifestRow]:
        name = set_ref.split(".", 1)[0]
        if name not in self.manifests:
            path = self.x.datasets[name].manifest
            if not path.is_file():
                raise self.x.fail(f"datasets.{name}.manifest", f"{path} is not a file (make it with `clifvqa manifest "
                                                              "import` or `scan`, or point --var at the data)")
            self.manifests[name] = read_manifest(path)
        manifest = self.manifests[name]
        return select_rows(self.x, set_ref, manifest.rows, manifest.columns, lambda: self.sizes(name))

    def sizes(self, dataset: str) -> dict[str, tuple[float, float]]:
        """``video -> (width, height)`` as the dataset's first store recorded them at extraction."""
        from clifvqa.features.store import open_store

        stores = self.x.datasets[dataset].stores
        if not stores:
            return {}
        with open_store(next(iter(stores.values()))[0]) as store:
            return {k: (float(a["width"]), float(a["height"])) for k, a in store.entries().items()
                    if "width" in a and "height" in a}

    def config(self, stage: Stage, setting: Setting, protocol: Mapping[str, Any]) -> tuple[RunConfig, str]:
        config = RunConfig()
        store = DEFAULT_STORE
        layers = ((self.x.config, "config"), (stage.config, f"stages.{stage.name}.config"),
                  (setting.overrides, f"stages.{stage.name}.settings"), (protocol, None))
        for overrides, where in layers:
            for key, value in overrides.items():
                if key == STORE_KEY:
                    store = str(value)
                    continue
                try:
                    config = with_overrides(config, {key: value})
                except ConfigError as exc:  # the protocol's own keys (data, seed, init) are the stage's
                    raise self.x.fail(f"{where}.{key}" if where else f"stages.{stage.name}", str(exc)) from None
        return (tiny(config) if self.tiny else config), store

    def add(self, **fields_: Any) -> Run:
        run = Run(index=len(self.runs), **fields_)
        self.runs.append(run)
        return run

    def plan(self) -> list[Run]:
        for name in self.x.stage_order():
            stage = self.x.stages[name]
            if isinstance(stage, EvaluateStage):
                self.evaluate_stage(stage)
            else:
                for setting in stage.settings or (BASE_SETTING,):
                    if isinstance(stage, PretrainStage):
                        self.pretrain_runs(stage, setting)
                    else:
                        self.finetune_runs(stage, setting)
        ids = [run.id for run in self.runs]
        if len(set(ids)) != len(ids):
            twice = sorted({i for i in ids if ids.count(i) > 1})
            raise self.x.fail("stages", f"two runs would share the folder {twice[0]}; rename a setting or stage")
        return self.runs

    def tests_of(self, stage: Stage) -> dict[str, tuple[ManifestRow, ...]]:
        return {ref: tuple(self.rows(ref)) for ref in stage.test}

    def init_of(self, stage: TrainingStage, setting: str, data: str, split: str) -> tuple[str, str] | None:
        if stage.init is None:
            return None
        init, key = stage.init, f"stages.{stage.name}.init"
        candidates = [r for r in self.runs if r.stage == init.stage]
        settings = list(dict.fromkeys(r.setting for r in candidates))
        wanted = init.setting or (setting if setting in settings else None)
        if wanted is None and len(settings) == 1:
            wanted = settings[0]
        candidates = [r for r in candidates if r.setting == wanted]
        if init.split is not None:
            candidates = [r for r in candidates if r.split == init.split]
        elif len(candidates) > 1:
            same = [r for r in candidates if (r.data, r.split) == (data, split)]
            candidates = same or candidates
        if len(candidates) != 1:
            listed = ", ".join(r.id for r in self.runs if r.stage == init.stage)
            raise self.x.fail(key, f"starting {stage.name}/{setting}/{data}/{split} from stage {init.stage} needs one "
                                   f"of its runs, found {len(candidates)}; choose with init.setting / init.split "
                                   f"(its runs: {listed})")
        source = candidates[0]
        return source.id, init.mode

    def protocol(self, stage: Stage, seed: int, data: Mapping[str, Any],
                 init: tuple[str, str] | None) -> dict[str, Any]:
        values = dict(data)
        values["seed"] = seed
        if self.device is not None:
            values["device"] = self.device
        if init is not None:  # the started-from checkpoint replaces the official inits of the file's config
            values.update({key: None for key in OFFICIAL_INITS})
            values[INIT_KEYS[init[1]]] = str(self.out / RUNS_DIR / init[0] / "train" / "best")
        return values

    def pretrain_runs(self, stage: PretrainStage, setting: Setting) -> None:
        dataset = stage.train.split(".", 1)[0]
        train = self.rows(stage.train)
        val: list[ManifestRow] = []
        if isinstance(stage.val, str):
            val = self.rows(stage.val)
            both = sorted({r.video for r in val} & {r.video for r in train})
            if both:
                raise self.x.fail(f"stages.{stage.name}.val", f"{len(both)} videos are in both {stage.train} and "
                                                              f"{stage.val}, e.g. {both[0]}")
        tests = self.tests_of(stage)
        for ref, rows in tests.items():
            if ref.split(".", 1)[0] == dataset:
                both = sorted({r.video for r in rows} & {r.video for r in train + val})
                if both:
                    raise self.x.fail(f"stages.{stage.name}.test", f"{len(both)} videos of test set {ref} are also "
                                                                   f"trained or validated on, e.g. {both[0]}")
        base, _ = self.config(stage, setting, {})
        for i in range(stage.seeds):
            split = "main" if stage.seeds == 1 else f"seed_{i:02d}"
            init = self.init_of(stage, setting.name, stage.train, split)
            data = self.data_keys(stage, dataset, setting, val_fraction=0.0 if val else stage.val,
                                  run_id=f"{stage.name}/{setting.name}/{stage.train}/{split}")
            config, store = self.config(stage, setting, self.protocol(stage, base.seed + i, data, init))
            self.add(stage=stage.name, kind="train", setting=setting.name, data=stage.train, split=split,
                     config=config, store=store, dataset=dataset, train=tuple(train), val=tuple(val), tests=tests,
                     init=init, depends=(init[0],) if init else ())

    def data_keys(self, stage: Stage, dataset: str, setting: Setting, *, val_fraction: Any,
                  run_id: str) -> dict[str, Any]:
        _, store = self.config(stage, setting, {})
        return {"data.manifest": str(self.out / RUNS_DIR / run_id / RUN_MANIFEST),
                "data.videos": str(self.x.datasets[dataset].videos),
                "data.stores": list(stores_of(self.x, dataset, store, f"stages.{stage.name}")),
                "data.val_fraction": float(val_fraction)}

    def finetune_runs(self, stage: FinetuneStage, setting: Setting) -> None:
        base, _ = self.config(stage, setting, {})
        for pool_ref in stage.data:
            dataset = pool_ref.split(".", 1)[0]
            pool = self.rows(pool_ref)
            manifest = Manifest(pool, ["video", "mos"])
            try:
                splits = random_splits(manifest, stage.splits, stage.test_fraction, 0.0, stage.split_seed)
            except ValueError as exc:
                raise self.x.fail(f"stages.{stage.name}.data", f"{pool_ref}: {exc}") from None
            extra = self.tests_of(stage)
            width = max(2, len(str(stage.splits - 1)))
            for i, drawn in enumerate(splits):
                split = f"split_{i:0{width}d}"
                train = tuple(r for r in drawn.rows if r.split == "train")
                tests = {pool_ref: tuple(r for r in drawn.rows if r.split == "test"), **extra}
                init = self.init_of(stage, setting.name, pool_ref, split)
                data = self.data_keys(stage, dataset, setting, val_fraction=stage.val,
                                      run_id=f"{stage.name}/{setting.name}/{pool_ref}/{split}")
                config, store = self.config(stage, setting, self.protocol(stage, base.seed + i, data, init))
                self.add(stage=stage.name, kind="train", setting=setting.name, data=pool_ref, split=split,
                         config=config, store=store, dataset=dataset, train=train, tests=tests, init=init,
                         depends=(init[0],) if init else ())

    def evaluate_stage(self, stage: EvaluateStage) -> None:
        tests = self.tests_of(stage)
        if stage.checkpoint is not None:
            config, store = self.config(stage, BASE_SETTING, {"device": self.device} if self.device else {})
            store = stage.store or store
            for ref in tests:
                stores_of(self.x, ref.split(".", 1)[0], store, f"stages.{stage.name}")
            self.add(stage=stage.name, kind="evaluate", setting=BASE_SETTING.name, data="checkpoint", split="main",
                     config=config, store=store, dataset=next(iter(tests)).split(".", 1)[0], tests=tests,
                     checkpoint=str(stage.checkpoint))
            return
        for source in [r for r in self.runs if r.stage == stage.source and r.kind == "train"]:
            store = stage.store or source.store
            for ref in tests:
                stores_of(self.x, ref.split(".", 1)[0], store, f"stages.{stage.name}")
            self.add(stage=stage.name, kind="evaluate", setting=source.setting, data=source.data, split=source.split,
                     config=source.config, store=store, dataset=source.dataset, tests=tests, source=source.id,
                     depends=(source.id,))


def plan_experiment(experiment: Experiment, out: str | os.PathLike[str], *, use_tiny: bool = False,
                    only: Sequence[str] | None = None, device: str | None = None) -> Plan:
    """Every run of ``experiment`` in dependency order, their folders under ``out``.

    ``only`` keeps the runs of those stages (their dependencies must be finished or run
    separately: the runner checks). ``use_tiny`` resolves every run with ``--tiny``'s model;
    ``device`` replaces the file's (it does not change a run's numbers on a CPU, so finished runs
    stay finished).
    Reads the datasets' manifests (counts and splits need them), nothing else.
    """
    out = Path(out).absolute()
    runs = _Planner(experiment, out, use_tiny, device).plan()
    if only:
        unknown = [s for s in only if s not in experiment.stages]
        if unknown:
            raise ExperimentError(f"--only {unknown[0]}: no such stage in {experiment.path} "
                                  f"(stages: {', '.join(experiment.stages)})")
        runs = [r for r in runs if r.stage in only]
    return Plan(experiment, out, runs)


# ------------------------------------------------------------------------------ dry run


@dataclass(frozen=True)
class RunCost:
    """What one run reads: videos per part and fragment frames decoded (per epoch and in all)."""

    train: int
    val: int
    test: int
    epochs: int
    frames_per_epoch: int
    frames_total: int


def run_cost(run: Run) -> RunCost:
    """Videos and decoded fragment frames of ``run``: per epoch, every training video's training
    clips and every validation video's test clips; once, the test clips of the training videos
    (the score mapping) and of every test video. Semantic-only models decode nothing (their
    features come from the stores); evaluate runs decode only their test videos."""
    config = run.config
    model, data = config.model, config.data
    n_test = sum(len(rows) for rows in run.tests.values())
    if run.kind == "evaluate":
        n_train = n_val = epochs = 0
    else:
        n_val = len(run.val) or (int(len(run.train) * data.val_fraction + 0.5) if data.val_fraction else 0)
        n_train, epochs = len(run.train) - (0 if run.val else n_val), config.optim.epochs
    frag = model.fragments
    per_clip = frag.clip_len if model.uses_spatial else 0
    per_epoch = (n_train * frag.num_clips_train + n_val * frag.num_clips_test) * per_clip
    once = (n_train + n_test) * frag.num_clips_test * per_clip
    return RunCost(n_train, n_val, n_test, epochs, per_epoch, epochs * per_epoch + once)


def format_dry_run(plan: Plan, rate: float | None = None) -> str:
    """What ``experiment run --dry-run`` prints: one line per run (index, id, videos, frames,
    estimated time at ``rate`` fragment frames per second) and the totals."""
    lines = [f"{len(plan.runs)} runs of {plan.experiment.path.name} into {plan.out}"]
    total_frames, total_epoch = 0, 0
    for run in plan.runs:
        cost = run_cost(run)
        total_frames += cost.frames_total
        total_epoch += cost.frames_per_epoch
        after = f"  after {', '.join(run.depends)}" if run.depends else ""
        eta = f"  ~{_duration(cost.frames_total / rate)}" if rate else ""
        lines.append(f"[{run.index}] {run.id}: {run.kind}, train {cost.train}, val {cost.val}, test {cost.test}"
                     f" ({len(run.tests)} sets), {cost.epochs} epochs, {cost.frames_per_epoch:,} frames/epoch, "
                     f"{cost.frames_total:,} frames{eta}{after}")
    summary = f"total: {total_frames:,} fragment frames to decode and compute ({total_epoch:,} per epoch of every run)"
    if rate:
        summary += f"; ~{_duration(total_frames / rate)} at {rate:g} frames/s on one device"
    else:
        summary += "; pass --rate FRAMES_PER_S for a time estimate"
    lines.append(summary)
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
