"""Every hostile store (clifvqa.testing.hostile) against every command that reads stores.

Each (case, command) runs as its own process under an address-space limit (so a bomb cannot
take the machine) and a time limit; the table gives its exit code, peak RSS (MB) and seconds,
and marks a row "ok" when the command refused in one ``error:`` line without a traceback,
within 1.5x the peak memory of the same command on the intact store, and wrote nothing outside
its output folder.

    python benchmarks/hostile_matrix.py --out bench-out/hostile            # every case
    python benchmarks/hostile_matrix.py --cases zstd-bomb,fifo-chunk       # some
    python benchmarks/hostile_matrix.py --python /other/venv/bin/python    # another clifvqa
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from clifvqa.testing.hostile import CASES, VICTIM, build_base, commands, make_case, may_pass

LIMIT_AS = 8 << 30  # bytes of address space per command: a bomb fails here, not in the kernel's OOM killer
TIMEOUT = 60.0
CLI = "import sys; from clifvqa.cli import main; sys.argv[0] = 'clifvqa'; main()"


# Peak RSS of a child as seen by its parent includes the parent's own high-water mark at fork
# time (Linux keeps it across exec), so each command is started by a small launcher process
# (no numpy, no torch) that reports its child's peak RSS and exit status as JSON.
LAUNCHER = """
import json, os, resource, subprocess, sys, time
limit, timeout, log = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
with open(log, "wb") as out:
    proc = subprocess.Popen(["prlimit", f"--as={limit}", *sys.argv[4:]], stdout=out, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        code = "hang"
print(json.dumps([code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss]))
"""


def run(python: str, args: list[str], limit: int = LIMIT_AS, timeout: float = TIMEOUT) -> dict:
    """Run ``clifvqa ARGS`` in a child process; its exit code, peak RSS, time and output."""
    import tempfile

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    with tempfile.NamedTemporaryFile() as log:
        done = subprocess.run([sys.executable, "-S", "-c", LAUNCHER, str(limit), str(timeout), log.name, python,
                               "-c", CLI, *args], capture_output=True, text=True, env=env, check=True)
        exit_code, peak_kb = json.loads(done.stdout)
        text = Path(log.name).read_text("utf-8", "replace")
    return {"exit": exit_code, "seconds": round(time.perf_counter() - start, 1), "peak_mb": round(peak_kb / 1024),
            "output": text}


def verdict(name: str, command: str, result: dict) -> str:
    """``refused`` (one ``error:`` line, or verify's list of problems naming the victim, exit 1/2),
    ``passed`` (exit 0), ``traceback``, ``killed`` (e.g. out of memory) or ``hang``."""
    out = result["output"]
    if result["exit"] == "hang":
        return "hang"
    if "Traceback" in out or "MemoryError" in out:
        return "traceback"
    if result["exit"] == 0:
        return "passed"
    if result["exit"] not in (1, 2):
        return "killed"
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    # verify lists problems, predict reports a failed video per line; both name the video
    if len(errors) == 1 or (command in ("verify", "predict") and VICTIM in out):
        return "refused"
    return "unclear"


def acceptable(name: str, command: str, outcome: str) -> bool:
    return outcome == "refused" or (outcome == "passed" and may_pass(name, command))


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
            outcome = verdict(name, cmd, r)
            ok = acceptable(name, cmd, outcome) and not escaped and r["peak_mb"] <= 1.5 * intact[cmd]["peak_mb"]
            last = (r["output"].strip().splitlines() or [""])[-1][:150]
            rows.append({"case": name, "command": cmd, **{k: r[k] for k in ("exit", "peak_mb", "seconds")},
                         "intact_mb": intact[cmd]["peak_mb"], "outcome": outcome, "escaped": escaped, "ok": ok,
                         "last_line": last})
            print(f"{name:24} {cmd:15} {r['exit']!s:>5} {r['peak_mb']:>8} {intact[cmd]['peak_mb']:>9} "
                  f"{r['seconds']:>6}  {outcome:9} {'ok' if ok else 'FAIL'}  {last}", flush=True)
            shutil.rmtree(work, ignore_errors=True)
    (args.out / "matrix.json").write_text(json.dumps(rows, indent=1))
    failed = [r for r in rows if not r["ok"]]
    print(f"\n{len(rows) - len(failed)} of {len(rows)} ok; table in {args.out / 'matrix.json'}")


if __name__ == "__main__":
    main()
