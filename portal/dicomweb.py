"""DICOMweb for the recipient's own viewer: read-only, one grant per token, under
``/dicomweb``.

A signed-in patient or clinician asks for a token on the files page
(:mod:`portal.dicomweb_page`, :mod:`portal.dicomweb_token`); a viewer (OHIF, Weasis, a
workstation) given ``portal.public_url + /dicomweb`` as its QIDO-RS and WADO-RS root and
the token as ``Authorization: Bearer`` then searches (:mod:`portal.dicomweb_qido`) and
retrieves (:mod:`portal.dicomweb_wado`) that grant's studies and nothing else
(:mod:`portal.dicomweb_scope`). No STOW-RS, no UPS, nothing that writes: every other
method is 405. ``OPTIONS`` answers a browser's CORS preflight (any origin, no
credentials); an unknown path under ``/dicomweb`` is a JSON 404.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from portal import dicomweb_page, dicomweb_qido, dicomweb_wado
from portal.dicomweb_scope import PREFLIGHT_HEADERS, refusal

router = APIRouter()
router.include_router(dicomweb_page.router)
router.include_router(dicomweb_qido.router)
router.include_router(dicomweb_wado.router)


@router.api_route(
    "/dicomweb/{rest:path}",
    methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
    include_in_schema=False,
)
async def other(request: Request, rest: str) -> Response:
    """The CORS preflight of any DICOMweb path; 404 or 405 for anything else."""
    if request.method == "OPTIONS":
        return Response(status_code=204, headers=PREFLIGHT_HEADERS)
    if request.method in ("GET", "HEAD"):
        return refusal(404, "no such DICOMweb resource here")
    return refusal(405, "this DICOMweb service is read-only", {"Allow": "GET, OPTIONS"})
