"""Stores someone sent you (clifvqa.testing.hostile): every case against every command that reads
stores, each case in its own process under an address-space limit, so that a regression fails
here instead of exhausting the machine; a seeded fuzzer of byte flips, truncations and renames;
what is reported as ignored, and absurd attributes, at the library level.

The same corpus against every library reader: tests/test_bounded_reads.py; one process per
command with its peak RSS: benchmarks/hostile_matrix.py.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import pytest

from clifvqa.testing.hostile import CASES, acceptable, build_base, commands, make_case, run_limited, verdict

LIMIT = 3 << 30  # RLIMIT_DATA per case process (anonymous memory); the intact store's commands need < 1 GB
TIMEOUT = 60.0 * 2  # all commands of a case together; each needs a few seconds
STORE_COMMANDS = ("info", "info --recount", "verify", "merge", "convert")
MODEL_COMMANDS = ("train", "evaluate", "predict")
# Model commands load torch and a checkpoint (seconds each): run them on the cases that reach
# their read path in different ways; the benchmark runs them on every case.
MODEL_CASES = ("zstd-bomb", "zstd-bomb-no-size", "pooled-shape-huge", "symlink-dev-zero", "fifo-chunk",
               "video-folder-deleted", "attrs-absurd", "h5-shape-huge")

RUNNER = """
import json, sys, time
from click.testing import CliRunner
from clifvqa.cli import main
out = {}
for name, args in json.loads(sys.argv[1]).items():
    start = time.perf_counter()
    r = CliRunner().invoke(main, args)
    unexpected = r.exception is not None and not isinstance(r.exception, SystemExit)
    out[name] = [r.exit_code, r.output + (f"Traceback: {r.exception!r}" if unexpected else ""),
                 time.perf_counter() - start]
print("RESULTS " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return build_base(tmp_path_factory.mktemp("hostile"))


def run_case(base, store, out, names):
    wanted = {k: v for k, v in commands(base, store, out).items() if k in names}
    code, peak_mb, text = run_limited([sys.executable, "-c", RUNNER, json.dumps(wanted)], LIMIT, TIMEOUT,
                                      {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    assert code == 0 and "RESULTS " in text, f"the case process ended with {code}: {text[-2000:]}"
    return json.loads(text.split("RESULTS ", 1)[1]), peak_mb


@pytest.fixture(scope="module")
def intact_peak(base, tmp_path_factory):
    out = tmp_path_factory.mktemp("intact")
    results, peak = run_case(base, base.zarr, out, STORE_COMMANDS + MODEL_COMMANDS)
    assert all(r[0] == 0 for r in results.values()), results
    return peak


@pytest.mark.parametrize("name", list(CASES))
def test_every_command_refuses_in_one_line_within_bounded_memory(name, base, intact_peak, tmp_path):
    store = make_case(name, base.zarr, tmp_path / "in")
    outside = {p.name for p in tmp_path.iterdir()}
    names = STORE_COMMANDS + (MODEL_COMMANDS if name in MODEL_CASES else ())
    results, peak = run_case(base, store, tmp_path / "out", names)
    wrong = {cmd: (verdict(cmd, code, output), code, output.strip().splitlines()[-3:])
             for cmd, (code, output, _) in results.items()
             if not acceptable(name, cmd, verdict(cmd, code, output))}
    assert wrong == {}
    assert max(seconds for _, _, seconds in results.values()) < 60
    assert peak <= 1.5 * intact_peak, f"peak RSS {peak:.0f} MB, intact {intact_peak:.0f} MB"
    # nothing written beside the case's input and output folders (zip entries with '..' included)
    assert {p.name for p in tmp_path.iterdir()} <= {*outside, "out"}
    assert not (tmp_path.parent / "x").exists() and not os.path.exists("/etc/clifvqa-absolute")


FUZZER = """
import json, sys
from clifvqa.testing.hostile import fuzz
print("RESULTS " + json.dumps(fuzz(sys.argv[1], seed=int(sys.argv[2]), rounds=int(sys.argv[3]))))
"""


def test_fuzzed_stores_never_crash_hang_or_exhaust_memory(tmp_path):
    """200 seeded mutations of a small store (byte flips, truncations, renames, deletions, swaps):
    every read and `store verify` ends in a result or a one-line error, none in a traceback."""
    code, peak_mb, text = run_limited([sys.executable, "-c", FUZZER, str(tmp_path / "fuzz"), "0", "200"], LIMIT,
                                      300, {"OMP_NUM_THREADS": "1"})
    assert code == 0 and "RESULTS " in text, text[-3000:]
    counts = json.loads(text.split("RESULTS ", 1)[1])
    assert counts["rounds"] == 200 and counts["crashed"] == [] and counts["hung"] == []
    assert counts["refused"] > 50  # most mutations are caught, not read as features
    assert peak_mb < 1024


@pytest.mark.parametrize("damage", [b"\xff\xfe{not json", b'{"attributes": {"complete": tr', b"[1, 2]",
                                    b'{"attributes": [1], "zarr_format": 3, "node_type": "group"}',
                                    b"[" * 100_000])
def test_a_damaged_group_document_is_one_line_naming_the_store_and_document(tmp_path, damage):
    """A flipped or truncated metadata document of a folder group, of a video entry or of the
    root: one StoreError line naming the store and the document, never a JSON traceback."""
    from clifvqa.features.store import StoreError, create_or_open_store, open_store
    from clifvqa.testing.stores import synthetic_provenance, synthetic_video

    prov = synthetic_provenance(r=2, grid=(1, 1))
    with create_or_open_store(tmp_path / "s.zarr", prov) as st:
        st.write_video("k/v0.mp4", **synthetic_video(prov, seed=0, num_rows=3))
        st.finalize()
    for doc in ("videos/k/zarr.json", "videos/k/v0.mp4/zarr.json", "zarr.json"):
        store = tmp_path / doc.replace("/", "_")
        shutil.copytree(tmp_path / "s.zarr", store)
        (store / doc).write_bytes(damage)
        with pytest.raises(StoreError) as got:
            with open_store(store) as opened:
                opened.read_pooled(opened.keys()[0] if opened.keys() else "k/v0.mp4")
        message = str(got.value)
        assert "\n" not in message and f"{store}: {doc}: this metadata document " in message, message


# ---------------------------------------------------------------- what is ignored, attributes (library level)


@pytest.fixture
def small(tmp_path):
    from clifvqa.features.store import create_or_open_store
    from clifvqa.testing.stores import synthetic_provenance, synthetic_video

    prov = synthetic_provenance(r=2, grid=(1, 1))
    with create_or_open_store(tmp_path / "s.zarr", prov) as st:
        for i in range(3):
            st.write_video(f"k/v{i}.mp4", **synthetic_video(prov, seed=i, num_rows=3))
        st.finalize()
    return tmp_path / "s.zarr"


def test_what_is_not_a_video_is_reported_by_verify_and_refused_by_merge_unless_allowed(small, tmp_path):
    from clifvqa.errors import MAX_LISTED
    from clifvqa.features.merge import PartialSourceError, convert_store
    from clifvqa.features.store import open_store
    from clifvqa.features.verify import verify_store

    for i in range(MAX_LISTED + 5):  # empty group chains, as deep-nesting and many-tiny-entries make
        group = small / "videos" / f"junk{i:02d}" / "deeper"
        group.mkdir(parents=True)
        for folder in (group, group.parent):
            (folder / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group", "attributes": {}}')
    (small / "videos" / "k" / "v0.mp4" / "notes.txt").write_text("unknown file")
    with open_store(small) as store:
        ignored = store.ignored()
    assert len(ignored) == MAX_LISTED + 6
    assert ignored["videos/junk00"] == "2 group(s) holding no video"
    assert ignored["videos/k/v0.mp4/notes.txt"] == "a file that is no Zarr metadata document"
    problems = [str(p) for p in verify_store(small)]
    assert len(problems) == 1 and problems[0].startswith(f"(store): {small}: {MAX_LISTED + 6} thing(s) in it are not")
    assert "videos/junk09 (2 group(s) holding no video) and 6 more;" in problems[0]
    with pytest.raises(PartialSourceError, match=r"--allow-partial") as refused:
        convert_store(small, tmp_path / "c.h5", progress=False)
    assert "\n" not in str(refused.value) and not (tmp_path / "c.h5").exists()
    report = convert_store(small, tmp_path / "c.h5", allow_partial=True, progress=False)
    assert report.videos == 3 and report.left_out[0]["ignored_count"] == MAX_LISTED + 6
    with open_store(small) as src, open_store(tmp_path / "c.h5") as out:
        assert out.provenance["left_out"][0]["ignored"]["videos/junk00"] == "2 group(s) holding no video"
        assert out.fingerprint == src.fingerprint and out.ignored() == {}


def test_a_deleted_video_folder_is_a_mismatch_for_recount_verify_and_merge(small, tmp_path):
    from clifvqa.features.info import store_info
    from clifvqa.features.merge import PartialSourceError, merge_stores
    from clifvqa.features.verify import verify_store

    shutil.rmtree(small / "videos" / "k" / "v1.mp4")
    assert store_info(small)["counts"]["complete"] == 3  # O(1): the summary, which nothing updated
    info = store_info(small, recount=True)
    assert info["counts"]["complete"] == 2
    assert info["mismatch"] == ("its last finalize counted 3 complete, 0 incomplete, 0 failed videos but the "
                                "listing finds 2 complete, 0 incomplete, 0 failed; gone: videos/k/v1.mp4 (changed by "
                                "hand since?)")
    assert f"(store): {small}: {info['mismatch']}" in [str(p) for p in verify_store(small)]
    with pytest.raises(PartialSourceError, match="gone: videos/k/v1.mp4"):
        merge_stores([small], tmp_path / "m.zarr", progress=False)
    assert merge_stores([small], tmp_path / "m.zarr", allow_partial=True, progress=False).videos == 2


@pytest.mark.parametrize("attr,value,says", [
    ("num_frames", 1e300, "attribute num_frames = '1e+300' is not an integer in [0, 1e+08]"),
    ("fps", float("nan"), "attribute fps = 'nan' is not a finite number in [0.001, 10000]"),
    ("width", -5, "attribute width = '-5' is not an integer in [1, 65536]"),
    ("num_frames", True, "attribute num_frames = 'True' is not an integer in [0, 1e+08]"),
])
def test_absurd_attributes_are_refused_before_the_arrays_are_read(small, attr, value, says):
    from clifvqa.features.store import CorruptFeaturesError, open_store
    from clifvqa.features.verify import verify_store
    from clifvqa.testing.hostile import _set_video_attrs

    _set_video_attrs(small, "k/v1.mp4", **{attr: value})
    with open_store(small) as store:
        with pytest.raises(CorruptFeaturesError) as got:
            store.read_pooled("k/v1.mp4")
        assert str(got.value).startswith(f"{small}: video 'k/v1.mp4': pooled: {says}") and "\n" not in str(got.value)
        got = dict(store.read_pooled_many(["k/v0.mp4", "k/v1.mp4"]))  # the others are read
        assert isinstance(got["k/v1.mp4"], CorruptFeaturesError) and got["k/v0.mp4"].shape == (3, 4)
    assert [str(p) for p in verify_store(small)] == [f"k/v1.mp4: {says}; the entry is not read"]
