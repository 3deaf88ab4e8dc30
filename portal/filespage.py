"""What the download page shows: the studies, the package's parts, thumbnails, shares.

Study facts come from the database (the studies attached to the grant's request); the
thumbnails and checksums come from the package itself (each part's ``MANIFEST.json``
and ``PREVIEW/`` entries), read once per part file and cached by its path, size and
modification time. A request of several studies also offers each study on its own
(:mod:`portal.studyzip`), with its ZIP's size once it was built. Nothing here writes.
"""

from __future__ import annotations

import functools
import json
import zipfile
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

from babel.dates import format_date, format_datetime
from babel.numbers import format_decimal
from fastapi import Request
from fastapi.responses import HTMLResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from delivery.i18n import locale_name
from portal.context import PortalContext
from portal.dicomweb_token import section as dicomweb_section
from portal.grantsession import mask, page
from portal.history import access_sections
from portal.pages import language
from portal.studyzip import built_size, request_studies, study_zips
from portal.viewer_links import view_section
from store.models import Grant, Notification, Package


@dataclass(frozen=True)
class PartView:
    number: int
    name: str
    size: str
    sha256: str


@dataclass(frozen=True)
class PreviewRef:
    """One thumbnail: which part holds it, at which entry, for which study."""

    part: str
    entry: str
    study_uid: str


@dataclass
class StudyView:
    date: str
    description: str
    modality: str
    images: int
    size: str
    previews: list[int] = field(default_factory=list)
    download: str | None = None  # its own ZIP's URL, when offered
    zip_size: str | None = None  # that ZIP's size, once built


@dataclass(frozen=True)
class ShareView:
    grant_id: int
    email: str
    second: str
    created: str
    expires: str
    state: str  # "active", "revoked", "expired", "locked"
    opened: bool
    email_failed: bool
    shown: bool = False  # a code shown to the patient: they may make a new one


def human_size(n: int, lang: str) -> str:
    """``n`` bytes as MB or GB (10^6, 10^9), with the language's number format."""
    loc = locale_name(lang)
    if n >= 1_000_000_000:
        return f"{format_decimal(round(n / 1e9, 2), locale=loc)} GB"
    return f"{format_decimal(round(n / 1e6, 1), locale=loc)} MB"


def long_date(d: date | datetime, lang: str) -> str:
    return format_date(d, format="long", locale=locale_name(lang))


def parts_of(package: Package) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = json.loads(package.parts or "[]")
    return parts


def part_path(ctx: PortalContext, package: Package, name: str) -> Path | None:
    """The file of the part called ``name`` (only names the package row lists)."""
    for part in parts_of(package):
        if part.get("name") == name:
            return ctx.package_dir / package.folder / name
    return None


@functools.lru_cache(maxsize=64)
def _manifest(path: str, size: int, mtime_ns: int) -> dict[str, Any]:
    with zipfile.ZipFile(path) as zf:
        data: dict[str, Any] = json.loads(zf.read("MANIFEST.json"))
    return data


def manifest(path: Path) -> dict[str, Any]:
    """The part's MANIFEST.json (empty when the file cannot be read)."""
    try:
        st = path.stat()
        return _manifest(str(path), st.st_size, st.st_mtime_ns)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return {}


def previews(ctx: PortalContext, package: Package) -> list[PreviewRef]:
    """Every thumbnail of the package, numbered by position (``/files/preview/{n}``)."""
    refs: list[PreviewRef] = []
    for part in parts_of(package):
        doc = manifest(ctx.package_dir / package.folder / str(part["name"]))
        for series in doc.get("series", []):
            if series.get("preview"):
                refs.append(
                    PreviewRef(str(part["name"]), str(series["preview"]), series["study_uid"])
                )
    return refs


def studies(
    ctx: PortalContext,
    s: Session,
    grant: Grant,
    package: Package,
    refs: list[PreviewRef],
    lang: str,
) -> list[StudyView]:
    zips = {z.study_uid: z for z in study_zips(ctx, s, package)}
    out = []
    for st in request_studies(s, grant.request_id):
        try:
            shown = long_date(datetime.strptime(st.study_date, "%Y%m%d").date(), lang)
        except ValueError:
            shown = ""
        view = StudyView(
            date=shown,
            description=st.study_description,
            modality=st.modalities.replace("\\", ", "),
            images=st.instance_count,
            size=human_size(st.size_bytes, lang),
        )
        view.previews = [i for i, r in enumerate(refs) if r.study_uid == st.study_uid]
        own = zips.get(st.study_uid)
        if own is not None:
            view.download = f"/files/study/{own.number}"
            size = built_size(own)
            view.zip_size = None if size is None else human_size(size, lang)
        out.append(view)
    return out


def shares(s: Session, grant: Grant, now: datetime, lang: str) -> list[ShareView]:
    """The clinician grants made from ``grant``, newest first."""
    rows = s.scalars(
        select(Grant).where(Grant.parent_grant_id == grant.id).order_by(Grant.id.desc())
    ).all()
    out = []
    for g in rows:
        state = (
            "revoked"
            if g.revoked_at is not None
            else "locked"
            if g.locked_at is not None
            else "expired"
            if now >= g.expires_at
            else "active"
        )
        failed = s.scalar(
            select(Notification.id).where(
                Notification.grant_id == g.id,
                Notification.kind == "forward_link_email",
                Notification.state == "failed",
            )
        )
        out.append(
            ShareView(
                grant_id=g.id,
                email=g.recipient_email,
                second=mask(g.second_channel),
                created=format_datetime(g.created_at, format="short", locale=locale_name(lang)),
                expires=long_date(g.expires_at, lang),
                state=state,
                opened=g.first_opened_at is not None,
                email_failed=failed is not None,
                shown=g.second_channel == "shown:",
            )
        )
    return out


def _reports(ctx: PortalContext, package: Package) -> dict[str, Any]:
    from portal.reports_page import report_section  # it reads the manifests through us

    return report_section(ctx, package)


def render_files(
    request: Request,
    ctx: PortalContext,
    s: Session,
    grant: Grant,
    *,
    status_code: int = 200,
    **extra: Any,
) -> HTMLResponse:
    """The download page of ``grant`` (``extra``: a share form's errors, a shown code)."""
    lang = language(request, grant.language)
    package = s.get(Package, grant.package_id)
    assert package is not None
    refs = previews(ctx, package)
    parts = [
        PartView(i + 1, str(p["name"]), human_size(int(p["size"]), lang), str(p["sha256"]))
        for i, p in enumerate(parts_of(package))
    ]
    context: dict[str, Any] = {
        "studies": studies(ctx, s, grant, package, refs, lang),
        "parts": parts,
        "total": human_size(package.size_bytes, lang),
        "expires": long_date(grant.expires_at, lang),
        "is_patient": grant.purpose != "forward",
        "shares": shares(s, grant, ctx.clock(), lang) if grant.purpose != "forward" else [],
        "share_errors": [],
        "share_form": {},
        "shown_code": None,
        "notice": None,
    }
    context.update(access_sections(ctx, s, grant, lang))  # portal.history: patient only
    context.update(dicomweb_section(ctx))  # portal.dicomweb_page: Open in your own viewer
    context.update(view_section(ctx, s, grant))  # portal.viewer_links: View links
    context.update(_reports(ctx, package))  # portal.reports_page: the REPORT/ files
    context.update(extra)
    return page(request, "patient/files.html.j2", status_code=status_code, lang=lang, **context)
