"""The CLiF-VQA model (paper Eqs. 8-13): semantic MLP + FAST-VQA spatial branch + regression head.

Inputs of :meth:`ClifVQA.forward`:

- ``semantic``: the stored pooled rows of each video, transposed to ``M_s`` = ``[B, 2r, T]``
  (r averages then r maxima, prompts in store order; any T, also 1).
- ``fragments``: ``[B, k, 3, T_clip, H, W]`` normalised fragment clips (k = 1 in training, the
  number of test clips at evaluation).

Branches (our reading of the paper, each a documented choice):

- **Semantic (Eq. 8).** Rows of the selected prompt groups are kept (for prompt i of a kept group:
  row i, its average, and row r+i, its maximum). Each row is resampled along time to ``t0``
  samples (linear, ``align_corners=True``: the first and last frames land exactly on the first
  and last samples; a single frame is repeated), then the same FC1 (t0→hidden) → GELU →
  FC2 (hidden→1) is applied to every row ("per description row"), giving ``F_s`` [B, 2r'].
- **Spatial (Eqs. 9-11).** FAST-VQA (``fastvqa``: ``fragments_backbone`` + ``vqa_head``) maps a
  clip to the quality map ``[1, T_clip/2, H/32, W/32]``; ``F_f`` is its flatten (784 values for
  FAST-VQA-B at 32×224×224; the size follows from the configs).
- **Regression head (Eqs. 12-13).** ``concat(F_s, F_f)`` → FC3 → GELU → FC4 → score, per clip.

The video's score is the mean over its k clips (``F_s`` is the same for every clip).

Ablations (paper Tables 3-4) without the regression head use each branch's own readout:
spatial = the mean of the FAST-VQA map (FAST-VQA's own score), semantic = the mean of ``F_s``
(parameter-free like FAST-VQA's mean); with both branches and no head the two readouts are
summed. With a single branch the head sees only that branch's features.

Precision: under autocast (AMP training on a GPU) only the Video Swin backbone runs in half
precision. The semantic branch, FAST-VQA's readout (``vqa_head``) and the regression head always
compute in float32 from float32 inputs: in bfloat16 (8 mantissa bits) nearby scores round onto
the same value, which ties videos and changes the rank correlations models are selected on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from clifvqa._device import no_autocast
from clifvqa.config_io import ConfigError, JsonConfig
from clifvqa.train.fastvqa import VARIANTS, FastVQAConfig, build_fastvqa
from clifvqa.train.fragments import FragmentConfig

Branches = Literal["both", "semantic", "spatial"]
PromptGroups = Literal["all", "objective", "subjective"]
BRANCHES: tuple[str, ...] = get_args(Branches)
PROMPT_GROUPS: tuple[str, ...] = get_args(PromptGroups)

TINY_FRAGMENTS = FragmentConfig(fragments_h=4, fragments_w=4, clip_len=16, aligned=16, frame_interval=1)
"""Fragments for ``--tiny`` runs (tests, demo): a 4×4 grid of 32-px patches, 16 consecutive frames,
so clips are 16×128×128 (the tiny FAST-VQA's adaptive window becomes 4×4×4)."""


@dataclass(frozen=True)
class ModelConfig(JsonConfig):
    """The model a user chooses (the run config's model section); paper settings by default.

    The prompts (r and their groups) are not chosen here: they come from the feature store
    (:class:`ClifVQAConfig` adds them).
    """

    branches: Branches = field(default="both", metadata={
        "help": "both, semantic or spatial (paper Table 3)", "option": "--branches"})
    regression_head: bool = field(default=True, metadata={
        "help": "FC3/FC4 (Eqs. 12-13); false: each branch's own readout (paper Table 3)",
        "option": "--regression-head"})
    prompt_groups: PromptGroups = field(default="all", metadata={
        "help": "prompts of the semantic branch: all, objective, subjective (paper Table 4)",
        "option": "--prompt-groups"})
    t0: int = field(default=32, metadata={"help": "samples per row after resampling in time (Eq. 8: FC1 input)"})
    semantic_hidden: int = field(default=64, metadata={"help": "FC1 output width (Eq. 8)"})
    head_hidden: int = field(default=128, metadata={"help": "FC3 output width (the paper does not give it)"})
    fastvqa: FastVQAConfig = field(default_factory=lambda: VARIANTS["fast-b"],
                                   metadata={"help": "FAST-VQA-B: Video Swin-T with GRPB (paper §4.2)"})
    fragments: FragmentConfig = field(
        default_factory=FragmentConfig,
        metadata={"help": "fragments of FAST-VQA-B (paper §4.2); the clip shape fixes the size of F_f (Eq. 11)"})

    def __post_init__(self) -> None:
        # checkpoints written before the configs were typed hold these two as plain mappings
        if isinstance(self.fastvqa, Mapping):
            object.__setattr__(self, "fastvqa", FastVQAConfig.from_dict(self.fastvqa))
        if isinstance(self.fragments, Mapping):
            object.__setattr__(self, "fragments", FragmentConfig.from_dict(self.fragments))
        if self.branches not in BRANCHES:
            raise ConfigError(f"branches must be one of {BRANCHES}, got {self.branches!r}")
        if self.prompt_groups not in PROMPT_GROUPS:
            raise ConfigError(f"prompt_groups must be one of {PROMPT_GROUPS}, got {self.prompt_groups!r}")
        if self.t0 < 1 or self.semantic_hidden < 1 or self.head_hidden < 1:
            raise ConfigError("t0, semantic_hidden and head_hidden must be positive")

    @property
    def uses_semantic(self) -> bool:
        return self.branches in ("both", "semantic")

    @property
    def uses_spatial(self) -> bool:
        return self.branches in ("both", "spatial")

    @property
    def clip_shape(self) -> tuple[int, int, int]:
        """(T, H, W) of one fragment clip."""
        return (self.fragments.clip_len, self.fragments.size_h, self.fragments.size_w)


TINY_MODEL = ModelConfig(fastvqa=VARIANTS["tiny"], fragments=TINY_FRAGMENTS, t0=16, semantic_hidden=16, head_hidden=32)
"""The ``--tiny`` model: the same code with the tiny FAST-VQA, :data:`TINY_FRAGMENTS`, t0 = 16 and
narrow MLPs (for tests and demos)."""


@dataclass(frozen=True)
class ClifVQAConfig(ModelConfig):
    """The architecture of a built CLiF-VQA: the :class:`ModelConfig` plus the store's prompts.

    Attributes (besides :class:`ModelConfig`'s):
        r: prompts in the feature store (the store holds 2r rows per frame).
        prompt_groups_of: the group (``objective``/``subjective``) of each of the r stored prompts,
            in store order (``provenance["prompts"]["groups"]``); needed to select a subset.
    """

    r: int = field(kw_only=True)
    prompt_groups_of: tuple[str, ...] = field(default=(), kw_only=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "prompt_groups_of", tuple(self.prompt_groups_of))
        if self.r < 1:
            raise ConfigError(f"r (prompts in the store) must be at least 1, got {self.r}")
        if self.prompt_groups_of and len(self.prompt_groups_of) != self.r:
            raise ConfigError(f"prompt_groups_of has {len(self.prompt_groups_of)} entries for r={self.r} prompts")
        if self.uses_semantic:
            self.semantic_rows()  # refuse an empty prompt subset now, not at the first batch

    @classmethod
    def of(cls, model: ModelConfig, r: int, prompt_groups_of: Sequence[str] = ()) -> ClifVQAConfig:
        """The built model of settings ``model`` on a store of ``r`` prompts in ``prompt_groups_of``."""
        settings = {f.name: getattr(model, f.name) for f in fields(ModelConfig)}
        return cls(r=r, prompt_groups_of=tuple(prompt_groups_of), **settings)

    @property
    def model(self) -> ModelConfig:
        """The user-chosen part (:class:`ModelConfig`), without the store's prompts."""
        return ModelConfig(**{f.name: getattr(self, f.name) for f in fields(ModelConfig)})

    def semantic_rows(self) -> list[int]:
        """Indices of the stored rows the semantic branch uses (averages first, then maxima)."""
        if self.prompt_groups == "all":
            kept = list(range(self.r))
        else:
            if not self.prompt_groups_of:
                raise ConfigError(f"prompt_groups={self.prompt_groups!r} needs the group of each stored prompt "
                                  "(prompt_groups_of)")
            kept = [i for i, g in enumerate(self.prompt_groups_of) if g == self.prompt_groups]
            if not kept:
                groups = sorted(set(self.prompt_groups_of))
                raise ConfigError(f"the store has no {self.prompt_groups} prompts (groups: {groups})")
        return kept + [self.r + i for i in kept]

    def spatial_map_shape(self) -> tuple[int, int, int, int]:
        """Shape (1, D, H, W) of the FAST-VQA quality map for one clip of ``clip_shape``."""
        cfg = self.fastvqa
        (t, h, w), (pt, ph, pw) = self.clip_shape, cfg.patch_size
        d, h, w = math.ceil(t / pt), math.ceil(h / ph), math.ceil(w / pw)
        for _ in range(len(cfg.depths) - 1):  # patch merging halves H and W (padding odd sizes)
            h, w = math.ceil(h / 2), math.ceil(w / 2)
        return (1, d, h, w)

    def feature_sizes(self) -> tuple[int, int]:
        """(len F_s, len F_f): the widths entering the regression head (0 for an unused branch)."""
        fs = len(self.semantic_rows()) if self.uses_semantic else 0
        ff = math.prod(self.spatial_map_shape()) if self.uses_spatial else 0
        return fs, ff


def resample_time(m_s: torch.Tensor, t0: int) -> torch.Tensor:
    """``[..., rows, T]`` → ``[..., rows, t0]`` by linear interpolation (``align_corners=True``).

    T = t0 returns the input; T = 1 repeats the single frame.
    """
    t = m_s.shape[-1]
    if t == t0:
        return m_s
    if t == 1:
        return m_s.expand(*m_s.shape[:-1], t0).contiguous()
    flat = m_s.reshape(-1, 1, t)
    out = F.interpolate(flat, size=t0, mode="linear", align_corners=True)
    return out.reshape(*m_s.shape[:-1], t0)


class SemanticBranch(nn.Module):
    """Eq. 8: select rows, resample time to ``t0``, then FC1 → GELU → FC2 on every row."""

    rows: torch.Tensor  # a buffer

    def __init__(self, config: ClifVQAConfig) -> None:
        super().__init__()
        self.t0 = config.t0
        self.register_buffer("rows", torch.tensor(config.semantic_rows(), dtype=torch.long), persistent=False)
        self.all_rows = config.prompt_groups == "all"
        self.num_stored_rows = 2 * config.r
        self.fc1 = nn.Linear(config.t0, config.semantic_hidden)
        self.fc2 = nn.Linear(config.semantic_hidden, 1)
        self.gelu = nn.GELU()

    def forward(self, m_s: torch.Tensor) -> torch.Tensor:
        """``M_s`` [B, 2r, T] → ``F_s`` [B, 2r'] (2r' = rows of the selected prompts)."""
        if m_s.ndim != 3 or m_s.shape[1] != self.num_stored_rows:
            raise ValueError(f"semantic input must be [B, {self.num_stored_rows}, T] (2r stored rows), "
                             f"got {list(m_s.shape)}")
        if not self.all_rows:
            m_s = m_s.index_select(1, self.rows)
        with no_autocast(m_s.device.type):  # float32 (see "Precision" in the module docstring)
            x = resample_time(m_s.float(), self.t0)
            return self.fc2(self.gelu(self.fc1(x))).squeeze(-1)


class RegressionHead(nn.Module):
    """Eqs. 12-13: ``concat(F_s, F_f)`` → FC3 → GELU → FC4 → score."""

    def __init__(self, in_features: int, hidden: int) -> None:
        super().__init__()
        self.fc3 = nn.Linear(in_features, hidden)
        self.fc4 = nn.Linear(hidden, 1)
        self.gelu = nn.GELU()

    def forward(self, f_v: torch.Tensor) -> torch.Tensor:
        with no_autocast(f_v.device.type):  # float32 (see "Precision" in the module docstring)
            return self.fc4(self.gelu(self.fc3(f_v.float()))).squeeze(-1)


class ClifVQA(nn.Module):
    """CLiF-VQA. Submodules: ``semantic`` (fc1, fc2), ``fastvqa`` (FAST-VQA: ``fragments_backbone``,
    ``vqa_head``), ``head`` (fc3, fc4); each is None when the configuration does not use it, so
    official FAST-VQA weights load with ``load_fastvqa_checkpoint(model.fastvqa, path)``.
    """

    def __init__(self, config: ClifVQAConfig, checkpoint_grad: bool = False) -> None:
        super().__init__()
        self.config = config
        self.semantic = SemanticBranch(config) if config.uses_semantic else None
        self.fastvqa = build_fastvqa(config.fastvqa, checkpoint_grad) if config.uses_spatial else None
        fs, ff = config.feature_sizes()
        self.head = RegressionHead(fs + ff, config.head_hidden) if config.regression_head else None

    def forward(self, semantic: torch.Tensor | None = None, fragments: torch.Tensor | None = None) -> torch.Tensor:
        """Scores ``[B]`` of B videos (see the module docstring for the inputs)."""
        return self.clip_scores(semantic, fragments).mean(dim=1)

    def clip_scores(self, semantic: torch.Tensor | None = None, fragments: torch.Tensor | None = None) -> torch.Tensor:
        """Scores ``[B, k]`` of every clip (k = 1 for the semantic-only model)."""
        f_s = self._semantic_branch(semantic)
        if self.fastvqa is None:
            assert f_s is not None  # ClifVQAConfig: a model without FAST-VQA has the semantic branch
            score = self.head(f_s) if self.head is not None else f_s.mean(dim=1)
            return score[:, None]
        if fragments is None or fragments.ndim != 6:
            got = None if fragments is None else list(fragments.shape)
            raise ValueError(f"fragments must be [B, k, 3, T, H, W], got {got}")
        b, k = fragments.shape[:2]
        if tuple(fragments.shape[3:]) != self.config.clip_shape:
            raise ValueError(f"fragment clips are {tuple(fragments.shape[3:])}, the model was built for "
                             f"clip_shape {self.config.clip_shape}")
        qmap = self.fastvqa(fragments.flatten(0, 1))  # [B*k, 1, D, H, W]
        if self.head is None:
            score = qmap.flatten(1).mean(dim=1).view(b, k)
            return score if f_s is None else score + f_s.mean(dim=1, keepdim=True)
        f_f = qmap.flatten(1)
        if f_s is not None:
            f_v = torch.cat([f_s.repeat_interleave(k, dim=0), f_f], dim=1)  # both float32
        else:
            f_v = f_f
        return self.head(f_v).view(b, k)

    def _semantic_branch(self, semantic: torch.Tensor | None) -> torch.Tensor | None:
        if self.semantic is None:
            return None
        if semantic is None:
            raise ValueError("this model uses the semantic branch: pass semantic=[B, 2r, T]")
        return self.semantic(semantic)

    def backbone_parameters(self) -> list[nn.Parameter]:
        """Parameters of the Video Swin backbone (trained at the smaller backbone learning rate)."""
        return list(self.fastvqa.fragments_backbone.parameters()) if self.fastvqa is not None else []


def tiny_config(r: int, prompt_groups_of: Sequence[str] = (), **overrides) -> ClifVQAConfig:
    """The :data:`TINY_MODEL` on r prompts (``overrides`` set any other field, e.g. ``branches``)."""
    return ClifVQAConfig.of(replace(TINY_MODEL, **overrides), r, prompt_groups_of)


def build_model(config: ClifVQAConfig, checkpoint_grad: bool = False) -> ClifVQA:
    """Build CLiF-VQA for ``config`` (random init; FAST-VQA layers as the official init)."""
    return ClifVQA(config, checkpoint_grad)


def stack_semantic(pooled: Sequence[torch.Tensor], t0: int) -> torch.Tensor:
    """Batch videos of different length: each ``[T_i, 2r]`` stored array → ``[B, 2r, t0]``."""
    return torch.stack([resample_time(p.t().float(), t0) for p in pooled])
