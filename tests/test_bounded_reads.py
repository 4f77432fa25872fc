"""A store someone sent you is untrusted input (issue 21, "one bounded read path"): every hostile
case of tests/hostile_stores.py is refused by every library reader and CLI command with one line
naming the store and the entry, in bounded memory. Each reader runs in a child process with a
2 GiB address-space limit, so a regression fails here instead of exhausting the machine."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import hostile_stores  # noqa: E402 - a helper module next to this file

from clifvqa.features.merge import convert_store  # noqa: E402
from clifvqa.features.store import create_or_open_store  # noqa: E402
from clifvqa.testing.stores import synthetic_provenance, synthetic_video  # noqa: E402

KEYS = ["K/v0.mp4", "K/v1.mp4", "v2.mp4"]
VICTIM = KEYS[hostile_stores.VICTIM]
H5_BOMB = 1 << 30  # 1 MB of deflate; the zstd bombs are 8 GB in 256 KB
CASES = hostile_stores.all_cases(VICTIM, H5_BOMB)
REFUSALS = {"CorruptFeaturesError", "UnsafeStoreError", "StoreError"}


@pytest.fixture(scope="module")
def intact(tmp_path_factory):
    root = tmp_path_factory.mktemp("intact")
    prov = synthetic_provenance(r=4, grid=(2, 3))
    with create_or_open_store(root / "s.zarr", prov) as store:
        for i, key in enumerate(KEYS):
            store.write_video(key, **synthetic_video(prov, seed=i, num_rows=6, embedding_dim=8, source=key))
        store.finalize()
    convert_store(root / "s.zarr", root / "s.zarr.zip", progress=False)
    convert_store(root / "s.zarr", root / "s.h5", progress=False)
    return {"zarr": root / "s.zarr", "zarr.zip": root / "s.zarr.zip", "h5": root / "s.h5"}


def damaged(intact, case, tmp_path) -> Path:
    kind, damage = CASES[case]
    store = tmp_path / intact[kind].name
    if kind == "zarr":
        shutil.copytree(intact[kind], store, symlinks=True)
    else:
        shutil.copyfile(intact[kind], store)
    (tmp_path / "scratch").mkdir()
    if damage is not None:
        damage(store, tmp_path / "scratch")
    return store


def probe(store: Path) -> dict:
    done = subprocess.run([sys.executable, hostile_stores.__file__, "--limit-gb", "2", "--probe", str(store), VICTIM],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def intact_peak(intact, tmp_path_factory):
    return max(probe(intact[kind])["peak_mb"] for kind in intact)


@pytest.mark.parametrize("case", list(CASES))
def test_every_reader_refuses_in_one_line_with_bounded_memory(intact, intact_peak, case, tmp_path):
    store = damaged(intact, case, tmp_path)
    got = probe(store)
    readers = {k: v for k, v in got.items() if k not in ("verify", "peak_mb")}
    if case.startswith("intact"):
        assert set(readers.values()) == {"ok"} and got["verify"] == [], got
        return
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
    store = damaged(intact, "zstd bomb, 8 GB declared", tmp_path)  # 256 KB for an array of 96 bytes
    assert "holds 262157 bytes, more than the 4291 it may" in probe(store)["read_video"]["message"]
    hostile_stores.chunk(store, VICTIM).write_bytes(hostile_stores.zstd_zeros(8 << 30)[:64])  # a small bomb
    message = probe(store)["read_video"]["message"]
    assert "pooled: a zstd chunk declares 8589934592 decoded bytes where its array takes 192 (a" in message


DECODE = """
import json, resource, sys
sys.path.insert(0, sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
import hostile_stores
from clifvqa.features.bounded import decode_bounded
bomb = hostile_stores.zstd_zeros(8 << 30)
lying = bomb[:5] + (192).to_bytes(8, "little") + bomb[13:]  # its header says 192 bytes
out = {}
for name, codec, raw in [("zstd, size not declared", "zstd", hostile_stores.zstd_zeros(8 << 30, declare=False)),
                         ("zstd, 192 declared", "zstd", lying),
                         ("deflate", "deflate", hostile_stores.deflate_zeros(1 << 30))]:
    try:
        decode_bounded(codec, raw, 192)
        out[name] = "decoded"
    except Exception as exc:
        out[name] = f"{type(exc).__name__}: {exc}"
print(json.dumps(out))
"""


def test_decoding_stops_at_the_expected_size():
    """Chunks that inflate past their array are stopped there, also when no header says so."""
    done = subprocess.run([sys.executable, "-c", DECODE, str(Path(__file__).parent)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout)
    too_small = "RuntimeError: Zstd decompression error: b'Destination buffer is too small'"
    assert got["zstd, size not declared"] == got["zstd, 192 declared"] == too_small
    assert got["deflate"] == ("UnsafeStoreError: a deflate chunk inflates to more than the 192 bytes of its array; "
                              "stopped there")


def test_declared_shapes_are_checked_against_the_entry(intact, tmp_path):
    store = damaged(intact, "pooled shape [1e8, 2r]", tmp_path)
    message = probe(store)["read_video"]["message"]
    assert (f"video '{VICTIM}': pooled declares float32 [100000000, 8], but its entry has num_frames 6 "
            "(frame_stride 1): at most 6 rows; nothing was read") in message


@pytest.mark.parametrize("case,says", [
    ("chunk -> /dev/zero", "is a symbolic link; clifvqa never follows links"),
    ("chunk -> chunk outside", "is a symbolic link; clifvqa never follows links"),
    ("video folder -> outside", f"videos/{VICTIM} is a symbolic link"),
    ("chunk is a FIFO", "is a special file (a device, FIFO or socket)"),
    ("zip: members outside the root", "lie outside the store's root ('videos/../../x'"),
    ("h5: pooled is an external link", "pooled is an external link; clifvqa never follows links"),
    ("h5: pooled stored in /dev/zero", "keeps its data in other files"),
    ("h5: lzf filter", "HDF5 filter(s) [32000]"),
    ("h5: deflate bomb", "more than an array of 192 compresses to; not read"),
])
def test_what_is_never_followed_or_decoded(intact, tmp_path, case, says):
    got = probe(damaged(intact, case, tmp_path))
    messages = [r["message"] for r in got.values() if isinstance(r, dict)] + (
        got["verify"] if isinstance(got["verify"], list) else [])
    assert any(says in m for m in messages), got


@pytest.mark.parametrize("case", ["zstd bomb, 8 GB declared", "chunk -> /dev/zero", "zip: members outside the root",
                                  "h5: deflate bomb"])
def test_cli_commands_end_in_one_error_line(intact, tmp_path, case):
    """merge and convert refuse (exit 2), verify lists the video (exit 1) or refuses the store, info
    --recount reads no chunk (a bomb is data: exit 0) but refuses links; never a traceback."""
    store = damaged(intact, case, tmp_path)
    runs = {
        "info --recount": ["store", "info", "--recount", str(store)],
        "merge": ["store", "merge", "--quiet", str(store), "-o", str(tmp_path / "m.zarr")],
        "convert": ["store", "convert", "--quiet", str(store), "-o", str(tmp_path / "c.h5")],
        "verify": ["store", "verify", "--quiet", str(store)],
    }
    for name, argv in runs.items():
        got = hostile_stores.run_limited(argv, limit_bytes=2 << 30, timeout=60, log=tmp_path / "log.txt")
        text = (tmp_path / "log.txt").read_text()
        assert not got["traceback"] and got["peak_mb"] < 200, (name, got, text)
        assert got["exit"] in {"info --recount": (0, 2), "verify": (1, 2)}.get(name, (2,)), (name, got, text)
        if got["exit"] == 2:
            assert text.count("error:") == 1 and str(store) in got["error"], (name, text)
        elif name == "verify":
            assert text.startswith(f"{VICTIM}: "), (name, text)
    assert not (tmp_path / "m.zarr").exists() and not (tmp_path / "c.h5").exists()
