"""The run config: every setting of one training run, typed, in one tree (``clifvqa train --config``).

::

    RunConfig
      data:   DataConfig     what to train and test on, how the videos are split
      model:  ModelConfig    the architecture (fastvqa: FastVQAConfig, fragments: FragmentConfig)
      optim:  OptimConfig    optimiser, schedule, precision
      loss:   LossConfig     weights of Eq. 16
      init:   InitConfig     where weights start from
      seed, device, workers

Every setting is in exactly one place (e.g. test clips per video only in
``model.fragments.num_clips_test``). The defaults are the paper's settings and equal the shipped
``configs/clifvqa-b.yaml``, which ``make configs`` generates from the fields; ``clifvqa train``
writes the resolved tree into the run folder (``run.yaml``) and every checkpoint, and
``--resume`` compares it. Reading, writing, overrides
and diffs are :mod:`clifvqa.config_io`'s.

A setting is defined once, as its field: everything else about it is derived from the field's
type and ``metadata`` (see :func:`settings`):

``help``
    its one help text: the YAML comment (``--print-config``, ``configs/clifvqa-b.yaml``) and the
    help of its ``clifvqa train`` option;
``option``
    its ``clifvqa train`` option (``"--epochs"``, or click declarations such as
    ``("-s", "--store", "stores")``); a field without one is set in the config file only. The
    option's type and choices come from the field's type (a ``bool`` is a ``--x/--no-x`` pair,
    a ``Literal`` a choice, a ``tuple`` a repeatable option);
``old``
    former spellings of the option, which still work with one deprecation warning;
``path``
    ``"file"`` or ``"dir"``: the option checks that the path exists;
``min``
    the smallest number the option takes (refused before anything runs);
``resumable``
    the setting may differ when a run is resumed (:data:`RESUMABLE_CHANGES`);
``protocol``
    an experiment file sets it from its datasets and stages, never by a config override
    (:data:`PROTOCOL_KEYS`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, get_type_hints

from clifvqa._device import DEVICE_HELP
from clifvqa.config_io import ConfigError, JsonConfig, dump_yaml, from_data, load_yaml, with_overrides
from clifvqa.train.model import TINY_MODEL, ModelConfig

PAPER_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "clifvqa-b.yaml"
"""The shipped file of the paper's settings (the CLI's defaults)."""


def _path(value: Any) -> Any:
    return str(value) if isinstance(value, os.PathLike) else value


@dataclass(frozen=True)
class DataConfig(JsonConfig):
    """What the run trains and tests on, and how the videos are split (paper §5.1)."""

    manifest: str | None = field(default=None, metadata={
        "help": "training manifest CSV (video, mos[, split])", "option": "--manifest", "path": "file",
        "protocol": True})
    videos: str | None = field(default=None, metadata={
        "help": "dataset folder the video paths (manifest rows, store keys) are relative to", "option": "--videos",
        "path": "dir", "protocol": True})
    stores: tuple[str, ...] = field(default=(), metadata={
        "help": "feature stores to read (repeatable; all must share one fingerprint); not needed with "
                "model.branches: spatial", "option": ("-s", "--store", "stores"), "protocol": True})
    test_manifest: str | None = field(default=None, metadata={
        "help": "manifest of the test videos (same video root)", "option": "--test-manifest", "path": "file",
        "protocol": True})
    val_fraction: float = field(default=0.1, metadata={
        "help": "share of the training videos held out for model selection when the manifest has no val rows",
        "option": "--val-fraction", "protocol": True})
    splits: int | None = field(default=None, metadata={
        "help": "N random train/test splits, one model each (paper §5.1: 10); null: the manifest's split",
        "option": "--splits", "protocol": True})
    test_fraction: float = field(default=0.2, metadata={
        "help": "share of the videos in test with splits (paper: 80/20)", "option": "--test-fraction",
        "protocol": True})
    allow_stale: bool = field(default=False, metadata={
        "help": "use store entries whose video files changed since extraction, with a warning (else refused: "
                "re-extract them)", "option": "--allow-stale"})

    def __post_init__(self) -> None:
        for name in ("manifest", "videos", "test_manifest"):
            object.__setattr__(self, name, _path(getattr(self, name)))
        object.__setattr__(self, "stores", tuple(str(s) for s in self.stores))
        if not 0 <= self.val_fraction < 1 or not 0 < self.test_fraction < 1:
            raise ConfigError("val_fraction must be in [0, 1) and test_fraction in (0, 1)")
        if self.splits is not None and self.splits < 1:
            raise ConfigError(f"splits must be at least 1, got {self.splits}")


@dataclass(frozen=True)
class OptimConfig(JsonConfig):
    """Optimiser and schedule: AdamW, linear warm-up then cosine decay (paper §5.1, FAST-VQA's recipe)."""

    epochs: int = field(default=30, metadata={
        "help": "passes over the training videos (FAST-VQA: 30)", "option": "--epochs"})
    batch_size: int = field(default=12, metadata={
        "help": "videos per step, per process under torchrun (paper §5.1: 12)", "option": "--batch-size"})
    lr: float = field(default=7.5e-4, metadata={
        "help": "learning rate outside the Video Swin backbone (paper §5.1)", "option": "--lr"})
    backbone_lr: float = field(default=7.5e-5, metadata={
        "help": "learning rate of the Video Swin backbone (paper §5.1)", "option": "--backbone-lr"})
    weight_decay: float = field(default=0.05, metadata={
        "help": "AdamW decoupled weight decay, every parameter (paper §5.1)", "option": "--weight-decay"})
    warmup_epochs: float = field(default=2.5, metadata={
        "help": "linear warm-up length, then cosine decay to 0 (FAST-VQA)", "option": "--warmup-epochs"})
    grad_clip: float | None = field(default=None, metadata={
        "help": "max global gradient norm; null: no clipping", "option": "--grad-clip"})
    amp: bool = field(default=True, metadata={
        "help": "mixed precision on GPU (bf16 where native, else fp16)", "option": "--amp"})
    grad_checkpoint: bool = field(default=False, metadata={
        "help": "recompute Swin activations in the backward pass (less memory, same numbers)",
        "option": "--grad-checkpoint", "resumable": True})

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("epochs and batch_size must be >= 1")
        if self.warmup_epochs < 0 or self.lr <= 0 or self.backbone_lr < 0:
            raise ConfigError("warmup_epochs must be >= 0, lr > 0 and backbone_lr >= 0")


@dataclass(frozen=True)
class LossConfig(JsonConfig):
    """Weights of the loss (paper §4.4, Eq. 16): L = alpha * L_mono + beta * L_lin."""

    alpha: float = field(default=1.0, metadata={
        "help": "weight of the monotonicity (rank) loss L_mono (Eq. 16)", "option": "--alpha"})
    beta: float = field(default=1.0, metadata={
        "help": "weight of the linearity (PLCC) loss L_lin (Eq. 16)", "option": "--beta"})


@dataclass(frozen=True)
class InitConfig(JsonConfig):
    """Where the weights start from (default: random, FAST-VQA layers as the official init)."""

    fastvqa: str | None = field(default=None, metadata={
        "help": "official FAST-VQA checkpoint for the spatial branch (e.g. FAST_VQA_B_1_4.pth)",
        "option": "--init-fastvqa", "old": ("--fastvqa-init",), "path": "file"})
    swin_k400: str | None = field(default=None, metadata={
        "help": "Kinetics-400 Video Swin-T checkpoint for the backbone (paper §5.1)",
        "option": "--init-swin-k400", "old": ("--swin-k400-init",), "path": "file"})
    checkpoint: str | None = field(default=None, metadata={
        "help": "fine-tuning: every weight from this clifvqa checkpoint folder (e.g. runs/lsvq/best; the stores "
                "must have its fingerprint)", "option": "--init", "path": "dir"})
    spatial: str | None = field(default=None, metadata={
        "help": "only the FAST-VQA branch from this clifvqa checkpoint folder (CLiF-VQA*, paper §5.3; any store)",
        "option": "--init-spatial", "path": "dir"})

    def __post_init__(self) -> None:
        for name in ("fastvqa", "swin_k400", "checkpoint", "spatial"):
            object.__setattr__(self, name, _path(getattr(self, name)))
        spatial = [name for name in ("fastvqa", "swin_k400", "spatial") if getattr(self, name)]
        if self.checkpoint and spatial:
            raise ConfigError(f"checkpoint gives every weight: it cannot be combined with {', '.join(spatial)}")
        if self.spatial and len(spatial) > 1:
            raise ConfigError(f"{', '.join(spatial)} all set the FAST-VQA branch: choose one")


@dataclass(frozen=True)
class RunConfig(JsonConfig):
    """CLiF-VQA training run (clifvqa train --config FILE); defaults: the paper's settings."""

    data: DataConfig = field(default_factory=DataConfig, metadata={
        "help": "what to train and test on, how the videos are split (paper §5.1)"})
    model: ModelConfig = field(default_factory=ModelConfig, metadata={
        "help": "the architecture (paper §4, Eqs. 8-13); r and the prompt groups come from the store"})
    optim: OptimConfig = field(default_factory=OptimConfig, metadata={
        "help": "AdamW, linear warm-up then cosine decay (paper §5.1; FAST-VQA where it is silent)"})
    loss: LossConfig = field(default_factory=LossConfig, metadata={
        "help": "L = alpha * L_mono + beta * L_lin (paper §4.4, Eq. 16)"})
    init: InitConfig = field(default_factory=InitConfig, metadata={
        "help": "where weights start (paper §5.1: the backbone from Kinetics-400); null: random"})
    seed: int = field(default=0, metadata={
        "help": "model init, data order, fragment draws, validation carving, random splits", "option": "--seed"})
    device: str = field(default="auto", metadata={"help": DEVICE_HELP, "option": "--device", "resumable": True})
    workers: int | None = field(default=None, metadata={
        "help": "DataLoader processes decoding videos; null (not given): min(4, usable cores - 1)",
        "option": "--workers", "min": 0, "resumable": True})

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 0:
            raise ConfigError(f"workers must be >= 0, got {self.workers}")

    def to_yaml(self) -> str:
        """The tree as YAML (:func:`~clifvqa.config_io.dump_yaml`; :func:`load_run_config` reads it)."""
        return dump_yaml(self)


def load_run_config(path: str | os.PathLike[str]) -> RunConfig:
    """Read a run config YAML file; errors name the file, line and key path."""
    doc = load_yaml(path)
    return from_data(RunConfig, {} if doc.data is None else doc.data, doc=doc)


def tiny(config: RunConfig) -> RunConfig:
    """``--tiny``: ``config`` with the tiny model's architecture (:data:`~clifvqa.train.model.TINY_MODEL`:
    FAST-VQA, fragments, t0, hidden widths), keeping its branches, head, prompt groups and test clips."""
    fragments = replace(TINY_MODEL.fragments, num_clips_test=config.model.fragments.num_clips_test)
    model = replace(TINY_MODEL, fragments=fragments, branches=config.model.branches,
                    regression_head=config.model.regression_head, prompt_groups=config.model.prompt_groups)
    return replace(config, model=model)


# ------------------------------------------------------------------------------ settings


@dataclass(frozen=True)
class Setting:
    """One leaf of a config tree as the CLI offers it: its dotted key, type and what its field's
    metadata says (the module docstring lists the metadata keys)."""

    key: str
    type: Any
    help: str = ""
    option: tuple[str, ...] = ()
    """The option's spellings (``("-s", "--store")``); empty: set in the config file only."""
    name: str = ""
    """The option's Python name, as :func:`set_options` takes it (``stores``, ``batch_size``)."""
    old: tuple[str, ...] = ()
    path: str | None = None
    min: float | None = None
    resumable: bool = False
    protocol: bool = False

    @classmethod
    def of_field(cls, key: str, tp: Any, metadata: Mapping[str, Any]) -> Setting:
        """The setting of a field: its name is the one declared with the option (``("-s",
        "--store", "stores")``), else its longest spelling's (``--batch-size``: ``batch_size``)."""
        decls = metadata.get("option", ())
        decls = (decls,) if isinstance(decls, str) else tuple(decls)
        option = tuple(d for d in decls if d.startswith("-"))
        named = [d for d in decls if not d.startswith("-")]
        name = named[0] if named else max(option, key=len, default="").lstrip("-").replace("-", "_")
        return cls(key, tp, metadata.get("help", ""), option, name, tuple(metadata.get("old", ())),
                   metadata.get("path"), metadata.get("min"), bool(metadata.get("resumable")),
                   bool(metadata.get("protocol")))


def settings(cls: type = RunConfig, prefix: str = "") -> tuple[Setting, ...]:
    """Every leaf setting of config class ``cls`` in field order (sections walked into), e.g.
    ``Setting("optim.batch_size", int, "videos per step ...", ("--batch-size",), "batch_size")``."""
    hints = get_type_hints(cls)
    out: list[Setting] = []
    for f in fields(cls):
        key = f"{prefix}{f.name}"
        if is_dataclass(hints[f.name]):
            out.extend(settings(hints[f.name], f"{key}."))
        else:
            out.append(Setting.of_field(key, hints[f.name], f.metadata))
    return tuple(out)


def option_settings(cls: type = RunConfig) -> tuple[Setting, ...]:
    """The settings of ``cls`` that ``clifvqa train`` takes as options (their fields name one)."""
    return tuple(s for s in settings(cls) if s.option)


RESUMABLE_CHANGES = tuple(s.key for s in settings() if s.resumable)
"""Settings that may change when a run is resumed (they do not change the numbers on CPU); from
the fields' ``resumable`` metadata."""

PROTOCOL_KEYS = tuple(s.key for s in settings() if s.protocol)
"""Run-config keys an experiment file sets itself (from datasets and stages); its config overrides
may not; from the fields' ``protocol`` metadata."""


def set_options(config: RunConfig, **options: Any) -> RunConfig:
    """``config`` with the given ``clifvqa train`` options applied, by their Python names
    (:attr:`Setting.name`: ``batch_size=2`` sets ``optim.batch_size``; None means not given), as
    the CLI applies its options over ``--config``."""
    by_name = {s.name: s.key for s in option_settings(type(config))}
    unknown = sorted(set(options) - set(by_name))
    if unknown:
        raise ConfigError(f"unknown train options {unknown}; known: {', '.join(by_name)}")
    return with_overrides(config, {by_name[k]: v for k, v in options.items() if v is not None})
