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


def gpu_driver() -> str | None:
    """The NVIDIA driver version from ``nvidia-smi`` (None where there is none)."""
    import subprocess

    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = out.stdout.strip().splitlines()
    return lines[0].strip() if out.returncode == 0 and lines else None


def machine_info(device: str) -> dict:
    """The machine as data: CPU, cores, GPUs (model, memory, native bf16), driver, torch, CUDA,
    cuDNN, transformers, PyAV, Python and load; ``line`` is :func:`machine_line`."""
    import av
    import torch
    import transformers

    cuda = torch.cuda.is_available()
    gpus = [torch.cuda.get_device_properties(i) for i in range(torch.cuda.device_count())] if cuda else []
    return {
        "line": machine_line(device),
        "cpu": cpu_name(),
        "cpu_cores": os.cpu_count(),
        "gpus": [{"name": p.name, "memory_gib": round(p.total_memory / 2**30, 1),
                  "capability": f"{p.major}.{p.minor}"} for p in gpus],
        "bf16_native": bool(cuda and torch.cuda.is_bf16_supported(including_emulation=False)),
        "driver": gpu_driver() if cuda else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "transformers": transformers.__version__,
        "av": av.__version__,
        "python": platform.python_version(),
        "load": load_average(),
    }


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
