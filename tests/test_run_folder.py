"""The run folder under kills: every file of a run is written atomically, and --resume recovers
from a kill at any step of a checkpoint save to the last complete epoch."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from clifvqa.train.config import RunConfig, set_options, tiny
from clifvqa.train.trainer import run_training

TAGS = ["train", "train", "train", "train", "val", "test"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def config(data, **kw) -> RunConfig:
    base = dict(epochs=2, batch_size=2, workers=0, num_clips_test=2, warmup_epochs=0.5, val_fraction=0.0,
                branches="semantic", manifest=data.manifest, videos=data.videos, stores=[data.store])
    base.update(kw)
    return set_options(tiny(RunConfig()), **base)


def rows(path):
    out = [json.loads(line) for line in path.read_text().splitlines()]
    for row in out:
        row.pop("seconds")
    return out


def assert_same_run(a, b):
    wa, wb = (load_file(str(x / "last" / "model.safetensors")) for x in (a, b))
    assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)
    assert rows(a / "metrics.jsonl") == rows(b / "metrics.jsonl")
    assert json.loads((a / "result.json").read_text()) == json.loads((b / "result.json").read_text())


def resumed_after(caplog) -> int | None:
    found = [r.getMessage() for r in caplog.records if "resumed after epoch" in r.getMessage()]
    return int(found[-1].rsplit(" ", 1)[1]) if found else None


def test_kill_between_the_renames_of_last_resumes_from_the_complete_epoch(tmp_path, make_train_set, caplog):
    """The state a kill between ``last/ -> .last.old-*`` and ``.last.tmp-* -> last/`` leaves (the
    epoch-2 save of a 3-epoch run): resume continues after epoch 1, not from scratch."""
    data = make_train_set(tmp_path / "data", split=TAGS)
    run_training(config(data, epochs=3), tmp_path / "a", progress=False)
    b = tmp_path / "b"
    run_training(config(data, epochs=3), b, stop_after=1, progress=False)
    shutil.copytree(b / "last", tmp_path / "epoch1")
    run_training(config(data, epochs=3), b, resume=True, stop_after=2, progress=False)
    (b / "last").rename(b / ".last.tmp-0123abcd")  # complete, never renamed into place
    (tmp_path / "epoch1").rename(b / ".last.old-89abcdef")
    with caplog.at_level(logging.INFO, logger="clifvqa"):
        run_training(config(data, epochs=3), b, resume=True, progress=False)
    assert resumed_after(caplog) == 1
    assert_same_run(tmp_path / "a", b)
    assert not [p.name for p in b.iterdir() if p.name.startswith(".")]


def test_torn_last_metrics_line_is_dropped_on_resume(tmp_path, make_train_set, caplog):
    """A kill while a metrics row was appended (before its checkpoint): the torn row is dropped."""
    data = make_train_set(tmp_path / "data", split=TAGS)
    run_training(config(data), tmp_path / "a", progress=False)
    b = tmp_path / "b"
    run_training(config(data), b, stop_after=1, progress=False)
    with open(b / "metrics.jsonl", "a") as fh:
        fh.write('{"epoch": 2, "train_lo')
    with caplog.at_level(logging.INFO, logger="clifvqa"):
        run_training(config(data), b, resume=True, progress=False)
    assert resumed_after(caplog) == 1
    assert_same_run(tmp_path / "a", b)


def _snapshots(out, states_root, monkeypatch):
    """Copy ``out`` as it is before every step that changes the disk: the folder a kill there leaves.
    Steps: those of :mod:`clifvqa._atomic`, and each file written into a checkpoint's temporary folder."""
    import safetensors.torch

    from clifvqa import _atomic
    from clifvqa.train import checkpoint as ckpt

    states = []

    def snapshot(step, path):
        state = states_root / f"{len(states):02d}"
        shutil.copytree(out, state) if out.exists() else state.mkdir(parents=True)
        states.append((step, path.relative_to(out).as_posix() if path.is_relative_to(out) else path.name, state))

    def before(function, path_arg):
        def call(*args, **kwargs):
            snapshot("write", Path(args[path_arg]))
            return function(*args, **kwargs)
        return call

    monkeypatch.setattr(_atomic, "before_step", snapshot)
    monkeypatch.setattr(safetensors.torch, "save_file", before(safetensors.torch.save_file, 1))
    monkeypatch.setattr(ckpt, "_write_json", before(ckpt._write_json, 0))
    return states


def test_a_kill_at_every_step_of_the_run_resumes_to_the_last_complete_epoch(tmp_path, make_train_set, monkeypatch,
                                                                             caplog):
    """For every step k that changes the run folder (config, metrics, each file and rename of the
    best/ and last/ saves, results), the folder a kill before step k leaves is resumed: it goes on
    from the last epoch whose last/ was committed and ends as the uninterrupted run."""
    data = make_train_set(tmp_path / "data", split=TAGS)
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        states = _snapshots(out, tmp_path / "killed", patch)
        run_training(config(data), out, progress=False)
    assert len(states) > 30
    table, committed = [], 0
    for step, name, state in states:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="clifvqa"):
            run_training(config(data), state, resume=True, progress=False)
        finished = any("already finished" in r.getMessage() for r in caplog.records)
        did = "finished before" if finished else (f"resumed after epoch {resumed_after(caplog)}"
                                                  if resumed_after(caplog) else "started afresh")
        assert_same_run(out, state)
        assert sorted(p.name for p in state.iterdir()) == sorted(p.name for p in out.iterdir())
        table.append(f"{step:9} {name:28} {did}")
        if not finished:
            assert resumed_after(caplog) == (committed or None), table[-1]
        committed += step == "commit" and name.startswith(".last.new-")
    print("\n".join(table))


KILL_AT_SECOND_INSTALL_OF_LAST = """
import os, signal, sys
import torch
from clifvqa import _atomic
from clifvqa.train.config import load_run_config
from clifvqa.train.trainer import run_training

torch.set_num_threads(1)
installs = []

def kill(step, path):
    installs.extend([path] if (step, path.name) == ("install", "last") else [])
    if len(installs) == 2:
        os.kill(os.getpid(), signal.SIGKILL)

_atomic.before_step = kill
run_training(load_run_config(sys.argv[1]), sys.argv[2], progress=False)
"""


def test_sigkill_between_the_renames_of_last_resumes_after_the_saved_epoch(tmp_path, make_train_set, caplog):
    """A real kill (no clean-up runs) after last/ was moved away and before epoch 2's folder took
    its place: resume completes the save and goes on after epoch 2."""
    import signal
    import subprocess
    import sys

    data = make_train_set(tmp_path / "data", split=TAGS)
    (tmp_path / "run.yaml").write_text(config(data, epochs=3).to_yaml())
    b = tmp_path / "b"
    killed = subprocess.run([sys.executable, "-c", KILL_AT_SECOND_INSTALL_OF_LAST, tmp_path / "run.yaml", b])
    assert killed.returncode == -signal.SIGKILL
    assert not (b / "last").exists() and sorted(p.name[:10] for p in b.glob(".last.*")) == [".last.new-", ".last.old-"]
    run_training(config(data, epochs=3), tmp_path / "a", progress=False)
    with caplog.at_level(logging.INFO, logger="clifvqa"):
        run_training(config(data, epochs=3), b, resume=True, progress=False)
    assert resumed_after(caplog) == 2
    assert_same_run(tmp_path / "a", b)
    assert sorted(p.name for p in b.iterdir()) == sorted(p.name for p in (tmp_path / "a").iterdir())
