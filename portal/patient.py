"""The patient's and clinician's pages, assembled: the link and code
(:mod:`portal.access`), the download page (:mod:`portal.download`) and sharing
(:mod:`portal.share`, :mod:`portal.share_notify`), "Ask for more time"
(:mod:`portal.extend`), the image viewer (:mod:`portal.viewer`), the reports
(:mod:`portal.reports_page`). Every route is
access-logged without secrets (:mod:`portal.accesslog`)."""

from __future__ import annotations

from fastapi import APIRouter

from portal import access, download, extend, reports_page, share, share_notify, viewer

router = APIRouter()
router.include_router(access.router)
router.include_router(download.router)
router.include_router(share.router)
router.include_router(viewer.router)
router.include_router(share_notify.router)
router.include_router(extend.router)
router.include_router(reports_page.router)  # the package's REPORT/ files
