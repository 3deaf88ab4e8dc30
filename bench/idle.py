"""Idle benchmark: what open associations that send nothing cost each receiver in CPU.

Usage::

    .venv/bin/python bench/idle.py [--only courier,orthanc,storescp,pynetdicom]
                                   [--associations 10] [--seconds 20] [--courier-workers 1]

Each receiver (started as ``bench/ingest.py`` starts it, empty storage, loopback) is
measured twice for ``--seconds``: at rest with no connection, then holding
``--associations`` associations opened by hand over raw sockets
(:mod:`tests.raw_association`: an A-ASSOCIATE-RQ for Verification, the A-ASSOCIATE-AC
read, then nothing; the sender has no thread of its own, so none of its CPU can be
counted). The CPU is that of the receiver's whole process tree (``/proc``: utime and
stime of it and its descendants, reaped children included), as % of one core. Each
association is checked to be still open at the end (``scp.idle_timeout_s`` is 60 s by
default: keep ``--seconds`` under it). Prints a table; asserts only that every
association was accepted and stayed open.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from ingest import (  # noqa: E402
    STARTERS,
    ReceiverUnavailable,
    Running,
    environment,
    settled_cpu_seconds,
)

from tests.raw_association import associate, still_open  # noqa: E402

RECEIVERS = ("courier", "orthanc", "storescp", "pynetdicom")


def _cpu_share(running: Running, seconds: float) -> float:
    """% of one core the receiver's tree used over ``seconds`` from now."""
    before = settled_cpu_seconds(running.pid)
    start = time.monotonic()
    time.sleep(seconds)
    used = settled_cpu_seconds(running.pid) - before
    return 100.0 * used / (time.monotonic() - start)


def measure(receiver: str, associations: int, seconds: float, workers: int) -> tuple[float, float]:
    """(% of a core at rest, % with ``associations`` idle associations open)."""
    with (
        tempfile.TemporaryDirectory(prefix=f"bench-idle-{receiver}-") as tmp,
        STARTERS[receiver](Path(tmp), workers) as running,
    ):
        time.sleep(2.0)  # start-up's own work settles
        rest = _cpu_share(running, seconds)
        held: list[socket.socket] = []
        try:
            for i in range(associations):
                sock, refused = associate(
                    running.port, f"127.0.0.{2 + i % 5}", "IDLEBENCH", running.ae_title
                )
                held.append(sock)
                if refused:
                    raise RuntimeError(f"association {i + 1} refused: {refused}")
            time.sleep(1.0)
            idle = _cpu_share(running, seconds)
            if not all(still_open(s, 0.05) for s in held):
                raise RuntimeError("an idle association was closed during the measure")
        finally:
            for sock in held:
                sock.close()
        return rest, idle


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(RECEIVERS))
    parser.add_argument("--associations", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--courier-workers", type=int, default=1)
    args = parser.parse_args(argv)
    if not 1 <= args.associations <= 50 or not 1 <= args.seconds <= 50:
        parser.error("--associations and --seconds must be between 1 and 50")
    rows = []
    for receiver in args.only.split(","):
        if receiver not in RECEIVERS:
            parser.error(f"unknown receiver {receiver!r}; choose from {', '.join(RECEIVERS)}")
        try:
            rest, idle = measure(receiver, args.associations, args.seconds, args.courier_workers)
        except ReceiverUnavailable as exc:
            print(f"SKIP {receiver}: {exc}", flush=True)
            continue
        print(f"{receiver:10} at rest {rest:5.2f}% of a core, idle assoc {idle:5.2f}%", flush=True)
        rows.append((receiver, rest, idle))
    env = environment()
    print(
        f"\n{env['date']}, load average {os.getloadavg()[0]:.2f}; "
        f"{args.associations} idle associations, {args.seconds:g} s each; "
        f"Courier scp.workers {args.courier_workers}\n"
    )
    print("| receiver | at rest, % of a core | with idle associations | difference |")
    print("|---|---:|---:|---:|")
    for receiver, rest, idle in rows:
        print(f"| {receiver} | {rest:.2f} | {idle:.2f} | {idle - rest:+.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
