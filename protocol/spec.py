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
mappings (labels joined with ``+``). A string that is exactly one ``${var}`` takes the variable's
value as YAML (``${epochs}`` is a number). Relative paths are taken from the current directory
and recorded absolute.

Errors name the file, line and key path (``paper.yaml:42: stages.finetune.init.from: ...``).
"""

from __future__ import annotations

import itertools
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clifvqa.protocol import ExperimentError
from clifvqa.train.config import PROTOCOL_KEYS
from clifvqa.train.config_io import YamlDocument, load_yaml

KINDS = ("pretrain", "finetune", "ablation", "evaluate")
INIT_MODES = ("whole", "spatial")
STORE_KEY = "store"
"""The setting/config key that selects a dataset's named store (not a run-config key)."""
DEFAULT_STORE = "default"
ALL_SET = "all"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+=-]*")
_VAR = re.compile(r"\$\{([^}]*)\}")
_DERIVED = {"short_side": min, "long_side": max}

_STAGE_KEYS = {
    "pretrain": {"kind", "train", "val", "test", "seeds", "init", "config", "settings", "report"},
    "finetune": {"kind", "data", "splits", "test_fraction", "split_seed", "val", "init", "config", "settings",
                 "report"},
    "evaluate": {"kind", "from", "checkpoint", "test", "store", "config", "report"},
}
_STAGE_KEYS["ablation"] = _STAGE_KEYS["finetune"]


@dataclass(frozen=True)
class Condition:
    """One column test of a set: ``values`` (any of, compared as numbers when both parse) or an
    inclusive numeric range ``low``..``high``."""

    column: str
    values: tuple[str, ...] = ()
    low: float = -math.inf
    high: float = math.inf

    def matches(self, cell: str | None) -> bool:
        if self.values:
            return any(_same(cell or "", v) for v in self.values)
        number = _number(cell)
        return number is not None and self.low <= number <= self.high


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None


def _same(cell: str, value: str) -> bool:
    a, b = _number(cell), _number(value)
    return a == b if a is not None and b is not None else cell == value


@dataclass(frozen=True)
class Dataset:
    """A dataset named once: manifest, video folder, named stores and named row sets."""

    name: str
    manifest: Path
    videos: Path
    stores: Mapping[str, tuple[str, ...]]
    sets: Mapping[str, tuple[Condition, ...]]


@dataclass(frozen=True)
class Setting:
    """One variant of a stage: a name (the table row) and run-config overrides."""

    name: str
    overrides: Mapping[str, Any]


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
    columns: Mapping[str, str] = field(default_factory=dict)
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

    stage: str
    mode: str = "whole"
    setting: str | None = None
    split: str | None = None


@dataclass(frozen=True)
class Stage:
    """One stage of the experiment, as written (``kind`` decides which fields are used)."""

    name: str
    kind: str
    train: str | None = None
    data: tuple[str, ...] = ()
    val: float | str = 0.1
    test: tuple[str, ...] = ()
    seeds: int = 1
    splits: int = 10
    test_fraction: float = 0.2
    split_seed: int = 0
    init: Init | None = None
    source: str | None = None
    checkpoint: str | None = None
    store: str | None = None
    config: Mapping[str, Any] = field(default_factory=dict)
    settings: tuple[Setting, ...] = ()
    reports: tuple[Report, ...] = ()

    @property
    def trains(self) -> bool:
        return self.kind != "evaluate"

    def depends_on(self) -> list[str]:
        return [s for s in (self.init.stage if self.init else None, self.source) if s]


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


def load_experiment(path: str | os.PathLike[str], variables: Mapping[str, str] | None = None) -> Experiment:
    """Read and check an experiment file; ``variables`` override its ``variables`` section.

    Raises:
        ExperimentError: naming the file, line and key path of the first problem: an unknown
            key, a wrong type, an unknown dataset, set, stage or variable, a dependency cycle.
    """
    doc = load_yaml(path)
    return _Reader(Path(path), doc, dict(variables or {})).read()


class _Reader:
    def __init__(self, path: Path, doc: YamlDocument, variables: dict[str, str]) -> None:
        self.path, self.doc, self.cli_vars = path, doc, variables

    def fail(self, key: str, message: str) -> ExperimentError:
        return ExperimentError(f"{self.doc.where(key)}: {key or '(top level)'}: {message}")

    # --------------------------------------------------------------- typed pieces
    def mapping(self, value: Any, key: str, known: set[str] | None = None) -> Mapping[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise self.fail(key, f"expected a mapping, got {value!r}")
        if known is not None:
            unknown = [str(k) for k in value if k not in known]
            if unknown:
                raise self.fail(f"{key}.{unknown[0]}" if key else unknown[0],
                                f"unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")
        return value

    def text(self, value: Any, key: str) -> str:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise self.fail(key, f"expected a string, got {value!r}")
        return self.substitute(str(value), key)

    def name(self, value: Any, key: str) -> str:
        text = self.text(value, key)
        if not _NAME.fullmatch(text):
            raise self.fail(key, f"{text!r} is not a usable name (letters, digits and _ . + = -, "
                                 "starting with a letter or digit)")
        return text

    def integer(self, value: Any, key: str, low: int = 1) -> int:
        value = self.scalar(value, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise self.fail(key, f"expected an integer >= {low}, got {value!r}")
        return value

    def fraction(self, value: Any, key: str, zero_ok: bool) -> float:
        value = self.scalar(value, key)
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = number and (0 <= value < 1 if zero_ok else 0 < value < 1)
        if not ok:
            raise self.fail(key, f"expected a number in {'[0, 1)' if zero_ok else '(0, 1)'}, got {value!r}")
        return float(value)

    def texts(self, value: Any, key: str) -> tuple[str, ...]:
        return tuple(self.text(v, where) for v, where in self.items(value, key))

    def items(self, value: Any, key: str) -> list[tuple[Any, str]]:
        """``(item, key path)`` of a list (``KEY[i]``, the line of each item) or of one value."""
        return [(v, f"{key}[{i}]") for i, v in enumerate(value)] if isinstance(value, list) else [(value, key)]

    def substitute(self, text: str, key: str) -> str:
        def one(match: re.Match) -> str:
            name = match.group(1)
            if name not in self.variables:
                raise self.fail(key, f"unknown variable ${{{name}}} (defined: {', '.join(self.variables) or 'none'}; "
                                     "define it under `variables` or pass --var NAME=VALUE)")
            return self.variables[name]
        return _VAR.sub(one, text)

    def scalar(self, value: Any, key: str) -> Any:
        """A config value: a string that is exactly one ``${var}`` becomes the variable's value read
        as YAML (``${epochs}`` with epochs=3 is the number 3); other strings are substituted."""
        if not isinstance(value, str):
            return value
        text = self.substitute(value, key)
        if _VAR.fullmatch(value.strip()):
            import yaml

            return yaml.safe_load(text)
        return text

    def overrides(self, value: Any, key: str) -> dict[str, Any]:
        """Nested or dotted run-config overrides as ``{dotted.key: value}`` (``store`` kept as is)."""
        flat: dict[str, Any] = {}

        def walk(node: Any, prefix: str, where: str) -> None:
            for k, v in self.mapping(node, where).items():
                dotted = f"{prefix}.{k}" if prefix else str(k)
                sub = f"{where}.{k}"
                if isinstance(v, Mapping):
                    walk(v, dotted, sub)
                    continue
                if dotted in PROTOCOL_KEYS:
                    raise self.fail(sub, f"{dotted} is set by the experiment (datasets, sets and stage keys "
                                         "train/data/val/splits/test_fraction), not by overrides")
                flat[dotted] = self.scalar(v, sub)
        walk(value, "", key)
        return flat

    # --------------------------------------------------------------- sections
    def read(self) -> Experiment:
        top = self.mapping(self.doc.data, "", {"variables", "config", "datasets", "stages"})
        declared = self.mapping(top.get("variables"), "variables")
        unknown = sorted(set(self.cli_vars) - {str(k) for k in declared})
        if unknown:
            raise self.fail("variables", f"--var {unknown[0]} is not a variable of {self.path.name} "
                                         f"(its variables: {', '.join(map(str, declared)) or 'none'})")
        self.variables: dict[str, str] = {}
        for k, v in declared.items():
            name = str(k)
            self.variables[name] = self.cli_vars[name] if name in self.cli_vars else self.text(v, f"variables.{k}")
        config = self.overrides(top.get("config"), "config")
        datasets = {}
        for name, body in self.mapping(top.get("datasets"), "datasets").items():
            datasets[self.name(name, f"datasets.{name}")] = self.dataset(str(name), body, f"datasets.{name}")
        if not datasets:
            raise self.fail("datasets", "an experiment needs at least one dataset")
        self.datasets = datasets
        stages: dict[str, Stage] = {}
        for name, body in self.mapping(top.get("stages"), "stages").items():
            stages[self.name(name, f"stages.{name}")] = self.stage(str(name), body, f"stages.{name}")
        if not stages:
            raise self.fail("stages", "an experiment needs at least one stage")
        self.check_links(stages)
        return Experiment(self.path, self.variables, config, datasets, stages, self.doc)

    def dataset(self, name: str, body: Any, key: str) -> Dataset:
        body = self.mapping(body, key, {"manifest", "videos", "store", "stores", "sets"})
        for required in ("manifest", "videos"):
            if required not in body:
                raise self.fail(key, f"missing key {required!r}")
        if "store" in body and "stores" in body:
            raise self.fail(f"{key}.stores", "give `store` (one) or `stores` (named), not both")
        stores: dict[str, tuple[str, ...]] = {}
        if "store" in body:
            stores[DEFAULT_STORE] = self.paths(body["store"], f"{key}.store")
        for store_name, value in self.mapping(body.get("stores"), f"{key}.stores").items():
            where = f"{key}.stores.{store_name}"
            stores[self.name(store_name, where)] = self.paths(value, where)
        sets: dict[str, tuple[Condition, ...]] = {ALL_SET: ()}
        for set_name, selection in self.mapping(body.get("sets"), f"{key}.sets").items():
            where = f"{key}.sets.{set_name}"
            if set_name == ALL_SET:
                raise self.fail(where, f"`{ALL_SET}` is every row of the manifest and cannot be redefined")
            sets[self.name(set_name, where)] = tuple(
                self.condition(str(col), cond, f"{where}.{col}")
                for col, cond in self.mapping(selection, where).items())
        return Dataset(name, self.path_of(body["manifest"], f"{key}.manifest"),
                       self.path_of(body["videos"], f"{key}.videos"), stores, sets)

    def path_of(self, value: Any, key: str) -> Path:
        return Path(self.text(value, key)).expanduser().absolute()

    def paths(self, value: Any, key: str) -> tuple[str, ...]:
        # remote stores (s3://, https://) stay URLs
        return tuple(t if "://" in t else str(Path(t).expanduser().absolute()) for t in self.texts(value, key))

    def condition(self, column: str, cond: Any, key: str) -> Condition:
        if isinstance(cond, Mapping):
            cond = self.mapping(cond, key, {"min", "max"})
            bounds = {}
            for end in ("min", "max"):
                if end in cond:
                    v = cond[end]
                    if isinstance(v, bool) or not isinstance(v, (int, float)):
                        raise self.fail(f"{key}.{end}", f"expected a number, got {v!r}")
                    bounds[end] = float(v)
            if not bounds:
                raise self.fail(key, "a range needs min, max or both")
            return Condition(column, (), bounds.get("min", -math.inf), bounds.get("max", math.inf))
        values = cond if isinstance(cond, list) else [cond]
        return Condition(column, tuple("" if v is None else self.text(v, key) for v in values))

    def set_ref(self, value: Any, key: str) -> str:
        ref = self.text(value, key)
        dataset, _, set_name = ref.partition(".")
        if dataset not in self.datasets:
            raise self.fail(key, f"unknown dataset {dataset!r} in {ref!r} (datasets: {', '.join(self.datasets)})")
        set_name = set_name or ALL_SET
        if set_name not in self.datasets[dataset].sets:
            known = ", ".join(self.datasets[dataset].sets)
            raise self.fail(key, f"dataset {dataset} has no set {set_name!r} (sets: {known})")
        return f"{dataset}.{set_name}"

    def stage(self, name: str, body: Any, key: str) -> Stage:
        body = self.mapping(body, key)
        kind = body.get("kind")
        if kind not in KINDS:
            raise self.fail(f"{key}.kind", f"expected one of {', '.join(KINDS)}, got {kind!r}")
        self.mapping(body, key, _STAGE_KEYS[kind])
        fields_: dict[str, Any] = {"name": name, "kind": kind}
        if kind == "evaluate":
            if "test" not in body or ("from" in body) == ("checkpoint" in body):
                raise self.fail(key, "an evaluate stage scores the runs of stage `from`, or one `checkpoint` folder, "
                                     "on the sets `test`: give `test` and one of `from` and `checkpoint`")
            if "from" in body:
                fields_["source"] = self.text(body["from"], f"{key}.from")
            else:
                fields_["checkpoint"] = str(self.path_of(body["checkpoint"], f"{key}.checkpoint"))
            if "store" in body:
                fields_["store"] = self.text(body["store"], f"{key}.store")
        elif kind == "pretrain":
            if "train" not in body:
                raise self.fail(key, "missing key 'train' (the set to train on, e.g. lsvq.train)")
            fields_["train"] = self.set_ref(body["train"], f"{key}.train")
            fields_["seeds"] = self.integer(body.get("seeds", 1), f"{key}.seeds")
        else:
            if "data" not in body:
                raise self.fail(key, "missing key 'data' (the sets to fine-tune on, each split at random)")
            fields_["data"] = tuple(self.set_ref(v, where) for v, where in self.items(body["data"], f"{key}.data"))
            fields_["splits"] = self.integer(body.get("splits", 10), f"{key}.splits")
            fields_["test_fraction"] = self.fraction(body.get("test_fraction", 0.2), f"{key}.test_fraction", False)
            fields_["split_seed"] = self.integer(body.get("split_seed", 0), f"{key}.split_seed", 0)
            if kind == "ablation" and "settings" not in body:
                raise self.fail(key, "an ablation stage needs `settings` (a list, or a product of overrides)")
        if "test" in body:
            fields_["test"] = tuple(self.set_ref(v, where) for v, where in self.items(body["test"], f"{key}.test"))
        if "val" in body:
            val = body["val"]
            if isinstance(val, str):
                ref = self.set_ref(val, f"{key}.val")
                if kind != "pretrain" or ref.split(".")[0] != fields_["train"].split(".")[0]:
                    raise self.fail(f"{key}.val", "a validation set must be a set of the pre-training dataset (fine-"
                                                  "tuning stages take a fraction of each split's training videos)")
                fields_["val"] = ref
            else:
                fields_["val"] = self.fraction(val, f"{key}.val", True)
        if "init" in body:
            fields_["init"] = self.init(body["init"], f"{key}.init")
        if "config" in body:
            fields_["config"] = self.overrides(body["config"], f"{key}.config")
        if "settings" in body:
            fields_["settings"] = self.settings(body["settings"], f"{key}.settings")
        if "report" in body:
            settings = fields_.get("settings", ())
            fields_["reports"] = tuple(self.report(r, where, settings, kind)
                                       for r, where in self.items(body["report"], f"{key}.report"))
        return Stage(**fields_)

    def init(self, body: Any, key: str) -> Init:
        body = self.mapping(body, key, {"from", "mode", "setting", "split"})
        if "from" not in body:
            raise self.fail(key, "missing key 'from' (the stage whose selected checkpoint starts the runs)")
        mode = body.get("mode", "whole")
        if mode not in INIT_MODES:
            raise self.fail(f"{key}.mode", f"expected one of {', '.join(INIT_MODES)}, got {mode!r}")
        return Init(self.text(body["from"], f"{key}.from"), mode,
                    self.text(body["setting"], f"{key}.setting") if "setting" in body else None,
                    self.text(body["split"], f"{key}.split") if "split" in body else None)

    def settings(self, body: Any, key: str) -> tuple[Setting, ...]:
        if isinstance(body, list):
            out = []
            for i, item in enumerate(body):
                where = f"{key}[{i}]"
                item = self.mapping(item, where, {"name", "set"})
                if "name" not in item:
                    raise self.fail(where, "missing key 'name' (the setting's table row)")
                name = self.name(item["name"], f"{where}.name")
                out.append(Setting(name, self.overrides(item.get("set"), f"{where}.set")))
        else:
            product = self.mapping(self.mapping(body, key, {"product"}).get("product"), f"{key}.product")
            axes = []
            for k, choices in product.items():
                where = f"{key}.product.{k}"
                if isinstance(choices, Mapping):
                    axes.append([(str(label), k, v) for label, v in choices.items()])
                elif isinstance(choices, list) and choices:
                    axes.append([(f"{k.rsplit('.', 1)[-1]}={v}", k, v) for v in choices])
                else:
                    raise self.fail(where, "expected a non-empty list of values or a mapping label: value")
            out = []
            for combo in itertools.product(*axes):
                label = "+".join(part for part, _, _ in combo if part)
                overrides = self.overrides({k: v for _, k, v in combo}, f"{key}.product")
                out.append(Setting(self.name(label or "base", f"{key}.product"), overrides))
        names = [s.name for s in out]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice or not out:
            raise self.fail(key, f"setting names must be distinct and at least one: {', '.join(twice) or 'none given'}")
        return tuple(out)

    def report(self, body: Any, key: str, settings: Sequence[Setting], kind: str) -> Report:
        body = self.mapping(body, key, {"table", "row", "rows", "columns", "column"})
        if "table" not in body:
            raise self.fail(key, "missing key 'table'")
        if settings and "row" in body:
            raise self.fail(key, "a stage with settings reports one row per setting: use `rows` (setting: label), "
                                 "not `row`")
        if not settings and "rows" in body:
            raise self.fail(key, "`rows` names the rows of settings, and this stage has none: use `row`")
        if not settings and kind != "evaluate" and "row" not in body:
            raise self.fail(key, "missing key 'row' (the table row of this stage)")
        names = {s.name for s in settings}
        rows = {}
        for k, v in self.mapping(body.get("rows"), f"{key}.rows").items():
            if k not in names:
                raise self.fail(f"{key}.rows.{k}", f"no setting {k!r} (settings: {', '.join(sorted(names))})")
            rows[str(k)] = self.text(v, f"{key}.rows.{k}")
        columns = {self.set_ref(k, f"{key}.columns.{k}"): self.text(v, f"{key}.columns.{k}")
                   for k, v in self.mapping(body.get("columns"), f"{key}.columns").items()}
        return Report(self.text(body["table"], f"{key}.table"),
                      self.text(body["row"], f"{key}.row") if "row" in body else None, rows, columns,
                      self.text(body["column"], f"{key}.column") if "column" in body else None)

    def check_links(self, stages: Mapping[str, Stage]) -> None:
        for stage in stages.values():
            for ref, where in ((stage.init.stage if stage.init else None, "init.from"), (stage.source, "from")):
                if ref is None:
                    continue
                if ref not in stages:
                    raise self.fail(f"stages.{stage.name}.{where}",
                                    f"unknown stage {ref!r} (stages: {', '.join(stages)})")
                if not stages[ref].trains:
                    raise self.fail(f"stages.{stage.name}.{where}", f"stage {ref} only evaluates: it has no checkpoint")
            store = stage.store
            names = [store] if store else [*(s.overrides.get(STORE_KEY) for s in stage.settings),
                                           stage.config.get(STORE_KEY)]
            for name in filter(None, names):
                for ref in (*stage.test, *stage.data, *filter(None, [stage.train])):
                    if name not in self.datasets[ref.split(".")[0]].stores:
                        raise self.fail(f"stages.{stage.name}", f"store {name!r} is not a store of dataset "
                                                               f"{ref.split('.')[0]}")
        order: list[str] = []
        state: dict[str, int] = {}

        def visit(name: str, trail: list[str]) -> None:
            if state.get(name) == 2:
                return
            if state.get(name) == 1:
                cycle = " -> ".join(trail[trail.index(name):] + [name])
                raise self.fail(f"stages.{name}", f"stages depend on each other in a cycle: {cycle}")
            state[name] = 1
            for dep in stages[name].depends_on():
                visit(dep, trail + [name])
            state[name] = 2
            order.append(name)

        for name in stages:
            visit(name, [])


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
    for cond in conditions:
        if cond.column not in (*_DERIVED, *columns, "split", "mos"):
            raise experiment.fail(f"datasets.{dataset_name}.sets.{set_name}.{cond.column}",
                                  f"the manifest {dataset.manifest} has no column {cond.column!r} "
                                  f"(columns: {', '.join(columns)})")
    probed: Mapping[str, tuple[float, float]] | None = None
    sized = [c.column for c in conditions if c.column in _DERIVED]
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
            if probed is not None:
                sides = list(probed[row.video])
            else:
                sides = [_number(row.extra.get(c)) for c in ("width", "height")]
            return None if None in sides else repr(float(_DERIVED[column](sides)))
        if column == "split":
            return row.split or ""
        if column == "mos":
            return "" if row.mos is None else repr(row.mos)
        return row.extra.get(column, "")

    return [row for row in rows if all(cond.matches(cell(row, cond.column)) for cond in conditions)]
