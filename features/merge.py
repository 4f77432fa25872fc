"""``store merge`` and ``store convert``: copy complete videos and failure records into a new
store, bit-exact, after checking that every source was made with the same settings.

Both build the output next to its final path and rename it into place when done, so a failed
merge or conversion leaves no half-written store behind (and never touches the sources).
Output backend from the output name: ``.zarr`` directory, ``.h5``/``.hdf5``, ``.zarr.zip``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clifvqa._atomic import install_new, remove_abandoned, temporary_sibling
from clifvqa.errors import MAX_LISTED, ClifvqaError
from clifvqa.features.provenance import require_same_features
from clifvqa.features.store import (
    FeatureStore,
    StoreError,
    create_or_open_store,
    describe_ignored,
    is_url,
    local_path,
    open_store,
    store_kind,
)

PREFER_CHOICES = ("first", "last")
BUILDING = "building"  # the label of an output's temporary sibling while it is written


MAX_RECORDED = 1000
"""The most ignored paths per source the output's provenance records (``left_out``)."""


class PartialSourceError(StoreError):
    """A source holds things a merge or conversion would leave out (see :func:`merge_stores`)."""


class MergeConflictError(ClifvqaError):
    """Sources hold different features for the same videos (``keys``) and no preference given."""

    def __init__(self, message: str, keys: list[str]) -> None:
        super().__init__(message)
        self.keys = keys


MergeConflict = MergeConflictError  # deprecated alias: the former name


@dataclass
class MergeReport:
    """What a merge or conversion wrote.

    Attributes:
        out: the output store.
        sources: the input stores, in order.
        videos: complete videos written.
        identical_duplicates: keys complete in several sources with identical data (taken once).
        resolved_conflicts: keys with differing data where ``prefer`` chose a source.
        failures: failure records written.
        failures_dropped: failure records not carried because the video is complete somewhere.
        incomplete_skipped: incomplete entries (left by crashed runs) not copied.
        leftovers_removed: half-built outputs of killed merges/conversions to ``out`` (removed).
        left_out: per source, what was left out with ``allow_partial`` (also in the output's
            provenance, ``left_out``).
    """

    out: str
    sources: list[str]
    videos: int = 0
    identical_duplicates: list[str] = field(default_factory=list)
    resolved_conflicts: list[str] = field(default_factory=list)
    failures: int = 0
    failures_dropped: int = 0
    incomplete_skipped: int = 0
    leftovers_removed: list[str] = field(default_factory=list)
    left_out: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> str:
        """One line per fact, for the CLI."""
        lines = [f"wrote {self.out}: {self.videos} videos, {self.failures} failure records "
                 f"(from {len(self.sources)} store{'s' if len(self.sources) != 1 else ''})"]
        if self.identical_duplicates:
            lines.append(f"{len(self.identical_duplicates)} identical duplicate videos taken once")
        if self.resolved_conflicts:
            lines.append(f"{len(self.resolved_conflicts)} conflicting videos resolved by --prefer: "
                         + _listed(self.resolved_conflicts))
        if self.failures_dropped:
            lines.append(f"{self.failures_dropped} failure records dropped (video complete elsewhere)")
        if self.incomplete_skipped:
            lines.append(f"{self.incomplete_skipped} incomplete entries skipped")
        for part in self.left_out:
            what = [f"{part['ignored_count']} thing(s) that are not videos"] if part["ignored_count"] else []
            what += [part["mismatch"]] if part["mismatch"] else []
            lines.append(f"left out of {part['source']} (--allow-partial; recorded in the provenance): "
                         + "; ".join(what))
        if self.leftovers_removed:
            lines.append(f"removed {len(self.leftovers_removed)} half-built output(s) of killed runs: "
                         + _listed(self.leftovers_removed))
        return "\n".join(lines)


def _listed(items: Sequence[str], sep: str = ", ") -> str:
    """The first :data:`~clifvqa.errors.MAX_LISTED` of ``items``, then how many more there are."""
    more = f"{sep}... and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return sep.join(items[:MAX_LISTED]) + more


def merge_stores(sources: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str],
                 prefer: str | None = None, *, zarr_format: int = 3, allow_partial: bool = False,
                 progress: bool = True) -> MergeReport:
    """Merge ``sources`` (paths or URLs) into the new store ``out``.

    Every source must have the same fingerprint (else ``FingerprintMismatchError`` naming the
    differing provenance fields). A video complete in several sources is taken once when its
    arrays are identical; differing copies raise ``MergeConflictError`` unless ``prefer`` is
    ``"first"`` or ``"last"`` (source order). Failure records are carried over unless the video
    is complete in some source. The output gets the first source's provenance and consolidated
    metadata; ``out`` must not exist. ``progress`` shows a bar over the videos (stderr).

    A source that holds things that are not videos or failure records
    (:meth:`FeatureStore.ignored`), or whose current summary counts videos its listing lacks
    (:meth:`FeatureStore.listing_mismatch`), is refused (:class:`PartialSourceError`) unless
    ``allow_partial``; then the output's provenance records what was left out (``left_out``,
    an informative field: the fingerprint stays).
    """
    if not sources:
        raise ValueError("merge needs at least one source store")
    if prefer not in (None, *PREFER_CHOICES):
        raise ValueError(f"prefer must be None, 'first' or 'last', got {prefer!r}")
    return _copy_stores(list(sources), out, prefer, zarr_format, progress, "merge", allow_partial)


def convert_store(src: str | os.PathLike[str], dst: str | os.PathLike[str],
                  zarr_format: int = 3, *, allow_partial: bool = False, progress: bool = True) -> MergeReport:
    """Copy ``src`` into the new store ``dst`` of the backend ``dst``'s name asks for.

    Arrays are copied bit-exact with all video attributes and failure records; incomplete
    entries are skipped (counted in the report). ``zarr_format=2`` writes a Zarr v2 store
    (numcodecs Blosc-zstd + Fletcher32) that zarr 2.x can read; it applies to ``.zarr`` and
    ``.zarr.zip`` outputs only. ``progress`` shows a bar over the videos (stderr). A source
    with things that are not videos, or that lost videos, is refused unless ``allow_partial``
    (see :func:`merge_stores`).
    """
    return _copy_stores([src], dst, None, zarr_format, progress, "convert", allow_partial)


def _copy_stores(sources: list[str | os.PathLike[str]], out: str | os.PathLike[str],
                 prefer: str | None, zarr_format: int, progress: bool, verb: str,
                 allow_partial: bool) -> MergeReport:
    if is_url(out):
        raise StoreError(f"{out}: output stores are written locally; copy it afterwards")
    out_path = local_path(out)
    kind = store_kind(out_path)
    if kind == "hdf5" and zarr_format != 3:
        raise StoreError(f"zarr_format={zarr_format} applies to Zarr outputs, not {out_path}")
    if out_path.exists():
        raise FileExistsError(f"{out_path} exists; merge and convert write a new store: choose "
                              "another output path or delete it first")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    leftovers = remove_abandoned(out_path, BUILDING)
    opened: list[FeatureStore] = []
    try:
        for src in sources:
            opened.append(open_store(src))
        _check_fingerprints(opened)
        left_out = _left_out(opened, allow_partial, verb)
        report = MergeReport(out=str(out_path), sources=[s.path for s in opened],
                             leftovers_removed=[str(p) for p in leftovers], left_out=left_out)
        plan = _plan_videos(opened, prefer, report)
        failures = _plan_failures(opened, set(plan), prefer, report)
        _write_output(opened, plan, failures, out_path, kind, zarr_format, report,
                      progress=progress, verb=verb)
        return report
    finally:
        for store in opened:
            store.close()


def _left_out(stores: list[FeatureStore], allow_partial: bool, verb: str) -> list[dict[str, Any]]:
    """Per source with something a copy leaves out (:meth:`FeatureStore.ignored`,
    :meth:`FeatureStore.listing_mismatch`): ``{"source", "ignored": {path: why} (the first
    :data:`MAX_RECORDED`), "ignored_count", "mismatch"}``; a :class:`PartialSourceError` for the
    first unless ``allow_partial``."""
    out = []
    for store in stores:
        ignored, mismatch = store.ignored(), store.listing_mismatch()
        if not ignored and mismatch is None:
            continue
        if not allow_partial:
            what = "; ".join(([describe_ignored(ignored)] if ignored else []) + ([mismatch] if mismatch else []))
            raise PartialSourceError(f"{store.path}: {what}; a {verb} would leave that out: pass --allow-partial "
                                     "(allow_partial=True) to write the rest, recorded in the output's provenance")
        out.append({"source": store.path, "ignored": dict(list(ignored.items())[:MAX_RECORDED]),
                    "ignored_count": len(ignored), "mismatch": mismatch})
    return out


def _check_fingerprints(stores: list[FeatureStore]) -> None:
    first = stores[0]
    for other in stores[1:]:
        require_same_features(first.provenance, other.provenance, fingerprints=(first.fingerprint, other.fingerprint),
                              problem=f"cannot merge {other.path} into {first.path}: they were made with different "
                              "settings", remedy="only stores with the same fingerprint hold interchangeable features")


def _plan_videos(stores: list[FeatureStore], prefer: str | None,
                 report: MergeReport) -> dict[str, int]:
    """{key: index of the source to copy it from}."""
    holders: dict[str, list[int]] = {}
    for i, store in enumerate(stores):
        for key in store.keys():
            holders.setdefault(key, []).append(i)
    report.incomplete_skipped = len({k for s in stores for k in s.incomplete_keys()} - set(holders))
    plan: dict[str, int] = {}
    conflicts: list[str] = []
    lines: list[str] = []
    for key in sorted(holders):
        idx = holders[key]
        if all(_same_video(stores[idx[0]], stores[j], key) for j in idx[1:]):
            plan[key] = idx[0]
            if len(idx) > 1:
                report.identical_duplicates.append(key)
        elif prefer is None:
            conflicts.append(key)
            lines.append(f"{key} ({', '.join(stores[j].path for j in idx)})")
        else:
            plan[key] = idx[0] if prefer == "first" else idx[-1]
            report.resolved_conflicts.append(key)
    if conflicts:
        shown = _listed(lines, "\n  ")
        raise MergeConflictError(f"{len(conflicts)} video(s) have different features in different "
                                 f"sources:\n  {shown}\npass prefer='first' or 'last' (--prefer) to "
                                 "choose by source order", conflicts)
    return plan


def _same_video(a: FeatureStore, b: FeatureStore, key: str) -> bool:
    if a.video_attrs(key).get("pooled_sha256") != b.video_attrs(key).get("pooled_sha256"):
        return False
    names = a.array_names(key)
    if names != b.array_names(key):
        return False
    for name in names:
        x, y = a.read_array(key, name), b.read_array(key, name)
        if x.dtype != y.dtype or x.shape != y.shape or not np.array_equal(
                x.view(np.uint8), y.view(np.uint8)):
            return False
    return True


def _plan_failures(stores: list[FeatureStore], complete: set[str], prefer: str | None,
                   report: MergeReport) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for store in stores:
        for key, record in store.failures().items():
            if key in complete:
                report.failures_dropped += 1
            elif key not in out or prefer == "last":
                out[key] = record
    return out


def _write_output(stores: list[FeatureStore], plan: dict[str, int], failures: dict[str, dict[str, Any]],
                  out_path: Path, kind: str, zarr_format: int, report: MergeReport, *,
                  progress: bool, verb: str) -> None:
    from tqdm.auto import tqdm

    final_tmp = temporary_sibling(out_path, BUILDING)
    build = temporary_sibling(out_path, BUILDING, ".zarr") if kind == "zarr.zip" else final_tmp
    try:
        provenance = stores[0].provenance
        if report.left_out:  # informative: the fingerprint stays that of the sources
            provenance = {**provenance, "left_out": [*provenance.get("left_out", []), *report.left_out]}
        with (create_or_open_store(build, provenance, zarr_format=zarr_format) as dst,
              tqdm(plan.items(), desc=verb, unit="video", disable=not progress, dynamic_ncols=True) as bar):
            for key, i in bar:
                video = stores[i].read_video(key)
                try:
                    dst.write_video(key, pooled=video.pooled, frames=video.frames, maps=video.maps,
                                    embeddings=video.embeddings, attrs=video.attrs)
                except ValueError as exc:
                    raise StoreError(f"{stores[i].path}: {exc}") from exc
                report.videos += 1
            for key, record in sorted(failures.items()):
                dst._write_failure(key, record)
                report.failures += 1
            dst.finalize()
        if kind == "zarr.zip":
            from clifvqa.features.zarr_backend import zip_directory

            zip_directory(build, final_tmp)
        try:
            install_new(final_tmp, out_path)
        except FileExistsError:
            raise FileExistsError(f"{out_path} appeared while the merge ran; nothing was written") from None
    except BaseException:
        _remove(final_tmp)
        raise
    finally:
        if build != final_tmp:
            _remove(build)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()
