"""benchmarks/gpu_check.py: the CPU quick run keeps every section runnable; the report writer's
JSON, Markdown and budget rules."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))
import gpu_check  # noqa: E402
from gpu_check import CheckFailed, Section, make_report, render_markdown, run_sections, write_report  # noqa: E402

RESULT_KEYS = {"status", "seconds", "estimate_s", "reason", "error", "numbers", "notes", "tables"}


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Ctx:
    pass


def spend(clock: FakeClock, seconds: float, numbers: dict | None = None):
    def run(ctx, res):
        clock.now += seconds
        res["numbers"].update(numbers or {})

    return run


def test_budget_skips_what_does_not_fit_and_a_failure_does_not_stop_the_rest():
    clock = FakeClock()

    def broken(ctx, res):
        clock.now += 5
        raise RuntimeError("device exploded\nsecond line")

    def failed_check(ctx, res):
        res["numbers"]["diff"] = 0.5
        raise CheckFailed("diff 0.5 > 0.1")

    sections = [
        Section("a", spend(clock, 30, {"x": 1.5}), (20, 1)),
        Section("b", broken, (10, 1)),
        Section("c", spend(clock, 1), (70, 1)),  # 65 s left: does not fit
        Section("d", failed_check, (60, 1)),  # fits
        Section("e", spend(clock, 40), (10, 1)),  # d took no time: 65 s left
        Section("f", spend(clock, 1), (30, 1)),  # 25 s left
    ]
    logs: list[str] = []
    ctx = Ctx()
    results = run_sections(sections, ctx, budget=100, quick=False, clock=clock, log=logs.append)
    assert list(results) == ["a", "b", "c", "d", "e", "f"]
    assert [r["status"] for r in results.values()] == ["ok", "fail", "skipped", "fail", "ok", "skipped"]
    assert results["a"]["seconds"] == 30 and results["a"]["numbers"] == {"x": 1.5}
    assert results["b"]["error"].startswith("RuntimeError: device exploded (test_gpu_check.py:")
    assert results["b"]["reason"] == results["b"]["error"] and results["b"]["seconds"] == 5
    assert results["c"]["reason"] == "estimated 70 s, 65 s of the 100 s budget left"
    assert results["c"]["seconds"] == 0
    assert results["d"]["reason"] == "diff 0.5 > 0.1" and results["d"]["numbers"] == {"diff": 0.5}
    assert results["f"]["reason"] == "estimated 30 s, 25 s of the 100 s budget left"
    assert ctx.left() == 25
    assert logs[2] == "[c] skipped: estimated 70 s, 65 s of the 100 s budget left"
    # --quick uses the second estimate
    clock2 = FakeClock()
    quick = run_sections([Section("g", spend(clock2, 1), (1000, 2))], Ctx(), budget=3, quick=True,
                         clock=clock2, log=lambda _: None)
    assert quick["g"]["status"] == "ok" and quick["g"]["estimate_s"] == 2


def test_context_skip_reason_and_cleanup_are_used():
    clock = FakeClock()
    ctx = Ctx()
    cleaned = []
    ctx.skip_reason = lambda name: "no CUDA" if name == "gpu" else None
    ctx.cleanup = lambda: cleaned.append(1)
    results = run_sections([Section("gpu", spend(clock, 1), (1, 1)), Section("cpu", spend(clock, 1), (1, 1))],
                           ctx, budget=10, quick=False, clock=clock, log=lambda _: None)
    assert results["gpu"]["status"] == "skipped" and results["gpu"]["reason"] == "no CUDA"
    assert results["cpu"]["status"] == "ok" and cleaned == [1]


def report_of(results: dict) -> dict:
    return make_report(results, command="benchmarks/gpu_check.py --quick", device="cpu", quick=True,
                       budget=120, elapsed=12.34, machine_line="machine: CPU test (2 cores)",
                       started="2026-11-30T00:00:00+00:00")


def test_report_json_schema_counts_and_non_finite_numbers(tmp_path):
    results = {
        "a": {**gpu_check.new_result(5), "numbers": {"nan": math.nan, "inf": [1.0, math.inf], "ok": 2}},
        "b": {**gpu_check.new_result(5), "status": "skipped", "reason": "no CUDA"},
        "c": {**gpu_check.new_result(5), "status": "fail", "reason": "boom",
              "error": "ValueError: boom (x.py:1)"},
    }
    report = report_of(results)
    js, md = write_report(report, tmp_path / "out")
    loaded = json.loads(js.read_text())  # strict JSON: no NaN
    assert set(loaded) == {"schema", "command", "started", "device", "quick", "budget_s", "elapsed_s",
                           "machine_line", "counts", "sections"}
    assert loaded["schema"] == "clifvqa-gpu-check/1" and loaded["elapsed_s"] == 12.3
    assert loaded["counts"] == {"ok": 1, "fail": 1, "skipped": 1}
    assert all(set(r) == RESULT_KEYS for r in loaded["sections"].values())
    assert loaded["sections"]["a"]["numbers"] == {"nan": None, "inf": [1.0, None], "ok": 2}
    assert md.read_text() == render_markdown(report)


def test_markdown_tables_and_summary_rows():
    assert gpu_check.markdown_table(["a", "b"], [[1.23456, None], ["x|y", True], [1e-5, 123456.0]]) == (
        "| a | b |\n|---|---|\n| 1.235 | – |\n| x\\|y | yes |\n| 1.00e-05 | 1.23e+05 |"
    )
    results = {
        "speed": {**gpu_check.new_result(5), "seconds": 4.0, "numbers": {"fps": 10.0, "sweep": [1, 2]},
                  "notes": ["a note"],
                  "tables": [{"title": "T", "columns": ["res", "fps"], "rows": [["540p", 2.5]]}]},
        "gpu": {**gpu_check.new_result(5), "status": "skipped", "reason": "no CUDA"},
    }
    text = render_markdown(report_of(results))
    assert text.startswith("### GPU check: cpu (quick), 2026-11-30T00:00:00+00:00\n\n"
                           "`benchmarks/gpu_check.py --quick`")
    assert "machine: CPU test (2 cores)" in text
    assert "1 ok, 0 failed, 1 skipped; 12 s of a 120 s budget." in text
    assert "| speed | ok | 4.0 | fps 10 |" in text  # lists are left out of the summary row
    assert "| gpu | skipped | 0.0 | no CUDA |" in text
    assert "#### speed" in text and "#### gpu" not in text  # skipped sections have no detail
    assert "T\n\n| res | fps |\n|---|---|\n| 540p | 2.5 |" in text and "- a note" in text


def test_cpu_quick_run_has_every_section(tmp_path):
    """The whole check on the CPU with tiny models: every section present with a valid status."""
    import clifvqa

    out = tmp_path / "report"
    here = str(Path(clifvqa.__file__).parent.parent)  # the child imports this clifvqa, not another
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([here, *sys.path]))
    argv = [sys.executable, str(BENCH / "gpu_check.py"), "--device", "cpu", "--quick", "--out", str(out)]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    report = json.loads((out / "gpu-report.json").read_text())
    assert list(report["sections"]) == gpu_check.SECTION_NAMES
    for name, r in report["sections"].items():
        assert set(r) == RESULT_KEYS, name
        assert r["status"] in gpu_check.STATUSES, name
        assert r["status"] == "ok" or r["reason"], name
    assert report["sections"]["ddp_world2"] == {**report["sections"]["ddp_world2"], "status": "skipped",
                                                "reason": "no CUDA (nccl with two GPUs)"}
    assert report["sections"]["ddp_world1"]["numbers"]["backend"] == "gloo"
    # Every section but the two-GPU one runs through on the CPU (stand-ins named in its notes).
    for name in gpu_check.SECTION_NAMES[:-1]:
        assert report["sections"][name]["status"] == "ok", (name, report["sections"][name]["reason"])
    assert proc.returncode == 0
    md = (out / "gpu-report.md").read_text()
    assert all(f"| {name} |" in md for name in gpu_check.SECTION_NAMES)
    assert not (out / "work").exists()  # the inputs are removed, only the reports stay


CORRECTNESS = ["extract_precision", "extract_overlap", "batch_auto_1080p", "train_amp", "grad_checkpoint",
               "train_single_device", "train_resume", "eval_bf16_vs_fp32", "predict_deterministic",
               "store_cpu_then_device", "ddp_world1"]


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="needs a CUDA GPU")
def test_correctness_sections_on_the_gpu(tmp_path):
    """`pytest -m gpu` runs the check's correctness sections on the device, at quick sizes."""
    assert set(CORRECTNESS) < set(gpu_check.SECTION_NAMES)
    code = gpu_check.main(["--device", "cuda", "--quick", "--budget", "300", "--only", *CORRECTNESS,
                           "--out", str(tmp_path)])
    report = json.loads((tmp_path / "gpu-report.json").read_text())
    failed = {n: r["reason"] for n, r in report["sections"].items() if r["status"] != "ok"}
    assert code == 0 and failed == {}
