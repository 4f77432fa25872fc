"""Benchmark: FAST-VQA-B forward time and peak memory on this machine.

Times ``eval()`` + ``torch.no_grad()`` forwards of the full FAST-VQA-B network (random weights:
the cost does not depend on them) for one clip ``[1, 3, 32, 224, 224]`` and for the 4-clip
test batch of one video ``[4, 3, 32, 224, 224]``, best of ``--repeats`` after one warm-up
call, then prints peak RSS (``resource.getrusage``). Each batch size runs in a fresh process
so its peak RSS is its own. On a shared machine take the best of several runs.

    python benchmarks/bench_fastvqa.py [--repeats 3] [--batches 1 4] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

from _machine import machine_line


def measure(batch: int, repeats: int, threads: int | None) -> dict:
    """Forward timings (seconds) and peak RSS (MiB) for one batch size, in this process."""
    import torch

    from clifvqa.train.fastvqa import build_fastvqa

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build_fastvqa("fast-b").eval()
    x = torch.randn(batch, 3, 32, 224, 224)
    times = []
    with torch.no_grad():
        out = model(x)  # warm-up: builds the cached gates and masks
        for _ in range(repeats):
            start = time.perf_counter()
            out = model(x)
            times.append(time.perf_counter() - start)
    assert out.shape == (batch, 1, 16, 7, 7)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {
        "batch": batch,
        "threads": torch.get_num_threads(),
        "best_s": min(times),
        "all_s": [round(t, 3) for t in times],
        "per_clip_s": min(times) / batch,
        "peak_rss_mib": peak_kib / 1024,
        "torch": torch.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # child process mode
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(measure(args.one, args.repeats, args.threads)))
        return
    print(machine_line("cpu", "float32, eval, no grad; each batch size in its own process", threads=args.threads))
    for batch in args.batches:
        cmd = [sys.executable, __file__, "--one", str(batch), "--repeats", str(args.repeats)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        result = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        print(
            f"FAST-VQA-B forward [{batch},3,32,224,224] ({result['threads']} threads, torch {result['torch']}): "
            f"best {result['best_s']:.2f} s ({result['per_clip_s']:.2f} s/clip; runs {result['all_s']}), "
            f"peak RSS {result['peak_rss_mib']:.0f} MiB"
        )


if __name__ == "__main__":
    main()
