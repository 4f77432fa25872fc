"""Provenance (how a feature store was made) and its fingerprint.

A store's provenance is a plain JSON-like dict. The *determining* fields fix every number in
the store; two stores whose determining fields agree hold interchangeable features, whatever
their informative fields (``software`` versions, ``created`` time, ``embeddings`` notes) say.
The fingerprint is ``"sha256:" + sha256(canonical JSON of the determining fields)`` where the
canonical JSON is ``json.dumps(..., sort_keys=True, separators=(",", ":"))`` (UTF-8, with the
default ``ensure_ascii=True``).

Format 2 (current) leaves ``clip.model`` out of the fingerprint: the model id or folder as typed
is informative, the weights hash says which weights made the numbers, so the same weights
loaded from the hub or from a local copy give one fingerprint. Format-1 stores fingerprinted
the ``clip`` block whole; :func:`fingerprint` computes either rule, and stores of both formats
compare by the format-2 fingerprint of their provenance.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from clifvqa.errors import ClifvqaError

DETERMINING_FIELDS: tuple[str, ...] = (
    "clip", "prompts", "grid", "crop", "resize", "mean", "std", "frame_stride", "dtype",
)
"""Top-level provenance fields that determine the stored numbers (and the fingerprint)."""

INFORMATIVE_CLIP_FIELDS: tuple[str, ...] = ("model",)
"""``clip`` sub-fields that are informative from format 2 on (the weights hash determines)."""

FORMAT_VERSION = 2
"""The store format this clifvqa writes (``clifvqa_format``); see :data:`READABLE_FORMATS`."""
READABLE_FORMATS: tuple[int, ...] = (1, 2)
"""Formats this clifvqa reads; they differ only in the fingerprint rule (``clip.model``)."""

FINGERPRINT_PREFIX = "sha256:"

_MISSING = object()  # a field absent on one side of provenance_diff


class ProvenanceError(ClifvqaError):
    """A store's provenance that lacks a determining field or holds one of the wrong shape; the
    message names the field."""


class FingerprintMismatchError(ClifvqaError):
    """Two stores (or a store and a run) were made with different determining settings.

    Attributes:
        fields: dotted names of the differing provenance fields, e.g. ``["grid", "prompts.texts"]``.
    """

    def __init__(self, message: str, fields: list[str]) -> None:
        super().__init__(message)
        self.fields = fields


FingerprintMismatch = FingerprintMismatchError  # deprecated alias: the former name


def to_plain(value: Any) -> Any:
    """``value`` with numpy scalars/arrays, tuples and paths turned into plain JSON types.

    Zarr attributes reject numpy scalars (and leave the failed value in the attrs object), and
    the fingerprint must not depend on whether a number arrived as ``np.float32`` or ``float``.
    """
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_plain(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "__fspath__"):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} value {value!r} in store metadata; "
                    "use str, int, float, bool, None, list or dict")


def determining(provenance: Mapping[str, Any], version: int = FORMAT_VERSION) -> dict[str, Any]:
    """The plain determining fields of ``provenance`` under format ``version``'s rule."""
    missing = [f for f in DETERMINING_FIELDS if f not in provenance]
    if missing:
        raise ProvenanceError(f"provenance lacks determining field(s) {', '.join(missing)}; "
                              f"a store's provenance needs all of {', '.join(DETERMINING_FIELDS)}")
    if version not in READABLE_FORMATS:
        raise ProvenanceError(f"clifvqa_format {version!r} is not one of {list(READABLE_FORMATS)}")
    out: dict[str, Any] = to_plain({k: provenance[k] for k in DETERMINING_FIELDS})
    if version >= 2 and isinstance(out["clip"], dict):
        out["clip"] = {k: v for k, v in out["clip"].items() if k not in INFORMATIVE_CLIP_FIELDS}
    return out


def canonical_json(provenance: Mapping[str, Any], version: int = FORMAT_VERSION) -> str:
    """The canonical JSON of the determining fields (the text the fingerprint hashes)."""
    return json.dumps(determining(provenance, version), sort_keys=True, separators=(",", ":"),
                      allow_nan=False)


def fingerprint(provenance: Mapping[str, Any], version: int = FORMAT_VERSION) -> str:
    """``"sha256:<hex>"`` of :func:`canonical_json` of ``provenance`` (format ``version``'s rule)."""
    return FINGERPRINT_PREFIX + hashlib.sha256(
        canonical_json(provenance, version).encode("utf-8")).hexdigest()


def provenance_diff(a: Mapping[str, Any], b: Mapping[str, Any],
                    fields: tuple[str, ...] = DETERMINING_FIELDS) -> list[str]:
    """Dotted names of the ``fields`` (recursing into dicts) whose values differ between a and b.

    Lists are compared whole, so a changed prompt gives ``"prompts.texts"``. A field missing on
    one side counts as different. Informative ``clip`` sub-fields (the model id or path as
    typed) are not compared: they do not change the numbers.
    """
    out: list[str] = []
    skip = {f"clip.{k}" for k in INFORMATIVE_CLIP_FIELDS}

    def walk(x: Any, y: Any, name: str) -> None:
        if isinstance(x, Mapping) and isinstance(y, Mapping):
            for k in sorted(set(x) | set(y)):
                walk(x.get(k, _MISSING), y.get(k, _MISSING), f"{name}.{k}")
        elif name not in skip and _plain_or_missing(x) != _plain_or_missing(y):
            out.append(name)

    for field in fields:
        walk(a.get(field, _MISSING), b.get(field, _MISSING), field)
    return out


def require_same_features(
    expected: Mapping[str, Any],
    actual: Mapping[str, Any],
    *,
    problem: str,
    remedy: str,
    fingerprints: tuple[str, str] | None = None,
) -> None:
    """Refuse features made otherwise than ``expected``: the one fingerprint check of clifvqa.

    Extraction resuming a store, merge, training, evaluate, predict and rescore all compare
    through it, so each refusal reads alike: ``"{problem} (differing provenance fields: grid,
    prompts.texts); {remedy}"``. ``expected`` and ``actual`` are provenances; they match when
    their fingerprints agree: the format-2 :func:`fingerprint` of each, or ``fingerprints``
    (expected's, actual's) when the caller has them (a store's :attr:`fingerprint`, which for a
    store whose fingerprint attribute does not match its provenance is that attribute: then
    the fields may all agree, and the message says to verify the store).

    Raises:
        FingerprintMismatchError: the features differ; ``fields`` names the differing provenance fields.
    """
    want, got = fingerprints or (fingerprint(expected), fingerprint(actual))
    if want == got:
        return
    fields = provenance_diff(expected, actual)
    what = ", ".join(fields) or "none: a fingerprint attribute does not match its provenance, run clifvqa store verify"
    raise FingerprintMismatchError(f"{problem} (differing provenance fields: {what}); {remedy}", fields)


def _plain_or_missing(x: Any) -> Any:
    return x if x is _MISSING else to_plain(x)


def check_provenance(provenance: Mapping[str, Any]) -> dict[str, Any]:
    """Validate the structure the store relies on and return a plain-typed copy.

    Checked: all determining fields present; ``clip`` has ``model``, ``weights_sha256`` and
    ``image_size``; ``prompts.texts`` and ``prompts.groups`` are equally long non-empty lists of
    str; ``grid`` is two positive ints; ``crop`` and ``frame_stride`` positive ints; ``mean`` and
    ``std`` three finite numbers; ``resize``, ``dtype`` and ``prompts.softmax`` str. Raises
    :class:`ProvenanceError` naming the field.
    """
    prov: dict[str, Any] = to_plain(dict(provenance))
    canonical_json(prov)  # presence of every determining field, strict JSON numbers

    def need(cond: bool, field: str, what: str) -> None:
        if not cond:
            raise ProvenanceError(f"provenance field {field!r} must be {what}; got {_get(prov, field)!r}")

    clip = prov["clip"]
    need(isinstance(clip, dict), "clip", "a dict with model, weights_sha256, image_size")
    for k in ("model", "weights_sha256", "image_size"):
        need(k in clip, f"clip.{k}", "present")
    prompts = prov["prompts"]
    need(isinstance(prompts, dict), "prompts", "a dict with texts, groups, template, softmax")
    for k in ("texts", "groups", "template", "softmax"):
        need(k in prompts, f"prompts.{k}", "present")
    texts, groups = prompts["texts"], prompts["groups"]
    need(isinstance(texts, list) and len(texts) > 0 and all(isinstance(t, str) for t in texts),
         "prompts.texts", "a non-empty list of str")
    need(isinstance(groups, list) and len(groups) == len(texts)
         and all(isinstance(g, str) for g in groups),
         "prompts.groups", f"a list of {len(texts)} str (one per prompt)")
    need(isinstance(prompts["softmax"], str), "prompts.softmax", "a str")
    grid = prov["grid"]
    need(isinstance(grid, list) and len(grid) == 2 and all(_pos_int(v) for v in grid),
         "grid", "[rows, cols], two positive ints")
    need(_pos_int(prov["crop"]), "crop", "a positive int")
    need(_pos_int(prov["frame_stride"]), "frame_stride", "a positive int")
    for k in ("mean", "std"):
        v = prov[k]
        need(isinstance(v, list) and len(v) == 3 and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v),
            k, "a list of 3 finite numbers")
    for k in ("resize", "dtype"):
        need(isinstance(prov[k], str), k, "a str")
    return prov


def _pos_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _get(prov: Mapping[str, Any], dotted: str) -> Any:
    value: Any = prov
    for part in dotted.split("."):
        value = value.get(part, None) if isinstance(value, Mapping) else None
    return value


def informative_defaults() -> dict[str, Any]:
    """``created`` (UTC ISO time) and ``software`` (clifvqa and storage library versions)."""
    from clifvqa._version import __version__

    software = {"clifvqa": __version__, "numpy": np.__version__}
    for name in ("zarr", "h5py"):
        try:
            software[name] = __import__(name).__version__
        except ImportError:  # pragma: no cover - both are dependencies
            pass
    return {"created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "software": software}
