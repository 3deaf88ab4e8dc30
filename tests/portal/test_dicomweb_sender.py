"""WADO-RS instances leave without the sender (store.filemeta.OutgoingFile): a stored
file whose meta names the calling/called AE titles and the sender's address is served
without (0002,0016)-(0002,0028), readable by pydicom (through dicomweb-client), its bytes
after the meta the stored file's; a file without them is served byte for byte; a file
whose meta is malformed is left out of the answer, never cut short."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
from pydicom.filereader import read_file_meta_info
from sqlalchemy import select, update

from store.models import Instance, Study
from tests.delivery.test_outgoing_meta import (
    SENDER_TAGS,
    check_copy,
    meta_bad_element,
    received,
    split_file,
)
from tests.portal import patient_rig
from tests.portal.test_dicomweb import Served, _parts, served  # noqa: F401  (fixture)

rig = patient_rig.rig
built_package = patient_rig.built_package


def _stored_paths(s: Served, uid: str) -> dict[str, Path]:
    with s.rig.db.sessions() as sess:
        rows = sess.execute(
            select(Instance.sop_instance_uid, Instance.path)
            .join(Study, Study.id == Instance.study_id)
            .where(Study.study_uid == uid)
        ).all()
    return {sop: s.content.path(rel) for sop, rel in sorted(rows)}


def test_wado_instances_leave_without_the_sender(served: Served, tmp_path: Path) -> None:  # noqa: F811
    uid = served.uids[0]
    paths = _stored_paths(served, uid)
    sops = list(paths)
    received(paths[sops[0]])  # as the SCP stores it today
    received(paths[sops[1]])
    with served.rig.db.sessions() as s, s.begin():  # and indexes it: the stored size
        for sop in sops[:2]:
            s.execute(
                update(Instance)
                .where(Instance.sop_instance_uid == sop)
                .values(size_bytes=paths[sop].stat().st_size)
            )
    older = {sops[2]: paths[sops[2]].read_bytes()}  # as a version before stored it
    token = served.token(served.patient(0))
    (tmp_path / "check").mkdir()

    r = served.get(f"/studies/{uid}", token, Accept='multipart/related; type="application/dicom"')
    assert r.status_code == 200
    parts = {pydicom.dcmread(io.BytesIO(p)).SOPInstanceUID: p for p in _parts(r)}
    assert sorted(parts) == sorted(sops)
    for sop, copy in parts.items():
        if sop in older:
            assert copy == older[sop]
        else:
            check_copy(copy, paths[sop], tmp_path / "check")

    # The same through dicomweb-client (pydicom reads each part).
    for ds in served.client(token).retrieve_study(uid):
        assert not SENDER_TAGS & set(ds.file_meta.keys())

    # A malformed meta: that instance is left out, the answer says so (206, Warning:
    # portal.dicomweb_partial), the others are whole.
    stored = paths[sops[1]]
    stored.write_bytes(meta_bad_element(stored.read_bytes()))
    r = served.get(f"/studies/{uid}", token, Accept='multipart/related; type="application/dicom"')
    assert r.status_code == 206
    assert r.headers["warning"].startswith(f"299 courier: 1 of {len(sops)} instances")
    kept = {pydicom.dcmread(io.BytesIO(p)).SOPInstanceUID: p for p in _parts(r)}
    assert sorted(kept) == sorted(set(sops) - {sops[1]})
    assert kept[sops[0]] == parts[sops[0]]
    assert read_file_meta_info(paths[sops[0]]).get(0x00020016) is not None  # store untouched
    assert split_file(kept[sops[0]])[1] == split_file(paths[sops[0]].read_bytes())[1]
