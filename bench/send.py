"""Send benchmark: Courier's C-STORE SCU (hospital-to-hospital delivery) against dcmtk's
``storescu`` into the same dcmtk ``storescp``.

Usage::

    .venv/bin/python bench/send.py [--repeat 3] [--sets ct,small] [--no-pynetdicom]

Data sets as in ``bench/ingest.py`` (synthetic, cached under ``bench/.cache/``): ``ct`` is
300 CT slices of 512x512 16-bit (157 MB), ``small`` 2000 instances of about 10 KB.

For every run a fresh ``storescp --fork`` (dcmtk, default 16 KB maximum PDU, writing
files, no fsync) is started on loopback, and one sender pushes the whole set over one
association:

- ``storescu``: dcmtk's ``storescu`` with ``TCP_NODELAY=1`` (the anchor);
- ``courier``: :func:`scp.storescu.send_instances`, what ``delivery.dicomsend`` calls,
  in this process, storage commitment off. The SOP class, instance and transfer syntax
  of each file are read before the clock starts (the node has them in its index);
- ``pynetdicom``: pynetdicom's own ``send_c_store(path)`` (chunked, from the file) on
  one association, for reference: what Courier's sender did before ``scp.storesend``.

Measured: instances/s over the wall time of the push (association to release), MB/s,
and the sender's CPU seconds (``storescu``: its own; ``courier``/``pynetdicom``: this
process's, every thread). Prints medians over ``--repeat`` runs (the senders take
turns) and each sender's speed ÷ storescu's. Asserts only that every instance was
acknowledged and arrived. The machine is shared and noisy: compare within one run.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from ingest import data_sets  # noqa: E402
from pynetdicom import AE  # noqa: E402

from scp.storescu import acknowledged, send_instances  # noqa: E402
from tests import dcmtk  # noqa: E402
from tests.send_items import Dest, Item, items_of  # noqa: E402

AE_TITLE = "STORESCP"


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def send_storescu(port: int, items: Sequence[Item]) -> float:
    """dcmtk's storescu, one association; returns its CPU seconds."""
    before = _children_cpu()
    done = dcmtk.storescu(
        "127.0.0.1", port, [i.path for i in items], "BENCH", AE_TITLE, timeout=1800
    )
    if done.returncode != 0:
        raise RuntimeError(f"storescu failed: {done.stderr[-1500:]}")
    return _children_cpu() - before


def send_courier(port: int, items: Sequence[Item]) -> float:
    before = _self_cpu()
    report = send_instances(Dest(AE_TITLE, "127.0.0.1", port), items)
    if len(report.statuses) != len(items) or not all(
        acknowledged(s) for s in report.statuses.values()
    ):
        raise RuntimeError(f"courier: not every instance acknowledged ({report.error})")
    return _self_cpu() - before


def send_pynetdicom(port: int, items: Sequence[Item]) -> float:
    before = _self_cpu()
    ae = AE(ae_title="BENCH")
    for pair in sorted({(i.sop_class_uid, i.transfer_syntax_uid) for i in items}):
        ae.add_requested_context(*pair)
    assoc = ae.associate("127.0.0.1", port, ae_title=AE_TITLE)
    if not assoc.is_established:
        raise RuntimeError("pynetdicom: no association")
    try:
        for item in items:
            status = assoc.send_c_store(item.path)
            if not acknowledged(int(status.Status) if "Status" in status else None):
                raise RuntimeError("pynetdicom: a C-STORE failed")
        assoc.release()
    finally:
        if assoc.is_established:
            assoc.abort()
    return _self_cpu() - before


SENDERS: dict[str, Callable[[int, Sequence[Item]], float]] = {
    "storescu": send_storescu,
    "courier": send_courier,
    "pynetdicom": send_pynetdicom,
}


@dataclass
class Run:
    seconds: float
    cpu_s: float


def measure(sender: str, items: Sequence[Item]) -> Run:
    """One push into a fresh storescp. pynetdicom's own sender sometimes loses a response
    to its association reactor under load (see scp.storesend) and aborts: it gets up to
    three tries, each failure printed."""
    for _ in range(2 if sender == "pynetdicom" else 0):
        try:
            return _measure(sender, items)
        except RuntimeError as exc:
            print(f"{sender}: {exc}; trying again")
    return _measure(sender, items)


def _measure(sender: str, items: Sequence[Item]) -> Run:
    with dcmtk.DcmtkStorescp(AE_TITLE, fork=True) as scp:
        t0 = time.perf_counter()
        cpu = SENDERS[sender](scp.port, items)
        seconds = time.perf_counter() - t0
        deadline = time.monotonic() + 30
        while len(scp.files()) < len(items) and time.monotonic() < deadline:
            time.sleep(0.05)  # the forked child may still be writing the last file
        if len(scp.files()) != len(items):
            raise RuntimeError(f"{sender}: storescp holds {len(scp.files())} of {len(items)}")
    return Run(seconds, cpu)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sets", default="ct", help="comma-separated: ct, small")
    parser.add_argument("--no-pynetdicom", action="store_true", help="skip the slow reference")
    args = parser.parse_args(argv)
    if not dcmtk.have_dcmtk():
        print("dcmtk (storescu, storescp) is required: apt-get install dcmtk")
        return 2
    senders = ["storescu", "courier"] + ([] if args.no_pynetdicom else ["pynetdicom"])
    lines = []
    for data in data_sets(args.sets.split(",")):
        items = items_of(list(data.files))
        n, mb = len(items), data.total_bytes / 1e6
        runs: dict[str, list[Run]] = {s: [] for s in senders}
        for i in range(args.repeat):
            for sender in senders:
                run = measure(sender, items)
                runs[sender].append(run)
                print(f"{data.name} run {i + 1} {sender:<10} {n / run.seconds:7.1f} inst/s")
        anchor = statistics.median(n / r.seconds for r in runs["storescu"])
        for sender in senders:
            rate = statistics.median(n / r.seconds for r in runs[sender])
            cpu = statistics.median(r.cpu_s for r in runs[sender])
            lines.append(
                f"| {sender} | {data.name} | {rate:.0f} | {rate * mb / n:.1f} | {cpu:.2f} "
                f"| {rate / anchor:.2f} |"
            )
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\nOne association into dcmtk storescp --fork, median of {args.repeat}", end="")
    print(f" (load average {load} on {os.cpu_count()} cores):\n")
    print("| sender | set | inst/s | MB/s | CPU s | ÷ storescu |")
    print("|---|---|---:|---:|---:|---:|")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
