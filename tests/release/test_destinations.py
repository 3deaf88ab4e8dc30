"""A request's recipient as a DICOM destination: the draft's rules (a table), the CLI's
``--to-dicom AE@HOST:PORT [--commitment]`` and the REST API's ``destination`` object;
bad input names its field (or option), answers 2 / 422 and writes nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from portal.api import create_app
from portal.apikeys import hash_api_key, new_api_key
from release.requests import RequestBook
from release.validation import RequestDraft, validation_errors
from tests.conftest import Database
from tests.release.helpers import counts, draft_data
from tests.release.test_cli_requests import config, courier, out_json  # noqa: F401  (fixture)

GOOD = {"ae_title": "HOSP2", "host": "pacs.example.org", "port": 104}


def dicom_data(**destination: Any) -> dict[str, Any]:
    data = draft_data()
    del data["recipient_email"], data["second_channel"]
    data["destination"] = {**GOOD, **destination}
    return data


BAD: list[tuple[str, dict[str, Any], str, str]] = [
    # (case, destination overrides, field named, words of the message)
    ("ae too long", {"ae_title": "A" * 17}, "destination.ae_title", "at most 16"),
    ("ae backslash", {"ae_title": "HOSP\\2"}, "destination.ae_title", "backslash"),
    ("ae control", {"ae_title": "HOSP\x1b2"}, "destination.ae_title", "not allowed"),
    ("ae newline", {"ae_title": "HOSP\n2"}, "destination.ae_title", "not allowed"),
    ("ae spaces", {"ae_title": "    "}, "destination.ae_title", "only spaces"),
    ("ae empty", {"ae_title": ""}, "destination.ae_title", "at least 1"),
    ("ae non-ascii", {"ae_title": "HÔP2"}, "destination.ae_title", "not allowed"),
    ("host spaces", {"host": "pacs example.org"}, "destination.host", "host name"),
    ("host url", {"host": "dicom://pacs.example.org"}, "destination.host", "host name"),
    ("host underscore", {"host": "pacs_2.example.org"}, "destination.host", "host name"),
    ("host label dash", {"host": "-pacs.example.org"}, "destination.host", "host name"),
    ("host bad ipv4", {"host": "10.0.0.999"}, "destination.host", "IP address"),
    ("host unspecified", {"host": "0.0.0.0"}, "destination.host", "cannot receive"),
    ("host multicast", {"host": "224.0.0.1"}, "destination.host", "cannot receive"),
    ("host too long", {"host": "a" * 256}, "destination.host", "at most 255"),
    ("port zero", {"port": 0}, "destination.port", "greater than or equal to 1"),
    ("port too big", {"port": 65536}, "destination.port", "less than or equal to 65535"),
    ("port text", {"port": "dicom"}, "destination.port", "integer"),
    ("commitment", {"commitment": "sometimes"}, "destination.commitment", "'auto'"),
    ("unknown key", {"tls": True}, "destination.tls", "unknown field"),
]


@pytest.mark.parametrize(
    ("overrides", "field", "words"), [b[1:] for b in BAD], ids=[b[0] for b in BAD]
)
def test_bad_destinations_name_the_field(overrides: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(ValidationError) as info:
        RequestDraft.model_validate(dicom_data(**overrides))
    errors = validation_errors(info.value)
    assert [e["field"] for e in errors] == [field], errors
    assert words in errors[0]["message"], errors


@pytest.mark.parametrize("person_field", ["recipient_email", "second_channel", "backup_email"])
def test_a_destination_takes_no_person_fields(person_field: str) -> None:
    data = dicom_data()
    data[person_field] = ("email:" if person_field == "second_channel" else "") + "a@example.org"
    with pytest.raises(ValidationError) as info:
        RequestDraft.model_validate(data)
    [error] = validation_errors(info.value)
    assert error["field"] == person_field and "DICOM destination" in error["message"]


def test_good_destinations_are_normalized() -> None:
    d = RequestDraft.model_validate(
        dicom_data(ae_title="  HOSP 2 ", host="PACS.Example.ORG.", port="11112")
    )
    assert d.destination is not None and d.recipient_email is None
    assert (d.destination.ae_title, d.destination.host, d.destination.port) == (
        "HOSP 2",
        "pacs.example.org",
        11112,
    )
    assert d.destination.commitment == "auto"
    v6 = RequestDraft.model_validate(dicom_data(host="[2001:DB8::1]", commitment="off"))
    assert v6.destination is not None and str(v6.destination) == "HOSP2@[2001:db8::1]:104"


def test_a_person_still_needs_email_and_second_channel() -> None:
    data = draft_data()
    del data["recipient_email"], data["second_channel"]
    with pytest.raises(ValidationError) as info:
        RequestDraft.model_validate(data)
    assert {e["field"]: e["message"] for e in validation_errors(info.value)} == {
        "recipient_email": "required",
        "second_channel": "required",
    }


def test_stored_and_idempotent(db: Database) -> None:
    book = RequestBook(db.sessions)
    draft = RequestDraft.model_validate(
        {**dicom_data(commitment="required"), "idempotency_key": "k"}
    )
    req, created = book.submit(draft, "t")
    assert created and req.destination is not None
    assert (req.recipient_email, req.second_channel) == ("", "")
    again, created = book.submit(draft, "t")
    assert (again.id, created) == (req.id, False)
    loaded = book.get(req.reference).destination
    assert loaded is not None
    assert (loaded.ae_title, loaded.host, loaded.port, loaded.commitment, loaded.attempts) == (
        "HOSP2",
        "pacs.example.org",
        104,
        "required",
        0,
    )
    other = RequestDraft.model_validate({**dicom_data(port=105), "idempotency_key": "k"})
    with pytest.raises(ValueError, match="different content"):
        book.submit(other, "t")


# -- the command line ---------------------------------------------------------------------

CREATE = [
    "request",
    "create",
    "--patient-id",
    "MRN-000123",
    "--patient-name",
    "Test^Patient",
    "--birth-date",
    "19700131",
    "--accession",
    "ACC0001",
]


def test_cli_creates_a_dicom_request(
    db: Database,
    config: Path,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = [*CREATE, "--to-dicom", "HOSP2@pacs.example.org:104", "--commitment", "required"]
    assert courier(config, *argv, "--json") == 0
    made = out_json(capsys)
    assert made["destination"]["ae_title"] == "HOSP2"
    assert (made["destination"]["port"], made["destination"]["commitment"]) == (104, "required")
    assert made["recipient_email"] == ""


CLI_BAD = [
    ("no shape", ["--to-dicom", "pacs.example.org:104"], "--to-dicom"),
    ("no port", ["--to-dicom", "HOSP2@pacs.example.org"], "--to-dicom"),
    ("ae", ["--to-dicom", "HOSP\\2@pacs.example.org:104"], "--to-dicom"),
    ("host", ["--to-dicom", "HOSP2@bad host:104"], "--to-dicom"),
    ("port", ["--to-dicom", "HOSP2@pacs.example.org:0"], "--to-dicom"),
    ("port text", ["--to-dicom", "HOSP2@pacs.example.org:x"], "--to-dicom"),
    ("commitment alone", ["--commitment", "off", "--email", "p@example.org"], "--commitment"),
    (
        "email too",
        ["--to-dicom", "HOSP2@pacs.example.org:104", "--email", "p@example.org"],
        "--email",
    ),
]


@pytest.mark.parametrize(("argv", "option"), [b[1:] for b in CLI_BAD], ids=[b[0] for b in CLI_BAD])
def test_cli_bad_destination_names_the_option_and_writes_nothing(
    db: Database,
    config: Path,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    option: str,
) -> None:
    assert courier(config, *CREATE, *argv, "--json") == 2
    errors = out_json(capsys)["errors"]
    assert [e["option"] for e in errors] == [option], errors
    assert counts(db.sessions) == (0, 0, 0)


def test_cli_person_without_email_names_both_options(
    db: Database,
    config: Path,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert courier(config, *CREATE, "--json") == 2
    errors = out_json(capsys)["errors"]
    assert sorted(e["option"] for e in errors) == ["--email", "--second-channel"]
    assert counts(db.sessions) == (0, 0, 0)


# -- the REST API -------------------------------------------------------------------------


@pytest.fixture
def client(db: Database) -> Iterator[tuple[TestClient, dict[str, str]]]:
    key = new_api_key()
    with TestClient(create_app(db.sessions, [hash_api_key(key)])) as c:
        yield c, {"Authorization": f"Bearer {key}"}


def test_api_creates_a_dicom_request(client: tuple[TestClient, dict[str, str]]) -> None:
    c, auth = client
    r = c.post("/api/v1/requests", json=dicom_data(), headers=auth)
    assert r.status_code == 201, r.text
    assert r.json()["destination"]["ae_title"] == "HOSP2"
    shown = c.get(f"/api/v1/requests/{r.json()['reference']}", headers=auth).json()
    assert shown["destination"]["host"] == "pacs.example.org"


@pytest.mark.parametrize(
    ("overrides", "field"), [(b[1], b[2]) for b in BAD[::3]], ids=[b[0] for b in BAD[::3]]
)
def test_api_bad_destination_is_422_and_writes_nothing(
    db: Database, client: tuple[TestClient, dict[str, str]], overrides: dict[str, Any], field: str
) -> None:
    c, auth = client
    r = c.post("/api/v1/requests", json=dicom_data(**overrides), headers=auth)
    assert r.status_code == 422, r.text
    assert [e["field"] for e in r.json()["errors"]] == [field]
    assert counts(db.sessions) == (0, 0, 0)


def test_api_person_without_email_is_422(
    db: Database, client: tuple[TestClient, dict[str, str]]
) -> None:
    c, auth = client
    data = draft_data()
    del data["recipient_email"]
    r = c.post("/api/v1/requests", json=data, headers=auth)
    assert r.status_code == 422, r.text
    assert [e["field"] for e in r.json()["errors"]] == ["recipient_email"]
    assert counts(db.sessions) == (0, 0, 0)
