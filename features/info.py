"""``store info``: what a store holds and how it was made."""

from __future__ import annotations

import os
from typing import Any

from clifvqa.features.provenance import fingerprint
from clifvqa.features.store import FeatureStore, open_store


def store_info(store: str | os.PathLike[str] | FeatureStore) -> dict[str, Any]:
    """Summary of a store (path, URL or open store) as a JSON-ready dict.

    Keys: ``path``, ``backend`` (zarr / zarr.zip / hdf5), ``zarr_format`` (None for HDF5),
    ``format`` (clifvqa_format), ``fingerprint``, ``fingerprint_ok`` (it matches the
    provenance), ``provenance``, ``counts`` ({complete, incomplete, failed}), ``total_frames``
    (rows over complete videos), ``size_bytes`` (None when remote), ``consolidated``
    (Zarr: absent / fresh / stale: ... / unchecked; None for HDF5), ``pending`` (HDF5: a line
    about videos a running or killed writer logged beside the file, else None) and ``failures``
    (list of {key, source, error, time}, sorted by key).
    """
    if not isinstance(store, FeatureStore):
        with open_store(store) as opened:
            return store_info(opened)
    keys = store.keys()
    failures = store.failures()
    try:
        fingerprint_ok = fingerprint(store.provenance) == store.fingerprint
    except (ValueError, TypeError):
        fingerprint_ok = False
    return {
        "path": store.path,
        "backend": store.backend,
        "zarr_format": store.zarr_format,
        "format": store.format_version,
        "fingerprint": store.fingerprint,
        "fingerprint_ok": fingerprint_ok,
        "provenance": store.provenance,
        "counts": {"complete": len(keys), "incomplete": len(store.incomplete_keys()),
                   "failed": len(failures)},
        "total_frames": sum(store.array_shape(k, "pooled")[0] for k in keys),
        "size_bytes": store.size_bytes(),
        "consolidated": store.consolidated_state(),
        "pending": store.pending_note(),
        "failures": [{"key": k, "source": rec.get("source"), "error": rec.get("error"),
                      "time": rec.get("time")} for k, rec in sorted(failures.items())],
    }
