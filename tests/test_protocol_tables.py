"""results.csv and the paper-shaped tables: hand-made results against hand-computed cells."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from clifvqa.protocol import ExperimentError
from clifvqa.protocol.results import (
    Placement,
    ResultRow,
    read_placements,
    read_results,
    write_placements,
    write_results,
)
from clifvqa.protocol.tables import (
    build_tables,
    experiment_tables,
    format_tables,
    read_reference,
)

REPO = Path(__file__).resolve().parents[1]


def _row(stage, setting, split, srocc, plcc=0.5, *, test_set="d.test", rmse=1.0, n=10, epoch=3):
    return ResultRow(stage, setting, split, test_set, n, srocc, plcc, plcc, 0.5, rmse, epoch)


# Table 1: row A over 3 splits, row B over 2; Table 3: one column averaging two test sets per split.
HAND_MADE = [
    _row("s", "A", "s0", 0.80, 0.70),
    _row("s", "A", "s1", 0.90, 0.80),
    _row("s", "A", "s2", 0.85, 0.90),
    _row("s", "B", "s0", 0.70, 0.95),
    _row("s", "B", "s1", 0.90, 0.85),
    _row("s", "A", "s0", 0.60, rmse=2.0, test_set="y.test"),
    _row("s", "B", "s0", math.nan, rmse=1.5, test_set="y.test"),
    _row("abl", "R", "s0", 0.8, test_set="d1.test"),
    _row("abl", "R", "s0", 0.6, test_set="d2.test"),
    _row("abl", "R", "s1", 0.9, test_set="d1.test"),
    _row("abl", "R", "s1", 0.7, test_set="d2.test"),
    _row("other", "base", "s0", 0.1),  # placed nowhere
]
PLACED = [
    Placement("s", "A", "d.test", "1", "A", "X"),
    Placement("s", "B", "d.test", "1", "B", "X"),
    Placement("s", "A", "y.test", "1", "A", "Y"),
    Placement("s", "B", "y.test", "1", "B", "Y"),
    Placement("abl", "R", "d1.test", "3", "R", "average"),
    Placement("abl", "R", "d2.test", "3", "R", "average"),
]


def test_results_round_trip_exactly(tmp_path):
    path = write_results(HAND_MADE, tmp_path / "results.csv")
    back = read_results(path)
    assert len(back) == len(HAND_MADE)
    for a, b in zip(HAND_MADE, back):
        assert a == b or (math.isnan(a.srocc) and math.isnan(b.srocc) and a.setting == b.setting)
    assert path.read_text().splitlines()[0] == "stage,setting,split,test_set,n,srocc,plcc,plcc_fit,krocc,rmse,epoch"
    assert read_placements(write_placements(PLACED, tmp_path / "tables.csv")) == PLACED


def test_cells_mean_std_n_and_best_by_hand():
    t1, t3 = build_tables(HAND_MADE, PLACED)
    assert (t1.key, t1.rows, t1.columns) == ("1", ["A", "B"], ["X", "Y"])
    a = t1.cells[("A", "X", "srocc")]
    assert a.mean == pytest.approx(0.85) and a.std == pytest.approx(math.sqrt(0.005 / 3)) and a.n == 3
    b = t1.cells[("B", "X", "srocc")]
    assert b.mean == pytest.approx(0.80) and b.std == pytest.approx(0.10) and b.n == 2
    assert t1.cells[("B", "X", "plcc")].mean == pytest.approx(0.90)
    # a NaN split counts nowhere; a column with a single finite value marks nothing
    assert t1.cells[("B", "Y", "srocc")].n == 0
    assert t1.best == {("A", "X", "srocc"), ("B", "X", "plcc"), ("A", "Y", "plcc"), ("B", "Y", "plcc")}
    # Table 3: per split the mean over the two test sets (0.7, 0.8), then over splits
    r = t3.cells[("R", "average", "srocc")]
    assert r.mean == pytest.approx(0.75) and r.std == pytest.approx(0.05) and r.n == 2


def test_rmse_best_is_the_lowest():
    (t1, _) = build_tables(HAND_MADE, PLACED, metrics=("rmse",))
    assert ("B", "Y", "rmse") in t1.best and ("A", "Y", "rmse") not in t1.best


def test_markdown_and_reference_side_by_side(tmp_path):
    ref = tmp_path / "ref.csv"
    ref.write_text("# comment\ntable,row,column,srocc,plcc\n1,A,X,0.86,\n1,Z,X,0.9,0.9\n")
    reference = read_reference(ref)
    assert reference == {("1", "A", "X", "srocc"): 0.86, ("1", "Z", "X", "srocc"): 0.9, ("1", "Z", "X", "plcc"): 0.9}
    text = format_tables(build_tables(HAND_MADE, PLACED), "md", reference)
    lines = text.splitlines()
    assert lines[0] == "### Table 1"
    assert lines[2].startswith("| | X SROCC | paper | Δ | X PLCC | paper | Δ | Y SROCC |")
    a_line = next(line for line in lines if line.startswith("| A |"))
    assert a_line.startswith("| A | **0.850** ± 0.041 (3) | 0.860 | -0.010 | 0.800 ± 0.082 (3) | - | - |")
    assert "reference entries without a result: Z / X" in text
    csv_text = format_tables(build_tables(HAND_MADE, PLACED), "csv", reference)
    assert "1,A,X,srocc,0.850000,0.040825,3,1,0.860000,-0.010000" in csv_text.splitlines()
    latex = format_tables(build_tables(HAND_MADE, PLACED), "latex")
    assert r"A & \textbf{0.850} $\pm$ 0.041 (3)" in latex and r"\end{tabular}" in latex


def test_experiment_tables_from_a_folder(tmp_path):
    write_results(HAND_MADE, tmp_path / "results.csv")
    write_placements(PLACED, tmp_path / "tables.csv")
    assert experiment_tables(tmp_path).startswith("### Table 1")
    with pytest.raises(ExperimentError, match="no such file"):
        experiment_tables(tmp_path / "nowhere")


def test_bad_files_name_the_line(tmp_path):
    bad = tmp_path / "results.csv"
    write_results(HAND_MADE[:2], bad)
    bad.write_text(bad.read_text().replace(",0.9,", ",zero,"))
    with pytest.raises(ExperimentError, match="results.csv line 3"):
        read_results(bad)
    ref = tmp_path / "ref.csv"
    ref.write_text("table,row,column,srocc\n1,A,X,high\n")
    with pytest.raises(ExperimentError, match="line 2: srocc 'high' is not a number"):
        read_reference(ref)
    ref.write_text("table,row,column,speed\n")
    with pytest.raises(ExperimentError, match="line 1: unknown metric columns speed"):
        read_reference(ref)


def test_shipped_paper_reference():
    reference = read_reference(REPO / "experiments" / "paper-reference.csv")
    assert len(reference) == 2 * (4 + 6 + 6 + 12 + 18)
    assert reference[("1", "CLiF-VQA", "LSVQ_1080p", "plcc")] == 0.830
    assert reference[("2", "CLiF-VQA*", "LIVE-VQC", "srocc")] == 0.856
    assert reference[("5", "85", "1080p", "plcc")] == 0.871
    # Table 3's full model is the mean over the three datasets of Table 4's Obj+Sub row
    obj_sub = [reference[("4", "Obj+Sub", d, "srocc")] for d in ("LIVE-VQC", "KoNViD-1k", "YouTube-UGC")]
    full = reference[("3", "Semantic+Spatial+Regression", "average", "srocc")]
    assert sum(obj_sub) / 3 == pytest.approx(full, abs=5e-4)


def test_cli_table_formats_and_errors(tmp_path):
    from click.testing import CliRunner

    from clifvqa.cli import main

    write_results(HAND_MADE, tmp_path / "results.csv")
    write_placements(PLACED, tmp_path / "tables.csv")
    ref = REPO / "experiments" / "paper-reference.csv"
    args = ["experiment", "table", str(tmp_path), "--format", "latex", "--reference", str(ref)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0 and r"\begin{tabular}" in result.output and "paper" in result.output
    result = CliRunner().invoke(main, ["experiment", "table", str(tmp_path), "--format", "csv", "--metrics", "rmse"])
    assert result.output.splitlines()[1] == "1,A,X,rmse,1.000000,0.000000,3,1,,"  # tied with B: both marked
    result = CliRunner().invoke(main, ["experiment", "table", str(tmp_path), "--metrics", "speed"])
    assert result.exit_code == 2 and "unknown metrics speed" in result.output


def test_paper_yaml_reports_every_reference_cell(tmp_path):
    """experiments/paper.yaml places results exactly where experiments/paper-reference.csv has numbers."""
    from clifvqa.manifests.io import Manifest, ManifestRow, write_manifest
    from clifvqa.protocol.plan import plan_experiment
    from clifvqa.protocol.runner import placements_of
    from clifvqa.protocol.spec import load_experiment

    manifests = tmp_path / "manifests"
    sizes = [("1920", "1080"), ("1280", "720"), ("960", "540")]
    for name, n in (("lsvq", 30), ("lsvq-1080p", 10), ("konvid", 10), ("livevqc", 12), ("youtube-ugc", 10)):
        split = (lambda i: "test" if i % 3 == 0 else "train") if name == "lsvq" else (lambda i: None)
        rows = [ManifestRow(f"{name}/{i}.mp4", float(i), split(i), dict(zip(("width", "height"), sizes[i % 3])))
                for i in range(n)]
        write_manifest(Manifest(rows, ["video", "mos", "split", "width", "height"]), manifests / f"{name}.csv")
    experiment = load_experiment(REPO / "experiments" / "paper.yaml", {"data": str(tmp_path)})
    placed = {(p.table, p.row, p.column) for p in placements_of(plan_experiment(experiment, tmp_path / "out"))}
    reported = {key[:3] for key in read_reference(REPO / "experiments" / "paper-reference.csv")}
    assert placed == reported
