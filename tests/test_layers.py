"""The import table of docs/ARCHITECTURE.md, enforced on the source: which folder may import which.

Every import statement counts, also those inside functions (lazy imports), and
``from clifvqa import predict`` counts as importing ``clifvqa.predict``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FORBIDDEN: dict[str, tuple[str, ...]] = {
    # stage two works from stores and video files; extraction on the fly (predict, demo) sits above it
    "train/": ("clifvqa.extract", "clifvqa.predict", "clifvqa.demo"),
    # the store format and the manifests are read by both stages and depend on neither
    "features/": ("clifvqa.extract", "clifvqa.train"),
    "manifests/": ("clifvqa.extract", "clifvqa.train"),
    # pages of what commands wrote: it reads their files, it never extracts, predicts or runs a command
    "report/": ("clifvqa.extract", "clifvqa.predict", "clifvqa.demo", "clifvqa.cli"),
}
"""Folder (relative to the package root) -> modules nothing in it may import."""

TESTING = "clifvqa.testing"
TESTING_USERS = ("tests/", "benchmarks/", "testing/", "demo.py", "protocol/demo.py")
"""The only places that may import the test-data generators of :mod:`clifvqa.testing`."""


def imported_modules(source: str) -> list[tuple[int, str]]:
    """``(line, module)`` of every clifvqa module ``source`` imports (absolute imports only)."""
    out: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
            if node.module == "clifvqa":  # from clifvqa import predict: a module, maybe
                out += [(node.lineno, f"clifvqa.{alias.name}") for alias in node.names]
    return [(line, name) for line, name in out if name == "clifvqa" or name.startswith("clifvqa.")]


def violations(rel: str, source: str) -> list[str]:
    """The imports of the file ``rel`` (path relative to the package root) that break the table."""
    banned = [m for folder, mods in FORBIDDEN.items() if rel.startswith(folder) for m in mods]
    if not rel.startswith(TESTING_USERS):
        banned.append(TESTING)
    return [f"{rel}:{line} imports {name}" for line, name in imported_modules(source)
            for m in banned if name == m or name.startswith(m + ".")]


def sources() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py") if not any(part.startswith(".") for part in p.relative_to(ROOT).parts))


def test_the_package_keeps_the_import_table():
    files = sources()
    assert any(p.relative_to(ROOT).as_posix().startswith("train/") for p in files)  # the walk sees the package
    found = [v for p in files for v in violations(p.relative_to(ROOT).as_posix(), p.read_text(encoding="utf-8"))]
    assert found == []


@pytest.mark.parametrize(("rel", "source", "expected"), [
    ("train/x.py", "def f():\n    from clifvqa.extract.sfe import X\n", ["train/x.py:2 imports clifvqa.extract.sfe"]),
    ("train/x.py", "from clifvqa import predict\n", ["train/x.py:1 imports clifvqa.predict"]),
    ("train/x.py", "import clifvqa.demo\n", ["train/x.py:1 imports clifvqa.demo"]),
    ("features/x.py", "from clifvqa.train.data import y\n", ["features/x.py:1 imports clifvqa.train.data"]),
    ("manifests/x.py", "import clifvqa.extract\n", ["manifests/x.py:1 imports clifvqa.extract"]),
    ("report/x.py", "from clifvqa.predict import predict\n", ["report/x.py:1 imports clifvqa.predict"]),
    ("extract/x.py", "from clifvqa.testing.videos import write_clip\n",
     ["extract/x.py:1 imports clifvqa.testing.videos"]),
    ("cli.py", "from clifvqa import testing\n", ["cli.py:1 imports clifvqa.testing"]),
    # allowed
    ("predict.py", "from clifvqa.extract.sfe import X\nfrom clifvqa.train.inference import predict_items\n", []),
    ("demo.py", "from clifvqa.testing.clip import save_random_clip\n", []),
    ("tests/test_x.py", "from clifvqa.testing.stores import synthetic_video\n", []),
    ("train/x.py", "from clifvqa.features.store import open_store\nfrom clifvqa.extraction_notes import z\n", []),
])
def test_the_checker_catches_each_kind_of_breach(rel, source, expected):
    assert violations(rel, source) == expected
