"""QIDO-RS (PS3.18 10.6): searching a grant's studies, series and instances.

``GET /dicomweb/studies``, ``/studies/{study}/series``, ``/series``,
``/studies/{study}/series/{series}/instances``, ``/studies/{study}/instances`` and
``/instances`` answer ``application/dicom+json``: an array of datasets with the
attributes PS3.18 Table 10.6.3-3 lists for each level, built from the index (and, at the
study level, the header of one of its instances for the few the index does not keep).

Only the scope's studies are ever listed (:mod:`portal.dicomweb_scope`): matching
narrows that set, never widens it. Matching keys are keywords or tags (``PatientID``,
``0020000D``): UIDs match any of a comma- or backslash-separated list, dates a
``from-to`` range, other text exactly or with ``*``/``?`` wildcards (case-insensitive
for names). ``limit``/``offset`` page; ``includefield`` and ``fuzzymatching`` are
accepted (every supported attribute is always returned; matching is never fuzzy). An
unknown key is 400.
"""

from __future__ import annotations

import fnmatch
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

import pydicom
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydicom.datadict import tag_for_keyword
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from portal.context import PortalContext
from portal.dicomweb_scope import (
    CORS_HEADERS,
    Scope,
    audit_once,
    authorize,
    instances,
    refusal,
    series_rows,
    study_rows,
)
from portal.dicomweb_token import base_url
from portal.site import context_of
from store.models import Series

log = logging.getLogger("courier.portal.dicomweb")
router = APIRouter()
DICOM_JSON = "application/dicom+json"
_PAGING = {"limit", "offset", "includefield", "fuzzymatching"}
_MAX_LIMIT = 10_000
# Header attributes a study's QIDO answer takes from one of its instances.
_HEADER_TAGS = ("StudyTime", "PatientSex", "ReferringPhysicianName", "StudyID")

Dataset = dict[str, dict[str, Any]]


def element(vr: str, value: object) -> dict[str, Any]:
    """One DICOM JSON attribute (PS3.18 F.2); empty values have no ``Value``."""
    if value is None or value == "" or value == []:
        return {"vr": vr}
    values = value if isinstance(value, list) else [value]
    if vr == "PN":
        return {"vr": vr, "Value": [{"Alphabetic": str(v)} for v in values]}
    if vr in ("IS", "US", "UL"):
        out = []
        for v in values:
            try:
                out.append(int(str(v).strip()))
            except ValueError:
                continue
        return {"vr": vr, "Value": out} if out else {"vr": vr}
    return {"vr": vr, "Value": [str(v) for v in values]}


def _tag(keyword: str) -> str:
    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    return f"{tag:08X}"


def _study_header(ctx: PortalContext, relpath: str | None) -> dict[str, str]:
    """The few study attributes the index does not keep, from one instance's header."""
    if relpath is None or ctx.content is None:
        return {}
    try:
        ds = pydicom.dcmread(
            ctx.content.path(relpath), stop_before_pixels=True, specific_tags=list(_HEADER_TAGS)
        )
    except Exception as exc:  # an unreadable file: the index's attributes only
        log.warning("DICOMweb: a study header could not be read (%s)", type(exc).__name__)
        return {}
    return {k: str(ds.get(k, "") or "") for k in _HEADER_TAGS}


def _studies(ctx: PortalContext, scope: Scope) -> list[Dataset]:
    root = base_url(ctx)
    out = []
    with ctx.sessions() as s:
        for st in study_rows(s, scope):
            # Only what the scope allows: a withheld report is neither counted nor named
            # in ModalitiesInStudy, nor read for the header.
            allowed = instances(s, scope, st.study_uid)
            shown_series = series_rows(s, scope, st.study_uid)
            n_series = len(shown_series)
            head = _study_header(ctx, allowed[0].relpath if allowed else None)
            modalities = list(dict.fromkeys(se.modality for se in shown_series if se.modality))
            out.append(
                {
                    _tag("StudyDate"): element("DA", st.study_date),
                    _tag("StudyTime"): element("TM", head.get("StudyTime")),
                    _tag("AccessionNumber"): element("SH", st.accession_number),
                    _tag("ModalitiesInStudy"): element("CS", modalities),
                    _tag("ReferringPhysicianName"): element(
                        "PN", head.get("ReferringPhysicianName")
                    ),
                    _tag("RetrieveURL"): element("UR", f"{root}/studies/{st.study_uid}"),
                    _tag("StudyDescription"): element("LO", st.study_description),
                    _tag("PatientName"): element("PN", st.patient_name),
                    _tag("PatientID"): element("LO", st.patient_id),
                    _tag("PatientBirthDate"): element("DA", st.patient_birth_date),
                    _tag("PatientSex"): element("CS", head.get("PatientSex")),
                    _tag("StudyInstanceUID"): element("UI", st.study_uid),
                    _tag("StudyID"): element("SH", head.get("StudyID")),
                    _tag("NumberOfStudyRelatedSeries"): element("IS", n_series),
                    _tag("NumberOfStudyRelatedInstances"): element("IS", len(allowed)),
                }
            )
    return out


def _series(ctx: PortalContext, scope: Scope, study_uid: str | None) -> list[Dataset]:
    root = base_url(ctx)
    uids = [study_uid] if study_uid is not None else list(scope.studies)
    out = []
    with ctx.sessions() as s:
        for uid in uids:
            counts = Counter(x.series_uid for x in instances(s, scope, uid))
            for se in series_rows(s, scope, uid):
                out.append(
                    {
                        _tag("Modality"): element("CS", se.modality),
                        _tag("SeriesDescription"): element("LO", se.series_description),
                        _tag("RetrieveURL"): element(
                            "UR", f"{root}/studies/{uid}/series/{se.series_uid}"
                        ),
                        _tag("StudyInstanceUID"): element("UI", uid),
                        _tag("SeriesInstanceUID"): element("UI", se.series_uid),
                        _tag("SeriesNumber"): element("IS", se.series_number),
                        _tag("NumberOfSeriesRelatedInstances"): element(
                            "IS", counts.get(se.series_uid, 0)
                        ),
                    }
                )
    return out


def _instances(
    ctx: PortalContext, scope: Scope, study_uid: str | None, series_uid: str | None
) -> list[Dataset]:
    root = base_url(ctx)
    uids = [study_uid] if study_uid is not None else list(scope.studies)
    out = []
    with ctx.sessions() as s:
        for uid in uids:
            for x in instances(s, scope, uid, series_uid):
                url = f"{root}/studies/{uid}/series/{x.series_uid}/instances/{x.sop_uid}"
                out.append(
                    {
                        _tag("SOPClassUID"): element("UI", x.sop_class_uid),
                        _tag("SOPInstanceUID"): element("UI", x.sop_uid),
                        _tag("AvailableTransferSyntaxUID"): element("UI", x.transfer_syntax_uid),
                        _tag("RetrieveURL"): element("UR", url),
                        _tag("StudyInstanceUID"): element("UI", uid),
                        _tag("SeriesInstanceUID"): element("UI", x.series_uid),
                        _tag("InstanceNumber"): element("IS", x.instance_number),
                    }
                )
    return out


# -- matching --------------------------------------------------------------------------


class BadQuery(ValueError):
    """A query parameter this service does not understand (its name only, no value)."""


def _key_tag(key: str) -> str:
    if len(key) == 8 and all(c in "0123456789abcdefABCDEF" for c in key):
        return key.upper()
    tag = tag_for_keyword(key)
    if tag is None:
        raise BadQuery(f"unknown query key {key[:64]!r}")
    return f"{tag:08X}"


def _texts(attr: dict[str, Any]) -> list[str]:
    out = []
    for v in attr.get("Value", []):
        out.append(str(v.get("Alphabetic", "")) if isinstance(v, dict) else str(v))
    return out


def _matcher(tag: str, wanted: str) -> Callable[[Dataset], bool]:
    def match(ds: Dataset) -> bool:
        attr = ds.get(tag)
        if attr is None:
            return True  # not an attribute of this level: no constraint (PS3.18 8.3.4)
        values = _texts(attr)
        vr = attr.get("vr")
        if wanted == "":
            return True
        if vr == "UI":
            allowed = {u.strip() for u in wanted.replace("\\", ",").split(",") if u.strip()}
            return any(v in allowed for v in values)
        if vr == "DA" and "-" in wanted:
            lo, _, hi = wanted.partition("-")
            return any((not lo or v >= lo) and (not hi or v <= hi) for v in values if v)
        if vr == "PN":
            pattern = wanted.lower()
            return any(fnmatch.fnmatchcase(v.lower(), pattern) for v in values)
        if "*" in wanted or "?" in wanted:
            return any(fnmatch.fnmatchcase(v, wanted) for v in values)
        return wanted in values

    return match


def _page(request: Request, rows: list[Dataset]) -> list[Dataset]:
    q = request.query_params
    matchers = []
    for key, value in q.multi_items():
        if key in _PAGING:
            continue
        matchers.append(_matcher(_key_tag(key), value))
    rows = [r for r in rows if all(m(r) for m in matchers)]
    try:
        offset = max(0, int(q.get("offset", "0")))
        limit = min(_MAX_LIMIT, max(0, int(q.get("limit", str(_MAX_LIMIT)))))
    except ValueError:
        raise BadQuery("limit and offset must be whole numbers") from None
    return rows[offset : offset + limit]


class _NotInScope(BadQuery):
    """A study or series outside the grant: 404, like any unknown one."""


async def _answer(
    request: Request, build: Callable[[PortalContext, Scope], list[Dataset]]
) -> Response:
    ctx = context_of(request)
    scope = await run_in_threadpool(authorize, ctx, request)
    if not isinstance(scope, Scope):
        return scope
    try:
        for key in request.query_params:  # refuse a bad key before reading anything
            if key not in _PAGING:
                _key_tag(key)
        rows = await run_in_threadpool(build, ctx, scope)
        rows = _page(request, rows)
    except _NotInScope:
        return refusal(404, "no such study or series here")
    except BadQuery as exc:
        return refusal(400, str(exc))
    await run_in_threadpool(audit_once, ctx, request, scope, None)
    if not rows:
        return Response(status_code=204, headers=CORS_HEADERS)
    return JSONResponse(rows, media_type=DICOM_JSON, headers=CORS_HEADERS)


def _in_scope(scope: Scope, study: str) -> bool:
    return study in scope.studies


@router.get("/dicomweb/studies", include_in_schema=False)
async def search_studies(request: Request) -> Response:
    return await _answer(request, _studies)


@router.get("/dicomweb/series", include_in_schema=False)
async def search_all_series(request: Request) -> Response:
    return await _answer(request, lambda ctx, scope: _series(ctx, scope, None))


@router.get("/dicomweb/instances", include_in_schema=False)
async def search_all_instances(request: Request) -> Response:
    return await _answer(request, lambda ctx, scope: _instances(ctx, scope, None, None))


@router.get("/dicomweb/studies/{study}/series", include_in_schema=False)
async def search_series(request: Request, study: str) -> Response:
    return await _answer(request, _within(study, lambda ctx, scope: _series(ctx, scope, study)))


@router.get("/dicomweb/studies/{study}/instances", include_in_schema=False)
async def search_study_instances(request: Request, study: str) -> Response:
    return await _answer(
        request, _within(study, lambda ctx, scope: _instances(ctx, scope, study, None))
    )


@router.get("/dicomweb/studies/{study}/series/{series}/instances", include_in_schema=False)
async def search_instances(request: Request, study: str, series: str) -> Response:
    def build(ctx: PortalContext, scope: Scope) -> list[Dataset]:
        with ctx.sessions() as s:
            known = s.scalar(
                select(Series.id).where(
                    Series.series_uid == series, Series.study_id == scope.studies[study]
                )
            )
        if known is None:
            raise _NotInScope
        return _instances(ctx, scope, study, series)

    return await _answer(request, _within(study, build))


def _within(
    study: str, build: Callable[[PortalContext, Scope], list[Dataset]]
) -> Callable[[PortalContext, Scope], list[Dataset]]:
    def checked(ctx: PortalContext, scope: Scope) -> list[Dataset]:
        if not _in_scope(scope, study):
            raise _NotInScope
        return build(ctx, scope)

    return checked
