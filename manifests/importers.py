"""Turn the official label files of VQA datasets into manifests.

Every format ends in the same place: rows of ``prefix + video name`` and MOS, with the source's
other columns kept as extra columns. No row is dropped silently: a row that cannot be used
(missing or non-numeric MOS, missing name, unsafe path, duplicate video) is reported in
``ImportResult.skipped`` with its line number and the reason.

Formats (see docs/MANIFESTS.md for example lines):

``fastvqa``      FAST-VQA/DOVER label text without header: ``path, duration, fps, mos``
``konvid``       ``KoNViD_1k_attributes.csv``: ``flickr_id`` -> ``<flickr_id>.mp4``, ``MOS``
``livevqc``      LIVE-VQC ``data.mat``: ``video_list`` (cell array of names), ``mos``
``lsvq``         LSVQ ``labels_train_test.csv`` / ``labels_test_1080p.csv``: ``name`` -> ``<name>.mp4``
``youtube-ugc``  YouTube-UGC MOS sheet (CSV export, or the .xlsx with openpyxl): ``vid``, ``MOS``
``csv``          any CSV with a header: ``video_col`` and ``mos_col`` options
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from clifvqa.errors import ClifvqaError
from clifvqa.manifests.io import SPLITS, STANDARD_COLUMNS, Manifest, ManifestRow, parse_mos
from clifvqa.manifests.paths import UnsafePathError, is_video_name, validate_video_path

FORMATS: tuple[str, ...] = ("fastvqa", "konvid", "livevqc", "lsvq", "youtube-ugc", "csv")

# Options each format accepts besides ``prefix`` (all optional).
_OPTIONS: dict[str, frozenset[str]] = {
    "fastvqa": frozenset({"split"}),
    "konvid": frozenset({"video_col", "mos_col", "split"}),
    "livevqc": frozenset({"split"}),
    "lsvq": frozenset({"video_col", "mos_col", "split"}),
    "youtube-ugc": frozenset({"video_col", "mos_col", "split", "ext"}),
    "csv": frozenset({"video_col", "mos_col", "split"}),
}


class LabelFormatError(ClifvqaError):
    """A label file that cannot be imported at all (missing column, wrong structure)."""


@dataclass
class ImportResult:
    """The imported manifest and every skipped source row as ``(line, reason)``.

    ``unit`` names what the numbers count: ``line`` (text/CSV line, 1-based, header included),
    ``row`` (spreadsheet row) or ``entry`` (1-based index into a .mat array).
    """

    manifest: Manifest
    skipped: list[tuple[int, str]] = field(default_factory=list)
    unit: str = "line"


def import_labels(fmt: str, src: str | Path, prefix: str = "", **opts: str) -> ImportResult:
    """Read the label file ``src`` in format ``fmt`` (one of ``FORMATS``) into a manifest.

    Args:
        fmt: the source format.
        src: the label file.
        prefix: folder prepended to every video name (``KoNViD_1k_videos`` or
            ``KoNViD_1k_videos/``; a missing trailing ``/`` is added).
        **opts: ``video_col``/``mos_col`` (column names, case-insensitive) for the table
            formats; ``ext`` for ``youtube-ugc`` (default ``.mkv``); ``split`` (``train``/``val``/
            ``test``) to tag every row; for ``lsvq`` it applies only when the file carries no
            official split and defaults to ``train``.
    Raises:
        LabelFormatError: the file as a whole cannot be imported (e.g. a required column is
            missing), the format or an option is unknown, or the prefix is unsafe.
    """
    if fmt not in FORMATS:
        raise LabelFormatError(f"unknown label format {fmt!r}; choose one of {', '.join(FORMATS)}")
    unknown = sorted(set(opts) - _OPTIONS[fmt])
    if unknown:
        raise LabelFormatError(
            f"format {fmt!r} does not take option(s) {', '.join(unknown)} (it takes: "
            f"{', '.join(sorted(_OPTIONS[fmt]))})"
        )
    split = opts.get("split")
    if split is not None and split not in SPLITS:
        raise LabelFormatError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    src = Path(src)
    collector = _Collector(_normalise_prefix(prefix), split)
    if fmt == "fastvqa":
        _import_fastvqa(src, collector)
    elif fmt == "livevqc":
        collector.unit = "entry"
        _import_livevqc(src, collector)
    elif fmt == "konvid":
        _import_table(
            src,
            collector,
            opts.get("video_col", "flickr_id"),
            opts.get("mos_col", "mos"),
            _with_ext(".mp4", always=True),
        )
    elif fmt == "lsvq":
        _import_lsvq(src, collector, opts)
    elif fmt == "youtube-ugc":
        ext = opts.get("ext", ".mkv")
        ext = ext if ext.startswith(".") else f".{ext}"
        mos_col = opts.get("mos_col") or ("mos", "mos full")
        _import_table(src, collector, opts.get("video_col", "vid"), mos_col, _with_ext(ext, always=False))
    else:  # csv
        _import_table(
            src, collector, opts.get("video_col", "video"), opts.get("mos_col", "mos"), str, split_from_column=True
        )
    return collector.result()


def _normalise_prefix(prefix: str) -> str:
    """'' stays ''; otherwise a safe folder path ending in exactly one '/'."""
    if not prefix:
        return ""
    folder = prefix[:-1] if prefix.endswith("/") else prefix
    try:
        validate_video_path(folder)
    except UnsafePathError as exc:
        raise LabelFormatError(f"prefix {prefix!r} is unsafe: {exc.reason}") from None
    return folder + "/"


def _with_ext(ext: str, *, always: bool) -> Callable[[str], str]:
    """Name -> file name: add ``ext`` (always, or only when the name has no video extension)."""
    return lambda name: name + ext if always or not is_video_name(name) else name


class _Collector:
    """Accumulates imported rows and skipped lines; enforces the path rule and unique videos."""

    def __init__(self, prefix: str, split: str | None) -> None:
        self.prefix = prefix
        self.split = split
        self.rows: list[ManifestRow] = []
        self.skipped: list[tuple[int, str]] = []
        self.columns: list[str] = ["video", "mos"]
        self.unit = "line"
        self._first_line: dict[str, int] = {}

    def skip(self, line: int, reason: str) -> None:
        self.skipped.append((line, reason))

    def add_columns(self, names: list[str]) -> None:
        self.columns += [n for n in names if n not in self.columns]

    def add(
        self, line: int, name: str, mos_text: str, *, split: str | None = None, extra: dict[str, str] | None = None
    ) -> None:
        name = name.strip()
        if not name:
            return self.skip(line, "missing video name")
        video = self.prefix + name
        try:
            validate_video_path(video)
        except UnsafePathError as exc:
            return self.skip(line, str(exc))
        try:
            mos = parse_mos(mos_text)
        except ValueError:
            return self.skip(line, f"{video}: MOS {mos_text!r} is not a number")
        if mos is None:
            return self.skip(line, f"{video}: missing MOS")
        if video in self._first_line:
            return self.skip(line, f"{video}: duplicate of {self.unit} {self._first_line[video]}")
        self._first_line[video] = line
        self.rows.append(ManifestRow(video, mos, split or self.split, dict(extra or {}), line=0))

    def result(self) -> ImportResult:
        columns = list(self.columns)
        if any(row.split for row in self.rows):
            columns.insert(2, "split")
        return ImportResult(Manifest(self.rows, columns), sorted(self.skipped), self.unit)


def _import_fastvqa(src: Path, out: _Collector) -> None:
    """``path, duration, fps, mos`` per line; -1 (unknown) duration/fps become empty cells."""
    out.add_columns(["duration", "fps"])
    with open(src, encoding="utf-8-sig") as fh:
        for line, text in enumerate(fh, start=1):
            if not text.strip():
                continue
            # rsplit: the three numbers never hold commas, a path might.
            fields = [f.strip() for f in text.rstrip("\r\n").rsplit(",", 3)]
            if len(fields) != 4:
                out.skip(line, f"expected 4 comma-separated fields (path, duration, fps, mos), found {len(fields)}")
                continue
            path, duration, fps, mos = fields
            try:
                extra = {"duration": _unknown_as_empty("duration", duration), "fps": _unknown_as_empty("fps", fps)}
            except ValueError as exc:
                out.skip(line, f"{path}: {exc}")
                continue
            out.add(line, path, mos, extra=extra)


def _unknown_as_empty(column: str, value: str) -> str:
    """FAST-VQA writes -1 for an unknown duration/fps: keep known numbers verbatim, -1 as ''."""
    try:
        number = float(value)
    except ValueError:
        raise LabelFormatError(f"{column} {value!r} is not a number") from None
    return "" if number < 0 else value


def _import_livevqc(src: Path, out: _Collector) -> None:
    """LIVE-VQC ``data.mat``: ``video_list`` cell array (scipy gives nested object arrays) and ``mos``."""
    import numpy as np
    import scipy.io

    try:
        mat = scipy.io.loadmat(str(src))
    except NotImplementedError as exc:  # MATLAB v7.3 files are HDF5
        raise LabelFormatError(f"{src}: {exc}; re-save it in MATLAB with save(..., '-v7')") from None
    except Exception as exc:
        # scipy fails on other or damaged files with many types (MatReadError, ValueError "Unknown mat file
        # type, version 68, 95", IndexError, OSError, zlib.error); loadmat never executes what it reads.
        raise LabelFormatError(
            f"{src} cannot be read as a MATLAB .mat file ({_what_it_looks_like(src, exc)}); "
            "--format livevqc expects the official LIVE-VQC data.mat holding 'video_list' and 'mos' "
            "(for a text table of names and MOS use --format csv)"
        ) from None
    keys = {k.lower(): k for k in mat if not k.startswith("__")}
    for needed in ("video_list", "mos"):
        if needed not in keys:
            raise LabelFormatError(f"{src}: no '{needed}' variable (variables: {', '.join(sorted(keys.values()))})")
    names = np.asarray(mat[keys["video_list"]]).reshape(-1)
    mos = np.asarray(mat[keys["mos"]]).reshape(-1)
    if len(names) != len(mos):
        raise LabelFormatError(f"{src}: video_list has {len(names)} entries but mos has {len(mos)}")
    for entry, (cell, value) in enumerate(zip(names, mos), start=1):
        name = _mat_string(cell)
        if name is None:
            out.skip(entry, f"video_list entry is not a single string: {cell!r}")
            continue
        out.add(entry, name, str(value))


def _what_it_looks_like(src: Path, exc: Exception) -> str:
    """A few words on what a file that scipy cannot read as .mat holds, for the error message."""
    with open(src, "rb") as fh:
        head = fh.read(512)
    if not head:
        return "it is empty"
    if head.startswith(b"MATLAB"):  # a real .mat header: the rest is damaged
        reason = str(exc) or type(exc).__name__
        return f"it has a MATLAB header, but the rest cannot be read: {reason}; a truncated or damaged copy?"
    try:
        text = head.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = "\0"  # binary (or text cut inside a character: rare enough to call binary)
    if any(c < " " and c not in "\t\r\n" for c in text):
        return f"it is binary, starting with {head[:16]!r}"
    first = text.splitlines()[0] if text.strip() else ""
    return f"it looks like text; line 1 is {first[:80]!r}"


def _mat_string(value: object) -> str | None:
    """Unwrap scipy's cell/char nesting (``array([array(['A001.mp4'])], dtype=object)``) to str."""
    import numpy as np

    while isinstance(value, np.ndarray):
        if value.size != 1:
            return None
        value = value.reshape(-1)[0]
    return str(value).strip() if isinstance(value, str) else None


def _import_lsvq(src: Path, out: _Collector, opts: dict[str, str]) -> None:
    """LSVQ: ``is_test`` column -> test/train; a ``*1080p*`` file -> all test, ``lsvq_set=test-1080p``;
    otherwise every row gets ``split`` (default ``train``)."""
    to_name = _with_ext(".mp4", always=False)
    if "1080p" in src.name.lower():
        out.add_columns(["lsvq_set"])
        _import_table(src, out, opts.get("video_col", "name"), opts.get("mos_col", "mos"), to_name,
                      fixed={"split": "test", "lsvq_set": "test-1080p"})
        return
    if out.split is None:
        out.split = "train"
    _import_table(src, out, opts.get("video_col", "name"), opts.get("mos_col", "mos"), to_name, is_test_column=True)


_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}


def _import_table(
    src: Path,
    out: _Collector,
    video_col: str,
    mos_col: str | tuple[str, ...],
    to_name: Callable[[str], str],
    *,
    split_from_column: bool = False,
    is_test_column: bool = False,
    fixed: dict[str, str] | None = None,
) -> None:
    """Import a table with a header. Columns are matched case-insensitively; every column not
    consumed (video, MOS, split/is_test) is kept, renamed ``source_<name>`` if it would clash
    with a manifest column."""
    header, records = _read_table(src, out)
    video_key = _find_column(header, (video_col,), src, "video_col")
    mos_key = _find_column(header, (mos_col,) if isinstance(mos_col, str) else mos_col, src, "mos_col")
    lower = {h.strip().lower(): h for h in header}
    split_key = lower.get("split") if split_from_column else None
    test_key = lower.get("is_test") if is_test_column else None
    consumed = {video_key, mos_key, split_key, test_key}
    kept = {h: (f"source_{h}" if h.strip().lower() in STANDARD_COLUMNS else h) for h in header if h not in consumed}
    out.add_columns(list(kept.values()))
    for line, values in records:
        if len(values) != len(header):
            out.skip(line, f"has {len(values)} fields, the header has {len(header)}")
            continue
        cells = dict(zip(header, values))
        split = (fixed or {}).get("split")
        if split_key is not None and cells[split_key].strip():
            split = cells[split_key].strip()
            if split not in SPLITS:
                out.skip(line, f"split {split!r} is not one of {', '.join(SPLITS)} (or empty)")
                continue
        if test_key is not None:
            flag = cells[test_key].strip().lower()
            if flag not in _TRUE | _FALSE:
                out.skip(line, f"is_test {cells[test_key]!r} is not True/False/1/0")
                continue
            split = "test" if flag in _TRUE else "train"
        name = cells[video_key].strip()
        extra = {new: cells[old] for old, new in kept.items()}
        extra.update({k: v for k, v in (fixed or {}).items() if k != "split"})
        out.add(line, to_name(name) if name else "", cells[mos_key], split=split, extra=extra)


def _find_column(header: list[str], candidates: tuple[str, ...], src: Path, option: str) -> str:
    lower = {h.strip().lower(): h for h in header}
    for name in candidates:
        if name.strip().lower() in lower:
            return lower[name.strip().lower()]
    wanted = " or ".join(repr(c) for c in candidates)
    raise LabelFormatError(
        f"{src}: no column {wanted} (columns: {', '.join(header)}); name the right one with "
        f"--{option.replace('_', '-')}"
    )


def _read_table(src: Path, out: _Collector) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header and ``(line, values)`` records of a CSV, or of an .xlsx/.xlsm sheet (openpyxl)."""
    if src.suffix.lower() in (".xlsx", ".xlsm"):
        out.unit = "row"
        return _read_xlsx(src)
    with open(src, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            raise LabelFormatError(f"{src}: file is empty")
        records = []
        start = reader.line_num + 1
        for values in reader:
            line, start = start, reader.line_num + 1
            if values:
                records.append((line, values))
    return header, records


def _read_xlsx(src: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    try:
        import openpyxl
    except ImportError:
        raise LabelFormatError(
            f"{src}: reading .xlsx needs openpyxl (pip install openpyxl), or export the sheet to CSV and import that"
        ) from None
    book = openpyxl.load_workbook(src, read_only=True, data_only=True)
    try:
        rows = list(book.worksheets[0].iter_rows(values_only=True))
    finally:
        book.close()
    if not rows:
        raise LabelFormatError(f"{src}: the first sheet is empty")
    cell = lambda v: "" if v is None else str(v)  # noqa: E731
    header = [cell(v) for v in rows[0]]
    records = [
        (n, [cell(v) for v in row]) for n, row in enumerate(rows[1:], start=2) if any(v is not None for v in row)
    ]
    return header, records
