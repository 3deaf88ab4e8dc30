"""Disc image benchmark: ``courier export-iso`` against ``genisoimage`` on the same files.

Usage::

    .venv/bin/python bench/disc.py [--repeat 3] [--slices 300] [--json OUT]

Data (synthetic, made in a temporary folder): the 300-slice CT (512x512 16-bit, 157 MB),
stored through the real ingest into a SQLite node and attached to a request. Then, page
cache warm (one untimed run first), each tool in its own process:

- ``courier export-iso REF OUT --json --force`` (the whole command: imports, database,
  hashing, DICOMDIR, the image, its SHA-256 and the timeline event);
- ``genisoimage -quiet -J -V LABEL -o OUT DIR`` over the tree that image holds (extracted
  once with pycdlib: the same DICOMDIR, instances, READMEs and manifest), which only
  lays out and copies.

Measured: wall time and peak RSS (``ru_maxrss`` from ``wait4``); medians over
``--repeat`` runs. A benchmark, not a test: it asserts only that every run succeeded.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pycdlib  # noqa: E402
import pydicom  # noqa: E402
from sqlalchemy import select  # noqa: E402

from release.requests import RequestBook  # noqa: E402
from release.validation import RequestDraft  # noqa: E402
from scp.ingest import Ingest, Peer, Status  # noqa: E402
from store.catalog import Catalog  # noqa: E402
from store.content import ContentStore  # noqa: E402
from store.db import make_engine, make_sessions, migrate  # noqa: E402
from store.models import RequestStudy, Study, utcnow  # noqa: E402
from tests import synthetic  # noqa: E402

COURIER = ROOT / ".venv" / "bin" / "courier"


def _node(work: Path, slices: int) -> tuple[Path, str]:
    """A node folder with the CT stored and a request for it; (node.yaml, reference)."""
    data = work / "data"
    config = work / "node.yaml"
    content = ContentStore(data)
    content.prepare()
    url = f"sqlite:///{work / 'index.db'}"
    config.write_text(f"node:\n  data_dir: {data}\nstore:\n  database_url: '{url}'\n")
    engine = make_engine(url)
    migrate(engine)
    sessions = make_sessions(engine)
    ingest = Ingest(content, Catalog(sessions))
    paths = synthetic.make_ct_series(work / "ct", n_slices=slices)
    for path in paths:
        header = pydicom.dcmread(path, stop_before_pixels=True)
        spooled = content.spool / path.name
        shutil.move(path, spooled)
        peer = Peer("BENCH", "COURIER", "127.0.0.1")
        status = ingest.store(None, spooled, header.SOPClassUID, header.SOPInstanceUID, peer)
        assert status == Status.SUCCESS, status
    draft = RequestDraft.model_validate(
        {
            "patient_id": "SYN0001",
            "patient_name": "Synthetic^Patient",
            "patient_birth_date": "19700131",
            "recipient_email": "patient@example.org",
            "second_channel": "sms:+447911123456",
            "selection": [{"kind": "accession", "value": "ACC0001"}],
            "requested_by": "bench",
        }
    )
    req = RequestBook(sessions).create(draft, "bench")
    with sessions() as s, s.begin():
        for study in s.scalars(select(Study)):
            s.add(RequestStudy(request_id=req.id, study_id=study.id, matched_at=utcnow()))
    engine.dispose()
    return config, req.reference


def _run(argv: list[str]) -> tuple[float, int, str]:
    """Wall time (s), peak RSS (KB) and stdout of one process."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _pid, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    assert proc.stdout is not None and proc.stderr is not None
    out, err = proc.stdout.read(), proc.stderr.read()
    proc.stdout.close()
    proc.stderr.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0, err
    return wall, usage.ru_maxrss, out


def _extract(iso_path: Path, into: Path) -> None:
    iso = pycdlib.PyCdlib()
    iso.open(str(iso_path))
    try:
        for parent, _dirs, names in iso.walk(joliet_path="/"):
            for name in names:
                source = f"{parent.rstrip('/')}/{name}"
                target = into / source.lstrip("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                iso.get_file_from_iso(str(target), joliet_path=source)
    finally:
        iso.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="courier-bench-disc-") as tmp:
        work = Path(tmp)
        config, reference = _node(work, args.slices)
        ours = work / "courier.iso"
        export = [str(COURIER), "export-iso", reference, str(ours), "--json", "--force"]
        export += ["--config", str(config)]
        _run(export)  # warm the page cache, untimed
        tree = work / "tree"
        _extract(ours, tree)
        label = json.loads(_run(export)[2])["volume_id"]
        theirs = work / "genisoimage.iso"
        genisoimage = ["genisoimage", "-quiet", "-J", "-V", label, "-o", str(theirs), str(tree)]
        results: dict[str, dict[str, float]] = {}
        for name, argv in (("courier export-iso", export), ("genisoimage -J", genisoimage)):
            runs = [_run(argv) for _ in range(args.repeat)]
            results[name] = {
                "wall_s": statistics.median(r[0] for r in runs),
                "peak_rss_mb": statistics.median(r[1] for r in runs) / 1024,
            }
        results["courier export-iso"]["image_mb"] = ours.stat().st_size / 1e6
        results["genisoimage -J"]["image_mb"] = theirs.stat().st_size / 1e6
    base = results["genisoimage -J"]["wall_s"]
    print(f"{args.slices}-slice CT, median of {args.repeat} runs, page cache warm")
    print(f"{'tool':<22} {'wall s':>8} {'x geniso':>9} {'peak MB':>8} {'image MB':>9}")
    for name, r in results.items():
        print(
            f"{name:<22} {r['wall_s']:>8.2f} {r['wall_s'] / base:>9.1f} "
            f"{r['peak_rss_mb']:>8.0f} {r['image_mb']:>9.1f}"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
