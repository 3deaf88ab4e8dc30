"""The patient's and clinician's pages, assembled: the link and code
(:mod:`portal.access`), the download page (:mod:`portal.download`) and sharing
(:mod:`portal.share`). Every route is access-logged without secrets
(:mod:`portal.accesslog`)."""

from __future__ import annotations

from fastapi import APIRouter

from portal import access, download, share

router = APIRouter()
router.include_router(access.router)
router.include_router(download.router)
router.include_router(share.router)
