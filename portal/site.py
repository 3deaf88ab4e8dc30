"""The portal's pages mounted on the web app: static files, patient and staff routes.

Routers find their dependencies in ``request.app.state.portal`` (a
:class:`~portal.context.PortalContext`). Patient and clinician pages live under ``/d/``
(the emailed link), ``/access`` and ``/files``; staff pages under ``/staff``.
"""

from __future__ import annotations

import importlib

from fastapi import FastAPI, Request
from fastapi.staticfiles import StaticFiles

from portal.context import PortalContext
from portal.pages import STATIC

# Routers added as they are built (module name -> attribute holding the APIRouter).
ROUTERS = ("portal.patient", "portal.staff")


def install_pages(app: FastAPI, portal: PortalContext) -> None:
    """Mount ``/static`` and include every router in :data:`ROUTERS` that exists."""
    app.state.portal = portal
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    for name in ROUTERS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        app.include_router(module.router)


def context_of(request: Request) -> PortalContext:
    """The portal context of the app serving ``request``."""
    ctx: PortalContext = request.app.state.portal
    return ctx
