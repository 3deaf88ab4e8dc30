"""Exporting the audit trail to real listeners on loopback: RFC 5424 over UDP, TCP and TLS
(trustme), the DICOM audit message XML parsed with the standard library, JSON lines;
a collector that is down and comes back gets every event exactly once."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import ssl
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
import trustme
from sqlalchemy import select

from node.audit_settings import JsonlSettings, SyslogSettings
from node.auditlog import GAP_WAIT, JsonlSink, ShipError, Shipper, SyslogSink
from store.audit import Outcome, record, record_now
from store.models import AuditCursor, AuditEvent
from tests.conftest import Database, free_port

STUDY = "1.2.826.0.1.3680043.8.498.77"
T0 = datetime(2026, 3, 1, 9, 30, 15, 250000, tzinfo=UTC)
# RFC 5424: <PRI>VERSION TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD [SP MSG]
HEADER = re.compile(
    rb"^<(?P<pri>\d{1,3})>(?P<version>1) (?P<ts>\S+) (?P<host>\S+) (?P<app>\S+) "
    rb"(?P<procid>\S+) (?P<msgid>\S+) (?P<sd>-|(?:\[[^\]]*\])+) (?P<msg>.*)$",
    re.DOTALL,
)


@dataclass
class Parsed:
    pri: int
    ts: str
    host: str
    app: str
    msgid: str
    sd: str
    xml: ET.Element


def parse(message: bytes) -> Parsed:
    m = HEADER.match(message)
    assert m, message[:120]
    msg = m["msg"]
    assert msg.startswith(b"\xef\xbb\xbf")  # MSG-UTF8 starts with the BOM
    return Parsed(
        int(m["pri"]),
        m["ts"].decode(),
        m["host"].decode(),
        m["app"].decode(),
        m["msgid"].decode(),
        m["sd"].decode(),
        ET.fromstring(msg[3:].decode("utf-8")),
    )


def seq(p: Parsed) -> int:
    found = re.search(r'\[meta sequenceId="(\d+)"\]', p.sd)
    assert found
    return int(found[1])


@dataclass
class StreamListener:
    """A TCP (or TLS) syslog collector: reads RFC 6587 octet-counted frames."""

    port: int
    tls: ssl.SSLContext | None = None
    messages: list[bytes] = field(default_factory=list)
    got: threading.Condition = field(default_factory=threading.Condition)

    def __post_init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.listen()
        self.sock.settimeout(0.2)
        self.stopping = threading.Event()
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        try:
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            buf = b""
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buf += chunk
                while b" " in buf:
                    length, _, rest = buf.partition(b" ")
                    n = int(length)
                    if len(rest) < n:
                        break
                    with self.got:
                        self.messages.append(rest[:n])
                        self.got.notify_all()
                    buf = rest[n:]
        except (OSError, ssl.SSLError):
            return
        finally:
            conn.close()

    def wait_for(self, n: int, timeout: float = 10) -> list[bytes]:
        with self.got:
            self.got.wait_for(lambda: len(self.messages) >= n, timeout)
            return list(self.messages)

    def close(self) -> None:
        """Stop listening and drop every connection (a collector going down)."""
        self.stopping.set()
        self.sock.close()
        self.thread.join(5)
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


def _events(db: Database) -> list[int]:
    with db.sessions() as s, s.begin():
        stored = record(
            s,
            "instances-stored",
            actor="scp:PACS1",
            host="127.0.0.9",
            studies=[STUDY],
            detail="study received and stable: 3 instance(s)",
            at=T0,
        )
        purged = record(
            s,
            "study-deleted",
            actor="node",
            outcome=Outcome.SERIOUS_FAILURE,
            studies=[STUDY],
            request="CR-7KQ4-M2XD-9",
            detail="changed meanwhile",
            at=T0 + timedelta(seconds=1),
        )
        s.flush()
        return [stored.id, purged.id]


def _check(messages: list[bytes], ids: list[int]) -> None:
    stored, purged = (parse(m) for m in messages)
    assert (stored.pri, stored.app, stored.msgid, stored.host) == (
        85,
        "courier",
        "DICOM+RFC3881",
        "test-host",
    )
    assert stored.ts == "2026-03-01T09:30:15.250Z"
    assert [seq(stored), seq(purged)] == ids
    assert '[origin software="courier"' in stored.sd
    x = stored.xml
    assert x.tag == "AuditMessage"
    ident = x.find("EventIdentification")
    assert ident is not None
    assert (ident.get("EventActionCode"), ident.get("EventOutcomeIndicator")) == ("C", "0")
    assert ident.get("EventDateTime") == "2026-03-01T09:30:15.250Z"
    event_id = ident.find("EventID")
    assert event_id is not None
    assert (event_id.get("csd-code"), event_id.get("codeSystemName")) == ("110104", "DCM")
    assert event_id.get("originalText") == "DICOM Instances Transferred"
    roles = {
        p.get("UserID"): p.find("RoleIDCode").get("csd-code")  # type: ignore[union-attr]
        for p in x.findall("ActiveParticipant")
    }
    assert roles == {"scp:PACS1": "110153", "courier-test": "110152"}
    pacs = x.find("ActiveParticipant")
    assert pacs is not None and pacs.get("NetworkAccessPointID") == "127.0.0.9"
    source = x.find("AuditSourceIdentification")
    assert source is not None and source.get("AuditSourceID") == "courier-test"
    [study] = x.findall("ParticipantObjectIdentification")
    assert study.get("ParticipantObjectID") == STUDY
    code = study.find("ParticipantObjectIDTypeCode")
    assert code is not None and code.get("csd-code") == "110180"
    # Elements in the order of the PS3.15 A.5.1 schema.
    assert [c.tag for c in x] == [
        "EventIdentification",
        "ActiveParticipant",
        "ActiveParticipant",
        "AuditSourceIdentification",
        "ParticipantObjectIdentification",
    ]
    p = purged.xml
    ident = p.find("EventIdentification")
    assert ident is not None and ident.get("EventOutcomeIndicator") == "8"
    assert ident.findtext("EventOutcomeDescription") == "changed meanwhile"
    objects = [o.get("ParticipantObjectID") for o in p.findall("ParticipantObjectIdentification")]
    assert objects == [STUDY, "CR-7KQ4-M2XD-9"]


def _sink(transport: str, port: int, tmp_path: Path, **kw: object) -> SyslogSink:
    settings = SyslogSettings.model_validate(
        {"transport": transport, "host": "127.0.0.1", "port": port, "timeout_s": 5, **kw}
    )
    return SyslogSink(settings, source="courier-test", base=tmp_path, hostname="test-host")


def test_syslog_over_udp(db: Database, tmp_path: Path) -> None:
    ids = _events(db)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.settimeout(10)
        sink = _sink("udp", listener.getsockname()[1], tmp_path)
        try:
            assert Shipper(db.sessions, sink).ship() == 2
        finally:
            sink.close()
        got = [listener.recv(65536) for _ in ids]
    _check(got, ids)


@pytest.mark.parametrize("transport", ["tcp", "tls"])
def test_syslog_over_tcp_and_tls(
    db: Database, tmp_path: Path, ca: trustme.CA, transport: str
) -> None:
    ids = _events(db)
    server_tls = None
    extra: dict[str, object] = {}
    if transport == "tls":
        server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(server_tls)
        ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
        extra["ca_file"] = "ca.pem"  # relative to the config's folder (base)
    listener = StreamListener(free_port(), server_tls)
    sink = _sink(transport, listener.port, tmp_path, **extra)
    try:
        assert Shipper(db.sessions, sink).ship() == 2
        _check(listener.wait_for(2), ids)
    finally:
        sink.close()
        listener.close()


def test_tls_refuses_a_collector_it_cannot_verify(db: Database, tmp_path: Path) -> None:
    _events(db)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    trustme.CA().issue_cert("127.0.0.1").configure_cert(server_tls)  # another CA
    trustme.CA().cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    listener = StreamListener(free_port(), server_tls)
    sink = _sink("tls", listener.port, tmp_path, ca_file="ca.pem")
    try:
        with pytest.raises(ShipError, match="cannot connect"):
            Shipper(db.sessions, sink).ship()
        assert listener.messages == []
    finally:
        sink.close()
        listener.close()


def test_a_collector_down_then_up_gets_everything_exactly_once(
    db: Database, tmp_path: Path
) -> None:
    port = free_port()
    sink = _sink("tcp", port, tmp_path)
    shipper = Shipper(db.sessions, sink)
    for _ in range(3):
        record_now(db.sessions, "application-start", actor="node")
    for _ in range(2):  # down: every pass fails, and the events wait
        with pytest.raises(ShipError, match="cannot connect"):
            shipper.ship()
    with db.sessions() as s:
        cursor = s.get(AuditCursor, "syslog")
        assert cursor is not None and cursor.last_id == 0 and "cannot connect" in cursor.last_error
    listener = StreamListener(port)
    try:
        record_now(db.sessions, "application-stop", actor="node")
        assert shipper.ship() == 4
        assert shipper.ship() == 0
        record_now(db.sessions, "application-start", actor="node")
        assert shipper.ship() == 1
        got = [parse(m) for m in listener.wait_for(5)]
        with db.sessions() as s:
            ids = list(s.scalars(select(AuditEvent.id).order_by(AuditEvent.id)))
        assert [seq(p) for p in got] == ids
        with db.sessions() as s:
            cursor = s.get(AuditCursor, "syslog")
            assert cursor is not None and cursor.last_id == ids[-1] and cursor.last_error == ""
    finally:
        sink.close()
        listener.close()


def test_a_collector_that_drops_the_connection_is_reconnected(db: Database, tmp_path: Path) -> None:
    port = free_port()
    listener = StreamListener(port)
    sink = _sink("tcp", port, tmp_path)
    shipper = Shipper(db.sessions, sink)
    try:
        record_now(db.sessions, "application-start", actor="node")
        assert shipper.ship() == 1
        listener.wait_for(1)
        listener.close()  # the collector restarts: the kept connection is closed
        first = listener
        listener = StreamListener(port)
        record_now(db.sessions, "application-stop", actor="node")
        assert shipper.ship() == 1
        with db.sessions() as s:
            ids = list(s.scalars(select(AuditEvent.id).order_by(AuditEvent.id)))
        got = [seq(parse(m)) for m in first.messages + listener.wait_for(1)]
        assert got == ids
    finally:
        sink.close()
        listener.close()


def test_json_lines(db: Database, tmp_path: Path) -> None:
    ids = _events(db)
    path = tmp_path / "out" / "audit.jsonl"
    settings = JsonlSettings(path=Path("out/audit.jsonl"))
    sink = JsonlSink(tmp_path / settings.path, source="courier-test")
    shipper = Shipper(db.sessions, sink)
    try:
        assert shipper.ship() == 2
        assert shipper.ship() == 0
        record_now(db.sessions, "application-stop", actor="node")
        assert shipper.ship() == 1
    finally:
        sink.close()
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in rows[:2]] == ids
    first = rows[0]
    assert first["type"] == "instances-stored"
    assert first["event_id"] == {"code": "110104", "meaning": "DICOM Instances Transferred"}
    assert (first["actor"], first["host"], first["studies"], first["source"]) == (
        "scp:PACS1",
        "127.0.0.9",
        [STUDY],
        "courier-test",
    )
    assert first["at"] == "2026-03-01T09:30:15.250Z"
    assert [r["type"] for r in rows] == ["instances-stored", "study-deleted", "application-stop"]


def test_an_id_missing_from_the_run_is_waited_for_then_passed(db: Database, tmp_path: Path) -> None:
    """PostgreSQL may commit id 2 after id 3; a fresh gap stops the pass before it."""
    now = [T0]
    sink = JsonlSink(tmp_path / "audit.jsonl", source="t")
    shipper = Shipper(db.sessions, sink, clock=lambda: now[0])
    with db.sessions() as s, s.begin():
        first = record(s, "application-start", actor="node", at=T0)
        s.flush()
        late = record(s, "application-stop", actor="node", at=T0)
        late.id = first.id + 2  # as if first.id + 1 were still being committed
    try:
        assert shipper.ship() == 1
        now[0] = T0 + GAP_WAIT - timedelta(seconds=1)
        assert shipper.ship() == 0
        now[0] = T0 + GAP_WAIT + timedelta(seconds=1)  # it never came: a rolled-back id
        assert shipper.ship() == 1
    finally:
        sink.close()
