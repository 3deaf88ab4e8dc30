"""Ingest benchmark: Courier against the anchors, pushed by dcmtk's storescu.

Usage::

    .venv/bin/python bench/ingest.py [--only storescp,pynetdicom,orthanc,courier]
                                     [--repeat 3] [--sets ct,small] [--associations 1,4]
                                     [--courier-workers N] [--json OUT]

Data sets (synthetic, cached under ``bench/.cache/``): ``ct`` is 300 CT slices of 512x512
16-bit (about 0.5 MB each, 157 MB), ``small`` is 2000 instances of about 10 KB, all Explicit
VR Little Endian.

Receivers, each started fresh (empty storage under ``bench/.cache/runs/``) for every
measurement, all on loopback:

- ``storescp``: dcmtk's storescp writing files (``--fork``: one child per association, as a
  site would run it; without it associations queue one after the other).
- ``pynetdicom``: pynetdicom's bundled storescp app (``python -m pynetdicom storescp``,
  writing files; its ``--ignore`` is not used). Its pydicom ``save_as`` has no fsync.
- ``orthanc``: Orthanc with its default, durable storage (``SyncStorageArea: true``).
- ``courier``: ``.venv/bin/courier serve`` on a generated config; skipped with a message
  when the command is missing or does not answer C-ECHO within 20 s.

Each set is pushed with one storescu association, then with four concurrent ones (files
split in four). dcmtk and Orthanc get ``TCP_NODELAY=1`` (Debian builds keep Nagle on
otherwise, and every C-STORE stalls 40 ms).

Measured per run: instances/s and MB/s over the wall time of the push (file bytes on
disk / time); CPU seconds used by the receiver's whole process tree during the push
(utime+stime+cutime+cstime from /proc/PID/stat of the receiver and its descendants, read
once settled, after minus before); peak RSS (the larger of the receiver's VmHWM and the
sum of VmRSS over its process tree sampled every 50 ms; for forking receivers the sum counts
shared pages once per process); and the peak of one receiving process (the largest VmHWM of
the receiver's descendants when it has any: Courier's receiving processes beside its node
process, storescp's forked children; else of the receiver itself). Files are dealt to
the associations round-robin (``i::N``): with four, each association of the small set
(four series, round-robin too) sends one series. The table shows medians over
``--repeat`` runs and the ratio of each receiver's instances/s to Courier's (receiver /
Courier: below 1 means Courier is faster). This is a benchmark, not a test: it asserts
nothing but that every store succeeded (storescu exit codes, and the stored count where
the receiver tells it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import synthetic  # noqa: E402
from tests.dcmtk import DcmtkStorescp, have_dcmtk, wait_for_echo  # noqa: E402
from tests.orthanc import ORTHANC_BIN, Orthanc, have_orthanc  # noqa: E402
from tests.peers import free_port, nodelay_env  # noqa: E402

CACHE = ROOT / "bench" / ".cache"
# Bump when the generator's output changes, so a stale cache is rebuilt.
DATA_VERSION = 1
RECEIVERS = ("storescp", "pynetdicom", "orthanc", "courier")
COURIER_BIN = ROOT / ".venv" / "bin" / "courier"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
STARTUP_TIMEOUT = 60.0  # a loaded machine can take 20 s to start a node


class ReceiverUnavailable(RuntimeError):
    """The receiver cannot be run here (not installed, or did not start)."""


# --------------------------------------------------------------------------------------------
# Data sets


@dataclass(frozen=True)
class DataSet:
    name: str
    files: list[Path]

    @property
    def total_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.files)


def _cached(name: str, make: Callable[[Path], list[Path]]) -> DataSet:
    """Return the cached set ``name``, generating it first when missing or stale."""
    directory = CACHE / f"{name}-v{DATA_VERSION}"
    marker = directory / "complete.json"
    if marker.exists():
        files = [directory / f for f in json.loads(marker.read_text())["files"]]
        if all(f.exists() for f in files):
            return DataSet(name, files)
    shutil.rmtree(directory, ignore_errors=True)
    print(f"generating the {name} set into {directory} ...", flush=True)
    files = make(directory / "files")
    marker.write_text(json.dumps({"files": [str(f.relative_to(directory)) for f in files]}))
    return DataSet(name, files)


def data_sets(names: Sequence[str]) -> list[DataSet]:
    makers: dict[str, Callable[[Path], list[Path]]] = {
        "ct": lambda d: synthetic.make_ct_series(d, n_slices=300),
        "small": lambda d: synthetic.make_small_instances(d, n=2000),
    }
    return [_cached(n, makers[n]) for n in names]


# --------------------------------------------------------------------------------------------
# Process accounting from /proc (no psutil)


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def process_tree(root: int) -> list[int]:
    """Return ``root`` and all its live (or zombie) descendants."""
    children = _children_map()
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def _cpu_ticks(pid: int) -> int:
    """utime + stime + cutime + cstime of ``pid`` (reaped children included), in ticks."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    fields = stat[stat.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state): utime..cstime are fields 14..17.
    return sum(int(v) for v in fields[11:15])


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds used so far by ``root``, its live descendants and their reaped children.

    One read can miss a child that is reaped between reading its parent and reading it
    (its time moves into the parent's cutime): use :func:`settled_cpu_seconds`.
    """
    return sum(_cpu_ticks(pid) for pid in process_tree(root)) / CLK_TCK


def settled_cpu_seconds(root: int, timeout: float = 3.0) -> float:
    """:func:`tree_cpu_seconds` once two reads 0.1 s apart agree (children have settled).

    A forking receiver (storescp --fork) has children exiting right after the push; waiting
    for two agreeing reads keeps a child reaped mid-read from being lost.
    """
    last = tree_cpu_seconds(root)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = tree_cpu_seconds(root)
        if abs(now - last) <= 2 / CLK_TCK:
            return now
        last = now
    return last


def _status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class RssSampler:
    """Samples the summed VmRSS of a process tree in a thread; ``peak_kb`` is the maximum.

    ``process_peak_kb``: the largest VmHWM of one receiving process: of the root's
    descendants when it has any (Courier's receiving processes, storescp's forked
    children), else of the root itself.
    """

    def __init__(self, root: int, interval: float = 0.05) -> None:
        self.root = root
        self.interval = interval
        self.peak_kb = 0
        self.process_peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        tree = process_tree(self.root)
        total = sum(_status_kb(pid, "VmRSS") for pid in tree)
        self.peak_kb = max(self.peak_kb, total, _status_kb(self.root, "VmHWM"))
        children = [pid for pid in tree if pid != self.root] or [self.root]
        one = max(_status_kb(pid, "VmHWM") for pid in children)
        self.process_peak_kb = max(self.process_peak_kb, one)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> RssSampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._sample()
        self._stop.set()
        self._thread.join()


# --------------------------------------------------------------------------------------------
# Receivers


@dataclass
class Running:
    """A started receiver: where to send, and which process to account."""

    port: int
    ae_title: str
    pid: int
    count_stored: Callable[[], int | None] = field(default=lambda: None)


def _wait_echo(port: int, ae: str, process: subprocess.Popen[bytes], log: Path) -> None:
    if not wait_for_echo("127.0.0.1", port, ae, timeout=STARTUP_TIMEOUT, process=process):
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:]) if log.exists() else ""
        raise ReceiverUnavailable(f"did not answer C-ECHO within {STARTUP_TIMEOUT:.0f} s\n{tail}")


def _stop_tree(process: subprocess.Popen[bytes], grace: float = 20.0) -> None:
    """Terminate a receiver we started, then any of its descendants still alive, by pid."""
    tree = process_tree(process.pid)
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    for pid in tree[1:]:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _count_files(directory: Path) -> Callable[[], int | None]:
    return lambda: sum(1 for p in directory.rglob("*") if p.is_file())


@contextlib.contextmanager
def run_storescp(workdir: Path, workers: int) -> Iterator[Running]:
    out = workdir / "storescp"
    with DcmtkStorescp("STORESCP", out_dir=out, fork=True) as scp:
        assert scp.process is not None
        yield Running(scp.port, scp.ae_title, scp.process.pid, _count_files(out))


@contextlib.contextmanager
def run_pynetdicom(workdir: Path, workers: int) -> Iterator[Running]:
    out = workdir / "pynetdicom"
    out.mkdir(parents=True)
    port = free_port()
    log = workdir / "pynetdicom.log"
    argv = [sys.executable, "-m", "pynetdicom", "storescp", str(port)]
    argv += ["-aet", "STORESCP", "-ba", "127.0.0.1", "-od", str(out)]
    with log.open("wb") as sink:
        process = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT, env=nodelay_env())
    try:
        _wait_echo(port, "STORESCP", process, log)
        yield Running(port, "STORESCP", process.pid, _count_files(out))
    finally:
        _stop_tree(process)


@contextlib.contextmanager
def run_orthanc(workdir: Path, workers: int) -> Iterator[Running]:
    if not have_orthanc():
        raise ReceiverUnavailable(f"{ORTHANC_BIN} is not installed")
    with Orthanc(workdir=workdir) as orthanc:
        assert orthanc.process is not None

        def count() -> int | None:
            return int(orthanc.get("/statistics")["CountInstances"])

        yield Running(orthanc.dicom_port, orthanc.aet, orthanc.process.pid, count)


def courier_config(data_dir: Path, port: int, workers: int) -> str:
    """The node.yaml the benchmark gives Courier (JSON flow style is valid YAML). The web
    gets a free port: ``courier serve`` stops when portal.port (8080) is taken, e.g. by
    another node on this machine."""
    node = {"name": "bench", "data_dir": str(data_dir)}
    scp = {"ae_title": "COURIER", "host": "127.0.0.1", "port": port, "workers": workers}
    web = {"port": free_port(), "public_url": "http://127.0.0.1"}
    return f"node: {json.dumps(node)}\nscp: {json.dumps(scp)}\nportal: {json.dumps(web)}\n"


@contextlib.contextmanager
def run_courier(workdir: Path, workers: int) -> Iterator[Running]:
    if not os.access(COURIER_BIN, os.X_OK):
        raise ReceiverUnavailable(f"{COURIER_BIN} is missing (pip install -e . first)")
    data_dir = workdir / "courier-data"
    data_dir.mkdir(parents=True)
    port = free_port()
    config = workdir / "courier.yaml"
    config.write_text(courier_config(data_dir, port, workers))
    log = workdir / "courier.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [str(COURIER_BIN), "serve", "--config", str(config)],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=nodelay_env(),
            cwd=workdir,
        )
    try:
        _wait_echo(port, "COURIER", process, log)
        yield Running(port, "COURIER", process.pid)
    finally:
        _stop_tree(process)


STARTERS: dict[str, Callable[[Path, int], contextlib.AbstractContextManager[Running]]] = {
    "storescp": run_storescp,
    "pynetdicom": run_pynetdicom,
    "orthanc": run_orthanc,
    "courier": run_courier,
}


# --------------------------------------------------------------------------------------------
# One measurement


@dataclass
class Run:
    seconds: float
    inst_per_s: float
    mb_per_s: float
    cpu_s: float
    peak_rss_mb: float
    stored: int | None
    process_rss_mb: float = 0.0


def _split(files: Sequence[Path], parts: int) -> list[list[Path]]:
    return [list(files[i::parts]) for i in range(parts)]


def push(running: Running, data: DataSet, associations: int, logdir: Path) -> float:
    """Push ``data`` with ``associations`` concurrent storescu processes; return seconds.

    Raises ``RuntimeError`` when any storescu fails (a store was refused or aborted).
    """
    with contextlib.ExitStack() as stack:
        procs = []
        t0 = time.perf_counter()
        for i, chunk in enumerate(_split(data.files, associations)):
            argv = ["storescu", "-aet", "BENCH", "-aec", running.ae_title, "127.0.0.1"]
            argv += [str(running.port), *map(str, chunk)]
            sink = stack.enter_context((logdir / f"storescu-{i}.log").open("wb"))
            env = nodelay_env()
            procs.append(subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT, env=env))
        codes = [proc.wait() for proc in procs]
    seconds = time.perf_counter() - t0
    if any(codes):
        tail = (logdir / "storescu-0.log").read_text(errors="replace")[-1500:]
        raise RuntimeError(f"storescu exit codes {codes}:\n{tail}")
    return seconds


def measure(receiver: str, data: DataSet, associations: int, workers: int, runs_dir: Path) -> Run:
    """Start a fresh receiver, push ``data`` once, stop it; return the measurement."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=f"{receiver}-", dir=runs_dir))
    try:
        with STARTERS[receiver](workdir, workers) as running:
            cpu_before = settled_cpu_seconds(running.pid)
            with RssSampler(running.pid) as rss:
                seconds = push(running, data, associations, workdir)
                cpu_after = settled_cpu_seconds(running.pid)
            stored = running.count_stored()
        n = len(data.files)
        if stored is not None and stored != n:
            raise RuntimeError(f"{receiver} stored {stored} of {n} instances")
        return Run(
            seconds=seconds,
            inst_per_s=n / seconds,
            mb_per_s=data.total_bytes / seconds / 1e6,
            cpu_s=cpu_after - cpu_before,
            peak_rss_mb=rss.peak_kb / 1024,
            stored=stored,
            process_rss_mb=rss.process_peak_kb / 1024,
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Report


@dataclass
class Row:
    receiver: str
    set: str
    associations: int
    runs: list[Run]
    ratio_vs_courier: float | None = None

    def median(self, attr: str) -> float:
        return float(statistics.median(getattr(r, attr) for r in self.runs))


def add_ratios(rows: list[Row]) -> None:
    courier = {
        (r.set, r.associations): r.median("inst_per_s") for r in rows if r.receiver == "courier"
    }
    for row in rows:
        base = courier.get((row.set, row.associations))
        row.ratio_vs_courier = row.median("inst_per_s") / base if base else None


def table(rows: list[Row]) -> str:
    head = (
        "| receiver | set | assoc | inst/s | MB/s | CPU s | peak RSS MB | "
        "one receiving process MB | inst/s vs Courier |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    lines = []
    for r in rows:
        ratio = f"{r.ratio_vs_courier:.2f}" if r.ratio_vs_courier is not None else "n/a"
        lines.append(
            f"| {r.receiver} | {r.set} | {r.associations} | {r.median('inst_per_s'):.0f} | "
            f"{r.median('mb_per_s'):.1f} | {r.median('cpu_s'):.2f} | "
            f"{r.median('peak_rss_mb'):.0f} | {r.median('process_rss_mb'):.0f} | {ratio} |"
        )
    return head + "\n".join(lines)


def _version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "missing"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else ""


def environment() -> dict[str, Any]:
    import pynetdicom

    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "dcmtk": _version(["storescu", "--version"]),
        "orthanc": _version([ORTHANC_BIN, "--version"]),
        "pynetdicom": pynetdicom.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


# --------------------------------------------------------------------------------------------
# CLI


def _csv(choices: Sequence[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"choose from {','.join(choices)}, not {text!r}")
        return items

    return parse


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only",
        type=_csv(RECEIVERS),
        default=list(RECEIVERS),
        help="receivers to run, comma-separated (default: all)",
    )
    parser.add_argument("--sets", type=_csv(("ct", "small")), default=["ct", "small"])
    parser.add_argument("--associations", type=_csv(("1", "4")), default=["1", "4"])
    parser.add_argument("--repeat", type=int, default=3, help="runs per cell (median shown)")
    parser.add_argument(
        "--courier-workers",
        type=int,
        default=os.cpu_count() or 2,
        help="scp.workers in Courier's config (default: number of CPUs)",
    )
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)

    if not have_dcmtk():
        print("dcmtk (storescu, storescp, echoscu) is required: apt-get install dcmtk")
        return 2
    sets = data_sets(args.sets)
    runs_dir = CACHE / "runs"
    rows: list[Row] = []
    skipped: dict[str, str] = {}
    failed: dict[str, str] = {}
    for receiver in args.only:
        for data in sets:
            for assoc in map(int, args.associations):
                if receiver in skipped:
                    continue
                runs: list[Run] = []
                for i in range(args.repeat):
                    try:
                        run = measure(receiver, data, assoc, args.courier_workers, runs_dir)
                    except ReceiverUnavailable as exc:
                        skipped[receiver] = str(exc)
                        print(f"SKIP {receiver}: {exc}", flush=True)
                        break
                    except RuntimeError as exc:  # a refused store: report it, go on
                        failed[f"{receiver} {data.name} assoc={assoc}"] = str(exc)
                        print(f"FAIL {receiver} {data.name} assoc={assoc}: {exc}", flush=True)
                        break
                    runs.append(run)
                    print(
                        f"{receiver:10} {data.name:5} assoc={assoc} run {i + 1}: "
                        f"{run.inst_per_s:7.1f} inst/s {run.mb_per_s:6.1f} MB/s "
                        f"cpu {run.cpu_s:6.2f} s rss {run.peak_rss_mb:6.0f} MB",
                        flush=True,
                    )
                if runs:
                    rows.append(Row(receiver, data.name, assoc, runs))
    add_ratios(rows)
    env = environment()
    print()
    print(
        f"Ingest, medians of {args.repeat} run(s); {env['cpus']} CPUs; "
        f"sets: "
        + ", ".join(f"{d.name} = {len(d.files)} files, {d.total_bytes / 1e6:.0f} MB" for d in sets)
    )
    print()
    print(table(rows))
    for receiver, why in skipped.items():
        print(f"\n{receiver} skipped: {why.splitlines()[0]}")
    for cell, why in failed.items():
        print(f"\n{cell} failed: {why.splitlines()[0]}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "environment": env,
                    "sets": {d.name: {"files": len(d.files), "bytes": d.total_bytes} for d in sets},
                    "repeat": args.repeat,
                    "skipped": skipped,
                    "failed": failed,
                    "results": [
                        {
                            **{k: v for k, v in asdict(r).items() if k != "runs"},
                            "median": {
                                a: r.median(a)
                                for a in (
                                    "inst_per_s",
                                    "mb_per_s",
                                    "cpu_s",
                                    "peak_rss_mb",
                                    "seconds",
                                )
                            },
                            "runs": [asdict(x) for x in r.runs],
                        }
                        for r in rows
                    ],
                },
                indent=2,
            )
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
