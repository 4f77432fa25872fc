"""The ``clifvqa`` command line: thin click commands over library functions.

Every command parses its options, calls one documented library function, and prints what it
returned. Nothing here computes features, trains or reads stores by itself; library code never
imports this module. Heavy imports (torch, transformers) happen inside the commands so that
``clifvqa --help`` stays fast.
"""

from __future__ import annotations

import sys

import click

from clifvqa._version import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="clifvqa")
def main() -> None:
    """CLiF-VQA video quality assessment: extract CLIP semantic features once, train many times.

    \b
    Stage one   clifvqa extract DATASET_DIR        -> feature store (Zarr or HDF5)
    Stage two   clifvqa train --manifest M.csv ...  -> checkpoint
    Scoring     clifvqa evaluate / clifvqa predict
    Datasets    clifvqa manifest scan|import|split|check
    Stores      clifvqa store info|verify|merge|convert|rescore
    """


def fail(message: str, code: int = 2) -> None:
    """Print ``message`` to stderr as a clifvqa error and exit with ``code``."""
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(code)


# ---------------------------------------------------------------- manifest (manifests/)

from pathlib import Path  # noqa: E402 - kept inside this section so sections stay independent

from clifvqa.manifests.importers import FORMATS as _IMPORT_FORMATS  # noqa: E402 - light (csv only)
from clifvqa.manifests.io import SPLITS as _SPLITS  # noqa: E402


@main.group("manifest")
def manifest_group() -> None:
    """Dataset manifests (CSV: video, mos, split): scan a folder, import official labels, split, check."""


def _refuse_existing(path: Path, force: bool) -> None:
    if path.exists() and not force:
        fail(f"{path} already exists; use --force to replace it")


@manifest_group.command("scan")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Manifest CSV to write.")
@click.option("--probe", is_flag=True, help="Also open each video with PyAV; files without a video stream are skipped.")
@click.option("--force", is_flag=True, help="Replace an existing output file.")
def manifest_scan(directory: Path, output: Path, probe: bool, force: bool) -> None:
    """List the videos under DIRECTORY (recursively) into a manifest with empty MOS."""
    from clifvqa.manifests.io import Manifest, write_manifest
    from clifvqa.manifests.paths import scan_videos

    _refuse_existing(output, force)
    result = scan_videos(directory, probe=probe)
    for key, reason in result.unsafe:
        click.echo(f"skipped unsafe name {key!r}: {reason}", err=True)
    for key, reason in result.probe_failed:
        click.echo(f"skipped {key}: {reason}", err=True)
    if not result.videos:
        fail(f"no videos found under {directory}; nothing written")
    write_manifest(Manifest.from_videos(result.videos), output, overwrite=force)
    click.echo(
        f"wrote {len(result.videos)} videos to {output} (skipped: {result.skipped_hidden} hidden, "
        f"{result.skipped_non_video} non-video, {len(result.unsafe)} unsafe names)"
    )


@manifest_group.command("import")
@click.option("--format", "fmt", required=True, type=click.Choice(_IMPORT_FORMATS), help="Label file format.")
@click.argument("src", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Manifest CSV to write.")
@click.option("--prefix", default="", help="Folder prepended to every video name, e.g. KoNViD_1k_videos/.")
@click.option("--video-col", help="Column holding the video name (table formats).")
@click.option("--mos-col", help="Column holding the MOS (table formats).")
@click.option("--split", type=click.Choice(_SPLITS), help="Tag every row with this split (lsvq: only without an official split; default train).")
@click.option("--ext", help="Extension added to YouTube-UGC names (default .mkv).")
@click.option("--force", is_flag=True, help="Replace an existing output file.")
def manifest_import(fmt: str, src: Path, output: Path, prefix: str, video_col: str | None, mos_col: str | None,
                    split: str | None, ext: str | None, force: bool) -> None:
    """Convert the official label file SRC into a manifest; every skipped row is listed on stderr."""
    from clifvqa.manifests.importers import import_labels
    from clifvqa.manifests.io import write_manifest

    _refuse_existing(output, force)
    opts = {k: v for k, v in dict(video_col=video_col, mos_col=mos_col, split=split, ext=ext).items() if v is not None}
    try:
        result = import_labels(fmt, src, prefix, **opts)
    except ValueError as exc:
        fail(str(exc))
    for line, reason in result.skipped:
        click.echo(f"{src} {result.unit} {line}: skipped: {reason}", err=True)
    if not result.manifest.rows:
        fail(f"no usable rows in {src}; nothing written")
    write_manifest(result.manifest, output, overwrite=force)
    click.echo(f"wrote {len(result.manifest)} rows to {output} ({len(result.skipped)} skipped)")


@manifest_group.command("split")
@click.argument("manifest_path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--seeds", default=10, show_default=True, help="Number of random splits.")
@click.option("--test-fraction", default=0.2, show_default=True, help="Share of videos in test.")
@click.option("--val-fraction", default=0.0, show_default=True, help="Share of videos in val.")
@click.option("--seed", default=0, show_default=True, help="Split i uses numpy default_rng(seed + i).")
@click.option("-o", "--output-dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Folder for split_00.csv, ...")
@click.option("--force", is_flag=True, help="Replace existing split files in the folder.")
def manifest_split(manifest_path: Path, seeds: int, test_fraction: float, val_fraction: float, seed: int,
                   output_dir: Path, force: bool) -> None:
    """Write SEEDS random train/(val/)test splits of MANIFEST_PATH (the paper: 10 x 80/20)."""
    from clifvqa.manifests.io import read_manifest
    from clifvqa.manifests.split import random_splits, write_splits

    try:
        splits = random_splits(read_manifest(manifest_path), seeds, test_fraction, val_fraction, seed)
        paths = write_splits(splits, output_dir, overwrite=force)
    except (ValueError, FileExistsError) as exc:
        fail(str(exc) + ("; use --force to replace them" if isinstance(exc, FileExistsError) else ""))
    for path, split in zip(paths, splits):
        counts = {name: sum(row.split == name for row in split) for name in _SPLITS}
        click.echo(f"{path}: {counts['train']} train, {counts['val']} val, {counts['test']} test")


@manifest_group.command("check")
@click.argument("manifest_path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--root", type=click.Path(exists=True, file_okay=False, path_type=Path), help="Dataset folder: also check every video file exists.")
@click.option("--require-mos", is_flag=True, help="Flag empty MOS even when no row has one.")
def manifest_check(manifest_path: Path, root: Path | None, require_mos: bool) -> None:
    """Report every problem of MANIFEST_PATH as FILE:LINE: video: message; exit 0 only when clean."""
    from clifvqa.manifests.check import check_manifest

    try:
        problems = check_manifest(manifest_path, root, require_mos=require_mos)
    except ValueError as exc:
        fail(str(exc))
    for p in problems:
        click.echo(f"{manifest_path}:{p.line}: {p.video + ': ' if p.video else ''}{p.message}")
    if problems:
        click.echo(f"{manifest_path}: {len(problems)} problem{'s' if len(problems) != 1 else ''}", err=True)
        sys.exit(1)
    click.echo(f"{manifest_path}: no problems")


# ---------------------------------------------------------------- extract (extract/)


# ---------------------------------------------------------------- store (features/)


# ---------------------------------------------------------------- train / evaluate / predict / demo (train/)


if __name__ == "__main__":
    main()
