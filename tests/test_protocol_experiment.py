"""Experiment files: errors with line and key path, dry-run counts, run-index partitions, and a
killed experiment resumed to the same results.csv as an uninterrupted one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clifvqa.errors import ClifvqaError
from clifvqa.manifests.io import Manifest, ManifestRow, write_manifest
from clifvqa.protocol import ExperimentError
from clifvqa.protocol.plan import plan_experiment, run_cost
from clifvqa.protocol.runner import list_runs, run_experiment
from clifvqa.protocol.spec import load_experiment

REPO = Path(__file__).resolve().parents[1]

BASE = """\
variables:
  root: {root}
config:
  optim.epochs: 2
datasets:
  big:
    manifest: ${{root}}/big.csv
    videos: ${{root}}/videos
    store: ${{root}}/big.zarr
    sets:
      train: {{split: train}}
      test: {{split: test}}
      small: {{short_side: {{max: 540}}}}
  little:
    manifest: ${{root}}/little.csv
    videos: ${{root}}/videos
    store: ${{root}}/little.zarr
stages:
  pretrain:
    kind: pretrain
    train: big.train
    val: 0.1
    test: [big.test, little.all]
    report: {{table: "1", row: CLiF-VQA}}
  finetune:
    kind: finetune
    data: [little.all]
    splits: 3
    val: 0.25
    report: {{table: "2", row: CLiF-VQA}}
  ablation:
    kind: ablation
    data: [little.all]
    splits: 3
    settings:
      product:
        model.branches: {{Semantic: semantic, Both: both}}
        model.regression_head: {{"": false, Regression: true}}
    report: {{table: "3", column: average}}
"""


@pytest.fixture
def manifests(tmp_path):
    big = [ManifestRow(f"b{i:02d}.mp4", float(i), "test" if i % 5 == 0 else "train",
                       {"width": "960" if i % 2 else "540", "height": "540"}) for i in range(40)]
    write_manifest(Manifest(big, ["video", "mos", "split", "width", "height"]), tmp_path / "big.csv")
    write_manifest(Manifest([ManifestRow(f"l{i:02d}.mp4", float(i)) for i in range(20)], ["video", "mos"]),
                   tmp_path / "little.csv")
    return tmp_path


def _file(tmp_path, text):
    path = tmp_path / "x.yaml"
    path.write_text(text)
    return path


def test_dry_run_counts_by_hand(manifests):
    x = load_experiment(_file(manifests, BASE.format(root=manifests)))
    plan = plan_experiment(x, manifests / "out", use_tiny=True)
    ids = [r.id for r in plan.runs]
    assert len(ids) == 1 + 3 + 4 * 3 and len(set(ids)) == len(ids)
    assert ids[0] == "pretrain/base/big.train/main" and ids[1] == "finetune/base/little.all/split_00"
    assert "ablation/Semantic+Regression/little.all/split_02" in ids and "ablation/Both/little.all/split_00" in ids
    pre = run_cost(plan.runs[0])
    # 32 train rows, val = floor(32 * 0.1 + 0.5) = 3 carved by the trainer; tests 8 + 20
    assert (pre.train, pre.val, pre.test) == (29, 3, 28)
    # tiny fragments: 16-frame clips, 1 clip per training video; test clips: num_clips_test = 4
    assert pre.frames_per_epoch == 29 * 16 + 3 * 4 * 16
    assert pre.frames_total == 2 * pre.frames_per_epoch + (29 + 28) * 4 * 16
    fine = run_cost(plan.runs[1])  # 20 videos: test 4, train 16, val floor(16 * 0.25 + 0.5) = 4
    assert (fine.train, fine.val, fine.test) == (12, 4, 4)
    semantic = next(r for r in plan.runs if r.setting == "Semantic")
    assert run_cost(semantic).frames_total == 0  # its features come from the store
    # the documented split scheme: stages with the same data and split_seed share their splits
    abl = next(r for r in plan.runs if r.id == "ablation/Both/little.all/split_01")
    assert [r.video for r in abl.tests["little.all"]] == [r.video for r in plan.runs[2].tests["little.all"]]
    assert abl.config.model.branches == "both" and abl.config.model.regression_head is False


def test_errors_name_line_and_key_path(manifests):
    text = BASE.format(root=manifests)
    bad = text.replace("    test: [big.test, little.all]", "    test: [big.test, little.none]")
    line = bad.splitlines().index("    test: [big.test, little.none]") + 1
    with pytest.raises(ExperimentError,
                       match=rf"x.yaml:{line}: stages.pretrain.test\[1\]: dataset little has no set 'none'"):
        load_experiment(_file(manifests, bad))
    bad = text.replace("    test: [big.test, little.all]", "    test:\n      - big.test\n      - little.none")
    line = bad.splitlines().index("      - little.none") + 1
    with pytest.raises(ExperimentError, match=rf"x.yaml:{line}: stages.pretrain.test\[1\]: dataset little has no set"):
        load_experiment(_file(manifests, bad))
    bad = text.replace("      product:\n", "      - {set: {model.branches: spatial}}\n      product:\n")
    bad = bad.replace("      product:\n        model.branches: {Semantic: semantic, Both: both}\n"
                      "        model.regression_head: {\"\": false, Regression: true}\n", "")
    line = bad.splitlines().index("      - {set: {model.branches: spatial}}") + 1
    with pytest.raises(ExperimentError, match=rf"x.yaml:{line}: stages.ablation.settings\[0\]: missing key 'name'"):
        load_experiment(_file(manifests, bad))
    bad = text.replace("    splits: 3\n    val: 0.25", "    splits: 3\n    val: 0.25\n    epochs: 3")
    with pytest.raises(ExperimentError, match=r"stages.finetune.epochs: unknown key 'epochs'"):
        load_experiment(_file(manifests, bad))
    bad = text.replace("  optim.epochs: 2", "  optim.epochz: 2")
    with pytest.raises(ExperimentError, match=r"x.yaml:4: config.optim.epochz: .*unknown key"):
        plan_experiment(load_experiment(_file(manifests, bad)), manifests / "out")
    bad = text.replace("    kind: finetune\n", "    kind: finetune\n    init: {from: ablation}\n")
    bad = bad.replace("    kind: ablation\n", "    kind: ablation\n    init: {from: finetune}\n")
    with pytest.raises(ExperimentError, match=r"cycle: finetune -> ablation -> finetune"):
        load_experiment(_file(manifests, bad))
    with pytest.raises(ExperimentError, match=r"data.stores is set by the experiment"):
        load_experiment(_file(manifests, text.replace("  optim.epochs: 2", "  data.stores: [x]")))
    with pytest.raises(ExperimentError, match=r"--var nope is not a variable"):
        load_experiment(_file(manifests, text), {"nope": "1"})
    bad = text.replace("    splits: 3\n", "    splits: 3\n    splits: 5\n", 1)
    first = bad.splitlines().index("    splits: 3") + 1
    with pytest.raises(ClifvqaError, match=rf"x.yaml:{first + 1}: stages.finetune.splits: written twice "
                                           rf"\(lines {first} and {first + 1}\)"):
        load_experiment(_file(manifests, bad))


def test_run_index_partitions_cover_every_run_once(manifests):
    path = _file(manifests, BASE.format(root=manifests))
    lines = list_runs(path, manifests / "out").splitlines()
    assert [int(line.split("\t")[0]) for line in lines] == list(range(16))
    assert len({line.split("\t")[1] for line in lines}) == 16
    only = list_runs(path, manifests / "out", only=["finetune"]).splitlines()
    assert [line.split("\t")[1] for line in only] == [f"finetune/base/little.all/split_{i:02d}" for i in range(3)]
    with pytest.raises(ExperimentError, match="--run-index 16: the experiment has 16 runs"):
        run_experiment(path, manifests / "out", run_index=16)
    # a run whose start is unfinished is refused before anything is trained
    started = BASE.format(root=manifests).replace("    kind: finetune\n",
                                                  "    kind: finetune\n    init: {from: pretrain}\n")
    with pytest.raises(ExperimentError, match="finetune/base/little.all/split_00 starts from "
                                              "pretrain/base/big.train/main, which is not finished"):
        run_experiment(_file(manifests, started), manifests / "out", only=["finetune"], echo=lambda *_: None)


# ------------------------------------------------------------------------------ real runs

KILL = """\
variables:
  data: {data}
config:
  optim.epochs: 3
  optim.batch_size: 8
  model.branches: semantic
  device: cpu
  workers: 0
datasets:
  a:
    manifest: ${{data}}/a/manifest.csv
    videos: ${{data}}/a/videos
    store: ${{data}}/a/features-1.zarr
    sets: {{train: {{split: train}}, test: {{split: test}}}}
  b:
    manifest: ${{data}}/b/manifest.csv
    videos: ${{data}}/b/videos
    store: ${{data}}/b/features-1.zarr
stages:
  pretrain:
    kind: pretrain
    train: a.train
    val: 0.2
    test: [a.test, b.all]
    report: {{table: "1", row: CLiF-VQA}}
  finetune:
    kind: finetune
    data: [b.all]
    splits: 3
    val: 0.2
    report: {{table: "2", row: CLiF-VQA}}
"""


@pytest.fixture(scope="module")
def mini_data(tmp_path_factory):
    from clifvqa.protocol.demo import make_mini_data

    # 8 of synth-b's 16 scenes: every rule of the demo's data, half the extraction and training
    return make_mini_data(tmp_path_factory.mktemp("mini") / "data", scenes_b=8, log=lambda *_: None)


def test_resolution_groups_from_columns_or_from_the_store(mini_data, tmp_path):
    from clifvqa.manifests.io import read_manifest

    bare = read_manifest(mini_data / "b" / "manifest.csv")
    write_manifest(Manifest([ManifestRow(r.video, r.mos) for r in bare.rows], ["video", "mos"]), tmp_path / "bare.csv")
    text = KILL.format(data=mini_data) + """\
  groups:
    kind: evaluate
    from: pretrain
    test: [b.small, bare.small, bare.large]
"""
    text = text.replace("    store: ${data}/b/features-1.zarr\nstages", "    store: ${data}/b/features-1.zarr\n"
                        "    sets: {small: {short_side: {max: 128}}}\nstages")
    text = text.replace("stages:\n", f"""\
  bare:
    manifest: {tmp_path / 'bare.csv'}
    videos: ${{data}}/b/videos
    store: ${{data}}/b/features-1.zarr
    sets: {{small: {{short_side: {{max: 128}}}}, large: {{long_side: {{min: 161}}}}}}
stages:
""")
    path = tmp_path / "groups.yaml"
    path.write_text(text)
    plan = plan_experiment(load_experiment(path), tmp_path / "out")
    tests = plan.runs[-1].tests
    # 8 scenes x 4 levels; even scenes are 128x128, odd ones 192x160
    assert [r.video for r in tests["b.small"]] == [r.video for r in tests["bare.small"]]
    assert len(tests["bare.small"]) == 16 and len(tests["bare.large"]) == 16
    assert all(int(r.video.split("scene")[1][:2]) % 2 == 0 for r in tests["bare.small"])


def test_mini_mos_follows_level_and_brightness(mini_data):
    """MOS = 1 + 4 (0.6 content + 0.4 technical): a level costs 4 x 0.4 / (levels - 1) within a scene, and
    at level 0 the scenes rank by the brightness of their clean clip (what the random CLIP sees)."""
    from clifvqa.manifests.io import read_manifest
    from clifvqa.protocol.demo import brightness

    rows = read_manifest(mini_data / "b" / "manifest.csv").rows
    mos = {r.video: r.mos for r in rows}
    assert mos["clips/scene03_level0.mp4"] - mos["clips/scene03_level1.mp4"] == pytest.approx(1.6 / 3, abs=1e-3)
    assert min(mos.values()) == pytest.approx(1.0) and max(mos.values()) == pytest.approx(5.0)
    top = [r for r in rows if r.video.endswith("level0.mp4")]
    light = [brightness(100 + int(r.video[11:13]), int(r.extra["width"]), int(r.extra["height"])) for r in top]
    assert sorted(range(len(top)), key=lambda i: light[i]) == sorted(range(len(top)), key=lambda i: top[i].mos)


def _cli(*args, threads: int | None = None, **kwargs):
    import clifvqa

    package_root = str(Path(clifvqa.__file__).resolve().parent.parent)  # the clifvqa under test
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([package_root] + sys.path))
    if threads is not None:  # float sums depend on torch's thread count: pin it to compare runs
        env["OMP_NUM_THREADS"] = str(threads)
    return subprocess.Popen([sys.executable, "-m", "clifvqa.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kwargs)


def test_killed_experiment_resumes_to_the_same_results(mini_data, tmp_path):
    path = tmp_path / "kill.yaml"
    path.write_text(KILL.format(data=mini_data))
    whole = run_experiment(path, tmp_path / "whole", use_tiny=True, progress=False, echo=lambda *_: None)
    assert len(whole.ran) == 4
    # an evaluate stage of a given checkpoint scores as the run that made it did
    best = tmp_path / "whole" / "runs" / "pretrain" / "base" / "a.train" / "main" / "train" / "best"
    scored = tmp_path / "scored.yaml"
    scored.write_text(KILL.format(data=mini_data).split("stages:")[0] + f"""stages:
  again:
    kind: evaluate
    checkpoint: {best}
    test: [b.all]
""")
    run_experiment(scored, tmp_path / "scored", use_tiny=True, progress=False, echo=lambda *_: None)
    again = (tmp_path / "scored" / "results.csv").read_text().splitlines()[1].split(",")
    first = next(line for line in (tmp_path / "whole" / "results.csv").read_text().splitlines()
                 if line.startswith("pretrain,base,main,b.all,")).split(",")
    assert again[:4] == ["again", "base", "main", "b.all"] and again[4:-1] == first[4:-1]
    # kill once the first run is finished and the second has started training
    proc = _cli("experiment", "run", str(path), "--out", str(tmp_path / "killed"), "--tiny", "-q")
    second = tmp_path / "killed" / "runs" / "finetune" / "base" / "b.all" / "split_00"
    deadline = time.time() + 300
    while not (second / "train" / "run.yaml").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    output = proc.communicate()[0]
    first = tmp_path / "killed" / "runs" / "pretrain" / "base" / "a.train" / "main" / "done.json"
    assert first.is_file() and not (second / "done.json").exists(), output
    first_time = first.stat().st_mtime_ns
    again = run_experiment(path, tmp_path / "killed", use_tiny=True, progress=False, echo=lambda *_: None)
    assert again.skipped == ["pretrain/base/a.train/main"] and len(again.ran) == 3
    assert first.stat().st_mtime_ns == first_time
    assert (tmp_path / "killed" / "results.csv").read_text() == (tmp_path / "whole" / "results.csv").read_text()
    # a changed file is refused naming the field, and redone on request
    path.write_text(KILL.format(data=mini_data).replace("optim.epochs: 3", "optim.epochs: 2"))
    with pytest.raises(ExperimentError, match=r"config.optim.epochs 3 -> 2"):
        run_experiment(path, tmp_path / "killed", use_tiny=True, progress=False, echo=lambda *_: None,
                       only=["finetune"])
    redo = run_experiment(path, tmp_path / "killed", use_tiny=True, progress=False, echo=lambda *_: None,
                          only=["finetune"], redo_changed=True)
    assert len(redo.redone) == 3 and len(list((tmp_path / "killed" / "replaced").iterdir())) == 3


def test_array_tasks_write_one_folder(mini_data, tmp_path):
    """One process per --run-index, all at once into one folder (the finetune splits do not depend
    on the pre-training here): every run is done once and results.csv equals a sequential run's."""
    path = tmp_path / "array.yaml"
    path.write_text(KILL.format(data=mini_data))
    # the reference is a process of its own too, with the same torch thread count as the tasks
    sequential = _cli("experiment", "run", str(path), "--out", str(tmp_path / "sequential"), "--tiny", "-q", threads=1)
    log = sequential.communicate()[0]
    assert sequential.returncode == 0, log
    args = ["experiment", "run", str(path), "--out", str(tmp_path / "array"), "--tiny", "-q", "--run-index"]
    procs = [_cli(*args, str(i), threads=1) for i in range(4)]
    outputs = [p.communicate()[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], outputs
    assert all("1 run finished now" in o for o in outputs)
    assert (tmp_path / "array" / "results.csv").read_text() == (tmp_path / "sequential" / "results.csv").read_text()


@pytest.mark.timeout(900)  # 29 tiny runs: about a minute on an idle 2-core machine, minutes on a crowded one
def test_mini_experiment_end_to_end(mini_data, tmp_path):
    """experiments/mini.yaml as `make protocol-demo` runs it, with 1 epoch per stage and 2 splits."""
    from clifvqa.protocol.demo import MINI_FILE
    from clifvqa.protocol.tables import experiment_tables
    from clifvqa.train.config import load_run_config

    out = tmp_path / "mini"
    variables = {"data": str(mini_data), "pretrain_epochs": "1", "epochs": "1", "scratch_epochs": "1",
                 "semantic_epochs": "1", "splits": "2"}
    result = run_experiment(MINI_FILE, out, variables=variables, use_tiny=True, progress=False, echo=lambda *_: None)
    assert len(result.ran) == 2 + 2 + 2 + 4 * 2 + 3 * 2
    text = experiment_tables(out)
    titles = [line for line in text.splitlines() if line.startswith("### ")]
    assert titles == ["### Table 1", "### Table 5", "### Table 2", "### Table 3", "### Table 4"]
    rows = {line.split(" | ")[0][2:] for line in text.splitlines()
            if line.startswith("| ") and not line.startswith("| |")}
    assert {"CLiF-VQA", "CLiF-VQA*", "1", "2", "Semantic", "Semantic+Regression", "Spatial", "Spatial+Regression",
            "Only-Obj", "Only-Sub", "Obj+Sub"} <= rows
    table2 = text[text.index("### Table 2"):text.index("### Table 3")]
    assert table2.count("(2) |") == 4  # 2 rows x SROCC, PLCC, each over 2 splits
    # fine-tuning starts from the pre-trained model's selected checkpoint, whole or its FAST-VQA branch only
    runs = out / "runs"
    whole = load_run_config(runs / "finetune" / "base" / "synth-b.all" / "split_00" / "train" / "run.yaml")
    spatial = load_run_config(runs / "finetune-spatial" / "base" / "synth-b.all" / "split_01" / "train" / "run.yaml")
    best = str(runs / "pretrain" / "1" / "synth-a.train" / "main" / "train" / "best")
    assert (whole.init.checkpoint, whole.init.spatial, spatial.init.spatial) == (best, None, best)
