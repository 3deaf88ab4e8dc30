"""Pull benchmark: a C-MOVE of the CT-300 set from Orthanc into Courier, against the same
C-MOVE into dcmtk's ``storescp`` (the anchor).

Usage::

    .venv/bin/python bench/pull.py [--repeat 3]

Orthanc (Debian's, default durable storage) is started once and given the synthetic
CT-300 set (cached under ``bench/.cache/``, see ``bench/ingest.py``) over its REST API.
For each run a fresh receiver is started (``courier serve`` on a generated config, or
``storescp --fork``), Orthanc learns it as a modality (``PUT /modalities``), and
:func:`scp.pacs.move_study` (Courier's own SCU) asks Orthanc to move the study there;
the time is the C-MOVE's wall time, from request to final response. Everything runs on
loopback with ``TCP_NODELAY=1`` for dcmtk and Orthanc. Prints each run with the
receiver's CPU seconds (its process tree; well below the wall time means it waited, for
the disk or for a core), then the load average, the medians of inst/s and the ratio
storescp / Courier (above 1: the anchor is faster). Asserts only that every instance
arrived.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from ingest import data_sets, run_courier, run_storescp, settled_cpu_seconds  # noqa: E402

from scp.pacs import move_study  # noqa: E402
from scp.pacs_settings import PacsSettings  # noqa: E402
from tests.orthanc import Orthanc  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    (ct,) = data_sets(["ct"])
    n = len(ct.files)
    results: dict[str, list[float]] = {"courier": [], "storescp": []}
    with tempfile.TemporaryDirectory(prefix="bench-pull-") as tmp:
        work = Path(tmp)
        with Orthanc(workdir=work, config={"DicomScuTimeout": 60}) as orthanc:
            orthanc.upload(ct.files)
            study_uid = orthanc.study_instance_uids()[0]
            for i in range(args.repeat):
                for name, start in (("courier", run_courier), ("storescp", run_storescp)):
                    runs = work / f"{name}-{i}"
                    runs.mkdir()
                    with start(runs, 1) as rx:
                        body = {"AET": rx.ae_title, "Host": "127.0.0.1", "Port": rx.port}
                        orthanc.request("PUT", f"/modalities/{name}", json.dumps(body).encode())
                        settings = PacsSettings(
                            ae_title=orthanc.aet,
                            host="127.0.0.1",
                            port=orthanc.dicom_port,
                            calling_ae_title=rx.ae_title,
                            move_destination=rx.ae_title,
                        )
                        cpu = settled_cpu_seconds(rx.pid)
                        outcome = move_study(settings, study_uid)
                        cpu = settled_cpu_seconds(rx.pid) - cpu
                        assert outcome.completed == n, outcome
                        results[name].append(n / outcome.elapsed_s)
                        print(
                            f"run {i + 1} {name:<8} {n / outcome.elapsed_s:7.1f} inst/s "
                            f"(receiver CPU {cpu:.2f} s in {outcome.elapsed_s:.2f} s)"
                        )
    courier = statistics.median(results["courier"])
    anchor = statistics.median(results["storescp"])
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\nC-MOVE of CT-300 ({n} instances) from Orthanc, median of {args.repeat}:")
    print(f"  (load average {load} on {os.cpu_count()} cores)")
    print(f"  courier   {courier:7.1f} inst/s")
    print(f"  storescp  {anchor:7.1f} inst/s")
    print(f"  ratio storescp / courier: {anchor / courier:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
