"""scp.pacs against a real PACS: Debian's Orthanc holding a synthetic study, on loopback.

C-FIND lists the patient's studies with NumberOfStudyRelatedInstances; C-MOVE sends the
study into Courier's SCP; each failure mode gives its own error with advice: a PACS
that is down, an AE it does not allow, a destination it does not know (Orthanc's
0xC000, and the standard 0xA801 from a Move SCP that sends it).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy import select

from scp import pacs
from scp.pacs_settings import PacsSettings, with_scp_defaults
from store.models import Instance, Study
from tests.conftest import LocalScp, have_orthanc, need
from tests.orthanc import Orthanc
from tests.peers import free_port
from tests.scp.pacs_peers import (
    ACCESSION,
    N_INSTANCES,
    PATIENT,
    A801MoveScp,
    orthanc_settings,
    pacs_study,
    settings_for,
)


def test_find_lists_the_patients_study_with_its_instance_count(tmp_path: Path) -> None:
    need("orthanc", have_orthanc())
    files, study_uid = pacs_study(tmp_path / "ct")
    with Orthanc({"courier": ("COURIER", "127.0.0.1", free_port())}, workdir=tmp_path) as o:
        o.upload(files)
        settings = orthanc_settings(o)
        pacs.echo(settings)
        hits = pacs.find_studies(settings, PATIENT)
        assert [(h.study_uid, h.instances, h.accession, h.modalities) for h in hits] == [
            (study_uid, N_INSTANCES, ACCESSION, "CT")
        ]
        assert hits[0].study_date == "20240102" or hits[0].study_date.isdigit()
        assert pacs.find_studies(settings, "NO-SUCH-PATIENT") == []


def test_move_sends_the_study_into_courier(local_scp: LocalScp, tmp_path: Path) -> None:
    need("orthanc", have_orthanc())
    files, study_uid = pacs_study(tmp_path / "ct")
    with Orthanc({"courier": ("COURIER", "127.0.0.1", local_scp.port)}, workdir=tmp_path) as o:
        o.upload(files)
        outcome = pacs.move_study(orthanc_settings(o), study_uid)
    assert outcome.ok and outcome.completed == N_INSTANCES and outcome.failed == 0
    with local_scp.db.sessions() as s:
        assert s.scalar(select(Study.instance_count).where(Study.study_uid == study_uid)) == 6
        assert len(list(s.scalars(select(Instance.id)))) == N_INSTANCES


def test_a_pacs_that_is_down_is_unreachable_with_advice() -> None:
    settings = settings_for(("127.0.0.1", free_port()), connect_timeout_s=2)
    for call in (
        lambda: pacs.echo(settings),
        lambda: pacs.find_studies(settings, PATIENT),
        lambda: pacs.move_study(settings, "1.2.3.4"),
    ):
        with pytest.raises(pacs.PacsUnreachable) as err:
            call()
        assert "pacs.host and pacs.port" in str(err.value)
        assert not err.value.permanent
        assert isinstance(err.value, ConnectionError)


def test_an_ae_orthanc_does_not_allow_is_told_what_to_ask_for(tmp_path: Path) -> None:
    need("orthanc", have_orthanc())
    files, study_uid = pacs_study(tmp_path / "ct")
    with Orthanc({}, workdir=tmp_path) as o:  # COURIER is not among its modalities
        o.upload(files)
        settings = orthanc_settings(o)
        with pytest.raises(pacs.PacsAborted) as err:
            pacs.find_studies(settings, PATIENT)
        assert "COURIER" in str(err.value) and PATIENT not in str(err.value)
        with pytest.raises(pacs.PacsAborted):
            pacs.move_study(settings, study_uid)


def test_orthanc_not_knowing_the_destination_is_a_clear_failure(tmp_path: Path) -> None:
    need("orthanc", have_orthanc())
    files, study_uid = pacs_study(tmp_path / "ct")
    # Orthanc lets COURIER query and retrieve, but knows no modality called ELSEWHERE.
    with Orthanc({"courier": ("COURIER", "127.0.0.1", free_port())}, workdir=tmp_path) as o:
        o.upload(files)
        settings = orthanc_settings(o, move_destination="ELSEWHERE")
        with pytest.raises(pacs.MoveFailed) as err:
            pacs.move_study(settings, study_uid)
    # Orthanc 1.10 answers 0xC000 (unable to process), not the standard 0xA801.
    assert err.value.outcome.status == 0xC000
    assert "ELSEWHERE" in str(err.value) and "0xC000" in str(err.value)


def test_move_destination_unknown_a801_is_permanent() -> None:
    port = free_port()
    with A801MoveScp(port):
        settings = settings_for(("127.0.0.1", port), "NOWHERE")
        with pytest.raises(pacs.MoveDestinationUnknown) as err:
            pacs.move_study(settings, "1.2.3.4")
    assert err.value.permanent
    assert err.value.outcome.status == 0xA801
    assert "0xA801" in str(err.value) and "pacs.move_destination" in str(err.value)


@pytest.mark.parametrize("patient_id", ["", "  ", "PAT*", "PAT?", "A\\B"])
def test_find_refuses_ids_that_would_match_other_patients(patient_id: str) -> None:
    settings = settings_for(("127.0.0.1", 1))
    with pytest.raises(ValueError):
        pacs.find_studies(settings, patient_id)


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"host": "127.0.0.1", "port": 104}, "ae_title"),
        ({"ae_title": "PACS", "host": "127.0.0.1", "port": 0}, "port"),
        ({"ae_title": "PACS", "host": "127.0.0.1", "port": 104, "colour": 1}, "colour"),
        ({"ae_title": "A\\B", "host": "127.0.0.1", "port": 104}, "ae_title"),
        ({"ae_title": "PACS", "host": "a b", "port": 104}, "host"),
        ({"ae_title": "PACS", "host": "h", "port": 104, "max_attempts": 0}, "max_attempts"),
        (
            {
                "ae_title": "P",
                "host": "h",
                "port": 1,
                "retry_backoff_s": 60,
                "retry_backoff_max_s": 1,
            },
            "retry_backoff_max_s",
        ),
    ],
)
def test_settings_are_strict(data: dict[str, object], key: str) -> None:
    with pytest.raises(ValidationError) as err:
        PacsSettings.model_validate(data)
    assert key in str(err.value)


def test_settings_default_to_the_scps_ae_and_back_off_exponentially() -> None:
    raw = with_scp_defaults({"ae_title": "PACS", "host": "h", "port": 104}, "COURIER2")
    s = PacsSettings.model_validate({**raw, "retry_backoff_s": 10, "retry_backoff_max_s": 35})
    assert (s.calling, s.destination) == ("COURIER2", "COURIER2")
    assert [s.backoff_s(n) for n in (1, 2, 3, 4, 50)] == [10, 20, 35, 35, 35]
