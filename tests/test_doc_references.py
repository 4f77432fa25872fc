"""Every file a doc or docstring points at is in the repository (no references to files only the
authors had)."""

from __future__ import annotations

import fnmatch
import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# repository paths named in prose (docs, benchmarks, configs, experiments folders)
NAMED = re.compile(r"(?<![\w/.-])((?:docs|benchmarks|configs|experiments)/[\w.-]+\.(?:md|py|yaml|csv))")
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def _sources() -> list[Path]:
    """The .py and .md files git would track: never what a run writes into an ignored folder
    (bench-out/, demo-run/, venvs), which may be half-written while this test reads."""
    return [p for p in _repository_files() if p.suffix in (".py", ".md") and p.is_file()]


def _repository_files() -> list[Path]:
    """Tracked and untracked-but-not-ignored files, by git; outside a git checkout (an unpacked
    sdist, no git), every file but those in hidden folders and in the folders .gitignore names."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                                cwd=ROOT, capture_output=True, check=True).stdout.decode()
    except (OSError, subprocess.CalledProcessError):
        return _files_outside_ignored_folders()
    return [ROOT / name for name in listed.split("\0") if name]


def _files_outside_ignored_folders() -> list[Path]:
    """The fallback: .gitignore's folder lines (``/name/`` at the top, ``name/`` at any depth)."""
    ignore = ROOT / ".gitignore"
    lines = [line.strip() for line in ignore.read_text(encoding="utf-8").splitlines()] if ignore.is_file() else []
    folders = [line for line in lines if line.endswith("/") and not line.startswith("#")]
    files = []
    for folder, dirs, names in os.walk(ROOT):
        top = Path(folder) == ROOT
        dirs[:] = [d for d in dirs if not d.startswith(".") and not any(
            fnmatch.fnmatch(d, pattern.strip("/")) for pattern in folders if top or not pattern.startswith("/"))]
        files += [Path(folder, name) for name in names]
    return files


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
