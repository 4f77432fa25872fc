"""Feature stores: the on-disk format (Zarr v3 / HDF5), provenance, fingerprint and store tools.

The format is described for outside readers in ``docs/FORMAT.md``. Entry points::

    from clifvqa.features import open_store, create_or_open_store
    store = open_store("features.zarr")          # or .h5, .zarr.zip, s3://..., https://...
    pooled = store.read_pooled(store.keys()[0])  # float32 [T, 2r]
"""

from clifvqa.features.info import store_info
from clifvqa.features.merge import MergeConflict, MergeConflictError, MergeReport, convert_store, merge_stores
from clifvqa.features.provenance import (
    DETERMINING_FIELDS,
    FingerprintMismatch,
    FingerprintMismatchError,
    fingerprint,
    provenance_diff,
    require_same_features,
)
from clifvqa.features.store import (
    FeatureStore,
    StoreError,
    VideoFeatures,
    create_or_open_store,
    finalize_store,
    open_store,
    pooled_sha256,
)
from clifvqa.features.verify import Problem, verify_store

__all__ = [
    "DETERMINING_FIELDS", "FeatureStore", "FingerprintMismatchError", "MergeConflictError", "MergeReport",
    "Problem", "StoreError", "VideoFeatures", "convert_store", "create_or_open_store",
    "finalize_store", "fingerprint", "merge_stores", "open_store", "pooled_sha256",
    "provenance_diff", "require_same_features", "store_info", "verify_store",
    "FingerprintMismatch", "MergeConflict",  # deprecated aliases of the *Error names
]
