"""The test peers start on loopback, accept data and shut down cleanly."""

from __future__ import annotations

import socket
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless, RLELossless

from tests.dcmtk import DcmtkStorescp, echoscu, have_dcmtk, storescu
from tests.orthanc import Orthanc, have_orthanc
from tests.peers import free_port, require_peer
from tests.synthetic import (
    dataset_bytes,
    dcmtk_knows,
    make_ct_series,
    make_transfer_syntax_studies,
    storescu_args_for,
)

pytestmark = pytest.mark.peers


@pytest.fixture(scope="module")
def ts_studies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    return make_transfer_syntax_studies(tmp_path_factory.mktemp("ts"), n_instances=2)


def test_free_port_can_be_bound() -> None:
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_require_peer_skips_or_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    require_peer("present", True)
    monkeypatch.delenv("COURIER_REQUIRE_PEERS", raising=False)
    with pytest.raises(pytest.skip.Exception):
        require_peer("absent", False)
    monkeypatch.setenv("COURIER_REQUIRE_PEERS", "1")
    with pytest.raises(pytest.fail.Exception, match="absent"):
        require_peer("absent", False)


def test_only_loopback_hosts() -> None:
    with pytest.raises(ValueError, match="loopback"):
        echoscu("192.0.2.1", 104)
    with pytest.raises(ValueError, match="loopback"):
        Orthanc({"X": ("X", "192.0.2.1", 104)}).config()


def test_storescp_receives_byte_identical_datasets(tmp_path: Path) -> None:
    require_peer("dcmtk", have_dcmtk())
    sent = make_ct_series(tmp_path, n_slices=3, rows=128, cols=128)

    with DcmtkStorescp() as scp:
        assert echoscu("127.0.0.1", scp.port, called_ae=scp.ae_title).returncode == 0
        result = storescu("127.0.0.1", scp.port, tmp_path, called_ae=scp.ae_title, extra=["-xe"])
        assert result.returncode == 0, result.stderr
        received = {pydicom.dcmread(p).SOPInstanceUID: dataset_bytes(p) for p in scp.files()}

    assert len(received) == 3
    for path in sent:
        uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
        assert received[uid] == dataset_bytes(path)


def test_storescu_keeps_each_known_transfer_syntax(ts_studies: dict[str, list[Path]]) -> None:
    require_peer("dcmtk", have_dcmtk())
    with DcmtkStorescp() as scp:
        for ts, paths in ts_studies.items():
            if not dcmtk_knows(ts):
                continue
            extra = storescu_args_for(ts)
            result = storescu("127.0.0.1", scp.port, paths, called_ae=scp.ae_title, extra=extra)
            assert result.returncode == 0, f"{ts}: {result.stderr}"
        received = [pydicom.dcmread(p, stop_before_pixels=True) for p in scp.files()]

    by_study = {ds.StudyInstanceUID: ds.file_meta.TransferSyntaxUID for ds in received}
    for ts, paths in ts_studies.items():
        if dcmtk_knows(ts):
            study = pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID
            assert by_study[study] == ts


def test_storescu_fails_when_the_syntax_is_not_proposed(ts_studies: dict[str, list[Path]]) -> None:
    require_peer("dcmtk", have_dcmtk())
    with DcmtkStorescp() as scp:
        # Default proposal is uncompressed only, and storescu cannot decompress RLE.
        result = storescu("127.0.0.1", scp.port, ts_studies[RLELossless], called_ae=scp.ae_title)
        assert result.returncode != 0
        assert scp.files() == []


def test_orthanc_accepts_upload_and_lists_the_study(ts_studies: dict[str, list[Path]]) -> None:
    require_peer("orthanc", have_orthanc())
    paths = ts_studies[ExplicitVRLittleEndian]
    study_uid = pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID

    with Orthanc() as orthanc:
        assert orthanc.studies() == []
        ids = orthanc.upload(paths)
        assert len(ids) == len(paths)
        assert len(orthanc.studies()) == 1
        assert orthanc.study_instance_uids() == [study_uid]


def test_orthanc_receives_from_storescu_and_forwards_to_storescp(
    ts_studies: dict[str, list[Path]],
) -> None:
    require_peer("dcmtk", have_dcmtk())
    require_peer("orthanc", have_orthanc())
    paths = ts_studies[JPEGLSLossless]
    study_uid = pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID

    with (
        DcmtkStorescp("DOWNSTREAM") as scp,
        Orthanc(
            {
                "down": (scp.ae_title, "127.0.0.1", scp.port),
                "nobody": ("NOBODY", "127.0.0.1", free_port()),
            }
        ) as orthanc,
    ):
        result = storescu(
            "127.0.0.1",
            orthanc.dicom_port,
            paths,
            called_ae=orthanc.aet,
            extra=storescu_args_for(JPEGLSLossless),
        )
        assert result.returncode == 0, result.stderr
        assert orthanc.study_instance_uids() == [study_uid]
        assert orthanc.echo("down")
        assert not orthanc.echo("nobody")
        answer = orthanc.store_to("down", orthanc.studies())
        assert answer["InstancesCount"] == len(paths)
        assert answer["FailedInstancesCount"] == 0
        received = [pydicom.dcmread(p, stop_before_pixels=True) for p in scp.files()]

    assert {ds.StudyInstanceUID for ds in received} == {study_uid}
    assert len(received) == len(paths)
