"""Peers for the pull tests: a synthetic study for Orthanc to hold, settings pointing at
it, and a minimal pynetdicom Move SCP that answers 0xA801 (Orthanc 1.10 answers 0xC000
for a destination it does not know, so the standard status needs a peer that sends it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pynetdicom import evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from scp.pacs_settings import PacsSettings
from tests import synthetic
from tests.orthanc import Orthanc
from tests.pynetdicom_peers import PynetdicomScp

PATIENT = "PULL0001"
ACCESSION = "PULLACC1"
N_INSTANCES = 6


def pacs_study(out: Path) -> tuple[list[Path], str]:
    """A small synthetic CT study of :data:`PATIENT`: its files and Study UID."""
    files = synthetic.make_ct_series(
        out, n_slices=N_INSTANCES, rows=32, cols=32, patient_id=PATIENT, accession=ACCESSION
    )
    import pydicom

    return files, str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)


def settings_for(host_port: tuple[str, int], ae_title: str = "ORTHANC", **kw: Any) -> PacsSettings:
    """PacsSettings for a test PACS (short timeouts; Courier is COURIER)."""
    data: dict[str, Any] = {
        "ae_title": ae_title,
        "host": host_port[0],
        "port": host_port[1],
        "calling_ae_title": "COURIER",
        "move_destination": "COURIER",
        "connect_timeout_s": 5,
        "find_timeout_s": 20,
        "move_timeout_s": 60,
        **kw,
    }
    return PacsSettings.model_validate(data)


def orthanc_settings(pacs: Orthanc, **kw: Any) -> PacsSettings:
    return settings_for(("127.0.0.1", pacs.dicom_port), pacs.aet, **kw)


def _unknown_destination(event: evt.Event) -> Any:
    yield None, None  # pynetdicom then answers 0xA801 Move Destination Unknown


def A801MoveScp(port: int) -> PynetdicomScp:
    """A Move SCP on loopback that knows no move destination at all."""
    return PynetdicomScp(
        "NOWHERE",
        port,
        contexts=[StudyRootQueryRetrieveInformationModelMove, Verification],
        handlers=[(evt.EVT_C_MOVE, _unknown_destination)],
    )
