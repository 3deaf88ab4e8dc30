"""read_oru on mangled messages: every outcome is a report or a Refused (AE/AR), never
another exception (a seeded, bounded set of mutations of a valid message)."""

from __future__ import annotations

import random

from ris.oru import Refused, ack, read_header, read_oru
from tests.ris.test_mllp import oru, pdf_obx

SEPARATORS = b"|^~\\&\r\n\x0b\x1c\x00"


def _mutations(seed: int, count: int) -> list[bytes]:
    rng = random.Random(seed)
    bases = [oru().encode(), oru(obx=pdf_obx()).encode()]
    out = []
    for _ in range(count):  # bounded
        data = bytearray(rng.choice(bases))
        for _ in range(rng.randint(1, 6)):
            pos = rng.randrange(len(data))
            op = rng.randrange(4)
            if op == 0:
                data[pos] = rng.choice(SEPARATORS)
            elif op == 1:
                data[pos] = rng.randrange(256)
            elif op == 2:
                del data[pos : pos + rng.randint(1, 40)]
            else:
                data[pos:pos] = bytes(rng.choice(SEPARATORS) for _ in range(rng.randint(1, 5)))
        out.append(bytes(data))
    return out


def test_mangled_messages_are_reports_or_refusals() -> None:
    outcomes = {"report": 0, "AE": 0, "AR": 0}
    for raw in _mutations(seed=13, count=3000):
        try:
            read_oru(raw, accession_field="OBR-3", default_charset="utf-8")
            outcomes["report"] += 1
        except Refused as refused:
            outcomes[refused.code] += 1
            header = refused.header or read_header(raw)
            answer = ack(header, refused.code, application="COURIER", control_id="X")
            assert answer.startswith(b"MSH|^~\\&|COURIER|") and b"\rMSA|" in answer
            assert all(32 <= b < 127 or b == 13 for b in answer)  # plain ASCII, no injection
    assert outcomes["AR"] and outcomes["AE"] and outcomes["report"]
