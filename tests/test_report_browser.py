"""`clifvqa report` pages loaded in a real browser (headless Chromium from the distribution).

The inputs are what the commands write, made through the real code path at a tiny size: a tiny
CLIP extracts 8 clips, ``train --tiny`` runs 2 epochs, ``evaluate`` scores every clip and ``predict
--explain`` one; the experiment folder's results.csv and tables.csv are written by the protocol's
writers over copies of that run. For each page kind Chromium loads the file four times: at
1280 px with a probe script (figure boxes, page height), as a 1280 px screenshot, in a 390 px wide
frame (page width) and plain (the DOM it built). Checked: the numbers shown equal the files', every
figure has non-blank pixels in its box on the screenshot, the document holds no http(s) URL, and at
390 px nothing scrolls sideways.

CI installs chromium when it is missing (.ci/run); these tests fail, not skip, without it.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from clifvqa.report import write_report
from clifvqa.train.metrics import format_metric

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BROWSER = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
PROBE = """<script>
addEventListener('load', () => {
  const box = e => { const r = e.getBoundingClientRect();
                     return [r.left + scrollX, r.top + scrollY, r.width, r.height]; };
  const out = {scrollWidth: document.documentElement.scrollWidth, clientWidth: document.documentElement.clientWidth,
               height: document.documentElement.scrollHeight,
               images: [...document.images].map(i => ({alt: i.alt, loaded: i.complete && i.naturalWidth > 0,
                                                        box: box(i)}))};
  const pre = document.createElement('pre'); pre.id = 'probe'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def chromium(tmp: Path, *args: str) -> str:
    """Run headless Chromium (no sandbox: CI runs as root; its own profile; scale factor 1)."""
    assert BROWSER, "chromium is not installed: apt-get install -y chromium (.ci/run does it)"
    cmd = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
           "--force-device-scale-factor=1", f"--user-data-dir={tmp / 'profile'}", "--virtual-time-budget=5000",
           *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


NARROW = """<!DOCTYPE html><html><body style="margin:0"><iframe id="f" style="width:{width}px;height:900px;border:0"
srcdoc="{page}"></iframe><script>
document.getElementById('f').addEventListener('load', e => {{
  const d = e.target.contentDocument.documentElement;
  const pre = document.createElement('pre'); pre.id = 'probe';
  pre.textContent = JSON.stringify({{scrollWidth: d.scrollWidth, clientWidth: d.clientWidth}});
  document.body.appendChild(pre);
}});
</script></body></html>"""


def _probe_json(dom: str) -> dict:
    import html

    start = dom.index('<pre id="probe">') + len('<pre id="probe">')
    return json.loads(html.unescape(dom[start:dom.index("</pre>", start)]))


def narrow(page: Path, tmp: Path, width: int = 390) -> dict:
    """The page's scroll and client width in a ``width`` px viewport: an iframe of that width
    (a headless window is at least 500 px wide), the page as its srcdoc (same origin, readable)."""
    import html

    wrapper = tmp / f"narrow-{width}.html"
    wrapper.write_text(NARROW.format(width=width, page=html.escape(page.read_text(encoding="utf-8"))), encoding="utf-8")
    return _probe_json(chromium(tmp, "--window-size=800,900", "--dump-dom", wrapper.as_uri()))


def probe(page: Path, tmp: Path, width: int) -> dict:
    """Layout facts of ``page`` at ``width`` px (the probe script's JSON from the dumped DOM)."""
    probed = tmp / f"probe-{width}.html"
    probed.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
    return _probe_json(chromium(tmp, f"--window-size={width},900", "--dump-dom", probed.as_uri()))


class Marked(HTMLParser):
    """The text of every element carrying one of ``attrs``: ``{(attr, value): text}``."""

    def __init__(self, attrs: tuple[str, ...]) -> None:
        super().__init__()
        self.attrs, self.found, self.open = attrs, {}, []

    def handle_starttag(self, tag, attrs):
        marks = [(k, v) for k, v in attrs if k in self.attrs]
        self.open.append((tag, marks, []))

    def handle_endtag(self, tag):
        while self.open:
            t, marks, text = self.open.pop()
            for mark in marks:
                self.found[mark] = "".join(text).strip()
            if self.open:
                self.open[-1][2].extend(text)
            if t == tag:
                break

    def handle_data(self, data):
        if self.open:
            self.open[-1][2].append(data)


def marked(text: str, *attrs: str) -> dict:
    parser = Marked(attrs)
    parser.feed(text)
    return parser.found


def check_in_browser(page: Path, tmp: Path) -> str:
    """Load ``page`` in Chromium as the module docstring says; returns the DOM Chromium built."""
    text = page.read_text(encoding="utf-8")
    assert "http://" not in text and "https://" not in text  # nothing to fetch, no link out
    assert "<script" not in text.lower()
    wide = probe(page, tmp, 1280)
    assert wide["images"], "no figure on the page"
    assert all(i["loaded"] for i in wide["images"]), [i["alt"] for i in wide["images"] if not i["loaded"]]
    assert all(i["alt"] for i in wide["images"])  # every figure says what it shows
    height = min(int(math.ceil(wide["height"])) + 10, 16000)
    shot = tmp / "shot.png"
    chromium(tmp, f"--window-size=1280,{height}", f"--screenshot={shot}", page.as_uri())
    from matplotlib.image import imread

    pixels = imread(shot)[..., :3]
    for image in wide["images"]:
        x, y, w, h = (int(round(v)) for v in image["box"])
        assert w > 20 and h > 20, image
        region = pixels[y:y + h, x:x + w]
        assert region.size and float(np.ptp(region)) > 0.2, f"blank figure: {image['alt']}"
    phone = narrow(page, tmp, 390)
    assert phone["scrollWidth"] <= phone["clientWidth"] == 390, phone
    return chromium(tmp, "--window-size=1280,900", "--dump-dom", page.as_uri())


@pytest.fixture(scope="module")
def outputs(tmp_path_factory, tiny_clip):
    """8 clips extracted with the tiny CLIP; a 2-epoch tiny run; its evaluation on every clip (with a
    group column in the manifest); predict --explain of one clip; an experiment folder over the run."""
    from clifvqa.extract.config import ExtractConfig
    from clifvqa.extract.runner import extract_dataset
    from clifvqa.predict import predict, write_predictions
    from clifvqa.protocol.results import Placement, ResultRow, write_placements, write_results
    from clifvqa.testing.videos import write_clip
    from clifvqa.train.config import RunConfig, set_options, tiny
    from clifvqa.train.evaluate import evaluate
    from clifvqa.train.trainer import run_training

    root = tmp_path_factory.mktemp("report")
    videos = root / "videos"
    lines = ["video,mos,split,res"]
    for i in range(8):
        write_clip(videos / f"v{i}.mp4", num_frames=16, width=128, height=128, seed=i % 4, blur=i % 3,
                   noise=4.0 * (i % 4))
        lines.append(f"v{i}.mp4,{1 + 0.5 * i + 0.2 * (i % 3)},{('train', 'train', 'val', 'test')[i % 4]},"
                     f"{'a' if i < 4 else 'b'}")
    manifest = root / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n")
    store = root / "features.zarr"
    config = ExtractConfig(clip_model=str(tiny_clip), grid=(2, 2), device="cpu", threads=1)
    assert extract_dataset(videos, store, manifest=manifest, config=config, progress=False).ok
    run = root / "run"
    train = set_options(tiny(RunConfig()), epochs=2, batch_size=4, workers=0, num_clips_test=1, warmup_epochs=0.5,
                        manifest=manifest, videos=videos, stores=[store])
    torch.manual_seed(0)
    run_training(train, run, progress=False)
    evaluation = root / "eval"
    evaluate(run / "best", manifest, videos, [store], evaluation, device="cpu")
    preds = predict([videos / "v5.mp4"], run / "best", stores=[store], device="cpu", explain=True)
    explained = write_predictions(preds, root / "predict" / "out.json", explain=True)[0]

    experiment = root / "experiment"
    rows, placements = [], []
    for k, split in enumerate(("split_00", "split_01", "split_02")):
        dest = experiment / "runs" / "finetune" / "base" / "synthb.all" / split / "train"
        dest.mkdir(parents=True)
        for name in ("metrics.jsonl", "result.json"):
            shutil.copyfile(run / name, dest / name)
        for column, srocc in (("LIVE-VQC", 0.5 + 0.1 * k), ("KoNViD-1k", 0.7 - 0.05 * k)):
            rows.append(ResultRow("finetune", "base", split, f"{column}.test", 5, srocc, srocc - 0.05, srocc - 0.04,
                                  srocc - 0.2, 0.6, 2))
    for column in ("LIVE-VQC", "KoNViD-1k"):
        placements.append(Placement("finetune", "base", f"{column}.test", "2", "CLiF-VQA", column))
    write_results(rows, experiment / "results.csv")
    write_placements(placements, experiment / "tables.csv")
    return SimpleNamespace(root=root, run=run, evaluation=evaluation, explained=explained, experiment=experiment,
                           preds=preds, rows=rows)


def test_evaluation_page(outputs, tmp_path):
    page = write_report(outputs.evaluation)
    assert page == outputs.evaluation / "report.html"
    dom = check_in_browser(page, tmp_path)
    metrics = json.loads((outputs.evaluation / "metrics.json").read_text())["metrics"]
    shown = marked(dom.split('id="metrics-table"')[1].split("</table>")[0], "data-metric")
    for key in ("srocc", "plcc", "krocc", "rmse", "plcc_fit"):
        assert shown[("data-metric", key)] == format_metric(metrics[key])
    with open(outputs.evaluation / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    worst = max(rows, key=lambda r: abs(float(r["fitted_prediction"]) - float(r["mos"])))
    assert f'data-video="{worst["video"]}"' in dom.split('id="worst"')[1]  # the worst video's card is there
    assert "middle frame of" in dom and "by res" in dom  # thumbnails, and the manifest's group column


def test_run_page(outputs, tmp_path):
    dom = check_in_browser(write_report(outputs.run, tmp_path / "run.html"), tmp_path)
    result = json.loads((outputs.run / "result.json").read_text())
    assert list(marked(dom, "data-selected-epoch")) == [("data-selected-epoch", str(result["best_epoch"]))]
    assert result["selection"]["reason"] in dom
    shown = marked(dom, "data-metric")
    for key in ("srocc", "plcc", "rmse"):
        assert shown[("data-metric", f"test_{key}")] == format_metric(result["test"][key])
    assert "<details><summary>run config (run.yaml)</summary>" in dom


def test_video_page(outputs, tmp_path):
    dom = check_in_browser(write_report(outputs.explained), tmp_path)
    (pred,) = outputs.preds
    assert marked(dom, "data-score")[("data-score", "0")] == f"{pred.score:.3f}"
    for what in ("over the training MOS distribution", "Per-frame CLIP score", "Crop map of the prompt",
                 "Fragment mosaic"):
        assert what in dom


def test_experiment_page(outputs, tmp_path):
    dom = check_in_browser(write_report(outputs.experiment), tmp_path)
    cells = marked(dom, "data-cell", "data-paper", "data-delta")
    reference = {("LIVE-VQC", "srocc"): 0.864, ("KoNViD-1k", "plcc"): 0.903}  # experiments/paper-reference.csv
    for (column, metric), paper in reference.items():
        values = [getattr(r, metric) for r in outputs.rows if r.test_set == f"{column}.test"]
        key = f"2|CLiF-VQA|{column}|{metric}"
        assert cells[("data-cell", key)].startswith(f"{np.mean(values):.3f} ± {np.std(values):.3f} (3)")
        assert cells[("data-paper", key)] == f"{paper:.3f}"
        assert cells[("data-delta", key)] == f"{np.mean(values) - paper:+.3f}"
    assert dom.count('href="#run-finetune-base-synthb-all-split_0') == 0  # anchors are alphanumeric + '-'
    assert dom.count('href="#run-finetune-base-synthb-all-split-00"') == 4  # 2 columns x 2 metrics link run 1


def test_demo_folder_is_its_evaluation_then_its_run(outputs, tmp_path):
    demo = tmp_path / "demo-run"
    shutil.copytree(outputs.evaluation, demo / "eval")
    shutil.copytree(outputs.run, demo / "run")
    text = write_report(demo).read_text()
    assert text.index('id="scatter"') < text.index('id="split-run"') < text.index('id="run-config"')


def test_the_cli_writes_the_page(outputs, tmp_path):
    from click.testing import CliRunner

    from clifvqa.cli import main

    res = CliRunner().invoke(main, ["report", str(outputs.run), "-o", str(tmp_path / "r.html")])
    assert res.exit_code == 0, res.output
    assert res.output.strip() == f"report: {tmp_path / 'r.html'}"
    assert (tmp_path / "r.html").read_text().startswith("<!DOCTYPE html>")
    res = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert res.exit_code == 2 and "nothing to report" in res.stderr

