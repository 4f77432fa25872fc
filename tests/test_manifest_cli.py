"""`clifvqa manifest scan|import|split|check` through click's test runner."""

from __future__ import annotations

from click.testing import CliRunner

from clifvqa.cli import main
from clifvqa.manifests.io import read_manifest


def run(*args: str):
    return CliRunner().invoke(main, ["manifest", *map(str, args)])


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")


def test_scan_writes_manifest_and_reports_counts(tmp_path):
    data = tmp_path / "data"
    for rel in ["b/2.mp4", "a.MOV", ".DS_Store", "readme.txt", "__x/y.mp4"]:
        _touch(data / rel)
    out = tmp_path / "m.csv"
    result = run("scan", data, "-o", out)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"wrote 2 videos to {out} (skipped: 1 hidden, 1 non-video, 1 unsafe names)\n"
    assert "skipped unsafe name '__x/y.mp4'" in result.stderr
    assert out.read_text() == "video,mos\na.MOV,\nb/2.mp4,\n"

    again = run("scan", data, "-o", out)
    assert again.exit_code == 2
    assert "already exists; use --force" in again.stderr
    assert run("scan", data, "-o", out, "--force").exit_code == 0


def test_scan_of_folder_without_videos_fails(tmp_path):
    (tmp_path / "empty").mkdir()
    result = run("scan", tmp_path / "empty", "-o", tmp_path / "m.csv")
    assert result.exit_code == 2
    assert "no videos found" in result.stderr
    assert not (tmp_path / "m.csv").exists()


def test_import_lists_skipped_rows_and_exits_1_unless_allowed(tmp_path):
    src = tmp_path / "KoNViD_1k_attributes.csv"
    src.write_text("flickr_id,MOS\n4542323058,3.22\n111,bad\n222,\n")
    out = tmp_path / "m.csv"
    result = run("import", "--format", "konvid", src, "-o", out, "--prefix", "KoNViD_1k_videos/")
    assert result.exit_code == 1, result.output  # was 0: skipped rows went unnoticed in scripts
    assert result.stdout == f"wrote 1 rows to {out} (2 skipped)\n"
    assert result.stderr.splitlines() == [
        f"{src} line 3: skipped: KoNViD_1k_videos/111.mp4: MOS 'bad' is not a number",
        f"{src} line 4: skipped: KoNViD_1k_videos/222.mp4: missing MOS",
        f"{src}: 2 skipped, 1 imported; pass --allow-skipped to accept the skipped ones (exit 0)",
    ]
    assert [(r.video, r.mos) for r in read_manifest(out)] == [("KoNViD_1k_videos/4542323058.mp4", 3.22)]
    assert run("import", "--format", "konvid", src, "-o", out).exit_code == 2  # exists, no --force
    allowed = run("import", "--format", "konvid", src, "-o", out, "--force", "--allow-skipped")
    assert allowed.exit_code == 0 and len(allowed.stderr.splitlines()) == 2


def test_import_summarises_many_skipped_rows(tmp_path):
    src = tmp_path / "KoNViD_1k_attributes.csv"
    src.write_text("flickr_id,MOS\n1,3.0\n" + "".join(f"{100 + i},\n" for i in range(25)))
    result = run("import", "--format", "konvid", src, "-o", tmp_path / "m.csv")
    assert result.exit_code == 1
    lines = result.stderr.splitlines()
    assert len(lines) == 12 and lines[0] == f"{src} line 3: skipped: 100.mp4: missing MOS"
    assert lines[10:] == [
        "... and 15 more skipped lines",
        f"{src}: 25 skipped, 1 imported; pass --allow-skipped to accept the skipped ones (exit 0)"]


def test_import_generic_csv_options_and_errors(tmp_path):
    src = tmp_path / "labels.csv"
    src.write_text("file,score\na.mp4,1\nb.mp4,2\n")
    out = tmp_path / "m.csv"
    ok = run(
        "import", "--format", "csv", src, "-o", out, "--video-col", "file", "--mos-col", "score", "--split", "test"
    )
    assert ok.exit_code == 0, ok.output
    assert out.read_text() == "video,mos,split\na.mp4,1.0,test\nb.mp4,2.0,test\n"

    missing = run("import", "--format", "csv", src, "-o", tmp_path / "n.csv")
    assert missing.exit_code == 2
    assert "no column 'video' (columns: file, score); name the right one with --video-col" in missing.stderr
    wrong = run("import", "--format", "csv", src, "-o", tmp_path / "n.csv", "--ext", "mp4")
    assert wrong.exit_code == 2 and "does not take option(s) ext" in wrong.stderr
    assert not (tmp_path / "n.csv").exists()


def test_import_with_no_usable_rows_writes_nothing(tmp_path):
    src = tmp_path / "labels.txt"
    src.write_text("../a.mp4, -1, -1, 3.0\n")
    result = run("import", "--format", "fastvqa", src, "-o", tmp_path / "m.csv")
    assert result.exit_code == 2
    assert "line 1: skipped: unsafe video path '../a.mp4'" in result.stderr
    assert "no usable rows" in result.stderr
    assert not (tmp_path / "m.csv").exists()


def test_split_writes_ten_files_and_refuses_to_overwrite(tmp_path):
    src = tmp_path / "m.csv"
    src.write_text("video,mos\n" + "".join(f"v{i:02d}.mp4,{i}\n" for i in range(20)))
    out = tmp_path / "splits"
    result = run("split", src, "--seeds", 10, "--test-fraction", 0.2, "-o", out)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines == [f"{out / f'split_{i:02d}.csv'}: 16 train, 0 val, 4 test" for i in range(10)]
    first = read_manifest(out / "split_00.csv")
    assert sum(r.split == "test" for r in first) == 4

    again = run("split", src, "-o", out)
    assert again.exit_code == 2 and "--force" in again.stderr
    forced = run("split", src, "--seeds", 2, "--val-fraction", 0.1, "--seed", 3, "-o", out, "--force")
    assert forced.exit_code == 0, forced.output
    assert forced.stdout.splitlines()[0].endswith("split_00.csv: 14 train, 2 val, 4 test")
    assert sorted(p.name for p in out.iterdir()) == ["split_00.csv", "split_01.csv"]


def test_split_of_bad_manifest_names_file_and_line(tmp_path):
    src = tmp_path / "M.csv"
    src.write_text("video,mos\na.mp4,1\n../b.mp4,2\n")
    result = run("split", src, "-o", tmp_path / "splits")
    assert result.exit_code == 2
    assert "M.csv line 3: unsafe video path '../b.mp4': contains '..'" in result.stderr
    assert not (tmp_path / "splits").exists()


def test_check_exit_codes_and_problem_lines(tmp_path):
    root = tmp_path / "data"
    _touch(root / "a.mp4")
    clean = tmp_path / "clean.csv"
    clean.write_text("video,mos\na.mp4,1.0\n")
    ok = run("check", clean, "--root", root)
    assert ok.exit_code == 0
    assert ok.stdout == f"{clean}: no problems (1 of 1 videos present under {root})\n"

    bad = tmp_path / "M.csv"
    bad.write_text("video,mos,split\na.mp4,1.0,train\nb.mp4,oops,test\na.mp4,2.0,val\nc.mp4,3,\n")
    result = run("check", bad, "--root", root)
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        f"{bad}:2: a.mp4: video 'a.mp4' appears 2 times (lines 2, 4)",
        f"{bad}:3: b.mp4: MOS 'oops' is not a number",
        f"{bad}:3: b.mp4: no such file under {root}",
        f"{bad}:4: a.mp4: video 'a.mp4' appears 2 times (lines 2, 4)",
        f"{bad}:5: c.mp4: no such file under {root}",
    ]
    assert result.stderr == f"{bad}: 5 problems; 1 of 3 videos present under {root} -- is --root right?\n"


def test_check_header_problem_and_unreadable_file(tmp_path):
    from clifvqa.manifests.io import EXPECTED_HEADER

    src = tmp_path / "m.csv"
    src.write_text("path,mos\na.mp4,1\n")
    result = run("check", src)
    assert result.exit_code == 1
    assert result.stdout == f"{src}:1: header has no 'video' column (columns: path, mos); {EXPECTED_HEADER}\n"
    latin = tmp_path / "latin.csv"
    latin.write_bytes("video\nvidéo.mp4\n".encode("latin-1"))
    unreadable = run("check", latin)
    assert unreadable.exit_code == 2 and "not UTF-8" in unreadable.stderr
