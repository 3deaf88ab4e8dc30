"""Right patient, end to end: dcmtk's storescu pushes two studies into a real node. One
carries the accession number of a request but another patient's ID and name (the issue's
"MISMATCH1" case, joined by the by-accession rule): it is held, its request stays
pending, no link email or code is queued for it, staff get the identity alert by SMTP,
and nothing of the patient goes to the node's log. The other, the right patient's,
still releases: its link email reaches the patient. Both databases."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sqlalchemy import select

from store.models import IdentityMismatch, Notification, ReleaseRequest, StudyDecision
from tests import synthetic
from tests.conftest import Database, have_dcmtk, need
from tests.delivery.test_end_to_end import RULES
from tests.release.helpers import courier, create_by_cli, wait_state
from tests.scu import rewrite, storescu
from tests.smtp_server import SmtpServer


def test_another_patients_study_is_held_and_the_right_one_released(
    node_factory: Any, db: Database, tmp_path: Path
) -> None:
    need("dcmtk", have_dcmtk())
    (tmp_path / "rules.yaml").write_text(RULES)
    with SmtpServer(security="none") as smtp:
        node = node_factory(
            db,
            extra_scp="stable_after_s: 1\nstability_check_s: 0.3",
            extra=(
                f"rules_file: {tmp_path / 'rules.yaml'}\n"
                "delivery:\n  urgent_check_s: 0.5\n  window: '01:00-01:01'\n"
                "  timezone: Pacific/Kiritimati\n  staff_email: staff@hospital.example\n"
                "email:\n  backend: smtp\n  host: 127.0.0.1\n"
                f"  port: {smtp.port}\n  security: none\n"
                "  from_address: imaging@hospital.example\n  from_name: St Elsewhere\n"
            ),
        )
        wrong = create_by_cli(node, "--accession", "MISMATCH1", "--urgency", "now")
        right = create_by_cli(
            node, "--accession", "GOOD0001", "--urgency", "now", "--issuer", "HOSP-A"
        )
        other = synthetic.make_small_instances(
            tmp_path / "other", n=2, n_series=1, patient_id="SYN0999", accession="MISMATCH1"
        )
        renamed = tmp_path / "renamed"
        renamed.mkdir()
        pushed = [rewrite(p, renamed / p.name, PatientName="OTHER^PERSON") for p in other]
        assert storescu(node.port, pushed).returncode == 0
        ours = synthetic.make_small_instances(
            tmp_path / "ours", n=2, n_series=1, patient_id="SYN0001", accession="GOOD0001"
        )
        assert storescu(node.port, ours).returncode == 0
        assert wait_state(node, right, "notified") == "notified"
        for _ in range(60):  # bounded: the relay polls every second
            if len(smtp.received) >= 2:
                break
            time.sleep(0.5)
        mails = {m.rcpt_tos[0]: m.message() for m in smtp.received}
    assert sorted(mails) == ["patient@example.org", "staff@hospital.example"]
    alert = mails["staff@hospital.example"]
    assert wrong in str(alert["Subject"]) and "patient identity differs" in str(alert["Subject"])
    assert courier(node, "request", "show", wrong)["state"] == "pending"
    assert courier(node, "request", "show", right)["patient_issuer"] == "HOSP-A"
    with db.sessions() as s:
        wrong_id = s.scalar(select(ReleaseRequest.id).where(ReleaseRequest.reference == wrong))
        kinds = sorted(
            s.scalars(select(Notification.kind).where(Notification.request_id == wrong_id))
        )
        [mismatch] = list(s.scalars(select(IdentityMismatch)))
        actions = sorted(s.scalars(select(StudyDecision.action)))
    assert kinds == ["alert_identity_mismatch"]  # no link email, no code
    assert mismatch.request_id == wrong_id and mismatch.fields == "patient_id"
    assert actions == ["hold", "release"]
    timeline = [e["reason"] for e in courier(node, "request", "show", wrong)["timeline"]]
    assert any("patient identity disagrees (patient_id)" in r for r in timeline), timeline
    log = node.log.read_text()
    for secret in ("SYN0999", "OTHER^PERSON", "SYN0001", "Synthetic"):
        assert secret not in log
