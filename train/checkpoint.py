"""Checkpoints: safetensors for tensors, JSON for everything else; loading never unpickles.

A checkpoint is a directory::

    model.safetensors      the model's state_dict (FAST-VQA keys under ``fastvqa.``)
    meta.json              format, model config, store fingerprint and full store provenance (to
                           compute semantic features of new videos the same way), and what
                           ``extra`` held: ``train`` puts there the run config (``run_config``),
                           the split, the epoch, its metrics and ``initialised_from`` (the
                           clifvqa checkpoint the weights started from: path, sha256 of its
                           weights, part ``all`` or ``spatial``; null without one); it adds to
                           best/ the ``selection`` (which epoch and why) and the
                           ``score_mapping`` (:class:`~clifvqa.train.metrics.ScoreMapping`: raw
                           output -> training MOS scale, fitted on the training videos)
    optimizer.safetensors  (resume state only) AdamW moments, RNG states (``rng.*`` of the
                           process of rank 0, ``rank{k}.rng.*`` of rank k under torchrun)
    train_state.json       (resume state only) optimizer param groups, step, epoch, RNG scalars
                           (``rng``; ``rng_ranks``: those of ranks 1, 2, ...)

A directory is written next to its destination and renamed into place
(:func:`clifvqa._atomic.atomic_dir`), so a save killed at any point leaves the previous
checkpoint or the new one (after :func:`clifvqa._atomic.recover`). Weights holding NaN or inf are never saved or loaded.

In training, :class:`CheckpointSaver` is the only reader and writer of a run's ``best/`` and
``last/``; :func:`check_init` and :func:`init_weights` read another run's checkpoint to start
from (``clifvqa train --init`` / ``--init-spatial``).
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from clifvqa._atomic import atomic_dir, atomic_write_text
from clifvqa._safetensors import load_safetensors
from clifvqa.errors import ClifvqaError
from clifvqa.train.metrics import ScoreMapping
from clifvqa.train.model import ClifVQA, ClifVQAConfig, build_model

if TYPE_CHECKING:
    from clifvqa.train.run_folder import RunFolder

FORMAT = "clifvqa-checkpoint"
FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
META_FILE = "meta.json"
OPTIM_FILE = "optimizer.safetensors"
STATE_FILE = "train_state.json"

RngState = tuple[dict[str, torch.Tensor], dict[str, Any]]
"""One process's RNG states (:func:`capture_rng`): tensors (torch CPU and CUDA, numpy keys) and
JSON-ready scalars (numpy position, Python's state)."""


class CheckpointError(ClifvqaError):
    """A checkpoint directory that cannot be read as asked; the message says which file and why."""


class NonFiniteWeightsError(CheckpointError):
    """Weights holding NaN or inf: a diverged model, never saved and never loaded."""


NonFiniteWeights = NonFiniteWeightsError  # deprecated alias: the former name


def _check_finite(state: Mapping[str, torch.Tensor], where: str) -> None:
    """Refuse ``state`` when any floating-point tensor holds NaN or inf (one pass on CPU copies)."""
    bad = {name: int((~torch.isfinite(v)).sum()) for name, v in state.items() if v.is_floating_point()}
    bad = {name: count for name, count in bad.items() if count}
    if bad:
        total = sum(v.numel() for v in state.values())
        names = ", ".join(list(bad)[:3]) + (", ..." if len(bad) > 3 else "")
        raise NonFiniteWeightsError(
            f"{where}: {sum(bad.values())} of {total} weights are NaN or inf "
            f"(in {len(bad)} tensors: {names}); "
            "the model diverged: retrain (e.g. lower --lr, check the features with clifvqa store verify)"
        )


def save_checkpoint(
    path: str | os.PathLike[str],
    model: ClifVQA,
    config: ClifVQAConfig,
    store_provenance: Mapping[str, Any],
    fingerprint: str,
    extra: Mapping[str, Any] | None = None,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    train_state: Mapping[str, Any] | None = None,
    rng: Sequence[RngState] | None = None,
) -> Path:
    """Write a checkpoint directory at ``path`` (replacing an old one atomically) and return it.

    ``extra`` (JSON-ready: training config, metrics, epoch, fragment settings, ...) is merged
    into ``meta.json``. With ``optimizer`` and ``train_state`` the resume state is saved too:
    AdamW moments and the RNG states of torch (CPU and CUDA), numpy and Python: ``rng``, one
    :func:`capture_rng` per process in rank order (under torchrun, gathered by rank 0), default
    this process's.

    Raises:
        NonFiniteWeightsError: a weight is NaN or inf; nothing is written and an existing checkpoint
            at ``path`` stays as it was.
    """
    path = Path(path)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    _check_finite(state, f"not saving checkpoint {path}")
    with atomic_dir(path) as tmp:
        from safetensors.torch import save_file

        save_file(state, str(tmp / MODEL_FILE), metadata={"format": FORMAT})
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            **dict(extra or {}),
            "model_config": config.to_dict(),
            "store": {"fingerprint": fingerprint, "provenance": dict(store_provenance)},
        }
        _write_json(tmp / META_FILE, meta)
        if optimizer is not None:
            _save_optimizer(tmp, optimizer, train_state or {}, rng or [capture_rng()])
    return path


def read_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``meta.json`` of a checkpoint directory, checked for format and version."""
    path = Path(path)
    meta_path = path / META_FILE
    if not meta_path.is_file():
        raise CheckpointError(f"{path} is not a clifvqa checkpoint (no {META_FILE}); "
                              "pass a checkpoint directory such as runs/NAME/best")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{meta_path}: not valid JSON ({exc})") from exc
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_path}: format is {meta.get('format')!r}, expected {FORMAT!r}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{meta_path}: format_version {meta.get('format_version')!r}; "
                              f"this clifvqa reads {FORMAT_VERSION}")
    return meta


def load_checkpoint(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> tuple[ClifVQA, dict[str, Any]]:
    """Rebuild the model of a checkpoint directory, load its weights (strict) and return it in
    eval mode with its metadata. Weights holding NaN or inf are refused (:class:`NonFiniteWeightsError`)."""
    path = Path(path)
    meta = read_meta(path)
    config = ClifVQAConfig.from_dict(meta["model_config"])
    model = build_model(config)
    weights = path / MODEL_FILE
    if not weights.is_file():
        raise CheckpointError(f"{path}: {MODEL_FILE} is missing")
    state = _load_tensors(weights, "cpu")
    _check_finite(state, str(weights))  # checkpoints saved before saving checked
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{weights} does not fit its model config: missing {result.missing_keys[:5]} "
            f"({len(result.missing_keys)}), unexpected {result.unexpected_keys[:5]} ({len(result.unexpected_keys)})"
        )
    return model.to(device).eval(), meta


def _load_tensors(path: Path, device: str) -> dict[str, torch.Tensor]:
    """A checkpoint's safetensors file; one CheckpointError line when it is not intact safetensors."""
    return load_safetensors(path, device, CheckpointError,
                            "this checkpoint is damaged or was not written by clifvqa; copy it again or retrain")


def update_meta(path: str | os.PathLike[str], fields: Mapping[str, Any]) -> dict[str, Any]:
    """Set ``fields`` in a checkpoint's ``meta.json`` (replaced atomically) and return the new meta."""
    meta = {**read_meta(path), **dict(fields)}
    text = json.dumps(meta, indent=2, sort_keys=True, allow_nan=True) + "\n"
    atomic_write_text(Path(path) / META_FILE, text)
    return meta


def score_mapping_of(meta: Mapping[str, Any]) -> ScoreMapping | None:
    """The checkpoint's map from raw model outputs onto its training MOS scale (``score_mapping``
    in meta.json, written by ``train``), or None for checkpoints saved before it existed."""
    data = meta.get("score_mapping")
    try:
        return ScoreMapping.from_dict(data) if data else None
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"meta.json 'score_mapping' is not readable ({exc}): {data!r}") from exc


def has_training_state(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a checkpoint that can be resumed from."""
    path = Path(path)
    return (path / META_FILE).is_file() and (path / OPTIM_FILE).is_file() and (path / STATE_FILE).is_file()


def load_training_state(
    path: str | os.PathLike[str], optimizer: torch.optim.Optimizer, rank: int = 0
) -> dict[str, Any]:
    """Restore the optimizer and the RNG states that the process of ``rank`` saved with a
    checkpoint; return its train state. A rank with no saved state (the run had fewer
    processes) keeps its RNG states as they are."""
    path = Path(path)
    if not has_training_state(path):
        raise CheckpointError(f"{path} holds no resume state ({OPTIM_FILE} and {STATE_FILE}); it cannot be resumed")
    tensors = _load_tensors(path / OPTIM_FILE, "cpu")
    saved = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
    for idx, scalars in saved["optimizer"]["scalars"].items():
        state.setdefault(int(idx), {}).update(scalars)
    groups = saved["optimizer"]["param_groups"]
    for group in groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    if rank == 0:
        _restore_rng(tensors, saved["rng"])
    elif rank <= len(saved.get("rng_ranks", [])):
        prefix = f"rank{rank}."
        own = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        _restore_rng(own, saved["rng_ranks"][rank - 1])
    return saved["train_state"]


INIT_PARTS = {"all": "every weight", "spatial": "the FAST-VQA branch"}


def _weight_settings(config: ClifVQAConfig, part: str) -> dict[str, Any]:
    """The settings that fix the shapes and meaning of the weights of ``part`` of a model."""
    settings: dict[str, Any] = {"fastvqa": config.fastvqa.to_dict(), "clip_shape": list(config.clip_shape)}
    if part == "all":
        settings.update(r=config.r, prompt_groups_of=list(config.prompt_groups_of), branches=config.branches,
                        prompt_groups=config.prompt_groups, t0=config.t0, semantic_hidden=config.semantic_hidden,
                        head_hidden=config.head_hidden, regression_head=config.regression_head)
    return settings


def check_init(
    path: str | os.PathLike[str], part: str, config: ClifVQAConfig, fingerprint: str | None
) -> dict[str, Any]:
    """Check that the checkpoint at ``path`` can start ``part`` (``all``: every weight;
    ``spatial``: the FAST-VQA branch) of a model of ``config`` trained on a store of
    ``fingerprint``, and return the record of it kept in the new checkpoints' meta.json
    (``initialised_from``: path, sha256 of its weights, part).

    Raises:
        CheckpointError: not a checkpoint; settings that fix the weights differ (named, with both
            values); for ``all``, another store fingerprint (the semantic features would not mean
            the same thing; the FAST-VQA branch alone may come from any store).
    """
    from clifvqa.config_io import diff, format_diff
    from clifvqa.features.sources import sha256_file

    path = Path(path)
    meta = read_meta(path)
    theirs = ClifVQAConfig.from_dict(meta["model_config"])
    what = f"{path} cannot start {INIT_PARTS[part]} of this model"
    if not config.uses_spatial and part == "spatial":
        raise CheckpointError(f"{what}: the model has no FAST-VQA branch (model.branches is semantic)")
    if not theirs.uses_spatial and part == "spatial":
        raise CheckpointError(f"{what}: the checkpoint has no FAST-VQA branch (it was trained with branches semantic)")
    differing = diff(_weight_settings(theirs, part), _weight_settings(config, part))
    if differing:
        raise CheckpointError(f"{what}: settings differ (checkpoint -> this run): {format_diff(differing)}")
    theirs_fp = (meta.get("store") or {}).get("fingerprint") or None
    if part == "all" and config.uses_semantic and theirs_fp != fingerprint:
        raise CheckpointError(
            f"{what}: it was trained on stores of fingerprint {theirs_fp}, this run's are {fingerprint}, so the "
            "semantic features would not mean the same thing; train on stores extracted like the checkpoint's, "
            "or take only its FAST-VQA branch (--init-spatial)"
        )
    weights = path / MODEL_FILE
    if not weights.is_file():
        raise CheckpointError(f"{path}: {MODEL_FILE} is missing")
    return {"path": str(path), "sha256": sha256_file(weights), "part": part}


def init_weights(model: ClifVQA, record: Mapping[str, Any]) -> None:
    """Load the weights a :func:`check_init` record names into ``model`` (every weight, or the
    FAST-VQA branch), strictly; refused when the file changed since it was checked."""
    from clifvqa.features.sources import sha256_file

    weights = Path(record["path"]) / MODEL_FILE
    if sha256_file(weights) != record["sha256"]:
        raise CheckpointError(f"{weights} changed since the run was set up (sha256 differs); start the run again")
    state = _load_tensors(weights, str(next(model.parameters()).device))
    _check_finite(state, str(weights))
    if record["part"] == "spatial":
        state = {k.removeprefix("fastvqa."): v for k, v in state.items() if k.startswith("fastvqa.")}
        assert model.fastvqa is not None  # check_init refused a spatial init of a model without the branch
        model.fastvqa.load_state_dict(state)
    else:
        model.load_state_dict(state)


class CheckpointSaver:
    """The ``best/`` and ``last/`` checkpoints of one training folder (timm's ``CheckpointSaver``):
    the only reader and writer of a run's checkpoint files.

    After each epoch :meth:`save` writes ``last/`` with the resume state and, when the epoch is the
    selection so far, ``best/``; :meth:`resume` brings ``last/`` back into the model, optimizer and
    RNGs; :meth:`load_best` puts the selected weights into the model for the final passes and
    :meth:`finish` adds their results to ``best/meta.json``. A folder that does not write
    (processes of rank > 0 under torchrun) writes nothing here either, and everything is read.

    Args:
        folder: the split's folder (its ``best/`` and ``last/``).
        model: the model trained (its weights are saved and loaded in place).
        store_provenance, fingerprint: of the feature store (empty for the spatial-only model).
        extra: JSON-ready fields of every ``meta.json`` (run config, split name).
    """

    def __init__(self, folder: RunFolder, model: ClifVQA, store_provenance: Mapping[str, Any],
                 fingerprint: str, extra: Mapping[str, Any]) -> None:
        self.best, self.last, self.write = folder.best, folder.last, folder.write
        self.model = model
        self.store = (dict(store_provenance), fingerprint)
        self.extra = dict(extra)

    def resume(self, optimizer: torch.optim.Optimizer, rank: int = 0) -> dict[str, Any] | None:
        """Load ``last/`` (weights, optimizer, this rank's RNG states) and return its train state,
        or None when there is nothing to resume."""
        if not has_training_state(self.last):
            return None
        self._load_weights(self.last)
        return load_training_state(self.last, optimizer, rank=rank)

    def save(self, epoch: int, metrics: Mapping[str, Any], *, improved: bool, optimizer: torch.optim.Optimizer,
             train_state: Mapping[str, Any], rng: Sequence[RngState]) -> None:
        """Checkpoint epoch ``epoch`` (1-based): ``best/`` when ``improved``, then ``last/`` with the
        resume state (a kill before ``last/`` is complete resumes from the previous one)."""
        if not self.write:
            return
        extra = {**self.extra, "epoch": epoch, "metrics": dict(metrics)}
        if improved:
            save_checkpoint(self.best, self.model, self.model.config, *self.store, extra)
        save_checkpoint(self.last, self.model, self.model.config, *self.store, extra, optimizer=optimizer,
                        train_state=train_state, rng=rng)

    def load_best(self) -> None:
        """Put the weights of ``best/`` into the model (on the model's device)."""
        self._load_weights(self.best)

    def finish(self, fields: Mapping[str, Any]) -> None:
        """Add ``fields`` (final metrics, score mapping, selection) to ``best/meta.json``."""
        if self.write:
            update_meta(self.best, fields)

    def _load_weights(self, path: Path) -> None:
        device = next(self.model.parameters()).device
        self.model.load_state_dict(_load_tensors(path / MODEL_FILE, str(device)))


def _save_optimizer(folder: Path, optimizer: torch.optim.Optimizer, train_state: Mapping[str, Any],
                    rng: Sequence[RngState]) -> None:
    from safetensors.torch import save_file

    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, pstate in sd["state"].items():
        for key, value in pstate.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{key}"] = value.detach().to("cpu").contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    for rank, (rng_tensors, _) in enumerate(rng):
        tensors.update({(f"rank{rank}." if rank else "") + k: v for k, v in rng_tensors.items()})
    save_file(tensors, str(folder / OPTIM_FILE), metadata={"format": FORMAT})
    _write_json(
        folder / STATE_FILE,
        {"optimizer": {"param_groups": sd["param_groups"], "scalars": scalars}, "rng": rng[0][1],
         "rng_ranks": [scalars for _, scalars in rng[1:]], "train_state": dict(train_state)},
    )


def capture_rng() -> RngState:
    """This process's RNG states (torch CPU and every visible GPU, numpy, Python)."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.uint32).astype(np.int64))
    version, internal, gauss = random.getstate()
    scalars = {"numpy": [kind, int(pos), int(has_gauss), float(cached)], "python": [version, list(internal), gauss]}
    return tensors, scalars


def _restore_rng(tensors: Mapping[str, torch.Tensor], saved: Mapping[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k.rsplit(".", 1)[1]))
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])
    kind, pos, has_gauss, cached = saved["numpy"]
    np.random.set_state((kind, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = saved["python"]
    random.setstate((version, tuple(internal), gauss))


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, allow_nan=True) + "\n", encoding="utf-8")

