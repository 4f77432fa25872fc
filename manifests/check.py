"""``check_manifest``: every problem of a manifest file, with line numbers, in one pass."""

from __future__ import annotations

from pathlib import Path

from clifvqa.manifests.io import Problem, parse_manifest


def check_manifest(manifest_path: str | Path, root: str | Path | None = None, *, require_mos: bool = False) -> list[Problem]:
    """List the problems of ``manifest_path``, sorted by line; an empty list means clean.

    Reports what ``read_manifest`` refuses (bad header, wrong field count, unsafe paths,
    non-numeric MOS, bad split values, duplicate videos: every line of each), plus:

    - ``missing_mos``: an empty MOS, when ``require_mos`` is set or when other rows do have a
      MOS (a labelled manifest with holes). A manifest without any MOS is an extraction-only
      manifest and is not flagged.
    - ``missing_file``: with ``root``, a video that is not a file under ``root``.
    """
    manifest, problems = parse_manifest(manifest_path)
    flagged_mos = {p.line for p in problems if p.kind == "bad_mos"}
    labelled = require_mos or any(row.mos is not None for row in manifest.rows)
    for row in manifest.rows:
        if labelled and row.mos is None and row.line not in flagged_mos:
            problems.append(Problem(row.line, row.video, "missing_mos", "MOS is missing"))
        if root is not None and not (Path(root) / row.video).is_file():
            problems.append(Problem(row.line, row.video, "missing_file", f"no such file under {root}"))
    problems.sort(key=lambda p: p.line)
    return problems
