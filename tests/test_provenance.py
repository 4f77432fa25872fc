"""Provenance fingerprint: canonical JSON recipe, stability, and which fields count."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from clifvqa.features.provenance import (
    DETERMINING_FIELDS,
    canonical_json,
    check_provenance,
    fingerprint,
    provenance_diff,
)
from clifvqa.testing.stores import synthetic_provenance

SMALL = {
    "software": {"clifvqa": "0.1.0", "torch": "2.13"},
    "clip": {"model": "m", "weights_sha256": "00", "image_size": 224},
    "prompts": {"texts": ["a sharp photo."], "groups": ["objective"], "template": "{}",
                "softmax": "all"},
    "grid": [3, 3], "crop": 224, "resize": "upscale-short-side",
    "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "frame_stride": 1, "dtype": "float32",
    "created": "2026-01-01T00:00:00+00:00",
}
# Written out by hand (sorted keys, no spaces); their sha256 were computed with `sha256sum`.
# Format 2 leaves clip.model out; format 1 hashed the clip block whole.
SMALL_CANONICAL = (
    '{"clip":{"image_size":224,"weights_sha256":"00"},"crop":224,"dtype":"float32",'
    '"frame_stride":1,"grid":[3,3],"mean":[0.5,0.5,0.5],"prompts":{"groups":["objective"],'
    '"softmax":"all","template":"{}","texts":["a sharp photo."]},"resize":"upscale-short-side",'
    '"std":[0.25,0.25,0.25]}'
)
SMALL_FINGERPRINT = "sha256:95ee8547f0a921f0d82cf919de8acdde0ab31fe1431913b22f1027d3a3f8024b"
SMALL_CANONICAL_V1 = SMALL_CANONICAL.replace('"image_size":224,', '"image_size":224,"model":"m",')
SMALL_FINGERPRINT_V1 = "sha256:c4da18e2d478ae7dff1b7d99e706b9041f0cc488a68d0ec8ab66b254f8205250"


def test_hand_checked_canonical_json_and_sha256():
    assert canonical_json(SMALL) == SMALL_CANONICAL
    assert fingerprint(SMALL) == SMALL_FINGERPRINT
    assert canonical_json(SMALL, version=1) == SMALL_CANONICAL_V1
    assert fingerprint(SMALL, version=1) == SMALL_FINGERPRINT_V1


def test_same_weights_under_another_name_same_fingerprint():
    local = copy.deepcopy(SMALL)
    local["clip"]["model"] = "/data/models/clip-b32"
    assert fingerprint(local) == SMALL_FINGERPRINT and provenance_diff(SMALL, local) == []
    assert fingerprint(local, version=1) != SMALL_FINGERPRINT_V1


def test_same_inputs_same_fingerprint_whatever_the_spelling():
    reordered = dict(reversed(list(SMALL.items())))
    as_numpy = copy.deepcopy(SMALL)
    as_numpy["grid"] = (np.int64(3), np.int64(3))
    as_numpy["mean"] = np.array([0.5, 0.5, 0.5])
    as_numpy["prompts"]["texts"] = ("a sharp photo.",)
    assert fingerprint(reordered) == fingerprint(as_numpy) == SMALL_FINGERPRINT


CHANGES = {
    "clip": lambda p: p["clip"].update(weights_sha256="01"),
    "prompts": lambda p: p["prompts"].update(softmax="group"),
    "grid": lambda p: p.update(grid=[3, 4]),
    "crop": lambda p: p.update(crop=336),
    "resize": lambda p: p.update(resize="none"),
    "mean": lambda p: p["mean"].__setitem__(0, 0.4),
    "std": lambda p: p["std"].__setitem__(2, 0.3),
    "frame_stride": lambda p: p.update(frame_stride=2),
    "dtype": lambda p: p.update(dtype="float16"),
}


def test_every_determining_field_is_covered():
    assert set(CHANGES) == set(DETERMINING_FIELDS)


@pytest.mark.parametrize("field", DETERMINING_FIELDS)
def test_changing_a_determining_field_changes_the_fingerprint(field):
    changed = copy.deepcopy(SMALL)
    CHANGES[field](changed)
    assert fingerprint(changed) != SMALL_FINGERPRINT
    assert provenance_diff(SMALL, changed)[0].split(".")[0] == field


@pytest.mark.parametrize("field,value", [
    ("software", {"clifvqa": "9.9"}), ("created", "2030-05-05T00:00:00Z"),
    ("embeddings", {"dim": 512, "note": "crop image embeddings"}),
])
def test_informative_fields_do_not_change_the_fingerprint(field, value):
    changed = copy.deepcopy(SMALL)
    changed[field] = value
    assert fingerprint(changed) == SMALL_FINGERPRINT
    assert provenance_diff(SMALL, changed) == []


def test_diff_names_nested_fields():
    other = copy.deepcopy(SMALL)
    other["prompts"]["texts"] = ["a blurry photo."]
    other["clip"]["model"] = "n"
    other["grid"] = [1, 1]
    assert provenance_diff(SMALL, other) == ["prompts.texts", "grid"]  # clip.model: informative
    del other["crop"]
    assert "crop" in provenance_diff(SMALL, other)


def test_missing_determining_field_is_named():
    broken = {k: v for k, v in SMALL.items() if k != "frame_stride"}
    with pytest.raises(ValueError, match="frame_stride"):
        fingerprint(broken)


@pytest.mark.parametrize("field,mutate", [
    ("grid", lambda p: p.update(grid=[3])),
    ("crop", lambda p: p.update(crop=0)),
    ("prompts.groups", lambda p: p["prompts"].update(groups=["objective", "subjective"])),
    ("clip.weights_sha256", lambda p: p["clip"].pop("weights_sha256")),
    ("mean", lambda p: p.update(mean=[0.5, 0.5])),
])
def test_check_provenance_names_the_bad_field(field, mutate):
    prov = copy.deepcopy(SMALL)
    mutate(prov)
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        check_provenance(prov)


def test_check_provenance_returns_plain_types():
    prov = synthetic_provenance()
    prov["grid"] = (np.int32(2), np.int32(3))
    checked = check_provenance(prov)
    assert checked["grid"] == [2, 3] and type(checked["grid"][0]) is int
