"""Build the offline wheelhouse for GPU nodes without internet (README "Offline GPU nodes").

Downloads, for a target CPython and platform, the wheels of what a CUDA image with torch and
transformers lacks (PINNED below, the versions the test suite runs with), builds clifvqa itself as
a wheel, then proves the set is complete: pip resolves ``clifvqa`` with ``--no-index`` from the
folder plus metadata-only stand-ins for the packages the image provides (``--provided``). It
prints every wheel with its size and fails when the folder is over ``--max-mb``.

Never downloaded: torch (and its nvidia-* / triton), transformers, numpy and scipy (numpy and scipy
alone are over 50 MB; an image with transformers has numpy). Small packages an image may also have
(tqdm, safetensors, PyYAML, packaging) are included: pip keeps the image's copies when they satisfy
clifvqa. Add what an image lacks with ``--extra``.

    python3 benchmarks/wheelhouse.py [--out wheelhouse] [--python-version 3.12]
        [--platform manylinux_2_28_x86_64 ...] [--extra scipy==1.17.1 ...]
        [--provided torch==2.11.0 ...] [--max-mb 60]

``make wheelhouse`` runs it with the Makefile's WHEEL_* variables.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from urllib.parse import unquote

REPO = Path(__file__).resolve().parent.parent

# clifvqa's runtime dependencies and theirs, minus what the image provides (PROVIDED). Pinned to
# the versions the test suite runs with; the resolution check below fails if a pin bump needs a
# package that is not listed here.
PINNED = (
    "av==18.1.0",                # PyAV: bundles FFmpeg, most of the folder's size
    "h5py==3.16.0",
    "zarr==3.1.6",               # needs numpy>=2
    "numcodecs==0.16.6",         # zarr
    "donfig==0.8.1.post1",       # zarr
    "google-crc32c==1.9.0",      # zarr
    "typing_extensions==4.16.0",  # zarr, numcodecs
    "packaging==26.2",           # zarr
    "PyYAML==6.0.3",             # donfig
    "joblib==1.6.0",
    "cloudpickle==3.1.3",        # joblib
    "click==8.5.1",
    "tqdm==4.70.1",
    "safetensors==0.8.0",
    "fsspec==2026.9.0",
)
# What the target image must already have: the lowest versions clifvqa and the pins accept.
PROVIDED = ("torch==2.11.0", "transformers==5.0.0", "numpy==2.0.0", "scipy==1.11.1")
LOWEST_MANYLINUX = 17  # manylinux_2_17 == manylinux2014, the oldest tag current wheels carry


def platforms(given: list[str]) -> list[str]:
    """``given`` plus, for each ``manylinux_2_N_ARCH``, every older ``manylinux_2_M_ARCH`` down to
    2_17 and manylinux2014: a glibc-2.N host runs them all, as pip knows on a real host but not
    for ``--platform``."""
    out: list[str] = []
    for tag in given:
        out.append(tag)
        match = re.fullmatch(r"manylinux_2_(\d+)_(\w+)", tag)
        if match:
            glibc, arch = int(match.group(1)), match.group(2)
            out += [f"manylinux_2_{m}_{arch}" for m in range(glibc - 1, LOWEST_MANYLINUX - 1, -1)]
            out.append(f"manylinux2014_{arch}")
    return list(dict.fromkeys(out))


def target_args(python_version: str, tags: list[str]) -> list[str]:
    """pip options that select wheels for the target interpreter instead of the running one."""
    abi = "cp" + python_version.replace(".", "")
    args = ["--only-binary=:all:", "--python-version", python_version, "--implementation", "cp", "--abi", abi]
    for tag in tags:
        args += ["--platform", tag]
    return args


def pip(*args: str, why: str) -> None:
    """Run pip; on failure exit with ``why`` (pip's own message is printed above it)."""
    cmd = [sys.executable, "-m", "pip", *args]
    print("+ " + " ".join(cmd), flush=True)
    if subprocess.run(cmd).returncode != 0:
        raise SystemExit(f"error: {why}")


def split_req(req: str) -> tuple[str, str]:
    """``"name==version"`` -> (name, version); the stand-ins need exact versions."""
    name, sep, version = req.partition("==")
    if not sep or not name or not version:
        raise SystemExit(f"error: --provided {req!r}: write it as NAME==VERSION, e.g. torch==2.11.0")
    return name.strip(), version.strip()


def write_stub_wheel(folder: Path, req: str) -> None:
    """A metadata-only wheel with no dependencies: to the resolver, the image's package."""
    name, version = split_req(req)
    dist = re.sub(r"[-_.]+", "_", name)
    info = f"{dist}-{version}.dist-info"
    files = {
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: clifvqa-wheelhouse\nRoot-Is-Purelib: true\n"
                         "Tag: py3-none-any\n",
    }
    files[f"{info}/RECORD"] = "".join(f"{path},,\n" for path in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(folder / f"{dist}-{version}-py3-none-any.whl", "w") as zf:
        for path, text in files.items():
            zf.writestr(path, text)


def check_resolves(out: Path, provided: list[str], pip_target: list[str]) -> None:
    """pip, offline and ignoring this machine's pip config and packages, must resolve clifvqa for
    the target from ``out`` plus the stand-ins for the image's packages."""
    with tempfile.TemporaryDirectory() as tmp:
        stubs, report = Path(tmp) / "stubs", Path(tmp) / "report.json"
        stubs.mkdir()
        for req in provided:
            write_stub_wheel(stubs, req)
        pip("--isolated", "install", "--dry-run", "--ignore-installed", "--no-index",
            "--find-links", str(out), "--find-links", str(stubs), *pip_target,
            "--target", str(Path(tmp) / "site"), "--report", str(report), "clifvqa",
            why=f"clifvqa does not resolve offline from these wheels plus the image's {' '.join(provided)}: "
                "add what pip names above with --extra (WHEEL_EXTRA) or to PINNED")
        installs = json.loads(report.read_text())["install"]
        from_image = sorted(item["metadata"]["name"] for item in installs
                            if item["download_info"]["url"].startswith(stubs.as_uri()))
    used = {unquote(item["download_info"]["url"].rsplit("/", 1)[-1]) for item in installs}
    unused = sorted(p.name for p in out.glob("*.whl") if p.name not in used)
    print(f"resolves offline for the target: {len(installs) - len(from_image)} wheels from the folder, "
          f"{', '.join(from_image)} from the image")
    if unused:
        print(f"not needed by clifvqa (an --extra?): {', '.join(unused)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "wheelhouse", help="folder (default: wheelhouse/)")
    parser.add_argument("--python-version", default="3.12", help="target CPython X.Y (default 3.12)")
    parser.add_argument("--platform", action="append", default=None,
                        help="wheel platform tag, repeatable (default manylinux_2_28_x86_64; a manylinux_2_N "
                             "tag also accepts older manylinux wheels)")
    parser.add_argument("--extra", action="append", default=[], help="another requirement to add, repeatable")
    parser.add_argument("--provided", action="append", default=None,
                        help=f"NAME==VERSION the image has, repeatable (default: {' '.join(PROVIDED)})")
    parser.add_argument("--max-mb", type=float, default=60.0, help="fail above this size (MB = 10^6 bytes)")
    args = parser.parse_args()
    if not re.fullmatch(r"3\.\d+", args.python_version):
        raise SystemExit(f"error: --python-version {args.python_version!r}: give CPython X.Y, e.g. 3.12")
    if any(re.match(r"(torch|nvidia-|triton)\b", req, re.IGNORECASE) for req in args.extra):
        raise SystemExit("error: --extra: the wheelhouse never holds torch, nvidia-* or triton; "
                         "the image's own torch is used as it is")

    out = args.out.resolve()
    pip_target = target_args(args.python_version, platforms(args.platform or ["manylinux_2_28_x86_64"]))
    # Built and checked aside: a failed download, check or size limit leaves the old folder as it was.
    with tempfile.TemporaryDirectory(prefix="wheelhouse-") as tmp:
        new = Path(tmp)
        pip("download", "--no-deps", *pip_target, "--dest", tmp, *PINNED, *args.extra,
            why=f"download failed: is there a wheel of each for CPython {args.python_version} there?")
        pip("wheel", "--no-deps", "--wheel-dir", tmp, str(REPO),
            why=f"building the clifvqa wheel from {REPO} failed")
        check_resolves(new, args.provided or list(PROVIDED), pip_target)
        wheels = sorted(new.glob("*.whl"), key=lambda p: p.stat().st_size, reverse=True)
        total = sum(p.stat().st_size for p in wheels)
        for wheel in wheels:
            print(f"{wheel.stat().st_size / 1e6:8.2f} MB  {wheel.name}")
        print(f"{total / 1e6:8.2f} MB  total, {len(wheels)} wheels (limit {args.max_mb:g} MB)")
        if total > args.max_mb * 1e6:
            raise SystemExit(f"error: the wheels are {total / 1e6:.1f} MB, over the {args.max_mb:g} MB "
                             f"limit: drop an --extra or raise --max-mb (WHEEL_MAX_MB); {out} is unchanged")
        out.mkdir(parents=True, exist_ok=True)
        for old in out.glob("*.whl"):  # only this set: older versions would linger and count
            old.unlink()
        for wheel in wheels:
            shutil.copy2(wheel, out / wheel.name)
    print(f"wrote {out}")

if __name__ == "__main__":
    main()
