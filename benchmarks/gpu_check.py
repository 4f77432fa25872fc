"""One prepared GPU check: proves every GPU path of clifvqa correct and measures its speed, in one run.

    python benchmarks/gpu_check.py --out gpu-report             # = make gpu-check; <= 8 min on one GPU
    python benchmarks/gpu_check.py --device cpu --quick --out r  # CPU dry run, ~1 min

Nothing is downloaded: CLIP models are random-weight models built from a config (tiny, ViT-B/32-
and ViT-L/14-sized), videos are synthetic H.264 clips written with PyAV. The run has its own time
budget (``--budget``, default 450 s; 120 s with ``--quick``): each section has an estimated cost
and is skipped, saying so, when it would not fit in what is left. A section that fails records its
error line and the run goes on. Everything runs in this one process, except the two-GPU DDP run
(``torchrun``, only when two GPUs are visible).

Sections, in the order they run (correctness first, then speed):

=========================  =================================================================
machine                    GPU model(s), driver, torch, CUDA, cuDNN, CPU cores, native bf16
extract_precision          the same frames extracted in fp32 on the CPU and in fp16 and bf16 on
                           the device: max |Δpooled| per dtype
extract_overlap            stores written by the overlapped path (pinned staging, late
                           collection, writer thread) and by the plain path, and a second
                           overlapped run: same stored bytes
batch_auto_1080p           ``--batch-size auto``: the batch chosen from total memory and a 1080p
                           extraction with it (no out-of-memory), peak device memory
train_amp                  a few AMP steps on one fixed batch: finite and falling loss
grad_checkpoint            the same step with and without gradient checkpointing: same loss
train_single_device        ``run_training`` on the device (the trainer's single-device path)
train_resume               a run stopped after one epoch and resumed equals the uninterrupted one
eval_bf16_vs_fp32          one checkpoint scored with and without autocast: metrics and ties
predict_deterministic      ``predict`` twice on the device (on-the-fly extraction): same scores
store_cpu_then_device      a store started on the CPU continued on the device with ``--dtype auto``
ddp_world1                 DistributedDataParallel (nccl; gloo on CPU), one process, world size 1:
                           gradients equal to the plain model's
speed_extract              bench_extract's four lines (a) naive, (b) bare forward, (c) decode,
                           (d) clifvqa at 540p and 1080p for ViT-B/32- and ViT-L/14-sized CLIPs,
                           with a decode-worker sweep; d/b, d/a, d/min(b,c); projected KoNViD-1k
                           and LSVQ extraction times
speed_train                bench_train: one FAST-VQA-B step at batch 12 with AMP split into data,
                           semantic fetch and forward+backward; loader workers needed; peak memory
speed_predict              ``predict`` latency of a 10-second 1080p video (on-the-fly extraction
                           + 4 test clips)
ddp_world2                 ``clifvqa train`` under torchrun on two GPUs (when two are visible)
=========================  =================================================================

On a CPU (``--device cpu``) the GPU-only parts use stand-ins named in each section's ``notes``:
fp16/bf16 are CPU autocast, the overlapped path is switched on by hand, nccl is gloo; nccl with two
GPUs is skipped ("no CUDA"). ``--quick`` uses the tiny models and small inputs everywhere.

Output: ``OUT/gpu-report.json`` and ``OUT/gpu-report.md`` (the Markdown that goes into
docs/BENCHMARKS.md); exit status 0 when no section failed, 1 otherwise. The JSON (schema
``clifvqa-gpu-check/1``) is::

    {
      "schema": "clifvqa-gpu-check/1",
      "command": "benchmarks/gpu_check.py --device cpu --quick --out r",
      "started": "2026-11-30T20:40:00+00:00",   # UTC
      "device": "cpu" | "cuda" | "cuda:N",      # resolved
      "quick": bool,
      "budget_s": float, "elapsed_s": float,
      "machine_line": "machine: CPU ... | GPU ... | torch ..." ,
      "counts": {"ok": int, "fail": int, "skipped": int},
      "sections": {                             # every name of SECTIONS, in that order
        NAME: {
          "status": "ok" | "fail" | "skipped",
          "seconds": float,                     # 0 when skipped
          "estimate_s": float,                  # the cost the budget used
          "reason": str | null,                 # why skipped, or the failed check / error line
          "error": str | null,                  # "Type: message (file:line)" of an exception
          "numbers": {str: number | str | bool | null | list | dict},
          "notes": [str],                       # stand-ins, what was left out and why
          "tables": [{"title": str, "columns": [str], "rows": [[cell]]}]
        }
      }
    }

Non-finite numbers are written as null. Sections may add keys to ``numbers``; the keys above
never change meaning within schema version 1.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import _machine

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SCHEMA = "clifvqa-gpu-check/1"
STATUSES = ("ok", "fail", "skipped")
BUDGET_S = 450.0  # of the 8 minutes: imports, the report and a margin for the estimates
QUICK_BUDGET_S = 120.0
R = 22  # prompts of the default prompt set
SPEED_FRAMES = 60  # frames of the 540p and 1080p speed clips (one copy per decode worker goes through (d))
# The datasets whose extraction time is projected: videos, frames per video, share of each resolution.
PROJECTIONS = {"KoNViD-1k": (1_200, 240, {"540p": 1.0}), "LSVQ": (39_000, 240, {"540p": 0.5, "1080p": 0.5})}
# A ViT-L/14-sized CLIP (openai/clip-vit-large-patch14: 24 layers of 1024, patch 14, 304M vision
# parameters); extract.random_clip has tiny and ViT-B/32 presets and a fixed patch of 32.
VIT_L14 = dict(
    vision=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                patch_size=14),
    text=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
    projection_dim=768,
)


class CheckFailed(AssertionError):
    """A section's check did not hold; the message says which numbers and the limit."""


def check(ok: bool, message: str) -> None:
    if not ok:
        raise CheckFailed(message)


# ---------------------------------------------------------------------------- running sections


@dataclass(frozen=True)
class Section:
    """A named check: ``run(ctx, result)`` fills ``result`` (numbers, notes, tables); it raises
    :class:`CheckFailed` or any error to fail. ``estimate``: seconds on a GPU and with ``--quick``."""

    name: str
    run: Callable[[Any, dict], None]
    estimate: tuple[float, float]


def new_result(estimate: float) -> dict:
    return {"status": "ok", "seconds": 0.0, "estimate_s": float(estimate), "reason": None, "error": None,
            "numbers": {}, "notes": [], "tables": []}


def error_line(exc: BaseException) -> str:
    """``Type: first line of the message (file:line)``: where it was raised (for a failed
    :func:`check`, the line that called it), in one line."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.name != "check"]
    where = f" ({Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}{where}"


def run_sections(sections: list[Section], ctx: Any, budget: float, quick: bool,
                 clock: Callable[[], float] = time.monotonic, log: Callable[[str], None] = print) -> dict:
    """Run ``sections`` in order within ``budget`` seconds of ``clock``: a section whose estimate
    does not fit in what is left is skipped; one that raises is recorded as failed and the next
    one runs. ``ctx.left`` is set to a function giving the seconds left (sections may shrink)."""
    start = clock()
    ctx.left = lambda: budget - (clock() - start)
    results: dict[str, dict] = {}
    for section in sections:
        estimate = section.estimate[1 if quick else 0]
        result = results[section.name] = new_result(estimate)
        skip = getattr(ctx, "skip_reason", lambda name: None)(section.name)
        if skip is None and estimate > ctx.left():
            left = max(0.0, ctx.left())
            skip = f"estimated {estimate:.0f} s, {left:.0f} s of the {budget:.0f} s budget left"
        if skip is not None:
            result.update(status="skipped", reason=skip)
            log(f"[{section.name}] skipped: {skip}")
            continue
        t0 = clock()
        try:
            section.run(ctx, result)
        except Exception as exc:  # noqa: BLE001  (one failing section must not stop the others)
            result["status"] = "fail"
            result["error"] = error_line(exc)
            failed_check = isinstance(exc, CheckFailed)
            result["reason"] = str(exc).strip().splitlines()[0] if failed_check else result["error"]
        finally:
            result["seconds"] = round(clock() - t0, 3)
            getattr(ctx, "cleanup", lambda: None)()
        log(f"[{section.name}] {result['status']} in {result['seconds']:.1f} s"
            + (f": {result['reason']}" if result["reason"] else ""))
    return results


def make_report(results: dict, *, command: str, device: str, quick: bool, budget: float, elapsed: float,
                machine_line: str, started: str) -> dict:
    counts = {s: sum(r["status"] == s for r in results.values()) for s in STATUSES}
    return {"schema": SCHEMA, "command": command, "started": started, "device": device, "quick": quick,
            "budget_s": budget, "elapsed_s": round(elapsed, 1), "machine_line": machine_line,
            "counts": counts,
            "sections": _finite(results)}


def _finite(x: Any) -> Any:
    """``x`` with NaN and inf replaced by None (strict JSON)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value == 0 or 1e-3 <= abs(value) < 1e5:
            return f"{value:.4g}"
        return f"{value:.2e}"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(columns: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(report: dict) -> str:
    """The report as Markdown: command, machine, one summary row per section, then each
    section's numbers, notes and tables."""
    c = report["counts"]
    out = [
        f"### GPU check: {report['device']}{' (quick)' if report['quick'] else ''}, {report['started']}",
        "",
        f"`{report['command']}`",
        "",
        f"{report['machine_line']}",
        "",
        f"{c['ok']} ok, {c['fail']} failed, {c['skipped']} skipped; {report['elapsed_s']:.0f} s of a "
        f"{report['budget_s']:.0f} s budget.",
        "",
    ]
    rows = []
    for name, r in report["sections"].items():
        scalars = [(k, v) for k, v in list(r["numbers"].items())[:4] if not isinstance(v, (list, dict))]
        key = ", ".join(f"{k} {_cell(v)}" for k, v in scalars)
        rows.append([name, r["status"], f"{r['seconds']:.1f}", r["reason"] or key])
    out += [markdown_table(["section", "status", "s", "result"], rows), ""]
    for name, r in report["sections"].items():
        if r["status"] == "skipped" or not (r["numbers"] or r["notes"] or r["tables"] or r["error"]):
            continue
        out += [f"#### {name}", ""]
        if r["error"]:
            out += [f"error: `{r['error']}`", ""]
        if r["numbers"]:
            out += [markdown_table(["number", "value"], [[k, v] for k, v in r["numbers"].items()]), ""]
        for table in r["tables"]:
            out += [f"{table['title']}", "", markdown_table(table["columns"], table["rows"]), ""]
        out += [f"- {note}" for note in r["notes"]] + ([""] if r["notes"] else [])
    return "\n".join(out).rstrip() + "\n"


def write_report(report: dict, out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    js, md = out / "gpu-report.json", out / "gpu-report.md"
    js.write_text(json.dumps(report, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    md.write_text(render_markdown(report), encoding="utf-8")
    return js, md


# ---------------------------------------------------------------------------- shared inputs


class Context:
    """What the sections share: the device, the work folder, and inputs made once on first use
    (models, videos, a feature store, a trained checkpoint)."""

    def __init__(self, device: str, quick: bool, work: Path) -> None:
        import torch

        self.device, self.quick, self.work = device, quick, work
        self.dev = torch.device(device)
        self.cuda = self.dev.type == "cuda"
        self.left: Callable[[], float] = lambda: math.inf

    def skip_reason(self, name: str) -> str | None:
        import torch

        if name == "ddp_world2":
            if not self.cuda:
                return "no CUDA (nccl with two GPUs)"
            if torch.cuda.device_count() < 2:
                return f"{torch.cuda.device_count()} GPU visible, two needed"
        return None

    def cleanup(self) -> None:
        import torch

        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()

    def synchronize(self) -> None:
        import torch

        if self.cuda:
            torch.cuda.synchronize(self.dev)

    def peak_memory(self, reset: bool = False) -> float | None:
        """Peak device memory allocated (GiB) since the last reset; None on a CPU."""
        import torch

        if not self.cuda:
            return None
        if reset:
            torch.cuda.reset_peak_memory_stats(self.dev)
        return torch.cuda.max_memory_allocated(self.dev) / 2**30

    # ------------------------------------------------------------ models

    @functools.cache  # noqa: B019 -- one Ctx per run, alive as long as the process
    def clip(self, preset: str) -> Path:
        """A random CLIP folder: ``tiny``, ``vit-b-32`` or ``vit-l-14`` (made once)."""
        import bench_extract

        if preset != "vit-l-14":
            return bench_extract.random_model(self.work, preset)
        return bench_extract.cached(self.work / "models" / "random-vit-l-14", save_vit_l14)

    @property
    def small_clip(self) -> Path:
        """The CLIP of the correctness sections: tiny with ``--quick``, else ViT-B/32-sized."""
        return self.clip("tiny" if self.quick else "vit-b-32")

    def sfe(self, model: Path, device: str, dtype: str = "auto", batch_size: Any = "auto"):
        from clifvqa.extract.clip_model import load_clip
        from clifvqa.extract.sfe import SemanticFeatureExtractor

        return SemanticFeatureExtractor(load_clip(str(model), device), device=device, dtype=dtype,
                                        batch_size=batch_size)

    # ------------------------------------------------------------ data

    def clip_file(self, name: str, **kwargs) -> Path:
        import bench_extract

        from clifvqa.testing.videos import write_clip

        return bench_extract.cached(self.work / "clips" / name, lambda tmp: write_clip(tmp, **kwargs))

    @functools.cached_property
    def dataset(self) -> Path:
        """``videos/`` of 10 small clips (8 with ``--quick``), a manifest (6 or 4 train, 2 val, 2 test;
        MOS falls with blur and noise) and ``features.zarr`` extracted on the CPU with the tiny CLIP."""
        from clifvqa.extract.config import ExtractConfig
        from clifvqa.extract.runner import extract_dataset

        root = self.work / "data"
        tags = ["train"] * (4 if self.quick else 6) + ["val"] * 2 + ["test"] * 2
        lines = ["video,mos,split"]
        for i, tag in enumerate(tags):
            level = i % 5
            self.clip_file(f"v{i}.mp4", num_frames=16, width=192, height=144, seed=i % 3, blur=level // 2,
                           noise=6.0 * level)
            (root / "videos").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.work / "clips" / f"v{i}.mp4", root / "videos" / f"v{i}.mp4")
            lines.append(f"v{i}.mp4,{5.0 - 0.8 * level + 0.05 * i:.3f},{tag}")
        (root / "manifest.csv").write_text("\n".join(lines) + "\n")
        config = ExtractConfig(clip_model=str(self.clip("tiny")), device="cpu", dtype="float32", threads=1)
        summary = extract_dataset(root / "videos", root / "features.zarr", config=config, progress=False)
        check(summary.ok, f"extraction of the shared dataset failed: {summary.failures}")
        return root

    def train_config(self, device: str, **kw):
        from clifvqa.train.config import RunConfig, set_options, tiny

        base = dict(epochs=2, batch_size=3, workers=0, num_clips_test=2, warmup_epochs=0.5, val_fraction=0.0,
                    lr=1e-3, backbone_lr=1e-3, device=device)
        return set_options(tiny(RunConfig()), **{**base, **kw})

    def train(self, out: Path, device: str, **kw) -> dict:
        from clifvqa.train.config import set_options
        from clifvqa.train.trainer import run_training

        d = self.dataset
        config = set_options(self.train_config(device), manifest=d / "manifest.csv", videos=d / "videos",
                             stores=[d / "features.zarr"])
        return run_training(config, out, progress=False, **kw)

    @functools.cached_property
    def checkpoint(self) -> Path:
        """``best/`` of a tiny run trained on the CPU (independent of the device's training path;
        on a CPU, the device run's)."""
        if not self.cuda:
            return self.device_run() / "best"
        summary = self.train(self.work / "runs" / "cpu", "cpu")
        check(summary["finished"], "the CPU training run for the shared checkpoint did not finish")
        return self.work / "runs" / "cpu" / "best"

    def device_run(self) -> Path:
        """A 2-epoch tiny ``run_training`` on the device, made once (a failure is raised again on
        later calls, not retried)."""
        if not hasattr(self, "_device_run"):
            out = self.work / "runs" / "device"
            shutil.rmtree(out, ignore_errors=True)
            try:
                summary = self.train(out, self.device)
                check(summary["finished"], f"the run on {self.device} did not finish")
                self._device_run: Path | Exception = out
            except Exception as exc:
                self._device_run = exc
        if isinstance(self._device_run, Exception):
            raise self._device_run
        return self._device_run


def save_vit_l14(folder: Path) -> Path:
    """A random CLIP of openai/clip-vit-large-patch14's shape, saved like a real one."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    from clifvqa.testing.clip import _byte_level_tokenizer

    tokenizer = _byte_level_tokenizer()
    text = dict(VIT_L14["text"], vocab_size=len(tokenizer), max_position_embeddings=77,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id)
    config = CLIPConfig(text_config=text, vision_config=dict(VIT_L14["vision"], image_size=224),
                        projection_dim=VIT_L14["projection_dim"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = CLIPModel(config).eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# ---------------------------------------------------------------------------- correctness


def sec_machine(ctx: Context, res: dict) -> None:
    info = _machine.machine_info(ctx.device)
    res["numbers"] = {k: v for k, v in info.items() if k != "line"}
    if not ctx.cuda:
        res["notes"].append("no GPU used: every device number below comes from the CPU")


def sec_extract_precision(ctx: Context, res: dict) -> None:
    import numpy as np

    frames = 4 if ctx.quick else 16
    video = ctx.clip_file(f"precision-{frames}f.mp4", num_frames=frames, width=640, height=360, seed=5)
    ref = ctx.sfe(ctx.small_clip, "cpu", "float32").extract_video(video)
    limits = {"float16": 1e-2, "bfloat16": 3e-2}
    bad = []
    for dtype, limit in limits.items():
        got = ctx.sfe(ctx.small_clip, ctx.device, dtype).extract_video(video)
        check(np.array_equal(got.frames, ref.frames), f"{dtype}: other frames than the fp32 run")
        diff = float(np.abs(got.pooled - ref.pooled).max())
        res["numbers"][f"max_abs_diff_pooled_{dtype}"] = diff
        if not diff <= limit:
            bad.append(f"{dtype} {diff:.3g} > {limit:g}")
    res["numbers"].update(frames=frames, model=ctx.small_clip.name, limits=limits)
    if not ctx.cuda:
        res["notes"].append("CPU stand-in: float16 and bfloat16 are CPU autocast")
    check(not bad, "max |Δpooled| against fp32 on the CPU: " + "; ".join(bad))


def _stored(store: Path) -> dict:
    from clifvqa.features.store import open_store

    with open_store(store) as st:
        return {k: st.read_video(k) for k in st.keys()}


def sec_extract_overlap(ctx: Context, res: dict) -> None:
    """Overlapped (pinned staging + one batch in flight) vs plain, both through extract_dataset
    (and so its writer thread), plus a repeat of the overlapped run: same stored bytes."""
    import numpy as np

    from clifvqa.extract.config import ExtractConfig
    from clifvqa.extract.runner import extract_dataset

    root = ctx.work / "overlap"
    for i in range(3):
        frames = 6 if ctx.quick else 40
        ctx.clip_file(f"ov{i}-{frames}.mp4", num_frames=frames, width=480, height=270, seed=10 + i)
        (root / "videos").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ctx.work / "clips" / f"ov{i}-{frames}.mp4", root / "videos" / f"ov{i}.mp4")
    batch = 18 if ctx.quick else 90  # several batches per video: late collection has work to do
    config = ExtractConfig(clip_model=str(ctx.small_clip), device=ctx.device, batch_crops=batch, threads=2)
    sfe = ctx.sfe(ctx.small_clip, ctx.device, "auto", batch)
    stores = {}
    modes = {"overlapped": (1, True), "repeat": (1, True), "plain": (0, False)}
    for name, (in_flight, staged) in modes.items():
        sfe._in_flight, sfe._staged = in_flight, staged  # no public switch: extract_many reads these
        stores[name] = root / f"{name}.zarr"
        shutil.rmtree(stores[name], ignore_errors=True)
        summary = extract_dataset(root / "videos", stores[name], config=config, progress=False, extractor=sfe)
        check(summary.ok and summary.done == 3, f"{name} run: {summary.done} of 3 done, {summary.failures}")
    got = {name: _stored(path) for name, path in stores.items()}
    res["numbers"].update(videos=3, batch_size=sfe.batch_size, dtype=sfe.dtype,
                          frames=sum(len(v.frames) for v in got["plain"].values()))

    def same(a: dict, b: dict) -> bool:
        return a.keys() == b.keys() and all(
            np.array_equal(a[k].pooled, b[k].pooled) and np.array_equal(a[k].maps, b[k].maps)
            and np.array_equal(a[k].frames, b[k].frames) for k in a)

    res["numbers"]["overlapped_equals_plain"] = same(got["overlapped"], got["plain"])
    res["numbers"]["repeat_same_bytes"] = same(got["overlapped"], got["repeat"])
    if not ctx.cuda:
        res["notes"].append("CPU stand-in: staging and late collection switched on by hand "
                            "(no pinned memory)")
    check(res["numbers"]["repeat_same_bytes"], "two overlapped runs stored different bytes")
    check(res["numbers"]["overlapped_equals_plain"],
          "the overlapped path stored other values than the plain path")


def sec_batch_auto(ctx: Context, res: dict) -> None:
    import bench_extract

    model = ctx.clip("tiny" if ctx.quick else "vit-l-14")
    frames = 4 if ctx.quick else SPEED_FRAMES  # the clip speed_extract times
    video = bench_extract.synthetic_clip(ctx.work, "1080p", frames)
    ctx.peak_memory(reset=True)
    sfe = ctx.sfe(model, ctx.device, "auto", "auto")
    t0 = time.perf_counter()
    result = sfe.extract_video(video)
    ctx.synchronize()
    seconds = time.perf_counter() - t0
    res["numbers"].update(model=model.name, batch_size=sfe.batch_size, dtype=sfe.dtype,
                          frames=len(result.frames), frames_per_s=len(result.frames) / seconds,
                          peak_memory_gib=ctx.peak_memory())
    if ctx.cuda:
        import torch

        free, total = torch.cuda.mem_get_info(ctx.dev)
        res["numbers"].update(free_gib_after=free / 2**30, total_gib=total / 2**30)
    check(len(result.frames) == frames, f"{len(result.frames)} of {frames} 1080p frames extracted")


def _fixed_batch(ctx: Context, config, batch: int = 4):
    import torch

    g = torch.Generator().manual_seed(0)
    semantic = torch.rand(batch, 2 * config.r, config.t0, generator=g)
    fragments = torch.randn(batch, 1, 3, *config.clip_shape, generator=g)
    mos = torch.linspace(1.0, 5.0, batch)
    return semantic.to(ctx.dev), fragments.to(ctx.dev), mos.to(ctx.dev)


def _model_config(ctx: Context):
    from clifvqa.train.model import ClifVQAConfig, tiny_config

    return tiny_config(R) if ctx.quick else ClifVQAConfig(r=R)


def _amp(ctx: Context):
    """The autocast dtype of the trainer's steps on this device (None: float32)."""
    from clifvqa.train import trainer

    return trainer.amp_dtype(ctx.train_config(ctx.device).optim, ctx.dev)


def _amp_name(ctx: Context) -> str:
    dtype = _amp(ctx)
    return str(dtype).replace("torch.", "") if dtype else "off (float32: the trainer's rule on a CPU)"


def _autocast(ctx: Context):
    """The trainer's autocast for its training steps on this device."""
    from clifvqa.train import trainer

    return trainer._autocast(ctx.dev, _amp(ctx))


def _step(ctx: Context, model, optimizer, scaler, batch) -> float:
    """One optimizer step as ``train`` runs it (``trainer.train_step``)."""
    from clifvqa.train import trainer

    semantic, fragments, mos = batch
    keys = [f"fixed{i}" for i in range(len(mos))]
    collated = {"keys": keys, "semantic": semantic, "fragments": fragments, "mos": mos}
    loss, _ = trainer.train_step(model, optimizer, scaler, collated, config=ctx.train_config(ctx.device),
                                 model_config=model.config, device=ctx.dev, dtype=_amp(ctx))
    return loss.item()


def sec_train_amp(ctx: Context, res: dict) -> None:
    import torch

    from clifvqa.train.model import build_model
    from clifvqa.train.trainer import _param_groups

    config = _model_config(ctx)
    torch.manual_seed(0)
    model = build_model(config).to(ctx.dev).train()
    train = ctx.train_config(ctx.device)
    optimizer = torch.optim.AdamW(_param_groups(model, train.optim), lr=train.optim.lr,
                                  weight_decay=train.optim.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=_amp(ctx) == torch.float16)
    batch = _fixed_batch(ctx, config, 2 if ctx.quick else 4)
    ctx.peak_memory(reset=True)
    losses = [_step(ctx, model, optimizer, scaler, batch) for _ in range(3 if ctx.quick else 8)]
    res["numbers"].update(model="tiny" if ctx.quick else "FAST-VQA-B", batch=len(batch[2]),
                          amp=_amp_name(ctx), grad_scaler=scaler.is_enabled(), first_loss=losses[0],
                          last_loss=losses[-1],
                          losses=[round(x, 6) for x in losses], peak_memory_gib=ctx.peak_memory())
    check(all(math.isfinite(x) for x in losses), f"non-finite loss: {losses}")
    check(losses[-1] < losses[0],
          f"loss did not fall over {len(losses)} steps: {losses[0]:.4g} -> {losses[-1]:.4g}")


def sec_grad_checkpoint(ctx: Context, res: dict) -> None:
    import torch

    from clifvqa.train.loss import clifvqa_loss
    from clifvqa.train.model import build_model

    config = _model_config(ctx)
    torch.manual_seed(0)
    plain = build_model(config).to(ctx.dev).train()
    ckpt = build_model(config, checkpoint_grad=True).to(ctx.dev).train()
    ckpt.load_state_dict(plain.state_dict())
    semantic, fragments, mos = _fixed_batch(ctx, config, 2 if ctx.quick else 4)
    out = {}
    for name, model in (("plain", plain), ("checkpointed", ckpt)):
        torch.manual_seed(1)  # the same dropout and drop-path draws
        ctx.peak_memory(reset=True)
        with _autocast(ctx):
            loss = clifvqa_loss(model(semantic, fragments).float(), mos)
        loss.backward()
        grads = torch.cat([p.grad.flatten().float() for p in model.parameters() if p.grad is not None])
        out[name] = (loss.item(), grads, ctx.peak_memory())
    (l0, g0, m0), (l1, g1, m1) = out["plain"], out["checkpointed"]
    diff = abs(l1 - l0)
    grad_rel = float((g1 - g0).abs().max() / g0.abs().max().clamp_min(1e-12))
    res["numbers"].update(amp=_amp_name(ctx), loss=l0, loss_abs_diff=diff, grad_max_rel_diff=grad_rel,
                          peak_memory_gib_plain=m0, peak_memory_gib_checkpointed=m1)
    limit = 1e-3 * abs(l0) if ctx.cuda else 1e-6
    check(diff <= limit, f"loss with checkpointing differs by {diff:.3g} (limit {limit:.3g})")


def sec_train_single_device(ctx: Context, res: dict) -> None:
    import json as _json

    t0 = time.perf_counter()
    out = ctx.device_run()
    result = _json.loads((out / "result.json").read_text())
    res["numbers"].update(device=ctx.device, seconds=time.perf_counter() - t0, epochs=result["epochs_done"],
                          best_epoch=result["best_epoch"], test_srocc=(result["test"] or {}).get("srocc"))


def sec_train_resume(ctx: Context, res: dict) -> None:
    import torch
    from safetensors.torch import load_file

    whole = ctx.device_run()
    out = ctx.work / "runs" / "resumed"
    shutil.rmtree(out, ignore_errors=True)
    part = ctx.train(out, ctx.device, stop_after=1)
    check(not part["finished"], "the run given stop_after=1 finished")
    ctx.train(out, ctx.device, resume=True)
    a, b = (load_file(str(p / "last" / "model.safetensors")) for p in (whole, out))
    check(a.keys() == b.keys(), "the resumed checkpoint holds other tensors")
    diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    rows = [[json.loads(line)["train_loss"] for line in (p / "metrics.jsonl").read_text().splitlines()]
            for p in (whole, out)]
    limit = 1e-4 if ctx.cuda else 1e-6
    res["numbers"].update(max_abs_diff_weights=diff, limit=limit, train_loss_whole=rows[0],
                          train_loss_resumed=rows[1])
    check(diff <= limit,
          f"resumed weights differ from the uninterrupted run's by {diff:.3g} (limit {limit:g})")
    torch.testing.assert_close(rows[0], rows[1], rtol=1e-4, atol=1e-6)


def sec_eval_bf16_vs_fp32(ctx: Context, res: dict) -> None:
    """The trainer's test metrics of the device run equal ``evaluate``'s of the same checkpoint;
    one checkpoint scored in float32 and under autocast: metrics, and the ties autocast makes."""
    import torch

    from clifvqa.manifests.io import read_manifest
    from clifvqa.train.checkpoint import load_checkpoint
    from clifvqa.train.data import VideoItem, load_semantic_features
    from clifvqa.train.evaluate import evaluate
    from clifvqa.train.inference import predict_items
    from clifvqa.train.metrics import compute_metrics

    d = ctx.dataset
    run = ctx.device_run()
    trained = json.loads((run / "result.json").read_text())["test"]
    scored = evaluate(run / "best", d / "manifest.csv", d / "videos", [d / "features.zarr"],
                      device=ctx.device, plot=False, split="test").metrics
    model, _ = load_checkpoint(run / "best", ctx.dev)
    items = [VideoItem(r.video, float(r.mos)) for r in read_manifest(d / "manifest.csv").rows]
    rows = load_semantic_features([d / "features.zarr"], [i.key for i in items], model.config.t0,
                                  video_root=d / "videos", progress=False).rows
    # Autocast around the scoring: bf16 where the trainer's steps use it (a CPU stands in with bf16).
    half = _amp(ctx) or torch.bfloat16
    runs = {}
    casts = {"fp32": contextlib.nullcontext(), "autocast": torch.autocast(ctx.dev.type, dtype=half)}
    for name, cast in casts.items():
        with cast:
            _, preds, mos, _ = predict_items(model, items, d / "videos", rows, model.config.fragments,
                                             device=ctx.dev)
        runs[name] = (preds, compute_metrics(preds, mos))
    (p32, m32), (p16, m16) = runs["fp32"], runs["autocast"]
    semantic, fragments, _ = _fixed_batch(ctx, model.config, 2)
    with torch.no_grad(), torch.autocast(ctx.dev.type, dtype=half):
        out_dtype = model.eval()(semantic, fragments).dtype
    res["numbers"].update(
        output_dtype_under_autocast=str(out_dtype).replace("torch.", ""),
        trainer_test_srocc=trained["srocc"], evaluate_test_srocc=scored["srocc"],
        trainer_test_plcc=trained["plcc"], evaluate_test_plcc=scored["plcc"],
        videos=len(items), autocast=str(half).replace("torch.", ""), srocc_fp32=m32["srocc"],
        srocc_autocast=m16["srocc"], plcc_fp32=m32["plcc"], plcc_autocast=m16["plcc"],
        distinct_fp32=len(set(p32)), distinct_autocast=len(set(p16)),
        max_abs_diff_pred=max(abs(a - b) for a, b in zip(p32, p16)))
    if not ctx.cuda:
        res["notes"].append("CPU stand-in: bfloat16 CPU autocast")
    gap = max(abs(trained[k] - scored[k]) for k in ("srocc", "plcc"))
    check(gap <= 1e-6, f"the trainer's test SROCC/PLCC {trained['srocc']:.4f}/{trained['plcc']:.4f}, "
          f"evaluate's {scored['srocc']:.4f}/{scored['plcc']:.4f} for the same checkpoint")
    check(out_dtype == torch.float32, f"under autocast the model outputs {out_dtype}: the semantic branch "
          "and the regression head must run in float32")
    check(len(set(p16)) == len(set(p32)), f"autocast made ties: {len(set(p32))} distinct predictions -> "
          f"{len(set(p16))} (SROCC {m32['srocc']:.4f} -> {m16['srocc']:.4f})")


def sec_predict_deterministic(ctx: Context, res: dict) -> None:
    from clifvqa.predict import predict

    d = ctx.dataset
    videos = [d / "videos" / "v0.mp4", d / "videos" / "v7.mp4"]
    runs = [predict(videos, ctx.checkpoint, device=ctx.device) for _ in range(2)]
    cpu = predict(videos, ctx.checkpoint, device="cpu")
    for preds in [*runs, cpu]:
        check(all(p.error is None for p in preds), f"predict failed: {[p.error for p in preds if p.error]}")
    a, b, c = ([p.raw for p in preds] for preds in (*runs, cpu))
    rel = max(abs(x - y) / max(abs(y), 1e-12) for x, y in zip(a, c))
    res["numbers"].update(videos=len(videos), raw=a, same_twice=a == b, max_rel_diff_vs_cpu=rel)
    check(a == b, f"two predict runs on {ctx.device} gave {a} and {b}")


def sec_store_cpu_then_device(ctx: Context, res: dict) -> None:
    from clifvqa.extract.config import ExtractConfig
    from clifvqa.extract.runner import extract_dataset
    from clifvqa.features.store import open_store

    root = ctx.work / "continue"
    shutil.rmtree(root, ignore_errors=True)
    (root / "videos").mkdir(parents=True)
    src = ctx.dataset / "videos"
    for i in range(2):
        shutil.copyfile(src / f"v{i}.mp4", root / "videos" / f"v{i}.mp4")
    model = str(ctx.clip("tiny"))
    store = root / "features.zarr"
    first = extract_dataset(root / "videos", store, progress=False,
                            config=ExtractConfig(clip_model=model, device="cpu", threads=1))
    for i in range(2, 4):
        shutil.copyfile(src / f"v{i}.mp4", root / "videos" / f"v{i}.mp4")
    second = extract_dataset(root / "videos", store, config=ExtractConfig(clip_model=model, device=ctx.device,
                                                                          threads=1), progress=False)
    with open_store(store) as st:
        keys, dtype = st.keys(), st.provenance["dtype"]
    res["numbers"].update(cpu_done=first.done, device_done=second.done, device_skipped=second.skipped,
                          keys=len(keys), store_dtype=dtype)
    if not ctx.cuda:
        res["notes"].append("CPU stand-in: both runs on the CPU, where --dtype auto is float32 both times")
    check(second.ok and second.done == 2 and second.skipped == 2 and len(keys) == 4,
          f"continued on {ctx.device}: {second.done} done, {second.skipped} skipped, {len(keys)} keys")


def sec_ddp_world1(ctx: Context, res: dict) -> None:
    import torch
    import torch.distributed as tdist
    from torch.nn.parallel import DistributedDataParallel

    from clifvqa.train.loss import clifvqa_loss
    from clifvqa.train.model import build_model, tiny_config

    backend = "nccl" if ctx.cuda else "gloo"
    init = ctx.work / "ddp-filestore"
    init.unlink(missing_ok=True)
    config = tiny_config(R)
    torch.manual_seed(0)
    plain = build_model(config).to(ctx.dev).train()
    model = build_model(config).to(ctx.dev).train()
    model.load_state_dict(plain.state_dict())
    semantic, fragments, mos = _fixed_batch(ctx, config, 2)
    tdist.init_process_group(backend, init_method=f"file://{init}", rank=0, world_size=1)
    try:
        ids = [ctx.dev.index or 0] if ctx.cuda else None
        net = DistributedDataParallel(model, device_ids=ids)
        for m in (plain, net):
            torch.manual_seed(1)  # the same drop-path draws
            clifvqa_loss(m(semantic, fragments).float(), mos).backward()
        ctx.synchronize()
    finally:
        tdist.destroy_process_group()
    diff = max(float((a.grad - b.grad).abs().max()) for a, b in zip(plain.parameters(), model.parameters())
               if a.grad is not None)
    res["numbers"].update(backend=backend, world_size=1, max_abs_diff_grad=diff)
    check(diff <= 1e-5, f"DDP gradients differ from the plain model's by {diff:.3g}")


def sec_ddp_world2(ctx: Context, res: dict) -> None:
    d = ctx.dataset
    out = ctx.work / "runs" / "ddp2"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "clifvqa.cli", "train", "--manifest", str(d / "manifest.csv"), "--videos", str(d / "videos"),
           "--store", str(d / "features.zarr"), "--out", str(out), "--tiny", "--epochs", "2",
           "--batch-size", "2", "--workers", "0", "--num-clips-test", "2", "--val-fraction", "0",
           "--device", ctx.dev.type]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max(30.0, min(180.0, ctx.left())))
    res["numbers"].update(world_size=2, backend="nccl" if ctx.cuda else "gloo",
                          seconds=time.perf_counter() - t0, returncode=proc.returncode)
    tail = (proc.stderr or proc.stdout).strip().splitlines()
    check(proc.returncode == 0, f"torchrun exited {proc.returncode}: {tail[-1] if tail else ''}")
    summary = json.loads((out / "summary.json").read_text())
    res["numbers"]["finished"] = summary["finished"]
    check(summary["finished"], "the two-GPU run did not finish")


# ---------------------------------------------------------------------------- speed


def sec_speed_extract(ctx: Context, res: dict) -> None:
    """bench_extract's (a)-(d) per model and resolution, in this process; decode sweep per resolution."""
    import bench_extract

    from clifvqa._device import default_workers

    workers = default_workers("threads")
    if ctx.quick:
        models, frames, sweep_counts, naive_s = [("tiny", 8.0)], 4, [1, workers], 5.0
    else:
        models, frames, naive_s = [("vit-b-32", 60.0), ("vit-l-14", 90.0)], SPEED_FRAMES, 10.0
        sweep_counts = [1, 2, 4, workers]
    sweep_counts = sorted(set(sweep_counts))
    rows, decode_rows, speeds = [], [], {}
    for res_name in bench_extract.RESOLUTIONS:
        clip = bench_extract.synthetic_clip(ctx.work, res_name, frames)
        crop = 224
        sweep = [bench_extract.measure_decode(clip, crop, (3, 3), k, repeats=1) for k in sweep_counts]
        decode_rows += [[res_name, s["workers"], s["rgb_fps"], s["grid_fps"]] for s in sweep]
        c = next(s for s in sweep if s["workers"] == workers)
        dataset = bench_extract.dataset_of(ctx.work, clip, workers)
        for preset, estimate in models:
            if estimate > ctx.left():
                res["notes"].append(f"{preset} at {res_name} left out: about {estimate:.0f} s, "
                                    f"{ctx.left():.0f} s of the budget left")
                continue
            spec = {"model": str(ctx.clip(preset)), "grid": [3, 3], "device": ctx.device, "dtype": "auto",
                    "batch_size": "auto", "threads": None, "stride": 1, "limits": True, "clip": str(clip),
                    "frames": frames, "naive_frames": frames, "naive_seconds": naive_s, "workers": workers,
                    "store": str(ctx.work / "stores" / f"{preset}-{res_name}.zarr"), "dataset": str(dataset)}
            ctx.peak_memory(reset=True)
            d = bench_extract.measure(spec)
            a, b = d.pop("naive"), d.pop("compute")
            a_fps, b_fps = a["frames"] / a["seconds"], b["frames"] / b["seconds"]
            d_fps = d["frames"] / d["seconds"]
            fewest = next((s["workers"] for s in sweep if s["grid_fps"] >= b_fps), None)
            speeds[(preset, res_name)] = d_fps
            rows.append([preset, res_name, d["batch_size"], d["dtype"], a_fps, b_fps, c["rgb_fps"], d_fps,
                         d_fps / b_fps, d_fps / a_fps, d_fps / min(b_fps, c["rgb_fps"]),
                         fewest if fewest is not None else f">{max(sweep_counts)}", ctx.peak_memory()])
            ctx.cleanup()
    res["tables"].append({"title": "Extraction frames/s: (a) naive per-crop loop, (b) bare forward, "
                          f"(c) decode with {workers} workers, (d) clifvqa extract -> Zarr "
                          f"({frames} frames per clip)",
                          "columns": ["model", "res", "batch", "dtype", "a", "b", "c", "d", "d/b", "d/a",
                                      "d/min(b,c)", "decode workers for b", "peak GiB"], "rows": rows})
    res["tables"].append({"title": "Decode sweep, frames/s over all threads (each decodes its own copy)",
                          "columns": ["res", "workers", "decode -> RGB", "decode + crop grid"],
                          "rows": decode_rows})
    base = models[0][0]
    for name, (videos, per_video, mix) in PROJECTIONS.items():
        if all((base, r) in speeds for r in mix):
            seconds = sum(videos * per_video * share / speeds[(base, r)] for r, share in mix.items())
            res["numbers"][f"projected_{name}_s"] = seconds
            res["notes"].append(f"{name} ({videos:,} videos x {per_video} frames, "
                                + ", ".join(f"{share:.0%} at the {r} rate" for r, share in mix.items())
                                + f"): {bench_extract.duration(seconds)} with {base}")
    res["numbers"]["lines"] = len(rows)
    if ctx.quick:
        res["notes"].append("quick: the tiny CLIP only, 4-frame clips")
    check(bool(rows), "no extraction line fitted in the budget")


def sec_speed_train(ctx: Context, res: dict) -> None:
    import bench_train

    folder = ctx.work / "bench-train"
    if ctx.quick:
        kind, batch, steps, videos, frames, size, workers = "tiny", 2, 1, 2, 24, (320, 240), 0
    else:
        kind, batch, steps, videos, frames, size, workers = "full", 12, 3, 4, 96, (960, 540), None
    if not (folder / "features.zarr").exists():
        bench_train.make_inputs(folder, videos, frames, *size)
    keys = sorted(p.name for p in (folder / "videos").glob("*.mp4"))
    ctx.peak_memory(reset=True)
    r = bench_train.measure(kind, batch, steps, keys, folder, folder / "features.zarr", ctx.device, workers)
    m = r["mean_s"]
    res["numbers"].update(model=r["model"], batch=batch, data_s=m["data"], fetch_s=m["fetch"],
                          compute_s=m["compute"], fetch_share=r["fetch_share"],
                          workers_needed=r["workers_needed"],
                          workers_used=r["workers_used"], pipelined_step_s=r["pipelined_step_s"],
                          peak_memory_gib=ctx.peak_memory())
    lines = bench_train.report(r).splitlines()
    res["notes"].append("bench_train: " + " / ".join(line.strip() for line in lines))


def sec_speed_predict(ctx: Context, res: dict) -> None:
    """predict on a 10-second 1080p clip: on-the-fly extraction + the checkpoint's test clips."""
    import bench_extract

    from clifvqa.extract.sfe import SemanticFeatureExtractor
    from clifvqa.features.provenance import fingerprint
    from clifvqa.predict import predict
    from clifvqa.train import checkpoint as ckpt
    from clifvqa.train.model import ClifVQAConfig, build_model

    if ctx.quick:
        checkpoint, seconds, fps = ctx.checkpoint, 2, 10
    else:
        from clifvqa.extract.clip_model import load_clip

        # A FAST-VQA-B checkpoint (4 test clips) whose features come from the ViT-B/32-sized CLIP.
        sfe = SemanticFeatureExtractor(load_clip(str(ctx.clip("vit-b-32")), "cpu"), device="cpu")
        prov = sfe.provenance()
        config = ClifVQAConfig(r=len(prov["prompts"]["texts"]))
        checkpoint = ckpt.save_checkpoint(ctx.work / "runs" / "fast-b" / "best", build_model(config), config,
                                          prov, fingerprint(prov))
        seconds, fps = 10, 30
    video = bench_extract.scrolling_clip(ctx.work, seconds, fps)
    ctx.peak_memory(reset=True)
    t0 = time.perf_counter()
    (pred,) = predict([video], checkpoint, device=ctx.device, workers=2)
    latency = time.perf_counter() - t0
    check(pred.error is None, f"predict failed: {pred.error}")
    res["numbers"].update(video=f"1080p, {seconds} s at {fps} fps", latency_s=latency,
                          model="tiny" if ctx.quick else "FAST-VQA-B + ViT-B/32-sized CLIP",
                          peak_memory_gib=ctx.peak_memory())
    res["notes"].append("latency includes loading the checkpoint and CLIP (hashing its weights)")
    if ctx.quick:
        res["notes"].append("quick: a 2-second clip at 10 fps and the tiny checkpoint")


SECTIONS = [
    Section("machine", sec_machine, (5, 2)),
    Section("extract_precision", sec_extract_precision, (25, 6)),
    Section("extract_overlap", sec_extract_overlap, (25, 6)),
    Section("batch_auto_1080p", sec_batch_auto, (60, 4)),
    Section("train_amp", sec_train_amp, (20, 4)),
    Section("grad_checkpoint", sec_grad_checkpoint, (15, 3)),
    Section("train_single_device", sec_train_single_device, (25, 10)),
    Section("train_resume", sec_train_resume, (25, 6)),
    Section("eval_bf16_vs_fp32", sec_eval_bf16_vs_fp32, (10, 3)),
    Section("predict_deterministic", sec_predict_deterministic, (15, 4)),
    Section("store_cpu_then_device", sec_store_cpu_then_device, (10, 4)),
    Section("ddp_world1", sec_ddp_world1, (10, 3)),
    Section("speed_extract", sec_speed_extract, (90, 12)),
    Section("speed_train", sec_speed_train, (60, 8)),
    Section("speed_predict", sec_speed_predict, (40, 5)),
    Section("ddp_world2", sec_ddp_world2, (60, 60)),
]
SECTION_NAMES = [s.name for s in SECTIONS]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("gpu-report"), help="where the reports go")
    parser.add_argument("--device", default="auto", help="auto, cuda, cuda:N or cpu")
    parser.add_argument("--quick", action="store_true", help="tiny models and small inputs everywhere")
    parser.add_argument("--budget", type=float, default=None,
                        help=f"seconds for all sections [{BUDGET_S:g}; {QUICK_BUDGET_S:g} with --quick]")
    parser.add_argument("--only", nargs="+", choices=SECTION_NAMES, help="run only these sections")
    parser.add_argument("--work", type=Path, default=None,
                        help="cache of models, clips and stores (kept; default OUT/work, removed at the end)")
    args = parser.parse_args(argv)

    from clifvqa._device import resolve_device

    started = datetime.now(UTC).isoformat(timespec="seconds")
    t0 = time.monotonic()
    device = resolve_device(args.device)
    budget = args.budget or (QUICK_BUDGET_S if args.quick else BUDGET_S)
    work = args.work or args.out / "work"
    ctx = Context(device, args.quick, work)
    sections = [s for s in SECTIONS if not args.only or s.name in args.only]
    import torch

    threads = torch.get_num_threads()  # given back at the end: main() may run inside another program
    if args.quick and device == "cpu":
        torch.set_num_threads(1)  # tiny models on a few shared cores: no OpenMP contention
    # Training's warnings (too few validation videos for these small sets) say nothing here.
    logging.getLogger("clifvqa.train").setLevel(logging.ERROR)
    command = " ".join(["benchmarks/gpu_check.py", *(argv if argv is not None else sys.argv[1:])])
    print(_machine.machine_line(device))
    try:
        results = run_sections(sections, ctx, budget, args.quick)
    finally:
        torch.set_num_threads(threads)
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    report = make_report(results, command=command, device=device, quick=args.quick, budget=budget,
                         elapsed=time.monotonic() - t0, machine_line=_machine.machine_line(device),
                         started=started)
    js, md = write_report(report, args.out)
    c = report["counts"]
    print(f"{c['ok']} ok, {c['fail']} failed, {c['skipped']} skipped in {report['elapsed_s']:.0f} s; "
          f"wrote {js} and {md}")
    return 1 if c["fail"] else 0


if __name__ == "__main__":
    sys.exit(main())
