"""``store push`` / ``store pull``: publish a finished store to any fsspec URL in a layout of a
few large files, and fetch it back into a normal local store, verified on arrival.

Publish layout (at the URL; ``docs/FORMAT.md``, "Published stores")::

    README.md                          dataset card (YAML front matter + provenance in words)
    index.json                         format, root (clifvqa_format, fingerprint, provenance),
                                       shards [{path, size, sha256, videos}],
                                       videos {key: [shard number, pooled_sha256]}, failures
    shards/NNNNN-<sha256[:16]>.zarr.zip   each a complete clifvqa store (root provenance and
                                          fingerprint) of at most ``max_videos`` videos and
                                          ``max_bytes`` of decoded arrays, keys in sorted order

A shard is an ordinary ``.zarr.zip`` (``zarr.storage.ZipStore`` opens it; ``clifvqa store merge
shards/*.zarr.zip -o x.zarr`` joins them), so the layout needs nothing of clifvqa to read. Shard
names carry their content hash: a file at the URL with a shard's name and size is that shard,
which is how a rerun of a push uploads only what is missing or differs (any fsspec filesystem,
object stores included, lists names and sizes), and how a shard built again with other bytes
never overwrites one that a collaborator's index refers to. ``index.json`` is written last: its
presence says the publication is complete. A push over features of another fingerprint (a
publication, or an unfinished push whose first shard says so) is refused unless ``replace``,
which removes the old shard files once the new index is in place.

Everything that arrives is untrusted: the index is read with a size bound and checked (keys by
the path rule, shard paths by their pattern, the fingerprint against the provenance); each shard
is downloaded next to the destination, must have the index's size and sha256, and is then read
through the bounded read path (:mod:`clifvqa.features.bounded`) like any ``.zarr.zip``; every
video's ``pooled`` must hash to the index's ``pooled_sha256``; only then is it written into the
destination, where it counts once ``complete`` is set (so a killed pull resumes where it stopped).

Credentials come from each filesystem's own conventions (``AWS_*`` variables, ``AWS_PROFILE``,
``AWS_ENDPOINT_URL`` for S3-compatible services; ``HF_TOKEN`` or ``huggingface-cli login`` for
the Hub); clifvqa never reads, prints or records them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clifvqa._atomic import atomic_write_text, locked, remove_abandoned, temporary_sibling
from clifvqa.errors import MAX_LISTED
from clifvqa.features.provenance import fingerprint as fingerprint_of
from clifvqa.features.provenance import require_same_features
from clifvqa.features.sources import sha256_file
from clifvqa.features.store import (
    CorruptFeaturesError,
    FeatureStore,
    StoreError,
    check_key,
    create_or_open_store,
    is_url,
    open_store,
)

PUBLISH_FORMAT = 1
"""``index.json``'s ``publish_format``; a reader refuses values it does not know."""
INDEX = "index.json"
CARD = "README.md"
SHARDS = "shards"
MAX_SHARD_VIDEOS = 1000
"""Default videos per shard: 39 shards for LSVQ's 39,000 videos, about 130 MB each without embeddings."""
MAX_SHARD_BYTES = 2 * 2**30
"""Default bound on a shard's decoded arrays (its file is smaller: zstd); reached first when
crop embeddings are stored (about 2.7 MB per 10 s video)."""
MAX_INDEX_BYTES = 256 * 2**20
"""The most an ``index.json`` may hold (39,000 videos take about 5 MB)."""
HUB_FILES_PER_COMMIT = 50
"""Files per Hub commit: the Hub asks for fewer than 100 per commit through its API."""
HUB_FILES_PER_FOLDER = 10_000
HUB_FILES_PER_REPO = 100_000
SHARD_NAME = re.compile(rf"{SHARDS}/(\d{{5}})-([0-9a-f]{{16}})\.zarr\.zip\Z")
PULLING = "pulling"  # the label of a shard being downloaded next to the destination

EXTRAS: dict[str, str] = {"s3": "remote", "s3a": "remote", "gs": "remote", "gcs": "remote",
                          "http": "remote", "https": "remote", "hf": "hub"}


class PublishError(StoreError):
    """A push or pull that cannot go on: missing extra or credentials, no such bucket or repo,
    permission denied, an interrupted transfer, or a published store that fails its checks."""


# ---------------------------------------------------------------- the index


@dataclass
class Shard:
    """One shard file: its path below the URL, size and sha256 of the file, videos in it."""

    path: str
    size: int
    sha256: str
    videos: int


@dataclass
class PublishIndex:
    """What ``index.json`` holds (see the module docstring)."""

    root: dict[str, Any]
    shards: list[Shard]
    videos: dict[str, tuple[int, str]]
    failures: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        return str(self.root["fingerprint"])

    def to_json(self) -> str:
        doc = {"publish_format": PUBLISH_FORMAT, "root": self.root,
               "shards": [vars(s) for s in self.shards],
               "videos": {k: list(v) for k, v in sorted(self.videos.items())},
               "failures": dict(sorted(self.failures.items()))}
        return json.dumps(doc, sort_keys=True, separators=(",", ":")) + "\n"

    @classmethod
    def parse(cls, text: bytes, where: str, remedy: str = "push it again") -> PublishIndex:
        """The index in ``text``, checked: a malformed or inconsistent one is a :class:`PublishError`
        (its message ending in ``remedy``)."""
        def bad(why: str) -> PublishError:
            return PublishError(f"{where}: {why}; this is not a store published by clifvqa store push "
                                f"(or it was damaged): {remedy}")
        try:
            doc = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise bad(f"not JSON ({exc})") from None
        if not isinstance(doc, dict) or doc.get("publish_format") != PUBLISH_FORMAT:
            got = doc.get("publish_format") if isinstance(doc, dict) else None
            raise bad(f"publish_format {got!r}, this clifvqa reads {PUBLISH_FORMAT}")
        root, shards, videos = doc.get("root"), doc.get("shards"), doc.get("videos")
        if not (isinstance(root, dict) and isinstance(shards, list) and isinstance(videos, dict)):
            raise bad("root, shards or videos missing")
        if not isinstance(root.get("provenance"), dict) or not isinstance(root.get("fingerprint"), str):
            raise bad("its root has no provenance or fingerprint")
        try:
            recomputed = fingerprint_of(root["provenance"])
        except (ValueError, TypeError, KeyError) as exc:
            raise bad(f"unusable provenance ({exc})") from None
        if recomputed != root["fingerprint"]:
            raise bad(f"fingerprint {root['fingerprint']} does not match its provenance (which hashes to {recomputed})")
        parsed: list[Shard] = []
        for i, s in enumerate(shards):
            ok = (isinstance(s, dict) and isinstance(s.get("path"), str) and SHARD_NAME.match(s["path"])
                  and isinstance(s.get("size"), int) and s["size"] >= 0 and isinstance(s.get("videos"), int)
                  and isinstance(s.get("sha256"), str) and re.fullmatch(r"[0-9a-f]{64}", s["sha256"])
                  and int(SHARD_NAME.match(s["path"]).group(1)) == i  # type: ignore[union-attr]
                  and s["sha256"].startswith(SHARD_NAME.match(s["path"]).group(2)))  # type: ignore[union-attr]
            if not ok:
                raise bad(f"shard entry {i} is malformed ({str(s)[:120]})")
            parsed.append(Shard(s["path"], s["size"], s["sha256"], s["videos"]))
        table: dict[str, tuple[int, str]] = {}
        counts = [0] * len(parsed)
        for key, value in videos.items():
            try:
                check_key(key)
            except ValueError as exc:
                raise bad(f"video key {key!r} breaks the path rule ({exc})") from None
            if not (isinstance(value, list) and len(value) == 2 and isinstance(value[0], int)
                    and 0 <= value[0] < len(parsed) and isinstance(value[1], str)
                    and re.fullmatch(r"[0-9a-f]{64}", value[1])):
                raise bad(f"video {key!r} has a malformed entry ({str(value)[:120]})")
            table[key] = (value[0], value[1])
            counts[value[0]] += 1
        if counts != [s.videos for s in parsed]:
            raise bad("the shards' video counts do not match the video table")
        failures = doc.get("failures") or {}
        if not isinstance(failures, dict) or not all(isinstance(v, dict) for v in failures.values()):
            raise bad("failures is malformed")
        for key in failures:
            check_key(key)
        return cls(dict(root), parsed, table, failures)


# ---------------------------------------------------------------- filesystems and errors


def redact(url: str) -> str:
    """``url`` without a ``user:password@`` part, for messages (credentials are never printed)."""
    return re.sub(r"(://)[^/@]*@", r"\1", url)


def _protocol(url: str) -> str:
    return url.split("://", 1)[0].lower() if is_url(url) else "file"


def filesystem(url: str) -> tuple[Any, str]:
    """``(fsspec filesystem, path in it)`` for ``url`` (a local path too); a missing package is
    one :class:`PublishError` line naming the pip command."""
    import fsspec

    proto = _protocol(url)
    try:
        fs, path = fsspec.core.url_to_fs(url if is_url(url) else str(Path(url).absolute()))
    except ImportError as exc:
        extra = EXTRAS.get(proto)
        how = f"pip install 'clifvqa[{extra}]'" if extra else "install the fsspec package for it"
        raise PublishError(f"{redact(url)}: {proto}:// needs a package that is not installed ({exc}): {how}") from None
    # fsspec shares one instance per set of options, with the listings it has seen: each operation
    # starts from what is there now (another process may have pushed meanwhile)
    fs.invalidate_cache()
    return fs, str(path)


def _transfer_error(exc: BaseException, url: str, doing: str) -> PublishError:
    """One line for what a filesystem raised, by the ecosystem's exception types (their text
    names buckets and keys, never secrets)."""
    name, where, proto = type(exc).__name__, redact(url), _protocol(url)
    text = " ".join(str(exc).split())[:200]
    if name in ("NoCredentialsError", "PartialCredentialsError", "LocalTokenNotFoundError") or (
            name == "HfHubHTTPError" and " 401 " in f" {text} "):
        how = ("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), and AWS_ENDPOINT_URL for "
               "S3-compatible storage" if proto.startswith("s3")
               else "set HF_TOKEN or run `huggingface-cli login`" if proto == "hf"
               else "set up that storage's credentials")
        return PublishError(f"{where}: no credentials for {doing}: {how}")
    if isinstance(exc, PermissionError) or name == "GatedRepoError" or " 403 " in f" {text} ":
        return PublishError(f"{where}: permission denied {doing} ({text}); check that your credentials may "
                            "read and write there")
    if isinstance(exc, FileNotFoundError) or name in ("RepositoryNotFoundError", "NoSuchBucket"):
        return PublishError(f"{where}: not found while {doing} ({text}); check the URL, and that the bucket "
                            "or repository exists (push creates neither)")
    return PublishError(f"{where}: transfer interrupted while {doing} ({name}: {text}); run the same command "
                        "again: it resumes, transferring only what is missing")


def _guarded(url: str, doing: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``, with what the filesystem raises as one :class:`PublishError` line."""
    try:
        return fn(*args, **kwargs)
    except (PublishError, KeyboardInterrupt):
        raise
    except Exception as exc:  # noqa: BLE001 - every filesystem has its own exceptions; each becomes one line
        raise _transfer_error(exc, url, doing) from exc


def _join(base: str, rel: str) -> str:
    return f"{base.rstrip('/')}/{rel}"


class _Progress:
    """Bytes moved, as a bar on stderr (when shown) and a throughput line at the end."""

    def __init__(self, total: int, desc: str, show: bool) -> None:
        from tqdm.auto import tqdm

        show = show and total > 0  # nothing to move: no bar, no throughput line
        self.bar = tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                        disable=not show, dynamic_ncols=True, file=sys.stderr)
        self.start, self.done, self.show = time.perf_counter(), 0, show

    def transfer(self, size: int, fn: Callable[..., Any], *args: Any) -> None:
        """``fn(*args, callback=...)`` moving ``size`` bytes; filesystems that report no progress
        (local copies) are counted when the file is done."""
        before = self.done
        fn(*args, callback=self._callback())
        self.add(max(0, size - (self.done - before)))

    def _callback(self) -> Any:
        from fsspec.callbacks import Callback

        progress = self

        class Forward(Callback):  # type: ignore[misc]  # fsspec ships no type information
            def call(self, *args: Any, **kwargs: Any) -> None:
                pass

            def relative_update(self, inc: int = 1) -> None:
                progress.add(inc)

        return Forward()

    def add(self, n: int) -> None:
        self.done += n
        self.bar.update(n)

    def close(self, what: str) -> float:
        self.bar.close()
        took = time.perf_counter() - self.start
        if self.show:
            rate = self.done / 2**20 / took if took > 0 else 0.0
            print(f"{what}: {self.done / 2**20:.1f} MiB in {took:.1f} s ({rate:.1f} MiB/s)", file=sys.stderr)
        return took


# ---------------------------------------------------------------- building the layout


def plan_shards(store: FeatureStore, *, max_videos: int = MAX_SHARD_VIDEOS,
                max_bytes: int = MAX_SHARD_BYTES) -> list[list[str]]:
    """The complete videos of ``store`` in sorted key order, cut into shards of at most
    ``max_videos`` videos and ``max_bytes`` of declared (decoded) array bytes; a video larger
    than ``max_bytes`` is a shard of its own."""
    if max_videos < 1 or max_bytes < 1:
        raise ValueError(f"max_videos and max_bytes must be positive, got {max_videos} and {max_bytes}")
    import numpy as np

    from clifvqa.features.bounded import ARRAY_DTYPES, nbytes

    shards: list[list[str]] = []
    size = 0
    for key in store.keys():
        video = sum(nbytes(store.array_shape(key, n), np.dtype(ARRAY_DTYPES[n])) for n in store.array_names(key))
        if not shards or len(shards[-1]) >= max_videos or (shards[-1] and size + video > max_bytes):
            shards.append([])
            size = 0
        shards[-1].append(key)
        size += video
    return shards


def _state_digest(store: FeatureStore, max_videos: int, max_bytes: int) -> str:
    """What a staged publication was built from: the store's entries (key, pooled_sha256),
    failure records and the shard bounds."""
    entries = sorted((k, a.get("pooled_sha256")) for k, a in store.entries().items())
    doc = [store.stored_fingerprint, entries, sorted(store.failures()), max_videos, max_bytes]
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class Staged:
    """A publication built locally: ``folder`` holds ``index.json``, ``README.md`` and ``shards/``."""

    folder: Path
    index: PublishIndex
    built: int = 0  # shards built by this call (0: all reused from an earlier one)

    def files(self) -> list[str]:
        """Relative paths in upload order: shards, the card, the index last."""
        return [s.path for s in self.index.shards] + [CARD, INDEX]


def stage(store_path: str | os.PathLike[str], staging: str | os.PathLike[str], *,
          max_videos: int = MAX_SHARD_VIDEOS, max_bytes: int = MAX_SHARD_BYTES,
          card: Mapping[str, Any] | None = None, progress: bool = True) -> Staged:
    """Build (or reuse) the publish layout of the local store ``store_path`` in ``staging``.

    Shards are reused when ``staging`` holds a publication of the same store contents and bounds
    (so a push that was stopped uploads the same files when run again); otherwise they are
    built again. ``card``: :func:`render_card`'s keyword arguments (license, source datasets...).
    """
    from tqdm.auto import tqdm

    from clifvqa.features.merge import MergeReport, _write_output

    folder = Path(staging)
    with open_store(store_path) as store:
        store.check_fingerprint()
        state = _state_digest(store, max_videos, max_bytes)
        record = folder / "staged.json"
        index: PublishIndex | None = None
        if record.is_file():
            saved = json.loads(record.read_text())
            if saved.get("state") == state:
                index = PublishIndex.parse((folder / INDEX).read_bytes(), str(folder / INDEX))
                if not all((folder / s.path).is_file() and (folder / s.path).stat().st_size == s.size
                           for s in index.shards):
                    index = None
        built = 0
        if index is None:
            (folder / SHARDS).mkdir(parents=True, exist_ok=True)
            record.unlink(missing_ok=True)
            for old in (folder / SHARDS).iterdir():
                old.unlink()
            groups = plan_shards(store, max_videos=max_videos, max_bytes=max_bytes)
            entries = store.entries()
            shards: list[Shard] = []
            videos: dict[str, tuple[int, str]] = {}
            for i, keys in enumerate(tqdm(groups, desc="build shards", unit="shard", disable=not progress,
                                          dynamic_ncols=True)):
                tmp = folder / SHARDS / f".{i:05d}.zarr.zip"
                tmp.unlink(missing_ok=True)
                _write_output([store], dict.fromkeys(keys, 0), {}, tmp, "zarr.zip", 3,
                              MergeReport(out=str(tmp), sources=[store.path]), progress=False, verb="shard")
                digest = sha256_file(tmp)
                path = f"{SHARDS}/{i:05d}-{digest[:16]}.zarr.zip"
                os.replace(tmp, folder / path)
                shards.append(Shard(path, (folder / path).stat().st_size, digest, len(keys)))
                videos.update({k: (i, str(entries[k]["pooled_sha256"])) for k in keys})
                built += 1
            root = {"clifvqa_format": store.format_version, "fingerprint": store.stored_fingerprint,
                    "provenance": store.provenance}
            index = PublishIndex(root, shards, videos, store.failures())
            atomic_write_text(folder / INDEX, index.to_json())
        atomic_write_text(folder / CARD, render_card(index, **dict(card or {})))
        atomic_write_text(record, json.dumps({"state": state}))
    return Staged(folder, index, built)


# ---------------------------------------------------------------- the card


def render_card(index: PublishIndex, *, url: str | None = None, license: str = "other",
                source_datasets: Sequence[str] = (), license_terms: str | None = None,
                title: str | None = None) -> str:
    """The dataset card ``README.md``: YAML front matter (``license``, ``source_datasets``,
    ``task_categories``, ``tags``) and a body saying how the features were made, how to load
    them with clifvqa and with plain zarr, and the source licence's terms. Holds no credential
    (``url`` is shown without its ``user:password@`` part)."""
    import yaml

    prov = index.root["provenance"]
    where = redact(url) if url else "URL"
    sources = list(source_datasets)
    front = {"license": license, "source_datasets": sources or ["other"],
             "task_categories": ["video-classification", "feature-extraction"],
             "tags": ["clifvqa", "video-quality-assessment", "clip-features"],
             "pretty_name": title or "CLiF-VQA CLIP semantic features"}
    clip, prompts = prov.get("clip", {}), prov.get("prompts", {})
    texts = list(prompts.get("texts", []))
    m, n = prov.get("grid", ["?", "?"])
    stride = prov.get("frame_stride", 1)
    total = sum(s.size for s in index.shards)
    software = prov.get("software", {})
    embeddings = "yes (crop embeddings saved)" if prov.get("embeddings") else "no"
    terms = license_terms or (
        f"These features are derived from the videos of {', '.join(sources) or 'the source dataset'}. "
        "They are released under the licence above only as far as the source dataset's own licence "
        "allows: respect the source dataset's terms (attribution, non-commercial use, no "
        "redistribution of the videos) wherever you use them.")
    example = next(iter(index.videos), "KEY")
    shard0 = index.shards[0].path if index.shards else "shards/00000-....zarr.zip"
    lines = [
        "---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True).rstrip(), "---", "",
        f"# {front['pretty_name']}", "",
        f"CLIP semantic features of {len(index.videos)} videos for CLiF-VQA video quality assessment, "
        f"made with [clifvqa](https://pypi.org/project/clifvqa/) {software.get('clifvqa', '?')} and "
        f"published with `clifvqa store push`: {len(index.shards)} shard files, {total / 2**20:.1f} MiB.", "",
        "## How the features were made", "",
        f"- Every frame{'' if stride == 1 else f' (every {stride}th)'} "
        f"of each video was cut into a {m}x{n} grid of {prov.get('crop', '?')}x{prov.get('crop', '?')} crops "
        f"(frames smaller than a crop scaled up: `{prov.get('resize', '?')}`).",
        f"- Each crop was scored by the CLIP model `{clip.get('model', '?')}` (weights sha256 "
        f"`{clip.get('weights_sha256', '?')}`, {prov.get('dtype', '?')}) against {len(texts)} prompts "
        f"(template `{prompts.get('template')}`), softmax over `{prompts.get('softmax', '?')}`.",
        f"- Per frame: the {len(texts)} per-prompt averages over the crops, then the {len(texts)} maxima "
        "(`pooled`, float32 [T, 2r]); per-crop probabilities in `maps`; frame indices in `frames`.",
        f"- Crop embeddings stored: {embeddings}.",
        f"- Fingerprint `{index.fingerprint}`: two stores with this fingerprint hold interchangeable "
        "features.",
        f"- Prompts, in feature order: {', '.join(f'`{t}`' for t in texts)}.", "",
        f"Videos that could not be extracted: {len(index.failures)} (listed in `index.json` under `failures`).", "",
        "## Load with clifvqa", "",
        "```bash",
        "pip install 'clifvqa[remote]'            # s3://, gs://; 'clifvqa[hub]' for hf://",
        f"clifvqa store pull {where} features.zarr               # everything, verified on arrival",
        f"clifvqa store pull {where} part.zarr --manifest M.csv  # only a manifest's videos",
        "clifvqa store verify features.zarr",
        "```", "",
        "## Load with plain zarr", "",
        "Each file under `shards/` is a complete clifvqa feature store (format in clifvqa's "
        "`docs/FORMAT.md`) zipped as a `.zarr.zip`; `index.json` says which shard holds which "
        "video and the sha256 of its `pooled` array.", "",
        "```python",
        "import json, zarr",
        "index = json.load(open(\"index.json\"))",
        f"shard_no, pooled_sha256 = index[\"videos\"][{example!r}]",
        "path = index[\"shards\"][shard_no][\"path\"]          # download it first",
        "with zarr.storage.ZipStore(path, mode=\"r\") as store:",
        "    root = zarr.open_group(store, mode=\"r\")",
        f"    pooled = root[\"videos/{example}/pooled\"][:]   # float32 [T, 2r]",
        "```", "",
        f"For HDF5: `clifvqa store convert {shard0} shard.h5`, then read it with h5py.", "",
        "## Licence", "", f"License: `{license}`.", "", terms, "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------- push


@dataclass
class PushReport:
    """What a push did."""

    url: str
    shards: int
    uploaded: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    bytes_uploaded: int = 0
    seconds: float = 0.0
    unreferenced: list[str] = field(default_factory=list)
    replaced: str | None = None  # the fingerprint of the other features this push replaced (``replace``)
    removed: list[str] = field(default_factory=list)  # shard files the new index does not reference (``replace``)

    def summary(self) -> str:
        rate = self.bytes_uploaded / 2**20 / self.seconds if self.seconds > 0 else 0.0
        lines = [f"pushed {redact(self.url)}: {self.shards} shards; uploaded {len(self.uploaded)} files "
                 f"({self.bytes_uploaded / 2**20:.1f} MiB, {rate:.1f} MiB/s), {len(self.present)} already there; "
                 "index and root read back: ok"]
        if self.replaced:
            lines.append(f"replaced the features published there before (fingerprint {self.replaced[:19]}...)")
        if self.removed:
            lines.append(f"removed {len(self.removed)} shard file(s) the new index does not reference")
        if self.unreferenced:
            lines.append(f"{len(self.unreferenced)} file(s) under {SHARDS}/ are not in the index (an earlier "
                         f"push): {', '.join(self.unreferenced[:MAX_LISTED])}")
        return "\n".join(lines)


def hub_commit_plan(files: Sequence[str], per_commit: int = HUB_FILES_PER_COMMIT) -> list[list[str]]:
    """``files`` (upload order) in Hub commits of at most ``per_commit`` files, the last commit
    holding the index; raises :class:`PublishError` when the layout breaks a Hub limit (files per
    repository, per folder, per commit)."""
    if not 0 < per_commit < 100:
        raise PublishError(f"Hub commits must hold fewer than 100 files, asked for {per_commit}")
    if len(files) >= HUB_FILES_PER_REPO:
        raise PublishError(f"{len(files)} files: the Hub takes fewer than {HUB_FILES_PER_REPO} per repository; "
                           "raise --max-videos")
    folders: dict[str, int] = {}
    for f in files:
        folders[f.rpartition("/")[0]] = folders.get(f.rpartition("/")[0], 0) + 1
    crowded = [f"{k or '.'} ({v})" for k, v in folders.items() if v >= HUB_FILES_PER_FOLDER]
    if crowded:
        raise PublishError(f"the Hub takes fewer than {HUB_FILES_PER_FOLDER} files per folder: "
                           f"{', '.join(crowded)}; raise --max-videos")
    body = [f for f in files if f != INDEX]
    commits = [body[i:i + per_commit] for i in range(0, len(body), per_commit)]
    if INDEX in files:
        commits.append([INDEX])  # its own commit, last: the publication is complete once it lands
    return commits


def _remote_sizes(fs: Any, root: str) -> dict[str, int]:
    """``{relative path: size}`` of the files below ``root`` (empty when it does not exist yet;
    object stores raise FileNotFoundError for a missing bucket, which push does not create)."""
    found = fs.find(root, detail=True)
    base = root.rstrip("/") + "/"
    return {p[len(base):]: int(info.get("size") or 0) for p, info in found.items()
            if p.startswith(base) and info.get("type", "file") == "file"}


@dataclass
class _Held:
    """Features a URL (or the store being pushed) holds: ``what`` they are, their fingerprint and provenance."""

    what: str
    fingerprint: str
    provenance: dict[str, Any]


REPLACE_HOW = "push to another URL, or pass --replace to replace it there (its collaborators then get the new features)"
MAX_SHARD_ROOT_BYTES = 16 * 2**20
"""The most of a shard's root ``zarr.json`` a push reads to tell an unfinished push's fingerprint."""


def push_store(store: str | os.PathLike[str], url: str, *, staging: str | os.PathLike[str] | None = None,
               max_videos: int = MAX_SHARD_VIDEOS, max_bytes: int = MAX_SHARD_BYTES,
               license: str = "other", source_datasets: Sequence[str] = (), license_terms: str | None = None,
               title: str | None = None, progress: bool = True, replace: bool = False,
               hub_api: Any = None) -> PushReport:
    """Publish the local store ``store`` at ``url`` (a local path, ``s3://``, ``gs://``,
    ``hf://datasets/ORG/NAME`` or any fsspec URL) in the publish layout.

    The layout is built in ``staging`` (default: ``STORE.publish`` next to the store; kept, so
    that a stopped push resumes with the same files). Files already at ``url`` with their name
    and size are not uploaded again; the index goes last. The push ends by reading back the
    index and the card and comparing them, and the size of every shard. ``hub_api``: an
    ``huggingface_hub.HfApi`` (or stand-in) for ``hf://`` URLs; made on demand.

    A URL that holds features of another fingerprint (a publication, or an unfinished push whose
    shard says so: see :func:`_held_there`) is refused before any shard is built, unless
    ``replace``: then the push replaces them, and once the new index is written the shard files
    it does not reference are removed (a reader sees the old publication or the new one, never
    a mix). The same fingerprint (the store grew, or a stopped push) needs no ``replace``.

    Raises:
        FingerprintMismatchError: ``url`` holds features of another fingerprint and not ``replace``.
        PublishError: a missing package, credentials or bucket, an unreadable index at ``url``
            (not ``replace``), or a transfer problem.
    """
    src = Path(store)
    if is_url(str(store)):
        raise PublishError(f"{redact(str(store))}: push publishes a local store; pull it first")
    folder = Path(staging) if staging is not None else src.with_name(src.name + ".publish")
    card = {"url": url, "license": license, "source_datasets": source_datasets,
            "license_terms": license_terms, "title": title}
    with open_store(src) as opened:
        opened.check_fingerprint()
        ours = _Held("the store", opened.stored_fingerprint, opened.provenance)
    # what is there, asked before the shards are built: a missing package, credentials or bucket,
    # or other features at the URL, is said at once, not after building the layout (minutes at dataset scale)
    hub = _protocol(url) == "hf"
    if hub:
        hub_api, existing = _hub_listing(url, hub_api)
        there = _held_on_hub(url, hub_api, existing, replace)
    else:
        fs, root = filesystem(url)
        remote = _guarded(url, "listing what is there", _remote_sizes, fs, root)
        there = _held_there(fs, root, url, remote, replace)
    replaced = _replacing(url, src, ours, there, replace)
    staged = stage(src, folder, max_videos=max_videos, max_bytes=max_bytes, card=card, progress=progress)
    if hub:
        report = _push_hub(staged, url, progress, hub_api, existing, replace)
        report.replaced = replaced
        return report
    report = PushReport(url, len(staged.index.shards), replaced=replaced)
    todo = [rel for rel in staged.files()
            if rel in (CARD, INDEX) or remote.get(rel) != (staged.folder / rel).stat().st_size]
    report.present = [rel for rel in staged.files() if rel not in todo]
    meter = _Progress(sum((staged.folder / rel).stat().st_size for rel in todo), "push", progress)
    try:
        for rel in todo:
            if _protocol(url) == "file":  # object stores have no folders (and makedirs there creates buckets)
                fs.makedirs(_join(root, rel).rpartition("/")[0], exist_ok=True)
            size = (staged.folder / rel).stat().st_size
            _guarded(url, f"uploading {rel}", meter.transfer, size, fs.put_file, str(staged.folder / rel),
                     _join(root, rel))
            report.uploaded.append(rel)
            report.bytes_uploaded += (staged.folder / rel).stat().st_size
    finally:
        report.seconds = meter.close("push")
    _read_back(fs, root, url, staged)
    report.unreferenced, stale = _unreferenced(_remote_sizes(fs, root), staged, replace)
    if stale:  # the new index is in place: nothing refers to these any more
        _guarded(url, f"removing {len(stale)} shard file(s) the new index does not reference", fs.rm,
                 [_join(root, rel) for rel in stale])
        report.removed = stale
    return report


def _held_there(fs: Any, root: str, url: str, remote: Mapping[str, int], replace: bool) -> _Held | None:
    """The features at ``url`` before a push: the publication its index describes; else, for an
    unfinished push (shard files, no index), what its first shard's root records, read through
    the zip's member list and root ``zarr.json`` (ranged reads, never the whole shard; None when
    it cannot be read: nothing is refused on a guess); None when nothing is there. An index that
    does not parse is a :class:`PublishError` unless ``replace``."""
    if INDEX in remote:
        raw = _index_bytes(url)
        try:
            index = PublishIndex.parse(raw, _join(redact(url), INDEX), remedy=REPLACE_HOW)
        except PublishError:
            if replace:  # what it published is unknown, and replaced on purpose
                return None
            raise
        return _Held("a publication", index.fingerprint, index.root["provenance"])
    shards = sorted(rel for rel in remote if SHARD_NAME.match(rel))
    if not shards:
        return None
    import zipfile

    try:
        with fs.open(_join(root, shards[0]), "rb", block_size=2**20) as f, zipfile.ZipFile(f) as zf:
            info = zf.getinfo("zarr.json")
            if info.file_size > MAX_SHARD_ROOT_BYTES:
                return None
            attrs = json.loads(zf.read(info))["attributes"]
        found, provenance = attrs["fingerprint"], attrs["provenance"]
        if isinstance(found, str) and isinstance(provenance, dict) and fingerprint_of(provenance) == found:
            return _Held("an unfinished push", found, provenance)
    except Exception:  # noqa: BLE001 - a shard that cannot be read says nothing about its fingerprint
        pass
    return None


def _held_on_hub(url: str, api: Any, existing: Mapping[str, Any], replace: bool) -> _Held | None:
    """:func:`_held_there` for an ``hf://`` URL, through ``huggingface_hub``'s API: the index of
    a publication there. An unfinished push's fingerprint is not told on the Hub (its API would
    download a whole shard)."""
    repo_type, repo_id, prefix = _hub_repo(url)
    name = _hub_path(prefix, INDEX)
    if name not in existing:
        return None
    where = _join(redact(url), INDEX)
    size = existing[name]
    if size is None or size > MAX_INDEX_BYTES:
        raise PublishError(f"{where}: {size} bytes, more than the {MAX_INDEX_BYTES} an index may hold; refused")
    local = _guarded(url, f"reading {INDEX}", api.hf_hub_download, repo_id, name, repo_type=repo_type)
    try:
        index = PublishIndex.parse(Path(local).read_bytes(), where, remedy=REPLACE_HOW)
    except PublishError:
        if replace:
            return None
        raise
    return _Held("a publication", index.fingerprint, index.root["provenance"])


def _replacing(url: str, store: Path, ours: _Held, there: _Held | None, replace: bool) -> str | None:
    """The fingerprint of the other features a push to ``url`` replaces (None: the same or none);
    refuses them unless ``replace``."""
    if there is None or there.fingerprint == ours.fingerprint:
        return None
    if not replace:
        require_same_features(ours.provenance, there.provenance, fingerprints=(ours.fingerprint, there.fingerprint),
                              problem=f"{redact(url)} holds {there.what} of other features (fingerprint "
                              f"{there.fingerprint[:19]}...) than {store} (fingerprint {ours.fingerprint[:19]}...)",
                              remedy=REPLACE_HOW)
    return there.fingerprint


def _unreferenced(listed: Iterable[str], staged: Staged, replace: bool) -> tuple[list[str], list[str]]:
    """``(kept, removable)``: the files under ``shards/`` at the URL that the new index does not
    reference; with ``replace``, those named like shards are removable, the rest kept."""
    referenced = set(staged.files())
    stale = sorted(rel for rel in listed if rel.startswith(f"{SHARDS}/") and rel not in referenced)
    removable = [rel for rel in stale if replace and SHARD_NAME.match(rel)]
    return [rel for rel in stale if rel not in removable], removable


def _read_back(fs: Any, root: str, url: str, staged: Staged) -> None:
    """Check what landed: the index and card byte for byte, every shard's size."""
    sizes = _guarded(url, "reading back", _remote_sizes, fs, root)
    for rel in (INDEX, CARD):
        got = _guarded(url, f"reading back {rel}", fs.cat_file, _join(root, rel))
        if got != (staged.folder / rel).read_bytes():
            raise PublishError(f"{redact(url)}: {rel} read back differs from what was pushed; run the push again")
    PublishIndex.parse(fs.cat_file(_join(root, INDEX)), _join(redact(url), INDEX))
    wrong = [s.path for s in staged.index.shards if sizes.get(s.path) != s.size]
    if wrong:
        raise PublishError(f"{redact(url)}: {len(wrong)} shard(s) are missing or have another size after the push "
                           f"({', '.join(wrong[:MAX_LISTED])}); run the push again")


def _hub_repo(url: str) -> tuple[str, str, str]:
    """``(repo_type, repo_id, path prefix)`` of ``hf://datasets/ORG/NAME[/prefix]``."""
    parts = url.split("://", 1)[1].strip("/").split("/")
    if len(parts) < 3 or parts[0] not in ("datasets", "models", "spaces"):
        raise PublishError(f"{redact(url)}: a Hub URL reads hf://datasets/ORG/NAME[/FOLDER]")
    return parts[0][:-1], f"{parts[1]}/{parts[2]}", "/".join(parts[3:])


def _hub_path(prefix: str, rel: str) -> str:
    """The path in the repository of the layout's ``rel`` below ``prefix``."""
    return f"{prefix}/{rel}" if prefix else rel


def _hub_listing(url: str, api: Any) -> tuple[Any, dict[str, Any]]:
    """``(api, {path in the repository: size})`` for an ``hf://`` URL; ``api``: an
    ``huggingface_hub.HfApi`` (or stand-in), made when None."""
    repo_type, repo_id, prefix = _hub_repo(url)
    if api is None:
        try:
            from huggingface_hub import HfApi
        except ImportError:
            raise PublishError(f"{url}: pushing to the Hub needs huggingface_hub: pip install 'clifvqa[hub]'") from None
        api = HfApi()
    return api, _guarded(url, "listing the repository", lambda: {
        f.path: getattr(f, "size", None)
        for f in api.list_repo_tree(repo_id, repo_type=repo_type, recursive=True, path_in_repo=prefix or None)})


def _push_hub(staged: Staged, url: str, progress: bool, api: Any, existing: Mapping[str, Any],
              replace: bool) -> PushReport:
    """Upload through ``huggingface_hub``'s public API: commits of fewer than 100 files; with
    ``replace``, a last commit removes the shard files the new index does not reference."""
    repo_type, repo_id, prefix = _hub_repo(url)
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    report = PushReport(url, len(staged.index.shards))
    todo = [rel for rel in staged.files()
            if rel in (CARD, INDEX) or existing.get(_hub_path(prefix, rel)) != (staged.folder / rel).stat().st_size]
    report.present = [rel for rel in staged.files() if rel not in todo]
    meter = _Progress(sum((staged.folder / rel).stat().st_size for rel in todo), "push", progress)
    try:
        for n, batch in enumerate(hub_commit_plan(todo)):
            ops = [CommitOperationAdd(path_in_repo=_hub_path(prefix, rel), path_or_fileobj=str(staged.folder / rel))
                   for rel in batch]
            _guarded(url, f"commit {n + 1}", api.create_commit, repo_id, ops,
                     commit_message=f"clifvqa store push: {len(batch)} file(s)", repo_type=repo_type)
            for rel in batch:
                meter.add((staged.folder / rel).stat().st_size)
                report.uploaded.append(rel)
                report.bytes_uploaded += (staged.folder / rel).stat().st_size
    finally:
        report.seconds = meter.close("push")
    listed = [path[len(prefix) + 1:] if prefix else path for path in existing
              if not prefix or path.startswith(f"{prefix}/")]
    report.unreferenced, stale = _unreferenced(listed, staged, replace)
    for start in range(0, len(stale), HUB_FILES_PER_COMMIT):  # after the index's commit
        batch = stale[start:start + HUB_FILES_PER_COMMIT]
        _guarded(url, "removing shard files the new index does not reference", api.create_commit, repo_id,
                 [CommitOperationDelete(path_in_repo=_hub_path(prefix, rel)) for rel in batch],
                 commit_message=f"clifvqa store push --replace: remove {len(batch)} unreferenced shard(s)",
                 repo_type=repo_type)
        report.removed += batch
    return report


# ---------------------------------------------------------------- pull


@dataclass
class PullReport:
    """What a pull did."""

    url: str
    dest: str
    wanted: int = 0
    pulled: int = 0
    present: int = 0
    shards: int = 0
    bytes_downloaded: int = 0
    seconds: float = 0.0
    failures: int = 0
    leftovers_removed: list[str] = field(default_factory=list)

    def summary(self) -> str:
        rate = self.bytes_downloaded / 2**20 / self.seconds if self.seconds > 0 else 0.0
        return (f"pulled {redact(self.url)} into {self.dest}: {self.pulled} videos verified and written, "
                f"{self.present} already there ({self.wanted} asked for); {self.shards} shards, "
                f"{self.bytes_downloaded / 2**20:.1f} MiB at {rate:.1f} MiB/s"
                + (f"; removed {len(self.leftovers_removed)} partial download(s) of a stopped pull"
                   if self.leftovers_removed else ""))


def read_index(url: str) -> PublishIndex:
    """The checked index of the store published at ``url``."""
    return PublishIndex.parse(_index_bytes(url), _join(redact(url), INDEX))


def _index_bytes(url: str) -> bytes:
    """``index.json`` at ``url`` as stored, read with its size bound (unchecked)."""
    fs, root = filesystem(url)
    where = _join(redact(url), INDEX)
    path = _join(root, INDEX)
    try:
        size = _guarded(url, f"reading {INDEX}", fs.size, path)
    except PublishError as exc:
        if not isinstance(exc.__cause__, FileNotFoundError):
            raise
        raise _unfinished_push(fs, root, url) or PublishError(
            f"{redact(url)}: nothing is published there (no {INDEX}); check the URL, and that the bucket or "
            "repository exists") from None
    if size is None or size > MAX_INDEX_BYTES:
        raise PublishError(f"{where}: {size} bytes, more than the {MAX_INDEX_BYTES} an index may hold; refused")
    return bytes(_guarded(url, f"reading {INDEX}", fs.cat_file, path))


def _unfinished_push(fs: Any, root: str, url: str) -> PublishError | None:
    """For a URL without an index: the error saying a push there has not finished when shard
    files are there (the index is written last), else None."""
    try:
        found = fs.find(_join(root, SHARDS))
    except Exception:  # noqa: BLE001 - nothing to list: not an unfinished push
        return None
    shards = [p for p in found if SHARD_NAME.search(p)]
    if not shards:
        return None
    return PublishError(f"{redact(url)}: a push there has not finished ({len(shards)} shard file(s), no {INDEX}, "
                        "which a push writes last): run the push again; nothing is read from it until then")


def is_published(url: str) -> bool:
    """Whether ``url`` holds a published store (an ``index.json``)."""
    fs, root = filesystem(url)
    return bool(_guarded(url, f"looking for {INDEX}", fs.isfile, _join(root, INDEX)))


def _manifest_keys(manifest: Any) -> list[str]:
    from clifvqa.manifests.io import read_manifest

    rows = manifest if hasattr(manifest, "videos") else read_manifest(manifest)
    return list(dict.fromkeys(rows.videos))


def pull_store(url: str, dest: str | os.PathLike[str], manifest: Any = None, *, progress: bool = True,
               index: PublishIndex | None = None) -> PullReport:
    """Fetch the store published at ``url`` (all videos, or only ``manifest``'s: a CSV path or a
    ``Manifest``) into the local store ``dest`` (``.zarr`` or ``.h5``), verifying each video on
    arrival (see the module docstring) before it counts. Resumable: videos already complete in
    ``dest`` with the index's ``pooled_sha256`` are not fetched again. ``index``: the URL's
    index when already read (else it is read here).

    Raises:
        FingerprintMismatchError: ``dest`` exists with another fingerprint.
        PublishError: the index or a shard fails its checks (naming the shard and its videos),
            manifest videos the publication does not hold, or a transfer problem.
    """
    index = index or read_index(url)
    wanted = list(index.videos) if manifest is None else _manifest_keys(manifest)
    absent = [k for k in wanted if k not in index.videos]
    if absent:
        raise PublishError(f"{redact(url)}: {len(absent)} manifest video(s) are not in the published store: "
                           f"{', '.join(absent[:MAX_LISTED])}{' ...' if len(absent) > MAX_LISTED else ''}")
    dest_path = Path(dest)
    report = PullReport(url, str(dest_path), wanted=len(wanted))
    report.leftovers_removed = [str(p) for p in remove_abandoned(dest_path, PULLING)]
    prov = index.root["provenance"]
    with create_or_open_store(dest_path, prov, remedy=f"pull into a new store: {redact(url)} holds other "
                              "features than this one") as out:
        require_same_features(out.provenance, prov, fingerprints=(out.fingerprint, index.fingerprint),
                              problem=f"{dest_path} holds features made with other settings than {redact(url)}",
                              remedy="pull into a new store")
        have = out.entries()
        differ = [k for k in wanted if k in have and have[k].get("pooled_sha256") != index.videos[k][1]]
        if differ:
            raise PublishError(f"{dest_path} already holds other features for {len(differ)} video(s) of "
                               f"{redact(url)} (e.g. {differ[0]!r}); pull into a new store")
        todo = [k for k in wanted if k not in have]
        report.present = len(wanted) - len(todo)
        by_shard: dict[int, list[str]] = {}
        for key in todo:
            by_shard.setdefault(index.videos[key][0], []).append(key)
        fs, root = filesystem(url)
        meter = _Progress(sum(index.shards[i].size for i in by_shard), "pull", progress)
        try:
            for i in sorted(by_shard):
                report.pulled += _pull_shard(fs, root, url, index, i, by_shard[i], out, dest_path, meter)
                report.shards += 1
        finally:
            report.bytes_downloaded = meter.done
            report.seconds = meter.close("pull")
        if manifest is None:
            for key, record in index.failures.items():
                if key not in index.videos and key not in out.failures():
                    out.record_failure(key, str(record.get("error", "")), str(record.get("source", "")),
                                       time=record.get("time"))
                    report.failures += 1
        out.finalize()
    return report


def _pull_shard(fs: Any, root: str, url: str, index: PublishIndex, number: int, keys: list[str],
                out: FeatureStore, dest: Path, meter: _Progress) -> int:
    shard = index.shards[number]
    local = temporary_sibling(dest, PULLING, ".zarr.zip")
    try:
        _guarded(url, f"downloading {shard.path}", meter.transfer, shard.size, fs.get_file,
                 _join(root, shard.path), str(local))
        size = local.stat().st_size
        digest = sha256_file(local)
        if size != shard.size or digest != shard.sha256:
            named = _damaged_videos(local, keys, index)
            raise PublishError(f"{redact(url)}: {shard.path} is damaged ({size} bytes, sha256 {digest[:16]}..., the "
                               f"index says {shard.size} bytes, {shard.sha256[:16]}...): {named}; nothing was "
                               "taken from it: ask the publisher to push again")
        try:
            with open_store(local) as src:
                if src.stored_fingerprint != index.fingerprint or not src.fingerprint_ok:
                    raise PublishError(f"{redact(url)}: {shard.path} has fingerprint {src.stored_fingerprint}, the "
                                       f"index {index.fingerprint}; refused")
                for key in keys:
                    video = src.read_video(key)
                    if video.attrs.get("pooled_sha256") != index.videos[key][1]:
                        raise PublishError(f"{redact(url)}: {shard.path}: video {key!r}: pooled_sha256 differs from "
                                           "the index's; refused")
                    out.write_video(key, pooled=video.pooled, frames=video.frames, maps=video.maps,
                                    embeddings=video.embeddings, attrs=video.attrs)
        except (CorruptFeaturesError, KeyError) as exc:
            raise PublishError(f"{redact(url)}: {shard.path}: {str(exc).strip(chr(34))}; nothing more was taken "
                               "from it") from exc
        return len(keys)
    finally:
        local.unlink(missing_ok=True)


def _damaged_videos(local: Path, keys: Iterable[str], index: PublishIndex) -> str:
    """Which of ``keys`` a damaged shard file fails to deliver intact, for the refusal's message."""
    bad: list[str] = []
    try:
        with open_store(local) as src:
            for key, got in src.read_pooled_many(list(keys)):
                if isinstance(got, BaseException) or src.video_attrs(key).get("pooled_sha256") != index.videos[key][1]:
                    bad.append(key)
    except Exception:  # noqa: BLE001 - an unreadable archive names all its videos
        bad = list(keys)
    if not bad:
        return "its videos' features read intact but its metadata differs"
    shown = ", ".join(repr(k) for k in bad[:MAX_LISTED]) + (" ..." if len(bad) > MAX_LISTED else "")
    return f"video{'s' if len(bad) > 1 else ''} {shown} damaged"


# ---------------------------------------------------------------- readers of a published URL


def cache_dir() -> Path:
    """Where published stores read by URL are kept: ``$CLIFVQA_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/clifvqa`` (``~/.cache/clifvqa``), below it ``published/``."""
    base = os.environ.get("CLIFVQA_CACHE_DIR") or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "clifvqa"
    return Path(base) / "published"


def published_copy(url: str) -> Path | None:
    """For a URL where a store was published: the local store it is read through, pulled into
    :func:`cache_dir` and verified on arrival like any pull (a published store is untrusted input;
    fsspec's own file caches would keep its bytes unchecked). Each call reads the index again (one
    small request): the same index as the copy was completed from, and the copy is used as it
    is; another, and what the copy lacks is pulled (its new videos when the publication grew),
    or, when the copy holds what the index no longer publishes (other features for a video,
    videos or failure records gone, other provenance), the copy is fetched again whole, never
    served stale. None for any other URL (a plain remote Zarr store), and where the URL cannot
    be asked (no package for it, no credentials): the caller's own reader then says why; an
    unfinished push (shards, no index) is a :class:`PublishError`."""
    try:
        published = is_published(url)
    except PublishError:
        return None
    if not published:
        if not url.rstrip("/").endswith(".zarr"):  # a plain Zarr store's name: spare it the listing
            unfinished = _unfinished_push(*filesystem(url), url)
            if unfinished is not None:
                raise unfinished
        return None
    dest = cache_dir() / f"{hashlib.sha256(redact(url).encode()).hexdigest()[:16]}.zarr"
    done = dest.with_name(dest.name + ".index-sha256")  # the index the copy was last completed from
    print(f"{redact(url)}: a published store; reading it through the local copy {dest}", file=sys.stderr)
    with locked(dest.with_name(dest.name + ".lock")):  # two runs started together pull it once
        raw = _index_bytes(url)
        digest = hashlib.sha256(raw).hexdigest()
        if dest.exists() and done.is_file() and done.read_text() == digest:
            return dest
        index = PublishIndex.parse(raw, _join(redact(url), INDEX))
        if dest.exists() and not _copy_matches(dest, index):
            print(f"{redact(url)}: the publication changed since {dest} was fetched; fetching it again",
                  file=sys.stderr)
            shutil.rmtree(dest)
        done.unlink(missing_ok=True)
        pull_store(url, dest, progress=sys.stderr.isatty(), index=index)
        atomic_write_text(done, digest)
    return dest


def _copy_matches(copy: Path, index: PublishIndex) -> bool:
    """Whether the local copy ``copy`` holds only what ``index`` publishes (the same provenance,
    the same features for every video it has, no video or failure record the index lacks)."""
    try:
        with open_store(copy) as store:
            entries, failures, provenance = store.entries(), store.failures(), store.provenance
    except (StoreError, OSError):
        return False
    return (provenance == index.root["provenance"] and set(failures) <= set(index.failures)
            and all(index.videos.get(k, (0, None))[1] == a.get("pooled_sha256") for k, a in entries.items()))
