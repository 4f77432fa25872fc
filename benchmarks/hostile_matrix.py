"""Every hostile store (clifvqa.testing.hostile) against every command that reads stores.

Each (case, command) runs as its own process under a memory limit (so a bomb cannot take the
machine) and a time limit; the table gives its exit code, peak RSS (MB) and seconds, and marks a
row "ok" when the command refused in one ``error:`` line naming the store (or verify listed the
problem, or ``store info`` reported what it ignores, or it passed where it never reads what the
case damages: :func:`clifvqa.testing.hostile.acceptable`) without a traceback, within 1.5x the
peak memory of the same command on the intact store and 60 s, and wrote nothing outside its
output folder. ``matrix.json`` holds every row, ``matrix.md`` the table (one cell per case and
command: outcome letter, exit code, peak MB, seconds; ``**`` marks a cell that is not ok).

    python benchmarks/hostile_matrix.py --out bench-out/hostile            # every case
    python benchmarks/hostile_matrix.py --cases zstd-bomb,fifo-chunk       # some
    python benchmarks/hostile_matrix.py --python /other/venv/bin/python    # another clifvqa
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from clifvqa.testing.hostile import (
    CASES,
    VICTIM,
    acceptable,
    build_base,
    commands,
    make_case,
    run_limited,
    verdict,
)

LIMIT_AS = 8 << 30  # bytes of address space per command: a bomb fails here, not in the kernel's OOM killer
TIMEOUT = 60.0
CLI = "import sys; from clifvqa.cli import main; sys.argv[0] = 'clifvqa'; main()"
ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def run(python: str, args: list[str], limit: int = LIMIT_AS, timeout: float = TIMEOUT) -> dict:
    """Run ``clifvqa ARGS`` in a child process; its exit code, peak RSS, time and output."""
    start = time.perf_counter()
    exit_code, peak_mb, text = run_limited([python, "-c", CLI, *args], limit, timeout, ENV)
    return {"exit": exit_code, "seconds": round(time.perf_counter() - start, 1), "peak_mb": round(peak_mb),
            "output": text}


def says_where(command: str, exit_code: int | str, output: str, store: str) -> bool:
    """Whether a refusal is one line naming the store (and the entry, where it is one): one
    ``error:`` line, or predict's one ``failed:`` line for the video, or verify's problems each
    on a line naming the video or the store."""
    lines = output.splitlines()
    for prefix in ("error:", "failed:"):
        found = [line for line in lines if line.startswith(prefix)]
        if found:
            return len(found) == 1 and store in found[0]
    problems = [line for line in lines  # not verify's last line (STORE: N problems) nor its progress bar
                if line.strip() and not line.startswith((store, "\r", "verify:"))]
    return command == "verify" and exit_code == 1 and bool(problems) and all(
        line.startswith((f"{VICTIM}: ", "(store): ")) for line in problems)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench-out/hostile"))
    parser.add_argument("--cases", default="", help="comma-separated case names (default: all)")
    parser.add_argument("--commands", default="", help="comma-separated command names (default: all)")
    parser.add_argument("--python", default=sys.executable, help="the Python whose clifvqa runs the commands")
    args = parser.parse_args()
    names = [c for c in args.cases.split(",") if c] or list(CASES)
    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    base = build_base(args.out / "base")
    wanted = [c for c in args.commands.split(",") if c]
    intact: dict[str, dict] = {}
    for cmd, cli in commands(base, base.zarr, args.out / "intact-out").items():
        if not wanted or cmd in wanted:
            intact[cmd] = run(args.python, cli)
    print(f"{'case':24} {'command':15} {'exit':>5} {'peak MB':>8} {'intact MB':>9} {'s':>6}  {'outcome':9} ok")
    for cmd, r in intact.items():
        print(f"{'(intact)':24} {cmd:15} {r['exit']!s:>5} {r['peak_mb']:>8} {'':>9} {r['seconds']:>6}")
    rows = []
    for name in names:
        for cmd in intact:
            work = args.out / "cases" / name / cmd.replace(" ", "_")
            store = make_case(name, base.zarr, work / "in")
            before = sorted(p for p in base.root.rglob("*"))
            r = run(args.python, commands(base, store, work / "out")[cmd])
            after = sorted(p for p in base.root.rglob("*"))
            escaped = Path("/etc/clifvqa-absolute").exists() or (args.out / "escaped").exists() or before != after
            outcome = verdict(cmd, r["exit"], r["output"])
            one_line = says_where(cmd, r["exit"], r["output"], str(store))
            ok = (acceptable(name, cmd, outcome) and not escaped and r["peak_mb"] <= 1.5 * intact[cmd]["peak_mb"]
                  and r["seconds"] < TIMEOUT)
            last = (r["output"].strip().splitlines() or [""])[-1][:150]
            rows.append({"case": name, "command": cmd, **{k: r[k] for k in ("exit", "peak_mb", "seconds")},
                         "intact_mb": intact[cmd]["peak_mb"], "outcome": outcome, "one_error_line": one_line,
                         "escaped": escaped, "ok": ok, "last_line": last})
            print(f"{name:24} {cmd:15} {r['exit']!s:>5} {r['peak_mb']:>8} {intact[cmd]['peak_mb']:>9} "
                  f"{r['seconds']:>6}  {outcome:9} {'ok' if ok else 'FAIL'}  {last}", flush=True)
            shutil.rmtree(work, ignore_errors=True)
    (args.out / "matrix.json").write_text(json.dumps(rows, indent=1))
    (args.out / "matrix.md").write_text(markdown(rows, intact))
    failed = [r for r in rows if not r["ok"]]
    print(f"\n{len(rows) - len(failed)} of {len(rows)} ok; table in {args.out / 'matrix.md'}")


LETTERS = {"refused": "R", "reported": "I", "passed": "P", "traceback": "T", "killed": "K", "hang": "H", "unclear": "?"}


def markdown(rows: list[dict], intact: dict[str, dict]) -> str:
    """The table: a row per case, a column per command; each cell ``LETTER exit/peak MB/seconds``
    (R refused, I info reported what it ignores, P passed, T traceback, K killed, H hang, ? unclear),
    ``**`` around a cell that is not ok; the intact store's row first."""
    commands = list(intact)
    lines = ["| case | " + " | ".join(commands) + " |", "|---" * (len(commands) + 1) + "|",
             "| (intact) | " + " | ".join(f"{intact[c]['exit']}/{intact[c]['peak_mb']}/{intact[c]['seconds']}"
                                         for c in commands) + " |"]
    cells: dict[str, dict[str, str]] = {}
    for r in rows:
        cell = f"{LETTERS.get(r['outcome'], '?')} {r['exit']}/{r['peak_mb']}/{r['seconds']}"
        cells.setdefault(r["case"], {})[r["command"]] = cell if r["ok"] else f"**{cell}**"
    for case, got in cells.items():
        lines.append(f"| {case} | " + " | ".join(got.get(c, "") for c in commands) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
