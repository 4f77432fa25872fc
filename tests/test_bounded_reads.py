"""A store someone sent you is untrusted input (issue 21, "one bounded read path"): every case of
the hostile corpus (clifvqa.testing.hostile) that damages a video entry is refused by every
library reader with one line naming the store and the entry, in bounded memory. Each probe runs
in a child process with a 2 GiB address-space limit, so a regression fails here instead of
exhausting the machine."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from clifvqa.features.merge import convert_store
from clifvqa.features.store import create_or_open_store
from clifvqa.testing import hostile
from clifvqa.testing.hostile import ENTRY_LEVEL, VICTIM, make_case, run_limited, zstd_rle_frame
from clifvqa.testing.stores import synthetic_provenance, synthetic_video

KEYS = ["K/v0.mp4", VICTIM, "v2.mp4"]
REFUSALS = {"CorruptFeaturesError", "UnsafeStoreError", "StoreError"}
LIMIT = 2 << 30
CLI = "import sys; from clifvqa.cli import main; sys.argv[0] = 'clifvqa'; main()"


@pytest.fixture(scope="module")
def intact(tmp_path_factory):
    """An intact store (r = 4, 2x3 crops, 6 rows per video, embeddings) and its .zarr.zip and .h5 copies."""
    root = tmp_path_factory.mktemp("intact")
    prov = synthetic_provenance(r=4, grid=(2, 3))
    with create_or_open_store(root / "s.zarr", prov) as store:
        for i, key in enumerate(KEYS):
            store.write_video(key, **synthetic_video(prov, seed=i, num_rows=6, embedding_dim=8, source=key))
        store.finalize()
    convert_store(root / "s.zarr", root / "s.zarr.zip", progress=False)
    convert_store(root / "s.zarr", root / "s.h5", progress=False)
    return {"zarr": root / "s.zarr", "zarr.zip": root / "s.zarr.zip", "h5": root / "s.h5"}


def probe(store) -> dict:
    done = subprocess.run([sys.executable, "-c", hostile.PROBE, str(store), VICTIM, str(LIMIT)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def intact_peak(intact):
    got = {kind: probe(path) for kind, path in intact.items()}
    for kind, result in got.items():  # every reader reads every intact backend
        assert {v for k, v in result.items() if k not in ("verify", "peak_mb")} == {"ok"}, (kind, result)
        assert result["verify"] == [], (kind, result)
    return max(result["peak_mb"] for result in got.values())


@pytest.mark.parametrize("case", ENTRY_LEVEL)
def test_every_reader_refuses_in_one_line_with_bounded_memory(intact, intact_peak, case, tmp_path):
    store = make_case(case, intact["zarr"], tmp_path)
    got = probe(store)
    readers = {k: v for k, v in got.items() if k not in ("verify", "peak_mb")}
    refused = {name: result for name, result in readers.items() if result != "ok"}
    assert refused, got  # every case damages something a reader reads
    for name, result in refused.items():
        message = result["message"]
        assert result["error"] in REFUSALS, (name, result)
        assert str(store) in message and "\n" not in message, (name, message)
        assert VICTIM in message or "zip member" in message, (name, message)
    verified = got["verify"]
    if isinstance(verified, list):  # verify lists the damaged video, or says the store cannot be listed
        assert verified and all(p.startswith(f"{VICTIM}: ") or p.startswith("(store): ") and str(store) in p
                                for p in verified), verified
    else:  # ... or it cannot even open the store
        assert verified["error"] in REFUSALS and str(store) in verified["message"], verified
    assert got["peak_mb"] <= max(1.5 * intact_peak, intact_peak + 64), (got["peak_mb"], intact_peak)


def test_bombs_are_refused_before_inflating(intact, tmp_path):
    store = make_case("zstd-bomb", intact["zarr"], tmp_path)  # 256 KB for an array of 192 bytes
    assert "holds 262158 bytes, more than the 4291 it may" in probe(store)["read_video"]["message"]
    hostile._chunk(store, VICTIM, "pooled").write_bytes(zstd_rle_frame(8 << 30)[:64])  # a small bomb
    message = probe(store)["read_video"]["message"]
    assert "pooled: a zstd chunk declares 8589934592 decoded bytes where its array takes 192 (a" in message


DECODE = """
import json, resource
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
from clifvqa.features.bounded import decode_bounded
from clifvqa.testing.hostile import deflate_zeros, zstd_rle_frame
out = {}
for name, codec, raw in [("zstd, size not declared", "zstd", zstd_rle_frame(8 << 30, declared=-1)),
                         ("zstd, 192 declared", "zstd", zstd_rle_frame(8 << 30, declared=192)),
                         ("deflate", "deflate", deflate_zeros(1 << 30))]:
    try:
        decode_bounded(codec, raw, 192)
        out[name] = "decoded"
    except Exception as exc:
        out[name] = f"{type(exc).__name__}: {exc}"
print(json.dumps(out))
"""


def test_decoding_stops_at_the_expected_size():
    """Chunks that inflate past their array are stopped there, also when no header says so."""
    done = subprocess.run([sys.executable, "-c", DECODE], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout)
    too_small = "RuntimeError: Zstd decompression error: b'Destination buffer is too small'"
    assert got["zstd, size not declared"] == got["zstd, 192 declared"] == too_small
    assert got["deflate"] == ("UnsafeStoreError: a deflate chunk inflates to more than the 192 bytes of its array; "
                              "stopped there")


def test_declared_shapes_are_checked_against_the_entry(intact, tmp_path):
    message = probe(make_case("pooled-shape-huge", intact["zarr"], tmp_path))["read_video"]["message"]
    assert (f"video '{VICTIM}': pooled declares float32 [100000000, 8], but its entry has num_frames 6 "
            "(frame_stride 1): at most 6 rows; nothing was read") in message


@pytest.mark.parametrize("case,says", [
    ("symlink-dev-zero", "is a symbolic link; clifvqa never follows links"),
    ("symlink-outside", "is a symbolic link; clifvqa never follows links"),
    ("video-folder-symlink", f"videos/{VICTIM} is a symbolic link"),
    ("fifo-chunk", "is a special file (a device, FIFO or socket)"),
    ("zip-escape", "lie outside the store's root ('videos/../../x'"),
    ("h5-external-link", "pooled is an external link; clifvqa never follows links"),
    ("h5-external-storage", "keeps its data in other files"),
    ("h5-lzf", "HDF5 filter(s) [32000]"),
    ("h5-deflate-bomb", "more than an array of 192 compresses to; not read"),
])
def test_what_is_never_followed_or_decoded(intact, tmp_path, case, says):
    got = probe(make_case(case, intact["zarr"], tmp_path))
    messages = [r["message"] for r in got.values() if isinstance(r, dict)] + (
        got["verify"] if isinstance(got["verify"], list) else [])
    assert any(says in m for m in messages), got


@pytest.mark.parametrize("case", ["zstd-bomb", "symlink-dev-zero", "zip-escape", "h5-deflate-bomb"])
def test_cli_commands_end_in_one_error_line(intact, tmp_path, case):
    """merge and convert refuse (exit 2), verify lists the video (exit 1) or refuses the store, info
    --recount reads no chunk (a bomb is data: exit 0) but refuses links; never a traceback."""
    store = make_case(case, intact["zarr"], tmp_path / "in")
    runs = {
        "info --recount": ["store", "info", "--recount", str(store)],
        "merge": ["store", "merge", "--quiet", str(store), "-o", str(tmp_path / "m.zarr")],
        "convert": ["store", "convert", "--quiet", str(store), "-o", str(tmp_path / "c.h5")],
        "verify": ["store", "verify", "--quiet", str(store)],
    }
    for name, argv in runs.items():
        code, peak_mb, text = run_limited([sys.executable, "-c", CLI, *argv], LIMIT, 60)
        errors = [line for line in text.splitlines() if line.startswith("error:")]
        assert "Traceback" not in text and peak_mb < 200, (name, peak_mb, text)
        assert code in {"info --recount": (0, 2), "verify": (1, 2)}.get(name, (2,)), (name, code, text)
        if code == 2:
            assert len(errors) == 1 and str(store) in errors[0], (name, text)
        elif name == "verify":
            assert text.startswith(f"{VICTIM}: "), (name, text)
    assert not (tmp_path / "m.zarr").exists() and not (tmp_path / "c.h5").exists()


def test_a_file_gone_between_listing_and_check_is_not_an_error(tmp_path, monkeypatch):
    """Another process sharing the store (a second shard) writes zarr.<hex>.partial and renames it
    while this one checks the tree: the name is listed, then gone. Seen as a failed two-shard run."""
    import os

    from clifvqa.features.bounded import LocalTree, UnsafeStoreError

    (tmp_path / "zarr.json").write_text("{}")
    walk = os.walk

    def walk_with_a_vanished_file(top):
        for folder, dirs, files in walk(top):
            yield folder, dirs, [*files, "zarr.98df48a40fe94854.partial"] if folder == str(tmp_path) else files

    monkeypatch.setattr(os, "walk", walk_with_a_vanished_file)
    LocalTree(tmp_path).check_all()  # no error
    os.symlink("/dev/zero", tmp_path / "link")
    with pytest.raises(UnsafeStoreError):
        LocalTree(tmp_path).check_all()  # what is there is still checked
