"""``check_manifest``: every problem of a manifest file, with line numbers, in one pass."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from clifvqa.manifests.io import Problem, parse_manifest

RAW_YUV = (
    "raw YUV has no container: PyAV cannot decode it without being told its frame size and pixel "
    "format; convert it losslessly first (e.g. ffmpeg -f rawvideo -pix_fmt yuv420p -s WxH -r FPS "
    "-i in.yuv -c:v libx264 -qp 0 out.mp4) and list the converted file"
)
"""The message of a ``raw_yuv`` problem."""


@dataclass
class ManifestCheck:
    """What :func:`check_manifest` found.

    Attributes:
        problems: every problem, sorted by line; empty means clean.
        videos: distinct videos of the readable rows.
        present: how many of them are files under ``root`` (None without ``root``).
        root: the dataset folder checked, or None.
    """

    problems: list[Problem]
    videos: int
    present: int | None = None
    root: Path | None = None

    def presence_line(self) -> str | None:
        """``k of n videos present under ROOT``, with a hint when fewer than half are; None
        without ``root``."""
        if self.present is None:
            return None
        text = f"{self.present} of {self.videos} videos present under {self.root}"
        if self.present * 2 < self.videos:
            text += " -- is --root right?"
        return text


def check_manifest(manifest_path: str | Path, root: str | Path | None = None, *,
                   require_mos: bool = False) -> ManifestCheck:
    """Check ``manifest_path``; ``result.problems`` lists the problems, sorted by line.

    Reports what ``read_manifest`` refuses (bad header, wrong field count, unsafe paths,
    non-numeric MOS, bad split values, duplicate videos: every line of each), plus:

    - ``missing_mos``: an empty MOS, when ``require_mos`` is set or when other rows do have a
      MOS (a labelled manifest with holes). A manifest without any MOS is an extraction-only
      manifest and is not flagged.
    - ``raw_yuv``: a ``.yuv`` video, which extraction cannot decode (see :data:`RAW_YUV`).
    - ``missing_file``: with ``root``, a video that is not a file under ``root``; the result
      also counts the videos present.
    """
    manifest, problems = parse_manifest(manifest_path)
    flagged_mos = {p.line for p in problems if p.kind == "bad_mos"}
    labelled = require_mos or any(row.mos is not None for row in manifest.rows)
    present: set[str] = set()
    for row in manifest.rows:
        if labelled and row.mos is None and row.line not in flagged_mos:
            problems.append(Problem(row.line, row.video, "missing_mos", "MOS is missing"))
        if os.path.splitext(row.video)[1].lower() == ".yuv":
            problems.append(Problem(row.line, row.video, "raw_yuv", RAW_YUV))
        if root is not None:
            if (Path(root) / row.video).is_file():
                present.add(row.video)
            else:
                problems.append(Problem(row.line, row.video, "missing_file", f"no such file under {root}"))
    problems.sort(key=lambda p: p.line)
    videos = len({row.video for row in manifest.rows})
    return ManifestCheck(problems, videos, None if root is None else len(present),
                         None if root is None else Path(root))
