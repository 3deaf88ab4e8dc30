"""Bad input at the DICOM port: each gets a clear refusal, loses nothing, leaves nothing
behind, and the next association works. No patient data reaches a log line."""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu import P_DATA_TF

from tests import synthetic
from tests.conftest import Database, LocalScp, echo_ok, start_local_scp
from tests.scu import rewrite, send, with_meta_uid

CT = "1.2.840.10008.5.1.4.1.1.2"
PHI = ("SYNTHETIC^PATIENT", "SYN0002", "ACC0002", "EVIL-ID", "../../etc/passwd")


@pytest.fixture
def scp(db: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> Iterator[LocalScp]:
    """A strict SCP with short timeouts; after each test: echo works, no PHI was logged."""
    caplog.set_level(logging.DEBUG)
    s = start_local_scp(
        db,
        tmp_path / "data",
        allowed_calling_aes=[
            {"ae_title": "PYSCU"},
            {"ae_title": "ECHOSCU"},
            {"ae_title": "PINNED", "host": "127.0.0.2"},
        ],
        max_associations=3,
        reserved_for_allowed=0,  # PINNED would otherwise hold 2 of the 3
        network_timeout_s=2,
        idle_timeout_s=2,
        acse_timeout_s=2,
        dimse_timeout_s=2,
    )
    yield s
    try:
        # Aborted associations may hold a slot for up to the ARTIM timeout.
        deadline = time.monotonic() + 6
        while not echo_ok(s.port) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert echo_ok(s.port), "the next association must work"
        assert s.spool_files() == []
        for line in caplog.text.splitlines():
            for value in PHI:
                assert value not in line, "patient data in a log line"
    finally:
        s.server.shutdown()
        s.server.server_close()


def _associate(
    port: int, calling: str = "PYSCU", called: str = "COURIER", context: str = "1.2.840.10008.1.1"
) -> object:
    ae = AE(ae_title=calling)
    ae.acse_timeout = 5
    ae.add_requested_context(context)
    return ae.associate("127.0.0.1", port, ae_title=called)


def _rejection(assoc: object) -> tuple[int, int, int] | None:
    rsp = assoc.acceptor.primitive  # type: ignore[attr-defined]
    if rsp is None:
        # pynetdicom's requestor races its own reactor: when the A-ASSOCIATE-RJ arrives
        # and the reactor closes the socket before the requesting thread checks that
        # the socket connected, it aborts without taking the answer. The answer is
        # still queued for it.
        queued = list(assoc.dul.to_user_queue.queue)  # type: ignore[attr-defined]
        rsp = next((p for p in queued if getattr(p, "result", None) is not None), None)
    if rsp is None or rsp.result is None or rsp.result == 0:
        return None
    return (rsp.result, rsp.result_source, rsp.diagnostic)


@pytest.mark.parametrize(
    ("calling", "called", "reason"),
    [
        ("STRANGER", "COURIER", (0x01, 0x01, 0x03)),  # calling AE not recognized
        ("PINNED", "COURIER", (0x01, 0x01, 0x03)),  # allowed AE, but from the wrong host
        ("PYSCU", "NOTCOURIER", (0x01, 0x01, 0x07)),  # called AE not recognized
    ],
)
def test_association_policy_rejects_with_standard_reasons(
    scp: LocalScp, calling: str, called: str, reason: tuple[int, int, int]
) -> None:
    assoc = _associate(scp.port, calling, called)
    assert not assoc.is_established  # type: ignore[attr-defined]
    assert _rejection(assoc) == reason


def test_one_association_over_the_cap_is_refused_transiently(scp: LocalScp) -> None:
    held = [_associate(scp.port) for _ in range(3)]
    assert all(a.is_established for a in held)  # type: ignore[attr-defined]
    extra = _associate(scp.port)
    assert not extra.is_established  # type: ignore[attr-defined]
    assert _rejection(extra) == (0x02, 0x03, 0x02)  # transient: local limit exceeded
    for a in held:
        a.release()  # type: ignore[attr-defined]
    time.sleep(0.3)


def test_only_unsupported_sop_classes(scp: LocalScp) -> None:
    # Patient Root Query/Retrieve - FIND: not a storage class.
    assoc = _associate(scp.port, context="1.2.840.10008.5.1.4.1.2.1.1")
    if assoc.is_established:  # type: ignore[attr-defined]
        assert assoc.accepted_contexts == []  # type: ignore[attr-defined]
        assoc.release()  # type: ignore[attr-defined]
    assert scp.rows() == 0


def _raw(port: int, data: bytes, wait: float = 3.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except TimeoutError:
            pass
        return b"".join(chunks)


def test_http_text_on_the_dicom_port(scp: LocalScp) -> None:
    answer = _raw(scp.port, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert b"HTTP" not in answer  # no HTTP answer; connection closed or aborted
    assert scp.rows() == 0


def _trickle_until_closed(port: int, header: bytes, rounds: int) -> bool:
    """Send ``header``, then a byte every 0.1 s; True once the server closes on us."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(header)
        for _ in range(rounds):  # bounded: rounds x 0.1 s at most
            try:
                sock.sendall(b"\x00")
                sock.settimeout(0.1)
                if sock.recv(1) == b"":
                    return True
            except TimeoutError:
                continue
            except OSError:
                return True
    return False


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def test_pdu_claiming_4gb_is_dropped_without_buffering(scp: LocalScp) -> None:
    before = _rss_mb()
    # An A-ASSOCIATE-RQ announcing 4 GB, then a trickle: refused at the header.
    header = struct.pack(">BBL", 0x01, 0, 0xFFFFFFF0) + b"\x00" * 64
    assert _trickle_until_closed(scp.port, header, rounds=30)
    assert _rss_mb() - before < 50  # nothing near the announced size was buffered


def test_trickling_pdu_within_the_limit_is_dropped_after_the_timeout(scp: LocalScp) -> None:
    # 60 kB announced, a byte every 0.1 s: the 2 s network timeout ends it.
    header = struct.pack(">BBL", 0x01, 0, 60_000) + b"\x00" * 10
    assert _trickle_until_closed(scp.port, header, rounds=60)


def test_idle_association_is_dropped(scp: LocalScp) -> None:
    assoc = _associate(scp.port)
    assert assoc.is_established  # type: ignore[attr-defined]
    deadline = time.monotonic() + 10
    while assoc.is_established and time.monotonic() < deadline:  # type: ignore[attr-defined]
        time.sleep(0.2)
    assert not assoc.is_established  # type: ignore[attr-defined]


def _store_pdus(sop_uid: str, dataset: bytes, cx_id: int, max_pdu: int) -> list[bytes]:
    primitive = C_STORE()
    primitive.MessageID = 1
    primitive.AffectedSOPClassUID = CT
    primitive.AffectedSOPInstanceUID = sop_uid
    primitive.Priority = 0
    primitive.DataSet = __import__("io").BytesIO(dataset)
    msg = C_STORE_RQ()
    msg.primitive_to_message(primitive)
    out = []
    for p_data in msg.encode_msg(cx_id, max_pdu):
        pdu = P_DATA_TF()
        pdu.from_primitive(p_data)
        out.append(pdu.encode())
    return out


def test_sender_killed_mid_dataset_leaves_no_row_and_no_spool(
    scp: LocalScp, tmp_path: Path
) -> None:
    from tests.scu import dataset_bytes

    f = synthetic.make_ct_series(tmp_path / "ct", n_slices=1)[0]
    import pydicom

    uid = str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(CT, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="COURIER")
    assert assoc.is_established
    cx_id = assoc.accepted_contexts[0].context_id
    pdus = _store_pdus(uid, dataset_bytes(f), cx_id, 16_384)
    raw: socket.socket = assoc.dul.socket.socket  # type: ignore[union-attr]
    assoc.dul.kill_dul()  # stop pynetdicom reading; we drive the socket ourselves
    time.sleep(0.1)
    for pdu in pdus[: len(pdus) // 2]:
        raw.sendall(pdu)
    time.sleep(0.3)
    assert len(scp.spool_files()) == 1  # the dataset is arriving
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    raw.close()  # RST: the sender died
    deadline = time.monotonic() + 5
    while scp.spool_files() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert scp.spool_files() == []
    assert scp.rows() == 0
    assert list(scp.content.iter_instances()) == []


def _one(tmp_path: Path) -> Path:
    return synthetic.make_small_instances(tmp_path / "one", n=1)[0]


def _sop(path: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def test_dataset_uids_differ_from_the_command(scp: LocalScp, tmp_path: Path) -> None:
    f = _one(tmp_path)
    bad = with_meta_uid(f, tmp_path / "mismatch.dcm", "1.2.3.4.5.6.7")
    assert send(scp.port, [bad]) == [0xA900]
    assert scp.rows() == 0


@pytest.mark.parametrize("missing", ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"])
def test_missing_uids(scp: LocalScp, tmp_path: Path, missing: str) -> None:
    bad = rewrite(_one(tmp_path), tmp_path / "missing.dcm", **{missing: None})
    status = send(scp.port, [bad])[0]
    assert status in (0xC001, 0xA900)  # without SOPInstanceUID it also differs from the command
    assert scp.rows() == 0


@pytest.mark.parametrize("keep", [-1, -100, -9000, 400])
def test_truncated_datasets_are_refused(scp: LocalScp, tmp_path: Path, keep: int) -> None:
    f = _one(tmp_path)
    cut = synthetic.truncated_copy(f, tmp_path / "cut.dcm", keep)
    try:
        status = send(scp.port, [cut])[0]
    except (ValueError, AttributeError, OSError):
        pytest.skip("the sender itself cannot read this cut")  # nothing reached us
    assert status == 0xC000
    assert scp.rows() == 0


def test_bad_vr_is_refused(scp: LocalScp, tmp_path: Path) -> None:
    f = _one(tmp_path)
    raw = bytearray(f.read_bytes())
    # Corrupt the VR of the first dataset element after the meta group.
    from tests.scu import dataset_bytes

    offset = len(raw) - len(dataset_bytes(f))
    raw[offset + 4 : offset + 6] = b"\x01\x02"
    bad = tmp_path / "badvr.dcm"
    bad.write_bytes(bytes(raw))
    assert send(scp.port, [bad]) == [0xC000]
    assert scp.rows() == 0


def test_sequence_nested_10000_deep(scp: LocalScp, tmp_path: Path) -> None:
    deep = tmp_path / "deep.dcm"
    deep.write_bytes(synthetic.deep_sequence_dataset(10000))
    assert send(scp.port, [deep]) == [0xC000]
    assert scp.rows() == 0


@pytest.mark.parametrize("patient_id", ["../../etc/passwd", "EVIL-ID\x00/../x", "..\\..\\"])
def test_hostile_patient_id_never_shapes_a_path(
    scp: LocalScp, tmp_path: Path, patient_id: str
) -> None:
    f = _one(tmp_path)
    hostile = synthetic.with_patient_id(f, tmp_path / "hostile.dcm", patient_id)
    assert send(scp.port, [hostile]) == [0x0000]
    stored = [scp.content.path(p).resolve() for p in scp.content.iter_instances()]
    assert len(stored) == 1
    assert stored[0].is_relative_to(scp.content.instances.resolve())
    assert _sop(f) in stored[0].name


@pytest.mark.parametrize("uid", ["1.2.3/../../../x", "1.2.abc", "1." + "2" * 70])
def test_malformed_uids_never_reach_the_disk(scp: LocalScp, tmp_path: Path, uid: str) -> None:
    bad = rewrite(_one(tmp_path), tmp_path / "baduid.dcm", StudyInstanceUID=uid)
    assert send(scp.port, [bad]) == [0xC002]
    assert scp.rows() == 0
    assert list(scp.content.iter_instances()) == []


def test_many_bad_associations_in_parallel_then_good_ones(scp: LocalScp, tmp_path: Path) -> None:
    files = synthetic.make_small_instances(tmp_path / "good", n=10)

    def junk() -> None:
        for _ in range(5):
            with contextlib.suppress(OSError):
                _raw(scp.port, b"\x07\x00\x00\x00\x00\x04garbage" * 3, wait=0.5)

    threads = [threading.Thread(target=junk) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Junk connections hold a slot until the ARTIM timer (acse_timeout_s) ends them.
    deadline = time.monotonic() + 6
    while not echo_ok(scp.port) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert send(scp.port, files) == [0x0000] * 10
    assert scp.rows() == 10
