"""clifvqa reads and writes Zarr through zarr's public API only (issue 20): zarr says its
``core`` package is not public, and setup.cfg lets users have any zarr from 3.1 on."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import clifvqa

ROOT = Path(clifvqa.__file__).parent
PUBLIC = {"zarr", "zarr.abc.store", "zarr.api.asynchronous", "zarr.buffer", "zarr.codecs", "zarr.errors",
          "zarr.storage"}
"""The zarr modules clifvqa may import (documented in zarr's API reference for 3.1 and 3.4)."""
CORE = re.compile(r"\bzarr\s*\.\s*" + "core" + r"\b")  # spelled so that this file does not match


def sources() -> list[Path]:
    """Every Python file of the package (hidden folders such as .venv and .git left out)."""
    return sorted(p for p in ROOT.rglob("*.py")
                  if not any(part.startswith(".") or part == "bench-out" for part in p.relative_to(ROOT).parts))


def test_the_package_has_python_files_to_check():
    names = {p.relative_to(ROOT).as_posix() for p in sources()}
    assert {"features/zarr_backend.py", "features/store.py", "cli.py"} <= names


def test_no_module_names_zarr_core():
    found = [f"{p.relative_to(ROOT)}:{n}: {line.strip()}" for p in sources()
             for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if CORE.search(line)]
    assert found == []


def test_zarr_imports_are_public_modules():
    imported: dict[str, set[str]] = {}
    for path in sources():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            for name in names:
                if name == "zarr" or name.startswith("zarr."):
                    imported.setdefault(name, set()).add(path.relative_to(ROOT).as_posix())
    assert "zarr" in imported and set(imported) <= PUBLIC, {m: f for m, f in imported.items() if m not in PUBLIC}
