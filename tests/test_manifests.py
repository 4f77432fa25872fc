"""manifests/: path rule, scan, read/write, importers, splits, check."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io

from clifvqa.manifests.check import check_manifest
from clifvqa.manifests.importers import LabelFormatError, import_labels
from clifvqa.manifests.io import Manifest, ManifestError, ManifestRow, parse_manifest, read_manifest, write_manifest
from clifvqa.manifests.paths import UnsafePathError, scan_videos, validate_video_path
from clifvqa.manifests.split import random_splits, write_splits

# ---------------------------------------------------------------- path rule

UNSAFE = [
    ("", "is empty"),
    ("/data/x.mp4", "absolute"),
    ("C:/videos/x.mp4", "Windows drive 'C:'"),
    ("d:x.mp4", "Windows drive 'd:'"),
    ("../x.mp4", "contains '..'"),
    ("a/../../x.mp4", "contains '..'"),
    ("./x.mp4", "'.' segment"),
    ("a/./x.mp4", "'.' segment"),
    ("a//x.mp4", "empty segment"),
    ("a/", "empty segment"),
    ("a\\x.mp4", "backslash"),
    ("a\nx.mp4", "control character '\\n'"),
    ("a\tx.mp4", "control character '\\t'"),
    ("a\x7fx.mp4", "control character '\\x7f'"),
    ("a\x00x.mp4", "control character"),
    ("__meta/x.mp4", "starts with '__'"),
    ("a/__x.mp4", "starts with '__'"),
]


@pytest.mark.parametrize("path,reason", UNSAFE)
def test_unsafe_paths_are_refused_with_reason(path, reason):
    with pytest.raises(UnsafePathError) as info:
        validate_video_path(path)
    assert isinstance(info.value, ValueError)
    assert reason in info.value.reason
    assert info.value.path == path
    assert str(info.value).startswith(f"unsafe video path {path!r}: ")


@pytest.mark.parametrize(
    "path", ["KoNViD_1k_videos/4542323058.mp4", "a b/c.d.mp4", "x..y.mp4", "_a/b_.mp4", "ünï/vidéo.mkv", "ab:c.mp4"]
)
def test_safe_paths_are_returned_unchanged(path):
    assert validate_video_path(path) == path


def test_non_string_path_is_a_type_error():
    with pytest.raises(TypeError):
        validate_video_path(None)  # type: ignore[arg-type]


# ---------------------------------------------------------------- scan


def _touch(root, rel, data=b"x"):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_scan_counts_hidden_and_non_video_and_sorts_posix_keys(tmp_path):
    for rel in ["a.mp4", "B/c.MKV", "B/d/e.webm", "B/d/f.M2TS", ".hidden.mp4", ".git/x.mp4", ".git/y/z.mp4",
                "notes.txt", "raw.yuv", "B/thumb.jpg", "__MACOSX/y.mp4"]:
        _touch(tmp_path, rel)
    result = scan_videos(tmp_path)
    assert result.videos == ["B/c.MKV", "B/d/e.webm", "B/d/f.M2TS", "a.mp4"]
    assert result.skipped_hidden == 2  # .hidden.mp4 and the .git folder (not entered)
    assert result.skipped_non_video == 3  # notes.txt, raw.yuv, thumb.jpg
    assert [key for key, _ in result.unsafe] == ["__MACOSX/y.mp4"]
    assert "starts with '__'" in result.unsafe[0][1]


def test_scan_probe_rejects_files_that_are_not_videos(tmp_path, make_video):
    make_video("good/clip.mp4", root=tmp_path, num_frames=4, width=64, height=64)
    _touch(tmp_path, "good/broken.mp4", b"this is not a video")
    plain = scan_videos(tmp_path)
    assert plain.videos == ["good/broken.mp4", "good/clip.mp4"]
    probed = scan_videos(tmp_path, probe=True)
    assert probed.videos == ["good/clip.mp4"]
    assert probed.skipped_non_video == 1
    assert [key for key, _ in probed.probe_failed] == ["good/broken.mp4"]


def test_scan_refuses_a_file_as_root(tmp_path):
    _touch(tmp_path, "a.mp4")
    with pytest.raises(NotADirectoryError):
        scan_videos(tmp_path / "a.mp4")


# ---------------------------------------------------------------- read / write


def test_round_trip_keeps_extra_columns_and_their_order(tmp_path):
    text = (
        "zeta,video,mos,source,split,alpha\n"
        "1,v/a.mp4,3.22,flickr,train,x\n"
        '2,v/b.mp4,,"quoted, comma",test,\n'
        "3,v/c.mp4,67.75,,,y\n"
    )
    src = tmp_path / "m.csv"
    src.write_text(text)
    m = read_manifest(src)
    assert m.columns == ["zeta", "video", "mos", "source", "split", "alpha"]
    assert m.extra_columns == ["zeta", "source", "alpha"]
    assert [(r.video, r.mos, r.split, r.line) for r in m] == [
        ("v/a.mp4", 3.22, "train", 2), ("v/b.mp4", None, "test", 3), ("v/c.mp4", 67.75, None, 4)]
    assert m.rows[1].extra == {"zeta": "2", "source": "quoted, comma", "alpha": ""}
    out = write_manifest(m, tmp_path / "out.csv")
    assert out.read_text() == text
    assert read_manifest(out).rows == m.rows


def test_manifest_without_mos_column_reads_mos_none(tmp_path):
    src = tmp_path / "m.csv"
    src.write_text("video\na.mp4\nb.mp4\n")
    m = read_manifest(src)
    assert [(r.video, r.mos, r.split) for r in m] == [("a.mp4", None, None), ("b.mp4", None, None)]


def test_read_reports_every_problem_with_file_and_line(tmp_path):
    src = tmp_path / "M.csv"
    src.write_text(
        "video,mos,split\n"      # 1
        "a.mp4,1.0,train\n"      # 2 duplicate of 5
        "b.mp4,abc,train\n"      # 3 bad MOS
        "c.mp4,2.0,holdout\n"    # 4 bad split
        "a.mp4,3.0,test\n"       # 5 duplicate of 2
        "d.mp4,4.0\n"            # 6 wrong field count
        "../x.mp4,5.0,test\n"    # 7 unsafe
        "e.mp4,nan,test\n"       # 8 not finite
    )
    with pytest.raises(ManifestError) as info:
        read_manifest(src)
    err = info.value
    assert [(p.line, p.kind) for p in err.problems] == [
        (2, "duplicate"),
        (3, "bad_mos"),
        (4, "bad_split"),
        (5, "duplicate"),
        (6, "fields"),
        (7, "unsafe_path"),
        (8, "bad_mos"),
    ]
    message = str(err)
    assert "M.csv line 7: unsafe video path '../x.mp4': contains '..'" in message
    assert "M.csv line 3: MOS 'abc' is not a number" in message
    assert "M.csv line 2: video 'a.mp4' appears 2 times (lines 2, 5)" in message
    assert "7 problems" in message


def test_read_error_lists_the_first_ten_then_counts(tmp_path):
    src = tmp_path / "m.csv"
    src.write_text("video,mos\n" + "".join(f"../v{i}.mp4,1\n" for i in range(25)))
    with pytest.raises(ManifestError) as info:
        read_manifest(src)
    assert len(info.value.problems) == 25
    message = str(info.value)
    assert "line 11:" in message and "line 12:" not in message  # errors.MAX_LISTED
    assert "... and 15 more problems" in message


def test_line_numbers_count_physical_lines_across_quoted_newlines(tmp_path):
    src = tmp_path / "m.csv"
    src.write_text('video,mos,note\na.mp4,1,"two\nlines"\n\n../b.mp4,2,x\n')
    _, problems = parse_manifest(src)
    assert [(p.line, p.kind) for p in problems] == [(5, "unsafe_path")]


@pytest.mark.parametrize("text,expected", [
    ("", "file is empty"),
    ("path,mos\na.mp4,1\n", "header has no 'video' column (columns: path, mos)"),
    ("video,mos,mos\na.mp4,1,2\n", "header repeats column(s) mos"),
])
def test_bad_header(tmp_path, text, expected):
    src = tmp_path / "m.csv"
    src.write_text(text)
    with pytest.raises(ManifestError, match=r"line 1: " + expected.replace("(", r"\(").replace(")", r"\)")):
        read_manifest(src)


def test_non_utf8_manifest_is_a_clear_error(tmp_path):
    src = tmp_path / "m.csv"
    src.write_bytes("video,mos\nvidéo.mp4,1\n".encode("latin-1"))
    with pytest.raises(ValueError, match="not UTF-8"):
        read_manifest(src)


def test_write_refuses_existing_file_and_bad_rows_never_touch_it(tmp_path):
    out = tmp_path / "m.csv"
    write_manifest(Manifest.from_videos(["a.mp4"]), out)
    before = out.read_text()
    assert before == "video,mos\na.mp4,\n"
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_manifest(Manifest.from_videos(["b.mp4"]), out)
    bad = Manifest([ManifestRow("b.mp4", 1.0), ManifestRow("../c.mp4", 2.0), ManifestRow("b.mp4", float("inf"), "dev")])
    with pytest.raises(ManifestError) as info:
        write_manifest(bad, out, overwrite=True)
    assert sorted((p.line, p.kind) for p in info.value.problems) == [
        (2, "duplicate"), (3, "unsafe_path"), (4, "bad_mos"), (4, "bad_split"), (4, "duplicate")]
    assert out.read_text() == before
    assert list(tmp_path.iterdir()) == [out]  # no temporary file left behind


def test_write_adds_split_and_unknown_extra_columns(tmp_path):
    m = Manifest(
        [ManifestRow("a.mp4", 1.5, "test", {"w": "1"}), ManifestRow("b.mp4", None, None, {"h": "2"})], ["video"]
    )
    out = write_manifest(m, tmp_path / "m.csv")
    assert out.read_text() == "video,mos,split,w,h\na.mp4,1.5,test,1,\nb.mp4,,,,2\n"
    assert [r.video for r in read_manifest(out).subset("test")] == ["a.mp4"]


def test_from_videos_applies_the_path_rule():
    with pytest.raises(UnsafePathError):
        Manifest.from_videos(["ok.mp4", "a//b.mp4"])


# ---------------------------------------------------------------- importers


def test_import_fastvqa_label_text(tmp_path):
    src = tmp_path / "labels.txt"
    src.write_text(
        "KoNViD_1k_videos/4542323058.mp4, 8.008, 29.97002997002997, 3.22\n"  # 1
        "yfcc-batch1/747.mp4, -1, -1, 67.75\n"                               # 2
        "\n"                                                                  # 3 blank: not a row
        "bad/mos.mp4, 8.0, 30, n/a\n"                                        # 4
        "three/fields.mp4, 8.0, 3.1\n"                                       # 5
        "../escape.mp4, 8.0, 30, 2.0\n"                                      # 6
        "KoNViD_1k_videos/4542323058.mp4, 8.0, 30, 4.0\n"                    # 7 duplicate
        "odd/fps.mp4, 8.0, fast, 2.0\n"                                      # 8
    )
    result = import_labels("fastvqa", src)
    m = result.manifest
    assert m.columns == ["video", "mos", "duration", "fps"]
    assert [(r.video, r.mos, r.extra) for r in m] == [
        ("KoNViD_1k_videos/4542323058.mp4", 3.22, {"duration": "8.008", "fps": "29.97002997002997"}),
        ("yfcc-batch1/747.mp4", 67.75, {"duration": "", "fps": ""}),
    ]
    assert result.unit == "line"
    assert result.skipped == [
        (4, "bad/mos.mp4: MOS 'n/a' is not a number"),
        (5, "expected 4 comma-separated fields (path, duration, fps, mos), found 3"),
        (6, "unsafe video path '../escape.mp4': contains '..'"),
        (7, "KoNViD_1k_videos/4542323058.mp4: duplicate of line 1"),
        (8, "odd/fps.mp4: fps 'fast' is not a number"),
    ]


def test_import_konvid_attributes_with_prefix(tmp_path):
    src = tmp_path / "KoNViD_1k_attributes.csv"
    src.write_text("flickr_id,MOS,SD,n\n4542323058,3.22,0.71,50\n3339962845,,0.5,48\n8533442536,2.48,0.9,51\n")
    result = import_labels("konvid", src, prefix="KoNViD_1k_videos")
    m = result.manifest
    assert m.columns == ["video", "mos", "SD", "n"]
    assert [(r.video, r.mos, r.extra) for r in m] == [
        ("KoNViD_1k_videos/4542323058.mp4", 3.22, {"SD": "0.71", "n": "50"}),
        ("KoNViD_1k_videos/8533442536.mp4", 2.48, {"SD": "0.9", "n": "51"}),
    ]
    assert result.skipped == [(3, "KoNViD_1k_videos/3339962845.mp4: missing MOS")]


def test_import_konvid_missing_column_names_the_option(tmp_path):
    src = tmp_path / "k.csv"
    src.write_text("id,MOS\n1,2\n")
    with pytest.raises(
        LabelFormatError, match=r"no column 'flickr_id' \(columns: id, MOS\); name the right one with --video-col"
    ):
        import_labels("konvid", src)


def test_import_livevqc_mat_cell_array(tmp_path):
    names = np.empty((4, 1), dtype=object)
    names[:, 0] = ["A001.mp4", "A002.mp4", "", "B003.mp4"]
    src = tmp_path / "data.mat"
    scipy.io.savemat(src, {"video_list": names, "mos": np.array([[80.23], [np.nan], [51.0], [33.5]])})
    # What scipy hands back is nested: a cell of 1-element string arrays.
    assert isinstance(scipy.io.loadmat(src)["video_list"][0, 0], np.ndarray)
    result = import_labels("livevqc", src, prefix="Video/")
    assert [(r.video, r.mos) for r in result.manifest] == [("Video/A001.mp4", 80.23), ("Video/B003.mp4", 33.5)]
    assert result.unit == "entry"
    assert [line for line, _ in result.skipped] == [2, 3]
    assert result.skipped[0][1] == "Video/A002.mp4: MOS 'nan' is not a number"
    assert "not a single string" in result.skipped[1][1]


def test_import_livevqc_length_mismatch(tmp_path):
    names = np.empty((2, 1), dtype=object)
    names[:, 0] = ["A001.mp4", "A002.mp4"]
    src = tmp_path / "data.mat"
    scipy.io.savemat(src, {"video_list": names, "mos": np.array([1.0, 2.0, 3.0])})
    with pytest.raises(LabelFormatError, match="video_list has 2 entries but mos has 3"):
        import_labels("livevqc", src)


def test_import_lsvq_official_train_test_file(tmp_path):
    src = tmp_path / "labels_train_test.csv"
    src.write_text(
        "name,height,width,mos,frame_number,is_test\n"
        "ia-batch1/aaa,720,1280,67.75,240,False\n"
        "yfcc-batch1/747,480,640,55.1,300,True\n"
        "ia-batch2/bbb,480,640,40.0,300,maybe\n"
        "ia-batch2/ccc.mp4,480,640,41.0,300,1\n"
    )
    result = import_labels("lsvq", src)
    m = result.manifest
    assert m.columns == ["video", "mos", "split", "height", "width", "frame_number"]
    assert [(r.video, r.mos, r.split) for r in m] == [
        ("ia-batch1/aaa.mp4", 67.75, "train"),
        ("yfcc-batch1/747.mp4", 55.1, "test"),
        ("ia-batch2/ccc.mp4", 41.0, "test"),
    ]
    assert m.rows[0].extra == {"height": "720", "width": "1280", "frame_number": "240"}
    assert result.skipped == [(4, "is_test 'maybe' is not True/False/1/0")]


def test_import_lsvq_1080p_is_all_test(tmp_path):
    src = tmp_path / "labels_test_1080p.csv"
    src.write_text("name,mos\nia-batch9/x,60.5\nia-batch9/y,61.5\n")
    m = import_labels("lsvq", src, split="train").manifest  # the official set wins over --split
    assert [(r.video, r.split, r.extra) for r in m] == [
        ("ia-batch9/x.mp4", "test", {"lsvq_set": "test-1080p"}),
        ("ia-batch9/y.mp4", "test", {"lsvq_set": "test-1080p"}),
    ]


def test_import_lsvq_without_official_split_uses_option(tmp_path):
    src = tmp_path / "labels.csv"
    src.write_text("name,mos\na,1\nb,2\n")
    assert {r.split for r in import_labels("lsvq", src).manifest} == {"train"}
    assert {r.split for r in import_labels("lsvq", src, split="test").manifest} == {"test"}


def test_import_youtube_ugc_csv_export(tmp_path):
    src = tmp_path / "original_videos_MOS.csv"
    src.write_text("vid,category,MOS\nAnimation_1080P-05f8,Animation,3.929\nGaming_360P-0000.mkv,Gaming,2.5\nVlog_720P-1111,Vlog,\n")
    result = import_labels("youtube-ugc", src, prefix="original_videos")
    assert [(r.video, r.mos, r.extra) for r in result.manifest] == [
        ("original_videos/Animation_1080P-05f8.mkv", 3.929, {"category": "Animation"}),
        ("original_videos/Gaming_360P-0000.mkv", 2.5, {"category": "Gaming"}),
    ]
    assert result.skipped == [(4, "original_videos/Vlog_720P-1111.mkv: missing MOS")]
    mp4 = import_labels("youtube-ugc", src, ext="mp4").manifest
    assert mp4.videos == ["Animation_1080P-05f8.mp4", "Gaming_360P-0000.mkv"]


def test_import_youtube_ugc_accepts_mos_full_column(tmp_path):
    src = tmp_path / "ugc.csv"
    src.write_text("vid,MOS full,MOS chunk00\nA,4.1,4.0\n")
    m = import_labels("youtube-ugc", src).manifest
    assert [(r.video, r.mos, r.extra) for r in m] == [("A.mkv", 4.1, {"MOS chunk00": "4.0"})]


def test_import_youtube_ugc_xlsx_needs_openpyxl(tmp_path):
    try:
        import openpyxl
    except ImportError:
        src = tmp_path / "MOS.xlsx"
        src.write_bytes(b"PK")
        with pytest.raises(LabelFormatError, match=r"pip install openpyxl"):
            import_labels("youtube-ugc", src)
        return
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(["vid", "MOS"])
    sheet.append(["Animation_1080P-05f8", 3.929])
    sheet.append(["Sports_720P-1234", None])
    book.save(tmp_path / "MOS.xlsx")
    result = import_labels("youtube-ugc", tmp_path / "MOS.xlsx")
    assert [(r.video, r.mos) for r in result.manifest] == [("Animation_1080P-05f8.mkv", 3.929)]
    assert result.unit == "row" and result.skipped == [(3, "Sports_720P-1234.mkv: missing MOS")]


def test_import_generic_csv(tmp_path):
    src = tmp_path / "labels.csv"
    src.write_text(
        "Path,Score,split,video,note\n"
        "clips/a.mp4,1.5,train,orig_a,x\n"
        "clips/b.mp4,2.5,,orig_b,y\n"
        "clips/c.mp4,3.5,dev,orig_c,z\n"
        "clips/d.mp4,4.5,test,orig_d\n"
        ",5.5,test,orig_e,w\n"
    )
    result = import_labels("csv", src, video_col="path", mos_col="score")
    m = result.manifest
    assert m.columns == ["video", "mos", "split", "source_video", "note"]
    assert [(r.video, r.mos, r.split, r.extra) for r in m] == [
        ("clips/a.mp4", 1.5, "train", {"source_video": "orig_a", "note": "x"}),
        ("clips/b.mp4", 2.5, None, {"source_video": "orig_b", "note": "y"}),
    ]
    assert result.skipped == [
        (4, "split 'dev' is not one of train, val, test (or empty)"),
        (5, "has 4 fields, the header has 5"),
        (6, "missing video name"),
    ]
    out = write_manifest(m, tmp_path / "m.csv")
    assert read_manifest(out).rows == [
        ManifestRow(r.video, r.mos, r.split, r.extra, line=i + 2) for i, r in enumerate(m.rows)]


def test_import_argument_errors(tmp_path):
    src = tmp_path / "labels.csv"
    src.write_text("video,mos\na.mp4,1\n")
    with pytest.raises(ValueError, match="unknown label format 'kadid'"):
        import_labels("kadid", src)
    with pytest.raises(ValueError, match=r"does not take option\(s\) ext"):
        import_labels("csv", src, ext=".mp4")
    with pytest.raises(ValueError, match="split must be one of"):
        import_labels("csv", src, split="dev")
    with pytest.raises(ValueError, match=r"prefix '\.\./up' is unsafe: contains '\.\.'"):
        import_labels("csv", src, prefix="../up")
    assert import_labels("csv", src, prefix="root/").manifest.videos == ["root/a.mp4"]


# ---------------------------------------------------------------- splits


def _labelled(n: int) -> Manifest:
    return Manifest([ManifestRow(f"v/{i:03d}.mp4", float(i)) for i in range(n)], ["video", "mos"])


def test_ten_random_80_20_splits():
    m = _labelled(100)
    splits = random_splits(m, seeds=10, test_fraction=0.2)
    assert len(splits) == 10
    tests = []
    for s in splits:
        train = {r.video for r in s if r.split == "train"}
        test = {r.video for r in s if r.split == "test"}
        assert len(train) == 80 and len(test) == 20
        assert not train & test and train | test == set(m.videos)
        assert [(r.video, r.mos) for r in s] == [(r.video, r.mos) for r in m]  # order and labels kept
        tests.append(frozenset(test))
    assert len(set(tests)) == 10  # all ten differ
    assert [r.split for r in m] == [None] * 100  # the input is not modified


def test_splits_follow_the_documented_scheme_and_are_reproducible():
    m = _labelled(7)
    splits = random_splits(m, seeds=3, test_fraction=0.3, seed=5)
    for i, s in enumerate(splits):
        perm = np.random.default_rng(5 + i).permutation(7)
        assert {r.video for r in s if r.split == "test"} == {sorted(m.videos)[p] for p in perm[:2]}  # floor(2.1+.5)=2
    again = random_splits(m, seeds=3, test_fraction=0.3, seed=5)
    assert [[r.split for r in s] for s in again] == [[r.split for r in s] for s in splits]
    other = random_splits(m, seeds=3, test_fraction=0.3, seed=6)
    assert [r.split for r in other[0]] == [r.split for r in splits[1]]  # split i uses seed + i


def test_split_does_not_depend_on_row_order():
    m = _labelled(30)
    shuffled = Manifest(list(reversed(m.rows)), m.columns)
    a = {r.video: r.split for r in random_splits(m, seeds=1)[0]}
    b = {r.video: r.split for r in random_splits(shuffled, seeds=1)[0]}
    assert a == b


def test_split_with_validation_set():
    s = random_splits(_labelled(50), seeds=1, test_fraction=0.2, val_fraction=0.1)[0]
    counts = {name: sum(r.split == name for r in s) for name in ("train", "val", "test")}
    assert counts == {"train": 35, "val": 5, "test": 10}


@pytest.mark.parametrize("kwargs,match", [
    ({"test_fraction": 0.0}, "0 < test_fraction"),
    ({"test_fraction": 0.8, "val_fraction": 0.2}, "test \\+ val < 1"),
    ({"seeds": 0}, "seeds must be at least 1"),
])
def test_split_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        random_splits(_labelled(10), **kwargs)


def test_split_refuses_too_small_and_duplicate_manifests():
    with pytest.raises(ValueError, match="2 videos cannot be split"):
        random_splits(_labelled(2), test_fraction=0.2)  # 0.4 rounds to 0 test videos
    dup = Manifest([ManifestRow("a.mp4", 1.0), ManifestRow("a.mp4", 2.0), ManifestRow("b.mp4", 3.0)])
    with pytest.raises(ValueError, match="duplicate videos \\(a.mp4\\)"):
        random_splits(dup, seeds=1, test_fraction=0.4)


def test_write_splits_files_refuse_and_replace(tmp_path):
    m = _labelled(10)
    paths = write_splits(random_splits(m, seeds=3), tmp_path / "splits")
    assert [p.name for p in paths] == ["split_00.csv", "split_01.csv", "split_02.csv"]
    back = read_manifest(paths[1])
    assert back.columns == ["video", "mos", "split"]
    assert [r.split for r in back] == [r.split for r in random_splits(m, seeds=3)[1]]
    with pytest.raises(FileExistsError, match="already holds 3 split files"):
        write_splits(random_splits(m, seeds=2), tmp_path / "splits")
    write_splits(random_splits(m, seeds=2, seed=9), tmp_path / "splits", overwrite=True)
    assert sorted(p.name for p in (tmp_path / "splits").iterdir()) == ["split_00.csv", "split_01.csv"]


# ---------------------------------------------------------------- check


def test_check_reports_every_problem_with_lines(tmp_path):
    root = tmp_path / "data"
    _touch(root, "v/a.mp4")
    _touch(root, "v/b.mp4")
    (root / "v/dir.mp4").mkdir()
    src = tmp_path / "M.csv"
    src.write_text(
        "video,mos,split\n"
        "v/a.mp4,1.0,train\n"       # 2 duplicate
        "v/b.mp4,,test\n"           # 3 missing MOS (others have one)
        "v/c.mp4,2.0,test\n"        # 4 missing file
        "v/a.mp4,x,train\n"         # 5 duplicate + bad MOS
        "v//d.mp4,1.0,test\n"       # 6 unsafe
        "v/dir.mp4,1.0,Train\n"     # 7 bad split + not a file
    )
    check = check_manifest(src, root)
    problems = check.problems
    assert (check.videos, check.present) == (4, 2)  # a, b of a, b, c, dir (v//d.mp4 is unsafe)
    assert check.presence_line() == f"2 of 4 videos present under {root}"
    assert [(p.line, p.video, p.kind) for p in problems] == [
        (2, "v/a.mp4", "duplicate"),
        (3, "v/b.mp4", "missing_mos"),
        (4, "v/c.mp4", "missing_file"),
        (5, "v/a.mp4", "bad_mos"),
        (5, "v/a.mp4", "duplicate"),
        (6, "v//d.mp4", "unsafe_path"),
        (7, "v/dir.mp4", "bad_split"),
        (7, "v/dir.mp4", "missing_file"),
    ]
    assert problems[0].message == "video 'v/a.mp4' appears 2 times (lines 2, 5)"
    assert problems[2].message == f"no such file under {root}"


def test_check_extraction_only_manifest_is_clean_unless_mos_required(tmp_path):
    src = tmp_path / "m.csv"
    src.write_text("video,mos\na.mp4,\nb.mp4,\n")
    assert check_manifest(src).problems == [] and check_manifest(src).presence_line() is None
    assert [(p.line, p.kind) for p in check_manifest(src, require_mos=True).problems] == [
        (2, "missing_mos"), (3, "missing_mos")]


def test_check_flags_raw_yuv_rows(tmp_path):
    src = tmp_path / "m.csv"
    src.write_text("video,mos\na.mp4,1\nLIVE/b.YUV,2\n")
    (tmp_path / "LIVE").mkdir()
    (tmp_path / "LIVE" / "b.YUV").write_bytes(b"\0" * 64)
    problems = check_manifest(src, tmp_path).problems
    assert [(p.line, p.video, p.kind) for p in problems] == [
        (2, "a.mp4", "missing_file"), (3, "LIVE/b.YUV", "raw_yuv")]
    assert problems[1].message.startswith("raw YUV has no container: PyAV cannot decode it without")


# ---------------------------------------------------------------- header names, as the importers match them


@pytest.mark.parametrize("header", ["Video,MOS", "VIDEO,Mos,Split", " video , mos ", "\ufeffVideo,MOS"])
def test_standard_header_names_match_case_insensitively(tmp_path, header):
    # Before: "Video,MOS" was refused with "header has no 'video' column (columns: Video, MOS)".
    src = tmp_path / "m.csv"
    split = ",Split" in header
    rows = ["a.mp4,1.5,train", "b.mp4,2,test"] if split else ["a.mp4,1.5", "b.mp4,2"]
    src.write_text("\n".join([header, *rows]) + "\n")
    manifest = read_manifest(src)
    assert [(r.video, r.mos, r.split) for r in manifest] == [
        ("a.mp4", 1.5, "train" if split else None), ("b.mp4", 2.0, "test" if split else None)]
    assert manifest.extra_columns == []
    write_manifest(manifest, tmp_path / "out.csv")
    assert (tmp_path / "out.csv").read_text().splitlines()[0] == ("video,mos,split" if split else "video,mos")


def test_other_column_names_keep_their_spelling(tmp_path):
    src = tmp_path / "m.csv"
    src.write_text("Video,Duration,MOS\na.mp4,8.0,1\n")
    manifest = read_manifest(src)
    assert manifest.columns == ["video", "Duration", "mos"] and manifest.rows[0].extra == {"Duration": "8.0"}


@pytest.mark.parametrize("text, expected", [
    ("Video,Video\na.mp4,b.mp4\n", "header repeats column(s) video (as 'Video', 'Video': video, mos and"),
    ("video,MOS,mos\na.mp4,1,2\n", "header repeats column(s) mos (as 'MOS', 'mos': video, mos and split"),
    ("file,score\na.mp4,1\n", "header has no 'video' column (columns: file, score); line 1 must be a"),
    ("a.mp4,1.5\nb.mp4,2\n", "header has no 'video' column (columns: a.mp4, 1.5); line 1 must be a header"),
])
def test_header_problems_say_what_is_expected(tmp_path, text, expected):
    src = tmp_path / "m.csv"
    src.write_text(text)
    with pytest.raises(ManifestError) as info:
        read_manifest(src)
    assert f"m.csv line 1: {expected}" in str(info.value) and str(src) in str(info.value)
    if "no 'video'" in expected:
        assert "e.g. 'video,mos'" in str(info.value) and "--format csv --video-col NAME" in str(info.value)


def test_manifest_check_agrees_on_header_names(tmp_path):
    root = tmp_path / "data"
    (root / "clips").mkdir(parents=True)
    (root / "clips" / "a.mp4").write_bytes(b"x")
    src = tmp_path / "m.csv"
    src.write_text("VIDEO,Mos\nclips/a.mp4,3.5\n")
    assert check_manifest(src, root).problems == []


# ---------------------------------------------------------------- livevqc given another file


@pytest.mark.parametrize("content, looks_like", [
    # scipy said "Unknown mat file type, version 111, 44"
    ("Video,MOS\nA001.mp4,80.2\n" * 10, "it looks like text; line 1 is 'Video,MOS'"),
    ("hello\n", "it looks like text; line 1 is 'hello'"),  # scipy: "appears to be truncated", a traceback
    ("", "it is empty"),
    (b"\x00\x01\x02\x03" * 40, "it is binary, starting with b'\\x00\\x01"),
])
def test_livevqc_on_a_file_that_is_not_mat_says_what_it_expected(tmp_path, content, looks_like):
    src = tmp_path / "data.mat"
    src.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(LabelFormatError) as info:
        import_labels("livevqc", src)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{src} cannot be read as a MATLAB .mat file ({looks_like}")
    assert "expects the official LIVE-VQC data.mat holding 'video_list' and 'mos'" in message


def test_livevqc_on_a_truncated_mat_file(tmp_path):
    names = np.empty((50, 1), dtype=object)
    names[:, 0] = [f"A{i:03d}.mp4" for i in range(50)]
    src = tmp_path / "data.mat"
    scipy.io.savemat(src, {"video_list": names, "mos": np.arange(50.0)[:, None]})
    whole = src.read_bytes()
    for size in (100, 133, len(whole) // 2):  # scipy: IndexError, OSError, MatReadError, ... (tracebacks)
        src.write_bytes(whole[:size])
        expected = r"it has a MATLAB header, but the rest cannot be read: .*; a truncated or damaged copy\?"
        with pytest.raises(LabelFormatError, match=expected):
            import_labels("livevqc", src)


def test_cli_livevqc_on_text_is_one_line_exit_2(tmp_path):
    from click.testing import CliRunner

    from clifvqa.cli import main

    src = tmp_path / "data.mat"
    src.write_text("hello\n")
    args = ["manifest", "import", "--format", "livevqc", str(src), "-o", str(tmp_path / "m.csv")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"error: {src} cannot be read as a MATLAB .mat file (it looks like text; line 1 is 'hello'); "
        "--format livevqc expects the official LIVE-VQC data.mat holding 'video_list' and 'mos' "
        "(for a text table of names and MOS use --format csv)"]


def test_manifests_doc_shows_the_header_error_as_it_is(tmp_path):
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "MANIFESTS.md").read_text()
    shown = next(line for line in doc.splitlines() if line.startswith("M.csv line 1: header has no"))
    src = tmp_path / "M.csv"
    src.write_text("file,score\na.mp4,1\n")
    with pytest.raises(ManifestError) as info:
        read_manifest(src)
    assert str(info.value).splitlines()[1] == shown
