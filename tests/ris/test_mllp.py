"""The RIS listener end to end: ORU^R01 sent by the ``hl7`` library's own asyncio MLLP
client (``hl7.mllp.open_hl7_connection``) to a real :class:`ris.server.RisServer` on a
loopback port, answered by ACKs, recorded on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import hl7
import pytest
from hl7.mllp import open_hl7_connection
from sqlalchemy import func, select

from ris.oru import Header, ack
from ris.reports import ReportBook, current_reports, report_final
from ris.server import RisServer
from ris.settings import RisSettings
from store.content import ContentStore
from store.models import Report, Study
from tests.conftest import Database

STUDY_UID = "1.2.826.0.1.3680043.8.498.4242"
T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"


def oru(
    control: str = "MSG0001",
    status: str = "F",
    accession: str = "ACC1001",
    obx: list[str] | None = None,
    pid: str = "PAT-1",
    enc: str = "^~\\&",
    msh10: bool = True,
) -> str:
    obx = obx or [
        "OBX|1|TX|IMP^Impression||Findings: no fracture.~Right \\T\\ left lungs clear.||||||F",
        "OBX|2|FT|IMP^Impression||Size 12\\S\\3 mm\\.br\\Conclusion: normal.||||||F",
    ]
    control_field = control if msh10 else ""
    segs = [
        f"MSH|{enc}|RIS|HOSP|COURIER|HOSP|20260301090000||ORU^R01^ORU_R01|{control_field}|P"
        "|2.5.1|||||||UNICODE UTF-8",
        f"PID|1||{pid}^^^HOSP^MR||Test^Synthetic",
        f"OBR|1|PL1|{accession}|CTCHEST^CT Chest|||20260301083000|||||||||||||||"
        f"20260301085500|||{status}",
        *obx,
    ]
    return "\r".join(segs) + "\r"


def pdf_obx(data: bytes = PDF) -> list[str]:
    b64 = base64.b64encode(data).decode()
    return [f"OBX|1|ED|PDF^Report^L||RIS^AP^PDF^Base64^{b64}||||||F"]


async def _exchange(port: int, blocks: list[bytes]) -> list[hl7.Message]:
    reader, writer = await open_hl7_connection("127.0.0.1", port, limit=1_000_000)
    acks = []
    try:
        for block in blocks:
            writer.writeblock(block)
            await writer.drain()
            acks.append(await asyncio.wait_for(reader.readmessage(), 60))
    finally:
        writer.close()
        await writer.wait_closed()
    return acks


def send(port: int, *messages: str | bytes) -> list[hl7.Message]:
    blocks = [m if isinstance(m, bytes) else m.encode("utf-8") for m in messages]
    return asyncio.run(_exchange(port, blocks))


def code_of(ack: hl7.Message) -> str:
    return str(ack.segment("MSA")(1))


class Rig:
    def __init__(self, db: Database, root: Path, **settings: object) -> None:
        self.db = db
        self.content = ContentStore(root)
        self.content.prepare()
        self.book = ReportBook(db.sessions, self.content)
        self.settings = RisSettings(enabled=True, port=0, **settings)  # type: ignore[arg-type]
        self.server = RisServer(self.settings, self.book, port=0)
        self.server.start()

    def reports(self) -> list[Report]:
        with self.db.sessions() as s:
            return list(s.scalars(select(Report).order_by(Report.id)))

    def count(self) -> int:
        with self.db.sessions() as s:
            return int(s.scalar(select(func.count()).select_from(Report)) or 0)

    def files(self) -> list[Path]:
        folder = self.content.root / "reports"
        return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []

    def add_study(self, accession: str = "ACC1001", patient_id: str = "PAT-1") -> None:
        with self.db.sessions() as s, s.begin():
            s.add(
                Study(
                    study_uid=STUDY_UID,
                    patient_id=patient_id,
                    accession_number=accession,
                    first_received_at=T0,
                    last_received_at=T0,
                )
            )


@pytest.fixture
def rig(db: Database, tmp_path: Path) -> Iterator[Rig]:
    r = Rig(db, tmp_path / "data")
    yield r
    r.server.stop()


def test_text_report_is_acknowledged_and_stored_with_its_study(rig: Rig) -> None:
    rig.add_study()
    [ack] = send(rig.server.port, oru())
    assert code_of(ack) == "AA"
    assert str(ack.segment("MSA")(2)) == "MSG0001"
    assert str(ack.segment("MSH")(10)) and str(ack.segment("MSH")(9)) == "ACK^R01^ACK"
    [row] = rig.reports()
    assert (row.source, row.kind, row.status, row.study_instance_uid, row.accession_number) == (
        "hl7",
        "text",
        "final",
        STUDY_UID,
        "ACC1001",
    )
    assert row.title == "CT Chest"
    body = rig.content.path(row.body_path).read_text("utf-8")
    assert body == (
        "Findings: no fracture.\nRight & left lungs clear.\nSize 12^3 mm\nConclusion: normal."
    )
    assert row.raw_path is not None
    assert rig.content.path(row.raw_path).read_bytes() == oru().encode()
    assert (rig.content.path(row.body_path).stat().st_mode & 0o777) == 0o600


def test_base64_pdf_is_stored_as_received(rig: Rig) -> None:
    rig.add_study()
    [ack] = send(rig.server.port, oru(obx=pdf_obx()))
    assert code_of(ack) == "AA"
    [row] = rig.reports()
    assert row.kind == "pdf"
    assert rig.content.path(row.body_path).read_bytes() == PDF
    assert row.body_size == len(PDF)


def test_malformed_messages_are_refused_and_nothing_is_stored(rig: Rig) -> None:
    rig.add_study()
    huge = oru(obx=pdf_obx(b"%PDF-1.4\n" + b"0" * 10_000_000))  # ~13 MB, over 5 MB
    cases: list[tuple[str | bytes, str]] = [
        (oru().replace("PID|1", "pid|1"), "AR"),  # bad segment id
        (oru() + "garbage without a segment id\r", "AR"),
        (oru(enc="^^\\&"), "AR"),  # encoding characters not distinct
        (oru(enc="ab\\&"), "AR"),  # alphanumeric encoding characters
        (oru(msh10=False), "AR"),  # no MSH-10
        ("EVN|A01|20260301\r", "AR"),  # no MSH at all
        (oru().replace("ORU^R01^ORU_R01", "ADT^A01^ADT_A01"), "AR"),
        (b"MSH|^~\\&|RIS|H|C|H|2026||ORU^R01|M9|P|2.5.1\rOBX|1|TX|||caf\xe9\r", "AR"),  # not UTF-8
        (huge, "AR"),
        (oru(status="X"), "AE"),  # OBR-25 not F/C/P
        (oru(accession=""), "AE"),
        (oru(obx=["OBX|1|ED|PDF^Report^L||RIS^AP^PDF^Base64^%%%notbase64||||||F"]), "AE"),
        (oru(obx=pdf_obx(b"not a pdf at all")), "AE"),
        (oru(obx=["OBX|1|NM|SIZE||12||||||F"]), "AE"),  # no report text
        (oru(pid="SOMEONE-ELSE"), "AE"),  # the study is another patient's
    ]
    acks = send(rig.server.port, *[m for m, _ in cases], oru(control="GOOD1"))
    assert [code_of(a) for a in acks[:-1]] == [want for _, want in cases]
    for a in acks[:-1]:
        assert str(a.segment("ERR")(3)(1)(1))  # an HL7 table 0357 code
        assert str(a.segment("MSA")(3))  # and the reason
    # Each refusal echoed the control ID it could read.
    assert str(acks[4].segment("MSA")(2)) == ""
    assert str(acks[9].segment("MSA")(2)) == "MSG0001"
    # The listener is still there, on the same connection, and took the good one only.
    assert code_of(acks[-1]) == "AA"
    assert rig.count() == 1
    assert len(rig.files()) == 2  # its body and its raw message


def test_unframed_bytes_get_an_ar_and_the_next_message_goes_through(rig: Rig) -> None:
    async def go() -> list[bytes]:
        reader, writer = await open_hl7_connection("127.0.0.1", rig.server.port)
        writer.write(b"no start block\x1c\r")  # not an MLLP block
        await writer.drain()
        first = await asyncio.wait_for(reader.readblock(), 30)
        writer.writeblock(oru().encode())
        await writer.drain()
        second = await asyncio.wait_for(reader.readblock(), 30)
        writer.close()
        await writer.wait_closed()
        return [first, second]

    first, second = asyncio.run(go())
    assert b"MSA|AR|" in first and b"MSA|AA|MSG0001" in second


def test_preliminary_then_final(rig: Rig) -> None:
    rig.add_study()
    [a1] = send(rig.server.port, oru(control="P1", status="P"))
    with rig.db.sessions() as s:
        assert current_reports(s, [STUDY_UID]) == []
        assert not report_final(s, STUDY_UID)
    [a2] = send(rig.server.port, oru(control="F1", status="F"))
    [a3] = send(rig.server.port, oru(control="C1", status="C", obx=pdf_obx()))
    assert [code_of(a) for a in (a1, a2, a3)] == ["AA", "AA", "AA"]
    p, f, c = rig.reports()
    assert (p.status, f.status, c.status) == ("preliminary", "final", "corrected")
    assert (f.supersedes_id, c.supersedes_id) == (p.id, f.id)
    with rig.db.sessions() as s:
        assert report_final(s, STUDY_UID)
        assert [r.id for r in current_reports(s, [STUDY_UID])] == [c.id]


def test_a_retransmission_is_acknowledged_once_stored(rig: Rig) -> None:
    rig.add_study()
    acks = send(rig.server.port, oru(), oru())
    assert [code_of(a) for a in acks] == ["AA", "AA"]
    assert "duplicate" in str(acks[1].segment("MSA")(3))
    assert rig.count() == 1


def test_control_ids_are_never_sanitised_into_one(rig: Rig) -> None:
    # 'A/1' and 'A+1' were both 'A1' once: the second was answered "duplicate" and lost.
    rig.add_study()
    acks = send(
        rig.server.port,
        oru(control="A/1"),
        oru(control="A+1"),
        oru(control="A/1"),
        oru(control="X\\T\\Y#1"),
    )
    assert [code_of(a) for a in acks] == ["AA"] * 4
    assert "duplicate" not in str(acks[1].segment("MSA")(3))
    assert "duplicate" in str(acks[2].segment("MSA")(3))
    assert rig.count() == 3
    # MSA-2 is MSH-10 as sent, HL7-escaped where it holds our delimiters.
    assert [str(a.segment("MSA")(2)) for a in acks] == ["A/1", "A+1", "A/1", "X\\T\\Y#1"]
    odd = ack(Header(control_id="é|\r~1"), "AA", application="COURIER", control_id="Z")
    assert b"MSA|AA|\\XE9\\\\F\\\\X0D\\\\R\\1|" in odd


def test_a_report_before_its_study_waits_and_is_linked_when_it_arrives(rig: Rig) -> None:
    [ack] = send(rig.server.port, oru())
    assert code_of(ack) == "AA"
    [row] = rig.reports()
    assert row.study_instance_uid == ""
    assert rig.book.link_waiting("OBR-3", "utf-8") == 0
    rig.add_study()
    assert rig.book.link_waiting("OBR-3", "utf-8") == 1
    [row] = rig.reports()
    assert row.study_instance_uid == STUDY_UID


def test_a_waiting_report_of_another_patient_is_never_linked(rig: Rig) -> None:
    send(rig.server.port, oru(pid="SOMEONE-ELSE"))
    rig.add_study()
    assert rig.book.link_waiting("OBR-3", "utf-8") == 0
    [row] = rig.reports()
    assert row.study_instance_uid == ""


def test_a_report_without_a_patient_id_is_refused_and_nothing_is_stored(rig: Rig) -> None:
    rig.add_study()
    no_pid = "\r".join(seg for seg in oru().split("\r") if not seg.startswith("PID|")) + "\r"
    acks = send(rig.server.port, no_pid, oru(pid=""), oru(pid="~"))
    assert [code_of(a) for a in acks] == ["AE", "AE", "AE"]
    assert rig.count() == 0 and rig.files() == []


def test_a_study_without_a_patient_id_gets_no_report(rig: Rig) -> None:
    # Before the study: the report waits; once a study with no PatientID is there, it
    # is never linked (accession alone is not enough); a new one is refused AE.
    [ack] = send(rig.server.port, oru(control="W1"))
    assert code_of(ack) == "AA"
    rig.add_study(patient_id="")
    assert rig.book.link_waiting("OBR-3", "utf-8") == 0
    [row] = rig.reports()
    assert row.study_instance_uid == ""
    [ack] = send(rig.server.port, oru(control="W2"))
    assert code_of(ack) == "AE"
    assert rig.count() == 1


def test_accession_from_another_obr_field(db: Database, tmp_path: Path) -> None:
    rig = Rig(db, tmp_path / "data", accession_field="OBR-18")
    try:
        rig.add_study()
        msg = oru(accession="FILLER9").replace(
            "|||||||||||||||20260301085500", "|||||||||||ACC1001||||20260301085500"
        )
        [ack] = send(rig.server.port, msg)
        assert code_of(ack) == "AA"
        [row] = rig.reports()
        assert (row.accession_number, row.study_instance_uid) == ("ACC1001", STUDY_UID)
    finally:
        rig.server.stop()


def test_a_report_that_never_meets_its_study_is_deleted_after_the_retention(rig: Rig) -> None:
    send(rig.server.port, oru())
    assert rig.book.drop_waiting(30) == 0  # not yet
    [row] = rig.reports()
    assert rig.book.drop_waiting(30, now=row.received_at + timedelta(days=31)) == 1
    assert rig.count() == 0 and rig.files() == []


def test_the_librarys_blocking_client_too(rig: Rig) -> None:
    """``hl7.client.MLLPClient``, what the library's ``mllp_send`` command uses."""
    from hl7.client import MLLPClient

    rig.add_study()
    with MLLPClient("127.0.0.1", rig.server.port) as client:
        answer = client.send_message(oru(control="CLI1", obx=pdf_obx()))
    ack = hl7.parse(answer.strip(b"\x0b\x1c\r").decode())
    assert code_of(ack) == "AA" and str(ack.segment("MSA")(2)) == "CLI1"
    [row] = rig.reports()
    assert row.kind == "pdf"


def test_connection_cap_and_idle_timeout(db: Database, tmp_path: Path) -> None:
    rig = Rig(db, tmp_path / "data", max_connections=1, idle_timeout_s=0.5)
    try:

        async def go() -> tuple[bytes, bytes, bytes]:
            r1, w1 = await open_hl7_connection("127.0.0.1", rig.server.port)
            w1.writeblock(oru().encode())
            await w1.drain()
            first = bytes(await asyncio.wait_for(r1.readblock(), 30))
            r2, w2 = await open_hl7_connection("127.0.0.1", rig.server.port)
            refused = await asyncio.wait_for(r2.read(), 30)  # closed at once: b""
            w2.close()
            idle = await asyncio.wait_for(r1.read(), 30)  # closed once idle: b""
            w1.close()
            return first, refused, idle

        first, refused, idle = asyncio.run(go())
        assert b"MSA|AA|" in first and refused == b"" and idle == b""
    finally:
        rig.server.stop()


def test_a_store_failure_is_answered_ae_so_the_ris_sends_again(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy.exc import OperationalError

    def down(*_: object) -> None:
        raise OperationalError("INSERT", {}, Exception("database is locked"))

    monkeypatch.setattr(rig.book, "record_hl7", down)
    [ack] = send(rig.server.port, oru())
    assert code_of(ack) == "AE" and "could not be stored" in str(ack.segment("MSA")(3))
    monkeypatch.undo()
    [again] = send(rig.server.port, oru())
    assert code_of(again) == "AA" and rig.count() == 1
