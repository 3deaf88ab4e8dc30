"""From a pydicom header to facts: public and private attributes, creators, UN values."""

from __future__ import annotations

from io import BytesIO

import pytest
from pydicom import Dataset, dcmread, dcmwrite
from pydicom.sequence import Sequence

from rules import AssociationFacts, facts_from_dataset
from tests.rules.helpers import TODAY, ruleset

ACME = 0x00110010


def header() -> Dataset:
    """A synthetic header with two private blocks, a sequence and pixel data."""
    ds = Dataset()
    ds.Modality = "CT"
    ds.AccessionNumber = "ACC-1 "
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PatientName = "Doe^Jane"
    ds.SeriesNumber = 3
    ds.StudyDescription = ""
    ds.ReferencedStudySequence = Sequence([Dataset()])
    ds.BitsAllocated = 16
    ds.PixelData = b"\x00\x01" * 8
    other = ds.private_block(0x0011, "OTHER", create=True)  # takes (0011,0010)
    other.add_new(0x10, "LO", "NOT-MINE")
    acme = ds.private_block(0x0011, "ACME", create=True)  # takes (0011,0011)
    acme.add_new(0x10, "LO", "REF-77")
    return ds


def implicit(ds: Dataset) -> Dataset:
    """Round-trip through implicit VR: private values come back as UN bytes."""
    buf = BytesIO()
    dcmwrite(buf, ds, implicit_vr=True, little_endian=True, enforce_file_format=False)
    buf.seek(0)
    return dcmread(buf, force=True)


@pytest.mark.parametrize("transform", [lambda ds: ds, implicit], ids=["explicit", "implicit-un"])
def test_all_text_attributes(transform: object) -> None:
    ds = transform(header())  # type: ignore[operator]
    facts = facts_from_dataset(ds, AssociationFacts("PACS ", "COURIER", "10.0.0.5"))
    assert facts.get(0x00080060) == "CT"
    assert facts.get(0x00080050) == "ACC-1"  # padding stripped
    assert facts.get(0x00080008) == ["ORIGINAL", "PRIMARY"]
    assert facts.get(0x00100010) == "Doe^Jane"  # a PersonName is one value
    assert facts.get(0x00200011) == "3"
    assert facts.get(0x00081030) is None  # empty is absent
    assert facts.get(0x00081110) is None  # sequence skipped
    assert facts.get(0x7FE00010) is None  # pixel data skipped
    assert facts.get(ACME, "ACME") == "REF-77"  # block (0011,11xx), found by creator
    assert facts.get(ACME, "OTHER") == "NOT-MINE"
    assert facts.get(ACME) == "OTHER"  # the creator element itself
    assert (facts.calling_ae, facts.called_ae, facts.peer_host) == ("PACS", "COURIER", "10.0.0.5")


def test_wanted_reads_only_what_rules_need() -> None:
    rules = ruleset(
        """
        rules:
          - name: acme
            when:
              "(0011,xx10)@ACME": {prefix: REF-}
              Modality: CT
            action: release
            join:
              reference: {from: "(0011,xx10)@ACME", pattern: "REF-(?P<reference>\\\\d+)"}
        """
    )
    facts = facts_from_dataset(implicit(header()), wanted=rules.wanted)
    assert set(facts.header) == {(ACME, "ACME"), (0x00080060, None)}
    decision = rules.decide(facts, today=TODAY)
    assert (decision.action, dict(decision.join)) == ("release", {"reference": "77"})


def test_missing_creator_or_element() -> None:
    ds = header()
    facts = facts_from_dataset(
        ds, wanted=[(ACME, "NOBODY"), (0x00110020, "ACME"), (0x00100020, None)]
    )
    assert facts.header == {}


def test_binary_private_un_is_skipped() -> None:
    ds = Dataset()
    block = ds.private_block(0x0013, "ACME", create=True)
    block.add_new(0x01, "UN", b"\x00\xff\x10binary")
    block.add_new(0x02, "UN", b"A\\B ")
    facts = facts_from_dataset(ds)
    assert facts.get(0x00130001, "ACME") is None
    assert facts.get(0x00130002, "ACME") == ["A", "B"]
