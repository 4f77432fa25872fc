"""Extraction runs: a dataset folder (or manifest) in, a feature store out. Resumable and shardable.

A run lists its videos (manifest rows or a folder scan), keeps its shard's share, skips videos
the store already holds complete (and, unless asked, those recorded as failed), extracts the
rest with :class:`~clifvqa.extract.sfe.SemanticFeatureExtractor` and writes each finished video
in one go, from a writer thread so that the device is fed meanwhile. A video that fails is
recorded in the store with the reason and the run goes on. An interrupted run leaves at most
incomplete entries, which the next run redoes. A complete video whose file changed since it
was extracted (:func:`clifvqa.features.sources.stale_reason`) is extracted again and replaced.

SIGINT (Ctrl-C) and SIGTERM (what SLURM and ``kill`` send) stop a run the same way once its
store is open (:class:`SignalStop`): extraction stops at once, the videos already extracted
are written and the store finalized, then :class:`RunInterrupted` says what was done. A kill
that allows none of this (SIGKILL) is survived by the stores themselves.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clifvqa.errors import ClifvqaError
from clifvqa.extract.config import ExtractConfig
from clifvqa.extract.pipeline import VideoTask
from clifvqa.extract.sfe import SemanticFeatureExtractor, VideoResult

_log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    """Counts and timing shared by extraction (:class:`ExtractSummary`) and rescoring runs.

    Attributes:
        total: videos this run was asked to cover.
        done: written by this run.
        skipped: already complete in the store (and still their files'), or completed meanwhile by
            another run writing the same store.
        failed: failed in this run (recorded in the store).
        frames: frames processed by this run.
        elapsed: seconds of work after setup.
        setup: seconds spent before the first video (listing, loading the model, opening stores).
        failures: ``(key, error)`` of this run's failures.
        store: the store written.
    """

    total: int = 0
    done: int = 0
    skipped: int = 0
    failed: int = 0
    frames: int = 0
    elapsed: float = 0.0
    setup: float = 0.0
    failures: list[tuple[str, str]] = field(default_factory=list)
    store: str = ""

    @property
    def ok(self) -> bool:
        """True when nothing failed in this run."""
        return self.failed == 0

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.elapsed if self.elapsed > 0 else 0.0

    def _counts(self, verb: str, target: str) -> str:
        return (
            f"{self.done} {verb}, {self.skipped} skipped (already complete), {self.failed} failed"
            f" of {self.total} videos; {self.frames} frames in {self.elapsed:.1f} s"
            f" ({self.frames_per_second:.1f} frames/s, after {self.setup:.1f} s setup) {target}"
        )


@dataclass
class ExtractSummary(RunSummary):
    """What an extraction run did (:class:`RunSummary` for a shard of a dataset, and:)

    Attributes:
        previously_failed: recorded as failed by an earlier run and not retried.
        stale: complete in the store, but their files changed since: extracted again (also
            counted in ``done``/``failed``); ``(key, reason)``.
    """

    previously_failed: int = 0
    stale: list[tuple[str, str]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every video of the shard is complete in the store."""
        return self.failed == 0 and self.previously_failed == 0 and not self.missing

    def line(self) -> str:
        """One-line summary for the terminal."""
        text = self._counts("done", f"-> {self.store}")
        if self.stale:
            text += f"; {len(self.stale)} extracted again because their files changed"
        if self.previously_failed:
            text += f"; {self.previously_failed} failed in an earlier run (retry with --retry-failed)"
        if self.missing:
            text += f"; {len(self.missing)} missing, not extracted (a rerun picks them up once they exist)"
        return text


class MissingVideosError(ClifvqaError):
    """Videos a run should extract are not on disk, more than the run allows (see :func:`preflight`)."""


MISSING_FILE = "No such file or directory"
"""How a failure record says its file was missing (the decoder's ENOENT text, as earlier
versions recorded missing files); such a failure is retried as soon as the file exists."""


@dataclass
class Preflight:
    """Which videos of a run are on disk, checked before any model is loaded or video decoded.

    Attributes:
        root: the dataset folder.
        present: keys to extract whose file exists.
        missing: keys to extract whose file does not exist (in run order).
        complete: how many keys were left out because the store holds them complete (their
            files are not needed).
    """

    root: Path
    present: list[str]
    missing: list[str]
    complete: int = 0

    def line(self) -> str:
        """``pre-flight: `` and :meth:`counts`."""
        return f"pre-flight: {self.counts()}"

    def counts(self) -> str:
        """How many are present, and the first few missing names."""
        total = len(self.present) + len(self.missing)
        text = f"{len(self.present)} of {total} videos to extract are present under {self.root}"
        if self.complete:
            text += f" ({self.complete} already complete in the store)"
        if self.missing:
            text += f"; {len(self.missing)} missing: {_first_few(self.missing)}"
            if len(self.present) < len(self.missing):
                text += f"; is {self.root} the right dataset folder?"
        return text


def _first_few(names: list[str], few: int = 3) -> str:
    shown = ", ".join(names[:few])
    return shown + (f" and {len(names) - few} more" if len(names) > few else "")


def preflight(root: str | Path, keys: list[str], complete: set[str] | frozenset[str] = frozenset(), *,
              allow_missing: bool = False) -> Preflight:
    """Check that the files of ``keys`` (except those ``complete`` in the store) exist under ``root``.

    The rule: one missing file refuses the run (``MissingVideosError``, naming the first few
    and how many), because a manifest says what the dataset is and a missing file usually
    means a wrong dataset folder or an unfinished download; ``allow_missing=True``
    (``--allow-missing``) proceeds with the present ones. Missing files are never recorded as
    failures, so a later run picks them up once they exist.
    """
    root = Path(root)
    todo = [k for k in keys if k not in complete]
    missing = [k for k in todo if not (root / k).is_file()]
    gone = set(missing)
    check = Preflight(root, [k for k in todo if k not in gone], missing, len(keys) - len(todo))
    if missing and not allow_missing:
        raise MissingVideosError(f"{check.counts()}; nothing was extracted: pass "
                                 "allow_missing=True / --allow-missing to extract the present ones")
    return check


def _existing_store(store_path: str | Path) -> tuple[set[str], dict[str, Any]]:
    """Complete keys and provenance of an existing store; empty when there is none yet or it
    cannot be read (opening it for writing then says why)."""
    from clifvqa.features.store import is_url, open_store

    if is_url(store_path):  # refused as an output later; no need to reach the network first
        return set(), {}
    try:
        with open_store(store_path) as store:
            return set(store.keys()), dict(store.provenance)
    except (OSError, ValueError):
        return set(), {}


@contextlib.contextmanager
def _open_for_writing(store_path: str | Path, extractor: SemanticFeatureExtractor, recorded: dict[str, Any]):
    """The run's store, opened (or created) for ``extractor``'s features; a store of other settings
    is refused naming them, and one that recorded another dtype with what to pass instead (the
    dtype is part of the fingerprint)."""
    from clifvqa.features.store import create_or_open_store

    provenance = extractor.provenance()
    if recorded.get("dtype", provenance["dtype"]) != provenance["dtype"]:
        remedy = (f"it was extracted with dtype {recorded['dtype']}, this run computes in {extractor.dtype}: pass "
                  f"--dtype auto (continues a store in its recorded dtype) or --dtype {recorded['dtype']}")
    else:
        remedy = (f"features from different settings cannot share a store: write to a new --out path (or delete "
                  f"{store_path} to start over)")
    with create_or_open_store(store_path, provenance, remedy=remedy) as store:
        yield store


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by SIGINT or SIGTERM after writing and recording what it had finished.

    A KeyboardInterrupt, so code that handles Ctrl-C handles SIGTERM alike. ``str()`` is the
    one line to show; ``exit_code`` is the shell convention 128 + signal (130 SIGINT, 143 SIGTERM).

    Attributes:
        signum: the signal.
        summary: the run's counts up to the interruption (None when it came before any).
    """

    def __init__(self, signum: int, summary: RunSummary | None = None) -> None:
        super().__init__(signum)
        self.signum, self.summary = signum, summary

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def __str__(self) -> str:
        text = f"interrupted by {signal.Signals(self.signum).name}"
        if self.summary is not None:
            s = self.summary
            text += (f": {s.done} videos written this run ({s.failed} failed), {s.done + s.skipped} of "
                     f"{s.total} complete in {s.store}")
        return text + "; rerun the same command to resume"


class SignalStop:
    """SIGINT and SIGTERM handling for a run that writes a store, as a context manager.

    Python delivers signals to the main thread only, so the handlers are installed only there
    (elsewhere this does nothing) and the previous ones are restored on exit: a notebook
    keeps its own. With ``raising`` (extraction) a signal raises :class:`RunInterrupted` at
    once, like Ctrl-C; without it (rescoring, where each video is quick) the first signal is
    only noted in ``received`` for the run to check. Inside :meth:`deferred` (writing,
    finalizing) the first signal is only noted too, so the write finishes; a second one always
    raises.
    """

    def __init__(self, raising: bool = True) -> None:
        self.raising = raising
        self.received: int | None = None
        self._deferred = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> SignalStop:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)  # None: set outside Python
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        first = self.received is None
        self.received = self.received or signum
        if not first or (self.raising and not self._deferred):
            raise RunInterrupted(signum)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """A block that a first signal does not interrupt."""
        self._deferred += 1
        try:
            yield
        finally:
            self._deferred -= 1

    def check(self, summary: RunSummary) -> None:
        """Raise :class:`RunInterrupted` with ``summary`` when a signal came."""
        if self.received is not None:
            raise RunInterrupted(self.received, summary)


def parse_shard(text: str) -> tuple[int, int]:
    """Parse ``"K/N"`` (shard K of N, counting from 0: ``0/4`` ... ``3/4``) into ``(K, N)``."""
    k_text, sep, n_text = text.partition("/")
    if not sep or not k_text.strip().isdigit() or not n_text.strip().isdigit():
        raise ClifvqaError(f"shard {text!r} is not of the form K/N, e.g. 0/4 (shards count from 0)")
    k, n = int(k_text), int(n_text)
    if n < 1 or k >= n:
        raise ClifvqaError(f"shard {text!r} is out of range: N must be >= 1 and K in 0..N-1")
    return k, n


def shard_of(key: str, num_shards: int) -> int:
    """The shard (0..N-1) of a video key: the first 8 bytes of sha256(key) modulo N.

    The same on every machine and Python run (unlike ``hash()``), so shard processes started
    anywhere split a dataset into disjoint parts that together cover it.
    """
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") % num_shards


def list_videos(dataset_dir: str | Path, manifest=None) -> tuple[list[str], list[tuple[str, str]]]:
    """The video keys of a run and the files left out for unsafe names.

    Keys come from the manifest's rows (a path or a ``Manifest``) in row order, or from a scan
    of ``dataset_dir`` (sorted); the second list holds ``(relative path, reason)`` of scanned
    video files whose names break the video-path rule (they cannot be store keys).

    Raises:
        NotADirectoryError: ``dataset_dir`` is not a folder.
        UnsafePathError, ManifestError: a manifest key breaks the path rule / the manifest is invalid.
    """
    from clifvqa.manifests.io import Manifest, read_manifest
    from clifvqa.manifests.paths import scan_videos, validate_video_path

    root = Path(dataset_dir)
    if not root.is_dir():
        raise NotADirectoryError(f"dataset folder {root} does not exist or is not a folder")
    if manifest is None:
        scan = scan_videos(root)
        return scan.videos, list(scan.unsafe)
    rows = manifest if isinstance(manifest, Manifest) else read_manifest(manifest)
    return list(dict.fromkeys(validate_video_path(row.video) for row in rows)), []


def extract_dataset(
    dataset_dir: str | Path,
    store_path: str | Path = "features.zarr",
    manifest=None,
    config: ExtractConfig = ExtractConfig(),
    progress: bool = True,
    extractor: SemanticFeatureExtractor | None = None,
    log: Callable[[str], None] | None = None,
) -> ExtractSummary:
    """Extract the semantic features of every video of a dataset (this shard's share) into a store.

    Before the model is loaded or any video decoded, :func:`preflight` checks that the files
    exist: any missing file refuses the run unless ``config.allow_missing``; missing files are
    then left out (``summary.missing``), not recorded as failures. Failures recorded because the
    file was missing (:data:`MISSING_FILE`) are retried once the file exists.

    Args:
        dataset_dir: folder the video keys are relative to.
        store_path: ``.zarr`` directory (default) or ``.h5``/``.hdf5`` file; created when missing.
        manifest: CSV path or ``Manifest`` listing the videos; None scans ``dataset_dir``.
        config: what to extract and how (model, grid, prompts, batch size, workers, shard, ...).
        progress: show a progress bar (stderr).
        extractor: an already built extractor (else built from ``config``); its settings, not
            ``config``'s, then determine the features.
        log: where the pre-flight line goes (e.g. ``print``); default the ``logging`` logger
            of this module (INFO, WARNING when files are missing).

    Returns:
        The run's :class:`ExtractSummary`; ``summary.ok`` says whether the shard is complete.

    Raises:
        MissingVideosError: files are missing and ``config.allow_missing`` is off.
        ClipLoadError: the model cannot be loaded.
        FingerprintMismatchError: the store holds features made with other settings.
        NotADirectoryError, ManifestError, UnsafePathError: bad dataset folder or manifest.
        RunInterrupted: SIGINT or SIGTERM (see :class:`SignalStop`), after writing the videos
            already extracted and finalizing the store.
    """
    from tqdm.auto import tqdm

    from clifvqa.features.sources import stale_reason

    start = time.perf_counter()
    root = Path(dataset_dir)
    shard, num_shards = config.shard
    keys, unsafe = list_videos(root, manifest)
    keys = [k for k in keys if shard_of(k, num_shards) == shard]
    unsafe = [(k, why) for k, why in unsafe if shard_of(k, num_shards) == shard]
    complete, recorded = _existing_store(store_path)
    check = preflight(root, keys, complete, allow_missing=config.allow_missing)
    if check.missing:  # all present: the run's summary line says enough
        (log or _log.warning)(check.line())
    else:
        _log.info(check.line())
    if config.dtype == "auto" and recorded.get("dtype") in ("float32", "float16", "bfloat16"):
        # auto means float32 on a CPU and float16 on a GPU, and the dtype is in the fingerprint:
        # a store started on one continues on the other only in the dtype it was started with.
        config = dataclasses.replace(config, dtype=recorded["dtype"])
        _log.info("--dtype auto: continuing %s in its recorded dtype %s", store_path, config.dtype)
    extractor = extractor or SemanticFeatureExtractor.from_config(config)
    summary = ExtractSummary(total=len(keys) + len(unsafe), store=str(store_path))
    for name, why in unsafe:  # cannot be store keys, so not recorded in the store
        summary.failed += 1
        summary.failures.append((name, f"unsafe file name, not extracted: {why}; rename the file"))
    with SignalStop() as signals, _open_for_writing(store_path, extractor, recorded) as store:
        complete = store.entries()
        missing = set(check.missing) - set(complete)
        failed_before = store.failures()
        todo = []
        for key in keys:
            path = root / key
            if key in complete:
                # A missing file keeps its features: nothing to extract them from again.
                reason = path.exists() and (stale_reason(complete[key], path, hash=config.check_sources)
                                            or (config.check_sources and _corrupt_reason(store, key)))
                if not reason:
                    summary.skipped += 1
                    if key in failed_before:  # recorded by a run that met this one's entry (before the fix)
                        store.clear_failure(key)
                    continue
                summary.stale.append((key, reason))
            elif key in missing:
                summary.missing.append(key)
                continue
            elif key in failed_before and not config.retry_failed and MISSING_FILE not in str(
                    failed_before[key].get("error")):
                summary.previously_failed += 1
                continue
            todo.append(VideoTask(key, path))
        summary.setup = time.perf_counter() - start
        start = time.perf_counter()
        bar = tqdm(total=len(todo), unit="video", disable=not progress, dynamic_ncols=True)
        writer = _StoreWriter(store, summary, bar, start, {k for k, _ in summary.stale})
        try:
            for task, result in extractor.extract_many(todo, workers=config.threads):
                writer.put(task.key, result)  # raises the writer's error as soon as it has one
        except RunInterrupted:
            pass  # raised again below, once what was extracted is written and the store finalized
        finally:
            with signals.deferred():
                writer.join()  # what is queued gets written, also when the run is interrupted
                bar.close()
        writer.check()
        with signals.deferred():
            store.finalize()
    summary.elapsed = time.perf_counter() - start
    signals.check(summary)
    return summary


def _corrupt_reason(store, key: str) -> str | None:
    """Why ``key``'s stored features fail their checks (``--check-sources``), else None."""
    from clifvqa.features.store import CorruptFeaturesError

    try:
        store.read_pooled(key)
    except CorruptFeaturesError as exc:
        return f"its stored features are corrupt ({exc.reason})"
    return None


class _StoreWriter:
    """The one thread that writes a run's results to its store (HDF5 allows one writer), in the
    order they are put, while the caller goes on extracting.

    Each result updates ``summary`` (done, frames, failed, failures) and ``bar`` once it is
    written. An exception in a write stops the thread; :meth:`put` and :meth:`check` then raise
    it in the caller, and the results still queued are not written (the next run redoes them).
    Videos written before stay complete.

    Args:
        store: the writable store.
        summary: the run's counters, updated by the writer thread only while it runs.
        bar: progress bar (tqdm), one step per result.
        start: ``time.perf_counter()`` at the start of extraction, for the frames/s shown.
        replace: keys whose complete (stale) entries are replaced.
        max_queued: results waiting to be written at most; :meth:`put` blocks beyond that.
    """

    _STOP = object()

    def __init__(self, store, summary: ExtractSummary, bar, start: float, replace: set[str],
                 max_queued: int = 2) -> None:
        self.store, self.summary, self.bar, self.start = store, summary, bar, start
        self.replace = replace
        self._queue: queue.Queue = queue.Queue(maxsize=max_queued)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="clifvqa-store-writer", daemon=True)
        self._thread.start()

    def put(self, key: str, result: VideoResult | str) -> None:
        """Queue one video's result (features, or the text of its failure) for writing."""
        self.check()
        self._send((key, result))
        self.check()

    def join(self) -> None:
        """Write everything queued (unless the thread stopped on an error), then stop the thread."""
        self._send(self._STOP)
        self._thread.join()

    def check(self) -> None:
        """Raise the exception that stopped the writer thread, if one did."""
        if self._error is not None:
            raise self._error

    def _send(self, item: Any) -> None:
        while self._error is None and self._thread.is_alive():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _run(self) -> None:
        summary = self.summary
        try:
            while (item := self._queue.get()) is not self._STOP:
                key, result = item
                if isinstance(result, VideoResult):
                    result = _write(self.store, key, result, key in self.replace)
                if result is None:  # another run completed it meanwhile: its entry holds the same features
                    summary.skipped += 1
                elif isinstance(result, VideoResult):
                    summary.done += 1
                    summary.frames += len(result.frames)
                else:
                    self.store.record_failure(key, result, key)
                    summary.failed += 1
                    summary.failures.append((key, result))
                self.bar.update(1)
                rate = summary.frames / max(time.perf_counter() - self.start, 1e-9)
                self.bar.set_postfix(frames=summary.frames, fps=f"{rate:.1f}", failed=summary.failed, refresh=False)
        except BaseException as exc:  # handed to the caller's thread by put() / check()
            self._error = exc


def _write(store, key: str, result: VideoResult, replace: bool) -> VideoResult | str | None:
    """Write one video (``replace``: over its complete, stale entry); None when another run (an
    unsharded extract into the same Zarr store) completed it first; a key the store refuses
    (e.g. a video that is also a folder of videos) becomes that video's failure text instead of
    stopping the run."""
    from clifvqa.features.store import EntryCompleteError

    try:
        store.write_video(
            key,
            pooled=result.pooled,
            frames=result.frames,
            attrs=result.attrs,
            maps=result.maps,
            embeddings=result.embeddings,
            replace=replace,
        )
    except EntryCompleteError:
        return None
    except ValueError as exc:
        return f"cannot store {key}: {exc}"
    return result
