"""`courier request ...` through a small argparse harness (node/cli.py wires it later).

Runs on SQLite and PostgreSQL: node.yaml points at the test's database.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from delivery.grants import GrantKeys, new_grant
from node.cli_requests import add_request_parsers, run_request_command
from node.config import load_config
from store.models import Notification, ReleaseRequest, RequestState, utcnow
from tests.conftest import Database, free_port
from tests.release.helpers import MOBILE, counts

CREATE = [
    "request",
    "create",
    "--patient-id",
    "MRN-000123",
    "--patient-name",
    "Test^Patient",
    "--birth-date",
    "19700131",
    "--email",
    "patient@example.org",
    "--second-channel",
    f"sms:{MOBILE}",
    "--accession",
    "ACC0001",
]


def courier(config: Path, *argv: str) -> int:
    """Parse ``argv`` as ``courier`` would and run the request command."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config")
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true")
    parser = argparse.ArgumentParser(prog="courier")
    sub = parser.add_subparsers(dest="command", required=True)
    add_request_parsers(sub, common, as_json)
    args = parser.parse_args([*argv, "--config", str(config)])
    return run_request_command(args, load_config(Path(args.config)))


@pytest.fixture
def config(db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("USER", "alice")
    url = db.url
    if db.schema:
        url = f"{db.url}?options=-csearch_path%3D{db.schema}"
    path = tmp_path / "node.yaml"
    path.write_text(f"node:\n  data_dir: {tmp_path / 'data'}\nstore:\n  database_url: '{url}'\n")
    return path


def out_json(capsys: pytest.CaptureFixture[str]) -> Any:
    return json.loads(capsys.readouterr().out)


def test_create_show_list_cancel(
    db: Database, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert courier(config, *CREATE, "--study-uid", "1.2.3.4", "--by-reference", "--json") == 0
    made = out_json(capsys)
    ref = made["reference"]
    assert (made["state"], made["created"], made["requested_by"]) == ("pending", True, "alice")
    assert [s["kind"] for s in made["selection"]] == ["accession", "study_uid", "reference"]

    assert courier(config, "request", "show", ref.lower(), "--json") == 0
    shown = out_json(capsys)
    assert shown["reference"] == ref and shown["recipient_email"] == "patient@example.org"
    assert [(e["from"], e["to"], e["actor"]) for e in shown["timeline"]] == [
        ("", "pending", "cli:alice")
    ]

    assert courier(config, "request", "cancel", ref, "--reason", "duplicate", "--json") == 0
    assert out_json(capsys)["state"] == "cancelled"
    assert courier(config, "request", "list", "--state", "cancelled", "--json") == 0
    assert [r["reference"] for r in out_json(capsys)] == [ref]
    assert courier(config, "request", "list", "--state", "pending", "--json") == 0
    assert out_json(capsys) == []

    assert courier(config, "request", "cancel", ref, "--reason", "again") == 1
    assert "stays so" in capsys.readouterr().err
    assert courier(config, "request", "show", ref) == 0
    text = capsys.readouterr().out
    assert f"reference: {ref}" in text and "pending -> cancelled by cli:alice: duplicate" in text
    assert courier(config, "request", "list") == 0
    assert ref in capsys.readouterr().out
    assert counts(db.sessions) == (1, 3, 2)


def test_show_unknown_is_not_found(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert courier(config, "request", "show", "CR-2345-6789-2") == 1
    assert "courier request list" in capsys.readouterr().err
    assert courier(config, "request", "show", "42", "--json") == 1
    assert "no request" in out_json(capsys)["error"]


def test_resend_only_once_notified(
    db: Database, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert courier(config, *CREATE, "--json") == 0
    ref = out_json(capsys)["reference"]
    assert courier(config, "request", "resend", ref) == 1
    assert "nothing to resend" in capsys.readouterr().err
    with db.sessions.begin() as s:
        s.execute(update(ReleaseRequest).values(state=RequestState.NOTIFIED))
    # Notified but without an active link (none made, here): refused, nothing recorded.
    assert courier(config, "request", "resend", ref) == 1
    assert "no active link" in capsys.readouterr().err
    with db.sessions.begin() as s:
        req = s.scalars(select(ReleaseRequest)).one()
        new_grant(s, GrantKeys(b"k" * 32), req, package_id=None, link_days=30, now=utcnow())
    assert courier(config, "request", "resend", ref) == 0
    assert "link email queued again" in capsys.readouterr().out
    with db.sessions() as s:
        queued = list(s.scalars(select(Notification)))
    assert [(n.kind, n.state, n.recipient) for n in queued] == [
        ("link_email", "queued", "patient@example.org")
    ]
    assert courier(config, "request", "show", ref, "--json") == 0
    last = out_json(capsys)["timeline"][-1]
    assert (last["from"], last["to"], last["reason"]) == (
        "notified",
        "notified",
        "resend requested",
    )


def test_idempotency_key(db: Database, config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert courier(config, *CREATE, "--idempotency-key", "ris-42", "--json") == 0
    first = out_json(capsys)
    assert courier(config, *CREATE, "--idempotency-key", "ris-42", "--json") == 0
    second = out_json(capsys)
    assert (second["reference"], second["created"]) == (first["reference"], False)
    assert courier(config, *CREATE, "--idempotency-key", "ris-42", "--link-days", "3") == 1
    err = capsys.readouterr().err
    assert "--idempotency-key:" in err and first["reference"] in err
    assert counts(db.sessions) == (1, 1, 1)


def _replace(argv: list[str], flag: str, value: str) -> list[str]:
    out = list(argv)
    out[out.index(flag) + 1] = value
    return out


def _without(argv: list[str], flag: str) -> list[str]:
    i = argv.index(flag)
    return argv[:i] + argv[i + 2 :]


HTML = "<img src=x onerror=alert(1)>"
SQL = "Robert'); DROP TABLE release_requests;--"
BAD: list[tuple[str, list[str], str]] = [
    ("malformed email", _replace(CREATE, "--email", "patient@@example"), "--email"),
    (
        "national number",
        _replace(CREATE, "--second-channel", "sms:07911123456"),
        "--second-channel",
    ),
    ("not E.164", _replace(CREATE, "--second-channel", "sms:+44 (0)7911"), "--second-channel"),
    (
        "same as recipient",
        _replace(CREATE, "--second-channel", "email:PATIENT@example.org"),
        "--second-channel",
    ),
    ("html name", _replace(CREATE, "--patient-name", HTML), "--patient-name"),
    ("sql id", _replace(CREATE, "--patient-id", SQL), "--patient-id"),
    ("10 kB note", [*CREATE, "--note", "A" * 10_240], "--note"),
    ("10 kB name", _replace(CREATE, "--patient-name", "A" * 10_240), "--patient-name"),
    ("control chars", _replace(CREATE, "--patient-name", "Test\x00Patient"), "--patient-name"),
    ("bad uid", [*CREATE, "--study-uid", "1.2.x"], "--study-uid"),
    ("long accession", _replace(CREATE, "--accession", "A" * 17), "--accession"),
    ("no selection", _without(CREATE, "--accession"), "--accession/--study-uid"),
    ("expected, two selected", [*CREATE, "--study-uid", "1.2.3", "--expected", "5"], "--expected"),
    ("expected zero", [*CREATE, "--expected", "0"], "--expected"),
    ("language", [*CREATE, "--language", "xx"], "--language"),
    ("urgency", [*CREATE, "--urgency", "yesterday"], "--urgency"),
    ("link days", [*CREATE, "--link-days", "400"], "--link-days"),
    ("birth date", _replace(CREATE, "--birth-date", "1970-01-31"), "--birth-date"),
    ("requested by", [*CREATE, "--requested-by", HTML], "--requested-by"),
]


@pytest.mark.parametrize(("argv", "option"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_names_the_option_and_writes_nothing(
    db: Database, config: Path, capsys: pytest.CaptureFixture[str], argv: list[str], option: str
) -> None:
    assert courier(config, *argv) == 2
    err = capsys.readouterr().err
    assert "nothing was stored" in err
    assert f"  {option}: " in err, err
    assert courier(config, *argv, "--json") == 2
    errors = out_json(capsys)["errors"]
    assert [e["option"] for e in errors] == [option]
    assert all(e["field"] and e["message"] for e in errors)
    assert counts(db.sessions) == (0, 0, 0)


def test_unknown_selector_is_a_usage_error(
    db: Database, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        courier(config, *CREATE, "--series-uid", "1.2.3")
    assert info.value.code == 2
    assert "--series-uid" in capsys.readouterr().err
    assert counts(db.sessions) == (0, 0, 0)


def test_missing_user_falls_back_to_the_login_name(
    db: Database, config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import getpass

    monkeypatch.delenv("USER", raising=False)
    assert courier(config, *CREATE, "--json") == 0
    assert out_json(capsys)["requested_by"] == getpass.getuser()
    assert (
        courier(config, *CREATE, "--requested-by", "dr.who", "--idempotency-key", "k2", "--json")
        == 0
    )
    assert out_json(capsys)["requested_by"] == "dr.who"


def test_database_unavailable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "node.yaml"
    url = f"postgresql+psycopg://courier@127.0.0.1:{free_port()}/none"
    path.write_text(f"node:\n  data_dir: {tmp_path / 'data'}\nstore:\n  database_url: '{url}'\n")
    assert courier(path, "request", "list") == 3
    assert "database" in capsys.readouterr().err
