"""Random train/(val/)test splits: the paper's protocol of 10 random 80/20 splits.

Scheme (stable, documented so others can reproduce it without this code): the rows are
ordered by video key (so the file's row order does not matter); split ``i`` (0-based) draws
``perm = numpy.random.default_rng(seed + i).permutation(n)`` over that order; the first
``n_test = floor(n * test_fraction + 0.5)`` positions are ``test``, the next
``n_val = floor(n * val_fraction + 0.5)`` are ``val``, the rest ``train``. The written split
files, not this code, are the artifact to share: numpy does not promise the same permutation
across major versions.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np

from clifvqa.errors import ClifvqaError
from clifvqa.manifests.io import Manifest, write_manifest

_SPLIT_FILE = re.compile(r"^split_\d+\.csv$")


def _count(n: int, fraction: float) -> int:
    return math.floor(n * fraction + 0.5)  # round half up: 0.5 always goes the same way


def random_splits(
    manifest: Manifest,
    seeds: int = 10,
    test_fraction: float = 0.2,
    val_fraction: float = 0.0,
    seed: int = 0,
) -> list[Manifest]:
    """``seeds`` copies of ``manifest``, each with every row's ``split`` set by the scheme above.

    Any existing ``split`` column is replaced. Raises ValueError for fractions outside
    ``0 < test``, ``0 <= val``, ``test + val < 1``, for a split that would leave train or test
    empty, and for duplicate videos (a video must never be in both train and test).
    """
    if seeds < 1:
        raise ClifvqaError(f"seeds must be at least 1, got {seeds}")
    if not (0 < test_fraction < 1 and 0 <= val_fraction < 1 and test_fraction + val_fraction < 1):
        raise ClifvqaError(
            f"need 0 < test_fraction, 0 <= val_fraction and test + val < 1; got test={test_fraction}, "
            f"val={val_fraction}"
        )
    videos = manifest.videos
    dups = sorted(v for v, count in Counter(videos).items() if count > 1)
    if dups:
        raise ClifvqaError(f"manifest has duplicate videos ({', '.join(dups[:5])}); run 'clifvqa manifest check'")
    n = len(videos)
    n_test, n_val = _count(n, test_fraction), _count(n, val_fraction)
    if n_test < 1 or n - n_test - n_val < 1:
        raise ClifvqaError(f"{n} videos cannot be split into test={n_test}, val={n_val} and a non-empty train set")
    order = sorted(range(n), key=lambda i: videos[i])
    columns = list(manifest.columns)
    if "split" not in columns:
        columns.insert(columns.index("mos") + 1 if "mos" in columns else len(columns), "split")
    splits = []
    for i in range(seeds):
        perm = np.random.default_rng(seed + i).permutation(n)
        tags = ["train"] * n
        for rank, pos in enumerate(perm):
            if rank < n_test:
                tags[order[pos]] = "test"
            elif rank < n_test + n_val:
                tags[order[pos]] = "val"
        rows = [replace(row, split=tag, extra=dict(row.extra)) for row, tag in zip(manifest.rows, tags)]
        splits.append(Manifest(rows, columns, None))
    return splits


def write_splits(splits: list[Manifest], out_dir: str | Path, *, overwrite: bool = False) -> list[Path]:
    """Write ``splits`` as ``out_dir/split_00.csv``, ``split_01.csv``, ... and return the paths.

    Refuses (``FileExistsError``) when ``out_dir`` already holds ``split_*.csv`` files unless
    ``overwrite=True``; then the old split files that are not rewritten are removed, so the
    folder never mixes two sets of splits.
    """
    out_dir = Path(out_dir)
    existing = sorted(p for p in out_dir.glob("split_*.csv") if _SPLIT_FILE.match(p.name)) if out_dir.is_dir() else []
    if existing and not overwrite:
        raise FileExistsError(
            f"{out_dir} already holds {len(existing)} split files ({existing[0].name}, ...); pass overwrite=True / "
            "--force to replace them"
        )
    width = max(2, len(str(len(splits) - 1)))
    paths = [write_manifest(m, out_dir / f"split_{i:0{width}d}.csv", overwrite=overwrite) for i, m in enumerate(splits)]
    for old in set(existing) - set(paths):
        old.unlink()
    return paths
