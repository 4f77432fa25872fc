"""Stage two: train CLiF-VQA on cached semantic features + fragments read from the videos.

:func:`run_training` is what ``clifvqa train`` calls: it plans the splits
(:func:`clifvqa.train.data.plan_splits`), checks every video and the stores before anything is
trained, trains one model per split (:func:`train_split`) and writes the run folder
(:class:`~clifvqa.train.run_folder.RunFolder`, which writes every file of it atomically)::

    OUT/run.yaml                 the resolved run config (:class:`~clifvqa.train.config.RunConfig`)
    OUT/run.json                 what follows from it and the data: splits, store, built model, init
                                 (a resumed run must match both)
    OUT/summary.json             per-split results, mean/std/median of SROCC, PLCC, KROCC, RMSE
    OUT/summary.txt              the same as a table
    OUT[/split_XX]/metrics.csv   one row per epoch (also metrics.jsonl)
    OUT[/split_XX]/best/         checkpoint of the epoch selected on validation
    OUT[/split_XX]/last/         checkpoint of the latest epoch + resume state
    OUT[/split_XX]/result.json   best epoch, why it was selected, its validation and test metrics
    OUT[/split_XX]/test_predictions.csv   video, mos, prediction (raw), score (MOS scale)

One epoch (:func:`train_split`'s loop, timm's shape): :func:`train_one_epoch` (the steps,
:func:`train_step` each), :func:`validate` (the scoring loop of ``evaluate``), the metric row
(:meth:`~clifvqa.train.run_folder.RunFolder.append_metrics`), the selection so far, and
:class:`~clifvqa.train.checkpoint.CheckpointSaver`, the only reader and writer of ``best/`` and ``last/``.

Recipe (paper §5.1): AdamW (weight decay 0.05 on every parameter, as FAST-VQA), lr 7.5e-5 for
the Video Swin backbone and 7.5e-4 for everything else, batch 12; per-step schedule: linear
warm-up over ``warmup_epochs`` (step s gets ``(s+1)/warmup``) then cosine decay to 0 at the end;
training steps under autocast on GPU (:func:`amp_dtype`: bf16 where the GPU has it natively, else
fp16 with loss scaling); validation, test and the score mapping in float32 without TF32, exactly
as ``clifvqa evaluate`` scores the saved checkpoint. The model is selected on
the validation videos by SROCC + PLCC (FAST-VQA's criterion), ties broken by the validation
loss, then the later epoch (:func:`select_epoch`), never on the test set; the run says which
epoch and why (:func:`explain_selection`) and warns when fewer than ``MIN_VAL_VIDEOS``
validation videos cannot rank epochs. Test metrics are computed once, for the selected epoch,
and best/ gets the map from raw outputs onto the training MOS scale (``score_mapping``, fitted on
the training videos) that ``predict`` reports as ``score``.

A NaN or inf training loss stops the run (:class:`NonFiniteLossError`, naming the batch's videos)
before the epoch is saved; checkpoints never hold non-finite weights.

Resume (``resume=True``): model, AdamW moments, step, epoch, best-so-far and the RNG states come
back from ``last/`` (under torchrun each process's own RNG states); training data order and
fragment draws are functions of (seed, epoch, item), so a resumed run ends where an
uninterrupted one would. A run killed at any point, a checkpoint save included, resumes from its
last complete epoch (:meth:`~clifvqa.train.run_folder.RunFolder.recover`).

Several GPUs / machines: run the same command under ``torchrun``; the trainer then uses
DistributedDataParallel (nccl on GPU, gloo on CPU) with a DistributedSampler, evaluates a shard
per process, and only rank 0 writes files. ``batch_size`` is per process. Every process starts
from the same weights, then draws its own dropout masks (:func:`rank_seed`); each takes the GPU
of its LOCAL_RANK (``--device cuda:N`` is refused there).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler

from clifvqa._device import default_workers
from clifvqa.config_io import ConfigError, diff, format_diff
from clifvqa.errors import ClifvqaError
from clifvqa.train import checkpoint as ckpt
from clifvqa.train.config import RESUMABLE_CHANGES, InitConfig, OptimConfig, RunConfig
from clifvqa.train.data import (
    DataError,
    SemanticFeatures,
    SplitPlan,
    VideoDataset,
    VideoItem,
    check_video_files,
    listing,
    load_semantic_features,
    plan_splits,
    video_loader,
)
from clifvqa.train.distributed import Dist, rank_seed, setup_dist
from clifvqa.train.inference import predict_items, progress_bar, to_device
from clifvqa.train.loss import clifvqa_loss
from clifvqa.train.metrics import METRIC_KEYS, compute_metrics, fit_score_mapping, format_table, summarize
from clifvqa.train.model import ClifVQA, ClifVQAConfig, ModelConfig, build_model
from clifvqa.train.run_folder import RunFolder

log = logging.getLogger("clifvqa.train")


class NonFiniteLossError(ClifvqaError):
    """The training loss became NaN or inf: training stops before anything of it is saved."""


NonFiniteLoss = NonFiniteLossError  # deprecated alias: the former name


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Learning-rate multiplier of optimizer step ``step`` (0-based): linear warm-up, then cosine."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def amp_dtype(config: OptimConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of training steps, None for float32 (``amp`` off, or not a GPU).

    bfloat16 where the GPU computes it natively (Ampere and later), else float16 with loss
    scaling. Pre-Ampere GPUs report bfloat16 support through (slow) emulation, which must not
    count.
    """
    if not (config.amp and device.type == "cuda"):
        return None
    try:
        native = torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # an older torch without the argument
        native = torch.cuda.is_bf16_supported()
    return torch.bfloat16 if native else torch.float16


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def train_step(
    net: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    batch: Mapping[str, Any],
    *,
    config: RunConfig,
    model_config: ClifVQAConfig,
    device: torch.device,
    dtype: torch.dtype | None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One optimizer step on a collated ``batch``, as ``train`` runs it: forward under autocast
    in ``dtype`` (:func:`amp_dtype`), the loss in float32 (``loss_fn``, default Eq. 16 with the
    config's alpha and beta), backward through ``scaler``, optional clipping, the AdamW step.

    A batch without videos (all failed to decode) makes a zero-weight pass, so that under DDP
    this process still takes part in the gradient all-reduce. Returns the loss (not read back
    from the device) and the predictions (None for such a batch).
    """
    with _autocast(device, dtype):
        if batch["keys"]:
            pred = net(to_device(batch["semantic"], device), to_device(batch["fragments"], device))
            target = batch["mos"].to(device)
            pred32 = pred.float()
            if loss_fn is None:
                loss = clifvqa_loss(pred32, target, config.loss.alpha, config.loss.beta)
            else:
                loss = loss_fn(pred32, target)
        else:
            pred = None
            loss = net(*_dummy_inputs(model_config, device)).sum() * 0.0
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if config.optim.grad_clip is not None:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(net.parameters(), config.optim.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return loss, pred


# ------------------------------------------------------------------------------ one split


@dataclass
class SplitResult:
    """Outcome of one split: the selected epoch, its validation metrics and the test metrics."""

    name: str
    best_epoch: int
    val: dict[str, Any]
    test: dict[str, Any] | None
    epochs_done: int
    finished: bool
    selection: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Fewer validation videos than this cannot rank epochs. SROCC over n videos takes few distinct
# values (n = 2: only +-1; n <= 5: swapping one adjacent pair moves it by 12 / (n(n^2-1)) >= 0.1),
# and its sampling error is large: Fisher z has SE ~ 1.03 / sqrt(n - 3), so at n = 9 a true
# SROCC of 0.8 is measured anywhere in 0.27-0.96 (95%), wider than the gaps between epochs.
MIN_VAL_VIDEOS = 10
_TIE_DECIMALS = 9  # SROCC + PLCC equal to 1e-9 is a tie (n = 2 gives PLCC 1.0 or 0.9999999999999998)
# Validation losses within this share of the lowest tied loss count as equal: on the few videos
# where correlations tie, smaller differences are noise (the 32-clip case: 4.020 vs 4.034).
LOSS_TIE = 0.01


def _val_score(row: Mapping[str, Any]) -> float:
    score = float(row.get("val_srocc", math.nan)) + float(row.get("val_plcc", math.nan))
    return round(score, _TIE_DECIMALS) if math.isfinite(score) else -math.inf


def _val_loss(row: Mapping[str, Any]) -> float:
    loss = float(row.get("val_loss", math.nan))
    return loss if math.isfinite(loss) else math.inf


def _selection(history: Sequence[Mapping[str, Any]]) -> tuple[int, list[int], list[int]]:
    """(selected epoch, epochs tied on SROCC + PLCC, those of them within LOSS_TIE of the lowest loss)."""
    top = max(_val_score(r) for r in history)
    tied = [r for r in history if _val_score(r) == top]
    low = min(_val_loss(r) for r in tied)
    close = sorted(int(r["epoch"]) for r in tied if _val_loss(r) <= low * (1 + LOSS_TIE))
    return close[-1], sorted(int(r["epoch"]) for r in tied), close


def select_epoch(history: Sequence[Mapping[str, Any]]) -> int:
    """The epoch (1-based) model selection keeps, from the per-epoch metric rows (``epoch``,
    ``val_srocc``, ``val_plcc``, ``val_loss``): the best validation SROCC + PLCC (FAST-VQA's
    criterion); among epochs tied on it, the lowest validation loss (Eq. 16 over all validation
    videos: it still measures how far predictions are from the MOS when the correlations all say
    1.0); among losses within ``LOSS_TIE`` of the lowest, the latest epoch (more training; the last
    epoch when validation says nothing). The selection after each epoch is either unchanged or the
    new epoch, so the best checkpoint can be saved as training goes."""
    return _selection(history)[0]


def small_validation_warning(n_val: int, n_train: int) -> str | None:
    """The warning for a validation set too small to rank epochs (None when it is large enough)."""
    if n_val >= MIN_VAL_VIDEOS or n_val == 0:
        return None
    fraction = math.ceil(100 * MIN_VAL_VIDEOS / (n_val + n_train)) / 100
    carve = f" or, without them, --val-fraction {fraction:.2f}" if fraction <= 0.5 else ""
    return (
        f"only {n_val} validation video{'s' if n_val != 1 else ''}: too few to rank epochs (SROCC over "
        f"fewer than {MIN_VAL_VIDEOS} videos takes few distinct values and is noisy by +-0.3 or more), "
        f"so the selected epoch is close to arbitrary; give at least {MIN_VAL_VIDEOS} validation videos "
        f"('val' rows in the manifest{carve}), or pass --val-fraction 0 to train a fixed number of epochs "
        "and keep the last"
    )


def explain_selection(
    history: Sequence[Mapping[str, Any]], epochs: int, warning: str | None
) -> dict[str, Any]:
    """Which epoch :func:`select_epoch` keeps and why, as recorded in result.json and the summary."""
    best_epoch, tied, close = _selection(history)
    best = next(r for r in history if int(r["epoch"]) == best_epoch)
    n = int(v) if (v := best.get("val_n")) and not math.isnan(v) else 0  # NaN in history rows without validation
    score = _val_score(best)
    if n == 0:
        why = "no validation videos, so the last epoch"
    elif score == -math.inf:
        why = f"validation SROCC/PLCC undefined on {n} video{'s' if n != 1 else ''}"
    else:
        why = f"best val SROCC+PLCC {score:.3f} (SROCC {best['val_srocc']:.3f}, PLCC {best['val_plcc']:.3f})"
    if n and len(tied) > 1:
        others = f"{len(tied) - 1} other epoch{'s' * (len(tied) > 2)}"
        why += f", {'tied with' if score != -math.inf else 'as in'} {others}"
        if len(close) == 1:
            why += f"; the lowest validation loss ({_val_loss(best):.4g}) broke the tie"
        elif _val_loss(best) == math.inf:
            why += "; no validation loss either, so the latest of them"
        else:
            near = ", ".join(map(str, close))
            why += f"; validation loss within {LOSS_TIE:.0%} of the lowest in epochs {near}, so the latest"
    return {
        "epoch": best_epoch,
        "of": epochs,
        "val_videos": n,
        "tied_epochs": tied if n else [],
        "reason": f"epoch {best_epoch} of {epochs}: {why}",
        "warning": warning,
    }


def _param_groups(model: ClifVQA, config: OptimConfig) -> list[dict[str, Any]]:
    backbone = {id(p) for p in model.backbone_parameters()}
    groups = [{"params": [p for p in model.parameters() if id(p) not in backbone], "lr": config.lr,
               "base_lr": config.lr, "name": "head"}]
    if backbone:
        groups.append({"params": model.backbone_parameters(), "lr": config.backbone_lr,
                       "base_lr": config.backbone_lr, "name": "backbone"})
    return groups


def _init_weights(model: ClifVQA, init: InitConfig, initialised_from: Mapping[str, Any] | None) -> None:
    """Start from the official files of ``init`` and/or the clifvqa checkpoint ``initialised_from``
    (a :func:`~clifvqa.train.checkpoint.check_init` record)."""
    from clifvqa.train.fastvqa import CheckpointMismatchError, load_fastvqa_checkpoint

    if initialised_from is not None:
        ckpt.init_weights(model, initialised_from)
        log.info("initialised %s from %s", ckpt.INIT_PARTS[initialised_from["part"]], initialised_from["path"])

    for path, want in ((init.fastvqa, ("official", "backbone-prefixed")), (init.swin_k400, ("kinetics400",))):
        if path is None:
            continue
        if model.fastvqa is None:
            raise ConfigError(f"{path}: a FAST-VQA / Video Swin init needs the spatial branch "
                              "(branches=both or spatial)")
        report = load_fastvqa_checkpoint(model.fastvqa, path)
        if report.layout not in want:
            raise CheckpointMismatchError(f"{path} is a {report.layout} checkpoint, expected {' or '.join(want)} here")
        log.info("initialised FAST-VQA from %s (%s layout, %d tensors)", path, report.layout, report.loaded)


class TrainLoader:
    """The training videos of a split, in an order and with fragment draws that are functions of
    (seed, epoch, item): a resumed run sees the epochs an uninterrupted one would."""

    def __init__(self, plan: SplitPlan, config: RunConfig, model_config: ClifVQAConfig,
                 features: SemanticFeatures | None, *, seed: int, dist: Dist, device: torch.device) -> None:
        fragments = model_config.fragments if model_config.uses_spatial else None
        rows = features.rows if features is not None else None
        self.seed = seed
        assert config.data.videos is not None  # train_run refuses a config without it
        self.dataset = VideoDataset(plan.train, config.data.videos, rows, fragments, train=True, seed=seed)
        self.sampler: DistributedSampler[int] = DistributedSampler(
            self.dataset, num_replicas=dist.world, rank=dist.rank, shuffle=True, seed=seed)
        self.generator = torch.Generator()
        self.loader = video_loader(self.dataset, workers=resolve_workers(config), batch_size=config.optim.batch_size,
                                   sampler=self.sampler, generator=self.generator, pin_memory=device.type == "cuda")

    def __len__(self) -> int:
        return len(self.loader)

    def epoch(self, epoch: int) -> DataLoader:
        """The loader of epoch ``epoch`` (0-based)."""
        self.sampler.set_epoch(epoch)
        self.dataset.set_epoch(epoch)
        self.generator.manual_seed(self.seed * 1_000_003 + epoch)
        return self.loader


def train_one_epoch(
    net: torch.nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    step: int,
    schedule: tuple[int, int],
    *,
    config: RunConfig,
    model_config: ClifVQAConfig,
    device: torch.device,
    dtype: torch.dtype | None,
    dist: Dist,
    desc: str,
    progress: bool = True,
) -> tuple[dict[str, Any], int]:
    """One pass over ``loader``: per step, the learning rate of step ``step`` (``schedule`` =
    (warm-up steps, total steps), :func:`lr_factor`) and :func:`train_step`. Videos that fail to
    decode are skipped with a warning; a non-finite loss raises :class:`NonFiniteLossError` naming the
    batch. Returns the epoch's ``train_loss``, ``train_videos`` and ``skipped_videos`` (summed
    over processes) and the next step."""
    net.train()
    loss_sum, loss_n, skipped = 0.0, 0, 0
    bar = progress_bar(loader, desc, progress and dist.main)
    for batch in bar:
        for key, error in batch["failed"]:
            log.warning("warning: %s: video %s could not be decoded and is skipped this epoch: %s", desc, key, error)
        skipped += len(batch["failed"])
        factor = lr_factor(step, *schedule)
        step += 1
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        if not batch["keys"] and not dist.enabled:
            continue
        loss, pred = train_step(net, optimizer, scaler, batch, config=config, model_config=model_config,
                                device=device, dtype=dtype)
        if batch["keys"]:
            value = loss.item()  # the one sync per step there always was (logging needs it)
            if not math.isfinite(value):
                assert pred is not None  # a batch with videos has predictions
                raise NonFiniteLossError(_nonfinite_loss_message(value, batch, pred, f"{desc} step {step}"))
            loss_sum += value * len(batch["keys"])
            loss_n += len(batch["keys"])
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{value:.4f}")
    if dist.enabled:
        totals = torch.tensor([loss_sum, loss_n, skipped], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(totals)
        loss_sum, loss_n, skipped = totals[0].item(), int(totals[1].item()), int(totals[2].item())
    if skipped:
        log.warning("warning: %s: %d videos could not be decoded and were skipped", desc, skipped)
    stats = {"train_loss": loss_sum / loss_n if loss_n else math.nan, "train_videos": loss_n, "skipped_videos": skipped}
    return stats, step


def validate(
    model: ClifVQA,
    items: Sequence[VideoItem],
    config: RunConfig,
    semantic_rows: Mapping[str, torch.Tensor] | None,
    *,
    seed: int,
    device: torch.device,
    dist: Dist = Dist(),
    desc: str = "validation",
    progress: bool = True,
) -> tuple[dict[str, Any], tuple[list[str], list[float], list[float]]]:
    """Score ``items`` as ``clifvqa evaluate`` does (:func:`~clifvqa.train.inference.predict_items`)
    and return their metrics, with the loss of Eq. 16 over the whole set (a tie-break of
    :func:`select_epoch`) and the count of videos skipped, and the (keys, predictions, MOS)."""
    fragments = model.config.fragments if model.config.uses_spatial else None
    # about as many clips per pass as a training step holds
    batch_size = max(1, config.optim.batch_size // (fragments.num_clips_test if fragments else 1))
    assert config.data.videos is not None  # train_run refuses a config without it
    keys, preds, mos, failed = predict_items(
        model, items, config.data.videos, semantic_rows, fragments, device=device, batch_size=batch_size,
        workers=resolve_workers(config), seed=seed, dist=dist, progress=progress, desc=desc,
    )
    metrics: dict[str, Any] = compute_metrics(preds, mos) if keys else {"n": 0}
    if keys:
        loss = clifvqa_loss(torch.tensor(preds), torch.tensor(mos), config.loss.alpha, config.loss.beta)
        metrics["loss"] = float(loss)
    metrics["skipped"] = len(failed)
    return metrics, (keys, preds, mos)


def train_split(
    plan: SplitPlan,
    model_config: ClifVQAConfig,
    config: RunConfig,
    features: SemanticFeatures | None,
    out: str | os.PathLike[str],
    *,
    split_index: int = 0,
    initialised_from: Mapping[str, Any] | None = None,
    resume: bool = False,
    stop_after: int | None = None,
    progress: bool = True,
    dist: Dist = Dist(),
    device: torch.device = torch.device("cpu"),
) -> SplitResult:
    """Train one model on ``plan`` and write its folder ``out`` (see the module docstring).

    ``initialised_from``: the checked clifvqa checkpoint the weights start from
    (:func:`~clifvqa.train.checkpoint.check_init`), recorded in every checkpoint's meta.json.
    ``stop_after`` ends this call after that many epochs of the split have been done (as if the
    job were interrupted; resume it later with ``resume=True``).
    """
    folder = RunFolder(out, write=dist.main)
    folder.recover()
    dist.barrier()  # rank 0 has recovered the folder before the others read it
    finished = folder.read_result() if resume else None
    if finished is not None:
        log.info("%s: already finished (best epoch %d), skipped", plan.name, finished["best_epoch"])
        return SplitResult(**finished)
    seed = config.seed + split_index
    model, optimizer, scaler, dtype = _build_training(model_config, config, seed, dist, device)
    store = (features.provenance, features.fingerprint) if features is not None else ({}, "")
    extra = {"run_config": config.to_dict(), "split": plan.name, "initialised_from": initialised_from}
    saver = ckpt.CheckpointSaver(folder, model, *store, extra)
    done = _Progress.resume(saver, folder, optimizer, scaler, seed, dist) if resume else None
    if done is None:
        _init_weights(model, config.init, initialised_from)
        folder.clear_metrics()
        done = _Progress()
    else:
        log.info("%s: resumed after epoch %d", plan.name, done.epochs)

    net = _distributed(model, dist, device)
    loader = TrainLoader(plan, config, model_config, features, seed=seed, dist=dist, device=device)
    schedule = (round(config.optim.warmup_epochs * len(loader)), config.optim.epochs * len(loader))
    rows = features.rows if features is not None else None
    epochs = config.optim.epochs
    for epoch in range(done.epochs, epochs if stop_after is None else min(epochs, stop_after)):
        t_start = time.time()
        train, done.step = train_one_epoch(net, loader.epoch(epoch), optimizer, scaler, done.step, schedule,
                                           config=config, model_config=model_config, device=device, dtype=dtype,
                                           dist=dist, desc=f"{plan.name} epoch {epoch + 1}/{epochs}",
                                           progress=progress)
        val = validate(model, plan.val, config, rows, seed=seed, device=device, dist=dist,
                       desc=f"{plan.name} validation", progress=progress)[0] if plan.val else {}
        row = _epoch_row(epoch, train, val, optimizer)
        done.history.append(row)
        improved = row["selected"] = select_epoch(done.history) == epoch + 1  # the selection so far
        if improved:
            done.best_epoch, done.best_val = epoch, val
        log.info("%s epoch %d: loss %.4f, val SROCC %.4f PLCC %.4f loss %.4f%s", plan.name, epoch + 1,
                 row["train_loss"], row["val_srocc"], row["val_plcc"], row["val_loss"],
                 " (selected so far)" if improved else "")
        rng = _gather_rng(dist)
        row["seconds"] = round(time.time() - t_start, 3)
        folder.append_metrics(row)
        done.epochs = epoch + 1
        saver.save(epoch + 1, {"val": val}, improved=improved, optimizer=optimizer,
                   train_state=done.train_state(scaler, dist), rng=rng)
        dist.barrier()

    warning = small_validation_warning(len(plan.val), len(plan.train))
    selection = explain_selection(done.history, epochs, warning) if done.history else None
    if done.epochs < epochs:
        return SplitResult(plan.name, done.best_epoch + 1, done.best_val, None, done.epochs, False, selection)
    saver.load_best()
    train_metrics, score_mapping, test_metrics = _score_selected(model, plan, config, rows, folder, seed=seed,
                                                                 device=device, dist=dist, progress=progress)
    result = SplitResult(plan.name, done.best_epoch + 1, done.best_val, test_metrics, done.epochs, True, selection)
    saver.finish({"metrics": {"val": done.best_val, "test": test_metrics, "train": train_metrics},
                  "score_mapping": score_mapping, "selection": selection})
    folder.write_result(result.to_dict())
    dist.barrier()
    return result


@dataclass
class _Progress:
    """Where a split's training stands (saved in ``last/`` as the train state)."""

    epochs: int = 0  # epochs done
    step: int = 0  # optimizer steps taken
    best_epoch: int = -1  # the selection so far (0-based; -1: none)
    best_val: dict[str, Any] = field(default_factory=dict)  # its validation metrics
    history: list[dict[str, Any]] = field(default_factory=list)  # the metric rows of the epochs done

    def train_state(self, scaler: torch.amp.GradScaler, dist: Dist) -> dict[str, Any]:
        return {"epoch": self.epochs - 1, "step": self.step, "best_epoch": self.best_epoch, "best_val": self.best_val,
                "scaler": scaler.state_dict() if scaler.is_enabled() else None, "processes": dist.world}

    @classmethod
    def resume(cls, saver: ckpt.CheckpointSaver, folder: RunFolder, optimizer: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler, seed: int, dist: Dist) -> _Progress | None:
        """Bring back the state of ``last/`` (model, optimizer, RNGs, scaler) and drop metric rows
        written after it; None when there is nothing to resume."""
        state = saver.resume(optimizer, rank=dist.rank)
        if state is None:
            return None
        epochs = state["epoch"] + 1
        if dist.rank >= state.get("processes", 1):  # the interrupted run had fewer processes
            torch.manual_seed(rank_seed(seed, dist.rank) + epochs)
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        history = folder.resume_metrics(epochs)
        dist.barrier()  # rank 0 has rewritten the metrics before the others go on
        return cls(epochs, state["step"], state["best_epoch"], state["best_val"], history)


def _build_training(
    model_config: ClifVQAConfig, config: RunConfig, seed: int, dist: Dist, device: torch.device
) -> tuple[ClifVQA, torch.optim.Optimizer, torch.amp.GradScaler, torch.dtype | None]:
    """The model (the same initial weights in every process), AdamW, the loss scaler and the
    autocast dtype of a split."""
    torch.manual_seed(seed)
    model = build_model(model_config, checkpoint_grad=config.optim.grad_checkpoint).to(device)
    if dist.rank:  # its own dropout and drop-path draws (rank 0 goes on as a single process does)
        torch.manual_seed(rank_seed(seed, dist.rank))
    optimizer = torch.optim.AdamW(_param_groups(model, config.optim), lr=config.optim.lr,
                                  weight_decay=config.optim.weight_decay)
    dtype = amp_dtype(config.optim, device)
    return model, optimizer, torch.amp.GradScaler("cuda", enabled=dtype == torch.float16), dtype


def _epoch_row(epoch: int, train: Mapping[str, Any], val: Mapping[str, Any],
               optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The metric row of epoch ``epoch`` (0-based); ``selected`` and ``seconds`` are set after."""
    groups = optimizer.param_groups
    return {"epoch": epoch + 1, "train_loss": train["train_loss"], "lr": groups[0]["lr"],
            "backbone_lr": groups[1]["lr"] if len(groups) > 1 else math.nan,
            "train_videos": train["train_videos"], "skipped_videos": train["skipped_videos"],
            **{f"val_{k}": val.get(k, math.nan) for k in ("n",) + METRIC_KEYS + ("loss",)},
            "selected": False, "seconds": 0.0}


def _distributed(model: ClifVQA, dist: Dist, device: torch.device) -> torch.nn.Module:
    """``model`` under DistributedDataParallel when the run has several processes, else itself."""
    if not dist.enabled:
        return model
    # No buffer changes in training (the Swin relative_position_index tables and the semantic
    # row indices are constants; there is no BatchNorm), so none is broadcast at every step.
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False)


def _gather_rng(dist: Dist) -> list[ckpt.RngState]:
    """The RNG states of every process in rank order (each resumes its own), on every process."""
    if not dist.enabled:
        return [ckpt.capture_rng()]
    rng: list[Any] = [None] * dist.world
    torch.distributed.all_gather_object(rng, ckpt.capture_rng())
    return rng


def _score_selected(
    model: ClifVQA, plan: SplitPlan, config: RunConfig, rows: Mapping[str, torch.Tensor] | None, folder: RunFolder, *,
    seed: int, device: torch.device, dist: Dist, progress: bool,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None]:
    """The selected model's passes after training: its raw outputs on the training videos fix the
    map onto the MOS scale that predict reports as ``score``; the test set is scored once (never
    used for selection), its predictions written to ``test_predictions.csv``. Returns the
    training metrics, the score mapping and the test metrics (None without test videos)."""
    def score(items: Sequence[VideoItem], what: str) -> tuple[dict[str, Any], tuple[list, list, list]]:
        return validate(model, items, config, rows, seed=seed, device=device, dist=dist, progress=progress,
                        desc=f"{plan.name} {what}")

    train_metrics, (_, train_preds, train_mos) = score(plan.train, "score mapping (training videos)")
    mapping = fit_score_mapping(train_preds, train_mos, bounded=True)
    score_mapping = {
        **mapping.to_dict(),
        "fitted_on": f"the {mapping.n} training videos of split {plan.name}",
        "raw_range": [min(train_preds), max(train_preds)] if train_preds else None,
    }
    if not plan.test:
        return train_metrics, score_mapping, None
    test_metrics, (keys, preds, mos) = score(plan.test, "test")
    folder.write_test_predictions(list(zip(keys, mos, preds, mapping.apply(preds).tolist())))
    return train_metrics, score_mapping, test_metrics


def _nonfinite_loss_message(value: float, batch: Mapping[str, Any], pred: torch.Tensor, where: str) -> str:
    """Name the batch, and the videos whose prediction or semantic input is not finite (this path
    only runs once, so the extra device reads cost nothing)."""
    keys = batch["keys"]
    outputs = pred.detach().float().cpu().reshape(-1).tolist()
    semantic = batch["semantic"]
    bad_in = [k for i, k in enumerate(keys) if semantic is not None and not torch.isfinite(semantic[i]).all()]
    bad_out = [k for k, v in zip(keys, outputs) if not math.isfinite(v)]
    detail = ""
    if bad_in:
        detail = f"; non-finite semantic features in {listing(bad_in, 5)} (check the store: store verify)"
    elif bad_out:
        detail = f"; non-finite model output for {listing(bad_out, 5)}"
    else:
        detail = "; the model diverged (try a lower --lr or --grad-clip)"
    return (
        f"{where}: the training loss is {value} on the batch "
        f"{listing(keys, 5)}{detail}; training stopped, no checkpoint of this epoch was saved"
    )


def _dummy_inputs(config: ClifVQAConfig, device: torch.device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    semantic = torch.zeros(1, 2 * config.r, config.t0, device=device) if config.uses_semantic else None
    fragments = torch.zeros(1, 1, 3, *config.clip_shape, device=device) if config.uses_spatial else None
    return semantic, fragments


# ------------------------------------------------------------------------------ a whole run


def build_model_config(features: SemanticFeatures | None, model: ModelConfig) -> ClifVQAConfig:
    """The model of a run: the settings ``model`` on the prompts of the store (r and their groups)."""
    if features is None:  # the spatial-only model: r is unused
        return ClifVQAConfig.of(model, 1)
    return ClifVQAConfig.of(model, features.r, features.groups)


def resolve_workers(config: RunConfig) -> int:
    """DataLoader workers of a run: ``config.workers``, or :func:`~clifvqa._device.default_workers` when unset."""
    return default_workers("processes") if config.workers is None else config.workers


def run_training(
    config: RunConfig,
    out: str | os.PathLike[str],
    *,
    resume: bool = False,
    stop_after: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train CLiF-VQA as ``clifvqa train`` does and return the summary (also in ``OUT/summary.json``).

    Everything is checked before the first step: the splits, the video files, the stores
    (completeness, one fingerprint matching their provenance, r, every row's checks, and that
    each entry is still its video file's: stale entries are refused unless
    ``config.data.allow_stale``) and, with ``resume``, that the config equals the interrupted
    run's (``run.yaml``; only :data:`~clifvqa.train.config.RESUMABLE_CHANGES` may differ). An
    existing ``out`` with a run in it is refused unless ``resume``. ``stop_after`` ends the call
    after that many epochs of a split (as if interrupted; continue with ``resume=True``).
    """
    out = Path(out)
    data = config.data
    if data.manifest is None or data.videos is None:
        raise DataError("the run config names no data.manifest or data.videos (--manifest, --videos)")
    dist, device, started = setup_dist(config.device)
    try:
        plans = plan_splits(data.manifest, val_fraction=data.val_fraction, splits=data.splits,
                            test_fraction=data.test_fraction, test_manifest=data.test_manifest, seed=config.seed)
        keys = list(dict.fromkeys(k for plan in plans for k in plan.keys()))
        if config.model.uses_spatial:
            check_video_files(keys, data.videos)
        features = None
        if config.model.uses_semantic or data.stores:
            # rows are resampled to t0 once, at load
            features = load_semantic_features(data.stores, keys, config.model.t0, video_root=data.videos,
                                              allow_stale=data.allow_stale, progress=progress and dist.main)
        model_config = build_model_config(features, config.model)
        initialised_from = None
        if config.init.checkpoint or config.init.spatial:
            part = "all" if config.init.checkpoint else "spatial"
            init = config.init.checkpoint or config.init.spatial
            assert init is not None  # one of them, tested above
            initialised_from = ckpt.check_init(init, part, model_config,
                                               features.fingerprint if features else None)
        derived = {
            "model_config": model_config.to_dict(),
            "initialised_from": initialised_from,
            "plans": [p.to_dict() for p in plans],
            "store": {"fingerprint": features.fingerprint if features else None,
                      "paths": features.stores if features else []},
        }
        folder = RunFolder(out, write=dist.main)
        folder.recover()
        dist.barrier()  # rank 0 has recovered the folder before the others read it
        _check_run_dir(folder, config, derived, resume)
        dist.barrier()  # every process has checked before rank 0 writes run.yaml
        folder.write_config(config, derived)
        dist.barrier()
        if not plans[0].val:
            log.warning("warning: no validation videos (val_fraction=%s): the last epoch is selected",
                        data.val_fraction)
        small = min(plans, key=lambda p: len(p.val))
        warning = small_validation_warning(len(small.val), len(small.train))
        if warning:
            log.warning("warning: %s", warning)
        results = []
        for i, plan in enumerate(plans):
            results.append(train_split(plan, model_config, config, features,
                                       folder.split(plan.name, alone=len(plans) == 1).path, split_index=i,
                                       initialised_from=initialised_from, resume=resume, stop_after=stop_after,
                                       progress=progress, dist=dist, device=device))
            if not results[-1].finished:
                break
        return _summarize_run(results, folder, len(plans))
    finally:
        if started:
            torch.distributed.destroy_process_group()


def _check_run_dir(folder: RunFolder, config: RunConfig, derived: Mapping[str, Any], resume: bool) -> None:
    """Refuse a folder holding another run (without ``resume``), or a resume whose config or derived
    facts (splits, store, built model) differ from the interrupted run's, naming the fields."""
    out, previous = folder.path, folder.path / RunFolder.CONFIG
    old = folder.read_config()
    if old is None:
        if resume and (out / RunFolder.DERIVED).exists():
            raise DataError(f"{out} holds a run of an older clifvqa ({RunFolder.DERIVED}, no {RunFolder.CONFIG}): "
                            "this version cannot resume it; train into a new --out")
        if out.exists() and any(out.iterdir()) and not resume:
            raise DataError(f"{out} exists and is not empty: choose a new --out (nothing there is overwritten)")
        return
    if not resume:
        raise DataError(f"{out} already holds a run: pass --resume to continue it, or choose a new --out")
    changed = {k: v for k, v in diff(old, config).items() if k not in RESUMABLE_CHANGES}
    if changed:
        raise DataError(f"{out}: --resume with a config that differs from the interrupted run's ({previous}) in "
                        f"{format_diff(changed)}; use the same settings or a new --out")
    saved = folder.read_derived()
    if saved is None:  # killed between writing run.yaml and run.json, before training began
        return
    differing = sorted(k for k in set(saved) | set(derived) if saved.get(k) != json.loads(json.dumps(derived.get(k))))
    if differing:
        raise DataError(f"{out}: --resume where the {', '.join(differing)} differ from the interrupted run's "
                        f"(see {out / RunFolder.DERIVED}: the manifest or stores changed); use a new --out")


def _summarize_run(results: list[SplitResult], folder: RunFolder, num_plans: int) -> dict[str, Any]:
    on = "test" if all(r.test is not None for r in results) and results else "val"
    rows = [(r.name, (r.test if on == "test" else r.val) or {}) for r in results]
    summary_stats = summarize([m for _, m in rows])
    summary = {
        "metrics_on": on,
        "splits": [r.to_dict() for r in results],
        "summary": summary_stats,
        "finished": len(results) == num_plans and all(r.finished for r in results),
        "out": str(folder.path),
    }
    table = format_table(rows, summary_stats if len(rows) > 1 else None)
    chosen = [f"{r.name}: {r.selection['reason']}" for r in results if r.selection]
    warned = dict.fromkeys(f"warning: {r.selection['warning']}" for r in results
                           if r.selection and r.selection["warning"])
    lines = [f"{on} metrics (selected epoch per split)", table, "selected:", *chosen, *warned]
    summary["table"] = "\n".join(lines)
    folder.write_summary(summary)
    return summary
