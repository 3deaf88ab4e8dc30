"""What staff (CLI, later the REST API) submit for a release request, validated once.

:class:`RequestDraft` is the one validation used everywhere: unknown fields are refused,
every text is bounded and free of control characters, e-mail addresses are checked with
``email-validator`` (syntax only: no DNS look-up) and phone numbers with ``phonenumbers``
(a valid number written in E.164). Values come out normalized (the address's domain in
lower case, the number in E.164, the language in its canonical case), so equal requests
compare equal. :func:`validation_errors` turns pydantic's ``ValidationError`` into
``{"field", "message"}`` pairs; messages say what is expected and never leave this
process through a log line (they may quote the input).

The recipient is a person (``recipient_email`` and ``second_channel``, both required
then) or a DICOM destination (``destination``: an AE title, host and port, and the
storage commitment wanted; the e-mail fields must then be left out: nobody gets a link).
"""

from __future__ import annotations

import ipaddress
import unicodedata
from collections.abc import Iterable, Mapping
from datetime import date, datetime
from typing import Annotated, Any, Literal

import phonenumbers
from email_validator import EmailNotValidError, validate_email
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails

# The languages live apart so the command line can name them without these validators.
from release.languages import SUPPORTED_LANGUAGES as SUPPORTED_LANGUAGES
from release.phonepolicy import type_problem
from store.content import check_uid
from store.errors import InvalidUID
from store.models import CommitmentMode, Urgency

MAX_SELECTIONS = 100
# Names, IDs and actors take letters, digits and a little punctuation, nothing more:
# markup, quotes and statement separators have no place in them, and refusing them here
# stops junk before it reaches an e-mail template or a staff page. "^" is DICOM's
# component separator (DOE^JANE), as a RIS may send it.
_NAME_PUNCTUATION = frozenset(" '-.,^")
_ID_PUNCTUATION = frozenset(" ._/:#+-")
_ACTOR_PUNCTUATION = frozenset(" ._@:-")
_KEY_PUNCTUATION = frozenset("._:-")


def _no_controls(value: str, *, allow_newlines: bool = False) -> str:
    allowed = "\n\t" if allow_newlines else ""
    for ch in value:
        if ch not in allowed and unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn"):
            raise ValueError(
                f"contains a control or invisible character (U+{ord(ch):04X}); "
                "expected plain printable text"
            )
    return value


def _plain(value: str) -> str:
    return _no_controls(value)


def _multiline(value: str) -> str:
    return _no_controls(value, allow_newlines=True)


def _only(
    value: str,
    punctuation: frozenset[str],
    what: str,
    *,
    letters: Literal["alnum", "ascii", "name"] = "alnum",
) -> str:
    """Refuse characters outside letters/digits (per ``letters``) and ``punctuation``."""
    for ch in value:
        if ch in punctuation:
            continue
        if letters == "ascii" and ch.isascii() and ch.isalnum():
            continue
        if letters == "alnum" and ch.isalnum():
            continue
        if letters == "name" and unicodedata.category(ch)[0] in ("L", "M"):
            continue
        shown = "".join(sorted(punctuation - {" "}))
        raise ValueError(f"character {ch!r} is not allowed; expected {what} and {shown!r}")
    return value


def _email(value: str) -> str:
    try:
        return validate_email(value, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise ValueError(f"not a valid e-mail address ({exc}); expected name@example.org") from None


def _sms_number(value: str) -> str:
    expected = "expected sms:+ then the country code and number in E.164, e.g. sms:+447911123456"
    if not value.startswith("+") or not value[1:].isascii() or not value[1:].isdigit():
        raise ValueError(f"the number is not in E.164 form; {expected}")
    try:
        number = phonenumbers.parse(value, None)
    except phonenumbers.NumberParseException:
        raise ValueError(f"the number cannot be read; {expected}") from None
    if not phonenumbers.is_valid_number(number):
        raise ValueError(f"not a valid phone number for its country code; {expected}")
    # One policy for every way a number comes in (premium-rate, VoIP... refused).
    problem = type_problem(number)
    if problem is not None:
        raise ValueError(problem)
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


# Lengths are checked before anything else looks at the text (a 10 kB field costs nothing).
def _bounded(low: int, high: int) -> StringConstraints:
    return StringConstraints(strip_whitespace=True, min_length=low, max_length=high)


Text16 = Annotated[str, _bounded(1, 16), AfterValidator(_plain)]
Text64 = Annotated[str, _bounded(1, 64), AfterValidator(_plain)]
Text200 = Annotated[str, _bounded(1, 200), AfterValidator(_plain)]
Address = Annotated[str, _bounded(3, 254), AfterValidator(_plain)]
Channel = Annotated[str, _bounded(5, 260), AfterValidator(_plain)]
Note = Annotated[str, _bounded(0, 2000), AfterValidator(_multiline)]


class Selector(BaseModel):
    """One study to wait for: by accession number or by Study Instance UID."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["accession", "study_uid"]
    value: Text64
    expected_instances: Annotated[int, Field(ge=1, le=1_000_000)] | None = None

    @field_validator("value")
    @classmethod
    def _value_fits_kind(cls, v: str, info: ValidationInfo) -> str:
        kind = info.data.get("kind")
        if kind == "accession":
            # DICOM SH: at most 16 characters of the default repertoire, no backslash.
            if len(v) > 16:
                raise ValueError("an accession number has at most 16 characters")
            if not v.isascii() or "\\" in v:
                raise ValueError(
                    "an accession number holds printable ASCII characters except backslash"
                )
        elif kind == "study_uid":
            try:
                check_uid(v, "a Study Instance UID")
            except InvalidUID as exc:
                raise ValueError(str(exc)) from None
        return v


def _ae_title(value: str) -> str:
    """An AE title as PS3.5 defines the AE value representation: at most 16 characters
    of the default repertoire without backslash or control characters; leading and
    trailing spaces are not significant (removed), and all spaces is no title."""
    stripped = value.strip(" ")
    if not stripped:
        raise ValueError("an AE title cannot be empty or only spaces")
    for ch in stripped:
        if ch == "\\":
            raise ValueError("an AE title cannot hold a backslash (it separates DICOM values)")
        if not (" " <= ch <= "~"):
            raise ValueError(
                f"character {ch!r} is not allowed in an AE title; expected printable ASCII "
                "letters, digits, spaces and punctuation"
            )
    if len(stripped) > 16:
        raise ValueError(f"an AE title has at most 16 characters (this one has {len(stripped)})")
    return stripped


def _host(value: str) -> str:
    """A host name (RFC 1123 labels) or an IP address, normalized (lower case, the
    address's canonical form). Refuses addresses nothing can be sent to."""
    expected = "expected a host name like pacs.example.org or an IP address like 10.1.2.3"
    candidate = value.removeprefix("[").removesuffix("]") if value.startswith("[") else value
    try:
        address = ipaddress.ip_address(candidate)
    except ValueError:
        address = None
    if address is not None:
        if address.is_unspecified or address.is_multicast:
            raise ValueError(f"{address} cannot receive DICOM; {expected}")
        return str(address)
    name = value.rstrip(".").lower()
    labels = name.split(".")
    if len(name) > 253 or not all(
        0 < len(label) <= 63
        and label.isascii()
        and all(c.isalnum() or c == "-" for c in label)
        and not label.startswith("-")
        and not label.endswith("-")
        for label in labels
    ):
        raise ValueError(f"not a host name or IP address; {expected}")
    if labels[-1].isdigit():
        raise ValueError(f"not a valid IP address; {expected}")
    return name


class DestinationDraft(BaseModel):
    """A DICOM destination: the receiving hospital's AE, where it listens, and whether
    it is asked to commit to storing what it received (``auto``: when it supports it)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ae_title: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    host: Annotated[str, _bounded(1, 255)]
    port: Annotated[int, Field(ge=1, le=65535)]
    commitment: CommitmentMode = CommitmentMode.AUTO

    @field_validator("ae_title")
    @classmethod
    def _ae(cls, v: str) -> str:
        return _ae_title(v)

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        return _host(v)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.ae_title}@{host}:{self.port}"


_PERSON_ONLY = ("recipient_email", "second_channel", "backup_email")


class RequestDraft(BaseModel):
    """A release request as submitted, validated and normalized; nothing is stored yet.

    ``selection`` lists the studies to wait for; it may be empty only with
    ``by_reference=True`` (whatever arrives tagged with the request's reference).
    ``second_channel`` is ``sms:+E164`` or ``email:ADDRESS`` and never the recipient's
    own address. With a ``destination`` (a DICOM AE) there is no e-mail, second
    channel or backup e-mail; without one, the first two are required. ``due_by`` is
    an aware time after which a request still missing studies becomes overdue (None:
    the node's default applies).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    patient_id: Text64
    patient_name: Text200
    patient_birth_date: Text16
    # Issuer of Patient ID (the ID's domain); "" = not given. Compared with the study's
    # when both have one (release.identity).
    patient_issuer: Annotated[str, _bounded(0, 64), AfterValidator(_plain)] = ""
    recipient_email: Address | None = None
    second_channel: Channel | None = None
    backup_email: Address | None = None
    destination: DestinationDraft | None = None
    selection: Annotated[list[Selector], Field(max_length=MAX_SELECTIONS)] = []
    by_reference: bool = False
    language: Text16 = "en"
    urgency: Urgency = Urgency.OVERNIGHT
    link_days: Annotated[int, Field(ge=1, le=365)] = 30
    note: Note = ""
    requested_by: Text200
    idempotency_key: Text200 | None = None
    due_by: datetime | None = None
    # Email the patient when to expect the link if the release policy holds the request
    # (an embargo, the wait for the report): release.embargo.
    tell_patient_when: bool = False

    @field_validator("patient_id")
    @classmethod
    def _patient_id(cls, v: str) -> str:
        if "\\" in v:
            raise ValueError("a backslash separates DICOM values; remove it")
        return _only(v, _ID_PUNCTUATION, "letters, digits")

    @field_validator("patient_issuer")
    @classmethod
    def _patient_issuer(cls, v: str) -> str:
        if "\\" in v:
            raise ValueError("a backslash separates DICOM values; remove it")
        return _only(v, _ID_PUNCTUATION, "letters, digits")

    @field_validator("patient_name")
    @classmethod
    def _patient_name(cls, v: str) -> str:
        return _only(v, _NAME_PUNCTUATION, "letters, spaces", letters="name")

    @field_validator("patient_birth_date")
    @classmethod
    def _birth_date(cls, v: str) -> str:
        try:
            born = datetime.strptime(v, "%Y%m%d").date() if v.isdigit() else None
        except ValueError:
            born = None
        if born is None:
            raise ValueError("expected a date as YYYYMMDD, e.g. 19700131")
        if born < date(1900, 1, 1) or born > date.today():
            raise ValueError("expected a date between 19000101 and today")
        return v

    @model_validator(mode="wrap")
    @classmethod
    def _person_or_destination(
        cls, data: Any, handler: ModelWrapValidatorHandler[RequestDraft]
    ) -> RequestDraft:
        # Without a destination the e-mail and second channel are required; said per
        # field and alongside every other problem (an "after" check would only run once
        # everything else is valid, and say one thing).
        missing: list[InitErrorDetails] = []
        if isinstance(data, Mapping) and data.get("destination") is None:
            missing = [
                {"type": "missing", "loc": (name,), "input": data}
                for name in ("recipient_email", "second_channel")
                if data.get(name) is None
            ]
        try:
            draft = handler(data)
        except ValidationError as exc:
            if not missing:
                raise
            errors = [*exc.errors(), *missing]
            raise ValidationError.from_exception_data(exc.title, errors) from None  # type: ignore[arg-type]
        if missing:
            raise ValidationError.from_exception_data(cls.__name__, missing)
        return draft

    @field_validator("recipient_email")
    @classmethod
    def _recipient(cls, v: str | None) -> str | None:
        return None if v is None else _email(v)

    @field_validator("backup_email")
    @classmethod
    def _backup(cls, v: str | None) -> str | None:
        return None if v is None or not v.strip() else _email(v)

    @field_validator("second_channel")
    @classmethod
    def _second_channel(cls, v: str | None) -> str | None:
        if v is None:
            return None
        scheme, sep, rest = v.partition(":")
        scheme = scheme.strip().lower()
        rest = rest.strip()
        if not sep or scheme not in ("sms", "email"):
            raise ValueError("expected sms:+<E.164 number> or email:<address>")
        if scheme == "sms":
            return f"sms:{_sms_number(rest)}"
        return f"email:{_email(rest)}"

    @field_validator("language")
    @classmethod
    def _language(cls, v: str) -> str:
        for tag in SUPPORTED_LANGUAGES:
            if v.replace("_", "-").casefold() == tag.casefold():
                return tag
        raise ValueError(f"expected one of {', '.join(SUPPORTED_LANGUAGES)}")

    @field_validator("requested_by")
    @classmethod
    def _requested_by(cls, v: str) -> str:
        return _only(v, _ACTOR_PUNCTUATION, "letters, digits", letters="alnum")

    @field_validator("idempotency_key")
    @classmethod
    def _idempotency_key(cls, v: str | None) -> str | None:
        if v is None:
            return None
        return _only(v, _KEY_PUNCTUATION, "ASCII letters, digits", letters="ascii")

    @field_validator("due_by")
    @classmethod
    def _aware(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.tzinfo is None:
            raise ValueError("expected a time with its UTC offset, e.g. 2030-01-31T18:00:00Z")
        return v

    @model_validator(mode="after")
    def _whole(self) -> RequestDraft:
        if not self.selection and not self.by_reference:
            raise ValueError(
                "selection: give at least one accession number or study UID, or by_reference"
            )
        seen: set[tuple[str, str]] = set()
        for sel in self.selection:
            if (sel.kind, sel.value) in seen:
                raise ValueError(f"selection: {sel.kind} {sel.value} is listed twice")
            seen.add((sel.kind, sel.value))
        if self.destination is not None:
            for name in _PERSON_ONLY:
                if getattr(self, name) is not None:
                    raise ValueError(
                        f"{name}: leave it out for a DICOM destination (the studies go "
                        "to the hospital by C-STORE: no link, no code)"
                    )
            return self
        assert self.recipient_email is not None and self.second_channel is not None
        scheme, _, address = self.second_channel.partition(":")
        if scheme == "email" and address.casefold() == self.recipient_email.casefold():
            raise ValueError(
                "second_channel: must differ from recipient_email (the code and the link "
                "must not reach the same inbox)"
            )
        if self.backup_email is not None:
            if scheme != "sms":
                raise ValueError(
                    "backup_email: only with an sms second_channel (it takes the code when "
                    "the number turns out invalid)"
                )
            if self.backup_email.casefold() == self.recipient_email.casefold():
                raise ValueError(
                    "backup_email: must differ from recipient_email (the code and the link "
                    "must not reach the same inbox)"
                )
        return self


def validation_errors(exc: ValidationError) -> list[dict[str, str]]:
    """One ``{"field": dotted.path, "message": text}`` per problem in ``exc``.

    Whole-draft checks name their field as the message's ``field:`` prefix; it is moved
    into ``field``.
    """
    return field_errors(exc.errors(include_url=False, include_input=False))


def field_errors(errors: Iterable[Mapping[str, Any]]) -> list[dict[str, str]]:
    """:func:`validation_errors` for pydantic error dicts (the API's too); input values
    are never included."""
    out: list[dict[str, str]] = []
    for err in errors:
        field = ".".join(str(p) for p in err.get("loc", ()))
        message = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        if err.get("type") == "extra_forbidden":
            message = "unknown field; remove it"
        elif err.get("type") == "missing":
            message = "required"
        if not field:
            head, sep, rest = message.partition(": ")
            if sep and head in RequestDraft.model_fields:
                field, message = head, rest
        out.append({"field": field or "request", "message": message})
    return out
