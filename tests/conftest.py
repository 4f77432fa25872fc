"""Shared fixtures: a tiny random CLIP saved like a real model, and PyAV-made videos.

Nothing is downloaded: the CLIP folder comes from ``save_random_clip`` and is loaded back by
the code under test through ``from_pretrained``, the same path real users take.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory) -> Path:
    """Folder holding a 2-layer random CLIP (model + tokenizer), built once per test session."""
    from clifvqa.extract.random_clip import save_random_clip

    return save_random_clip(tmp_path_factory.mktemp("tiny-clip"), preset="tiny", seed=0)


@pytest.fixture(scope="session")
def video_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("videos")


@pytest.fixture
def make_video(video_cache):
    """Factory ``make_video(rel_path, root=None, **write_clip_kwargs) -> Path``.

    With ``root`` the clip is written at ``root/rel_path``; without it, clips are cached per
    argument set for the whole session (encoding is the slow part of many tests).
    """
    import shutil

    from clifvqa.extract.synth import write_clip

    def make(rel_path: str, root: Path | None = None, **kwargs) -> Path:
        suffix = Path(rel_path).suffix or ".mp4"
        tag = "_".join(f"{k}{v}" for k, v in sorted(kwargs.items()))
        cached = video_cache / f"clip_{tag or 'default'}{suffix}"
        if not cached.exists():
            write_clip(cached, **kwargs)
        if root is None:
            return cached
        dest = Path(root) / rel_path
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(cached, dest)
        return dest

    return make
