"""This session's features together in one real node (``courier serve``), as a user meets
them: a release rule that waits for the final report (``release: {until: report_final,
max_wait: 7d}``) and sends it with the images (``reports: with_images``); dcmtk's storescu
pushes a CT and a preliminary SR; the ready request is held, nothing goes out; the RIS
sends the final ``ORU^R01`` over MLLP (the hl7 library's blocking client), acknowledged
``AA``; the hold ends, the package is built with ``REPORT/``, ``VIEWER/`` and a DICOMDIR;
the link email reaches a real aiosmtpd server and the code the SMS file outbox; the
patient signs in over HTTP, the files page lists the report and the View link, the viewer
draws image 1, the access history shows the sign-in and the download; a corrected report
after delivery emails the patient that an updated report was added. Both databases."""

from __future__ import annotations

import io
import re
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import hl7
import pydicom
from hl7.client import MLLPClient
from sqlalchemy import func, select

from release.reports import REPORT_CLASSES
from store.models import Notification, Package, Report, ReportDelivery
from tests import synthetic
from tests.conftest import Database, free_port, have_dcmtk, need
from tests.release.helpers import courier, create_by_cli, wait_state
from tests.ris.reportdata import make_sr
from tests.scu import storescu
from tests.smtp_server import SmtpServer
from tests.test_quickstart import Browser

ACC = "ACC0101"
RULES = """\
rules:
  - name: ct-by-accession
    when: {AccessionNumber: {present: true}}
    action: release
    join: {accession: AccessionNumber}
    release:
      until: report_final
      max_wait: 7d
    reports: with_images
  - name: everything-else
    action: hold
"""

T = TypeVar("T")


def oru(control: str, status: str, text: str) -> str:
    """A synthetic text ``ORU^R01`` for the request's accession (status F, C or P)."""
    segs = [
        f"MSH|^~\\&|RIS|HOSP|COURIER|HOSP|20260301090000||ORU^R01^ORU_R01|{control}|P|2.5.1",
        "PID|1||SYN0001^^^HOSP^MR||Synthetic^Patient",
        f"OBR|1|PL1|{ACC}|CT^CT Chest|||20260301083000|||||||||||||||20260301085500|||{status}",
        f"OBX|1|TX|IMP^Impression||{text}||||||{status}",
    ]
    return "\r".join(segs) + "\r"


def mllp(port: int, message: str) -> hl7.Message:
    """Send one message with ``hl7.client.MLLPClient``; the parsed ACK."""
    for _ in range(100):  # bounded: the listener starts with the node
        try:
            client = MLLPClient("127.0.0.1", port)
            break
        except OSError:
            time.sleep(0.1)
    with client:
        client.socket.settimeout(60)
        answer = client.send_message(message)
    return hl7.parse(answer.strip(b"\x0b\x1c\r").decode())


def wait_for(check: Callable[[], T | None], rounds: int = 120) -> T | None:
    for _ in range(rounds):  # bounded: rounds x 0.5 s
        value = check()
        if value:
            return value
        time.sleep(0.5)
    return check()


def test_report_holds_the_release_then_goes_with_the_images_and_the_viewer(
    node_factory: Any, db: Database, tmp_path: Path
) -> None:
    need("dcmtk", have_dcmtk())
    (tmp_path / "rules.yaml").write_text(RULES)
    ris_port = free_port()
    with SmtpServer(security="none") as smtp:
        node = node_factory(
            db,
            extra_scp="stable_after_s: 1\nstability_check_s: 0.3",
            extra=(
                f"rules_file: {tmp_path / 'rules.yaml'}\n"
                "delivery:\n  urgent_check_s: 0.5\n  window: '01:00-01:01'\n"
                "  timezone: Pacific/Kiritimati\n"
                "email:\n  backend: smtp\n  host: 127.0.0.1\n"
                f"  port: {smtp.port}\n  security: none\n"
                "  from_address: imaging@hospital.example\n  from_name: St Elsewhere\n"
                f"ris:\n  enabled: true\n  host: 127.0.0.1\n  port: {ris_port}\n"
            ),
        )
        ref = create_by_cli(node, "--accession", ACC, "--urgency", "now")

        # 1. The PACS pushes the CT and a preliminary SR: ready, but held for the report.
        ct = synthetic.make_ct_series(tmp_path / "ct", n_slices=4, rows=32, cols=32, accession=ACC)
        study_uid = str(pydicom.dcmread(ct[0]).StudyInstanceUID)
        draft, _ = make_sr(
            tmp_path,
            study_uid,
            patient_id="SYN0001",
            accession=ACC,
            completion="PARTIAL",
            verification="UNVERIFIED",
        )
        assert storescu(node.port, [*ct, draft]).returncode == 0
        assert wait_state(node, ref, "ready") == "ready"

        def held() -> dict[str, Any] | None:
            shown: dict[str, Any] = courier(node, "request", "show", ref)
            return shown if shown["hold"] == "report" else None

        shown = wait_for(held)
        assert shown is not None, "the request was not held for the report"
        assert shown["state"] == "ready"
        time.sleep(2)  # a few urgent checks: nothing may go out (not a timing assertion)
        assert courier(node, "request", "show", ref)["state"] == "ready"
        with db.sessions() as s:
            assert s.scalar(select(func.count()).select_from(Package)) == 0
            assert s.scalar(select(func.count()).select_from(Notification)) == 0
        assert smtp.received == []

        # 2. The RIS sends the final report: AA, the hold ends, the package goes out.
        ack = mllp(ris_port, oru("F1", "F", "No acute abnormality."))
        assert str(ack.segment("MSA")(1)) == "AA" and str(ack.segment("MSA")(2)) == "F1"
        assert wait_state(node, ref, "notified") == "notified"
        mails = wait_for(lambda: list(smtp.received) or None)
        assert mails is not None, "no link email"
        [mail] = mails
        assert mail.rcpt_tos == ["patient@example.org"]
        text = mail.message().get_body(("plain",)).get_content()  # type: ignore[union-attr]
        link = re.search(r"https?://[^\s]+/d/[A-Za-z0-9_-]{43}", text)
        assert link is not None, "no link in the email"
        timeline = [e["reason"] for e in courier(node, "request", "show", ref)["timeline"]]
        assert any("waiting for the final" in r for r in timeline), timeline
        assert "final report received" in timeline, timeline

        with db.sessions() as s:
            package = s.scalars(select(Package)).one()
            sent = list(
                s.scalars(
                    select(Report.source).join(
                        ReportDelivery, ReportDelivery.report_id == Report.id
                    )
                )
            )
        assert sent == ["hl7"]  # the final HL7 report, never the preliminary SR

        # 3. The patient opens the link, asks for the code (SMS file outbox), signs in.
        browser = Browser(f"http://127.0.0.1:{node.web_port}")
        try:
            opened = browser.request("GET", "/d/" + link.group(0).rsplit("/d/", 1)[1])
            assert opened.status_code == 303 and opened.headers["location"] == "/access"
            assert browser.post_form("/access/code").status_code == 303
            outbox = node.data_dir / "outbox"

            def the_code() -> str | None:
                for sms in sorted(outbox.glob("*.txt")):
                    body = sms.read_text().split("\n\n", 1)[-1]
                    found = re.search(r"\b(\d{6})\b", body)
                    if found:
                        return found.group(1)
                return None

            code = wait_for(the_code, rounds=60)
            assert code is not None, "no code in the SMS outbox"
            verified = browser.post_form("/access/verify", code=code)
            assert verified.status_code == 303 and verified.headers["location"] == "/files"

            files = browser.request("GET", "/files")
            assert files.status_code == 200
            report = re.search(r'id="report-1" href="([^"]+)"', files.text) or re.search(
                r'href="([^"]+)" id="report-1"', files.text
            )
            assert report is not None, "the files page lists no report"
            assert 'id="report-2"' not in files.text  # the preliminary SR is never sent
            page = browser.request("GET", report.group(1))
            assert page.status_code == 200 and "No acute abnormality." in page.text
            view = re.search(r'id="view-study-1" href="([^"]+)"', files.text)
            assert view is not None, "the files page has no View link"
            viewer = browser.request("GET", view.group(1))
            assert viewer.status_code == 200
            picture = browser.request("GET", "/files/view/1/1/1/image")
            assert picture.status_code == 200
            assert picture.headers["content-type"] == "image/jpeg"
            assert picture.content[:2] == b"\xff\xd8"

            download = re.search(r'id="download-all" href="([^"]+)"', files.text)
            assert download is not None
            got = browser.request("GET", download.group(1))
            assert got.status_code == 200
            with zipfile.ZipFile(io.BytesIO(got.content)) as z:
                names = z.namelist()
            assert "DICOMDIR" in names and "VIEWER/index.html" in names, names
            reports = [n for n in names if n.startswith("REPORT/")]
            assert reports == ["REPORT/RPT001.HTM"], reports
            dicom = [n for n in names if n.startswith("PT")]  # PT*/ST*/SE*/IM*
            assert len(dicom) == 4, dicom  # the CT only: no preliminary SR instance

            # The download is recorded once its last byte was handed to the connection,
            # which may be just after the client has it all: read the page until it shows.
            def history() -> str | None:
                page = browser.request("GET", "/files").text
                found = re.search(r'<ol class="history" id="history".*?</ol>', page, re.S)
                return found.group(0) if found and "Downloaded" in found.group(0) else None

            entries = wait_for(history, rounds=20)
            assert entries is not None, "the access history lists no download"
            assert "Opened with the code" in entries and "Images viewed" in entries

            # "Open in your own viewer": a DICOMweb key finds the study and its instances.
            page_now = browser.request("GET", "/files").text
            csrf = re.search(r'name="csrf" value="([^"]+)"', page_now)
            assert csrf is not None
            shown_key = browser.request("POST", "/files/dicomweb", data={"csrf": csrf.group(1)})
            assert shown_key.status_code == 200, shown_key.text[:500]
            token = re.search(r'id="dicomweb-token">([^<]+)<', shown_key.text)
            assert token is not None, "no DICOMweb key shown"
            bearer = {"Authorization": f"Bearer {token.group(1)}"}
            studies = browser.client.get("/dicomweb/studies", headers=bearer)
            assert studies.status_code == 200, studies.text[:500]
            assert [x["0020000D"]["Value"][0] for x in studies.json()] == [study_uid]
            found = browser.client.get(f"/dicomweb/studies/{study_uid}/instances", headers=bearer)
            # The 4 CT images; the preliminary SR is withheld by the report policy.
            assert found.status_code == 200 and len(found.json()) == 4, len(found.json())
            classes = {x["00080016"]["Value"][0] for x in found.json()}
            assert not classes & set(REPORT_CLASSES), classes

            # 4. A corrected report after delivery: the patient is told by email, and the
            # files page of the same link offers the corrected report.
            ack = mllp(ris_port, oru("C1", "C", "Corrected: small nodule."))
            assert str(ack.segment("MSA")(1)) == "AA"

            def update_email() -> list[Any] | None:
                found = [
                    m.message()
                    for m in smtp.received
                    if "updated report" in str(m.message()["Subject"])
                ]
                return found or None

            updates = wait_for(update_email)
            assert updates is not None, "no updated-report email"
            [update] = updates
            assert "nodule" not in update.as_string()  # no finding in an email
            after = browser.request("GET", "/files").text
            links = re.findall(r'<a href="([^"]+)" id="report-\d+"', after)
            texts = [browser.request("GET", href).text for href in links]
            assert any("Corrected: small nodule." in t for t in texts), links
        finally:
            browser.close()
    assert package.instances == 4  # the CT's 4 images; the preliminary SR withheld
    log = node.log.read_text()
    for secret in ("SYN0001", "Synthetic", "patient@example.org", code):
        assert secret not in log
