"""One fingerprint check (features.provenance.require_same_features) behind every refusal of features
made with other settings: extract resume, merge, training, evaluate, predict (store and extraction)."""

from __future__ import annotations

import pytest
import torch

from clifvqa.features.provenance import FingerprintMismatchError, fingerprint, require_same_features
from clifvqa.features.store import create_or_open_store, open_store
from clifvqa.testing.stores import synthetic_provenance, synthetic_video

OTHER_GRID = synthetic_provenance(grid=(3, 3))


def write_store(path, keys, prov=None):
    prov = prov or synthetic_provenance()
    with create_or_open_store(path, prov) as st:
        for i, key in enumerate(keys):
            st.write_video(key, **synthetic_video(prov, seed=i, source=key))
        st.finalize()
    return path


def refused_by_the_one_check(info: pytest.ExceptionInfo, fields: list[str]) -> str:
    """The refusal came from require_same_features and names ``fields``; its message."""
    assert "require_same_features" in [entry.name for entry in info.traceback]
    assert info.value.fields == fields
    message = str(info.value)
    assert f"(differing provenance fields: {', '.join(fields)}); " in message and "\n" not in message
    return message


def tiny_checkpoint(path, prov):
    from clifvqa.train.checkpoint import save_checkpoint
    from clifvqa.train.model import build_model, tiny_config

    config = tiny_config(len(prov["prompts"]["texts"]), prov["prompts"]["groups"], branches="semantic")
    torch.manual_seed(0)
    return save_checkpoint(path, build_model(config), config, prov, fingerprint(prov))


def test_the_check_itself():
    a = synthetic_provenance()
    require_same_features(a, dict(a, clip=dict(a["clip"], model="/elsewhere/clip"), created="now"),
                          problem="p", remedy="r")  # informative fields: the same features
    with pytest.raises(FingerprintMismatchError) as info:
        require_same_features(a, synthetic_provenance(grid=(1, 1), softmax="group"), problem="X differs", remedy="do Y")
    assert str(info.value) == "X differs (differing provenance fields: prompts.softmax, grid); do Y"
    assert info.value.fields == ["prompts.softmax", "grid"]
    # the fingerprints a store holds decide; equal provenances under unequal fingerprints: a damaged attribute
    with pytest.raises(FingerprintMismatchError, match=r"fields: none: a fingerprint attribute does not match its "
                                                  r"provenance, run clifvqa store verify\); do Y"):
        require_same_features(a, a, fingerprints=("sha256:aa", "sha256:bb"), problem="X differs", remedy="do Y")


def test_extract_resume_refuses_a_store_of_other_settings(tmp_path, tiny_clip, make_video):
    from dataclasses import replace

    from clifvqa.extract.config import ExtractConfig
    from clifvqa.extract.runner import extract_dataset

    make_video("v0.mp4", root=tmp_path / "ds", num_frames=3, width=64, height=48)
    config = ExtractConfig(clip_model=str(tiny_clip), grid=(1, 1), device="cpu", threads=1)
    assert extract_dataset(tmp_path / "ds", tmp_path / "f.zarr", None, config, progress=False).done == 1
    with pytest.raises(FingerprintMismatchError) as info:
        extract_dataset(tmp_path / "ds", tmp_path / "f.zarr", None, replace(config, grid=(2, 2)), progress=False)
    message = refused_by_the_one_check(info, ["grid"])
    assert message.startswith(f"{tmp_path / 'f.zarr'} holds features made with other settings")
    assert "write to a new --out path" in message
    with open_store(tmp_path / "f.zarr") as store:
        assert store.keys() == ["v0.mp4"]  # nothing lost


def test_merge_refuses_stores_of_other_settings(tmp_path):
    from clifvqa.features.merge import merge_stores

    a, b = write_store(tmp_path / "a.zarr", ["v0.mp4"]), write_store(tmp_path / "b.zarr", ["v1.mp4"], OTHER_GRID)
    with pytest.raises(FingerprintMismatchError) as info:
        merge_stores([a, b], tmp_path / "out.zarr", progress=False)
    assert refused_by_the_one_check(info, ["grid"]).startswith(f"cannot merge {b} into {a}")
    assert not (tmp_path / "out.zarr").exists()


def test_training_refuses_stores_of_other_settings(tmp_path):
    from clifvqa.train.data import load_semantic_features

    a, b = write_store(tmp_path / "a.zarr", ["v0.mp4"]), write_store(tmp_path / "b.h5", ["v1.mp4"], OTHER_GRID)
    with pytest.raises(FingerprintMismatchError) as info:
        load_semantic_features([a, b], ["v0.mp4", "v1.mp4"], t0=8, progress=False)
    message = refused_by_the_one_check(info, ["grid"])
    assert message.startswith(f"feature stores {a} and {b} were made with different settings")
    assert message.endswith("use stores of one extraction setting")


def test_evaluate_and_predict_refuse_a_store_the_checkpoint_was_not_trained_on(tmp_path):
    from clifvqa.predict import predict
    from clifvqa.train.evaluate import evaluate

    ckpt = tiny_checkpoint(tmp_path / "ckpt", synthetic_provenance())
    other = write_store(tmp_path / "other.zarr", ["v0.mp4"], OTHER_GRID)
    manifest = tmp_path / "m.csv"
    manifest.write_text("video,mos\nv0.mp4,3.0\n")
    with pytest.raises(FingerprintMismatchError) as info:
        evaluate(ckpt, manifest, tmp_path, [other], device="cpu")
    message = refused_by_the_one_check(info, ["grid"])
    assert message.startswith(f"feature store {other} (fingerprint sha256:")
    assert f"checkpoint {ckpt} was trained on" in message and "meta.json 'store.provenance'" in message

    video = tmp_path / "v0.mp4"
    video.write_bytes(b"any bytes: refused before the inputs are read")
    with pytest.raises(FingerprintMismatchError) as info:
        predict([video], ckpt, stores=[other], device="cpu")
    assert refused_by_the_one_check(info, ["grid"]) == message


def test_predict_refuses_a_clip_that_would_extract_other_features(tmp_path, tiny_clip):
    from clifvqa.extract.clip_model import load_clip
    from clifvqa.extract.sfe import SemanticFeatureExtractor
    from clifvqa.predict import predict

    prov = SemanticFeatureExtractor(load_clip(str(tiny_clip), "cpu"), grid=(1, 1), device="cpu").provenance()
    trained = dict(prov, mean=[0.5, 0.5, 0.5])  # the same weights, but the features were normalised otherwise
    ckpt = tiny_checkpoint(tmp_path / "ckpt", trained)
    video = tmp_path / "v0.mp4"
    video.write_bytes(b"never decoded: refused before extraction")
    with pytest.raises(FingerprintMismatchError) as info:
        predict([video], ckpt, device="cpu")
    message = refused_by_the_one_check(info, ["mean"])
    assert message.startswith(f"extracting with CLIP model {str(tiny_clip)!r} would not reproduce")
