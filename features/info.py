"""``store info``: what a store holds and how it was made."""

from __future__ import annotations

import os
import re
from typing import Any

from clifvqa.features.store import FeatureStore, open_store


def store_info(store: str | os.PathLike[str] | FeatureStore, *, recount: bool = False) -> dict[str, Any]:
    """Summary of a store (path, URL or open store) as a JSON-ready dict.

    Keys: ``path``, ``backend`` (zarr / zarr.zip / hdf5), ``zarr_format`` (None for HDF5),
    ``format`` (clifvqa_format), ``fingerprint``, ``fingerprint_ok`` (it matches the
    provenance), ``provenance``, ``counts`` ({complete, incomplete, failed}), ``total_frames``
    (rows over complete videos), ``size_bytes`` (None when remote), ``consolidated``
    (Zarr: absent / fresh / stale: ... / unchecked; None for HDF5), ``pending`` (HDF5: a line
    about videos a running or killed writer logged beside the file, else None), ``failures``
    (list of {key, source, error, time}, sorted by key), ``failure_reasons`` (the failures
    grouped by :func:`failure_reasons`), ``counted`` (``"summary"`` or ``"listing"``),
    ``ignored`` (what :meth:`FeatureStore.ignored` finds, when it lists; None when counted from
    the summary) and ``mismatch`` (with ``recount``: :meth:`FeatureStore.listing_mismatch`).

    The counts come from the summary the last finalize wrote (:meth:`FeatureStore.summary`),
    which costs the same for any number of videos; when there is none or the store changed
    since, or with ``recount``, every entry is listed, and ``recount`` also compares the
    consolidated metadata with the listing node by node, and the summary's counts with it
    (a video folder deleted by hand leaves the summary current by its change token: only a
    listing, ``recount`` or ``store verify``, sees it). Failure records are always listed
    (only the ``failures`` folder).
    """
    if not isinstance(store, FeatureStore):
        with open_store(store) as opened:
            return store_info(opened, recount=recount)
    summary = None if recount else store.summary()
    if summary is not None:
        counts: dict[str, int] = summary
        consolidated = None if store.zarr_format is None else "fresh"  # written with the summary
    else:
        counts = store.count()
        if not recount and store.zarr_format is not None and store.recorded_summary is not None:
            # The change token says the store moved on: cheaper than comparing every node.
            consolidated = "stale: the store changed after its last finalize"
        else:
            consolidated = store.consolidated_state()
    failures = store.failures()
    listed = summary is None  # what only a listing shows: checked whenever info lists anyway
    return {
        "path": store.path,
        "backend": store.backend,
        "zarr_format": store.zarr_format,
        "format": store.format_version,
        "fingerprint": store.stored_fingerprint,
        "fingerprint_ok": store.fingerprint_ok,
        "provenance": store.provenance,
        "counts": {name: counts[name] for name in ("complete", "incomplete", "failed")},
        "total_frames": counts["frames"],
        "size_bytes": store.size_bytes(summary),
        "consolidated": consolidated,
        "pending": store.pending_note(),
        "failures": [{"key": k, "source": rec.get("source"), "error": rec.get("error"),
                      "time": rec.get("time")} for k, rec in sorted(failures.items())],
        "failure_reasons": failure_reasons(failures),
        "counted": "listing" if summary is None else "summary",
        "ignored": store.ignored() if listed else None,
        "mismatch": store.listing_mismatch() if listed and recount else None,
    }


def failure_reasons(failures: dict[str, dict[str, Any]], examples: int = 3) -> list[dict[str, Any]]:
    """Failure records grouped by reason, most frequent first (ties: by reason).

    A record's reason is its error text after the video's own name (decode errors start with
    the file path), with numbers counted as the same (``after frame 12`` and ``after frame 40``
    are one reason, shown as ``after frame N``). Each group: ``{"reason", "count",
    "examples"}`` with the first ``examples`` keys in key order.
    """
    groups: dict[str, tuple[set[str], list[str]]] = {}
    for key in sorted(failures):
        text = _reason_text(key, failures[key])
        texts, keys = groups.setdefault(re.sub(r"\d+", "N", text), (set(), []))
        texts.add(text)
        keys.append(key)
    out = [{"reason": next(iter(texts)) if len(texts) == 1 else pattern, "count": len(keys),
            "examples": keys[:examples]} for pattern, (texts, keys) in groups.items()]
    return sorted(out, key=lambda g: (-g["count"], g["reason"]))


def _reason_text(key: str, record: dict[str, Any]) -> str:
    error = str(record.get("error") or "unknown error")
    head, found, tail = error.rpartition(key)
    return tail.lstrip(":").strip() or error if found else error
