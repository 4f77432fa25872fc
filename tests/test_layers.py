"""The import table of docs/ARCHITECTURE.md, read from the doc and enforced on the source as an
allow-list: each file may import its own folder and the clifvqa modules its row names.

Every import statement counts: those inside functions (lazy imports), relative ones (resolved
against the file's package) and those under ``TYPE_CHECKING``; ``from clifvqa import predict``
counts as importing ``clifvqa.predict``.
"""

from __future__ import annotations

import ast
import configparser
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "ARCHITECTURE.md"
TESTING = "testing"
"""The test-data generators: in *everything* only where a row names them."""


def modules() -> set[str]:
    """The package's top-level modules and folders (``errors``, ``features``, ...)."""
    return {p.stem for p in ROOT.glob("*.py")} | {p.parent.name for p in ROOT.glob("*/__init__.py")}


def read_table(text: str, known: set[str]) -> dict[str, frozenset[str]]:
    """``{row: modules it may import}`` of the table whose header is ``| folder | job | may import |``:
    a row is a folder (``train/``) or a module (``predict.py``); see the doc's "Import table"."""
    lines = text.splitlines()
    start = lines.index("| folder | job | may import |") + 2
    table: dict[str, frozenset[str]] = {}
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        row = re.match(r"\| `([^`]+)` \|", line)
        assert row, f"{DOC.name}: a row of the import table that names no folder or module: {line[:60]}"
        cell = re.sub(r"\([^()]*\)", "", line.rstrip().rstrip("|").rstrip().rsplit(" | ", 1)[-1])
        first, *rest = cell.split(";")
        names = set(re.findall(r"`([^`]+)`", " ".join(rest)))
        if first.strip().startswith("everything"):
            names |= known - {TESTING} - set(re.findall(r"`([^`]+)`", first))
        else:
            names |= set(re.findall(r"`([^`]+)`", first))
        table[row.group(1)] = frozenset(names)
    return table


def rule_of(rel: str, table: dict[str, frozenset[str]]) -> str | None:
    """The row ``rel`` (a path relative to the package root) follows: its own, else its folder's."""
    if rel in table:
        return rel
    folder = rel.split("/", 1)[0] + "/"
    return folder if "/" in rel and folder in table else None


def is_module(dotted: str) -> bool:
    """Whether ``clifvqa.<dotted>`` is a module or package of the source tree (not an attribute)."""
    path = ROOT.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imported_modules(rel: str, source: str) -> list[tuple[int, str]]:
    """``(line, module)`` of every clifvqa module the file ``rel`` imports, relative to the package
    (``features.store``; ``""``: the package itself), relative imports resolved."""
    package = rel.split("/")[:-1]  # the file's package, below clifvqa
    out: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ["clifvqa", *package][: len(package) + 2 - node.level]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            # `from clifvqa.extract import grid` imports the module clifvqa.extract.grid; the package
            # itself counts only for a name that is not a module (`from clifvqa import __version__`)
            subs = [f"{module}.{a.name}" for a in node.names]
            found = [m for m in subs if m.startswith("clifvqa.") and is_module(m[len("clifvqa."):])]
            names = found + ([module] if len(found) < len(subs) else [])
        else:
            continue
        for name in names:
            if name == "clifvqa" or name.startswith("clifvqa."):
                out.append((node.lineno, name[len("clifvqa."):]))
    return out


def violations(rel: str, source: str, table: dict[str, frozenset[str]]) -> list[str]:
    """The imports of the file ``rel`` (path relative to the package root) that its row does not allow."""
    rule = rule_of(rel, table)
    if rule is None:
        return [f"{rel}: no row of the import table in docs/ARCHITECTURE.md covers it; add one"]
    own = rel.split("/", 1)[0] if "/" in rel else None
    allowed = table[rule]
    out = []
    for line, name in imported_modules(rel, source):
        # the package itself (`from clifvqa import __version__`) stands for what its __init__ imports
        wanted = table.get("__init__.py", frozenset()) if name == "" else {name}
        if rel == "__init__.py" and name == "" or all(
                w.split(".", 1)[0] == own or any(w == a or w.startswith(a + ".") for a in allowed) for w in wanted):
            continue
        may = ", ".join(sorted(allowed)) or "nothing"
        out.append(f"{rel}:{line} imports clifvqa.{name}".rstrip(".") +
                   f", which the row `{rule}` does not allow (it may import: {may})")
    return out


def sources() -> list[str]:
    """The files the package ships: setup.cfg's packages (not build/, venvs or tests/)."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    folders = [ROOT.joinpath(*name.split(".")[1:]) for name in config["options"]["packages"].split()]
    return sorted(p.relative_to(ROOT).as_posix() for folder in folders for p in folder.glob("*.py"))


@pytest.fixture(scope="module")
def table() -> dict[str, frozenset[str]]:
    return read_table(DOC.read_text(encoding="utf-8"), modules())


def test_the_doc_table_reads_as_the_layering(table):
    # the rules of docs/DESIGN: data flows manifests -> extract -> features -> train
    assert table["manifests/"] == {"errors", "_atomic"}
    assert table["features/"] == {"manifests", "errors", "_atomic", "_version"}
    assert "extract" not in table["train/"] and "config_io" in table["train/"]
    assert "cli" not in table["protocol/"] and TESTING not in table["protocol/"]
    assert TESTING in table["protocol/demo.py"] and TESTING in table["demo.py"]
    assert table["cli.py"] == modules() - {TESTING}
    assert table["errors.py"] == table["_atomic.py"] == frozenset()
    assert {"extract.grid", "extract.runner", "train.config"} <= table["cli_options.py"]


def test_the_package_keeps_the_import_table(table):
    files = sources()
    assert "train/trainer.py" in files and "cli.py" in files  # the walk sees the package
    found = [v for rel in files for v in violations(rel, (ROOT / rel).read_text(encoding="utf-8"), table)]
    assert found == []


@pytest.mark.parametrize(("rel", "source", "expected"), [
    # a new cycle: the manifests importing the store format
    ("manifests/x.py", "from clifvqa.features.store import open_store\n", ["manifests/x.py:1 clifvqa.features.store"]),
    ("manifests/x.py", "from ..features import store\n", ["manifests/x.py:1 clifvqa.features.store"]),
    ("manifests/x.py", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import clifvqa.features\n",
     ["manifests/x.py:3 clifvqa.features"]),
    ("train/x.py", "def f():\n    from clifvqa.extract.sfe import X\n", ["train/x.py:2 clifvqa.extract.sfe"]),
    ("train/x.py", "from clifvqa import predict\n", ["train/x.py:1 clifvqa.predict"]),
    ("train/x.py", "import clifvqa.demo\n", ["train/x.py:1 clifvqa.demo"]),
    ("train/x.py", "from .. import cli\n", ["train/x.py:1 clifvqa.cli"]),
    ("train/x.py", "from clifvqa import __version__\n", ["train/x.py:1 clifvqa"]),
    ("features/x.py", "from clifvqa.train.data import y\n", ["features/x.py:1 clifvqa.train.data"]),
    ("extract/x.py", "from clifvqa.testing.videos import write_clip\n", ["extract/x.py:1 clifvqa.testing.videos"]),
    ("cli.py", "from clifvqa import testing\n", ["cli.py:1 clifvqa.testing"]),
    ("protocol/spec.py", "import clifvqa.testing.stores\n", ["protocol/spec.py:1 clifvqa.testing.stores"]),
    ("cli_options.py", "from clifvqa.train.trainer import train\n", ["cli_options.py:1 clifvqa.train.trainer"]),
    ("newthing.py", "import os\n",
     ["newthing.py: no row of the import table in docs/ARCHITECTURE.md covers it; add one"]),
    # allowed
    ("predict.py", "from clifvqa.extract.sfe import X\nfrom clifvqa.train.inference import predict_items\n", []),
    ("demo.py", "from clifvqa.testing.clip import save_random_clip\n", []),
    ("protocol/demo.py", "from clifvqa.testing.videos import write_clip\n", []),
    ("train/x.py", "from . import data\nfrom .fastvqa import FastVQA\nfrom clifvqa.config_io import load\n", []),
    ("features/x.py", "from clifvqa.manifests.paths import validate_video_path\nimport clifvqa.errors\n", []),
    ("extract/x.py", "from clifvqa import __version__\n", []),
    ("cli_options.py", "from clifvqa.train.config import Setting\n", []),
    ("testing/hostile.py", "from clifvqa.cli import main\n", []),
])
def test_the_checker_catches_each_kind_of_breach(table, rel, source, expected):
    found = violations(rel, source, table)
    assert [v.split(", which")[0].replace(" imports ", " ") for v in found] == expected
    rule = rel if rel in table else rel.split("/")[0] + "/"
    assert all(f"which the row `{rule}` does not allow" in v for v in found if "no row" not in v)
