"""The DICOM Conformance Statement in docs/ is what the code generates (it cannot go
stale), and it covers the code's own tables: every storage SOP class and transfer
syntax the SCP accepts, every C-STORE and storage commitment status it answers."""

from __future__ import annotations

import pytest
from pydicom.uid import AllTransferSyntaxes

from node.cli import main
from node.conformance import DOC_PATH, commented_codes, statement
from scp import commitment_scp, server
from scp.ingest import Status


def test_the_committed_statement_is_the_generated_one() -> None:
    generated = statement()
    assert statement() == generated  # deterministic
    committed = DOC_PATH.read_text(encoding="utf-8") if DOC_PATH.exists() else ""
    # A new pynetdicom or pydicom changes it too (implementation UID, transfer syntaxes,
    # SOP classes): that is a change hospitals must see, so it fails here as well.
    built_on = [line for line in generated.splitlines() if line.startswith("Layout of")]
    assert committed == generated, (
        "docs/conformance.md is stale: run `courier conformance --write` "
        f"(or `courier conformance > docs/conformance.md`) and commit it ({built_on})"
    )


def test_the_command_prints_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["conformance"]) == 0
    assert capsys.readouterr().out == statement()


@pytest.mark.parametrize(
    "section",
    [
        "## 1 Overview",
        "#### 3.2.1 SOP classes",
        "#### 3.2.2 Association policies",
        "#### 3.2.3 Association initiation policy",
        "#### 3.2.4 Association acceptance policy",
        "### 3.3 Network interfaces",
        "### 3.4 Configuration",
        "## 5 Support of character sets",
        "### 6.1 Security profiles",
    ],
)
def test_the_ps32_layout(section: str) -> None:
    assert f"\n{section}\n" in statement()


def test_every_accepted_context_and_status_is_in_it() -> None:
    text = statement()
    for cx in server.storage_contexts(commitment=True):
        assert f"| {cx.abstract_syntax} |" in text  # the SOP class table
    for ts in AllTransferSyntaxes:
        assert f"`{ts}`" in text
    for status in Status:
        assert f"| 0x{int(status):04X} |" in text
    for name in ("SUCCESS", "INVALID_ARGUMENT", "NO_SUCH_ACTION", "RESOURCE_LIMITATION"):
        assert f"| 0x{getattr(commitment_scp, name):04X} |" in text
    assert "| 0x0122 |" in text  # N-ACTION with storage commitment off


def test_meanings_come_from_the_comments_beside_the_codes() -> None:
    codes = dict(commented_codes(Status))
    assert codes["0x0000"].startswith("Success")
    assert codes["0xC003"].endswith("scp.max_pixels")
    assert len(codes) == len(Status)
    reasons = commented_codes(commitment_scp, prefix="REASON_")
    assert [c for c, _ in reasons] == ["0x0110", "0x0112", "0x0119", "0x0213"]
    assert commented_codes(server, prefix="REJECT_", hex_digits=2)[0][0] == "0x01, 0x01, 0x03"
