"""The whole chain in a real node: dcmtk's storescu pushes a study → the request becomes
ready → the urgent path packages it → the link email reaches a real aiosmtpd server; and
the nightly path through `courier deliver --now`, whose link email lands in the file
outbox of the embedded defaults. Then `kill -9` of a delivery mid-packaging: no
half-built ZIP is ever recorded or served, and the next run rebuilds it."""

from __future__ import annotations

import hashlib
import json
import re
import signal
import subprocess
import time
import zipfile
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

from sqlalchemy import select

from delivery.grants import GrantKeys
from store.models import Grant, Package
from tests import synthetic
from tests.conftest import COURIER, Database, have_dcmtk, need
from tests.dcmtk import DcmtkStorescp
from tests.release.helpers import courier, create_by_cli, wait_state
from tests.scu import storescu
from tests.smtp_server import SmtpServer

RULES = """\
rules:
  - name: by-accession
    when: {AccessionNumber: {present: true}}
    action: release
    join: {accession: AccessionNumber}
  - name: everything-else
    action: hold
"""


def _link_token(text: str) -> str:
    match = re.search(r"/d/([A-Za-z0-9_-]{43})", text)
    assert match, "no link in the email"
    return match.group(1)


def test_push_to_email_with_the_link(node_factory: Any, db: Database, tmp_path: Path) -> None:
    need("dcmtk", have_dcmtk())
    (tmp_path / "rules.yaml").write_text(RULES)
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
            ),
        )
        ref = create_by_cli(node, "--accession", "ACC0001", "--urgency", "now")
        ct = synthetic.make_ct_series(tmp_path / "ct", n_slices=5, rows=32, cols=32)
        assert storescu(node.port, ct).returncode == 0
        assert wait_state(node, ref, "notified") == "notified"
        for _ in range(60):  # bounded: the relay polls every second
            if smtp.received:
                break
            time.sleep(0.5)
        [mail] = smtp.received
    msg = mail.message()
    assert mail.rcpt_tos == ["patient@example.org"]
    assert "Synthetic" not in str(msg["Subject"]) and "SYN0001" not in str(msg["Subject"])
    text = msg.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    token = _link_token(text)
    with db.sessions() as s:
        grant = s.scalars(select(Grant)).one()
        package = s.scalars(select(Package)).one()
    assert grant.token_hash == GrantKeys.token_hash(token)  # only the hash is stored
    assert (package.instances, package.studies) == (5, 1)
    [part] = json.loads(package.parts)
    zip_path = node.data_dir / "packages" / ref / part["name"]
    assert hashlib.sha256(zip_path.read_bytes()).hexdigest() == part["sha256"]
    with zipfile.ZipFile(zip_path) as z:
        names = z.namelist()
    assert "DICOMDIR" in names and "README.html" in names and "MANIFEST.json" in names
    timeline = [e["reason"] for e in courier(node, "request", "show", ref)["timeline"]]
    assert any("link email sent" in r for r in timeline)


def test_deliver_now_on_the_embedded_defaults_and_a_crash_mid_packaging(
    node_factory: Any, tmp_path: Path
) -> None:
    """File outboxes (the defaults); `deliver --now` killed while packaging a large
    study leaves no final ZIP and no package row; the next run rebuilds and notifies."""
    need("dcmtk", have_dcmtk())
    (tmp_path / "rules.yaml").write_text(RULES)
    node = node_factory(
        extra_scp="stable_after_s: 1\nstability_check_s: 0.3",
        extra=(
            f"rules_file: {tmp_path / 'rules.yaml'}\n"
            # A window that is never open during the test: only `deliver --now` delivers.
            "delivery:\n  window: '01:00-01:01'\n  timezone: Pacific/Kiritimati\n"
        ),
    )
    ref = create_by_cli(node, "--accession", "ACC0002")
    ct = synthetic.make_ct_series(tmp_path / "ct", n_slices=120, accession="ACC0002")
    assert storescu(node.port, ct).returncode == 0
    assert wait_state(node, ref, "ready") == "ready"
    node.stop()  # nothing else packages meanwhile

    packages = node.data_dir / "packages" / ref
    proc = subprocess.Popen(
        [str(COURIER), "deliver", "--now", "--json", "--config", str(node.config)],
        env=node.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # Bounded (30 s: the command starts, then previews render in a child before the
        # ZIP is written): until a partial file shows, then kill at once.
        seen = False
        for _ in range(3000):
            if packages.is_dir() and any(p.name.endswith(".partial") for p in packages.iterdir()):
                seen = True
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(30)
    assert seen, "deliver --now wrote no partial package within 30 s"
    assert not [p for p in packages.iterdir() if p.name.endswith(".zip")]
    assert courier(node, "request", "show", ref)["state"] == "packaging"

    # The node restarts: the half-built files are swept, the request is ready again...
    node2 = node_factory(
        extra_scp="stable_after_s: 1\nstability_check_s: 0.3",
        extra=(
            f"rules_file: {tmp_path / 'rules.yaml'}\n"
            "delivery:\n  window: '01:00-01:01'\n  timezone: Pacific/Kiritimati\n"
        ),
    )
    assert wait_state(node2, ref, "ready") == "ready"
    assert not [p for p in packages.iterdir() if p.name.endswith(".partial")]
    node2.stop()
    # ...and the next batch rebuilds it and queues the link in the file outbox.
    done = courier(node2, "deliver", "--now")
    assert done["notified"] == [ref] and done["messages_sent"] == 1
    [eml] = list((node2.data_dir / "outbox").glob("*.eml"))
    msg = message_from_bytes(eml.read_bytes(), policy=policy.default)
    assert msg["To"] == "patient@example.org"
    _link_token(msg.get_body(("plain",)).get_content())  # type: ignore[union-attr]
    [zip_path] = [p for p in packages.iterdir() if p.name.endswith(".zip")]
    with zipfile.ZipFile(zip_path) as z:
        assert sum(1 for n in z.namelist() if n.startswith("DICOM/") or "/" in n) >= 120


def test_push_then_send_on_to_another_hospital(
    node_factory: Any, db: Database, tmp_path: Path
) -> None:
    """A request to a DICOM destination in a running node: the study pushed in goes out by
    C-STORE to dcmtk's storescp (the receiving hospital), every instance acknowledged and
    recorded, and the request ends `delivered`."""
    need("dcmtk", have_dcmtk())
    (tmp_path / "rules.yaml").write_text(RULES)
    node = node_factory(
        db,
        extra_scp="stable_after_s: 1\nstability_check_s: 0.3",
        extra=(
            f"rules_file: {tmp_path / 'rules.yaml'}\n"
            "delivery:\n  urgent_check_s: 0.5\n  window: '01:00-01:01'\n"
            "  timezone: Pacific/Kiritimati\n"
        ),
    )
    with DcmtkStorescp("OTHERHOSP") as other:
        req = courier(
            node, "request", "create",
            "--patient-id", "SYN0001", "--patient-name", "Synthetic^Patient",
            "--birth-date", "19700131", "--accession", "ACC0003", "--urgency", "now",
            "--to-dicom", f"OTHERHOSP@127.0.0.1:{other.port}",
        )  # fmt: skip
        ref = str(req["reference"])
        ct = synthetic.make_ct_series(
            tmp_path / "ct3", n_slices=4, rows=32, cols=32, accession="ACC0003"
        )
        assert storescu(node.port, ct).returncode == 0
        assert wait_state(node, ref, "delivered") == "delivered"
        received = sorted(p for p in other.out_dir.rglob("*") if p.is_file())
        assert len(received) == 4
    timeline = [e["reason"] for e in courier(node, "request", "show", ref)["timeline"]]
    assert any("acknowledged 4" in r for r in timeline), timeline
    log = node.log.read_text()
    assert "Synthetic" not in log and "SYN0001" not in log
