"""DICOM over TLS on the SCP's second port: dcmtk's storescu and pynetdicom as TLS clients
(trustme CA), client certificates, protocol floor, plain DICOM on the TLS port, and the
TLS port in a node with two receiving processes."""

from __future__ import annotations

import logging
import socket
import ssl
import subprocess
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
from pydantic import ValidationError
from pynetdicom import AE

from scp import spool
from scp.ingest import Ingest
from scp.server import start_server
from scp.settings import ScpSettings
from scp.tls import TlsSetupError, server_context
from store.catalog import Catalog
from store.content import ContentStore
from tests import synthetic
from tests.conftest import COURIER, Database, echo_ok, free_port, have_dcmtk, need, write_config
from tests.scu import close_socket, dataset_bytes, send, storescu

VERIFICATION = "1.2.840.10008.1.1"


@dataclass
class Pki:
    """A test CA, a server certificate for 127.0.0.1 and a client certificate (PEM files)."""

    ca: Path
    cert: Path
    key: Path
    client_cert: Path
    client_key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    # RSA: dcmtk's default BCP 195 profile negotiates ECDHE-RSA suites.
    ca = trustme.CA(key_type=trustme.KeyType.RSA)
    server = ca.issue_cert("127.0.0.1", "localhost", key_type=trustme.KeyType.RSA)
    client = ca.issue_cert("storescu.test", key_type=trustme.KeyType.RSA)
    pki = Pki(d / "ca.pem", d / "cert.pem", d / "key.pem", d / "client.pem", d / "client.key")
    ca.cert_pem.write_to_path(str(pki.ca))
    pki.cert.write_bytes(b"".join(p.bytes() for p in server.cert_chain_pems))
    server.private_key_pem.write_to_path(str(pki.key))
    pki.client_cert.write_bytes(b"".join(p.bytes() for p in client.cert_chain_pems))
    client.private_key_pem.write_to_path(str(pki.client_key))
    for key in (pki.key, pki.client_key):
        key.chmod(0o600)
    return pki


@dataclass
class TlsScp:
    port: int
    tls_port: int
    content: ContentStore
    db: Database
    server: Any

    def rows(self) -> int:
        from sqlalchemy import func, select

        from store.models import Instance

        with self.db.sessions() as s:
            return int(s.scalar(select(func.count()).select_from(Instance)) or 0)


def start_tls_scp(db: Database, root: Path, pki: Pki, **overrides: Any) -> TlsScp:
    settings = ScpSettings(
        **{
            "tls_port": 2762,  # replaced by a free port below
            "tls_cert_file": str(pki.cert),
            "tls_key_file": str(pki.key),
            "acse_timeout_s": 5,
            **overrides,
        }
    )
    content = ContentStore(root)
    content.prepare()
    spool.install(content.spool)
    ingest = Ingest(content, Catalog(db.sessions))
    server = start_server(settings, ingest, port=0, tls_port=0, data_dir=root)
    assert server.tls_server is not None
    return TlsScp(
        int(server.server_address[1]), int(server.tls_server.server_address[1]), content, db, server
    )


@pytest.fixture
def tls_scp(db: Database, tmp_path: Path, pki: Pki) -> Iterator[TlsScp]:
    scp = start_tls_scp(db, tmp_path / "data", pki)
    yield scp
    scp.server.shutdown()
    scp.server.server_close()


@pytest.fixture
def mtls_scp(db: Database, tmp_path: Path, pki: Pki) -> Iterator[TlsScp]:
    scp = start_tls_scp(
        db, tmp_path / "data", pki, tls_ca_file=str(pki.ca), tls_require_client_cert=True
    )
    yield scp
    scp.server.shutdown()
    scp.server.server_close()


def _assert_identical(scp: TlsScp, files: list[Path]) -> None:
    import pydicom
    from sqlalchemy import select

    from store.models import Instance

    with scp.db.sessions() as s:
        rows = {i.sop_instance_uid: i for i in s.scalars(select(Instance))}
    for f in files:
        uid = str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)
        assert dataset_bytes(scp.content.path(rows[uid].path)) == dataset_bytes(f), f.name


def _client_context(pki: Pki, *, cert: bool = False) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki.ca))
    if cert:
        ctx.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    return ctx


def _tls_echo(port: int, ctx: ssl.SSLContext) -> bool:
    ae = AE(ae_title="TLSSCU")
    ae.add_requested_context(VERIFICATION)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    assoc = ae.associate("127.0.0.1", port, ae_title="COURIER", tls_args=(ctx, "127.0.0.1"))
    try:
        if not assoc.is_established:
            return False
        status = assoc.send_c_echo()
        assoc.release()
        return bool(status) and int(status.Status) == 0
    finally:
        close_socket(assoc)


def _handshake(port: int, ctx: ssl.SSLContext) -> str:
    """Open a TLS connection with ``ctx``; return the version, or raise ssl.SSLError."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        return tls.version() or ""


def test_dcmtk_storescu_over_tls_stores_byte_identical(
    tls_scp: TlsScp, tmp_path: Path, pki: Pki
) -> None:
    need("dcmtk", have_dcmtk())
    files = synthetic.make_small_instances(tmp_path / "s", n=30)
    files += synthetic.make_ct_series(tmp_path / "ct", n_slices=5)
    result = storescu(tls_scp.tls_port, files, "+tla", "+cf", str(pki.ca))
    assert result.returncode == 0, result.stderr[-2000:]
    assert tls_scp.rows() == 35
    _assert_identical(tls_scp, files)
    # The plain port is untouched and keeps working beside it.
    assert echo_ok(tls_scp.port)


def test_pynetdicom_over_tls_and_a_silent_client_blocks_nobody(tls_scp: TlsScp, pki: Pki) -> None:
    # A client that connects and never starts its handshake must not hold the accept
    # loop: other TLS clients are served meanwhile.
    with socket.create_connection(("127.0.0.1", tls_scp.tls_port), timeout=10):
        assert _tls_echo(tls_scp.tls_port, _client_context(pki))
        assert echo_ok(tls_scp.port)


def test_client_certificate_required(
    mtls_scp: TlsScp, tmp_path: Path, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    need("dcmtk", have_dcmtk())
    files = synthetic.make_small_instances(tmp_path / "m", n=3)
    with caplog.at_level(logging.WARNING, logger="courier.scp.tls"):
        refused = storescu(mtls_scp.tls_port, files, "+tla", "+cf", str(pki.ca))
    assert refused.returncode != 0
    assert mtls_scp.rows() == 0
    assert "TLS handshake refused" in caplog.text
    assert not _tls_echo(mtls_scp.tls_port, _client_context(pki))
    ok = storescu(
        mtls_scp.tls_port,
        files,
        "+tls",
        str(pki.client_key),
        str(pki.client_cert),
        "-pw",
        "+cf",
        str(pki.ca),
    )
    assert ok.returncode == 0, ok.stderr[-2000:]
    _assert_identical(mtls_scp, files)
    assert _tls_echo(mtls_scp.tls_port, _client_context(pki, cert=True))


def test_tls_1_1_client_is_refused(
    tls_scp: TlsScp, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    ctx = _client_context(pki)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.1 is, on purpose
        ctx.minimum_version = ssl.TLSVersion.TLSv1_1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    try:
        # OpenSSL 3 keeps TLS 1.1 (SHA-1 MACs) only at security level 0.
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    except ssl.SSLError:
        pytest.skip("this OpenSSL cannot offer TLS 1.1 at all, so no server sees it")
    with caplog.at_level(logging.WARNING, logger="courier.scp.tls"):
        with pytest.raises(ssl.SSLError) as refused:
            _handshake(tls_scp.tls_port, ctx)
        if refused.value.reason == "NO_PROTOCOLS_AVAILABLE":
            pytest.skip("this OpenSSL build has no TLS 1.1 client left to test with")
        for _ in range(50):  # the server logs from its connection thread
            if "TLS handshake refused" in caplog.text:
                break
            time.sleep(0.1)
    assert "TLS handshake refused" in caplog.text
    # A TLS 1.2 client is fine (the floor is 1.2 by default).
    ctx12 = _client_context(pki)
    ctx12.maximum_version = ssl.TLSVersion.TLSv1_2
    assert _handshake(tls_scp.tls_port, ctx12) == "TLSv1.2"


def test_tls_min_version_1_3_refuses_1_2(db: Database, tmp_path: Path, pki: Pki) -> None:
    scp = start_tls_scp(db, tmp_path / "data", pki, tls_min_version="1.3")
    try:
        ctx12 = _client_context(pki)
        ctx12.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises(ssl.SSLError):
            _handshake(scp.tls_port, ctx12)
        assert _handshake(scp.tls_port, _client_context(pki)) == "TLSv1.3"
    finally:
        scp.server.shutdown()
        scp.server.server_close()


def test_plain_dicom_on_the_tls_port_is_refused_and_the_next_works(
    tls_scp: TlsScp, tmp_path: Path, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    files = synthetic.make_small_instances(tmp_path / "p", n=2)
    with caplog.at_level(logging.WARNING, logger="courier.scp.tls"):
        with pytest.raises(ConnectionError):
            send(tls_scp.tls_port, files, timeout=10)
        assert not echo_ok(tls_scp.tls_port)
    assert "TLS handshake refused" in caplog.text
    assert tls_scp.rows() == 0
    # Nothing was disturbed: TLS and plain associations both work next.
    assert _tls_echo(tls_scp.tls_port, _client_context(pki))
    assert send(tls_scp.port, files) == [0x0000, 0x0000]
    # What Courier logged names the peer and the OpenSSL reason, nothing from a dataset.
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("courier")]
    assert ours and all("^" not in m and "PatientName" not in m for m in ours)


def test_the_tls_port_applies_the_same_policy(db: Database, tmp_path: Path, pki: Pki) -> None:
    scp = start_tls_scp(db, tmp_path / "data", pki, allowed_calling_aes=["PACS"])
    try:
        assert not _tls_echo(scp.tls_port, _client_context(pki))  # TLSSCU is not listed
        assert not echo_ok(scp.port)
    finally:
        scp.server.shutdown()
        scp.server.server_close()


# --- settings --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"tls_cert_file": "c.pem"}, "together"),
        ({"tls_key_file": "k.pem"}, "together"),
        ({"tls_port": 2762}, "needs tls_cert_file"),
        ({"tls_port": 11112, "tls_cert_file": "c", "tls_key_file": "k"}, "differ"),
        ({"tls_require_client_cert": True}, "tls_ca_file"),
        ({"tls_min_version": "1.1"}, "tls_min_version"),
        ({"tls_min_version": 1.0}, "tls_min_version"),
        ({"tls_port": 0, "tls_cert_file": "c", "tls_key_file": "k"}, "tls_port"),
    ],
)
def test_tls_settings_are_checked(fields: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValidationError) as exc:
        ScpSettings(**fields)
    assert fragment in str(exc.value)


def test_tls_min_version_accepts_a_yaml_float() -> None:
    assert ScpSettings(tls_min_version=1.3).tls_min_version == "1.3"  # type: ignore[arg-type]


def test_unreadable_files_name_the_key(tmp_path: Path, pki: Pki) -> None:
    base = {"tls_port": 2762, "tls_cert_file": str(pki.cert), "tls_key_file": str(pki.key)}
    with pytest.raises(TlsSetupError, match=r"scp\.tls_cert_file: cannot read .*missing\.pem"):
        server_context(ScpSettings(**{**base, "tls_cert_file": "missing.pem"}), tmp_path)
    with pytest.raises(TlsSetupError, match=r"scp\.tls_key_file: cannot read"):
        server_context(ScpSettings(**{**base, "tls_key_file": "nope.key"}), tmp_path)
    with pytest.raises(TlsSetupError, match=r"scp\.tls_ca_file: cannot read"):
        server_context(ScpSettings(**{**base, "tls_ca_file": "ca.pem"}), tmp_path)
    with pytest.raises(TlsSetupError, match=r"scp\.tls_cert_file/scp\.tls_key_file"):
        server_context(ScpSettings(**{**base, "tls_key_file": str(pki.client_key)}), tmp_path)
    # Relative names are resolved against the data directory.
    (tmp_path / "tls").mkdir()
    (tmp_path / "tls" / "cert.pem").write_bytes(pki.cert.read_bytes())
    (tmp_path / "tls" / "key.pem").write_bytes(pki.key.read_bytes())
    (tmp_path / "tls" / "key.pem").chmod(0o600)
    rel = ScpSettings(tls_port=2762, tls_cert_file="tls/cert.pem", tls_key_file="tls/key.pem")
    ctx = server_context(rel, tmp_path)
    assert ctx is not None and ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert server_context(ScpSettings(), tmp_path) is None


# --- the node ------------------------------------------------------------------------


def _tls_yaml(pki: Pki, tls_port: int) -> str:
    return f"tls_port: {tls_port}\ntls_cert_file: {pki.cert}\ntls_key_file: {pki.key}\n"


def test_node_with_two_workers_serves_tls(node_factory: Any, tmp_path: Path, pki: Pki) -> None:
    need("dcmtk", have_dcmtk())
    tls_port = free_port()
    node = node_factory(extra_scp="workers: 2\n" + _tls_yaml(pki, tls_port))
    files = synthetic.make_small_instances(tmp_path / "w", n=40)
    halves = [files[:20], files[20:]]
    import concurrent.futures as cf

    with cf.ThreadPoolExecutor(2) as pool:
        results = list(
            pool.map(lambda fs: storescu(tls_port, fs, "+tla", "+cf", str(pki.ca)), halves)
        )
    assert all(r.returncode == 0 for r in results), [r.stderr[-500:] for r in results]
    stored = list((node.data_dir / "instances").rglob("*.dcm"))
    assert len(stored) == 40
    assert _tls_echo(tls_port, _client_context(pki))


def test_node_refuses_to_start_with_an_unreadable_key(tmp_path: Path, pki: Pki) -> None:

    config = tmp_path / "node.yaml"
    yaml = f"tls_port: {free_port()}\ntls_cert_file: {pki.cert}\ntls_key_file: tls/absent.key\n"
    write_config(config, tmp_path / "d", free_port(), extra_scp=yaml)
    out = subprocess.run(
        [str(COURIER), "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0
    assert "scp.tls_key_file: cannot read" in out.stderr and "absent.key" in out.stderr


def test_check_config_reads_the_tls_files(
    tmp_path: Path, pki: Pki, capsys: pytest.CaptureFixture[str]
) -> None:
    from node.cli import main

    good = tmp_path / "good.yaml"
    write_config(good, tmp_path / "d", free_port(), extra_scp=_tls_yaml(pki, free_port()))
    assert main(["check-config", "--config", str(good)]) == 0
    bad = tmp_path / "bad.yaml"
    missing = f"tls_port: {free_port()}\ntls_cert_file: {pki.cert}\ntls_key_file: gone.pem\n"
    write_config(bad, tmp_path / "d", free_port(), extra_scp=missing)
    assert main(["check-config", "--config", str(bad)]) == 2
    assert "scp.tls_key_file: cannot read" in capsys.readouterr().err
