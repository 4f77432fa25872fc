"""store push / pull: the publish layout, through a local folder and moto's standalone S3 server
on 127.0.0.1 (reached through s3fs with AWS_ENDPOINT_URL and dummy credentials, as s3fs's own
tests do), resumption after interrupted transfers, damaged objects, and the Hub's plan and card
(offline: no request reaches the real Hub)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import uuid
import zipfile
import zlib

import numpy as np
import pytest
import yaml

from clifvqa.features.provenance import FingerprintMismatchError
from clifvqa.features.publish import (
    CARD,
    INDEX,
    SHARDS,
    PublishError,
    PublishIndex,
    hub_commit_plan,
    pull_store,
    push_store,
    read_index,
)
from clifvqa.features.store import create_or_open_store, open_store
from clifvqa.features.verify import verify_store
from clifvqa.manifests.io import Manifest, write_manifest
from clifvqa.testing.s3 import Hold
from clifvqa.testing.stores import synthetic_provenance, synthetic_video

PROV = synthetic_provenance(r=4, grid=(2, 3))
KEYS = [f"K/v{i:02d}.mp4" for i in range(12)]


def build(path, keys=KEYS, prov=PROV, rows=6):
    with create_or_open_store(path, prov) as store:
        for i, key in enumerate(keys):
            store.write_video(key, **synthetic_video(prov, seed=i, num_rows=rows, embedding_dim=4))
        store.record_failure("K/bad.mp4", "decode error", "K/bad.mp4")
        store.finalize()
    return path


def assert_same_store(a_path, b_path, keys=KEYS):
    with open_store(a_path) as a, open_store(b_path) as b:
        assert b.keys() == sorted(keys) and a.fingerprint == b.fingerprint
        assert a.stored_fingerprint == b.stored_fingerprint and a.provenance == b.provenance
        for key in keys:
            x, y = a.read_video(key), b.read_video(key)
            for name in ("pooled", "frames", "maps", "embeddings"):
                u, v = getattr(x, name), getattr(y, name)
                assert u.dtype == v.dtype and u.shape == v.shape and u.tobytes() == v.tobytes(), (key, name)
            assert x.attrs == y.attrs
    assert verify_store(b_path) == []


@pytest.fixture(scope="module")
def s3_server():
    """moto's S3 on 127.0.0.1 (:mod:`clifvqa.testing.s3`); yields the app (its request log and
    hold) and the endpoint."""
    pytest.importorskip("s3fs")
    pytest.importorskip("moto.server")
    from clifvqa.testing.s3 import S3App, serving

    app = S3App()
    with serving(app) as endpoint:
        yield app, endpoint


@pytest.fixture
def s3(s3_server, monkeypatch):
    """A fresh bucket on the moto server; yields its s3:// URL and the s3fs filesystem."""
    import s3fs

    app, endpoint = s3_server
    app.hold = None
    for name, value in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                        "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                        "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem()
    bucket = f"b{uuid.uuid4().hex[:12]}"
    fs.mkdir(bucket)
    yield f"s3://{bucket}", fs
    if app.hold is not None:
        app.hold.release()
    app.hold = None
    s3fs.S3FileSystem.clear_instance_cache()


def test_round_trip_through_s3(tmp_path, s3):
    bucket, fs = s3
    src = build(tmp_path / "s.zarr")
    url = f"{bucket}/pub/features"
    report = push_store(src, url, max_videos=5, progress=False, license="cc-by-4.0", source_datasets=["KoNViD-1k"])
    # 12 videos at 5 per shard: 3 shards, then the card and the index
    assert report.shards == 3 and len(report.uploaded) == 5 and report.present == []
    listed = sorted(p.split("/pub/features/", 1)[1] for p in fs.find(url))
    assert listed[:2] == [CARD, INDEX] and len(listed) == 5
    assert all(p.startswith("shards/") and p.endswith(".zarr.zip") for p in listed[2:])
    index = read_index(url)
    assert sorted(index.videos) == KEYS and [s.videos for s in index.shards] == [5, 5, 2]
    assert set(index.failures) == {"K/bad.mp4"}

    out = tmp_path / "back.zarr"
    pulled = pull_store(url, out, progress=False)
    assert (pulled.pulled, pulled.present, pulled.shards, pulled.failures) == (12, 0, 3, 1)
    assert_same_store(src, out)
    with open_store(out) as back:
        assert set(back.failures()) == {"K/bad.mp4"}
    again = pull_store(url, out, progress=False)
    assert (again.pulled, again.present, again.shards, again.bytes_downloaded) == (0, 12, 0, 0)
    rerun = push_store(src, url, max_videos=5, progress=False)  # the shards are there: only card and index
    assert rerun.uploaded == [CARD, INDEX] and len(rerun.present) == 3


def test_the_card_and_a_plain_zarr_read(tmp_path):
    import zarr

    src = build(tmp_path / "s.zarr")
    pub = tmp_path / "pub"
    push_store(src, str(pub), progress=False, license="cc-by-nc-4.0", source_datasets=["KoNViD-1k"],
               license_terms="Use only for research.")
    text = (pub / CARD).read_text()
    front = yaml.safe_load(text.split("---")[1])
    assert front["license"] == "cc-by-nc-4.0" and front["source_datasets"] == ["KoNViD-1k"]
    assert "feature-extraction" in front["task_categories"]
    assert "Use only for research." in text and PROV["clip"]["weights_sha256"] in text
    assert "testing" not in text  # no credential-looking value; the URL is shown redacted
    # the card's plain-zarr recipe, followed literally
    index = json.loads((pub / INDEX).read_text())
    shard_no, digest = index["videos"]["K/v03.mp4"]
    with zarr.storage.ZipStore(pub / index["shards"][shard_no]["path"], mode="r") as store:
        root = zarr.open_group(store, mode="r")
        pooled = root["videos/K/v03.mp4/pooled"][:]
        assert root.attrs["fingerprint"] == index["root"]["fingerprint"]
    import hashlib

    assert hashlib.sha256(pooled.astype("<f4").tobytes()).hexdigest() == digest
    assert np.array_equal(pooled, synthetic_video(PROV, seed=3, embedding_dim=4)["pooled"])


def test_partial_pull_by_manifest(tmp_path, s3):
    bucket, _ = s3
    src = build(tmp_path / "s.zarr")
    url = f"{bucket}/p"
    push_store(src, url, max_videos=4, progress=False)  # shards: v00-03, v04-07, v08-11
    manifest = write_manifest(Manifest.from_videos(["K/v01.mp4", "K/v02.mp4", "K/v09.mp4"]), tmp_path / "m.csv")
    out = tmp_path / "part.zarr"
    report = pull_store(url, out, manifest, progress=False)
    assert (report.pulled, report.shards) == (3, 2)  # the middle shard is never downloaded
    assert_same_store(src, out, ["K/v01.mp4", "K/v02.mp4", "K/v09.mp4"])
    missing = write_manifest(Manifest.from_videos(["K/v01.mp4", "K/nope.mp4"]), tmp_path / "n.csv")
    with pytest.raises(PublishError, match="1 manifest video.*K/nope.mp4"):
        pull_store(url, out, missing, progress=False)


class Interrupt:
    """Fault injection: the filesystem method ``name`` fails (as a dropped connection) on call ``after + 1``."""

    def __init__(self, monkeypatch, fs, name, after):
        self.calls, self.after, real = 0, after, getattr(fs, name)

        def failing(*args, **kwargs):
            self.calls += 1
            if self.calls > self.after:
                raise ConnectionResetError("connection reset by peer")
            return real(*args, **kwargs)

        monkeypatch.setattr(fs, name, failing)


def test_push_and_pull_resume_after_interruption(tmp_path, s3, monkeypatch):
    bucket, fs = s3
    src = build(tmp_path / "s.zarr")
    url = f"{bucket}/r"
    with monkeypatch.context() as m:
        Interrupt(m, fs, "put_file", after=2)
        with pytest.raises(PublishError, match="transfer interrupted while uploading shards/.*run the same command"):
            push_store(src, url, max_videos=3, progress=False)
    assert not fs.exists(f"{url}/{INDEX}")  # not published until the index lands
    report = push_store(src, url, max_videos=3, progress=False)
    assert len(report.present) == 2 and len(report.uploaded) == 2 + 2  # the other 2 of 4 shards, card, index

    out = tmp_path / "back.zarr"
    with monkeypatch.context() as m:
        Interrupt(m, fs, "get_file", after=1)
        with pytest.raises(PublishError, match="transfer interrupted while downloading shards/"):
            pull_store(url, out, progress=False)
    with open_store(out) as part:
        assert part.keys() == KEYS[:3]  # the first shard's videos arrived whole
    resumed = pull_store(url, out, progress=False)
    assert (resumed.present, resumed.pulled, resumed.shards) == (3, 9, 3)
    assert_same_store(src, out)
    assert not list(tmp_path.glob(".pulling-*"))  # no downloaded shard left behind


def flip_in_member(data: bytes, member: str) -> bytes:
    """``data`` (a zip archive) with one byte of ``member``'s stored bytes flipped."""
    import io

    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        info = zf.getinfo(member)
    header = 30 + len(info.filename.encode()) + len(info.extra)  # the local file header
    at = info.header_offset + header + info.compress_size // 2
    return data[:at] + bytes([data[at] ^ 0x40]) + data[at + 1:]


def test_damaged_object_is_refused_naming_the_video(tmp_path, s3):
    bucket, fs = s3
    src = build(tmp_path / "s.zarr")
    url = f"{bucket}/d"
    push_store(src, url, max_videos=6, progress=False)
    index = read_index(url)
    shard = index.shards[1]
    target = f"{url}/{shard.path}"
    fs.pipe_file(target, flip_in_member(fs.cat_file(target), "videos/K/v08.mp4/pooled/c/0/0"))
    out = tmp_path / "back.zarr"
    with pytest.raises(PublishError, match=r"shards/00001-.*is damaged.*video 'K/v08.mp4' damaged.*nothing was taken"):
        pull_store(url, out, progress=False)
    with open_store(out) as part:
        assert part.keys() == KEYS[:6]  # the intact shard arrived; nothing of the damaged one


def listing(fs, url):
    """``{path below url: (size, etag)}`` of every object there (the etag: the object's bytes)."""
    return {p.split(url.split("://", 1)[1] + "/", 1)[1]: (info["size"], info.get("ETag"))
            for p, info in fs.find(url, detail=True).items()}


def test_push_refuses_another_fingerprint_at_the_url(tmp_path, s3):
    """A publication of other features at the URL is refused before any shard is built (nothing
    uploaded, the index untouched, one line naming both fingerprints and --replace); with
    --replace the new store is published and the old shards the new index does not reference are
    removed once it is written."""
    from click.testing import CliRunner

    from clifvqa.cli import main

    bucket, fs = s3
    url = f"{bucket}/shared"
    old = build(tmp_path / "old.zarr")
    push_store(old, url, max_videos=5, progress=False)
    new = build(tmp_path / "new.zarr", keys=KEYS[:7], prov=synthetic_provenance(r=5, grid=(2, 3)))
    with open_store(old) as a, open_store(new) as b:
        old_fp, new_fp = a.stored_fingerprint, b.stored_fingerprint
    before = listing(fs, url)
    result = CliRunner().invoke(main, ["store", "push", str(new), url, "--max-videos", "3", "-q"])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    message = result.output
    assert f"holds a publication of other features (fingerprint {old_fp[:19]}...)" in message
    assert f"{new} (fingerprint {new_fp[:19]}...)" in message and "prompts" in message
    assert "push to another URL, or pass --replace" in message
    assert listing(fs, url) == before and read_index(url).fingerprint == old_fp  # nothing uploaded
    assert not (tmp_path / "new.zarr.publish").exists()  # refused before building a shard

    result = CliRunner().invoke(main, ["store", "push", str(new), url, "--max-videos", "3", "-q", "--replace"])
    assert result.exit_code == 0, result.output
    assert f"replaced the features published there before (fingerprint {old_fp[:19]}...)" in result.output
    assert "removed 3 shard file(s) the new index does not reference" in result.output  # the old 5 + 5 + 2
    index = read_index(url)
    assert index.fingerprint == new_fp and [s.videos for s in index.shards] == [3, 3, 1]
    assert sorted(listing(fs, url)) == sorted([CARD, INDEX] + [s.path for s in index.shards])
    pull_store(url, tmp_path / "back.zarr", progress=False)
    assert_same_store(new, tmp_path / "back.zarr", KEYS[:7])


def test_push_refuses_an_unfinished_push_of_another_fingerprint(tmp_path, s3, monkeypatch):
    """Shards without an index: their fingerprint is read from the first shard's root (its zip
    directory and zarr.json, not the whole shard); another one is refused as for a publication,
    the same one resumes, and --replace removes the other push's shards once the index is written."""
    bucket, fs = s3
    url = f"{bucket}/unfinished"
    other = build(tmp_path / "other.zarr", prov=synthetic_provenance(r=5, grid=(2, 3)))
    with monkeypatch.context() as m:
        Interrupt(m, fs, "put_file", after=2)
        with pytest.raises(PublishError, match="transfer interrupted"):
            push_store(other, url, max_videos=3, progress=False)
    stranded = sorted(listing(fs, url))
    assert len(stranded) == 2 and INDEX not in stranded
    src = build(tmp_path / "s.zarr")
    with open_store(other) as o:
        theirs = o.stored_fingerprint
    with pytest.raises(FingerprintMismatchError, match=rf"holds an unfinished push of other features \(fingerprint "
                       rf"{re.escape(theirs[:19])}.*pass --replace"):
        push_store(src, url, max_videos=3, progress=False)
    assert sorted(listing(fs, url)) == stranded and not (tmp_path / "s.zarr.publish").exists()
    resumed = push_store(other, url, max_videos=3, progress=False)  # its own push resumes without --replace
    assert len(resumed.present) == 2 and resumed.replaced is None and resumed.removed == []

    fs.rm(f"{url}/{INDEX}")  # unfinished again, of the other fingerprint
    report = push_store(src, url, max_videos=5, progress=False, replace=True)
    assert report.replaced == theirs and sorted(report.removed) == [s.path for s in read_index(
        str(tmp_path / "other.zarr.publish")).shards]
    index = read_index(url)
    assert sorted(listing(fs, url)) == sorted([CARD, INDEX] + [s.path for s in index.shards])
    pull_store(url, tmp_path / "back.zarr", progress=False)
    assert_same_store(src, tmp_path / "back.zarr")


def test_a_grown_store_pushes_to_its_url_as_before(tmp_path, s3):
    """The same fingerprint needs no --replace: a store that grew is pushed over its publication,
    and the shards the new index does not reference are only listed, never removed."""
    bucket, fs = s3
    url = f"{bucket}/grown"
    src = build(tmp_path / "s.zarr", keys=KEYS[:8])
    push_store(src, url, max_videos=5, progress=False)
    first = read_index(url)
    with create_or_open_store(src, PROV) as store:
        for i, key in enumerate(KEYS[8:], 8):
            store.write_video(key, **synthetic_video(PROV, seed=i, num_rows=6, embedding_dim=4))
        store.finalize()
    report = push_store(src, url, max_videos=5, progress=False)
    index = read_index(url)
    assert report.replaced is None and report.removed == [] and index.fingerprint == first.fingerprint
    assert [s.videos for s in index.shards] == [5, 5, 2]
    kept = sorted(s.path for s in first.shards if s.path not in {t.path for t in index.shards})
    assert kept and report.unreferenced == kept and set(kept) <= set(listing(fs, url))
    pull_store(url, tmp_path / "back.zarr", progress=False)
    assert_same_store(src, tmp_path / "back.zarr")


def test_pull_refuses_another_fingerprint(tmp_path):
    src = build(tmp_path / "s.zarr")
    push_store(src, str(tmp_path / "pub"), progress=False)
    other = build(tmp_path / "other.zarr", keys=["K/x.mp4"], prov=synthetic_provenance(r=5, grid=(2, 3)))
    with pytest.raises(FingerprintMismatchError, match="prompts"):
        pull_store(str(tmp_path / "pub"), other, progress=False)


def test_a_tampered_index_is_refused(tmp_path):
    src = build(tmp_path / "s.zarr")
    pub = tmp_path / "pub"
    push_store(src, str(pub), progress=False)
    doc = json.loads((pub / INDEX).read_text())
    edited = json.loads((pub / INDEX).read_text())
    edited["root"]["provenance"]["grid"] = [3, 3]
    (pub / INDEX).write_text(json.dumps(edited))
    with pytest.raises(PublishError, match="fingerprint .* does not match its provenance"):
        pull_store(str(pub), tmp_path / "x.zarr", progress=False)
    with pytest.raises(PublishError, match="breaks the path rule"):
        PublishIndex.parse(json.dumps({**doc, "videos": {"../x": [0, "0" * 64]}}).encode(), "i")
    with pytest.raises(PublishError, match="shard entry 0 is malformed"):
        shards = [{**doc["shards"][0], "path": "../../etc/passwd"}]
        PublishIndex.parse(json.dumps({**doc, "shards": shards}).encode(), "i")


def test_s3_errors_are_one_line(tmp_path, s3, monkeypatch):
    src = build(tmp_path / "s.zarr")
    with pytest.raises(PublishError, match="not found .*bucket or repository exists") as exc:
        push_store(src, f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/x", progress=False)
    assert "\n" not in str(exc.value)
    assert not (tmp_path / "s.zarr.publish").exists()  # said before the shards were built
    with pytest.raises(PublishError, match=r"nothing is published there \(no index.json\); check the URL"):
        pull_store(f"{s3[0]}/nothing", tmp_path / "y.zarr", progress=False)
    import s3fs

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    s3fs.S3FileSystem.clear_instance_cache()
    with pytest.raises(PublishError, match="no credentials .*AWS_ACCESS_KEY_ID"):
        pull_store(f"{s3[0]}/x", tmp_path / "y.zarr", progress=False)
    with pytest.raises(PublishError, match="no credentials .*AWS_ACCESS_KEY_ID"):
        push_store(src, f"{s3[0]}/x", progress=False)
    assert not (tmp_path / "s.zarr.publish").exists()


def test_missing_extra_names_the_pip_command(monkeypatch):
    import fsspec

    from clifvqa.features import publish

    def no_package(url, **kwargs):
        raise ImportError("Install s3fs to access S3")

    monkeypatch.setattr(fsspec.core, "url_to_fs", no_package)
    with pytest.raises(PublishError, match=r"pip install 'clifvqa\[remote\]'"):
        publish.filesystem("s3://bucket/x")
    with pytest.raises(PublishError, match=r"pip install 'clifvqa\[hub\]'"):
        publish.filesystem("hf://datasets/org/name")
    err = publish._transfer_error(PermissionError("Access Denied"), "s3://u:secret@b/x", "uploading x")
    assert "permission denied" in str(err) and "secret" not in str(err)


def test_hub_plan_keeps_the_hubs_limits():
    files = [f"shards/{i:05d}-{'0' * 16}.zarr.zip" for i in range(120)] + [CARD, INDEX]
    commits = hub_commit_plan(files)
    assert all(0 < len(c) < 100 for c in commits) and commits[-1] == [INDEX]
    assert [f for c in commits for f in c] == files and len(commits) == 4  # 50 + 50 + 21 + the index
    with pytest.raises(PublishError, match="fewer than 10000 files per folder"):
        hub_commit_plan([f"shards/{i:05d}.zarr.zip" for i in range(10_000)])
    with pytest.raises(PublishError, match="fewer than 100"):
        hub_commit_plan(files, per_commit=100)


def test_hub_push_goes_through_the_public_api(tmp_path):
    """The upload to hf:// calls huggingface_hub's HfApi.create_commit (a stand-in records the
    calls here: nothing reaches the real Hub) and skips files the repository already has; the
    index there is read through HfApi.hf_hub_download, refusing another fingerprint unless
    replace, which removes the old shards in a commit after the index's."""
    pytest.importorskip("huggingface_hub")
    from huggingface_hub import CommitOperationDelete

    class FakeApi:
        def __init__(self):
            self.commits, self.files = [], {}

        def list_repo_tree(self, repo_id, repo_type, recursive, path_in_repo):
            assert (repo_id, repo_type, recursive, path_in_repo) == ("org/feats", "dataset", True, "v1")
            return [type("F", (), {"path": p, "size": len(b)})() for p, b in self.files.items()]

        def create_commit(self, repo_id, operations, commit_message, repo_type):
            self.commits.append([op.path_in_repo for op in operations])
            for op in operations:
                if isinstance(op, CommitOperationDelete):
                    del self.files[op.path_in_repo]
                else:
                    self.files[op.path_in_repo] = open(op.path_or_fileobj, "rb").read()

        def hf_hub_download(self, repo_id, filename, repo_type):
            assert (repo_id, repo_type) == ("org/feats", "dataset")
            local = tmp_path / "hub-download" / filename
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(self.files[filename])
            return str(local)

    url = "hf://datasets/org/feats/v1"
    src = build(tmp_path / "s.zarr")
    api = FakeApi()
    report = push_store(src, url, max_videos=2, progress=False, hub_api=api)
    assert report.shards == 6 and api.commits[-1] == ["v1/index.json"] and len(api.commits) == 2
    assert api.commits[0][-1] == "v1/README.md" and len(api.commits[0]) == 7
    again = push_store(src, url, max_videos=2, progress=False, hub_api=api)
    assert again.uploaded == [CARD, INDEX] and len(again.present) == 6

    other = build(tmp_path / "o.zarr", keys=KEYS[:3], prov=synthetic_provenance(r=5, grid=(2, 3)))
    commits, files = len(api.commits), dict(api.files)
    with pytest.raises(FingerprintMismatchError, match="holds a publication of other features.*pass --replace"):
        push_store(other, url, max_videos=2, progress=False, hub_api=api)
    assert len(api.commits) == commits and api.files == files
    replaced = push_store(other, url, max_videos=2, progress=False, hub_api=api, replace=True)
    assert api.commits[-2] == ["v1/index.json"] and len(replaced.removed) == 6
    assert sorted(api.commits[-1]) == sorted(p for p in files if p.startswith("v1/shards/"))
    index = PublishIndex.parse(api.files["v1/index.json"], "index")
    assert sorted(api.files) == sorted(["v1/README.md", "v1/index.json"] + [f"v1/{s.path}" for s in index.shards])


def test_readers_take_a_published_url(tmp_path, s3, make_train_set, monkeypatch):
    """`train -s s3://...` of a published store trains exactly as from the local store (same
    losses and test metrics); `store info`/`verify` read it too, through one verified local copy
    that a second run reuses without fetching the shards again."""
    from click.testing import CliRunner

    from clifvqa.cli import main
    from clifvqa.features import publish

    bucket, fs = s3
    monkeypatch.setenv("CLIFVQA_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    data = make_train_set(tmp_path / "set")
    url = f"{bucket}/train-set"
    push_store(data.store, url, progress=False)

    def train(store, out):
        args = ["train", "--manifest", str(data.manifest), "--videos", str(data.videos), "--store", str(store),
                "--out", str(out), "--tiny", "--epochs", "1", "--batch-size", "2", "--workers", "0",
                "--num-clips-test", "2", "--quiet"]
        result = CliRunner().invoke(main, args, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]

    remote, local = train(url, tmp_path / "remote-run"), train(data.store, tmp_path / "local-run")
    drop = {"time", "seconds", "elapsed", "wall_s", "epoch_s"}
    assert [{k: v for k, v in r.items() if k not in drop} for r in remote] == \
           [{k: v for k, v in r.items() if k not in drop} for r in local]

    fetched = []
    monkeypatch.setattr(publish, "_pull_shard", lambda *a, **k: fetched.append(a) or 0)  # a second read fetches nothing
    result = CliRunner().invoke(main, ["store", "verify", url, "-q"])
    assert result.exit_code == 0 and "no problems" in result.output and fetched == []
    result = CliRunner().invoke(main, ["store", "info", url, "--json"])
    assert json.loads(result.stdout)["counts"]["complete"] == len(data.keys) and fetched == []


# ---------------------------------------------------------------- real processes killed mid-transfer


def clifvqa(*args, **popen):
    """``clifvqa ARGS`` in a process of its own (the installed CLI, as a user runs it)."""
    return subprocess.Popen([sys.executable, "-m", "clifvqa.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)


def kill_when_held(proc, hold, ready=lambda: True):
    """SIGKILL ``proc`` once the server holds its chosen request and ``ready()`` holds."""
    try:
        deadline = time.monotonic() + 120
        while not hold.reached.wait(0.05):
            assert proc.poll() is None, f"the run ended before its request was held: {proc.communicate()}"
            assert time.monotonic() < deadline, "the held request never came"
        while not ready():
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL
    finally:
        proc.kill()
        proc.wait()
        hold.release()


def rerun(*args):
    """``clifvqa ARGS`` run to its end: (stdout, stderr); it must succeed."""
    proc = clifvqa(*args)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return out, err


def moved(app, since, method):
    """The shard and top-level objects ``method`` moved after request number ``since``."""
    return sorted(path.split("/", 3)[3] for m, path in app.requests[since:]
                  if m == method and re.search(rf"/({SHARDS}/.+|{CARD}|{INDEX})\Z", path))


def test_push_killed_mid_upload_resumes(tmp_path, s3, s3_server):
    """`clifvqa store push` killed while the server holds the upload of its third of four shards:
    nothing reads the URL as published; the rerun uploads the two missing shards, the card and
    the index, and what it published is what an uninterrupted push publishes."""
    app, _ = s3_server
    bucket, fs = s3
    src = build(tmp_path / "s.zarr")
    url = f"{bucket}/killed"
    app.hold = Hold("PUT", rf"/killed/{SHARDS}/", nth=3)
    kill_when_held(clifvqa("store", "push", src, url, "--max-videos", 3), app.hold)

    staged = read_index(str(tmp_path / "s.zarr.publish"))  # the layout the push built and kept
    landed = sorted(p.split("/killed/", 1)[1] for p in fs.find(url))
    assert landed == [s.path for s in staged.shards[:2]]  # two whole shards, no index, no card
    with pytest.raises(PublishError, match=r"a push there has not finished \(2 shard file\(s\), no index.json"):
        pull_store(url, tmp_path / "x.zarr", progress=False)
    with pytest.raises(PublishError, match="has not finished"):
        open_store(url)
    assert not (tmp_path / "x.zarr").exists()

    since = len(app.requests)
    out, err = rerun("store", "push", src, url, "--max-videos", 3)
    assert moved(app, since, "PUT") == sorted([s.path for s in staged.shards[2:]] + [CARD, INDEX])
    assert "uploaded 4 files" in out and "2 already there" in out and "read back: ok" in out
    assert re.search(r"^push: [\d.]+ MiB in [\d.]+ s \([\d.]+ MiB/s\)$", err, re.M)  # throughput on stderr

    clean = f"{bucket}/clean"
    push_store(src, clean, staging=tmp_path / "clean.publish", max_videos=3, progress=False)
    resumed, fresh = read_index(url), read_index(clean)
    assert (resumed.root, resumed.videos, resumed.failures) == (fresh.root, fresh.videos, fresh.failures)
    assert [(s.size, s.videos) for s in resumed.shards] == [(s.size, s.videos) for s in fresh.shards]
    pull_store(url, tmp_path / "resumed.zarr", progress=False)
    pull_store(clean, tmp_path / "fresh.zarr", progress=False)
    assert_same_store(src, tmp_path / "resumed.zarr")
    assert_same_store(tmp_path / "fresh.zarr", tmp_path / "resumed.zarr")


def test_pull_killed_mid_download_resumes(tmp_path, s3, s3_server):
    """`clifvqa store pull` killed half-way through downloading its third of four shards: DEST
    holds the first two shards' videos, each verified, and nothing of the third; the rerun
    downloads only the last two shards, removes the partial download and ends equal to the source."""
    app, _ = s3_server
    bucket, _fs = s3
    src = build(tmp_path / "s.zarr", rows=200)  # shards of ~0.4 MB: a download is cut part-way
    url = f"{bucket}/pk"
    push_store(src, url, max_videos=3, progress=False)
    index = read_index(url)
    dest = tmp_path / "d" / "back.zarr"
    dest.parent.mkdir()
    half = index.shards[2].size // 2
    app.hold = Hold("GET", rf"/pk/{SHARDS}/", nth=3, body_bytes=half)

    def partial():
        return [p for p in dest.parent.glob(".pulling-*") if p.stat().st_size > 0]

    kill_when_held(clifvqa("store", "pull", url, dest), app.hold, partial)
    assert all(p.stat().st_size <= half for p in partial())  # a part of the third shard, never used
    with open_store(dest) as part:
        assert part.keys() == KEYS[:6]  # only what arrived whole and verified counts
    assert verify_store(dest) == []

    since = len(app.requests)
    out, _err = rerun("store", "pull", url, dest)
    assert moved(app, since, "GET") == sorted([INDEX] + [s.path for s in index.shards[2:]])
    assert "6 videos verified and written, 6 already there (12 asked for); 2 shards" in out
    assert "removed 1 partial download(s) of a stopped pull" in out
    assert sorted(p.name for p in dest.parent.iterdir()) == ["back.zarr"]
    pull_store(url, tmp_path / "fresh.zarr", progress=False)
    assert_same_store(src, dest)
    assert_same_store(tmp_path / "fresh.zarr", dest)


def test_the_local_copy_of_a_published_url_follows_the_publication(tmp_path, s3, s3_server, monkeypatch, capsys):
    """Readers of a published URL read a verified local copy: unchanged, nothing is fetched
    again; grown, only the new shard; changed (republished: videos gone, other provenance, other
    settings), the copy is fetched again whole, never served stale."""
    app, _ = s3_server
    bucket, _ = s3
    monkeypatch.setenv("CLIFVQA_CACHE_DIR", str(tmp_path / "cache"))
    url = f"{bucket}/live"

    def publish(keys, prov=PROV, src=None):
        src = src or tmp_path / f"{uuid.uuid4().hex[:8]}.zarr"
        with create_or_open_store(src, prov) as store:
            for key in keys:
                seed = zlib.crc32(key.encode())
                store.write_video(key, **synthetic_video(prov, seed=seed, num_rows=6, embedding_dim=4))
            store.finalize()
        push_store(src, url, max_videos=4, progress=False, replace=prov != PROV)
        return src

    def read_and_count():
        """The copy a reader gets, checked against the publication, and the objects it fetched."""
        since = len(app.requests)
        with open_store(url) as copy:
            path, fingerprint = copy.path, copy.fingerprint
        fetched = moved(app, since, "GET")
        assert_same_store(src, path, keys)
        assert fingerprint == read_index(url).fingerprint
        assert fetched.count(INDEX) == 1  # read once
        return len([p for p in fetched if p.startswith(f"{SHARDS}/")])

    keys = KEYS[:8]
    src = publish(keys)
    assert read_and_count() == 2
    assert read_and_count() == 0  # unchanged: the index is read, no shard
    keys = KEYS
    src = publish(KEYS[8:], src=src)  # more videos extracted into the same store
    assert read_and_count() == 1  # grown: the new shard only
    assert "changed" not in capsys.readouterr().err
    keys = KEYS[2:]  # two videos gone, the others the same but for the store's creation time
    src = publish(keys)
    assert read_and_count() == 3
    assert "the publication changed since" in capsys.readouterr().err
    keys = ["K/x.mp4"]
    src = publish(keys, synthetic_provenance(r=5, grid=(2, 3)))  # other settings
    assert read_and_count() == 1
    assert "the publication changed since" in capsys.readouterr().err
    assert len(list((tmp_path / "cache" / "published").glob("*.zarr"))) == 1
