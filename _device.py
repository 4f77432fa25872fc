"""Which torch device a ``--device`` option means; shared by extraction, training and scoring."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any, Literal

from clifvqa.errors import ClifvqaError

_CUDA = re.compile(r"cuda(?::(\d+))?")
_CHOICES = "auto, cpu, cuda, cuda:N or mps"
DEVICE_HELP = f"auto (cuda when torch sees a GPU, else cpu), {_CHOICES.removeprefix('auto, ')}"
"""The one help text of every ``--device`` option (and of the run config's ``device``)."""


class DeviceError(ClifvqaError):
    """A ``--device`` that cannot be used the way this process would use it."""


def resolve_device(device: str = "auto") -> str:
    """The torch device string ``device`` names, checked against what this torch can use.

    ``"auto"`` -> ``"cuda"`` when a GPU is visible, else ``"cpu"``; ``"cpu"``, ``"cuda"``,
    ``"cuda:N"`` and ``"mps"`` are returned unchanged when usable. Anything else (``gpu``,
    ``tpu``, a CUDA index beyond the visible GPUs, ``mps`` without an Apple GPU) is a
    one-line ValueError that says what to pass instead.
    """
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return device
    if device == "mps":
        if not torch.backends.mps.is_available():
            raise DeviceError("device 'mps' asked for, but this torch has no usable Apple GPU (MPS); "
                             "use --device cpu or auto")
        return device
    cuda = _CUDA.fullmatch(device)
    if cuda is None:
        hint = "; for an NVIDIA GPU say cuda" if device.lower() in ("gpu", "nvidia") else ""
        raise DeviceError(f"unknown device {device!r}: use {_CHOICES}{hint}")
    if not torch.cuda.is_available():
        raise DeviceError(f"device {device!r} asked for, but this torch sees no CUDA GPU; use --device cpu or auto")
    count = torch.cuda.device_count()
    if cuda.group(1) is not None and int(cuda.group(1)) >= count:
        raise DeviceError(f"device {device!r} asked for, but this torch sees {count} CUDA GPU(s): "
                         f"cuda:0..cuda:{count - 1}")
    return device


def default_workers(kind: Literal["threads", "processes"]) -> int:
    """How many decoding workers to start beside the main thread or process when the user did
    not say: one per spare usable core (CPU affinity, less the main one's core).

    ``"threads"`` (extraction's decoding threads) are at least 1 and at most 8: beyond that the
    device waits on nothing but more frames are held in flight. ``"processes"`` (DataLoader
    workers of train, evaluate and experiment runs) are at most 4 and may be 0 (decode in the
    main process): each holds its own decoder and clips, and torch warns (and can stall) when
    there are more workers than usable cores.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    if kind == "threads":
        return max(1, min(8, cores - 1))
    return max(0, min(4, cores - 1))


def no_autocast(device_type: str) -> Any:
    """A region that computes in its inputs' dtypes even inside an autocast region of
    ``device_type`` (a no-op where autocast does not exist, e.g. the meta device)."""
    import torch

    available = getattr(torch.amp, "is_autocast_available", lambda kind: kind in ("cpu", "cuda"))
    return torch.autocast(device_type, enabled=False) if available(device_type) else nullcontext()


@contextmanager
def torch_threads_at_most(limit: int) -> Iterator[None]:
    """At most ``limit`` intra-op torch threads inside, the previous count restored after (the
    demos' tiny tensors: more threads only add OpenMP overhead)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(min(before, limit))
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def float32_math() -> Iterator[None]:
    """CUDA convolutions and matrix products in true float32 inside (no TF32), the previous
    settings restored after.

    cuDNN convolutions default to TF32 on Ampere and later GPUs, which keeps 10 mantissa bits:
    scores are repeatable but differ from a CPU's by ~1e-3 relative. Scoring (``predict``,
    ``evaluate``, the trainer's validation and test) runs in here so that it is float32 as
    documented. Uses torch's per-operator ``fp32_precision`` settings where they exist (torch
    2.9+; setting the legacy ``allow_tf32`` flags there mixes the two APIs, which torch refuses to
    read back), else the ``allow_tf32`` flags.
    """
    import torch

    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    if hasattr(cudnn, "conv") and hasattr(matmul, "fp32_precision"):
        settings = [(cudnn.conv, "fp32_precision"), (cudnn.rnn, "fp32_precision"), (matmul, "fp32_precision")]
        strict: Any = "ieee"
    else:
        settings = [(cudnn, "allow_tf32"), (matmul, "allow_tf32")]
        strict = False
    saved = [getattr(owner, name) for owner, name in settings]
    try:
        for owner, name in settings:
            setattr(owner, name, strict)
        yield
    finally:
        for (owner, name), value in zip(settings, saved):
            setattr(owner, name, value)
