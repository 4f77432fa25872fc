"""The synthetic clips (clifvqa.testing.videos) are a function of their arguments only."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from clifvqa.testing.videos import write_clip
from clifvqa.video import VideoReader

# 192x160: the size of the mini experiment's synth-b clips that changed from run to run
CLIP = dict(num_frames=8, width=192, height=160, seed=7, crf=18)


def _frames(path) -> np.ndarray:
    with VideoReader(path) as reader:
        return np.stack([rgb for _, rgb in reader])


def test_the_same_arguments_give_the_same_pixels_call_after_call(tmp_path):
    # x264's AVX-512 code encoded these frames differently from one call to the next in one process
    # (3 outcomes in 8 calls on an AMD EPYC); its C code does not.
    first = _frames(write_clip(tmp_path / "a.mp4", **CLIP))
    for i in range(1, 6):
        np.testing.assert_array_equal(_frames(write_clip(tmp_path / f"{'a' * (i + 1)}.mp4", **CLIP)), first)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs a CPU affinity of at least 2 cores")
def test_the_same_arguments_give_the_same_pixels_whatever_the_cores(tmp_path):
    # x264's default is a thread per core, each encoding a slice of the frame: 1 core and 2 gave
    # other pixels.
    code = f"import sys; from clifvqa.testing.videos import write_clip; write_clip(sys.argv[1], **{CLIP!r})"

    def write_on(cpus: set[int], name: str) -> np.ndarray:
        subprocess.run([sys.executable, "-c", code, str(tmp_path / name)], check=True,
                       preexec_fn=lambda: os.sched_setaffinity(0, cpus))
        return _frames(tmp_path / name)

    cores = os.sched_getaffinity(0)
    np.testing.assert_array_equal(write_on(cores, "every.mp4"), write_on({min(cores)}, "one.mp4"))
