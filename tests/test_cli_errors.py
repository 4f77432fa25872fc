"""One error path: every user mistake at the CLI is one ``error: ...`` line and exit status 2.

Each case below printed a 26-75 line traceback (exit 1) or stopped a run half-way before the
errors were handled in one place (``cli._ClifvqaGroup``) and the path rule refused store
metadata names.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import click
import pytest
import torch
from click.testing import CliRunner

from clifvqa._device import resolve_device
from clifvqa.cli import main
from clifvqa.features.store import check_key, create_or_open_store, open_store
from clifvqa.manifests.paths import UnsafePathError, scan_videos, validate_video_path
from clifvqa.testing.stores import synthetic_provenance, synthetic_video


def run(*args, **kwargs):
    return CliRunner().invoke(main, [str(a) for a in args], **kwargs)


def assert_one_line_error(result, *needles: str) -> None:
    """Exit 2, nothing but ``error: ...`` on stderr, and each needle in that line."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


# ------------------------------------------------------------------------- --device


def _unavailable_devices() -> list[str]:
    devices = ["gpu", "tpu", "cuda:99", "xla", "CPU", ""]
    if not torch.cuda.is_available():
        devices += ["cuda", "cuda:0"]
    if not torch.backends.mps.is_available():
        devices.append("mps")
    return devices


@pytest.mark.parametrize("device", _unavailable_devices())
def test_resolve_device_refuses_in_one_line(device):
    with pytest.raises(ValueError) as info:
        resolve_device(device)
    assert "\n" not in str(info.value) and repr(device) in str(info.value)


def test_resolve_device_accepts_what_torch_can_use():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    if torch.cuda.is_available():
        assert resolve_device("cuda:0") == "cuda:0"


def test_device_gpu_hints_cuda():
    with pytest.raises(ValueError, match="for an NVIDIA GPU say cuda"):
        resolve_device("gpu")


@pytest.fixture
def device_cases(tmp_path, tiny_clip, make_video):
    """Arguments that get each command as far as choosing its device."""
    ds = tmp_path / "ds"
    make_video("a.mp4", root=ds, num_frames=4, width=64, height=64)
    manifest = tmp_path / "m.csv"
    manifest.write_text("video,mos\na.mp4,3.0\n")
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    return {
        "extract": ["extract", ds, "-o", tmp_path / "s.zarr", "--clip-model", tiny_clip, "--quiet"],
        "train": ["train", "--manifest", manifest, "--videos", ds, "--out", tmp_path / "run", "--quiet"],
        "evaluate": ["evaluate", "--checkpoint", ckpt, "--manifest", manifest, "--videos", ds],
        "predict": ["predict", ds / "a.mp4", "--checkpoint", ckpt],
    }


@pytest.mark.parametrize("device", ["gpu", "tpu", "mps"])
@pytest.mark.parametrize("command", ["extract", "train", "evaluate", "predict"])
def test_bad_device_is_one_line_on_every_command(device_cases, command, device):
    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has an Apple GPU")
    result = run(*device_cases[command], "--device", device)
    assert_one_line_error(result, f"device {device!r}")


# ------------------------------------------------------------------------- broken .zarr.zip


@pytest.mark.parametrize("content", ["random", "truncated", "empty-zip"])
@pytest.mark.parametrize("command", ["info", "verify"])
def test_store_commands_on_a_broken_zarr_zip(tmp_path, command, content):
    path = tmp_path / "broken.zarr.zip"
    if content == "random":
        path.write_bytes(bytes(range(256)) * 4)
    elif content == "truncated":
        good = tmp_path / "good.zarr"
        prov = synthetic_provenance()
        with create_or_open_store(good, prov) as store:
            store.write_video("a.mp4", **synthetic_video(prov))
        assert run("store", "convert", good, "-o", tmp_path / "good.zarr.zip").exit_code == 0
        data = (tmp_path / "good.zarr.zip").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("readme.txt", "not a store")
    result = run("store", command, path)
    assert_one_line_error(result, str(path))


def test_missing_store_is_one_line(tmp_path):
    assert_one_line_error(run("store", "info", tmp_path / "nope.zarr"), "no feature store at")


# ------------------------------------------------------------------------- store metadata names


@pytest.mark.parametrize("key", ["x/zarr.json", "zarr.json", "a/.zarray/b.mp4", "x/.zattrs", ".zgroup",
                                 "d/.zmetadata", "x/ZARR.JSON"])
def test_path_rule_refuses_store_metadata_names(key):
    with pytest.raises(UnsafePathError, match="metadata"):
        validate_video_path(key)
    with pytest.raises(UnsafePathError):
        check_key(key)


@pytest.mark.parametrize("key", ["c", "c/0/0.mp4", "pooled", "maps/a.mp4", "frames", "embeddings/c/0",
                                 "0.0", "x/zarr.json.mp4", "zattrs"])
def test_names_the_backends_do_not_reserve_are_keys(key):
    assert validate_video_path(key) == key


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_chunk_prefix_and_array_names_cannot_clash(tmp_path, zarr_format):
    """Entries are groups and chunks live only inside arrays, so ``c``/``0.0``/array-name
    segments are plain folders; the one real clash (a key below another video) is refused."""
    prov = synthetic_provenance()
    keys = ["c", "c2/c/0/0", "pooled", "maps/x.mp4", "0.0"]
    with create_or_open_store(tmp_path / "s.zarr", prov, zarr_format=zarr_format) as store:
        for i, key in enumerate(keys):
            store.write_video(key, **synthetic_video(prov, seed=i))
        with pytest.raises(ValueError, match="a video cannot also be a folder"):
            store.write_video("c/pooled", **synthetic_video(prov))
        store.finalize()
    with open_store(tmp_path / "s.zarr") as store:
        assert store.keys() == sorted(keys)
        assert (store.read_pooled("c") == synthetic_video(prov, seed=0)["pooled"]).all()


def _metadata_name_dataset(root: Path, make_video) -> Path:
    for rel in ["a.mp4", "z.mp4"]:
        make_video(rel, root=root, num_frames=4, width=64, height=64)
    (root / "x").mkdir()
    (root / "x" / "zarr.json").write_bytes((root / "a.mp4").read_bytes())
    manifest = root.parent / "m.csv"
    manifest.write_text("video,mos\na.mp4,1\nx/zarr.json,2\nz.mp4,3\n")
    return manifest


def test_manifest_check_scan_and_extract_agree_on_metadata_names(tmp_path, tiny_clip, make_video):
    ds = tmp_path / "ds"
    manifest = _metadata_name_dataset(ds, make_video)
    check = run("manifest", "check", manifest, "--root", ds)
    assert check.exit_code == 1
    assert f"{manifest}:3: x/zarr.json: unsafe video path" in check.stdout
    assert "Zarr metadata file" in check.stdout
    extract = run("extract", ds, "--manifest", manifest, "-o", tmp_path / "s.zarr",
                  "--clip-model", tiny_clip, "--quiet")
    assert_one_line_error(extract, "x/zarr.json", "line 3")
    assert not (tmp_path / "s.zarr").exists()  # refused before anything was written


def test_scanned_metadata_folder_is_skipped_and_the_run_completes(tmp_path, tiny_clip, make_video):
    """Before: the key reached the store writer, which stopped the run with exit 2, no summary
    and no consolidated metadata."""
    ds = tmp_path / "ds"
    for rel in ["a.mp4", "zarr.json/b.mp4", "z.mp4"]:
        make_video(rel, root=ds, num_frames=4, width=64, height=64)
    assert scan_videos(ds).unsafe == [("zarr.json/b.mp4", "segment 'zarr.json' is a Zarr metadata file "
                                       "name (a store keeps its own metadata there); rename the folder/file")]
    store = tmp_path / "s.zarr"
    result = run("extract", ds, "-o", store, "--clip-model", tiny_clip, "--quiet")
    assert result.exit_code == 1, result.output
    assert "failed: zarr.json/b.mp4: unsafe file name, not extracted" in result.stderr
    assert "2 done, 0 skipped (already complete), 1 failed of 3 videos" in result.stdout
    with open_store(store) as opened:
        assert opened.keys() == ["a.mp4", "z.mp4"] and opened.consolidated_state() == "fresh"


# ------------------------------------------------------------------------- the one handler


def test_debug_adds_the_traceback_to_the_one_line(tmp_path, monkeypatch):
    missing = tmp_path / "nope.zarr"
    assert "Traceback" not in run("store", "info", missing).stderr
    for result in (run("--debug", "store", "info", missing),
                   CliRunner(env={"CLIFVQA_DEBUG": "1"}).invoke(main, ["store", "info", str(missing)])):
        assert result.exit_code == 2
        assert "Traceback (most recent call last)" in result.stderr and "FileNotFoundError" in result.stderr
        assert result.stderr.splitlines()[-1] == f"error: no feature store at {missing}"


def test_a_bug_is_not_dressed_up_as_a_user_error(monkeypatch, tmp_path):
    def broken(path, **options):
        raise AttributeError("internal bug")

    monkeypatch.setattr("clifvqa.features.info.store_info", broken)
    result = run("store", "info", tmp_path)
    assert isinstance(result.exception, AttributeError)  # the real CLI prints its traceback, exit 1
    assert "error:" not in result.output


def test_os_errors_name_the_file(tmp_path, make_video):
    make_video("a.mp4", root=tmp_path / "ds", num_frames=4, width=64, height=64)
    (tmp_path / "file").write_text("x")
    result = run("manifest", "scan", tmp_path / "ds", "-o", tmp_path / "file" / "m.csv")
    assert_one_line_error(result, f"{tmp_path / 'file'}: File exists")


# ------------------------------------------------------------------------- usage errors (click's)


@pytest.mark.parametrize("args, line", [
    (["extract", "DS", "--grid", "3y3"],
     "error: Invalid value for '--grid': grid '3y3' is not of the form ROWSxCOLS, e.g. 3x3 "
     "(see: clifvqa extract --help)"),
    (["extract", "DS", "--shard", "4/4"],
     "error: Invalid value for '--shard': shard '4/4' is out of range: N must be >= 1 and K in 0..N-1 "
     "(see: clifvqa extract --help)"),
    (["extract", "DS", "--shard", "1of4"],
     "error: Invalid value for '--shard': shard '1of4' is not of the form K/N, e.g. 0/4 (shards count from 0) "
     "(see: clifvqa extract --help)"),
    (["extract", "DS", "--batch-crops", "0"],
     "error: Invalid value for '--batch-crops': '0' is not a positive integer or auto (see: clifvqa extract --help)"),
    (["extract", "DS", "--batch-crops", "many"],
     "error: Invalid value for '--batch-crops': 'many' is not a positive integer or auto "
     "(see: clifvqa extract --help)"),
    (["store", "convert"], "error: Missing argument 'SRC'. (see: clifvqa store convert --help)"),
    (["store", "merge", "a.zarr"], "error: Missing option '-o' / '--out'. (see: clifvqa store merge --help)"),
    (["--bogus"], "error: No such option: --bogus (see: clifvqa --help)"),
    (["bogus"], "error: No such command 'bogus'. (see: clifvqa --help)"),
])
def test_usage_errors_are_one_line_naming_the_option(tmp_path, args, line):
    """Before: click's usage line, a "Try 'clifvqa extract -h' for help." line and the error."""
    result = run(*[tmp_path if a == "DS" else a for a in args])
    assert_one_line_error(result)
    if "No such option" in line:  # click's wording of this one changed across versions
        assert "--bogus" in result.stderr and result.stderr.endswith("(see: clifvqa --help)\n")
    else:
        assert result.stderr == line + "\n"
    assert result.stdout == ""


def test_unknown_option_of_a_command_is_one_line(tmp_path):
    result = run("extract", tmp_path, "--gird", "3x3")
    assert_one_line_error(result, "--gird", "(see: clifvqa extract --help)")


def test_a_group_without_a_command_still_shows_its_help():
    result = run("store")
    assert "Commands:" in result.output and "error:" not in result.output


# ------------------------------------------------------------------------- one word per concept


def _commands(group=main, path=()):
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from _commands(command, (*path, name))
        else:
            yield (*path, name), command


def _one_text(help: str, text: str) -> bool:
    """``help`` says ``text`` (case of the first letter and a final period aside), maybe followed
    by what the command adds (train: ``; not needed with ...``) and the run-config key it sets."""
    def bare(t: str) -> str:
        return re.sub(r" \[[\w.;\- ]+\]$", "", t).rstrip(".").lower()
    return bare(help).startswith(bare(text))


def test_every_command_spells_a_concept_one_way():
    from clifvqa.cli_options import DEVICE_HELP, FORCE_HELP, QUIET_HELP, STORE_HELP, STORES_HELP, VIDEOS_HELP

    seen, helps = set(), {}
    for path, command in _commands():
        for param in command.params:
            if getattr(param, "hidden", False):  # an old spelling, kept with a warning
                continue
            spelled = set(param.opts) | set(getattr(param, "secondary_opts", []))
            assert not spelled & {"--output", "--output-dir", "--fastvqa-init", "--swin-k400-init"}, path
            if "--device" in spelled:
                assert _one_text(param.help, DEVICE_HELP), path
            if "--quiet" in spelled:
                assert param.opts == ["-q", "--quiet"] and param.help == QUIET_HELP, path
            if "--force" in spelled:
                assert param.help == FORCE_HELP, path
            if "--videos" in spelled:
                assert _one_text(param.help, VIDEOS_HELP), path
            if "--out" in spelled:
                assert param.opts == ["-o", "--out"], path
            if "--store" in spelled:  # a store read; extract's (written) store is -o/--out
                assert param.opts == ["-s", "--store"], path
                assert _one_text(param.help, STORES_HELP if param.multiple else STORE_HELP), path
            if "--allow-stale" in spelled:  # one form: the pair, also where the default is off
                assert param.secondary_opts == ["--no-allow-stale"], path
            if any(o.startswith("--init") or o.endswith("-init") for o in spelled):  # every init is --init*
                assert all(o.startswith("--init") for o in param.opts), path
            for option in ("--workers", "--allow-stale"):  # same concept, same text (train names its key)
                if option in spelled:
                    helps.setdefault(option, set()).add(re.sub(r" \[[^]]*\]$", "", param.help))
            seen |= spelled
    assert {"--device", "--quiet", "--force", "--videos", "--out", "--threads", "--batch-crops"} <= seen
    assert {option: len(texts) for option, texts in helps.items()} == {"--workers": 1, "--allow-stale": 1}
    shown = {o for p in main.commands["extract"].params if not getattr(p, "hidden", False) for o in p.opts}
    assert not {"--workers", "--batch-size"} & shown  # threads and crops there, not processes and videos


def test_grid_shard_and_batch_crops_types():
    from clifvqa.cli_options import BATCH_CROPS, GRID, SHARD

    assert GRID.convert("3x3", None, None) == (3, 3) and GRID.convert("2×4", None, None) == (2, 4)
    assert GRID.convert((1, 2), None, None) == (1, 2)
    assert SHARD.convert("3/4", None, None) == (3, 4) and SHARD.convert((0, 1), None, None) == (0, 1)
    assert BATCH_CROPS.convert("auto", None, None) == "auto" and BATCH_CROPS.convert("16", None, None) == 16
    assert BATCH_CROPS.convert(8, None, None) == 8
    for bad in ["0", "-1", "1.5", "", "AUTO"]:
        with pytest.raises(click.BadParameter, match="positive integer or auto"):
            BATCH_CROPS.convert(bad, None, None)
    with pytest.raises(click.BadParameter, match="needs at least one row"):
        GRID.convert("0x3", None, None)


# ------------------------------------------------------------------------- old spellings


def _two_stores(tmp_path):
    prov = synthetic_provenance()
    for name, seed in [("a.zarr", 0), ("b.zarr", 1)]:
        with create_or_open_store(tmp_path / name, prov) as store:
            store.write_video(f"{name}.mp4", **synthetic_video(prov, seed=seed))
            store.finalize()
    return tmp_path / "a.zarr", tmp_path / "b.zarr"


@pytest.mark.parametrize("old", ["--output", "DST"])
def test_old_output_spellings_work_with_one_warning(tmp_path, old):
    a, b = _two_stores(tmp_path)
    dst = tmp_path / "out.h5"
    if old == "DST":
        result = run("store", "convert", a, dst, "-q")
        warning = "warning: the positional DST is deprecated, use -o/--out"
    else:
        result = run("store", "merge", a, b, "--output", dst, "-q")
        warning = "warning: --output is deprecated, use -o/--out"
    assert result.exit_code == 0, result.output
    assert result.stderr == warning + "\n"
    with open_store(dst) as store:
        assert len(store.keys()) == (1 if old == "DST" else 2)


def test_old_and_new_spelling_together_are_refused(tmp_path):
    a, _ = _two_stores(tmp_path)
    result = run("store", "convert", a, tmp_path / "x.h5", "-o", tmp_path / "y.h5")
    assert_one_line_error(result, "the positional DST is the old spelling of -o/--out; give only -o/--out")
    assert not (tmp_path / "x.h5").exists() and not (tmp_path / "y.h5").exists()


def test_manifest_old_spellings(tmp_path, make_video):
    make_video("a.mp4", root=tmp_path / "ds", num_frames=4, width=64, height=64)
    scan = run("manifest", "scan", tmp_path / "ds", "--output", tmp_path / "m.csv")
    assert scan.exit_code == 0 and scan.stderr == "warning: --output is deprecated, use -o/--out\n"
    assert (tmp_path / "m.csv").read_text() == "video,mos\na.mp4,\n"
    (tmp_path / "m.csv").write_text("video,mos\na.mp4,1\nb.mp4,2\n")
    split = run("manifest", "split", tmp_path / "m.csv", "--seeds", 1, "--test-fraction", 0.5,
                "--output-dir", tmp_path / "splits")
    assert split.exit_code == 0, split.output
    assert split.stderr == "warning: --output-dir is deprecated, use -o/--out\n"
    assert (tmp_path / "splits" / "split_00.csv").is_file()


def test_extract_old_store_spelling(tmp_path, tiny_clip, make_video):
    make_video("a.mp4", root=tmp_path / "ds", num_frames=4, width=64, height=64)
    result = run("extract", tmp_path / "ds", "--store", tmp_path / "s.zarr", "--clip-model", tiny_clip,
                 "--grid", "1x1", "--threads", 1, "-q")
    assert result.exit_code == 0, result.output
    assert result.stderr == "warning: --store is deprecated, use -o/--out\n"
    with open_store(tmp_path / "s.zarr") as store:
        assert store.keys() == ["a.mp4"]
