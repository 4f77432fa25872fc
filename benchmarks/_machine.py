"""The machine line every benchmark prints first, so numbers are never quoted without their machine."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def load_average() -> str:
    """1/5/15-minute load averages, e.g. ``2.1/1.8/1.5`` (others' jobs skew timings)."""
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def machine_line(device: str, details: str = "", threads: int | None = None) -> str:
    """``machine: CPU … | GPU … | torch …, N threads | device … [| details] | load …``.

    ``threads``: the torch thread count of the process that was timed (default: this one's).
    """
    import torch

    gpu = torch.cuda.get_device_name(device) if device.startswith("cuda") else "none"
    parts = [
        f"machine: CPU {cpu_name()} ({os.cpu_count()} cores)",
        f"GPU {gpu}",
        f"torch {torch.__version__}, {threads or torch.get_num_threads()} threads",
        f"device {device}",
        *([details] if details else []),
        f"load {load_average()}",
    ]
    return " | ".join(parts)
