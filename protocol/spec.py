"""The experiment file: datasets named once, stages that train or evaluate on them (docs/PROTOCOL.md).

::

    variables:                # ${name} in any string below; the CLI's --var name=value overrides
      data: /data
    config:                   # run-config overrides for every training run (dotted or nested keys)
      optim.epochs: 30
    datasets:
      lsvq:
        manifest: ${data}/lsvq.csv
        videos: ${data}/LSVQ
        store: ${data}/lsvq-3x3.zarr          # or stores: {3x3: [a.zarr, b.zarr], 1x1: c.zarr}
        sets:                                 # named row selections; `all` (every row) always exists
          train: {split: train}
          test: {split: test, lsvq_set: ""}
          test-1080p: {lsvq_set: test-1080p}
          le540p: {short_side: {max: 540}}    # short_side/long_side from width/height columns
    stages:
      pretrain:
        kind: pretrain                        # pretrain | finetune | ablation | evaluate
        train: lsvq.train
        val: 0.1                              # a fraction of train (data.val_fraction) or a set
        test: [lsvq.test, lsvq.test-1080p]
        seeds: 1                              # repeated trainings on the fixed split (seed + i)
        report: {table: "1", row: CLiF-VQA, columns: {lsvq.test: LSVQ_test}}
      finetune:
        kind: finetune
        init: {from: pretrain, mode: whole}   # or spatial (CLiF-VQA*); optional
        data: [livevqc.all, konvid.all]       # one fine-tuning per set, each over N random splits
        splits: 10
        test_fraction: 0.2
      ablation:
        kind: ablation                        # a finetune with settings (list or product)
        settings:
          product:
            model.branches: {Semantic: semantic, Spatial: spatial, Semantic+Spatial: both}
            model.regression_head: {"": false, Regression: true}
      eval-other:
        kind: evaluate
        from: pretrain                        # every run of that stage, its selected checkpoint,
        test: [livevqc.le540p]                # or `checkpoint: DIR` (a clifvqa checkpoint folder)

Every stage may take ``config`` (run-config overrides for its runs; the key ``store`` picks a
dataset's named store) and ``report`` (one mapping or a list, one per table: ``table``; ``row``
for a stage without settings, ``rows`` (setting: label) for one with settings, whose rows are
otherwise the setting names; ``columns`` (test set: label) or one ``column`` for all). Settings
are a list of ``{name, set: {overrides}}`` or a ``product`` of override lists or ``label: value``
mappings (labels joined with ``+``). A string that is exactly one ``${var}`` where no text is
expected (a count, a fraction, an override) takes the variable's value as YAML (``${epochs}`` is a
number). Relative paths are taken from the current directory and recorded absolute.

The file is read by :mod:`clifvqa.config_io` (the reader of run configs too) into the dataclasses
below; errors name the file, line and key path (``paper.yaml:42: stages.finetune.init.from: ...``).
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from clifvqa.config_io import (
    ConfigError,
    FieldError,
    ReadAs,
    YamlDocument,
    flatten,
    from_data,
    load_yaml,
    one_or_more,
)
from clifvqa.protocol import ExperimentError
from clifvqa.train.config import PROTOCOL_KEYS

STORE_KEY = "store"
"""The setting/config key that selects a dataset's named store (not a run-config key)."""
DEFAULT_STORE = "default"
ALL_SET = "all"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+=-]*")
_DERIVED = {"short_side": min, "long_side": max}


# ------------------------------------------------------------------------------ checks of single values


def _name(text: str) -> str:
    if not _NAME.fullmatch(text):
        raise ConfigError(f"{text!r} is not a usable name (letters, digits and _ . + = -, starting with a letter or "
                          "digit)")
    return text


def _set_ref(text: str) -> str:
    """``dataset.set``; a bare ``dataset`` is its set ``all`` (checked against the datasets later)."""
    dataset, _, set_name = text.partition(".")
    return f"{dataset}.{set_name or ALL_SET}"


def _at_least(low: int) -> Callable[[int], int]:
    def check(value: int) -> int:
        if value < low:
            raise ConfigError(f"expected an integer >= {low}, got {value!r}")
        return value
    return check


def _fraction(zero_ok: bool) -> Callable[[float], float]:
    def check(value: float) -> float:
        if not (0 <= value < 1 if zero_ok else 0 < value < 1):
            raise ConfigError(f"expected a number in {'[0, 1)' if zero_ok else '(0, 1)'}, got {value!r}")
        return value
    return check


def _absolute(path: Path) -> Path:
    """Relative paths are taken from the current directory and recorded absolute."""
    return path.expanduser().absolute()


def _store_path(text: str) -> str:
    return text if "://" in text else str(_absolute(Path(text)))  # remote stores (s3://, https://) stay URLs


def _settable(key: str) -> None:
    if key in PROTOCOL_KEYS:
        raise FieldError(key, f"{key} is set by the experiment (datasets, sets and stage keys "
                              "train/data/val/splits/test_fraction), not by overrides")


def _overrides(tree: Mapping[str, Any]) -> dict[str, Any]:
    """Nested or dotted run-config overrides as ``{dotted.key: value}`` (``store`` kept as is)."""
    flat = flatten(dict(tree))
    for key in flat:
        _settable(key)
    return flat


def _values(values: tuple[str | None, ...]) -> tuple[str, ...]:
    return tuple("" if v is None else v for v in values)


Name = Annotated[str, _name]
SetRef = Annotated[str, _set_ref]
SetRefs = Annotated[tuple[SetRef, ...], ReadAs(SetRef | tuple[SetRef, ...]), one_or_more]
StorePath = Annotated[str, _store_path]
StorePaths = Annotated[tuple[StorePath, ...], ReadAs(StorePath | tuple[StorePath, ...]), one_or_more]
Values = Annotated[tuple[str, ...], ReadAs(str | None | tuple[str | None, ...]), one_or_more, _values]
"""A column's accepted values: one or a list (null is the empty cell), compared as numbers when both parse."""
Overrides = Annotated[Mapping[str, Any], _overrides]


# ------------------------------------------------------------------------------ the file's sections


@dataclass(frozen=True)
class Range:
    """An inclusive numeric range of a column (``short_side: {max: 540}``)."""

    min: float | None = None
    max: float | None = None

    def __post_init__(self) -> None:
        if self.min is None and self.max is None:
            raise ConfigError("a range needs min, max or both")

    def __contains__(self, number: float) -> bool:
        return (self.min is None or self.min <= number) and (self.max is None or number <= self.max)


@dataclass(frozen=True, kw_only=True)
class Dataset:
    """A dataset named once: manifest, video folder, named stores (``store``: the one named
    ``default``) and named row sets (column -> values or range; ``all``, every row, always exists)."""

    name: str = field(default="", metadata={"mapping_key": True})
    manifest: Annotated[Path, _absolute]
    videos: Annotated[Path, _absolute]
    store: StorePaths = ()
    stores: Mapping[Name, StorePaths] = field(default_factory=dict)
    sets: Mapping[Name, Mapping[str, Range | Values]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.store and self.stores:
            raise FieldError("stores", "give `store` (one) or `stores` (named), not both")
        if ALL_SET in self.sets:
            raise FieldError(f"sets.{ALL_SET}", f"`{ALL_SET}` is every row of the manifest and cannot be redefined")
        object.__setattr__(self, "stores", {DEFAULT_STORE: self.store} if self.store else dict(self.stores))
        object.__setattr__(self, "sets", {ALL_SET: {}, **self.sets})


@dataclass(frozen=True)
class Setting:
    """One variant of a stage: a name (the table row) and run-config overrides."""

    name: Name = field(metadata={"help": "the setting's table row"})
    overrides: Overrides = field(default_factory=dict, metadata={"key": "set"})


def _axes(product: Mapping[str, Any]) -> Mapping[str, Any]:
    for key, choices in product.items():
        _settable(key)
        if not isinstance(choices, Mapping) and not (isinstance(choices, list) and choices):
            raise FieldError(key, "expected a non-empty list of values or a mapping label: value")
    return product


@dataclass(frozen=True)
class Product:
    """Settings as every combination of override values: ``key: [values]`` (labelled ``key=value``)
    or ``key: {label: value}``; a setting's name joins its labels with ``+``."""

    product: Annotated[Mapping[str, Any], _axes]

    def settings(self) -> tuple[Setting, ...]:
        axes = [[(str(label), key, value) for label, value in choices.items()] if isinstance(choices, Mapping)
                else [(f"{key.rsplit('.', 1)[-1]}={value}", key, value) for value in choices]
                for key, choices in self.product.items()]
        out = []
        for combo in itertools.product(*axes):
            label = "+".join(part for part, _, _ in combo if part) or "base"
            try:
                out.append(Setting(_name(label), _overrides({key: value for _, key, value in combo})))
            except ValueError as exc:
                raise FieldError("product", str(exc)) from None
        return tuple(out)


def _settings(given: tuple[Setting, ...] | Product) -> tuple[Setting, ...]:
    settings = given.settings() if isinstance(given, Product) else given
    names = [s.name for s in settings]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice or not settings:
        raise ConfigError(f"setting names must be distinct and at least one: {', '.join(twice) or 'none given'}")
    return settings


@dataclass(frozen=True)
class Report:
    """Where a stage's results go in one table (see :mod:`clifvqa.protocol.tables`).

    ``row`` labels a stage without settings (an evaluate stage's default: its source run's
    setting); a stage with settings gets one row per setting, named by ``rows`` (setting ->
    label; when given, only the listed settings go in this table) or by the setting's name.
    ``columns`` maps a test set to its column label (when given, only the listed sets go in this
    table), else ``column`` (one column for all, e.g. Table 3's average), else the set's name."""

    table: str
    row: str | None = None
    rows: Mapping[str, str] = field(default_factory=dict)
    columns: Mapping[SetRef, str] = field(default_factory=dict)
    column: str | None = None

    def row_of(self, setting: str) -> str | None:
        """The row label of ``setting`` in this table, None when it is not reported here."""
        if self.rows:
            return self.rows.get(setting)
        return self.row or setting

    def column_of(self, test_set: str) -> str | None:
        """The column label of ``test_set`` in this table, None when ``columns`` leaves it out."""
        if self.columns:
            return self.columns.get(test_set)
        return self.column or test_set


@dataclass(frozen=True)
class Init:
    """A fine-tuning start: the selected checkpoint of a run of stage ``stage``."""

    stage: str = field(metadata={"key": "from", "help": "the stage whose selected checkpoint starts the runs"})
    mode: Literal["whole", "spatial"] = "whole"
    setting: str | None = None
    split: str | None = None


@dataclass(frozen=True, kw_only=True)
class _Stage:
    """What every stage has: its name, test sets, run-config overrides and table placements."""

    name: str = field(default="", metadata={"mapping_key": True})
    test: SetRefs = ()
    config: Overrides = field(default_factory=dict)
    reports: Annotated[tuple[Report, ...], ReadAs(Report | tuple[Report, ...]), one_or_more] = field(
        default=(), metadata={"key": "report"})


@dataclass(frozen=True, kw_only=True)
class TrainingStage(_Stage):
    """A stage that trains: validation, a start (``init``) and settings."""

    val: Annotated[float, _fraction(zero_ok=True)] | SetRef = 0.1
    init: Init | None = None
    settings: Annotated[tuple[Setting, ...], ReadAs(tuple[Setting, ...] | Product), _settings] = ()
    trains: ClassVar[bool] = True
    depends_key: ClassVar[str] = "init.from"

    def depends_on(self) -> list[str]:
        return [self.init.stage] if self.init else []


@dataclass(frozen=True, kw_only=True)
class PretrainStage(TrainingStage):
    """Trains on a set of one dataset (``seeds`` times), validates on a fraction of it or a set."""

    kind: Literal["pretrain"]
    train: SetRef = field(metadata={"help": "the set to train on, e.g. lsvq.train"})
    seeds: Annotated[int, _at_least(1)] = 1


@dataclass(frozen=True, kw_only=True)
class FinetuneStage(TrainingStage):
    """Trains on each ``data`` set over ``splits`` random splits; ``ablation``: one per setting."""

    kind: Literal["finetune", "ablation"]
    data: SetRefs = field(metadata={"help": "the sets to fine-tune on, each split at random"})
    splits: Annotated[int, _at_least(1)] = 10
    test_fraction: Annotated[float, _fraction(zero_ok=False)] = 0.2
    split_seed: Annotated[int, _at_least(0)] = 0
    test: tuple[str, ...] = field(default=(), init=False)  # each split's test part

    def __post_init__(self) -> None:
        if self.kind == "ablation" and not self.settings:
            raise ConfigError("an ablation stage needs `settings` (a list, or a product of overrides)")


@dataclass(frozen=True, kw_only=True)
class EvaluateStage(_Stage):
    """Scores the runs of stage ``source`` (``from``), or one ``checkpoint`` folder, on ``test``."""

    kind: Literal["evaluate"]
    source: str | None = field(default=None, metadata={"key": "from"})
    checkpoint: Annotated[Path, _absolute] | None = None
    store: str | None = None
    settings: tuple[Setting, ...] = field(default=(), init=False)
    trains: ClassVar[bool] = False
    depends_key: ClassVar[str] = "from"

    def __post_init__(self) -> None:
        if not self.test or (self.source is None) == (self.checkpoint is None):
            raise ConfigError("an evaluate stage scores the runs of stage `from`, or one `checkpoint` folder, on the "
                              "sets `test`: give `test` and one of `from` and `checkpoint`")

    def depends_on(self) -> list[str]:
        return [self.source] if self.source else []


Stage = PretrainStage | FinetuneStage | EvaluateStage


@dataclass(frozen=True)
class ExperimentFile:
    """The sections of an experiment file."""

    variables: Mapping[str, str] = field(default_factory=dict)
    config: Overrides = field(default_factory=dict)
    datasets: Mapping[Name, Dataset] = field(default_factory=dict)
    stages: Mapping[Name, Stage] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for section, what in (("datasets", "dataset"), ("stages", "stage")):
            if not getattr(self, section):
                raise FieldError(section, f"an experiment needs at least one {what}")


@dataclass
class Experiment:
    """A read experiment file. ``doc`` keeps the line of every key for later messages."""

    path: Path
    variables: Mapping[str, str]
    config: Mapping[str, Any]
    datasets: Mapping[str, Dataset]
    stages: Mapping[str, Stage]
    doc: YamlDocument

    def fail(self, key_path: str, message: str) -> ExperimentError:
        return ExperimentError(f"{self.doc.where(key_path)}: {key_path}: {message}")

    def dataset_of(self, set_ref: str) -> Dataset:
        return self.datasets[set_ref.split(".", 1)[0]]

    def stage_order(self) -> list[str]:
        """The stages in file order, each after the stage it starts from or scores (a cycle is refused)."""
        order: list[str] = []

        def visit(name: str, trail: list[str]) -> None:
            if name in order:
                return
            if name in trail:
                cycle = " -> ".join(trail[trail.index(name):] + [name])
                raise self.fail(f"stages.{name}", f"stages depend on each other in a cycle: {cycle}")
            for dep in self.stages[name].depends_on():
                visit(dep, trail + [name])
            order.append(name)

        for name in self.stages:
            visit(name, [])
        return order


def load_experiment(path: str | os.PathLike[str], variables: Mapping[str, str] | None = None) -> Experiment:
    """Read and check an experiment file; ``variables`` override its ``variables`` section.

    Raises:
        ExperimentError: naming the file, line and key path of the first problem: an unknown
            key, a wrong type, an unknown dataset, set, stage or variable, a dependency cycle.
    """
    path = Path(path)
    try:
        doc = load_yaml(path)
        values = _variables(path, doc, dict(variables or {}))
        file = from_data(ExperimentFile, doc.data, doc=doc, variables=values)
    except ConfigError as exc:
        raise ExperimentError(str(exc)) from None
    experiment = Experiment(path, values, file.config, file.datasets, file.stages, doc)
    _check_links(experiment)
    return experiment


def _variables(path: Path, doc: YamlDocument, given: dict[str, str]) -> dict[str, str]:
    """The file's ``variables``, each ``${...}`` in them taken from the ones above it, less ``given``."""
    declared = from_data(dict[str, Any], doc.data.get("variables") if isinstance(doc.data, Mapping) else None,
                         doc=doc, key_path="variables")
    unknown = sorted(set(given) - set(map(str, declared)))
    if unknown:
        raise ConfigError(f"{doc.where('variables')}: variables: --var {unknown[0]} is not a variable of {path.name} "
                          f"(its variables: {', '.join(map(str, declared)) or 'none'})")
    values: dict[str, str] = {}
    for key, value in declared.items():
        name = str(key)
        values[name] = given[name] if name in given else from_data(str, value, doc=doc, key_path=f"variables.{key}",
                                                                  variables=values)
    return values


# ------------------------------------------------------------------------------ references between sections


def _check_links(x: Experiment) -> None:
    """The set, stage, setting and store names the stages use exist; no stage depends on itself."""
    def items(key: str, count: int) -> list[str]:  # KEY[i] where the file wrote a list, else KEY
        return [f"{key}[{i}]" for i in range(count)] if f"{key}[0]" in x.doc.lines else [key] * count

    def check_set(ref: str, key: str) -> None:
        dataset, set_name = ref.split(".", 1)
        if dataset not in x.datasets:
            raise x.fail(key, f"unknown dataset {dataset!r} in {ref!r} (datasets: {', '.join(x.datasets)})")
        if set_name not in x.datasets[dataset].sets:
            known = ", ".join(x.datasets[dataset].sets)
            raise x.fail(key, f"dataset {dataset} has no set {set_name!r} (sets: {known})")

    for name, stage in x.stages.items():
        key = f"stages.{name}"
        refs = {part: one_or_more(getattr(stage, part, ())) for part in ("train", "data", "test")}
        for part, values in refs.items():
            for ref, where in zip(values, items(f"{key}.{part}", len(values))):
                check_set(ref, where)
        if isinstance(stage, TrainingStage) and isinstance(stage.val, str):
            check_set(stage.val, f"{key}.val")
            if not isinstance(stage, PretrainStage) or stage.val.split(".")[0] != stage.train.split(".")[0]:
                raise x.fail(f"{key}.val", "a validation set must be a set of the pre-training dataset (fine-tuning "
                                           "stages take a fraction of each split's training videos)")
        settings = {s.name for s in stage.settings}
        for report, where in zip(stage.reports, items(f"{key}.report", len(stage.reports))):
            if settings and report.row is not None:
                raise x.fail(where, "a stage with settings reports one row per setting: use `rows` (setting: "
                                    "label), not `row`")
            if not settings and report.rows:
                raise x.fail(where, "`rows` names the rows of settings, and this stage has none: use `row`")
            if not settings and stage.trains and report.row is None:
                raise x.fail(where, "missing key 'row' (the table row of this stage)")
            for setting in report.rows:
                if setting not in settings:
                    raise x.fail(f"{where}.rows.{setting}", f"no setting {setting!r} (settings: "
                                                            f"{', '.join(sorted(settings))})")
            for ref in report.columns:
                check_set(ref, f"{where}.columns.{ref}")
        for source in stage.depends_on():
            where = f"{key}.{stage.depends_key}"
            if source not in x.stages:
                raise x.fail(where, f"unknown stage {source!r} (stages: {', '.join(x.stages)})")
            if not x.stages[source].trains:
                raise x.fail(where, f"stage {source} only evaluates: it has no checkpoint")
        store = stage.store if isinstance(stage, EvaluateStage) else None
        named: list[str | None] = [store] if store else [*(s.overrides.get(STORE_KEY) for s in stage.settings),
                                                         stage.config.get(STORE_KEY)]
        for store_name in filter(None, named):
            for ref in itertools.chain(*refs.values()):
                if store_name not in x.dataset_of(ref).stores:
                    raise x.fail(key, f"store {store_name!r} is not a store of dataset {ref.split('.')[0]}")
    x.stage_order()


def select_rows(experiment: Experiment, set_ref: str, rows: Sequence[Any], columns: Sequence[str],
                sizes: Callable[[], Mapping[str, tuple[float, float]]] | None = None) -> list[Any]:
    """The manifest rows of ``set_ref`` (``dataset.set``).

    ``short_side``/``long_side`` come from the manifest's ``width``/``height`` columns, or, when
    it has none, from ``sizes()`` (``video -> (width, height)``: the planner reads them from the
    dataset's store, which records every video's size at extraction). A column the manifest
    lacks is refused naming the set's key in the file, as is a video without a known size.
    """
    dataset_name, set_name = set_ref.split(".", 1)
    dataset = experiment.datasets[dataset_name]
    conditions = dataset.sets[set_name]
    for column in conditions:
        if column not in (*_DERIVED, *columns, "split", "mos"):
            raise experiment.fail(f"datasets.{dataset_name}.sets.{set_name}.{column}",
                                  f"the manifest {dataset.manifest} has no column {column!r} "
                                  f"(columns: {', '.join(columns)})")
    probed: Mapping[str, tuple[float, float]] | None = None
    sized = [column for column in conditions if column in _DERIVED]
    if sized and not {"width", "height"} <= set(columns):
        key = f"datasets.{dataset_name}.sets.{set_name}.{sized[0]}"
        probed = sizes() if sizes is not None else {}
        if not probed:
            raise experiment.fail(key, f"the manifest {dataset.manifest} has no width and height columns and the "
                                       "dataset has no store to read the video sizes from")
        unknown = [row.video for row in rows if row.video not in probed]
        if unknown:
            raise experiment.fail(key, f"{len(unknown)} videos of {dataset.manifest} are not in the dataset's store "
                                       f"to read their size from (no width/height columns), e.g. {unknown[0]}; "
                                       "add width and height columns or extract them first")

    def cell(row: Any, column: str) -> str | None:
        if column in _DERIVED:
            given = (probed[row.video] if probed is not None
                     else [_number(row.extra.get(c)) for c in ("width", "height")])
            sides = [s for s in given if s is not None]
            return repr(float(_DERIVED[column](sides))) if len(sides) == 2 else None
        if column == "split":
            return row.split or ""
        if column == "mos":
            return "" if row.mos is None else repr(row.mos)
        return row.extra.get(column, "")

    return [row for row in rows if all(_matches(test, cell(row, column)) for column, test in conditions.items())]


def _matches(test: Range | tuple[str, ...], cell: str | None) -> bool:
    """Whether a cell is one of the values (as numbers when both parse) or a number in the range."""
    if isinstance(test, Range):
        number = _number(cell)
        return number is not None and number in test
    return any(_same(cell or "", value) for value in test)


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None


def _same(cell: str, value: str) -> bool:
    a, b = _number(cell), _number(value)
    return a == b if a is not None and b is not None else cell == value
