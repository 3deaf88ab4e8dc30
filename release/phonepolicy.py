"""Which phone numbers Courier sends SMS to: one policy for every way a number comes in.

A code by SMS costs the hospital money and goes to whoever holds the number, so a number
is accepted only when all of these hold:

1. it is a valid number for its country code (``phonenumbers``);
2. its type can take an SMS and is billed at the normal rate: ``MOBILE`` or
   ``FIXED_LINE_OR_MOBILE`` (countries such as the US do not tell the two apart).
   Everything else is refused with its type named: ``FIXED_LINE`` (a landline cannot
   read an SMS), ``PREMIUM_RATE`` and ``SHARED_COST`` (a script could make the hospital
   pay a number's owner), ``TOLL_FREE``, ``PERSONAL_NUMBER`` (a forwarding number whose
   destination nobody can check), ``VOIP``, ``PAGER``, ``UAN``, ``VOICEMAIL`` and
   ``UNKNOWN``;
3. with ``sms.allowed_countries`` set, its region (ISO 3166 alpha-2 as ``phonenumbers``
   gives it: Guernsey, Jersey and the Isle of Man share +44 but are ``GG``, ``JE``,
   ``IM``) is in that list. Empty: any country.

Used by the request draft (:mod:`release.validation`: the number's type), by a share to
a clinician's mobile (:mod:`portal.share`: type and country) and again by the outbox
relay just before each SMS (:mod:`delivery.relay`: a number refused there fails for good,
never retried). :class:`PhoneRefused` messages name the rule, never the number: they
may be logged.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import phonenumbers
from phonenumbers import PhoneNumberType

SMS_TYPES = frozenset({PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE_OR_MOBILE})
"""The number types an SMS is sent to."""

_TYPE_NAMES = {
    PhoneNumberType.FIXED_LINE: "a landline",
    PhoneNumberType.TOLL_FREE: "a toll-free number",
    PhoneNumberType.PREMIUM_RATE: "a premium-rate number",
    PhoneNumberType.SHARED_COST: "a shared-cost number",
    PhoneNumberType.VOIP: "an internet (VoIP) number",
    PhoneNumberType.PERSONAL_NUMBER: "a personal (forwarding) number",
    PhoneNumberType.PAGER: "a pager",
    PhoneNumberType.UAN: "a company (UAN) number",
    PhoneNumberType.VOICEMAIL: "a voicemail number",
}


class PhoneRefused(ValueError):
    """A number the policy refuses. ``rule`` is ``invalid``, ``type`` or ``country``
    (the portal picks its translated message by it); the message names the rule and
    what to give instead, never the number."""

    def __init__(self, message: str, *, rule: str) -> None:
        super().__init__(message)
        self.rule = rule


def normalize_countries(codes: Iterable[str]) -> frozenset[str]:
    """Upper-cased ISO 3166 alpha-2 codes; raises ValueError naming the first one
    ``phonenumbers`` does not know (e.g. ``UK``: the code is ``GB``)."""
    out = set()
    for i, code in enumerate(codes):
        norm = code.strip().upper()
        if norm not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(
                f"entry {i} ({code!r}) is not an ISO 3166 alpha-2 country code with phone "
                "numbers, e.g. GB, IE, FR (the United Kingdom is GB)"
            )
        out.add(norm)
    return frozenset(out)


def type_problem(number: phonenumbers.PhoneNumber) -> str | None:
    """Why no SMS goes to ``number`` because of its type; None when it may take one."""
    kind = phonenumbers.number_type(number)
    if kind in SMS_TYPES:
        return None
    what = _TYPE_NAMES.get(kind, "a number of unknown type")
    return f"this number cannot receive SMS: it is {what}; give a mobile number"


@dataclass(frozen=True)
class PhonePolicy:
    """The SMS number policy of one node (``countries`` empty: any country)."""

    countries: frozenset[str] = frozenset()

    def check(self, number: str | phonenumbers.PhoneNumber) -> str:
        """``number`` (E.164 text or parsed) in E.164 when SMS may go to it; raises
        :class:`PhoneRefused` otherwise."""
        if isinstance(number, str):
            try:
                number = phonenumbers.parse(number, None)
            except phonenumbers.NumberParseException:
                raise PhoneRefused("the number cannot be read as E.164", rule="invalid") from None
        if not phonenumbers.is_valid_number(number):
            raise PhoneRefused("not a valid phone number for its country code", rule="invalid")
        problem = type_problem(number)
        if problem is not None:
            raise PhoneRefused(problem, rule="type")
        region = phonenumbers.region_code_for_number(number)
        if self.countries and region not in self.countries:
            allowed = ", ".join(sorted(self.countries))
            raise PhoneRefused(
                f"SMS go only to numbers of {allowed} (sms.allowed_countries); this number "
                f"is from {region or 'an unknown country'}",
                rule="country",
            )
        return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
