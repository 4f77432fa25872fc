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
``configs/clifvqa-b.yaml``; ``clifvqa train`` writes the resolved tree into the run folder
(``run.yaml``) and every checkpoint, and ``--resume`` compares it. Reading, writing, overrides
and diffs are :mod:`clifvqa.config_io`'s.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from clifvqa.config_io import ConfigError, JsonConfig, dump_yaml, from_data, load_yaml, with_overrides
from clifvqa.train.model import TINY_MODEL, ModelConfig

PAPER_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "clifvqa-b.yaml"
"""The shipped file of the paper's settings (the CLI's defaults)."""

RESUMABLE_CHANGES = ("device", "workers", "optim.grad_checkpoint")
"""Settings that may change when a run is resumed (they do not change the numbers on CPU)."""


def _path(value: Any) -> Any:
    return str(value) if isinstance(value, os.PathLike) else value


@dataclass(frozen=True)
class DataConfig(JsonConfig):
    """What the run trains and tests on, and how the videos are split (paper §5.1)."""

    manifest: str | None = field(default=None, metadata={"help": "training manifest CSV (video, mos[, split])"})
    videos: str | None = field(default=None, metadata={"help": "folder the manifest's video paths are relative to"})
    stores: tuple[str, ...] = field(default=(), metadata={
        "help": "feature stores, one fingerprint (not needed with model.branches: spatial)"})
    test_manifest: str | None = field(default=None, metadata={"help": "manifest of the test videos (same video root)"})
    val_fraction: float = field(default=0.1, metadata={
        "help": "share of the training videos held out for model selection when the manifest has no val rows"})
    splits: int | None = field(default=None, metadata={
        "help": "N random train/test splits, one model each (paper §5.1: 10); null: the manifest's split"})
    test_fraction: float = field(default=0.2, metadata={
        "help": "share of the videos in test with splits (paper: 80/20)"})
    allow_stale: bool = field(default=False, metadata={
        "help": "use store entries whose video changed since extraction (warned), else refused"})

    def __post_init__(self) -> None:
        for name in ("manifest", "videos", "test_manifest"):
            object.__setattr__(self, name, _path(getattr(self, name)))
        object.__setattr__(self, "stores", tuple(str(s) for s in self.stores))
        if not 0 <= self.val_fraction < 1 or not 0 < self.test_fraction < 1:
            raise ValueError("val_fraction must be in [0, 1) and test_fraction in (0, 1)")
        if self.splits is not None and self.splits < 1:
            raise ValueError(f"splits must be at least 1, got {self.splits}")


@dataclass(frozen=True)
class OptimConfig(JsonConfig):
    """Optimiser and schedule: AdamW, linear warm-up then cosine decay (paper §5.1, FAST-VQA's recipe)."""

    epochs: int = field(default=30, metadata={"help": "passes over the training videos (FAST-VQA: 30)"})
    batch_size: int = field(default=12, metadata={
        "help": "videos per step, per process under torchrun (paper §5.1: 12)"})
    lr: float = field(default=7.5e-4, metadata={"help": "learning rate outside the Video Swin backbone (paper §5.1)"})
    backbone_lr: float = field(default=7.5e-5, metadata={
        "help": "learning rate of the Video Swin backbone (paper §5.1)"})
    weight_decay: float = field(default=0.05, metadata={
        "help": "AdamW decoupled weight decay, every parameter (paper §5.1)"})
    warmup_epochs: float = field(default=2.5, metadata={
        "help": "linear warm-up length, then cosine decay to 0 (FAST-VQA)"})
    grad_clip: float | None = field(default=None, metadata={"help": "max global gradient norm; null: no clipping"})
    amp: bool = field(default=True, metadata={"help": "mixed precision on GPU (bf16 where native, else fp16)"})
    grad_checkpoint: bool = field(default=False, metadata={
        "help": "recompute Swin activations in the backward pass (less memory, same numbers)"})

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be >= 1")
        if self.warmup_epochs < 0 or self.lr <= 0 or self.backbone_lr < 0:
            raise ValueError("warmup_epochs must be >= 0, lr > 0 and backbone_lr >= 0")


@dataclass(frozen=True)
class LossConfig(JsonConfig):
    """Weights of the loss (paper §4.4, Eq. 16): L = alpha * L_mono + beta * L_lin."""

    alpha: float = field(default=1.0, metadata={"help": "weight of the monotonicity (rank) loss"})
    beta: float = field(default=1.0, metadata={"help": "weight of the linearity (PLCC) loss"})


@dataclass(frozen=True)
class InitConfig(JsonConfig):
    """Where the weights start from (default: random, FAST-VQA layers as the official init)."""

    fastvqa: str | None = field(default=None, metadata={
        "help": "official FAST-VQA checkpoint for the spatial branch (e.g. FAST_VQA_B_1_4.pth)"})
    swin_k400: str | None = field(default=None, metadata={
        "help": "Kinetics-400 Video Swin-T checkpoint for the backbone (paper §5.1)"})
    checkpoint: str | None = field(default=None, metadata={
        "help": "clifvqa checkpoint folder giving every weight (fine-tuning; same store fingerprint)"})
    spatial: str | None = field(default=None, metadata={
        "help": "clifvqa checkpoint folder giving only the FAST-VQA branch (CLiF-VQA*, paper §5.3)"})

    def __post_init__(self) -> None:
        for name in ("fastvqa", "swin_k400", "checkpoint", "spatial"):
            object.__setattr__(self, name, _path(getattr(self, name)))
        spatial = [name for name in ("fastvqa", "swin_k400", "spatial") if getattr(self, name)]
        if self.checkpoint and spatial:
            raise ValueError(f"checkpoint gives every weight: it cannot be combined with {', '.join(spatial)}")
        if self.spatial and len(spatial) > 1:
            raise ValueError(f"{', '.join(spatial)} all set the FAST-VQA branch: choose one")


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
        "help": "model init, data order, fragment draws, validation carving, random splits"})
    device: str = field(default="auto", metadata={"help": "auto (CUDA when available), cpu, cuda or cuda:N"})
    workers: int | None = field(default=None, metadata={
        "help": "DataLoader processes decoding videos; null: min(4, usable cores - 1)"})

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")

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


OPTIONS: dict[str, str] = {
    "manifest": "data.manifest", "videos": "data.videos", "stores": "data.stores",
    "val_fraction": "data.val_fraction", "splits": "data.splits", "test_fraction": "data.test_fraction",
    "test_manifest": "data.test_manifest", "allow_stale": "data.allow_stale",
    "epochs": "optim.epochs", "batch_size": "optim.batch_size", "lr": "optim.lr", "backbone_lr": "optim.backbone_lr",
    "weight_decay": "optim.weight_decay", "warmup_epochs": "optim.warmup_epochs", "grad_clip": "optim.grad_clip",
    "amp": "optim.amp", "grad_checkpoint": "optim.grad_checkpoint", "alpha": "loss.alpha", "beta": "loss.beta",
    "num_clips_test": "model.fragments.num_clips_test", "branches": "model.branches",
    "regression_head": "model.regression_head", "prompt_groups": "model.prompt_groups",
    "fastvqa_init": "init.fastvqa", "swin_k400_init": "init.swin_k400", "init": "init.checkpoint",
    "init_spatial": "init.spatial",
    "device": "device", "seed": "seed", "workers": "workers",
}
"""The key path each option of ``clifvqa train`` sets (``--batch-size`` -> ``optim.batch_size``)."""


def set_options(config: RunConfig, **options: Any) -> RunConfig:
    """``config`` with the given ``clifvqa train`` options applied (names of :data:`OPTIONS`; None
    means not given), as the CLI applies its flags over ``--config``."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ConfigError(f"unknown train options {unknown}; known: {', '.join(OPTIONS)}")
    return with_overrides(config, {OPTIONS[k]: v for k, v in options.items() if v is not None})
