"""The ``clifvqa`` command line: thin click commands over library functions.

Every command parses its options, calls one documented library function, and prints what it
returned. Nothing here computes features, trains or reads stores by itself; library code never
imports this module. Heavy imports (torch, transformers) happen inside the commands so that
``clifvqa --help`` stays fast.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Any, NoReturn

import click

from clifvqa._version import __version__
from clifvqa.cli_options import (
    BATCH_CROPS,
    GRID,
    SHARD,
    SettingsCommand,
    device_option,
    force_option,
    out_option,
    quiet_option,
    renamed_option,
    store_option,
    videos_option,
)
from clifvqa.errors import MAX_LISTED, ClifvqaError
from clifvqa.manifests.importers import FORMATS as _IMPORT_FORMATS  # light: csv only
from clifvqa.manifests.io import SPLITS as _SPLITS


def is_user_error(exc: BaseException) -> bool:
    """Whether ``exc`` means "the input or the machine is not as the command needs" rather than
    a bug: a :class:`~clifvqa.errors.ClifvqaError` (every clifvqa error raised for bad input,
    files or settings), an OSError (a missing, existing or unreadable file), or an ImportError
    (an optional backend such as s3fs is not installed).

    A plain ValueError counts too, as a fallback: third-party readers (numpy, zarr, h5py, json,
    torch) raise it for a malformed file the user passed, and some library validators of
    arguments a notebook passes still raise it. tests/test_errors.py checks that the CLI's own
    input paths raise ClifvqaError, so the fallback is for what clifvqa does not word itself."""
    if isinstance(exc, (ClifvqaError, OSError, ImportError)):
        return True
    return isinstance(exc, ValueError)  # the fallback above


def error_line(exc: BaseException) -> str:
    """``exc`` as one line: an OSError as ``FILE: reason``, line breaks joined with ``; ``."""
    named = isinstance(exc, OSError) and exc.strerror and exc.filename
    text = f"{exc.filename}: {exc.strerror}" if isinstance(exc, OSError) and named else str(exc)
    return "; ".join(line.strip() for line in text.splitlines() if line.strip()) or type(exc).__name__


def usage_error_line(exc: click.UsageError) -> str:
    """A click usage error (bad value, unknown option, missing argument) as the one line after
    ``error:``, e.g. ``Invalid value for '--grid': ... (see: clifvqa extract --help)``."""
    hint = f" (see: {exc.ctx.command_path} --help)" if exc.ctx is not None else ""
    return " ".join(line.strip() for line in exc.format_message().splitlines() if line.strip()) + hint


# click >= 8.2 raises this for a group called without a command; it prints the help, as it should.
_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


class _ClifvqaGroup(click.Group):
    """The ``clifvqa`` group, and the one place errors are handled: a user error raised by any
    command (see :func:`is_user_error`) ends as one ``error: ...`` line on stderr and exit
    status 2, and so does a usage error of click (see :func:`usage_error_line`; click's own
    form is a usage line, a "Try --help" line and the error); a run stopped by SIGINT/SIGTERM
    says what it wrote and exits 130/143. Anything else is a bug and keeps its traceback.
    ``--debug`` (or ``CLIFVQA_DEBUG=1``) prints the traceback of user errors too."""

    def make_context(self, info_name: str | None, args: list[str], parent: click.Context | None = None,
                     **extra: Any) -> click.Context:
        try:  # the group's own options (`clifvqa --bogus`); a command's are parsed inside invoke
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as exc:
            if isinstance(exc, _NO_ARGS_IS_HELP):
                raise
            fail(usage_error_line(exc), exc.exit_code)

    def invoke(self, ctx: click.Context) -> object:
        # Library warnings (e.g. --allow-stale's) as one "warning: ..." line, not file:line + source.
        warnings.formatwarning = lambda message, *args, **kwargs: f"warning: {message}\n"
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            if isinstance(exc, _NO_ARGS_IS_HELP):
                raise
            fail(usage_error_line(exc), exc.exit_code)
        except BrokenPipeError:  # `clifvqa store info S | head`: the reader left, nothing to say
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(141)  # 128 + SIGPIPE, what a killed writer of a pipe reports
        except KeyboardInterrupt as exc:
            from clifvqa.extract.runner import RunInterrupted

            if not isinstance(exc, RunInterrupted):
                raise
            fail(str(exc), exc.exit_code)  # SIGINT/SIGTERM: what was done, and 130/143
        except Exception as exc:
            if not is_user_error(exc):
                raise
            if ctx.params.get("debug"):
                import traceback

                traceback.print_exc()
            fail(error_line(exc))


@click.group("clifvqa", cls=_ClifvqaGroup,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="clifvqa")
@click.option("--debug", is_flag=True, envvar="CLIFVQA_DEBUG",
              help="Also print the traceback of errors (or set CLIFVQA_DEBUG=1).")
def main(debug: bool) -> None:
    """CLiF-VQA video quality assessment: extract CLIP semantic features once, train many times.

    \b
    Stage one   clifvqa extract DATASET_DIR        -> feature store (Zarr or HDF5)
    Stage two   clifvqa train --manifest M.csv ...  -> checkpoint
    Scoring     clifvqa evaluate / clifvqa predict
    Datasets    clifvqa manifest scan|import|split|check
    Stores      clifvqa store info|verify|merge|convert|rescore|finalize|upgrade|push|pull
    """


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``message`` to stderr as a clifvqa error and exit with ``code``."""
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(code)


# ---------------------------------------------------------------- manifest (manifests/)


@main.group("manifest")
def manifest_group() -> None:
    """Dataset manifests (CSV: video, mos, split): scan a folder, import official labels, split, check."""


def _refuse_existing(path: Path, force: bool) -> None:
    if path.exists() and not force:
        fail(f"{path} already exists; use --force to replace it")


@manifest_group.command("scan")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@out_option("Manifest CSV to write.", type=click.Path(dir_okay=False, path_type=Path), old=["--output"])
@click.option("--probe", is_flag=True, help="Also open each video with PyAV; files without a video stream are skipped.")
@force_option()
def manifest_scan(directory: Path, out: Path, probe: bool, force: bool) -> None:
    """List the videos under DIRECTORY (recursively) into a manifest with empty MOS."""
    from clifvqa.manifests.io import Manifest, write_manifest
    from clifvqa.manifests.paths import scan_videos

    _refuse_existing(out, force)
    result = scan_videos(directory, probe=probe)
    for key, reason in result.unsafe:
        click.echo(f"skipped unsafe name {key!r}: {reason}", err=True)
    for key, reason in result.probe_failed:
        click.echo(f"skipped {key}: {reason}", err=True)
    if not result.videos:
        fail(f"no videos found under {directory}; nothing written")
    write_manifest(Manifest.from_videos(result.videos), out, overwrite=force)
    click.echo(
        f"wrote {len(result.videos)} videos to {out} (skipped: {result.skipped_hidden} hidden, "
        f"{result.skipped_non_video} non-video, {len(result.unsafe)} unsafe names)"
    )


@manifest_group.command("import")
@click.option("--format", "fmt", required=True, type=click.Choice(_IMPORT_FORMATS), help="Label file format.")
@click.argument("src", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@out_option("Manifest CSV to write.", type=click.Path(dir_okay=False, path_type=Path), old=["--output"])
@click.option("--prefix", default="", help="Folder prepended to every video name, e.g. KoNViD_1k_videos/.")
@click.option("--video-col", help="Column holding the video name (table formats).")
@click.option("--mos-col", help="Column holding the MOS (table formats).")
@click.option("--split", type=click.Choice(_SPLITS),
              help="Tag every row with this split (lsvq: only without an official split; default train).")
@click.option("--ext", help="Extension added to YouTube-UGC names (default .mkv).")
@force_option()
@click.option("--allow-skipped", is_flag=True, help="Exit 0 even when rows of SRC were skipped.")
def manifest_import(fmt: str, src: Path, out: Path, prefix: str, video_col: str | None, mos_col: str | None,
                    split: str | None, ext: str | None, force: bool, allow_skipped: bool) -> None:
    """Convert the official label file SRC into a manifest.

    Rows that cannot be imported are skipped; the first few are listed on stderr with the
    count. The manifest of the other rows is written either way; the exit code is 1 when
    rows were skipped, unless --allow-skipped.
    """
    from clifvqa.manifests.importers import import_labels
    from clifvqa.manifests.io import write_manifest

    _refuse_existing(out, force)
    opts = {k: v for k, v in dict(video_col=video_col, mos_col=mos_col, split=split, ext=ext).items() if v is not None}
    result = import_labels(fmt, src, prefix, **opts)
    skipped = result.skipped
    _echo_listed([f"{src} {result.unit} {line}: skipped: {reason}" for line, reason in skipped],
                 f"skipped {result.unit}s")
    if not result.manifest.rows:
        fail(f"no usable rows in {src}; nothing written")
    write_manifest(result.manifest, out, overwrite=force)
    click.echo(f"wrote {len(result.manifest)} rows to {out} ({len(skipped)} skipped)")
    if skipped and not allow_skipped:
        click.echo(f"{src}: {len(skipped)} skipped, {len(result.manifest)} imported; pass --allow-skipped "
                   "to accept the skipped ones (exit 0)", err=True)
        sys.exit(1)


@manifest_group.command("split")
@click.argument("manifest_path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--seeds", default=10, show_default=True, help="Number of random splits.")
@click.option("--test-fraction", default=0.2, show_default=True, help="Share of videos in test.")
@click.option("--val-fraction", default=0.0, show_default=True, help="Share of videos in val.")
@click.option("--seed", default=0, show_default=True, help="Split i uses numpy default_rng(seed + i).")
@out_option("Folder for split_00.csv, ...", type=click.Path(file_okay=False, path_type=Path), old=["--output-dir"])
@force_option()
def manifest_split(manifest_path: Path, seeds: int, test_fraction: float, val_fraction: float, seed: int,
                   out: Path, force: bool) -> None:
    """Write SEEDS random train/(val/)test splits of MANIFEST_PATH (the paper: 10 x 80/20)."""
    from clifvqa.manifests.io import read_manifest
    from clifvqa.manifests.split import random_splits, write_splits

    splits = random_splits(read_manifest(manifest_path), seeds, test_fraction, val_fraction, seed)
    paths = write_splits(splits, out, overwrite=force)
    for path, split in zip(paths, splits):
        counts = {name: sum(row.split == name for row in split) for name in _SPLITS}
        click.echo(f"{path}: {counts['train']} train, {counts['val']} val, {counts['test']} test")


@manifest_group.command("check")
@click.argument("manifest_path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--root", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Dataset folder: also check every video file exists.")
@click.option("--require-mos", is_flag=True, help="Flag empty MOS even when no row has one.")
def manifest_check(manifest_path: Path, root: Path | None, require_mos: bool) -> None:
    """Report every problem of MANIFEST_PATH as FILE:LINE: video: message; exit 0 only when clean.

    With --root the last line also says how many videos are present (k of n). Raw .yuv rows
    are flagged: they have no container, so extraction could not decode them.
    """
    from clifvqa.manifests.check import check_manifest

    check = check_manifest(manifest_path, root, require_mos=require_mos)
    presence = check.presence_line()
    for p in check.problems:
        click.echo(f"{manifest_path}:{p.line}: {p.video + ': ' if p.video else ''}{p.message}")
    if check.problems:
        count = len(check.problems)
        click.echo(f"{manifest_path}: {count} problem{'s' if count != 1 else ''}"
                   + (f"; {presence}" if presence else ""), err=True)
        sys.exit(1)
    click.echo(f"{manifest_path}: no problems" + (f" ({presence})" if presence else ""))


# ---------------------------------------------------------------- extract (extract/)


@main.command("extract")
@click.argument("dataset_dir", type=click.Path(path_type=Path))
@click.option("--manifest", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Manifest CSV listing the videos (default: scan DATASET_DIR).")
@out_option("Feature store to write (an existing one is resumed): a .zarr directory or a .h5/.hdf5 file.",
            required=False, default="features.zarr", show_default=True, old=["--store"])
@click.option("--clip-model", default="openai/clip-vit-base-patch32", show_default=True,
              help="CLIP hub id or local folder (save_pretrained layout).")
@click.option("--grid", type=GRID, default="3x3", show_default=True, metavar="ROWSxCOLS",
              help="Crop grid ROWSxCOLS (paper: 3x3). Time grows with ROWS*COLS (a warning above 100 crops per frame "
                   "gives the cost); memory stays bounded by --batch-crops. A video is refused when a side exceeds "
                   "both 3 and its frames' distinct crop positions (README, 'Crop grid, cost and memory').")
@click.option("--prompts", "prompts_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Prompt file: JSON, or text lines like 'objective: sharp' (README, 'Prompt files'); "
                   "default: the 22 built-in prompts.")
@click.option("--softmax", type=click.Choice(["all", "group"]), default="all", show_default=True,
              help="Softmax over all prompts, or per group (objective / subjective).")
@click.option("--frame-stride", type=click.IntRange(min=1), default=1, show_default=True, help="Keep every s-th frame.")
@device_option()
@renamed_option("--batch-crops", old=["--batch-size"], type=BATCH_CROPS, default="auto", show_default=True,
                metavar="N|auto", help="Crops per CLIP forward pass, or auto.")
@renamed_option("--threads", old=["--workers"], type=click.IntRange(min=1), default=None,
                help="Decoding threads [default: usable cores - 1, at least 1, at most 8].")
@click.option("--dtype", type=click.Choice(["auto", "float32", "float16", "bfloat16"]), default="auto",
              show_default=True,
              help="Compute dtype (auto: float16 on GPU, float32 on CPU; an existing store continues in its own).")
@click.option("--save-maps/--no-save-maps", default=True, show_default=True,
              help="Also store the per-crop maps [T, r, m, n].")
@click.option("--save-embeddings", is_flag=True, help="Also store the crop image embeddings [T, m*n, D] (float16).")
@click.option("--retry-failed", is_flag=True, help="Retry videos the store lists as failed.")
@click.option("--check-sources", is_flag=True,
              help="Hash every video already in the store and check its stored features; extract changed "
                   "files and corrupt entries again (default: only files whose size or modification time changed).")
@click.option("--allow-missing", is_flag=True,
              help="Extract the present videos when some are missing (else refused before any work).")
@click.option("--shard", type=SHARD, default="0/1", show_default=True, metavar="K/N",
              help="Process shard K of N (K counts from 0), split by a hash of the video key.")
@quiet_option()
def extract_cmd(dataset_dir: Path, manifest: Path | None, out: str, clip_model: str, grid: tuple[int, int],
                prompts_file: Path | None, softmax: str, frame_stride: int, device: str, batch_crops: int | str,
                threads: int | None, dtype: str, save_maps: bool, save_embeddings: bool, retry_failed: bool,
                check_sources: bool, allow_missing: bool, shard: tuple[int, int], quiet: bool) -> None:
    """Stage one: score every frame's crop grid with CLIP and write the features to a store.

    Resumable (complete videos are skipped; one whose file changed since it was extracted is
    extracted again), shardable (--shard K/N on several machines or
    processes), and failures are recorded in the store. Before loading CLIP, a pre-flight
    checks that the videos exist: one missing file refuses the run (exit 2) unless
    --allow-missing; missing files are never recorded as failures, so a rerun picks them up.
    Exit code 0 when every video of the shard is in the store, 1 when some failed or were
    missing, 2 on a usage error.
    """
    from clifvqa._device import default_workers
    from clifvqa.extract.config import ExtractConfig
    from clifvqa.extract.runner import extract_dataset

    config = ExtractConfig(
        clip_model=clip_model,
        grid=grid,
        prompts_file=str(prompts_file) if prompts_file else None,
        softmax=softmax,  # type: ignore[arg-type]  # a click.Choice of the Literal's values
        frame_stride=frame_stride,
        device=device,
        batch_crops=batch_crops,  # type: ignore[arg-type]  # BatchSizeType: 'auto' or an int
        threads=threads or default_workers("threads"),
        dtype=dtype,  # type: ignore[arg-type]  # a click.Choice of the Literal's values
        save_maps=save_maps,
        save_embeddings=save_embeddings,
        retry_failed=retry_failed,
        check_sources=check_sources,
        allow_missing=allow_missing,
        shard=shard,
    )
    def log(line: str) -> None:
        if not quiet:
            click.echo(line, err=True)

    summary = extract_dataset(dataset_dir, out, manifest=manifest, config=config, progress=not quiet, log=log)
    if summary.total == 0:
        click.echo(f"warning: no videos to extract{' in this shard' if shard != (0, 1) else ''}", err=True)
    _echo_failures(summary.failures, out)
    click.echo(summary.line())
    if not summary.ok:
        sys.exit(1)


def _echo_listed(lines: list[str], what: str, hint: str = "") -> None:
    """The first :data:`MAX_LISTED` of ``lines`` on stderr, then how many more ``what`` there are."""
    for line in lines[:MAX_LISTED]:
        click.echo(line, err=True)
    if len(lines) > MAX_LISTED:
        click.echo(f"... and {len(lines) - MAX_LISTED} more {what}{hint}", err=True)


def _echo_failures(failures: list[tuple[str, str]], store_path: str) -> None:
    _echo_listed([f"failed: {key}: {error}" for key, error in failures], "failures",
                 f" (clifvqa store info {store_path} --failures lists them all)")


# ---------------------------------------------------------------- store (features/)


@main.group("store")
def store() -> None:
    """Feature stores: inspect, verify, merge, convert, rescore, push and pull (.zarr, .h5/.hdf5, .zarr.zip, URLs)."""


@store.command("info")
@click.argument("path")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--failures", "all_failures", is_flag=True,
              help="List every failed video, not only the reasons.")
@click.option("--recount", is_flag=True,
              help="Count by listing every entry instead of reading the summary the last finalize wrote, and "
                   "compare the two.")
def store_info_cmd(path: str, as_json: bool, all_failures: bool, recount: bool) -> None:
    """Show how the store at PATH (or URL) was made, what it holds and why videos failed
    (grouped by reason with a few examples; --failures lists every one). When it lists the
    store (--recount, or no current summary) it also shows what every reader ignores there."""
    import json

    from clifvqa.features.info import store_info

    info = store_info(path, recount=recount)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    fmt = info["backend"] + (f" v{info['zarr_format']}" if info["zarr_format"] else "")
    counts = info["counts"]
    size = "unknown (remote)" if info["size_bytes"] is None else f"{info['size_bytes'] / 2**20:.2f} MiB"
    click.echo(f"store         {info['path']}  ({fmt}, clifvqa format {info['format']})")
    fingerprint_ok = "ok" if info["fingerprint_ok"] else "DOES NOT MATCH the provenance"
    click.echo(f"fingerprint   {info['fingerprint']}  ({fingerprint_ok})")
    click.echo(f"videos        {counts['complete']} complete, {counts['incomplete']} incomplete, "
               f"{counts['failed']} failed")
    click.echo(f"frames        {info['total_frames']}")
    click.echo(f"size          {size}")
    if info["consolidated"] is not None:
        click.echo(f"consolidated  {info['consolidated']}")
    if info["pending"] is not None:
        click.echo(f"pending       {info['pending']}")
    if info["mismatch"]:
        click.echo(f"mismatch      {info['mismatch']}")
    if info["ignored"]:
        from clifvqa.features.store import describe_ignored

        click.echo(f"ignored       {describe_ignored(info['ignored'])}")
    click.echo("provenance")
    click.echo("  " + json.dumps(info["provenance"], indent=2, sort_keys=True).replace("\n", "\n  "))
    if all_failures and info["failures"]:
        click.echo("failures")
        for rec in info["failures"]:
            click.echo(f"  {rec['key']}: {rec['error']}  (source {rec['source']}, {rec['time']})")
    elif info["failures"]:
        click.echo(f"failures      {counts['failed']} videos, by reason (--failures lists every one)")
        width = len(str(info["failure_reasons"][0]["count"]))
        for group in info["failure_reasons"]:
            more = group["count"] - len(group["examples"])
            examples = ", ".join(group["examples"]) + (f" and {more} more" if more else "")
            click.echo(f"  {group['count']:>{width}}  {group['reason']}  (e.g. {examples})")


@store.command("verify")
@click.argument("path")
@click.option("--manifest", type=click.Path(exists=True, dir_okay=False),
              help="Also report manifest videos missing from the store.")
@videos_option(required=False)
@quiet_option()
def store_verify_cmd(path: str, manifest: str | None, videos: str | None, quiet: bool) -> None:
    """Check every video of the store at PATH: hashes, shapes, values, maps vs pooled.

    With --videos also report stale entries: files missing or changed since extraction (every
    file is hashed). Prints each problem as KEY: message. Exit code 0 when clean, 1 with problems, 2 when the
    store cannot be opened.
    """
    from clifvqa.features.verify import verify_store

    problems = verify_store(path, manifest, videos, progress=not quiet)
    for problem in problems:
        click.echo(str(problem))
    if problems:
        click.echo(f"{path}: {len(problems)} problem{'s' if len(problems) != 1 else ''}", err=True)
        sys.exit(1)
    click.echo(f"{path}: no problems")


@store.command("upgrade")
@click.argument("path", type=click.Path(exists=True))
def store_upgrade_cmd(path: str) -> None:
    """Rewrite the root of the format-1 store at PATH as format 2, in place.

    Only the root's fingerprint (format 2 leaves the model name out) and format number change;
    video arrays and attributes are never touched. Format-1 stores are also read as they are.
    """
    from clifvqa.features.store import upgrade_store

    changed = upgrade_store(path)
    click.echo(f"{path}: {'upgraded to' if changed else 'already'} clifvqa_format 2")


@store.command("merge")
@click.argument("sources", nargs=-1, required=True)
@out_option("New store to write (.zarr, .h5/.hdf5 or .zarr.zip).", old=["--output"])
@click.option("--prefer", type=click.Choice(["first", "last"]),
              help="For videos whose features differ between sources, take the first/last source's copy.")
@click.option("--allow-partial", is_flag=True,
              help="Write the videos it can read when a source holds things that are not videos or has lost "
                   "videos its summary counts; the output's provenance records what was left out.")
@quiet_option()
def store_merge_cmd(sources: tuple[str, ...], out: str, prefer: str | None, allow_partial: bool, quiet: bool) -> None:
    """Merge SOURCES (e.g. shard stores) into a new store; all must share one fingerprint."""
    from clifvqa.features.merge import merge_stores

    report = merge_stores(list(sources), out, prefer=prefer, allow_partial=allow_partial, progress=not quiet)
    click.echo(report.summary())


@store.command("convert")
@click.argument("src")
@out_option("New store to write (.zarr, .h5/.hdf5 or .zarr.zip).", old_positional="DST")
@click.option("--zarr-format", type=click.Choice(["2", "3"]), default="3", show_default=True,
              help="Zarr format of a .zarr/.zarr.zip output (2: readable by zarr 2.x).")
@click.option("--allow-partial", is_flag=True,
              help="Write the videos it can read when a source holds things that are not videos or has lost "
                   "videos its summary counts; the output's provenance records what was left out.")
@quiet_option()
def store_convert_cmd(src: str, out: str, zarr_format: str, allow_partial: bool, quiet: bool) -> None:
    """Copy the store SRC into a new store (.zarr, .h5/.hdf5, .zarr.zip), bit-exact."""
    from clifvqa.features.merge import convert_store

    report = convert_store(src, out, zarr_format=int(zarr_format), allow_partial=allow_partial, progress=not quiet)
    click.echo(report.summary())


@store.command("finalize")
@click.argument("path")
def store_finalize_cmd(path: str) -> None:
    """Finish the local store at PATH: Zarr, refresh its consolidated metadata (after shard runs
    that wrote one shared store finished at the same moment, or when verify reports it stale);
    HDF5, fold in the changes a killed run logged in PATH.spool/."""
    from clifvqa.features.store import finalize_store

    finalize_store(path)
    click.echo(f"{path}: finalized")


@store.command("push")
@click.argument("path", type=click.Path(exists=True))
@click.argument("url")
@click.option("--staging", type=click.Path(file_okay=False),
              help="Folder the shards are built in (default: PATH.publish next to the store; kept, so that a "
                   "stopped push resumes with the same files).")
@click.option("--max-videos", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Videos per shard file.")
@click.option("--max-gib", type=click.FloatRange(min=0.001), default=2.0, show_default=True,
              help="Decoded array bytes per shard file, in GiB (the file is smaller: zstd).")
@click.option("--license", "license_", default="other", show_default=True,
              help="The card's licence identifier (e.g. cc-by-4.0; 'other' with --license-terms).")
@click.option("--source-dataset", "source_datasets", multiple=True,
              help="A source dataset the card names (repeatable), e.g. KoNViD-1k.")
@click.option("--license-terms", help="The source dataset's licence terms to respect, for the card.")
@click.option("--title", help="The card's title.")
@click.option("--replace", is_flag=True,
              help="Replace features of another fingerprint published at URL (refused without it), and "
                   "remove the shard files the new index no longer references.")
@quiet_option()
def store_push_cmd(path: str, url: str, staging: str | None, max_videos: int, max_gib: float, license_: str,
                   source_datasets: tuple[str, ...], license_terms: str | None, title: str | None,
                   replace: bool, quiet: bool) -> None:
    """Publish the store at PATH to URL (a folder, s3://BUCKET/PREFIX, gs://..., hf://datasets/ORG/NAME):
    shard files of at most --max-videos videos, index.json and a README.md card.

    Resumable: a rerun uploads only what is missing or differs. A URL that holds another
    fingerprint's publication is refused unless --replace. Credentials by the usual means
    (AWS_* and AWS_ENDPOINT_URL; HF_TOKEN or huggingface-cli login); never printed or recorded.
    """
    from clifvqa.features.publish import push_store

    report = push_store(path, url, staging=staging, max_videos=max_videos, max_bytes=int(max_gib * 2**30),
                        license=license_, source_datasets=source_datasets, license_terms=license_terms,
                        title=title, progress=not quiet, replace=replace)
    click.echo(report.summary())


@store.command("pull")
@click.argument("url")
@click.argument("dest")
@click.option("--manifest", type=click.Path(exists=True, dir_okay=False),
              help="Fetch only this manifest's videos.")
@quiet_option()
def store_pull_cmd(url: str, dest: str, manifest: str | None, quiet: bool) -> None:
    """Fetch the store published at URL (by store push) into the local store DEST (.zarr or .h5),
    verifying every video on arrival (shard sha256, pooled_sha256, fingerprint, bounded reads).

    Resumable: videos already in DEST are not fetched again; DEST must have the same fingerprint.
    """
    from clifvqa.features.publish import pull_store

    report = pull_store(url, dest, manifest, progress=not quiet)
    click.echo(report.summary())


@store.command("rescore")
@click.argument("src")
@click.option("--prompts", "prompts_file", required=True, type=click.Path(exists=True, dir_okay=False),
              help="The new prompt file: JSON, or text lines like 'objective: sharp' (README, 'Prompt files').")
@click.option("--softmax", type=click.Choice(["all", "group"]), default="all", show_default=True,
              help="Softmax over all prompts, or per group.")
@out_option("Store to write (.zarr or .h5/.hdf5); an existing one with the same settings is resumed.", old=["--output"])
@click.option("--clip-model", default=None,
              help="Where to load SRC's CLIP model from [default: its recorded clip.model]; the weights must be the "
                   "same.")
@device_option()
@click.option("--save-maps/--no-save-maps", default=True, show_default=True,
              help="Also store the per-crop maps [T, r, m, n].")
@click.option("--copy-embeddings/--no-copy-embeddings", default=True, show_default=True,
              help="Copy the embeddings too, so the output can be rescored in turn.")
@quiet_option()
def store_rescore_cmd(src: str, prompts_file: str, softmax: str, out: str, clip_model: str | None, device: str,
                      save_maps: bool, copy_embeddings: bool, quiet: bool) -> None:
    """Score the crop embeddings saved in SRC (extract --save-embeddings) with new prompts.

    Only CLIP's text tower runs: no decoding, no image tower. The output has the fingerprint
    and (within float16 rounding) the features of a fresh extraction with these prompts.
    Exit code 0 when every SRC video was rescored, 1 when some lack embeddings, 2 on errors.
    """
    from clifvqa.extract.rescore import rescore_store

    # softmax: a click.Choice of the Literal's values
    summary = rescore_store(src, out, prompts_file, softmax=softmax, clip_model=clip_model,  # type: ignore[arg-type]
                            device=device, save_maps=save_maps, copy_embeddings=copy_embeddings, progress=not quiet)
    _echo_failures(summary.failures, out)
    click.echo(summary.line())
    if not summary.ok:
        sys.exit(1)


# ---------------------------------------------------------------- train / evaluate / predict / demo (train/)


def report_option(help_text: str):
    """A plain --report flag (off by default): write report.html beside the command's output."""
    return click.option("--report", is_flag=True, help=help_text)


def _report(path: str | Path, out: str | Path | None = None) -> None:
    from clifvqa.report import write_report

    click.echo(f"report: {write_report(path, out)}")


@main.command("train", cls=SettingsCommand, settings="clifvqa.train.config:option_settings")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Run config YAML (e.g. configs/clifvqa-b.yaml); every option below overrides it "
                   "[default: the paper's settings, configs/clifvqa-b.yaml].")
@click.option("--print-config", is_flag=True, help="Print the resolved run config as YAML and exit.")
@out_option("Run folder (refused when it holds a run, unless --resume).", required=False, default="runs/clifvqa",
            show_default=True, type=click.Path(file_okay=False))
@click.option("--resume", is_flag=True,
              help="Continue the interrupted run in --out (its run.yaml is the config unless --config is given; "
                   "only the settings marked 'may change on resume' may differ).")
@click.option("--tiny", is_flag=True,
              help="Tiny FAST-VQA and 16x128x128 fragments (sets model.fastvqa, model.fragments, t0 and the hidden "
                   "widths): the same code, for tests and demos.")
@quiet_option()
def train_cmd(config_path: str | None, print_config: bool, out: str, resume: bool, tiny: bool, quiet: bool,
              **settings: object) -> None:
    """Train CLiF-VQA on cached semantic features (CLIP is never loaded) and FAST-VQA fragments.

    Settings come from --config (default: the paper's, configs/clifvqa-b.yaml; with --resume:
    OUT/run.yaml), then --tiny, then the options given (each names its key in the config, and
    --print-config shows its help as the key's comment); --print-config shows the result.
    Writes OUT/run.yaml (the resolved config), metrics.csv, best/ and last/ checkpoints,
    summary.json and summary.txt (per split with --splits). Under torchrun the same command
    trains with DistributedDataParallel.

    \b
    Model selection: the epoch with the best validation SROCC + PLCC, ties broken by the lower
    validation loss, then the later epoch; the summary says which epoch and why, and warns when
    fewer than 10 validation videos cannot rank epochs. Training stops with an error (naming the
    batch's videos) on a NaN or inf loss; no checkpoint of non-finite weights is written. best/
    also stores the map from raw model outputs onto the training MOS scale that predict uses.
    """
    from clifvqa.train.config import RunConfig, load_run_config, set_options
    from clifvqa.train.config import tiny as tiny_model
    from clifvqa.train.run_folder import RunFolder

    # --resume continues the run as it was configured
    saved = RunFolder(out).read_config() if resume and config_path is None else None
    config = saved or (load_run_config(config_path) if config_path else RunConfig())
    if tiny:
        config = tiny_model(config)
    config = set_options(config, **{name: value for name, value in settings.items() if value != ()})
    if print_config:
        click.echo(config.to_yaml(), nl=False)
        return

    import logging

    from clifvqa.train.trainer import run_training

    main_rank = os.environ.get("RANK", "0") == "0"
    logging.basicConfig(level=logging.INFO if main_rank else logging.WARNING, format="%(message)s")
    summary = run_training(config, out, resume=resume, progress=not quiet)
    if main_rank:
        click.echo(summary["table"])
        click.echo(f"run folder: {summary['out']} (run.yaml, summary.json, metrics.csv, best/ checkpoint)")


@main.command("evaluate", cls=SettingsCommand, settings="clifvqa.train.config:option_settings",
              keys=("device", "workers", "data.allow_stale"), keyed=False)
@click.option("--checkpoint", required=True, type=click.Path(exists=True, file_okay=False),
              help="Checkpoint directory (e.g. runs/NAME/best).")
@click.option("--manifest", "manifest_path", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Manifest CSV of labelled videos.")
@videos_option()
@store_option(multiple=True)
@out_option("Folder for predictions.csv, metrics.json and scatter.png (default: print only).", required=False,
            type=click.Path(file_okay=False))
@click.option("--split", type=click.Choice(["train", "val", "test"]), default=None,
              help="Score only the rows with this split tag.")
@click.option("--no-plot", is_flag=True, help="Do not write scatter.png.")
@report_option("OUT/report.html: metrics with intervals, scatter, residuals, worst videos (needs -o/--out).")
@force_option()
@quiet_option()
def evaluate_cmd(checkpoint: str, manifest_path: str, videos: str, stores: tuple[str, ...], out: str | None,
                 split: str | None, no_plot: bool, report: bool, force: bool, quiet: bool, device: str | None,
                 workers: int | None, allow_stale: bool | None) -> None:
    """Score every labelled manifest video with a checkpoint: SROCC, PLCC (raw and after the
    4-parameter logistic fit), KROCC, RMSE, and the RMSE of predict's MOS-scale `score` when the
    checkpoint has a score mapping. Exit code 1 when some videos could not be decoded."""
    from clifvqa.train.evaluate import evaluate

    if report and not out:
        fail("--report writes OUT/report.html: give an output folder with -o/--out")
    result = evaluate(checkpoint, manifest_path, videos, list(stores), out, device or "auto", plot=not no_plot,
                      split=split, workers=workers, overwrite=force, progress=not quiet,
                      allow_stale=bool(allow_stale))
    click.echo(result.summary())
    if report and out:
        _report(out)
    if result.failures:
        sys.exit(1)


@main.command("predict")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--checkpoint", required=True, type=click.Path(exists=True, file_okay=False),
              help="Checkpoint directory (e.g. runs/NAME/best).")
@store_option(multiple=True)
@click.option("--clip-model", default=None, help="CLIP hub id or folder for videos not in a store [default: the "
              "checkpoint's model]; its weights must be the checkpoint's.")
@out_option("Write out.csv (video, score, raw, error) or out.json [default: CSV to stdout].", required=False,
            type=click.Path(dir_okay=False), old=["--output"])
@click.option("--explain", is_flag=True,
              help="Print each video's top prompts (mean and max CLIP score over the video); with -o/--out "
                   "also write every prompt's per-frame curves (JSON; with CSV in OUT.explain.json).")
@report_option("With --explain and -o/--out: report.html beside OUT, a page per video (score, prompt curves, "
               "crop maps, fragments).")
@device_option()
@quiet_option()
def predict_cmd(inputs: tuple[str, ...], checkpoint: str, stores: tuple[str, ...], clip_model: str | None,
                out: str | None, explain: bool, report: bool, device: str, quiet: bool) -> None:
    """Score the videos INPUTS (files, or folders scanned recursively) with a checkpoint.

    \b
    score  the predicted quality on the MOS scale of the checkpoint's training set: raw mapped
           by the monotone map (4-parameter logistic, or a line) that train fitted on its
           training videos and stored in best/ (empty for checkpoints without that map)
    raw    the model's own output: same ranking, arbitrary scale (the training loss only
           ranks and correlates)

    Semantic features come from --store when it holds the same file, else are extracted with
    exactly the checkpoint's CLIP settings. The same video always gets the same score. A video
    that cannot be read (or gets a NaN output) gets an error row; the exit code is then 1.
    """
    from clifvqa.predict import NO_MAPPING_NOTE, explain_text, predict, predictions_csv, write_predictions
    from clifvqa.train.checkpoint import read_meta, score_mapping_of

    if report and not (explain and out):
        fail("--report draws the --explain curves: give --explain and -o/--out")
    preds = predict(list(inputs), checkpoint, list(stores), clip_model, device, explain,
                    progress=not quiet)
    no_mapping = score_mapping_of(read_meta(checkpoint)) is None
    if out:
        for path in write_predictions(preds, out, explain=explain):
            click.echo(f"wrote {path}", err=True)
    if explain:
        click.echo("\n".join(explain_text(p) for p in preds if p.error is None))
        if not out:
            click.echo("(per-frame curves of every prompt: pass -o out.json)", err=True)
    elif not out:
        click.echo(predictions_csv(preds), nl=False)
    if report and out:
        _report(out)
    if no_mapping:
        click.echo(NO_MAPPING_NOTE.format(checkpoint=checkpoint), err=True)
    failed = [p for p in preds if p.error is not None]
    for p in failed:
        click.echo(f"failed: {p.video}: {p.error}", err=True)
    if failed:
        sys.exit(1)


@main.command("demo")
@out_option("New folder for everything the demo makes.", required=False, default="demo-run", show_default=True,
            type=click.Path(file_okay=False))
@renamed_option("--clips", old=["--videos"], default=48, show_default=True, type=click.IntRange(min=12),
                help="Clips to make (whole scenes of 6 distortion levels).")
@click.option("--epochs", default=None, type=click.IntRange(min=1),
              help="Training epochs [default: the demo's tuned value].")
@click.option("--seed", default=0, show_default=True, type=int, help="Scenes, model init and data order.")
@click.option("--report/--no-report", default=True, show_default=True,
              help="Write OUT/report.html: the evaluation's scatter and worst videos, the training curves.")
@quiet_option()
def demo_cmd(out: str, clips: int, epochs: int | None, seed: int, report: bool, quiet: bool) -> None:
    """Run the whole pipeline on a small generated dataset: make graded-distortion clips, extract
    with a tiny random-weight CLIP, train --tiny, and print SROCC/PLCC on the held-out clips."""
    import logging

    from clifvqa.config_io import with_overrides
    from clifvqa.demo import DEMO_TRAINING, DemoConfig, run_demo

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    overrides = {"optim.epochs": epochs} if epochs else {}
    config = DemoConfig(clips=clips, seed=seed, train=with_overrides(DEMO_TRAINING, overrides))
    result = run_demo(out, config, progress=not quiet, log=click.echo)
    click.echo(result.summary())
    if report:
        _report(out)


@main.command("report")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@out_option("HTML file to write [default: report.html in PATH, or beside it when PATH is a file].",
            required=False, type=click.Path(dir_okay=False, path_type=Path))
def report_cmd(path: Path, out: Path | None) -> None:
    """Write one self-contained HTML page (figures inline, nothing loaded from the network) of
    what another command wrote in PATH: an evaluation folder (evaluate -o), a training run folder
    (train -o), an experiment folder (experiment run -o), a demo folder, or a predict --explain
    output (out.json, or out.csv with out.explain.json)."""
    _report(path, out)


@main.group("experiment")
def experiment_group() -> None:
    """The paper's protocol as one experiment file: run it, resumably, and print its tables
    (docs/PROTOCOL.md)."""


@experiment_group.command("table")
@click.argument("folder", type=click.Path(exists=True, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["md", "csv", "latex"]), default="md", show_default=True,
              help="Markdown, long-form CSV or LaTeX.")
@click.option("--reference", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Reported numbers to print beside ours with the difference, e.g. experiments/paper-reference.csv.")
@click.option("--metrics", default="srocc,plcc", show_default=True,
              help="Comma-separated metrics: srocc, plcc, plcc_fit, krocc, rmse.")
def experiment_table_cmd(folder: Path, fmt: str, reference: Path | None, metrics: str) -> None:
    """Print the paper-shaped tables (Tables 1-5) of FOLDER/results.csv: mean ± std over splits,
    n splits, best per column marked."""
    from clifvqa.protocol.tables import experiment_tables

    chosen = tuple(m.strip() for m in metrics.split(",") if m.strip())
    click.echo(experiment_tables(folder, fmt=fmt, reference=reference, metrics=chosen), nl=False)


def _variables(pairs: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"expected NAME=VALUE, got {pair!r}", param_hint="--var")
        out[name] = value
    return out


@experiment_group.command("run", cls=SettingsCommand, settings="clifvqa.train.config:option_settings",
                          keys=("device",))
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@out_option("Experiment folder (runs/, results.csv, tables.csv); shared by every task of a SLURM array.",
            type=click.Path(file_okay=False, path_type=Path))
@click.option("--var", "variables", multiple=True, metavar="NAME=VALUE",
              help="Set a variable of the file (repeatable).")
@click.option("--only", multiple=True, metavar="STAGE", help="Only the runs of this stage (repeatable).")
@click.option("--tiny", is_flag=True, help="Tiny model for every run (tests, the mini demo).")
@click.option("--dry-run", is_flag=True,
              help="List every run with its video counts and frames to decode; run nothing.")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), metavar="FRAMES_PER_S",
              help="With --dry-run: fragment frames decoded and computed per second, for a time estimate.")
@click.option("--list-runs", is_flag=True,
              help="Print INDEX, run id and status per line (the indices --run-index takes).")
@click.option("--run-index", type=click.IntRange(min=0), help="Run only the run at this index (a SLURM array task).")
@click.option("--redo-changed", is_flag=True,
              help="Run again (moving the old folder to OUT/replaced/) runs whose config changed.")
@quiet_option()
def experiment_run_cmd(file: Path, out: Path, variables: tuple[str, ...], only: tuple[str, ...], tiny: bool,
                       dry_run: bool, rate: float | None, list_runs: bool, run_index: int | None,
                       redo_changed: bool, quiet: bool, device: str | None) -> None:
    """Run every training and evaluation experiment FILE implies, in dependency order; a rerun skips
    finished runs and resumes an interrupted one (docs/PROTOCOL.md)."""
    import logging

    from clifvqa.protocol import runner

    values = _variables(variables)
    if dry_run or list_runs:
        from clifvqa.protocol.plan import format_dry_run, plan_experiment
        from clifvqa.protocol.spec import load_experiment

        if list_runs:
            click.echo(runner.list_runs(file, out, variables=values, only=only, use_tiny=tiny, device=device))
        else:
            plan = plan_experiment(load_experiment(file, values), out, use_tiny=tiny, only=only, device=device)
            click.echo(format_dry_run(plan, rate))
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    result = runner.run_experiment(file, out, variables=values, only=only, run_index=run_index, use_tiny=tiny,
                                   device=device, redo_changed=redo_changed, progress=not quiet, echo=click.echo)
    click.echo(result.summary())


@experiment_group.command("demo")
@out_option("Folder for the generated data and the experiment (a rerun resumes).", required=False,
            default="protocol-demo", show_default=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--report/--no-report", default=True, show_default=True,
              help="Write OUT/experiment/report.html: Tables 1-5 beside the paper's, each run's curves.")
@quiet_option()
def experiment_demo_cmd(out: Path, report: bool, quiet: bool) -> None:
    """The paper's protocol in miniature: make two small datasets, run experiments/mini.yaml with
    --tiny (pre-train, cross-dataset test, fine-tune over 3 splits, ablations) and print its tables."""
    from clifvqa.protocol.demo import run_protocol_demo

    click.echo(run_protocol_demo(out, progress=not quiet, log=click.echo))
    if report:
        _report(out / "experiment")


if __name__ == "__main__":
    main()
