"""Manifest CSV files: read (collecting every problem), write (atomically), and the row model.

Format: a UTF-8 CSV with a header. ``video`` (required) is the dataset-relative POSIX path and
store key; ``mos`` is a float or empty (extraction-only manifests); ``split`` is ``train``,
``val``, ``test`` or empty; any other column is kept as text and written back in its place.
The three standard names match case-insensitively and ignore surrounding spaces (``Video,MOS``
reads as ``video,mos``, and is written back so), as the label-file importers match columns.
Line numbers count the header as line 1.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from clifvqa._atomic import atomic_path
from clifvqa.errors import MAX_LISTED, ClifvqaError
from clifvqa.manifests.paths import UnsafePathError, validate_video_path

SPLITS: tuple[str, ...] = ("train", "val", "test")
STANDARD_COLUMNS: tuple[str, ...] = ("video", "mos", "split")
# What a header problem says is expected (manifests are often hand-made or exported tables).
EXPECTED_HEADER = (
    "line 1 must be a header naming the video path column 'video' (any case), e.g. 'video,mos' or "
    "'video,mos,split'; for another table use `clifvqa manifest import --format csv --video-col NAME`"
)


@dataclass
class ManifestRow:
    """One video: its key, MOS (None when unlabelled), split (None when untagged), the extra
    columns as text, and the file line it came from (0 for rows built in memory)."""

    video: str
    mos: float | None = None
    split: str | None = None
    extra: dict[str, str] = field(default_factory=dict)
    line: int = 0


@dataclass
class Manifest:
    """A list of rows plus the column order to write them back in.

    ``columns`` is the full header (standard and extra columns) in file order; ``write_manifest``
    adds ``video``/``mos``/``split`` when missing and any extra key a row has beyond it.
    """

    rows: list[ManifestRow]
    columns: list[str] = field(default_factory=lambda: ["video", "mos"])
    path: Path | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[ManifestRow]:
        return iter(self.rows)

    @property
    def videos(self) -> list[str]:
        """The video keys in row order."""
        return [row.video for row in self.rows]

    @property
    def extra_columns(self) -> list[str]:
        """The non-standard columns, in file order."""
        return [c for c in self.columns if c not in STANDARD_COLUMNS]

    def subset(self, split: str) -> Manifest:
        """The rows tagged ``split`` (``train``/``val``/``test``), same columns."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        return Manifest([r for r in self.rows if r.split == split], list(self.columns), self.path)

    @classmethod
    def from_videos(cls, videos: list[str]) -> Manifest:
        """An extraction-only manifest (empty MOS) for ``videos``, each checked by the path rule."""
        return cls([ManifestRow(validate_video_path(v)) for v in videos], ["video", "mos"])


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a manifest line.

    ``kind`` is one of: ``header``, ``fields``, ``unsafe_path``, ``bad_mos``, ``missing_mos``,
    ``bad_split``, ``duplicate``, ``missing_file``. ``message`` is self-contained.
    """

    line: int
    video: str
    kind: str
    message: str


class ManifestError(ClifvqaError):
    """A manifest file with problems; ``problems`` lists them all, ``path`` names the file."""

    def __init__(self, path: str | Path, problems: list[Problem]) -> None:
        self.path = Path(path)
        self.problems = problems
        lines = [f"{self.path.name} line {p.line}: {p.message}" for p in problems[:MAX_LISTED]]
        if len(problems) > MAX_LISTED:
            lines.append(f"... and {len(problems) - MAX_LISTED} more problems")
        summary = f"{self.path}: {len(problems)} problem{'s' if len(problems) != 1 else ''}"
        super().__init__(summary + "\n" + "\n".join(lines))


def standard_column(name: str) -> str:
    """``video``/``mos``/``split`` for a header cell naming one in any case or with surrounding
    spaces (``" Video"``, ``MOS``); any other name unchanged."""
    folded = name.strip().lower()
    return folded if folded in STANDARD_COLUMNS else name


def parse_mos(text: str) -> float | None:
    """MOS cell text -> float, None when empty; ValueError for text that is not a finite number."""
    text = text.strip()
    if text == "":
        return None
    value = float(text)  # raises ValueError for non-numbers
    if not math.isfinite(value):
        raise ValueError(f"could not convert string to a finite float: {text!r}")
    return value


def parse_manifest(path: str | Path) -> tuple[Manifest, list[Problem]]:
    """Read ``path`` without stopping at errors: the manifest of usable rows and every problem.

    A row whose video path is unsafe is left out of the manifest; a row with a bad MOS or split
    is kept with that value None. ``read_manifest`` is the strict front end used everywhere
    else; ``check_manifest`` adds file-existence checks on top.
    """
    path = Path(path)
    try:
        return _parse_file(path)
    except UnicodeDecodeError as exc:
        raise ClifvqaError(f"{path}: not UTF-8 text ({exc}); save it as a UTF-8 CSV") from None


def _parse_file(path: Path) -> tuple[Manifest, list[Problem]]:
    problems: list[Problem] = []
    rows: list[ManifestRow] = []
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            return Manifest([], [], path), [Problem(1, "", "header", f"file is empty; {EXPECTED_HEADER}")]
        given, header = header, [standard_column(h) for h in header]
        if "video" not in header:
            columns = ", ".join(given) or "none"
            message = f"header has no 'video' column (columns: {columns}); {EXPECTED_HEADER}"
            problems.append(Problem(1, "", "header", message))
            return Manifest([], list(header), path), problems
        duplicated = sorted({c for c in header if header.count(c) > 1})
        if duplicated:
            spellings = [(g, h) for g, h in zip(given, header) if h in duplicated]
            as_given = ", ".join(repr(g) for g, _ in spellings)
            message = f"header repeats column(s) {', '.join(duplicated)}"
            if any(g != h for g, h in spellings):
                message += f" (as {as_given}: video, mos and split match case-insensitively)"
            problems.append(Problem(1, "", "header", message))
            return Manifest([], list(header), path), problems
        start = reader.line_num + 1
        for fields in reader:
            line, start = start, reader.line_num + 1
            if not fields:
                continue  # blank line: not a row
            if len(fields) != len(header):
                video = fields[header.index("video")] if len(fields) > header.index("video") else ""
                problems.append(
                    Problem(line, video, "fields", f"has {len(fields)} fields, the header has {len(header)}")
                )
                continue
            cells = dict(zip(header, fields))
            row = _parse_row(cells, line, problems)
            if row is not None:
                rows.append(row)
    problems.extend(_duplicates([(row.video, row.line) for row in rows]))
    problems.sort(key=lambda p: p.line)
    return Manifest(rows, list(header), path), problems


def _parse_row(cells: dict[str, str], line: int, problems: list[Problem]) -> ManifestRow | None:
    video = cells["video"]
    try:
        validate_video_path(video)
    except UnsafePathError as exc:
        problems.append(Problem(line, video, "unsafe_path", str(exc)))
        return None
    mos = None
    if "mos" in cells:
        try:
            mos = parse_mos(cells["mos"])
        except ValueError:
            problems.append(Problem(line, video, "bad_mos", f"MOS {cells['mos']!r} is not a number"))
    split = cells.get("split", "").strip() or None
    if split is not None and split not in SPLITS:
        problems.append(
            Problem(line, video, "bad_split", f"split {split!r} is not one of {', '.join(SPLITS)} (or empty)")
        )
        split = None
    extra = {k: v for k, v in cells.items() if k not in STANDARD_COLUMNS}
    return ManifestRow(video, mos, split, extra, line)


def _duplicates(located: list[tuple[str, int]]) -> list[Problem]:
    """A ``duplicate`` problem on every line of each video key that occurs more than once."""
    lines: dict[str, list[int]] = defaultdict(list)
    for video, line in located:
        lines[video].append(line)
    problems = []
    for video, where in lines.items():
        if len(where) > 1:
            listed = ", ".join(map(str, where))
            for line in where:
                problems.append(
                    Problem(line, video, "duplicate", f"video {video!r} appears {len(where)} times (lines {listed})")
                )
    return problems


def read_manifest(path: str | Path) -> Manifest:
    """Read a manifest CSV; raise ``ManifestError`` listing every problem (file and line each)."""
    manifest, problems = parse_manifest(path)
    if problems:
        raise ManifestError(path, problems)
    return manifest


def output_columns(manifest: Manifest) -> list[str]:
    """The header ``write_manifest`` uses: ``manifest.columns``, plus ``video``/``mos`` when
    missing, ``split`` when a row has one, and extra keys of rows not yet listed (first seen)."""
    columns = list(manifest.columns)
    if "video" not in columns:
        columns.insert(0, "video")
    if "mos" not in columns:
        columns.insert(columns.index("video") + 1, "mos")
    if "split" not in columns and any(row.split is not None for row in manifest.rows):
        columns.insert(columns.index("mos") + 1, "split")
    seen = set(columns)
    for row in manifest.rows:
        for key in row.extra:
            if key in STANDARD_COLUMNS:
                raise ValueError(f"row {row.video!r}: extra column {key!r} clashes with a standard column")
            if key not in seen:
                columns.append(key)
                seen.add(key)
    return columns


def write_manifest(manifest: Manifest, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``manifest`` to ``path`` as CSV and return the path.

    Every row is checked first (path rule, MOS finite, split value, no duplicate video), so a bad
    manifest raises before anything is written; the file is written to a temporary name and
    renamed, so an existing file is never left half-written. An existing ``path`` is refused
    (``FileExistsError``) unless ``overwrite=True``.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists (pass overwrite=True / --force to replace it)")
    columns = output_columns(manifest)
    problems: list[Problem] = []
    located = []
    for i, row in enumerate(manifest.rows):
        where = row.line or i + 2  # the line this row will have in the new file
        located.append((row.video, where))
        try:
            validate_video_path(row.video)
        except UnsafePathError as exc:
            problems.append(Problem(where, row.video, "unsafe_path", str(exc)))
        if row.mos is not None and not math.isfinite(row.mos):
            problems.append(Problem(where, row.video, "bad_mos", f"MOS {row.mos!r} is not a finite number"))
        if row.split is not None and row.split not in SPLITS:
            problems.append(
                Problem(where, row.video, "bad_split", f"split {row.split!r} is not one of {', '.join(SPLITS)}")
            )
    problems.extend(_duplicates(located))
    if problems:
        problems.sort(key=lambda p: p.line)
        raise ManifestError(path, problems)
    # Readers never see a half-written manifest.
    with atomic_path(path) as tmp, open(tmp, "x", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(columns)
        for row in manifest.rows:
            standard = {
                "video": row.video,
                "mos": "" if row.mos is None else repr(float(row.mos)),
                "split": row.split or "",
            }
            writer.writerow([standard[c] if c in STANDARD_COLUMNS else str(row.extra.get(c, "")) for c in columns])
    return path
