"""Which torch device a ``--device`` option means; shared by extraction, training and scoring."""

from __future__ import annotations


def resolve_device(device: str = "auto") -> str:
    """``"auto"`` -> ``"cuda"`` when a GPU is visible, else ``"cpu"``; anything else unchanged
    (ValueError for a CUDA device when no GPU is visible)."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but this torch sees no CUDA GPU; use --device cpu or auto")
    return device
