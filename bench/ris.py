"""RIS listener benchmark: ORU^R01 reports acknowledged per second on one MLLP connection.

Usage::

    .venv/bin/python bench/ris.py [--text 200] [--pdf 50] [--pdf-kb 200]

A :class:`ris.server.RisServer` on a free loopback port over a fresh SQLite database and
content store in a temporary folder; the ``hl7`` library's asyncio client
(``open_hl7_connection``) sends the messages one after the other, each answered (AA)
before the next: text reports (OBX TX), then reports carrying a base64 PDF (OBX ED).
Prints messages per second for each. Synthetic data only.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hl7.mllp import open_hl7_connection

from ris.reports import ReportBook
from ris.server import RisServer
from ris.settings import RisSettings
from store.content import ContentStore
from store.db import make_engine, make_sessions, migrate


def message(control: str, obx: str) -> bytes:
    segs = [
        f"MSH|^~\\&|RIS|HOSP|COURIER|HOSP|20260301090000||ORU^R01^ORU_R01|{control}|P|2.5.1",
        "PID|1||BENCH-1^^^HOSP^MR||Bench^Synthetic",
        "OBR|1|PL1|ACCB1|CT^CT Chest|||20260301083000|||||||||||||||20260301085500|||F",
        obx,
    ]
    return ("\r".join(segs) + "\r").encode()


async def run(port: int, n: int, obx: str, tag: str) -> float:
    reader, writer = await open_hl7_connection("127.0.0.1", port)
    start = time.perf_counter()
    for i in range(n):
        writer.writeblock(message(f"{tag}{i}", obx))
        await writer.drain()
        ack = await reader.readblock()
        assert b"MSA|AA|" in ack, ack
    elapsed = time.perf_counter() - start
    writer.close()
    await writer.wait_closed()
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--text", type=int, default=200, help="text reports to send")
    ap.add_argument("--pdf", type=int, default=50, help="PDF reports to send")
    ap.add_argument("--pdf-kb", type=int, default=200, help="size of each PDF (KB)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="courier-bench-ris-") as tmp:
        root = Path(tmp)
        engine = make_engine(f"sqlite:///{root / 'index.db'}")
        migrate(engine)
        content = ContentStore(root / "data")
        content.prepare()
        book = ReportBook(make_sessions(engine), content)
        server = RisServer(RisSettings(enabled=True, port=0), book, port=0)
        server.start()
        try:
            text = "OBX|1|TX|IMP^Impression||No acute findings.~Lungs clear.||||||F"
            t = asyncio.run(run(server.port, args.text, text, "T"))
            print(f"text ORU^R01: {args.text} in {t:.2f} s = {args.text / t:.0f} msg/s")
            pdf = b"%PDF-1.4\n" + b"0" * (args.pdf_kb * 1000)
            obx = f"OBX|1|ED|PDF^Report^L||RIS^AP^PDF^Base64^{base64.b64encode(pdf).decode()}"
            t = asyncio.run(run(server.port, args.pdf, obx + "||||||F", "P"))
            print(
                f"{args.pdf_kb} KB PDF ORU^R01: {args.pdf} in {t:.2f} s = {args.pdf / t:.0f} msg/s"
            )
        finally:
            server.stop()
            engine.dispose()


if __name__ == "__main__":
    main()
