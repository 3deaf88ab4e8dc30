"""How fast ``courier`` answers: whole processes, as a user or a script runs them.

Usage::

    .venv/bin/python bench/cli.py [--runs 7] [--requests 50]

Makes a node folder in a temporary directory (node.yaml's defaults, SQLite) holding
``--requests`` release requests, then runs each command ``--runs`` times as a fresh
process (after one warm-up run) and prints the median wall time and the peak resident
memory of each (``os.wait4``: that child's own ``ru_maxrss``), beside ``pip --version``
run the same way as the anchor for "a Python command line", with the ratio to it and
the issue's targets (≤ 0.3 s for ``--help``/``version``, ≤ 0.6 s for the commands that
read the database, ≤ 60 MB). Then the cost of the per-call API key look-up that makes a
new or revoked key count at once (:class:`portal.apikeys.KeyRing`, no cache): the
median time of one ``match`` of a database-held key. Wall times depend on the
machine's load (quote the load average it prints); the CPU time (user + system) of each
process much less so.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / ".venv" / "bin"
sys.path.insert(0, str(ROOT))  # before bench/ itself: bench/portal.py is not the package

# (label, argv after `courier`, target seconds)
COMMANDS: list[tuple[str, list[str], float]] = [
    ("courier --help", ["--help"], 0.3),
    ("courier version", ["version"], 0.3),
    ("courier request list", ["request", "list"], 0.6),
    ("courier status", ["status"], 0.6),
    ("courier studies list", ["studies", "list"], 0.6),
]
TARGET_MB = 60.0


def run_once(argv: list[str], cwd: Path) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds (user + system) and peak RSS (MB) of one process."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _pid, _status, usage = os.wait4(proc.pid, 0)
    took = time.perf_counter() - start
    proc.returncode = 0  # reaped by wait4
    return took, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024  # Linux: KB


def measure(argv: list[str], cwd: Path, runs: int) -> tuple[float, float, float]:
    """Median wall and CPU seconds, and the largest peak RSS, of ``runs`` runs."""
    run_once(argv, cwd)  # warm-up: page cache, .pyc files, the database migrated
    results = [run_once(argv, cwd) for _ in range(runs)]
    return (
        statistics.median(r[0] for r in results),
        statistics.median(r[1] for r in results),
        max(r[2] for r in results),
    )


def make_node(folder: Path, requests: int) -> None:
    (folder / "node.yaml").write_text((ROOT / "node.yaml").read_text())
    for i in range(requests):
        subprocess.run(
            [
                str(BIN / "courier"),
                "request",
                "create",
                "--patient-id",
                f"BENCH{i}",
                "--patient-name",
                "BENCH^PATIENT",
                "--birth-date",
                "19700101",
                "--email",
                "bench@example.org",
                "--second-channel",
                "sms:+447911123456",
                "--accession",
                f"BENCH{i:04d}",
            ],
            cwd=folder,
            check=True,
            stdout=subprocess.DEVNULL,
            timeout=120,
        )


def key_lookup_us(folder: Path, calls: int = 2000) -> float:
    """Median microseconds of one KeyRing.match of a database-held key (SQLite)."""
    from node.config import load_config
    from node.stores import open_store
    from portal.apikeys import KeyRing, create_key
    from store.models import utcnow

    cfg = load_config(folder / "node.yaml", compile_rules=False)
    engine, sessions, _content = open_store(cfg)
    try:
        with sessions() as s, s.begin():
            key, _row = create_key(s, "bench", "cli:bench", utcnow())
        ring = KeyRing((), sessions)
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            assert ring.match(key) is not None
            times.append(time.perf_counter() - start)
        return statistics.median(times) * 1e6
    finally:
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--requests", type=int, default=50)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="courier-bench-cli-"))
    make_node(folder, max(0, min(args.requests, 1000)))
    pip_s, pip_cpu, pip_mb = measure([str(BIN / "pip"), "--version"], folder, args.runs)
    print(f"load average {os.getloadavg()[0]:.2f}; {args.runs} runs each, median; {folder}")
    print(f"{'command':<24} {'wall s':>7} {'cpu s':>6} {'target':>7} {'x pip':>6} {'peak MB':>8}")
    print(
        f"{'pip --version (anchor)':<24} {pip_s:>7.3f} {pip_cpu:>6.3f} {'':>7} {1.0:>6.2f} "
        f"{pip_mb:>8.1f}"
    )
    for label, argv, target in COMMANDS:
        took, cpu, mb = measure([str(BIN / "courier"), *argv], folder, args.runs)
        flag = "" if took <= target and mb <= TARGET_MB else "  over target"
        print(
            f"{label:<24} {took:>7.3f} {cpu:>6.3f} {target:>7.1f} {took / pip_s:>6.2f} "
            f"{mb:>8.1f}{flag}"
        )
    print(f"API key look-up (KeyRing.match, SQLite): {key_lookup_us(folder):.0f} µs median")


if __name__ == "__main__":
    main()
