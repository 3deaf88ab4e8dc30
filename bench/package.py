"""Package benchmark: Courier's build_package against ``zip -0 -r`` and ``zip -r``.

Usage::

    .venv/bin/python bench/package.py [--repeat 3] [--big] [--json OUT]

Courier runs twice per round: without and with the offline viewer (``VIEWER/``, every
image pre-rendered at the default settings; issue 15 part 2). The table gives both, with
the package's bytes, and the viewer's cost: bytes added and build time relative to
Courier without it (targets: at most +15 % bytes, within 2x the time).

Data (synthetic, cached under ``bench/.cache/``): ``ct`` is the 300-slice CT (512x512 16-bit,
157 MB); ``--big`` adds a ~2 GB study (1,000 CT slices of 1024x1024, about 2 MB each) to
check that peak RSS stays under 200 MB.

Each tool runs in its own process on the same files in the same run, writing into a fresh
folder next to the data; page cache warm (one untimed Courier run first). Measured: wall
time (for Courier both the build_package call alone and the whole process, imports
included) and peak RSS (``ru_maxrss`` of that process, from ``wait4``). The table shows
medians over ``--repeat`` runs and the ratio of each wall time to ``zip -0``'s. A benchmark,
not a test: it asserts only that every run succeeded.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import synthetic  # noqa: E402

CACHE = ROOT / "bench" / ".cache"
DATA_VERSION = 1

_COURIER = """
import json, sys, time
from datetime import datetime, timezone
from pathlib import Path
import pydicom
sys.path.insert(0, {root!r})
from delivery.packaging.package import PackageInfo, PackageItem, build_package
from delivery.packaging.viewer import ViewerOptions
src, out = Path(sys.argv[1]), Path(sys.argv[2])
viewer = ViewerOptions() if sys.argv[3:] == ["viewer"] else None
items = []
for p in sorted(src.glob("*.dcm")):  # what the index would hand over (not timed)
    h = pydicom.dcmread(p, stop_before_pixels=True)
    items.append(PackageItem(p, h.StudyInstanceUID, h.SeriesInstanceUID, h.SOPInstanceUID,
                             h.SOPClassUID, h.file_meta.TransferSyntaxUID, h.Modality,
                             int(h.SeriesNumber), int(h.InstanceNumber)))
info = PackageInfo("CR-BENC-HMAR-K", "en", "bench", datetime.now(timezone.utc))
start = time.perf_counter()
result = build_package(items, out, info=info, viewer=viewer)
call = time.perf_counter() - start
status = Path("/proc/self/status").read_text()
hwm = int(next(ln.split()[1] for ln in status.splitlines() if ln.startswith("VmHWM:")))
print(json.dumps({{"call_s": call, "bytes": result.total_bytes, "hwm_kb": hwm}}))
"""


def cached(name: str, make: Callable[[Path], list[Path]]) -> Path:
    """The folder of data set ``name``, generated first when missing."""
    directory = CACHE / f"{name}-v{DATA_VERSION}"
    # bench/ingest.py marks the same data set with complete.json.
    if (directory / "complete").exists() or (directory / "complete.json").exists():
        return directory / "files"
    shutil.rmtree(directory, ignore_errors=True)
    print(f"generating {name} into {directory} ...", flush=True)
    make(directory / "files")
    (directory / "complete").touch()
    return directory / "files"


def _hwm_kb(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    return next((int(ln.split()[1]) for ln in status.splitlines() if ln.startswith("VmHWM:")), 0)


def run(argv: list[str], cwd: Path | None = None) -> tuple[float, int, str]:
    """Run ``argv``; return (wall seconds, peak RSS in KB, stdout).

    Peak RSS is the process's VmHWM, sampled every 5 ms until it exits (VmHWM only grows).
    Not ``ru_maxrss``: Linux carries the forking parent's high-water mark across exec, so
    every child of this (numpy-loaded) process would report at least the parent's RSS.
    """
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL)
    hwm = 0
    while proc.poll() is None:
        hwm = max(hwm, _hwm_kb(proc.pid))
        time.sleep(0.005)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{argv[0]} failed with {proc.returncode}")
    return wall, hwm, ""


def measure(src: Path, repeat: int) -> dict[str, dict[str, float]]:
    work = src.parent / "runs"
    script = work / "courier_build.py"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    script.write_text(_COURIER.format(root=str(ROOT)))
    samples: dict[str, list[tuple[float, float, int, int]]] = {
        "courier": [],
        "courier + viewer": [],
        "zip -0": [],
        "zip": [],
    }
    for i in range(repeat + 1):  # the first round warms the page cache and is dropped
        rounds = []
        for name, extra in (("courier", []), ("courier + viewer", ["viewer"])):
            out = work / f"courier-{i}"
            start = time.perf_counter()
            done = subprocess.run(
                [sys.executable, str(script), str(src), str(out), *extra],
                capture_output=True,
                text=True,
            )
            wall = time.perf_counter() - start
            if done.returncode != 0:
                raise SystemExit(f"{name} failed: {done.stderr[-2000:]}")
            figures = json.loads(done.stdout.strip().splitlines()[-1])
            call, rss = figures["call_s"], figures["hwm_kb"]
            rounds.append((name, call, wall, rss, figures["bytes"]))
            shutil.rmtree(out, ignore_errors=True)
        for name, flag in (("zip -0", "-0"), ("zip", "-6")):
            target = work / f"{name.replace(' ', '')}-{i}.zip"
            wall, rss, _ = run(["zip", "-q", flag, "-r", str(target), "."], cwd=src)
            rounds.append((name, wall, wall, rss, target.stat().st_size))
        if i:
            for name, main, process, rss, size in rounds:
                samples[name].append((main, process, rss, size))
        for z in work.glob("*.zip"):
            z.unlink()
    return {
        name: {
            "wall_s": statistics.median(s[0] for s in runs),
            "process_s": statistics.median(s[1] for s in runs),
            "peak_rss_mb": max(s[2] for s in runs) / 1024,
            "bytes": statistics.median(s[3] for s in runs),
        }
        for name, runs in samples.items()
    }


def table(title: str, size_mb: float, results: dict[str, dict[str, float]]) -> str:
    base = results["zip -0"]["wall_s"]
    lines = [
        f"\n{title} ({size_mb:.0f} MB)\n",
        "| tool | wall s (median) | process s | peak RSS MB | MB | time / zip -0 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['wall_s']:.2f} | {r['process_s']:.2f} | {r['peak_rss_mb']:.0f} "
            f"| {r['bytes'] / 1e6:.1f} | {r['wall_s'] / base:.2f}x |"
        )
    plain, viewer = results["courier"], results["courier + viewer"]
    lines.append(
        f"\nOffline viewer: +{(viewer['bytes'] / plain['bytes'] - 1) * 100:.1f} % bytes "
        f"(target <= 15 %), {viewer['wall_s'] / plain['wall_s']:.2f}x the build time "
        "(target <= 2x)"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--big", action="store_true", help="also a ~2 GB study (RSS check)")
    parser.add_argument("--json", type=Path, help="write the medians here")
    args = parser.parse_args()
    sets = {"ct-300": cached("ct", lambda d: synthetic.make_ct_series(d, n_slices=300))}
    if args.big:
        sets["big-2gb"] = cached(
            "big", lambda d: synthetic.make_ct_series(d, n_slices=1000, rows=1024, cols=1024)
        )
    report = {}
    for name, src in sets.items():
        size = sum(p.stat().st_size for p in src.glob("*.dcm")) / 1e6
        report[name] = measure(src, args.repeat if name == "ct-300" else 1)
        print(table(name, size, report[name]), flush=True)
        if name == "big-2gb":
            for tool in ("courier", "courier + viewer"):
                rss = report[name][tool]["peak_rss_mb"]
                print(f"\n{tool} peak RSS on {size:.0f} MB: {rss:.0f} MB (target < 200 MB)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
