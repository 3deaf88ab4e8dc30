"""The files page's View links: per study and per series (one call from
:func:`portal.filespage.render_files`, markup in ``patient/files_view.html.j2``)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from portal.context import PortalContext
from portal.viewer_data import prebuild, viewer_studies
from portal.viewer_render import warm
from store.models import Grant, Package


def view_section(ctx: PortalContext, s: Session, grant: Grant) -> dict[str, Any]:
    """``{"viewer": [...]}``: for each study in page order, its viewer address and its
    series' (positions only); empty without the content store (nothing to render).
    Starts a rendering child and the series' indexing in the background."""
    if ctx.content is None:
        return {"viewer": []}
    warm(ctx)  # a rendering child ready before the patient presses View
    out = []
    studies = viewer_studies(s, grant.request_id, ctx.withheld(s, grant.request_id))
    for study in studies:
        base = f"/files/view/{study.number}"
        out.append(
            {
                "href": f"{base}/1/1",
                "series": [
                    {
                        "number": row.number,
                        "href": f"{base}/{row.number}/1",
                        "label": row.description or row.modality,
                        "images": row.instances,
                    }
                    for row in study.series
                ],
            }
        )
    package = s.get(Package, grant.package_id)
    if package is not None and package.deleted_at is None:
        prebuild(ctx, s, package, [row.series_id for st in studies for row in st.series])
    return {"viewer": out}
