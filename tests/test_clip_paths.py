"""Where the CLIP model is recorded and found again, and damaged weight files: one clear line each."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from clifvqa._safetensors import safetensors_problem
from clifvqa.cli import main
from clifvqa.extract.clip_model import (
    ClipLoadError,
    load_clip,
    load_recorded_clip,
    looks_like_hub_id,
)


@pytest.fixture
def clip_copy(tiny_clip, tmp_path) -> Path:
    """A private copy of the tiny CLIP (tests here move and damage it)."""
    return Path(shutil.copytree(tiny_clip, tmp_path / "models" / "tinyclip"))


def _one_line(exc: BaseException) -> str:
    message = str(exc)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------- recorded path


def test_a_relative_folder_is_recorded_as_its_absolute_path(clip_copy, tmp_path, monkeypatch):
    from clifvqa.extract.sfe import SemanticFeatureExtractor

    monkeypatch.chdir(clip_copy.parent)
    spellings = ["tinyclip", "./tinyclip", "../models/tinyclip", str(clip_copy)]
    recorded = {load_clip(s, "cpu").model_id for s in spellings}
    assert recorded == {str(clip_copy.resolve())}  # before: each spelling as typed
    sfe = SemanticFeatureExtractor(load_clip("tinyclip", "cpu"), grid=(1, 1), device="cpu")
    assert sfe.provenance()["clip"]["model"] == str(clip_copy.resolve())


def test_the_recorded_model_is_found_from_another_folder(clip_copy, tmp_path, monkeypatch):
    """The reported failure: extract with --clip-model tinyclip in one folder, predict in another."""
    from clifvqa.extract.sfe import SemanticFeatureExtractor

    monkeypatch.chdir(clip_copy.parent)
    sfe = SemanticFeatureExtractor(load_clip("tinyclip", "cpu"), grid=(1, 1), device="cpu")
    recorded = sfe.provenance()["clip"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    bundle = load_recorded_clip(recorded, device="cpu")
    assert bundle.weights_sha256 == recorded["weights_sha256"]


def test_a_missing_recorded_folder_names_it_and_asks_for_clip_model(clip_copy, tmp_path, monkeypatch):
    weights = load_clip(str(clip_copy), "cpu").weights_sha256
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    # A relative path recorded as typed by earlier versions, and an absolute one from another machine.
    cases = [("tinyclip", f" (looked for {elsewhere / 'tinyclip'})"), ("/data/models/clip-b32", "")]
    for recorded_path, looked in cases:
        with pytest.raises(ClipLoadError) as info:
            load_recorded_clip({"model": recorded_path, "weights_sha256": weights}, device="cpu")
        message = _one_line(info.value)
        assert message == (
            f"the CLIP model folder the features were made with, {recorded_path}, is not found here{looked}; "
            f"pass --clip-model pointing at a copy of the same weights (any copy of the weights with sha256 "
            f"{weights[:16]}... works)"
        )
        assert "huggingface-cli" not in message  # before: "huggingface-cli download tinyclip ..."
    # The way out the message names: any copy of the same weights.
    recorded = {"model": "tinyclip", "weights_sha256": weights}
    bundle = load_recorded_clip(recorded, str(clip_copy), device="cpu")
    assert bundle.weights_sha256 == weights


def test_an_unreachable_recorded_hub_id_gets_the_download_hint(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ClipLoadError) as info:
        load_recorded_clip({"model": "clifvqa-test/no-such-clip", "weights_sha256": "ab" * 32}, device="cpu")
    message = _one_line(info.value)
    assert "huggingface-cli download clifvqa-test/no-such-clip --local-dir DIR" in message
    assert "--clip-model DIR" in message and "sha256 abababababababab" in message


def test_hub_id_or_path():
    for hub_id in ("openai/clip-vit-base-patch32", "wkcn/TinyCLIP-ViT-8M-16-Text-3M"):
        assert looks_like_hub_id(hub_id)
    for path in ("tinyclip", "./clip", "/abs/clip", "a/b/c", "~/clip", "..", "C:\\clip"):
        assert not looks_like_hub_id(path), path


def test_an_unknown_bare_name_is_not_sent_to_the_hub_hint(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ClipLoadError) as info:
        load_clip("tinyclip", "cpu")
    message = _one_line(info.value)
    assert f"there is no folder 'tinyclip' (looked for {tmp_path / 'tinyclip'})" in message
    assert "huggingface-cli" not in message


# ---------------------------------------------------------------- damaged weight files


class _Marker:
    """Unpickling this creates a file: proof that a pickle was (not) executed."""

    path = ""

    def __reduce__(self):
        return (open, (self.path, "w"))


def _damage(kind: str, weights: Path, marker: Path) -> str:
    data = weights.read_bytes()
    if kind == "pickle":
        _Marker.path = str(marker)
        weights.write_bytes(pickle.dumps({"state_dict": _Marker()}))
        return "it holds pickle data (a renamed PyTorch .bin checkpoint?), not safetensors; not unpickled"
    if kind == "empty":
        weights.write_bytes(b"")
        return "it is empty (0 bytes)"
    weights.write_bytes(data[: len(data) // 2])
    half = len(data) // 2
    return (f"it is truncated: its header describes {len(data)} bytes, the file has {half} "
            "(an interrupted copy?)")


@pytest.mark.parametrize("kind", ["pickle", "empty", "truncated"])
def test_damaged_safetensors_is_one_line_naming_the_file(clip_copy, tmp_path, kind):
    # Before: a 32-line SafetensorError traceback ("header too large" / "too small" / "not fully covered").
    weights = clip_copy / "model.safetensors"
    marker = tmp_path / "unpickled"
    problem = _damage(kind, weights, marker)
    assert safetensors_problem(weights) == problem
    with pytest.raises(ClipLoadError) as info:
        load_clip(str(clip_copy), "cpu")
    expected = f"CLIP weights {weights} cannot be loaded: {problem}; copy the model folder again"
    assert _one_line(info.value) == expected
    assert not marker.exists()


def test_cli_extract_with_damaged_weights_exit_2_one_line(clip_copy, tmp_path):
    weights = clip_copy / "model.safetensors"
    problem = _damage("truncated", weights, tmp_path / "unused")
    (tmp_path / "videos").mkdir()
    args = ["extract", str(tmp_path / "videos"), "-o", str(tmp_path / "s.zarr"),
            "--clip-model", str(clip_copy), "--device", "cpu"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    expected = f"error: CLIP weights {weights} cannot be loaded: {problem}; copy the model folder again"
    assert result.output.strip().splitlines() == [expected]


def test_safetensors_problem_on_good_and_odd_files(tiny_clip, tmp_path):
    good = tiny_clip / "model.safetensors"
    assert safetensors_problem(good) is None
    odd = tmp_path / "model.safetensors"
    odd.write_bytes(good.read_bytes() + b"xx")
    size = good.stat().st_size
    assert safetensors_problem(odd) == (
        f"it has 2 bytes beyond the {size} its header describes (a damaged copy?)")
    odd.write_bytes(b'{"text": "hello, a JSON file"}')
    assert safetensors_problem(odd).startswith("it is not safetensors: its first 8 bytes b'{\"text\":'")
    odd.write_bytes((5).to_bytes(8, "little") + b"[1,2]")
    assert safetensors_problem(odd) == (
        "it is not safetensors: its header is not the JSON tensor table safetensors begins with")
    odd.write_bytes(b"PK\x03\x04" + bytes(40))
    assert safetensors_problem(odd).startswith("it is a zip archive")
    odd.write_bytes(b"abc")
    assert safetensors_problem(odd) == "it is only 3 bytes, too short for a safetensors file"
