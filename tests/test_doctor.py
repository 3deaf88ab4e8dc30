"""`courier doctor`: every check against real peers (aiosmtpd with TLS and AUTH, the
Twilio-compatible endpoint, a served node, SQLite and PostgreSQL), with the faults each
must name, and the promise that it changes nothing."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from node import doctor
from node.cli import main
from node.config import load_config
from tests.conftest import free_port, have_orthanc, need, start_node, wait_for_port, write_config
from tests.orthanc import Orthanc
from tests.pynetdicom_peers import PynetdicomScp
from tests.smtp_server import SmtpServer
from tests.twilio_server import TwilioServer

USER, PASSWORD = "courier", "s3cret-pass"


def _config(tmp: Path, extra: str = "", public_url: str | None = None) -> Path:
    path = tmp / "node.yaml"
    portal = f"public_url: {public_url}" if public_url else ""
    write_config(path, tmp / "data", free_port(), extra=extra, extra_portal=portal)
    return path


def _by_check(findings: list[doctor.Finding]) -> dict[str, doctor.Finding]:
    return {f.check: f for f in findings}


def _run(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any]]:
    code = main(["doctor", "--json", "--timeout", "3", "--config", str(path)])
    return code, json.loads(capsys.readouterr().out)


def test_a_fresh_node_gets_warnings_and_nothing_is_made(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _config(tmp_path)
    code, out = _run(path, capsys)
    found = {f["check"]: f["status"] for f in out["findings"]}
    assert found == {
        "rules": "ok",
        "database": "warn",  # not made yet
        "disk": "warn",  # data_dir not made yet
        "secret": "warn",
        "modes": "skip",  # data_dir not made yet
        "email": "warn",  # file backend
        "sms": "warn",
        "dicom_callers": "warn",  # scp.allowed_calling_aes empty: anyone may send
        "identity": "ok",
        "names": "warn",  # node.hospital_name, email.from_name: the shipped "courier"
        "pacs": "skip",  # no pacs: section
        "ris": "skip",  # ris.enabled false: no HL7 listener
        "public_url": "fail",  # nothing listens
    }
    assert code == 1 and out["failed"] == 1
    assert not (tmp_path / "data").exists()
    assert all(f["fix"] for f in out["findings"] if f["status"] not in ("ok", "skip"))


def test_a_running_node_passes_its_own_checks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    web_port, ris_port = free_port(), free_port()
    node = start_node(
        tmp_path,
        web_port=web_port,
        extra_portal=f"public_url: http://127.0.0.1:{web_port}",
        extra=f"ris:\n  enabled: true\n  host: 127.0.0.1\n  port: {ris_port}\n",
    )
    try:
        wait_for_port(ris_port, node.proc)  # the HL7 listener may start after the web app
        cfg = load_config(node.config)
        found = _by_check(doctor.run_checks(cfg, timeout_s=3))
    finally:
        node.stop()
    assert found["database"].status == "ok" and "schema at" in found["database"].detail
    assert found["secret"].status == "ok"
    assert found["disk"].status == "ok"
    assert found["modes"].status == "ok", found["modes"]  # nothing open to group/others
    assert found["public_url"].status == "ok", found["public_url"]
    assert found["ris"].status == "ok", found["ris"]
    assert found["ris"].detail == f"127.0.0.1:{ris_port}: the HL7 (MLLP) listener answers"


def _ris(tmp: Path, host: str, port: int) -> Path:
    return _config(tmp, extra=f"ris:\n  enabled: true\n  host: {host}\n  port: {port}\n")


def test_the_hl7_listener_port_free_held_or_not_this_machines(tmp_path: Path) -> None:
    def ris(host: str, port: int, where: str) -> doctor.Finding:
        (tmp_path / where).mkdir()
        cfg = load_config(_ris(tmp_path / where, host, port))
        return doctor.check_ris(cfg, 0.5)

    free = ris("127.0.0.1", free_port(), "free")
    assert free.status == "ok" and "free for courier serve" in free.detail, free
    with socket.socket() as listening:  # another program answers there (or the node)
        listening.bind(("127.0.0.1", 0))
        listening.listen(1)
        port = listening.getsockname()[1]
        answers = ris("0.0.0.0", port, "answers")  # any address: reached on loopback
    assert answers.status == "ok" and "listener answers" in answers.detail, answers
    with socket.socket() as bound:  # bound, not listening: courier serve could not listen
        bound.bind(("127.0.0.1", 0))
        port = bound.getsockname()[1]
        held = ris("127.0.0.1", port, "held")
    assert held.status == "fail" and "in use by another program" in held.detail, held
    assert "ris.port" in held.fix
    elsewhere = ris("192.0.2.1", free_port(), "elsewhere")  # TEST-NET-1: not this machine's
    assert elsewhere.status == "fail", elsewhere
    assert "not an address of this machine" in elsewhere.detail and "ris.host" in elsewhere.fix


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    with SmtpServer(security="starttls", users={USER: PASSWORD}) as server:
        yield server


@pytest.fixture
def twilio() -> Iterator[TwilioServer]:
    with TwilioServer() as server:
        yield server


def _channels_yaml(tmp: Path, smtp_port: int, twilio_base: str, sid: str, ca: bytes) -> str:
    (tmp / "data").mkdir(exist_ok=True)
    (tmp / "data" / "ca.pem").write_bytes(ca)
    return (
        "email:\n  backend: smtp\n  host: 127.0.0.1\n"
        f"  port: {smtp_port}\n  security: starttls\n  username: {USER}\n"
        "  password_env: COURIER_DOCTOR_SMTP\n  ca_file: ca.pem\n"
        "  from_address: imaging@hospital.example\n  connect_timeout_s: 3\n"
        "sms:\n  backend: twilio\n"
        f"  account_sid: {sid}\n  auth_token_env: COURIER_DOCTOR_TWILIO\n"
        f"  from_number: '+15005550006'\n  api_base: {twilio_base}\n  timeout_s: 3\n"
    )


@pytest.mark.parametrize(
    ("smtp_password", "twilio_token", "email", "sms", "email_words", "sms_words"),
    [
        ("right", "right", "ok", "ok", "login accepted", "credentials accepted"),
        ("wrong", "right", "fail", "ok", "refused our login", "credentials accepted"),
        ("right", "wrong", "ok", "fail", "login accepted", "account_sid"),
    ],
)
def test_smtp_and_twilio_logins(
    tmp_path: Path,
    smtp: SmtpServer,
    twilio: TwilioServer,
    monkeypatch: pytest.MonkeyPatch,
    smtp_password: str,
    twilio_token: str,
    email: str,
    sms: str,
    email_words: str,
    sms_words: str,
) -> None:
    extra = _channels_yaml(tmp_path, smtp.port, twilio.base_url, twilio.sid, smtp.ca_pem())
    monkeypatch.setenv("COURIER_DOCTOR_SMTP", PASSWORD if smtp_password == "right" else "nope")
    monkeypatch.setenv(
        "COURIER_DOCTOR_TWILIO", twilio.token if twilio_token == "right" else "0" * 32
    )
    cfg = load_config(_config(tmp_path, extra))
    found = _by_check(doctor.run_checks(cfg, timeout_s=3))
    assert found["email"].status == email
    assert email_words in found["email"].detail + found["email"].fix
    assert found["sms"].status == sms
    assert sms_words in found["sms"].detail + found["sms"].fix
    assert smtp.received == [] and twilio.messages == []  # nothing was sent
    assert twilio.posts == 0
    for f in found.values():
        assert PASSWORD not in f.detail + f.fix and twilio.token not in f.detail + f.fix


def test_smtp_and_twilio_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, smtp: SmtpServer
) -> None:
    dead = free_port()
    extra = _channels_yaml(tmp_path, dead, f"http://127.0.0.1:{dead}", "AC" + "0" * 32, b"")
    (tmp_path / "data" / "ca.pem").write_bytes(smtp.ca_pem())
    monkeypatch.setenv("COURIER_DOCTOR_SMTP", PASSWORD)
    monkeypatch.setenv("COURIER_DOCTOR_TWILIO", "0" * 32)
    found = _by_check(doctor.run_checks(load_config(_config(tmp_path, extra)), timeout_s=3))
    assert found["email"].status == "fail" and "email.host" in found["email"].fix
    assert found["sms"].status == "fail" and "api_base" in found["sms"].fix


def test_a_missing_secret_variable_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = trustme.CA().cert_pem.bytes()
    extra = _channels_yaml(tmp_path, 1, "http://127.0.0.1:1", "AC" + "0" * 32, ca)
    monkeypatch.delenv("COURIER_DOCTOR_SMTP", raising=False)
    monkeypatch.delenv("COURIER_DOCTOR_TWILIO", raising=False)
    found = _by_check(doctor.run_checks(load_config(_config(tmp_path, extra)), timeout_s=3))
    assert found["email"].status == "fail"
    assert "COURIER_DOCTOR_SMTP" in found["email"].detail


class _Other(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"some other site")

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_a_public_url_that_is_not_the_portal(tmp_path: Path) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Other)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        cfg = load_config(_config(tmp_path, public_url=url))
        finding = doctor.check_public_url(cfg, 3)
    finally:
        server.shutdown()
        server.server_close()
    assert finding.status == "fail" and "not as the portal does" in finding.detail


@pytest.mark.parametrize(
    ("names", "status", "words"),
    [
        ("", "warn", "node.hospital_name and email.from_name"),
        ("node:\n  hospital_name: courier\nemail:\n  from_name: courier\n", "warn", "and"),
        ("node:\n  hospital_name: St Example\n", "warn", "email.from_name still"),
        ("email:\n  from_name: St Example\n", "ok", "emails name St Example"),
        (
            "node:\n  hospital_name: St Example\nemail:\n  from_name: St Example imaging\n",
            "ok",
            "emails name St Example",
        ),
        ("node:\n  hospital_name: COURIER\nemail:\n  from_name: St Example\n", "warn", "node."),
    ],
)
def test_the_display_names(tmp_path: Path, names: str, status: str, words: str) -> None:
    path = tmp_path / "node.yaml"
    path.write_text(names)
    finding = doctor.check_names(load_config(path), 1)
    assert finding.status == status and words in finding.detail, finding
    assert status == "ok" or "node.hospital_name and email.from_name" in finding.fix


@pytest.mark.parametrize(
    ("mode", "size", "status", "words"),
    [
        (0o600, 32, "ok", "mode 600"),
        (0o644, 32, "fail", "chmod 600"),
        (0o640, 32, "fail", "chmod 600"),
        (0o600, 5, "fail", "too short"),
    ],
)
def test_the_secret_file(tmp_path: Path, mode: int, size: int, status: str, words: str) -> None:
    cfg = load_config(_config(tmp_path))
    cfg.data_dir.mkdir(parents=True)
    secret = cfg.data_dir / "secret.key"
    secret.write_bytes(os.urandom(size))
    secret.chmod(mode)
    finding = doctor.check_secret(cfg, 1)
    assert finding.status == status
    assert words in finding.detail + finding.fix


@pytest.mark.parametrize(
    ("free", "status"),
    [(500 * 10**9, "ok"), (5 * 10**9, "warn"), (10**8, "fail")],
)
def test_free_disk_thresholds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, free: int, status: str
) -> None:
    cfg = load_config(_config(tmp_path))
    cfg.data_dir.mkdir(parents=True)
    real = shutil.disk_usage(cfg.data_dir)
    monkeypatch.setattr(doctor.shutil, "disk_usage", lambda _p: real._replace(free=free))
    finding = doctor.check_disk(cfg, 1)
    assert finding.status == status
    assert list(cfg.data_dir.iterdir()) == []  # the write probe left nothing


def test_an_unreachable_database(tmp_path: Path) -> None:
    extra = (
        "store:\n"
        f"  database_url: postgresql+psycopg://postgres@127.0.0.1:{free_port()}/x\n"
        "  busy_timeout_s: 1\n"
    )
    finding = doctor.check_database(load_config(_config(tmp_path, extra)), 2)
    assert finding.status == "fail" and "database server is running" in finding.fix


def test_broken_rules_fail_but_the_other_checks_still_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _config(tmp_path, "rules:\n  - name: r\n    when: {NoSuchKeyword: {equals: x}}\n"
                   "    action: release\n")  # fmt: skip
    code, out = _run(path, capsys)
    found = {f["check"]: f for f in out["findings"]}
    assert code == 1 and found["rules"]["status"] == "fail"
    assert "check-config" in found["rules"]["fix"]
    assert len(found) == len(doctor.CHECKS)


@pytest.mark.parametrize(
    ("allowed", "status"),
    [
        ("[]", "warn"),  # as shipped: any calling AE
        ("[PACS1, CT2]", "warn"),  # no host pinned: anyone may claim them
        ("[{ae_title: PACS1, host: 10.1.2.3}, CT2]", "ok"),
    ],
)
def test_dicom_callers_warns_while_anyone_may_send(
    tmp_path: Path, allowed: str, status: str
) -> None:
    path = tmp_path / "node.yaml"
    write_config(path, tmp_path / "data", free_port(), extra_scp=f"allowed_calling_aes: {allowed}")
    found = doctor.check_callers(load_config(path), 1.0)
    assert found.status == status, found
    if status == "warn":
        assert "allowed_calling_aes" in found.fix


def test_a_check_that_crashes_is_reported_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(cfg: object, timeout_s: float) -> doctor.Finding:
        raise RuntimeError("unexpected")

    monkeypatch.setattr(doctor, "CHECKS", (boom, doctor.check_disk))
    found = doctor.run_checks(load_config(_config(tmp_path)), 1)
    assert found[0] == doctor.Finding("boom", "fail", "check crashed: RuntimeError", "report a bug")
    assert len(found) == 2


# --- the PACS: C-ECHO to Orthanc (as the PACS), to a PACS that knows another calling AE
# (pynetdicom's require_calling_aet), and to nothing at all.


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    need("orthanc", have_orthanc())
    with Orthanc(
        workdir=tmp_path_factory.mktemp("orthanc"), config={"DicomCheckCalledAet": True}
    ) as o:
        yield o


@pytest.fixture(scope="module")
def picky_pacs() -> Iterator[int]:
    """A Verification SCP that only accepts the calling AE SOMEONE."""
    with PynetdicomScp("PICKY", contexts=[Verification], require_calling_ae=["SOMEONE"]) as p:
        yield p.port


# Generous: every case here gets its answer from a local peer at once (a refusal, a
# success, a closed port), so the bound only matters on a loaded machine, where a tight one
# turns Orthanc's late A-ASSOCIATE-RJ into "unreachable" (the finding under test is wrong).
PACS_TIMEOUT_S = 30.0


def _pacs(ae_title: str, port: int) -> str:
    return f"pacs:\n  ae_title: {ae_title}\n  host: 127.0.0.1\n  port: {port}\n"


@pytest.mark.parametrize(
    ("peer", "ae_title", "status", "detail", "fix"),
    [
        ("none", "", "skip", "no pacs: section", ""),
        ("orthanc", "ORTHANC", "ok", "C-ECHO answered success (as COURIER)", ""),
        ("orthanc", "WRONGAE", "fail", "refused the association", "pacs.ae_title"),
        ("picky", "PICKY", "fail", "refused the association from COURIER", "add Courier's AE"),
        ("closed", "ANY", "fail", "unreachable", "pacs.host and pacs.port"),
    ],
)
def test_the_pacs_echo(
    tmp_path: Path,
    request: pytest.FixtureRequest,
    peer: str,
    ae_title: str,
    status: str,
    detail: str,
    fix: str,
) -> None:
    extra = ""
    if peer == "orthanc":
        extra = _pacs(ae_title, request.getfixturevalue("orthanc").dicom_port)
    elif peer == "picky":
        extra = _pacs(ae_title, request.getfixturevalue("picky_pacs"))
    elif peer == "closed":
        extra = _pacs(ae_title, free_port())
    finding = doctor.check_pacs(load_config(_config(tmp_path, extra)), PACS_TIMEOUT_S)
    assert finding.status == status, finding
    assert detail in finding.detail
    assert fix in finding.fix
    assert bool(finding.fix) == (status == "fail")


@pytest.mark.parametrize(
    ("section", "status"),
    [
        ("", "ok"),
        ("identity:\n  check: false\n", "fail"),
        ("identity:\n  patient_id_from: OtherPatientIDsSequence\n  issuer: HOSP-A\n", "ok"),
    ],
)
def test_identity_check_off_fails(tmp_path: Path, section: str, status: str) -> None:
    path = tmp_path / "node.yaml"
    write_config(path, tmp_path / "data", free_port())
    path.write_text(path.read_text() + section)
    found = doctor.check_identity(load_config(path), 1.0)
    assert found.status == status, found
    if status == "fail":
        assert "identity.check" in found.detail and "patient_id_from" in found.fix
