"""Crash safety: kill -9 and SIGTERM at any moment leave a store the next run completes.

HDF5 stores are written through a spool beside the file (``features/hdf5_backend.py``). Writers
are killed at chosen lines of that backend, at random times, and as real ``clifvqa extract``
runs part-way; each time the file must still open with plain h5py, show what was complete,
and the next run must end equal to an uninterrupted one. SIGINT/SIGTERM stop extraction and
rescoring cleanly (exit 130/143, one line) on both backends.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from test_extract import SLOW_CLI, _env, assert_same_features, base_args, read_all, run_cli

from clifvqa.cli import main
from clifvqa.extract.runner import RunInterrupted, SignalStop
from clifvqa.features import hdf5_backend
from clifvqa.features.hdf5_backend import spool_dir, spool_state
from clifvqa.features.store import StoreError, create_or_open_store, open_store
from clifvqa.testing.stores import synthetic_provenance

# ---------------------------------------------------------------- the backend, killed at chosen moments

WRITER = '''
import os, signal, sys, threading

from clifvqa.features import hdf5_backend
from clifvqa.features.store import create_or_open_store
from clifvqa.testing.stores import synthetic_provenance, synthetic_video

FAILED_AT = "2024-01-01T00:00:00+00:00"


def write_all(path, n=7):
    """What an extraction run does: skip complete videos, record failures, write the rest;
    finalize half-way (a commit in mid-run) and at the end."""
    prov = synthetic_provenance(r=4, grid=(2, 3))
    with create_or_open_store(path, prov) as store:
        done, failed = set(store.keys()), store.failures()
        for i in range(n):
            key = f"d{i % 3}/v{i}.mp4"
            if key in done:
                continue
            if i % 4 == 3:  # fails for good
                store.record_failure(key, "cannot decode", key, time=FAILED_AT)
                continue
            if i % 4 == 1 and key not in failed:  # fails once, then works: the record is removed
                store.record_failure(key, "first try failed", key, time=FAILED_AT)
            store.write_video(key, **synthetic_video(prov, seed=i, num_rows=3 + i % 3, source=key))
            if i == 2:
                store.finalize()
        store.finalize()


def trace_backend(on_line):
    """Call on_line(function, line, depth) at every line the HDF5 backend runs (depth: of calls
    within the backend)."""
    depth = 0
    def local(frame, event, arg):
        nonlocal depth
        if event == "line":
            on_line(frame.f_code.co_name, frame.f_lineno, depth)
        elif event == "return":
            depth -= 1
        return local
    def calls(frame, event, arg):
        nonlocal depth
        if frame.f_code.co_filename != hdf5_backend.__file__:
            return None
        depth += 1
        return local
    sys.settrace(calls)


def serve():
    """Per line "store how at" on stdin, fork a writer killed at the at-th backend line (how =
    line) or after at seconds (time); print its exit status. Forking pays the imports once."""
    from clifvqa.features.provenance import informative_defaults

    informative_defaults()  # imports zarr (for its version) before forking, not in each writer
    for request in sys.stdin:
        path, how, at = request.split()
        pid = os.fork()
        if pid == 0:
            status = 0
            os.fsync = lambda fd: None  # as the no_fsync fixture
            try:
                if how == "line":
                    count, kill = iter(range(1, 10**9)), int(at)
                    die = lambda: os.kill(os.getpid(), signal.SIGKILL)
                    trace_backend(lambda f, l, d: next(count) == kill and die())
                else:
                    threading.Timer(float(at), os.kill, (os.getpid(), signal.SIGKILL)).start()
                write_all(path)
            except BaseException:
                import traceback
                traceback.print_exc()
                status = 1
            finally:
                os._exit(status)
        print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)


if __name__ == "__main__":
    serve()
'''


@pytest.fixture(scope="module")
def writer(tmp_path_factory):
    """The WRITER module, imported here too, with the uninterrupted run: its store's content,
    the (function, line, depth) of every backend line it ran, its duration; and ``server``, the
    WRITER process that forks the writers to kill."""
    folder = tmp_path_factory.mktemp("writer")
    (folder / "writer.py").write_text(WRITER)
    spec = importlib.util.spec_from_file_location("crash_writer", folder / "writer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    lines: list[tuple[str, int, int]] = []
    previous = sys.gettrace()
    module.trace_backend(lambda f, line, d: lines.append((f, line, d)))
    try:
        module.write_all(folder / "reference.h5")
    finally:
        sys.settrace(previous)
    with pytest.MonkeyPatch.context() as patch:  # timed as the killed writers run: without syncs
        patch.setattr(os, "fsync", lambda fd: None)
        start = time.perf_counter()
        module.write_all(folder / "timed.h5")
        module.duration = time.perf_counter() - start
    module.lines, module.reference = lines, snapshot(folder / "reference.h5")
    module.server = subprocess.Popen([sys.executable, str(folder / "writer.py")], env=_env(), text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    yield module
    module.server.stdin.close()
    module.server.wait(timeout=60)


def snapshot(path: Path) -> dict:
    """Everything a store holds, comparable with ==."""
    with open_store(path) as store:
        videos = {}
        for key in store.keys():
            v = store.read_video(key)
            videos[key] = (v.pooled.tobytes(), v.frames.tobytes(), v.maps.tobytes(), v.attrs)
        return {"videos": videos, "failures": store.failures(), "incomplete": store.incomplete_keys()}


def killed(writer, runs: list[tuple[Path, str, float]], may_finish: bool = False) -> int:
    """Run the writer on each ``(store, "line"|"time", at)``, killed there; how many were killed."""
    kills = 0
    for path, how, at in runs:
        writer.server.stdin.write(f"{path} {how} {at}\n")
        writer.server.stdin.flush()
        status = int(writer.server.stdout.readline())
        assert status == -signal.SIGKILL or (may_finish and status == 0), f"{how} {at}: exit {status}"
        kills += status == -signal.SIGKILL
    return kills


def check_and_resume(writer, path: Path) -> None:
    """After a kill: the file opens with plain h5py, holds only whole reference videos, and the
    next run ends with the reference content and no sidecar left."""
    if path.exists():
        with h5py.File(path, "r") as f:  # never left marked open-for-write
            assert "videos" in f and "provenance" in f.attrs
        partial = snapshot(path)
        assert all(partial["videos"][k] == writer.reference["videos"][k] for k in partial["videos"])
        with open_store(path) as store:
            note = store.pending_note()
        state = spool_state(path)
        assert (note is None) == (state.changes == 0) and not state.writer_running
        if note:
            assert f"logs {state.videos} more videos" in note and "interrupted" in note
    writer.write_all(path)
    assert snapshot(path) == writer.reference
    assert not spool_dir(path).exists()
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


# Lines that change files: the backend is killed right after the first run of each.
STEPS = re.compile(r"os\.(rename|replace|link)|unlink|rmtree|rmdir|mkdir|copyfile|_apply\(|\.log\(|"
                   r"h5py\.File\(tmp|del file|\.copy\(|lock_file\(")


def kill_points(writer) -> list[int]:
    """Line events (numbered as in the uninterrupted run) to kill at: the first one after each
    file-changing step of the backend has run (back in its frame or a caller), and the very
    first (before anything exists)."""
    source = Path(hdf5_backend.__file__).read_text().splitlines()
    seen, points = set(), {1}
    for n, (function, line, depth) in enumerate(writer.lines):
        if (function, line) in seen or not STEPS.search(source[line - 1]):
            continue
        seen.add((function, line))
        after = next((m for m in range(n + 1, len(writer.lines)) if writer.lines[m][2] <= depth), None)
        if after is not None:
            points.add(after + 1)  # event numbers count from 1
    return sorted(points)


def stores(tmp_path: Path, name: str, count: int) -> list[Path]:
    paths = [tmp_path / f"{name}{i}" / "x.h5" for i in range(count)]
    for path in paths:
        path.parent.mkdir()
    return paths


@pytest.fixture
def no_fsync(monkeypatch):
    """Syncing to disk guards against power loss, not kills, and is slow on a busy disk."""
    monkeypatch.setattr(os, "fsync", lambda fd: None)


def test_kill_after_every_file_step_then_resume_equals_uninterrupted(writer, tmp_path, no_fsync):
    points = kill_points(writer)
    assert len(points) >= 20
    paths = stores(tmp_path, "line", len(points))
    killed(writer, [(path, "line", at) for path, at in zip(paths, points)])
    for path in paths:
        check_and_resume(writer, path)


def test_kill_twice_the_second_time_while_replaying_the_first_runs_log(writer, tmp_path, no_fsync):
    first = tmp_path / "first" / "x.h5"
    first.parent.mkdir()
    killed(writer, [(first, "line", len(writer.lines) // 2)])
    assert spool_state(first).changes > 0
    # Where the resumed run replays the log: trace one on a copy of what the kill left.
    shutil.copytree(first.parent, tmp_path / "traced")
    lines: list[tuple[str, int, int]] = []
    previous = sys.gettrace()
    writer.trace_backend(lambda f, line, d: lines.append((f, line, d)))
    try:
        writer.write_all(tmp_path / "traced" / "x.h5")
    finally:
        sys.settrace(previous)
    replay = [n for n, (function, _, _) in enumerate(lines, 1) if function == "_apply"]
    points = [replay[0], replay[len(replay) // 2], replay[-1]]
    paths = stores(tmp_path, "replay", len(points))
    for path in paths:
        shutil.copytree(first.parent, path.parent, dirs_exist_ok=True)
    killed(writer, [(path, "line", at) for path, at in zip(paths, points)])
    for path in paths:
        check_and_resume(writer, path)


def test_kill_at_random_times_then_resume_equals_uninterrupted(writer, tmp_path, no_fsync):
    times = np.random.default_rng(12).uniform(0, 1.2 * writer.duration, 8)
    paths = stores(tmp_path, "time", len(times))
    kills = killed(writer, [(path, "time", round(at, 4)) for path, at in zip(paths, times)], may_finish=True)
    assert kills >= 4
    for path in paths:
        check_and_resume(writer, path)


def test_a_log_left_beside_a_store_made_again_is_refused(writer, tmp_path):
    path = tmp_path / "x.h5"
    killed(writer, [(path, "line", len(writer.lines) // 3)])
    path.unlink()  # "delete it to start over", but the killed run's log stays
    with pytest.raises(StoreError, match=r"logs \d+ changes to an earlier x.h5.*delete .*x.h5.spool"):
        create_or_open_store(path, synthetic_provenance(r=5))
    assert spool_state(path).changes > 0  # nothing was dropped


def test_store_finalize_folds_a_killed_runs_log(writer, tmp_path):
    path = tmp_path / "x.h5"
    killed(writer, [(path, "line", len(writer.lines) * 2 // 3)])
    before, waiting = complete_keys(path), spool_state(path).videos
    assert waiting > 0
    result = CliRunner().invoke(main, ["store", "finalize", str(path)])
    assert result.exit_code == 0 and "finalized" in result.output
    assert len(complete_keys(path)) == len(before) + waiting and not spool_dir(path).exists()


def test_a_file_left_open_for_write_by_an_older_writer_gets_a_clear_error(tmp_path):
    path = tmp_path / "old.h5"
    code = (f"import h5py, os; f = h5py.File({str(path)!r}, 'w', libver='latest'); f.flush(); "
            "os.kill(os.getpid(), 9)")
    subprocess.run([sys.executable, "-c", code], env=_env())
    result = CliRunner().invoke(main, ["store", "info", str(path)])
    assert result.exit_code == 2 and "marked open-for-write by a writer that was killed" in result.output
    assert "h5clear -s" in result.output and len(result.output.strip().splitlines()) == 1


# ---------------------------------------------------------------- real extraction runs

@pytest.fixture(scope="module")
def dataset(tmp_path_factory, tiny_clip):
    """Six clips and an uninterrupted extraction of them (``fresh``), with two decode workers;
    the interrupted runs below decode with one: the same bits (docs/FORMAT.md, "Exactness")."""
    from clifvqa.testing.videos import write_clip

    root = tmp_path_factory.mktemp("crash_ds")
    keys = [f"v{i}.mp4" if i % 2 else f"sub/v{i}.mp4" for i in range(6)]
    for i, key in enumerate(keys):
        write_clip(root / "ds" / key, num_frames=8, width=256, height=224, seed=i)
    assert run_cli(*base_args(root / "ds", root / "fresh.h5", tiny_clip)).exit_code == 0
    return root / "ds", sorted(keys), read_all(root / "fresh.h5")


def slow_extract(tmp_path: Path, dataset, store: Path, tiny_clip) -> subprocess.Popen:
    """``clifvqa extract`` in a process of its own, slowed down enough to be killed part-way."""
    script = tmp_path / "slow_cli.py"
    script.write_text(SLOW_CLI)
    args = base_args(dataset[0], store, tiny_clip, "--threads", "1")
    return subprocess.Popen([sys.executable, str(script), "extract", *map(str, args)], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def signal_when(proc: subprocess.Popen, signum: int, ready) -> tuple[str, str]:
    """Send ``signum`` once ``ready()`` is true; the run's output."""
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None and not ready():
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be interrupted"
        proc.send_signal(signum)
        return proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()


def complete_keys(store: Path) -> list[str]:
    try:
        with open_store(store) as s:
            return s.keys()
    except (FileNotFoundError, ValueError):
        return []


def sigterm_at_batch(monkeypatch, batch: int) -> None:
    """This process gets SIGTERM while scoring the ``batch``-th batch of crops (as from SLURM)."""
    from clifvqa.extract.sfe import SemanticFeatureExtractor

    score, calls = SemanticFeatureExtractor.score_frames, iter(range(1, 10**6))

    def scoring(self, crops):
        if next(calls) == batch:
            os.kill(os.getpid(), signal.SIGTERM)
        return score(self, crops)

    monkeypatch.setattr(SemanticFeatureExtractor, "score_frames", scoring)


@pytest.mark.numerics
def test_hdf5_extract_sigterm_then_kill9_then_resume_equals_uninterrupted(tmp_path, dataset, tiny_clip,
                                                                         monkeypatch):
    ds, keys, fresh = dataset
    store = tmp_path / "x.h5"
    slow_args = base_args(ds, store, tiny_clip, "--threads", "1")
    # SIGTERM (SLURM's time limit): the extracted videos are written and folded in, exit 143.
    with monkeypatch.context() as patch:
        sigterm_at_batch(patch, 8)  # of 12: 6 videos of 2 passes (8 frames, 4 per pass)
        result = CliRunner().invoke(main, ["extract", *map(str, slow_args)])
    assert result.exit_code == 143, result.output
    assert re.fullmatch(r"error: interrupted by SIGTERM: \d+ videos written this run \(0 failed\), \d+ of 6 "
                        rf"complete in {re.escape(str(store))}; rerun the same command to resume\n",
                        result.output)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # restored
    after_term = complete_keys(store)
    assert 1 <= len(after_term) < len(keys) and not spool_dir(store).exists()
    # kill -9 in the resumed run: the store file is untouched, its log says what is waiting.
    proc = slow_extract(tmp_path, dataset, store, tiny_clip)
    signal_when(proc, signal.SIGKILL, lambda: spool_state(store).videos >= 1)
    assert complete_keys(store) == after_term
    spooled = spool_state(store).videos
    with h5py.File(store, "r"):
        pass
    info = CliRunner().invoke(main, ["store", "info", str(store)])
    assert info.exit_code == 0 and f"videos        {len(after_term)} complete" in info.output
    assert re.search(r"pending .*logs \d+ more videos .*interrupted.*store finalize", info.output)
    resumed = run_cli(*base_args(ds, store, tiny_clip))
    assert resumed.exit_code == 0, resumed.output
    assert f"{len(after_term) + spooled} skipped (already complete)" in resumed.output  # log folded in
    assert_same_features(read_all(store), fresh)
    assert not spool_dir(store).exists()


@pytest.mark.numerics
def test_zarr_extract_sigterm_exits_cleanly_and_resumes(tmp_path, dataset, tiny_clip, monkeypatch):
    ds, keys, fresh = dataset
    store = tmp_path / "x.zarr"
    slow_args = base_args(ds, store, tiny_clip, "--threads", "1")
    with monkeypatch.context() as patch:
        sigterm_at_batch(patch, 10)
        result = CliRunner().invoke(main, ["extract", *map(str, slow_args)])
    assert result.exit_code == 143 and "interrupted by SIGTERM" in result.output, result.output
    done = complete_keys(store)
    with open_store(store) as s:
        assert 1 <= len(done) < len(keys) and s.incomplete_keys() == []
        assert s.consolidated_state() == "fresh"  # finalized before exiting
    resumed = run_cli(*base_args(ds, store, tiny_clip))
    assert resumed.exit_code == 0 and f"{len(done)} skipped" in resumed.output
    assert_same_features(read_all(store), fresh)


# ---------------------------------------------------------------- signal handling itself

def test_signal_stop_restores_handlers_and_defers_writes():
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with pytest.raises(RunInterrupted) as caught, SignalStop() as stop:
        assert signal.getsignal(signal.SIGTERM) == stop._handle
        with stop.deferred():
            os.kill(os.getpid(), signal.SIGTERM)  # noted only: the write in progress finishes
            time.sleep(0.01)
            assert stop.received == signal.SIGTERM
            os.kill(os.getpid(), signal.SIGINT)  # a second signal does not wait
            time.sleep(1)
    assert caught.value.signum == signal.SIGINT and caught.value.exit_code == 130
    assert {s: signal.getsignal(s) for s in before} == before
    seen = []
    thread = threading.Thread(target=lambda: seen.append(SignalStop().__enter__()._previous))
    thread.start()
    thread.join()
    assert seen == [{}] and signal.getsignal(signal.SIGTERM) == before[signal.SIGTERM]  # not from a thread


def test_rescore_sigterm_finishes_the_video_then_resumes(tmp_path, dataset, tiny_clip, monkeypatch):
    from clifvqa.extract import rescore
    from clifvqa.extract.prompts import PromptSet

    src = tmp_path / "src.zarr"
    assert run_cli(*base_args(dataset[0], src, tiny_clip, "--save-embeddings")).exit_code == 0
    prompts = PromptSet.from_words(["crisp", "grainy"], ["calm", "tense"])
    rescore.rescore_store(src, tmp_path / "fresh.h5", prompts, device="cpu", progress=False)
    calls = []
    original = rescore._rescore_video

    def second_gets_sigterm(*args, **kwargs):
        calls.append(args[2])
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(*args, **kwargs)

    monkeypatch.setattr(rescore, "_rescore_video", second_gets_sigterm)
    expected = r"SIGTERM: 2 videos written this run \(0 failed\), 2 of 6"
    with pytest.raises(RunInterrupted, match=expected) as caught:
        rescore.rescore_store(src, tmp_path / "dst.h5", prompts, device="cpu", progress=False)
    assert caught.value.exit_code == 143 and complete_keys(tmp_path / "dst.h5") == sorted(calls)
    monkeypatch.setattr(rescore, "_rescore_video", original)
    summary = rescore.rescore_store(src, tmp_path / "dst.h5", prompts, device="cpu", progress=False)
    assert summary.skipped == 2 and summary.done == 4
    assert_same_features(read_all(tmp_path / "dst.h5"), read_all(tmp_path / "fresh.h5"))
