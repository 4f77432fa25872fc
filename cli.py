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


# ---------------------------------------------------------------- extract (extract/)


# ---------------------------------------------------------------- store (features/)


# ---------------------------------------------------------------- train / evaluate / predict / demo (train/)


if __name__ == "__main__":
    main()
