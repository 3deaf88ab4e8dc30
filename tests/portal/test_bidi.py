"""Header text on web pages is escaped and bidi-isolated: a StudyDescription holding a
right-to-left override (``scan<RLO>gpj.exe`` shows as "scanexe.jpg") or an embedding
or isolate that it never closes cannot reorder the text around it, on the staff pages
(request page, new-request study picker) and on the patient's files page."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from store.models import RequestStudy, Study, utcnow
from tests.conftest import Database
from tests.portal import patient_rig
from tests.portal.patient_rig import Rig, sign_in
from tests.portal.test_staff import Site, add_study, make_request, open_site
from tests.portal.test_staff import cheap_hashes as cheap_hashes  # autouse fixture

# The patient rig's fixtures, used by name.
rig = patient_rig.rig
built_package = patient_rig.built_package

DESCRIPTIONS = [
    pytest.param("scan\u202egpj.exe", id="rlo"),
    pytest.param("\u202bRIGHT\u202a left", id="rle-lre-unclosed"),
    pytest.param("\u2067iso\u2066late", id="rli-lri-unclosed"),
    pytest.param("<b>CT</b> & \u202e\"x'", id="markup-and-rlo"),
]


def _shown(page: str, value: str) -> bool:
    # Jinja's autoescape writes ' as &#39; and " as &#34;; html.escape as &#x27;/&quot;.
    escaped = str(html.escape(value, quote=False)).replace('"', "&#34;").replace("'", "&#39;")
    return f"<bdi>{escaped}</bdi>" in page


@pytest.fixture
def site(db: Database, tmp_path: Path) -> Iterator[Site]:
    yield from open_site(db, tmp_path)


@pytest.mark.parametrize("description", DESCRIPTIONS)
def test_staff_pages_isolate_header_text(site: Site, description: str) -> None:
    assert site.login().status_code == 303
    ref = make_request(site)
    uid = "1.2.826.0.1.3680043.10.777"
    add_study(site, uid, description=description, accession="ACC\u202e1")
    with site.db.sessions() as s, s.begin():
        study = s.scalar(select(Study).where(Study.study_uid == uid))
        request_id = site.events(ref)[0].request_id
        assert study is not None
        s.add(RequestStudy(request_id=request_id, study_id=study.id, matched_at=utcnow()))

    page = site.client.get(f"/staff/requests/{ref}")
    assert page.status_code == 200
    assert _shown(page.text, description), "description not isolated on the request page"
    assert _shown(page.text, "ACC\u202e1")
    assert "<b>CT</b>" not in page.text  # escaped, never markup

    picker = site.client.get("/staff/requests/new", params={"patient_id": "SYN-1"})
    assert picker.status_code == 200
    assert _shown(picker.text, description), "description not isolated in the study picker"
    assert "<b>CT</b>" not in picker.text
    # The form's fields, filled in from the studies' headers, take their own direction.
    assert re.search(r'<input id="patient-name" [^>]*dir="auto"', picker.text)
    # Every occurrence of the override sits inside an element of its own (<bdi>).
    for text in (page.text, picker.text):
        for at in [i for i, ch in enumerate(text) if ch == "\u202e"]:
            assert text.rfind("<bdi>", 0, at) > text.rfind("</bdi>", 0, at)


@pytest.mark.parametrize("description", DESCRIPTIONS)
def test_the_patient_files_page_isolates_header_text(rig: Rig, description: str) -> None:
    with rig.db.sessions() as s, s.begin():
        study = Study(
            study_uid="1.2.826.0.1.3680043.10.778",
            patient_id="SYN0002",
            patient_name="SYNTHETIC^PATIENT",
            study_date="20260301",
            study_description=description,
            modalities="C\u202eT",
            state="stable",
            instance_count=1,
            size_bytes=1000,
            first_received_at=rig.clock(),
            last_received_at=rig.clock(),
        )
        s.add(study)
        s.flush()
        study_id = study.id
    p = rig.patient(study_ids=[study_id])
    client = rig.client()
    sign_in(rig, client, p.token)
    files = client.get("/files")
    assert files.status_code == 200
    assert _shown(files.text, description), "description not isolated on the files page"
    assert "<b>CT</b>" not in files.text
    for at in [i for i, ch in enumerate(files.text) if ch == "\u202e"]:
        assert files.text.rfind("<bdi>", 0, at) > files.text.rfind("</bdi>", 0, at)
