"""Which torch device a ``--device`` option means; shared by extraction, training and scoring."""

from __future__ import annotations

import re

_CUDA = re.compile(r"cuda(?::(\d+))?")
_CHOICES = "auto, cpu, cuda, cuda:N or mps"


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
            raise ValueError("device 'mps' asked for, but this torch has no usable Apple GPU (MPS); "
                             "use --device cpu or auto")
        return device
    cuda = _CUDA.fullmatch(device)
    if cuda is None:
        hint = "; for an NVIDIA GPU say cuda" if device.lower() in ("gpu", "nvidia") else ""
        raise ValueError(f"unknown device {device!r}: use {_CHOICES}{hint}")
    if not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but this torch sees no CUDA GPU; use --device cpu or auto")
    count = torch.cuda.device_count()
    if cuda.group(1) is not None and int(cuda.group(1)) >= count:
        raise ValueError(f"device {device!r} asked for, but this torch sees {count} CUDA GPU(s): "
                         f"cuda:0..cuda:{count - 1}")
    return device
