"""`clifvqa train` as users run it: CLIP-free training from an extracted store, and torchrun DDP."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import torch

TAGS = ["train", "train", "train", "train", "val", "test"]


def env() -> dict[str, str]:
    # one intra-op thread per process: the machine running the tests may have only two cores
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def train_args(data, store, out, *extra) -> list[str]:
    return [
        "train",
        "--manifest",
        str(data.manifest),
        "--videos",
        str(data.videos),
        "--store",
        str(store),
        "--out",
        str(out),
        "--tiny",
        "--epochs",
        "1",
        "--batch-size",
        "2",
        "--workers",
        "0",
        "--num-clips-test",
        "2",
        "--quiet",
        *extra,
    ]


def test_training_never_imports_or_loads_clip(tmp_path, make_train_set, tiny_clip):
    from clifvqa.extract.config import ExtractConfig
    from clifvqa.extract.runner import extract_dataset

    data = make_train_set(tmp_path / "data", split=TAGS)
    clip = shutil.copytree(tiny_clip, tmp_path / "clip")
    store = tmp_path / "clip-features.zarr"
    summary = extract_dataset(
        data.videos,
        store,
        data.manifest,
        ExtractConfig(clip_model=str(clip), device="cpu", threads=1, batch_crops=64),
        progress=False,
    )
    assert summary.ok and summary.done == 6
    shutil.rmtree(clip)  # training must not need it

    script = (
        "import sys\n"
        "from clifvqa.cli import main\n"
        "try:\n"
        f"    main({train_args(data, store, tmp_path / 'run')!r}, standalone_mode=False)\n"
        "finally:\n"
        "    print('LOADED', sorted(m for m in sys.modules if m.startswith(('clifvqa.extract', 'transformers', "
        "'open_clip'))))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "LOADED []" in proc.stdout
    assert "test metrics" in proc.stdout and "run folder" in proc.stdout
    meta = json.loads((tmp_path / "run" / "best" / "meta.json").read_text())
    assert meta["store"]["provenance"]["clip"]["model"] == str(clip)  # recorded to score new videos the same way
    assert meta["model_config"]["r"] == len(meta["store"]["provenance"]["prompts"]["texts"])


def test_cli_refuses_bad_input_before_training(tmp_path, make_train_set):
    from click.testing import CliRunner

    from clifvqa.cli import main

    data = make_train_set(tmp_path / "data", split=TAGS)
    os.remove(data.videos / data.keys[2])
    result = CliRunner().invoke(main, train_args(data, data.store, tmp_path / "run"))
    assert (
        result.exit_code == 2
        and "1 videos of the manifest are not files" in result.output
        and data.keys[2] in result.output
    )
    assert not (tmp_path / "run").exists()
    result = CliRunner().invoke(
        main,
        train_args(
            data,
            data.store,
            tmp_path / "run",
            "--branches",
            "semantic",
            "--prompt-groups",
            "objective",
            "--no-regression-head",
        ),
    )
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "run" / "run.json").read_text())["model_config"]["regression_head"] is False


def test_torchrun_two_cpu_processes(tmp_path, make_train_set):
    data = make_train_set(tmp_path / "data", n=8, split=TAGS + ["train", "train"])
    # a broken train video: with one video per step, one process meets a step with nothing to
    # train on and must still take part in the gradient all-reduce
    (data.videos / data.keys[0]).write_bytes(b"broken")  # after extraction: stale, used as asked
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "clifvqa.cli",
           *train_args(data, data.store, out, "--epochs", "2", "--batch-size", "1", "--allow-stale")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]  # written once, by rank 0
    assert all(r["train_videos"] == 5 and r["skipped_videos"] == 1 for r in rows)  # summed over both processes
    assert data.keys[0] in proc.stdout + proc.stderr
    assert proc.stdout.count("test metrics") == 1
    result = json.loads((out / "result.json").read_text())
    assert result["finished"] and result["val"]["n"] == 1 and result["test"]["n"] == 1
    from clifvqa.train.checkpoint import load_checkpoint

    model, meta = load_checkpoint(out / "best")
    assert meta["run_config"]["optim"]["batch_size"] == 1 and model.fastvqa is not None
    # each process saved its own RNG state (it draws its own dropout masks), for its own resume
    from safetensors.torch import load_file

    rng = load_file(str(out / "last" / "optimizer.safetensors"))
    assert not torch.equal(rng["rng.torch"], rng["rank1.rng.torch"])
    assert json.loads((out / "last" / "train_state.json").read_text())["train_state"]["processes"] == 2
