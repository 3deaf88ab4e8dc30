"""Header text in ``courier`` output: control and bidi characters shown, never obeyed.

A study pushed over DICOM with escape sequences (clear screen, OSC 8 hyperlink, OSC 0
window title, CSI as U+009B, DEL) and bidi controls in its StudyDescription,
PatientName and SeriesDescription: ``courier studies show`` prints none of them raw
(each appears as its ``\\x..``/``\\u....`` escape), ``studies list`` neither, and
``--json`` gives the stored value back unchanged.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from node.cli import main
from node.output import visible
from store.db import make_engine, make_sessions, migrate
from store.models import Study, utcnow
from tests import synthetic
from tests.conftest import Database, LocalScp, start_local_scp
from tests.scu import rewrite, send

# Anything a terminal could act on, or that reorders text: C0 but the line break, DEL,
# C1, bidi marks/embeddings/overrides/isolates, Unicode line separators.
RAW = re.compile(
    "[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]"
)

# (name, value put in the headers, escape that must show in the text output)
PAYLOADS = [
    ("clear-screen", "A\x1b[2J\x1b[HB", "\\x1b[2J"),
    ("osc8-link", "\x1b]8;;http://evil.example/\x07click\x1b]8;;\x07", "\\x1b]8;;"),
    ("osc0-title", "\x1b]0;owned\x07CT", "\\x1b]0;owned"),
    ("c1-csi", "X\x9b31mred", "\\x9b31m"),
    ("delete", "AB\x7fC", "\\x7f"),
    ("rlo", "scan\u202egpj.exe", "\\u202e"),
    ("rlm-isolate", "a\u200fb\u2067c\u2069", "\\u200f"),
]


@pytest.fixture(scope="module")
def pushed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str, dict[str, str]]]:
    """One study per payload, pushed to an in-process SCP; (node.yaml, database URL,
    payload name -> study UID)."""
    tmp = tmp_path_factory.mktemp("cliout")
    url = f"sqlite:///{tmp / 'index.db'}"
    engine = make_engine(url)
    migrate(engine)
    scp: LocalScp = start_local_scp(
        Database("sqlite", url, None, engine, make_sessions(engine)), tmp / "data"
    )
    try:
        files, uids = [], {}
        for i, (name, value, _shown) in enumerate(PAYLOADS):
            uid = synthetic.synthetic_uid("cli-output", i)
            (src,) = synthetic.make_small_instances(
                tmp / name, n=1, n_series=1, study_uid=uid, patient_id=f"CLI{i}"
            )
            files.append(
                rewrite(
                    src,
                    tmp / f"{name}.dcm",
                    SpecificCharacterSet="ISO_IR 192",
                    StudyDescription=value,
                    PatientName=value,
                    SeriesDescription=value,
                )
            )
            uids[name] = uid
        assert send(scp.port, files) == [0] * len(files)
        config = tmp / "node.yaml"
        config.write_text(f"node:\n  data_dir: {scp.content.root}\nstore:\n  database_url: {url}\n")
        yield config, url, uids
    finally:
        scp.server.shutdown()
        scp.server.server_close()
        engine.dispose()


@pytest.mark.parametrize(("name", "value", "shown"), PAYLOADS, ids=[p[0] for p in PAYLOADS])
def test_studies_show_makes_header_controls_visible(
    pushed: tuple[Path, str, dict[str, str]],
    capsys: pytest.CaptureFixture[str],
    name: str,
    value: str,
    shown: str,
) -> None:
    config, url, uids = pushed
    uid = uids[name]
    capsys.readouterr()
    assert main(["studies", "show", uid, "--json", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert RAW.search(out) is None  # JSON escapes them all (ensure_ascii)
    data = json.loads(out)
    engine = make_engine(url)
    try:
        with make_sessions(engine)() as s:
            stored = s.scalars(select(Study).where(Study.study_uid == uid)).one()
            stored_desc, stored_name = stored.study_description, stored.patient_name
            stored_series = stored.series[0].series_description
    finally:
        engine.dispose()
    # --json round-trips what the index holds, byte for byte.
    assert data["study_description"] == stored_desc
    assert data["patient_name"] == stored_name
    assert data["series"][0]["description"] == stored_series

    assert main(["studies", "show", uid, "--config", str(config)]) == 0
    text = capsys.readouterr().out
    assert RAW.search(text) is None, f"raw control character in {text!r}"
    assert f"study_description: {visible(stored_desc)}\n" in text
    assert f"patient_name: {visible(stored_name)}\n" in text
    assert visible(stored_series) in text
    # Ingest may drop some characters from indexed text (C0 but ESC, bidi controls);
    # whatever the index kept is shown as its escape.
    if shown.encode().decode("unicode_escape") in stored_desc:
        assert shown in text


def test_studies_list_has_no_raw_controls(
    pushed: tuple[Path, str, dict[str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    config, _url, uids = pushed
    capsys.readouterr()
    assert main(["studies", "list", "--config", str(config)]) == 0
    text = capsys.readouterr().out
    assert RAW.search(text) is None
    assert all(uid in text for uid in uids.values())
    assert main(["studies", "list", "--json", "--config", str(config)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert set(uids.values()) <= {r["study_uid"] for r in rows}


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("\x00", "\\x00"),
        ("\x1b", "\\x1b"),
        ("\n", "\\x0a"),
        ("\r", "\\x0d"),
        ("\t", "\\x09"),
        ("\x7f", "\\x7f"),
        ("\x85", "\\x85"),
        ("\x9b", "\\x9b"),
        ("\u061c", "\\u061c"),
        ("\u200e", "\\u200e"),
        ("\u200f", "\\u200f"),
        ("\u2028", "\\u2028"),
        ("\u202a", "\\u202a"),
        ("\u202e", "\\u202e"),
        ("\u2066", "\\u2066"),
        ("\u2069", "\\u2069"),
        ("é", "é"),  # letters of any script are kept
        ("\u05d0", "\u05d0"),
    ],
)
def test_visible_escapes_controls_and_keeps_letters(raw: str, shown: str) -> None:
    assert visible(f"a{raw}b") == f"a{shown}b"


def test_rules_test_text_shows_header_values_escaped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`courier rules test` prints header values (the join key here) as they are read
    from the file, so through the same escaping (CSI as U+009B, DEL: pydicom itself
    warns about an ESC in a value it decodes)."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "rules:\n  - name: by-accession\n    when: {AccessionNumber: {present: true}}\n"
        "    action: release\n    join: {accession: AccessionNumber}\n"
    )
    (src,) = synthetic.make_small_instances(tmp_path / "s", n=1, n_series=1)
    f = rewrite(
        src,
        tmp_path / "esc.dcm",
        SpecificCharacterSet="ISO_IR 192",
        AccessionNumber="A\x9b2J\x7fB",
    )
    assert main(["rules", "test", "--rules", str(rules), str(f)]) == 0
    text = capsys.readouterr().out
    assert "by-accession" in text
    assert RAW.search(text) is None, f"raw control character in {text!r}"
    assert "A\\x9b2J\\x7fB" in text


def test_bidi_controls_already_in_the_index_are_shown_escaped(
    pushed: tuple[Path, str, dict[str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    """Ingest strips bidi controls from indexed text now; rows indexed before that (or
    written by anything else) still reach the terminal only as escapes."""
    config, url, _uids = pushed
    uid = synthetic.synthetic_uid("cli-output", "in-index")
    engine = make_engine(url)
    try:
        with make_sessions(engine)() as s, s.begin():
            s.add(
                Study(
                    study_uid=uid,
                    patient_id="CLI-RLO",
                    patient_name="A\u202eB",
                    study_description="scan\u202egpj.exe\u2066x\u200f",
                    modalities="CT",
                    state="stable",
                    instance_count=0,
                    size_bytes=0,
                    first_received_at=utcnow(),
                    last_received_at=utcnow(),
                )
            )
    finally:
        engine.dispose()
    capsys.readouterr()
    assert main(["studies", "show", uid, "--config", str(config)]) == 0
    text = capsys.readouterr().out
    assert RAW.search(text) is None
    assert "study_description: scan\\u202egpj.exe\\u2066x\\u200f\n" in text
    assert "patient_name: A\\u202eB\n" in text
    assert main(["studies", "show", uid, "--json", "--config", str(config)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["study_description"] == "scan\u202egpj.exe\u2066x\u200f"
