"""Composes every notification Courier sends, from the Jinja2 templates in
``delivery/templates`` and the gettext catalogs of domain ``messages`` (see
:mod:`delivery.i18n`): the link email, the authorization-code SMS and email, and the
staff alerts, the clinician's link email for a share, "your shared link was used", and
the reminder before a link expires.

PHI rules, enforced here rather than hoped for in templates: no function takes a
patient's name, ID, birth date or study description, so none can leak into a message.
Subjects name only the hospital; the SMS carries the code, its validity, the sender's
short name and a reference marker; staff alerts name the request by its reference.

Every function takes the ``message_id`` the relay stored with the outbox row, so the
same row always yields the same message.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from datetime import UTC, date, datetime
from typing import Literal
from zoneinfo import ZoneInfo

from babel.dates import format_date, format_datetime, format_time, get_datetime_format

from delivery.channel import OutgoingMessage
from delivery.i18n import locale_name, render
from delivery.smstext import gsm_safe

DOMAIN = "messages"
CODE_VALID_MINUTES = 10
AlertKind = Literal[
    "overdue",
    "failed",
    "locked",
    "rules_reload_failed",
    "disc",
    "sms_breaker",
    "identity_mismatch",
    "code_undelivered",
    "more_time",
    "release_held",
    "release_rule_missing",
]
# Node-wide alerts: they name no request.
_NODE_ALERTS = frozenset({"rules_reload_failed", "sms_breaker"})

_CODE = re.compile(r"^[0-9]{6}$")
_REFERENCE = re.compile(r"^[A-Z0-9][A-Z0-9-]{0,31}$")
# Crockford's base32 without I, L, O, U: readable over the phone.
_REF_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def sms_ref(message_id: str) -> str:
    """The 6-character marker an SMS carries so :meth:`TwilioChannel.lookup` can find it;
    derived from ``message_id``, so every re-send of a row carries the same one."""
    n = int.from_bytes(hashlib.sha256(message_id.encode()).digest()[:4], "big")
    return "".join(_REF_ALPHABET[(n >> (5 * i)) & 31] for i in range(6))


def _line(template: str, language: str, **ctx: object) -> str:
    return " ".join(render(template, language, DOMAIN, **ctx).split())


def _email(
    stem: str,
    *,
    to: str,
    language: str,
    message_id: str,
    composed_at: datetime | None,
    subject_ctx: Mapping[str, object],
    ctx: Mapping[str, object],
) -> OutgoingMessage:
    """An email from ``<stem>.subject.j2``, ``.txt.j2`` and ``.html.j2``. The subject
    sees only ``subject_ctx`` (a code must never reach a lock-screen subject)."""
    subject = _line(f"{stem}.subject.j2", language, **subject_ctx)
    return OutgoingMessage(
        kind="email",
        to=to,
        subject=subject,
        text=render(f"{stem}.txt.j2", language, DOMAIN, **ctx),
        html=render(f"{stem}.html.j2", language, DOMAIN, subject=subject, **ctx),
        message_id=message_id,
        language=language,
        date=composed_at,
    )


def _link_ctx(
    *, link_url: str, expires: date, hospital: str, language: str, contact: str
) -> dict[str, object]:
    """What every email carrying a link says: the hospital, the link, the help line and
    the day the link stops working (a long date in ``language``). Raises ``ValueError``
    for a link that is not an absolute http(s) URL (a relative one opens nothing)."""
    if not link_url.startswith("https://") and not link_url.startswith("http://"):
        raise ValueError("link_url must be an absolute http(s) URL")
    return {
        "hospital": hospital,
        "link_url": link_url,
        "contact": contact,
        "expires": format_date(expires, format="long", locale=locale_name(language)),
    }


def link_email(
    *,
    to: str,
    link_url: str,
    expires: date,
    hospital: str,
    language: str,
    message_id: str,
    contact: str = "",
    composed_at: datetime | None = None,
) -> OutgoingMessage:
    """The email carrying the download link (and nothing else secret). ``expires`` is
    shown as a long date in ``language``; ``contact`` is an optional help line."""
    ctx = _link_ctx(
        link_url=link_url, expires=expires, hospital=hospital, language=language, contact=contact
    )
    return _email(
        "link_email",
        to=to,
        language=language,
        message_id=message_id,
        composed_at=composed_at,
        subject_ctx=ctx,
        ctx=ctx,
    )


def code_sms(
    *, to: str, code: str, language: str, sender_name: str, message_id: str
) -> OutgoingMessage:
    """The SMS with a 6-digit code valid :data:`CODE_VALID_MINUTES` minutes. English
    fits one GSM-7 segment; Arabic and Chinese are UCS-2 and kept under 70 characters."""
    if not _CODE.match(code):
        raise ValueError("code must be 6 digits")
    ref = sms_ref(message_id)
    text = _line(
        "code_sms.txt.j2",
        language,
        sender=sender_name,
        code=code,
        minutes=CODE_VALID_MINUTES,
        ref=ref,
    )
    return OutgoingMessage(
        kind="sms",
        to=to,
        text=gsm_safe(text),
        message_id=message_id,
        client_ref=ref,
        language=language,
    )


def code_email(
    *,
    to: str,
    code: str,
    hospital: str,
    language: str,
    message_id: str,
    composed_at: datetime | None = None,
) -> OutgoingMessage:
    """The code by the second email (no SMS number, or the SMS was refused). The subject
    does not hold the code: subjects show on lock screens."""
    if not _CODE.match(code):
        raise ValueError("code must be 6 digits")
    ctx = {"hospital": hospital, "code": code, "minutes": CODE_VALID_MINUTES}
    return _email(
        "code_email",
        to=to,
        language=language,
        message_id=message_id,
        composed_at=composed_at,
        subject_ctx={},
        ctx=ctx,
    )


def forward_link_email(
    *,
    to: str,
    link_url: str,
    expires: date,
    hospital: str,
    language: str,
    message_id: str,
    shown_code: bool,
    contact: str = "",
    composed_at: datetime | None = None,
) -> OutgoingMessage:
    """The link a patient shared with a clinician. It names neither the patient nor the
    studies; it says where the code comes from: the clinician's mobile, or the patient
    (``shown_code``)."""
    ctx = {
        **_link_ctx(
            link_url=link_url,
            expires=expires,
            hospital=hospital,
            language=language,
            contact=contact,
        ),
        "shown_code": shown_code,
    }
    return _email(
        "forward_link_email",
        to=to,
        language=language,
        message_id=message_id,
        composed_at=composed_at,
        subject_ctx=ctx,
        ctx=ctx,
    )


def share_used_email(
    *,
    to: str,
    opened_at: datetime,
    hospital: str,
    language: str,
    message_id: str,
    contact: str = "",
    composed_at: datetime | None = None,
) -> OutgoingMessage:
    """Tells the patient a link they shared was opened with its code (when, in UTC);
    it does not say by whom (the mailbox may be read by others)."""
    when = (
        format_datetime(opened_at, format="medium", tzinfo=UTC, locale=locale_name(language))
        + " UTC"
    )
    ctx = {"hospital": hospital, "when": when, "contact": contact}
    return _email(
        "share_used_email",
        to=to,
        language=language,
        message_id=message_id,
        composed_at=composed_at,
        subject_ctx=ctx,
        ctx=ctx,
    )


def reminder_email(
    *,
    to: str,
    link_url: str,
    expires: date,
    hospital: str,
    language: str,
    message_id: str,
    clinician: bool = False,
    contact: str = "",
    composed_at: datetime | None = None,
) -> OutgoingMessage:
    """The one reminder before a link expires (:mod:`delivery.reminders`): the same
    link, when it stops working, and how to ask for more time. ``clinician``: the link
    was shared with them by a patient (it names neither the patient nor the studies)."""
    ctx = {
        **_link_ctx(
            link_url=link_url,
            expires=expires,
            hospital=hospital,
            language=language,
            contact=contact,
        ),
        "clinician": clinician,
    }
    return _email(
        "reminder_email",
        to=to,
        language=language,
        message_id=message_id,
        composed_at=composed_at,
        subject_ctx=ctx,
        ctx=ctx,
    )


def report_update_email(
    *,
    to: str,
    link_url: str,
    expires: date,
    hospital: str,
    language: str,
    message_id: str,
    contact: str = "",
    composed_at: datetime | None = None,
) -> OutgoingMessage:
    """A corrected (or later final) report was added to the patient's package as a new
    part (:mod:`delivery.report_updates`): the same link. It names no study and no
    finding."""
    ctx = _link_ctx(
        link_url=link_url, expires=expires, hospital=hospital, language=language, contact=contact
    )
    return _email(
        "report_update_email",
        to=to,
        language=language,
        message_id=message_id,
        composed_at=composed_at,
        subject_ctx=ctx,
        ctx=ctx,
    )


def release_expected_email(
    *,
    to: str,
    until: datetime,
    zone: str,
    wait: Literal["embargo", "report"],
    hospital: str,
    language: str,
    message_id: str,
    contact: str = "",
    composed_at: datetime | None = None,
) -> OutgoingMessage:
    """Tells the patient when to expect their link, when staff asked for it and the
    release policy holds the request (:mod:`release.embargo`): from ``until`` (an
    embargo), or once the report is final, expected by ``until``; shown in ``zone`` (the
    site's) in ``language``. It carries no link and names no study."""
    local, locale = until.astimezone(ZoneInfo(zone)), locale_name(language)
    # The locale's own way of joining a long date and a short time ("30 March 2026, 13:00").
    when = (
        str(get_datetime_format("long", locale=locale))
        .replace("{1}", format_date(local, format="long", locale=locale))
        .replace("{0}", format_time(local, format="short", tzinfo=local.tzinfo, locale=locale))
    )
    ctx = {"hospital": hospital, "when": when, "contact": contact, "wait": wait}
    return _email(
        "release_expected_email",
        to=to,
        language=language,
        message_id=message_id,
        composed_at=composed_at,
        subject_ctx=ctx,
        ctx=ctx,
    )


def staff_alert(
    *,
    to: str,
    kind: AlertKind,
    reference: str | None,
    message_id: str,
    language: str = "en",
    composed_at: datetime | None = None,
) -> OutgoingMessage:
    """A plain-text alert to ``delivery.staff_email``. Requests are named by their
    reference only (``CR-…``); ``rules_reload_failed`` and ``sms_breaker`` take none."""
    if kind not in _NODE_ALERTS and (reference is None or not _REFERENCE.match(reference)):
        raise ValueError("a request alert needs the request's reference (e.g. CR-7KQ4-M2XD-9)")
    if kind in _NODE_ALERTS:
        reference = None
    ctx = {"kind": kind, "reference": reference}
    return OutgoingMessage(
        kind="email",
        to=to,
        subject=_line("staff_alert.subject.j2", language, **ctx),
        text=render("staff_alert.txt.j2", language, DOMAIN, **ctx),
        message_id=message_id,
        language=language,
        date=composed_at,
    )
