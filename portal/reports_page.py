"""The files page's reports: the ``REPORT/`` files of the package (listed in its parts'
MANIFEST.json, so the page shows exactly what the download holds) and
``/files/report/{n}`` to open one (``n`` its 1-based position on the page, never a
path). A PDF is served as received; an HTML report is Courier's own rendering (content
escaped), served sandboxed with nothing to load. Whether reports go out at all is the
site's policy (``delivery.reports``); with ``never`` the section is absent.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from portal.context import PortalContext
from portal.filespage import manifest, part_path, parts_of
from portal.grantsession import portal, session_grant, signed_out
from store.models import Package

router = APIRouter()
FOLDER = "REPORT/"
_TYPES = {".PDF": "application/pdf", ".HTM": "text/html; charset=utf-8"}


@dataclass(frozen=True)
class ReportRef:
    """One report file of the package: the part holding it and its path there."""

    part: str
    entry: str
    size: int

    @property
    def kind(self) -> str:
        return "pdf" if self.entry.upper().endswith(".PDF") else "html"


def report_refs(ctx: PortalContext, package: Package) -> list[ReportRef]:
    """Every ``REPORT/`` file of the package's parts, in part then file order."""
    refs: list[ReportRef] = []
    for part in parts_of(package):
        doc = manifest(ctx.package_dir / package.folder / str(part["name"]))
        for entry in doc.get("files", []):
            path = str(entry.get("path", ""))
            if path.startswith(FOLDER) and path[-4:].upper() in _TYPES:
                refs.append(ReportRef(str(part["name"]), path, int(entry.get("size", 0))))
    return refs


def report_section(ctx: PortalContext, package: Package) -> dict[str, Any]:
    """``{"reports": [{"href", "kind", "number"}]}`` for the files page."""
    return {
        "reports": [
            {"href": f"/files/report/{i}", "kind": ref.kind, "number": i}
            for i, ref in enumerate(report_refs(ctx, package), start=1)
        ]
    }


@router.get("/files/report/{n}", include_in_schema=False)
async def report_file(request: Request, n: int) -> Response:
    """Report ``n`` of the package, read from its ZIP part."""
    ctx = portal(request)

    def read() -> tuple[bytes, str] | Response | None:
        with ctx.sessions() as s:
            grant = session_grant(s, request, ctx)
            if grant is None:
                return signed_out(request)
            package = s.get(Package, grant.package_id)
            if package is None:
                return None
            s.expunge_all()
        refs = report_refs(ctx, package)
        if not 1 <= n <= len(refs):
            return None
        ref = refs[n - 1]
        path = part_path(ctx, package, ref.part)
        if path is None:
            return None
        with zipfile.ZipFile(path) as zf:
            return zf.read(ref.entry), _TYPES[ref.entry[-4:].upper()]

    found = await run_in_threadpool(read)
    if isinstance(found, Response):
        return found
    if found is None:
        return Response(status_code=404)
    data, media_type = found
    return Response(
        data,
        media_type=media_type,
        headers={
            "Content-Security-Policy": "sandbox; default-src 'none'; style-src 'unsafe-inline'",
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-store",
        },
    )
