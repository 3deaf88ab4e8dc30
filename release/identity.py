"""Right patient, always: does a study's patient identity agree with a request's?

Whatever a release rule joins on (an accession number, a reference in a tag, a Study
Instance UID), a study joins a request only when :func:`compare` finds no blocking
disagreement between the request's identity (:class:`Identity` from the request row,
:func:`of_request`) and the study's, read from its representative header
(:func:`of_header`):

- ``patient_id``: equal after trimming spaces, case as stored (IDs are case-sensitive
  in DICOM). A study without one never agrees.
- ``issuer``: Issuer of Patient ID, compared only when both sides have one.
- ``birth_date``: compared only when both sides have one.
- ``name``: compared loosely (the alphabetic group of the PN, its family, given and
  middle names as a bag of words, case-folded, accents stripped, whitespace collapsed,
  so ``DOE^JANE``, ``Doe^Jane`` and ``Jane Doe`` agree). A different name is *flagged*
  (``Verdict.flagged``), never blocking: names are spelled in too many ways for a
  disagreement to prove a different patient, and the ID and birth date already did.

Sites whose PACS sends the ID of another domain in PatientID name where the request's
ID is found instead (``identity.patient_id_from``: ``OtherPatientIDsSequence`` with the
``identity.issuer`` to pick, or a tag keyword or ``(gggg,eeee)``). The check is turned
off only by ``identity.check: false``, which ``courier doctor`` and the staff dashboard
report for as long as it stays off.

Pure: pydantic and pydicom only; nothing here touches the store. Field names, never
values, leave this module in :class:`Verdict` (they go to timelines and logs).
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# pydicom is imported where used: `import pydicom` loads numpy and its pixel handlers,
# which a command that only reads node.yaml (courier request list) must not pay for.
if TYPE_CHECKING:
    from pydicom.dataset import Dataset
    from pydicom.tag import BaseTag

#: The fields :func:`compare` may name, in the order it names them.
FIELDS = ("patient_id", "issuer", "birth_date", "name")
PATIENT_ID = "PatientID"
OTHER_IDS = "OtherPatientIDsSequence"
_TAG = re.compile(r"^\(([0-9A-Fa-f]{4}),([0-9A-Fa-f]{4})\)$")


class IdentitySettings(BaseModel):
    """The ``identity:`` section of node.yaml (documented there, beside each default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    check: bool = Field(
        default=True,
        description="Compare every study's patient identity with its request's before "
        "joining; false is reported by `courier doctor` and on the staff dashboard.",
    )
    patient_id_from: str = Field(
        default=PATIENT_ID,
        max_length=64,
        description="Where the study's patient ID is read: PatientID, "
        "OtherPatientIDsSequence (the item whose IssuerOfPatientID is `issuer`), or "
        "another tag by keyword or (gggg,eeee).",
    )
    issuer: str = Field(
        default="",
        max_length=64,
        description="With OtherPatientIDsSequence: the Issuer of Patient ID of the "
        "domain requests use.",
    )
    name: Literal["flag", "ignore"] = Field(
        default="flag",
        description="A patient name spelled differently: flag it on the request's "
        "timeline (never blocking), or ignore it.",
    )

    @field_validator("patient_id_from")
    @classmethod
    def _known_source(cls, v: str) -> str:
        v = v.strip()
        if v in (PATIENT_ID, OTHER_IDS) or _TAG.match(v):
            return v
        from pydicom.datadict import tag_for_keyword

        if tag_for_keyword(v) is None:
            raise ValueError(
                "expected PatientID, OtherPatientIDsSequence, a DICOM keyword or (gggg,eeee)"
            )
        return v

    @model_validator(mode="after")
    def _issuer_for_sequence(self) -> IdentitySettings:
        if self.patient_id_from == OTHER_IDS and not self.issuer.strip():
            raise ValueError(
                "patient_id_from: OtherPatientIDsSequence needs identity.issuer "
                "(the Issuer of Patient ID of the item to use)"
            )
        return self


@dataclass(frozen=True)
class Identity:
    """Who a request or a study is about (values are patient data: never log them)."""

    patient_id: str
    birth_date: str = ""
    name: str = ""
    issuer: str = ""


@dataclass(frozen=True)
class Verdict:
    """What :func:`compare` found: ``blocking`` fields hold the study, ``flagged`` ones
    are only recorded. Both hold field names from :data:`FIELDS`, never values."""

    blocking: tuple[str, ...] = ()
    flagged: tuple[str, ...] = ()

    @property
    def agrees(self) -> bool:
        """True when nothing blocks the study from joining."""
        return not self.blocking


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple):  # a multi-valued element: its first value
        value = value[0] if value else ""
    return str(value).strip()


def _tag(source: str) -> BaseTag:
    from pydicom.datadict import tag_for_keyword
    from pydicom.tag import Tag

    m = _TAG.match(source)
    if m:
        return Tag(int(m.group(1), 16), int(m.group(2), 16))
    found = tag_for_keyword(source)
    assert found is not None  # the settings checked it
    return Tag(found)


def of_header(ds: Dataset, settings: IdentitySettings) -> Identity:
    """The study's identity from a representative header, its patient ID (and issuer)
    read where ``settings.patient_id_from`` says. A missing element reads as ``""``."""
    source = settings.patient_id_from
    issuer = _text(ds.get("IssuerOfPatientID"))
    if source == PATIENT_ID:
        patient_id = _text(ds.get("PatientID"))
    elif source == OTHER_IDS:
        patient_id, issuer = "", ""
        wanted = settings.issuer.strip()
        for item in ds.get(OTHER_IDS) or []:
            if _text(item.get("IssuerOfPatientID")) == wanted:
                patient_id, issuer = _text(item.get("PatientID")), wanted
                break
    else:
        elem = ds.get(_tag(source))
        patient_id = _text(elem.value) if elem is not None else ""
        # The issuer names PatientID's domain, not this tag's: not compared.
        issuer = ""
    return Identity(
        patient_id=patient_id,
        birth_date=_text(ds.get("PatientBirthDate")),
        name=_text(ds.get("PatientName")),
        issuer=issuer,
    )


def name_words(name: str) -> Counter[str]:
    """The words of a person name as compared: the alphabetic group (before the first
    ``=``) of a PN, its family, given and middle components (prefix and suffix are
    left out), case-folded, accents stripped; hyphens, commas and dots separate words."""
    alphabetic = name.split("=", 1)[0]
    parts = alphabetic.split("^")[:3]
    words: Counter[str] = Counter()
    for part in parts:
        plain = "".join(
            c for c in unicodedata.normalize("NFKD", part) if not unicodedata.combining(c)
        )
        words.update(w for w in re.split(r"[\s,.\-']+", plain.casefold()) if w)
    return words


def compare(request: Identity, study: Identity, settings: IdentitySettings) -> Verdict:
    """The fields on which ``study`` disagrees with ``request`` (see the module
    docstring for each rule). With ``settings.check`` off, always agreement."""
    if not settings.check:
        return Verdict()
    blocking: list[str] = []
    if not study.patient_id or request.patient_id.strip() != study.patient_id.strip():
        blocking.append("patient_id")
    for field in ("issuer", "birth_date"):
        ours, theirs = getattr(request, field).strip(), getattr(study, field).strip()
        if ours and theirs and ours != theirs:  # compared only when both sides have one
            blocking.append(field)
    flagged: list[str] = []
    named = settings.name == "flag" and request.name.strip() and study.name.strip()
    if named and name_words(request.name) != name_words(study.name):
        flagged.append("name")
    return Verdict(tuple(blocking), tuple(flagged))
