"""Every file a doc or docstring points at is in the repository (no references to files only the
authors had)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# and every hidden folder: .git, .venv and the venvs of other Pythons and of CI's legs (.venv3.12, .venv-lowest)
SKIP = {"wheelhouse", "clifvqa.egg-info", "demo-run", "runs"}
# repository paths named in prose (docs, benchmarks, configs, experiments folders)
NAMED = re.compile(r"(?<![\w/.-])((?:docs|benchmarks|configs|experiments)/[\w.-]+\.(?:md|py|yaml|csv))")
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def _sources() -> list[Path]:
    def skipped(parts: tuple[str, ...]) -> bool:
        return bool(SKIP & set(parts)) or any(part.startswith(".") for part in parts)

    return [p for p in ROOT.rglob("*") if p.suffix in (".py", ".md") and not skipped(p.relative_to(ROOT).parts)]


def test_named_repository_files_exist():
    missing = [f"{p.relative_to(ROOT)}: {name}" for p in _sources() if p.name != Path(__file__).name
               for name in NAMED.findall(p.read_text(encoding="utf-8")) if not (ROOT / name).exists()]
    assert missing == []


def test_markdown_links_resolve():
    missing = []
    for p in _sources():
        if p.suffix != ".md":
            continue
        for target in LINK.findall(p.read_text(encoding="utf-8")):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (p.parent / target).exists():
                missing.append(f"{p.relative_to(ROOT)}: {target}")
    assert missing == []


def test_no_references_outside_the_repository():
    outside = re.compile(r"\.\./shared/|notes/tech\.md|notes/ecosystem\.md|\bspec §")
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in _sources() if p.name != Path(__file__).name
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if outside.search(line)]
    assert hits == []
