"""The PACS push-to-destination path, end to end: Orthanc (Debian's package) holds a
study and pushes it to Courier through its REST API (POST /modalities/{id}/store)."""

from __future__ import annotations

from pathlib import Path

import pydicom
from sqlalchemy import select

from store.models import Instance, Study
from tests import synthetic
from tests.conftest import LocalScp, have_orthanc, need
from tests.orthanc import Orthanc
from tests.scu import dataset_bytes


def test_orthanc_pushes_a_study_to_courier(local_scp: LocalScp, tmp_path: Path) -> None:
    need("orthanc", have_orthanc())
    files = synthetic.make_ct_series(tmp_path / "ct", n_slices=40, rows=256, cols=256)
    files += synthetic.make_transfer_syntax_studies(tmp_path / "ts", n_instances=1)[
        "1.2.840.10008.1.2.4.80"  # JPEG-LS lossless: Orthanc passes it on as stored
    ]
    with Orthanc({"courier": ("COURIER", "127.0.0.1", local_scp.port)}, workdir=tmp_path) as pacs:
        pacs.upload(files)
        assert pacs.echo("courier")
        studies = pacs.studies()
        assert len(studies) == 2
        for study in studies:
            pacs.store_to("courier", [study])
    with local_scp.db.sessions() as s:
        rows = {i.sop_instance_uid: i for i in s.scalars(select(Instance))}
        calling = set(s.scalars(select(Study.calling_ae)))
    assert len(rows) == len(files)
    assert calling == {"ORTHANC"}
    for f in files:
        uid = str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)
        assert dataset_bytes(local_scp.content.path(rows[uid].path)) == dataset_bytes(f)
