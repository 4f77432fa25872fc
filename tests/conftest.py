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
    from clifvqa.testing.clip import save_random_clip

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

    from clifvqa.testing.videos import write_clip

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


@pytest.fixture
def serve_directory():
    """Factory ``serve_directory(folder) -> "http://127.0.0.1:PORT"``: a read-only static file
    server on loopback that, like most web servers, does not list directories. Stopped after
    the test."""
    import functools
    import http.server
    import threading

    class NoListing(http.server.SimpleHTTPRequestHandler):
        def list_directory(self, path):
            self.send_error(404, "directory listing disabled")

        def log_message(self, *args):
            pass

    servers = []

    def serve(folder: Path) -> str:
        handler = functools.partial(NoListing, directory=str(folder))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def make_train_set(make_video):
    """Factory ``make_train_set(root, n=6, r=4, store="features.zarr", keys=None, mos=None,
    split=None, num_rows=None) -> SimpleNamespace(manifest, videos, store, keys, mos)``.

    A small training set for stage two without CLIP: ``n`` synthetic 16-frame 192×144 clips
    under ``root/videos``, a store of synthetic features (``features.synth``; per video
    ``num_rows[i]`` or 3 + i frames of rows) and a manifest ``root/manifest.csv`` (with a
    ``split`` column when ``split`` lists one tag per video).
    """
    from types import SimpleNamespace

    from clifvqa.features.sources import sha256_file, source_identity
    from clifvqa.features.store import create_or_open_store
    from clifvqa.testing.stores import synthetic_provenance, synthetic_video

    def make(root: Path, n: int = 6, r: int = 4, store: str = "features.zarr", keys=None, mos=None,
             split=None, num_rows=None, provenance=None) -> SimpleNamespace:
        root = Path(root)
        keys = list(keys or [f"clips/v{i}.mp4" for i in range(n)])
        mos = list(mos or [1.0 + 0.5 * i + 0.1 * (i % 3) for i in range(len(keys))])
        for i, key in enumerate(keys):
            make_video(key, root=root / "videos", num_frames=16, width=192, height=144, seed=i % 4, blur=i % 3)
        prov = provenance or synthetic_provenance(r=r)
        with create_or_open_store(root / store, prov) as st:
            for i, key in enumerate(keys):
                rows = num_rows[i] if num_rows else 3 + i
                video = synthetic_video(prov, seed=i, num_rows=rows, source=key)
                # tied to the real file, as extraction ties it (stale entries are refused)
                video["attrs"].update(source_identity(root / "videos" / key),
                                      source_sha256=sha256_file(root / "videos" / key))
                st.write_video(key, **video)
            st.finalize()
        lines = ["video,mos" + (",split" if split else "")]
        for i, key in enumerate(keys):
            lines.append(f"{key},{mos[i]}" + (f",{split[i]}" if split else ""))
        (root / "manifest.csv").write_text("\n".join(lines) + "\n")
        return SimpleNamespace(
            manifest=root / "manifest.csv", videos=root / "videos", store=root / store, keys=keys, mos=mos
        )

    return make


@pytest.fixture
def one_torch_thread():
    """One intra-op torch thread for the test: tiny models on a shared 2-core machine run far
    faster without OpenMP contention."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _torch_threads_kept():
    """Every test ends with torch's intra-op thread count it started with: float sums depend on
    it, and tests compare numbers across runs (a library entry point such as the GPU check's
    ``main`` or the demos may change it while it runs)."""
    import torch

    before = torch.get_num_threads()
    yield
    if torch.get_num_threads() != before:
        torch.set_num_threads(before)


@pytest.fixture(params=[1, 2, 4], ids=lambda n: f"threads{n}")
def torch_threads(request) -> int:
    """Runs the test at 1, 2 and 4 intra-op torch threads (4 also on a 2-core machine: what
    changes the numbers is how the work is partitioned, not the cores); the autouse fixture
    above gives the count back."""
    import torch

    torch.set_num_threads(request.param)
    return request.param
