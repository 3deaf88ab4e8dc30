"""DICOMweb tokens: made for "Open in your own viewer" on the files page
(:mod:`portal.dicomweb_page`), checked by every DICOMweb route (:mod:`portal.dicomweb`).

A signed-in patient or clinician may ask for a bearer token that opens *their grant* to
a DICOMweb viewer (OHIF, Weasis, a PACS workstation) at ``portal.public_url +
/dicomweb``, read-only (:mod:`portal.dicomweb`). The token is derived, never stored::

    cdw1.<grant id>.<expiry, Unix seconds>.<HMAC-SHA256 of both with the node secret>

so the node checks it with its secret alone, and a token for one grant cannot be turned
into one for another, or made to live longer. It is valid for
``portal.dicomweb_token_h`` hours, never past its grant's own expiry, and only while the
grant is live (:func:`release.links.link_live`): revoking the grant (staff) or the
share (the patient), a lock (of the grant, or of the patient's link a share was made
from), the request's cancellation or the package's deletion end it at once. Nothing
else names it: the audit trail and the logs carry its
:func:`short` name (8 hex digits of its SHA-256), never the token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from delivery.grants import GrantKeys
from portal.context import PortalContext
from store.models import Grant

PREFIX = "cdw1"
#: Where viewers find the node's DICOMweb service, under ``portal.public_url``.
BASE_PATH = "/dicomweb"
_LABEL = "dicomweb"
_FORM = re.compile(r"^cdw1\.([1-9][0-9]{0,17})\.([1-9][0-9]{0,11})\.([A-Za-z0-9_-]{43})$")


def short(token: str) -> str:
    """The name a token goes by in the audit trail: 8 hex digits of its SHA-256."""
    return hashlib.sha256(token.encode("ascii", "replace")).hexdigest()[:8]


def _mac(keys: GrantKeys, grant_id: int, expires: int) -> str:
    raw = keys.derive(_LABEL, f"{grant_id}:{expires}")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def issue(keys: GrantKeys, grant: Grant, now: datetime, hours: int) -> tuple[str, datetime]:
    """A token for ``grant`` and when it ends (``hours`` from ``now``, at most the
    grant's expiry), to the second."""
    ends = min(now + timedelta(hours=hours), grant.expires_at)
    expires = int(ends.timestamp())
    token = f"{PREFIX}.{grant.id}.{expires}.{_mac(keys, grant.id, expires)}"
    return token, datetime.fromtimestamp(expires, UTC)


@dataclass(frozen=True)
class Checked:
    """What a presented token says: ``status`` is ``ok``, ``invalid`` (malformed or a
    signature that does not match) or ``expired``; ``grant_id`` is set for ``ok``."""

    status: str
    grant_id: int = 0
    expires_at: datetime | None = None
    name: str = ""


def check(keys: GrantKeys, token: str, now: datetime) -> Checked:
    """Judge ``token`` with the node secret alone (constant-time compare); whether its
    grant is still live is the caller's question."""
    match = _FORM.match(token)
    if match is None:
        return Checked("invalid")
    grant_id, expires = int(match.group(1)), int(match.group(2))
    if not hmac.compare_digest(_mac(keys, grant_id, expires), match.group(3)):
        return Checked("invalid")
    ends = datetime.fromtimestamp(expires, UTC)
    if now >= ends:
        return Checked("expired")
    return Checked("ok", grant_id, ends, short(token))


def base_url(ctx: PortalContext) -> str:
    """The DICOMweb base URL viewers are given (QIDO-RS and WADO-RS roots alike)."""
    return ctx.portal.public_url.rstrip("/") + BASE_PATH


def section(ctx: PortalContext) -> dict[str, Any]:
    """What the files page needs for its "Open in your own viewer" section: offered only
    where the node serves DICOMweb (a content store); no token until asked for."""
    return {"dicomweb_offered": ctx.content is not None, "dicomweb": None}
