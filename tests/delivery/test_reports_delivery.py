"""Reports with the images, in a real node (``courier serve``): the RIS sends an
``ORU^R01`` with the library's own MLLP client before the study arrives, the PACS pushes
the study and an SR with dcmtk's storescu, the package holds ``REPORT/``; then a
corrected report after delivery becomes a new part, an email to the patient and a line
on the timeline. With ``delivery.reports: never`` nothing of it goes out."""

from __future__ import annotations

import asyncio
import io
import json
import time
import zipfile
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import pycdlib
import pydicom
from hl7.mllp import open_hl7_connection
from sqlalchemy import select

from store.models import Package, Report, ReportDelivery
from tests import synthetic
from tests.conftest import Database, free_port, have_dcmtk, need
from tests.delivery.test_end_to_end import RULES
from tests.release.helpers import courier, create_by_cli, wait_state
from tests.ris.reportdata import make_sr
from tests.scu import storescu

ACC = "ACC0001"


def oru(control: str, status: str, text: str) -> bytes:
    segs = [
        f"MSH|^~\\&|RIS|HOSP|COURIER|HOSP|20260301090000||ORU^R01^ORU_R01|{control}|P|2.5.1",
        "PID|1||SYN0001^^^HOSP^MR||Synthetic^Patient",
        f"OBR|1|PL1|{ACC}|CT^CT Chest|||20260301083000|||||||||||||||20260301085500|||{status}",
        f"OBX|1|TX|IMP^Impression||{text}||||||{status}",
    ]
    return ("\r".join(segs) + "\r").encode()


def send(port: int, message: bytes) -> bytes:
    async def go() -> bytes:
        for _ in range(100):  # bounded: the listener starts with the node
            try:
                reader, writer = await open_hl7_connection("127.0.0.1", port)
                break
            except OSError:
                await asyncio.sleep(0.1)
        writer.writeblock(message)
        await writer.drain()
        ack = bytes(await asyncio.wait_for(reader.readblock(), 60))
        writer.close()
        await writer.wait_closed()
        return ack

    return asyncio.run(go())


def _wait(check: Any, rounds: int = 120) -> Any:
    for _ in range(rounds):  # bounded: rounds x 0.5 s
        value = check()
        if value:
            return value
        time.sleep(0.5)
    return check()


def _node(node_factory: Any, db: Database, tmp_path: Path, reports: str) -> tuple[Any, int]:
    need("dcmtk", have_dcmtk())
    (tmp_path / "rules.yaml").write_text(RULES)
    ris_port = free_port()
    node = node_factory(
        db,
        extra_scp="stable_after_s: 1\nstability_check_s: 0.3",
        extra=(
            f"rules_file: {tmp_path / 'rules.yaml'}\n"
            "delivery:\n  urgent_check_s: 0.5\n  window: '01:00-01:01'\n"
            f"  timezone: Pacific/Kiritimati\n  reports: {reports}\n"
            f"ris:\n  enabled: true\n  host: 127.0.0.1\n  port: {ris_port}\n"
        ),
    )
    return node, ris_port


def test_reports_go_with_the_images_and_a_correction_becomes_a_new_part(
    node_factory: Any, db: Database, tmp_path: Path
) -> None:
    node, ris_port = _node(node_factory, db, tmp_path, "with_images")
    ref = create_by_cli(node, "--accession", ACC, "--urgency", "now")
    # The RIS is first: the report waits for its study.
    assert b"MSA|AA|F1" in send(ris_port, oru("F1", "F", "No fracture. <b>bold?</b>"))
    ct = synthetic.make_ct_series(tmp_path / "ct", n_slices=3, rows=32, cols=32)
    study_uid = str(pydicom.dcmread(ct[0]).StudyInstanceUID)
    sr, _ = make_sr(tmp_path, study_uid, patient_id="SYN0001", accession=ACC)
    assert storescu(node.port, [*ct, sr]).returncode == 0
    assert wait_state(node, ref, "notified") == "notified"

    with db.sessions() as s:
        package = s.scalars(select(Package)).one()
        reports = list(s.scalars(select(Report).order_by(Report.id)))
        delivered = list(s.scalars(select(ReportDelivery)))
    assert {r.source for r in reports} == {"hl7", "dicom"}
    assert all(r.study_instance_uid == study_uid for r in reports)
    assert len(delivered) == 2
    [part] = json.loads(package.parts)
    with zipfile.ZipFile(node.data_dir / "packages" / ref / part["name"]) as z:
        names = z.namelist()
        pages = [z.read(n).decode() for n in names if n.startswith("REPORT/")]
        manifest = json.loads(z.read("MANIFEST.json"))
    assert sorted(n for n in names if n.startswith("REPORT/")) == [
        "REPORT/RPT001.HTM",
        "REPORT/RPT002.HTM",
    ]
    assert {f["path"] for f in manifest["files"]} >= {"REPORT/RPT001.HTM", "REPORT/RPT002.HTM"}
    assert any("No fracture. &lt;b&gt;bold?&lt;/b&gt;" in p for p in pages)
    assert any("12.5 mm" in p for p in pages)  # the SR's measurement

    # A preliminary after delivery changes nothing; a correction is a new part + email.
    assert b"MSA|AA|P2" in send(ris_port, oru("P2", "P", "draft"))
    assert b"MSA|AA|C1" in send(ris_port, oru("C1", "C", "Corrected: small fracture."))

    def two_parts() -> list[dict[str, Any]] | None:
        with db.sessions() as s:
            parts = json.loads(s.scalars(select(Package)).one().parts)
        return parts if len(parts) == 2 else None

    parts = _wait(two_parts)
    assert parts is not None, "no report part was added"
    assert parts[1]["name"] == f"{ref}-report-1.zip"
    with zipfile.ZipFile(node.data_dir / "packages" / ref / parts[1]["name"]) as z:
        [name] = [n for n in z.namelist() if n.startswith("REPORT/")]
        assert name == "REPORT/UPD01N01.HTM"
        page = z.read(name).decode()
    assert "Corrected: small fracture." in page and "draft" not in page
    timeline = [e["reason"] for e in courier(node, "request", "show", ref)["timeline"]]
    assert any("updated report available" in r for r in timeline)

    def update_email() -> list[Any]:
        out = []
        for eml in (node.data_dir / "outbox").glob("*.eml"):
            msg = message_from_bytes(eml.read_bytes(), policy=policy.default)
            if "updated report" in str(msg["Subject"]):
                out.append(msg)
        return out

    [mail] = _wait(update_email)
    assert "/d/" in mail.get_body(("plain",)).get_content()
    assert "fracture" not in mail.as_string()  # no finding in the email

    # The disc carries the reports the patient got: the corrected one replaces the first.
    iso = tmp_path / "disc.iso"
    courier(node, "export-iso", ref, str(iso))
    disc = pycdlib.PyCdlib()
    disc.open(str(iso))
    try:
        names = sorted(
            child.file_identifier().decode()
            for child in disc.list_children(iso_path="/REPORT")
            if child.is_file()
        )
        out = io.BytesIO()
        disc.get_file_from_iso_fp(out, iso_path="/REPORT/RPT002.HTM;1")
    finally:
        disc.close()
    assert names == ["RPT001.HTM;1", "RPT002.HTM;1"]  # the SR, and the corrected text
    assert "Corrected: small fracture." in out.getvalue().decode()


def test_never_sends_no_report(node_factory: Any, db: Database, tmp_path: Path) -> None:
    node, ris_port = _node(node_factory, db, tmp_path, "never")
    ref = create_by_cli(node, "--accession", ACC, "--urgency", "now")
    assert b"MSA|AA|F1" in send(ris_port, oru("F1", "F", "No fracture."))
    ct = synthetic.make_ct_series(tmp_path / "ct", n_slices=3, rows=32, cols=32)
    assert storescu(node.port, ct).returncode == 0
    assert wait_state(node, ref, "notified") == "notified"
    assert b"MSA|AA|C1" in send(ris_port, oru("C1", "C", "Corrected."))
    time.sleep(2)  # a few sweeps: nothing must be added (not a timing assertion)
    with db.sessions() as s:
        [package] = s.scalars(select(Package)).all()
        assert s.scalars(select(ReportDelivery)).all() == []
    [part] = json.loads(package.parts)
    with zipfile.ZipFile(node.data_dir / "packages" / ref / part["name"]) as z:
        assert not [n for n in z.namelist() if n.startswith("REPORT/")]
