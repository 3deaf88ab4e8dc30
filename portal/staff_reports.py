"""The staff Reports page (``GET /staff/reports?days=30|365``): the figures of
:mod:`release.report` as charts, with the numbers beside them.

Three charts, drawn here as SVG shapes and written into the page by the template (no
JavaScript, no image request, no ``style`` attribute: the CSP allows neither inline
script nor inline style, so colours and sizes come from classes of the same-origin
stylesheet and from SVG presentation attributes):

- requests per day by outcome, as small multiples: one labelled strip per outcome on
  one shared scale, so a strip is told by its words and position, never by its colour
  alone;
- time from request to first download per ISO week: the median and the 90th percentile
  as two strips, with the two-day line marked and labelled;
- failures by cause: one labelled bar per cause with its count written beside it.

Each chart is an ``<svg role="img">`` with a ``<title>`` and a ``<desc>`` that says the
totals in words, and the exact numbers follow it in a table (in a ``<details>``, in a
focusable scrolling region so a 360 px phone does not scroll the page sideways). The
viewBox is phone-wide (360 units), so the text stays legible on a phone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from portal.site import context_of
from portal.staff_auth import SignedIn
from portal.staff_requests import page
from release.report import CAUSES, FAST_HOURS, OUTCOMES, PERIODS, Report, Reports

router = APIRouter(prefix="/staff")

WIDTH = 360.0
"""The viewBox width of every chart (a phone's width in CSS px: 1 unit ≈ 1 px there)."""
STRIP = 52.0  # one outcome's strip: a label line, then the bars
BAR_TOP = 18.0  # the bars start this far below the strip's top
BAR_SPACE = 28.0  # the tallest bar
AXIS = 18.0  # the date labels under the last strip
CAUSE_ROW = 36.0
CAUSE_BAR_W = 290.0  # the longest failure bar; its count is written after it

SHORT: dict[str, str] = {
    "downloaded": "Downloaded",
    "expired_unopened": "Expired unopened",
    "failed": "Failed",
    "disc": "CD",
    "delivered": "DICOM",
}
"""Column headers of the per-day table (the chart and the key give the full names)."""


@dataclass(frozen=True)
class Rect:
    x: float
    y: float
    w: float
    h: float
    cls: str


@dataclass(frozen=True)
class Text:
    x: float
    y: float
    text: str
    anchor: str = "start"  # SVG text-anchor
    cls: str = ""


@dataclass(frozen=True)
class Line:
    x1: float
    y1: float
    x2: float
    y2: float
    cls: str


@dataclass
class Chart:
    """One SVG chart: its id (for the title and desc), size and shapes."""

    id: str
    title: str
    desc: str
    height: float
    rects: list[Rect] = field(default_factory=list)
    texts: list[Text] = field(default_factory=list)
    lines: list[Line] = field(default_factory=list)
    width: float = WIDTH


def _n(x: float) -> float:
    return round(x, 2)


def _day(d: date) -> str:
    return d.strftime("%d %b")


def outcomes_chart(report: Report) -> Chart:
    """Requests per day by outcome: one strip per outcome, on one scale."""
    days = report.per_day
    top = max((n for d in days for n in d.counts.values()), default=0)
    slot = WIDTH / max(1, len(days))
    summary = "; ".join(f"{OUTCOMES[k]}: {report.totals.get(k, 0)}" for k in OUTCOMES)
    chart = Chart(
        "outcomes",
        f"Requests per day by outcome, last {report.days} days",
        f"One strip per outcome, one bar per day, the tallest bar {top} a day. Totals: {summary}.",
        height=STRIP * len(OUTCOMES) + AXIS,
    )
    for i, key in enumerate(OUTCOMES):
        y0 = i * STRIP
        chart.texts.append(
            Text(0, y0 + 13, f"{OUTCOMES[key]}: {report.totals.get(key, 0)}", cls="label")
        )
        base = y0 + BAR_TOP + BAR_SPACE
        chart.lines.append(Line(0, base, WIDTH, base, "baseline"))
        for j, d in enumerate(days):
            n = d.counts[key]
            if n and top:
                h = max(1.0, BAR_SPACE * n / top)
                w = max(0.6, slot * 0.8) if slot >= 2 else slot
                chart.rects.append(Rect(_n(j * slot), _n(base - h), _n(w), _n(h), f"bar {key}"))
    axis = STRIP * len(OUTCOMES) + 13
    if days:
        chart.texts.append(Text(0, axis, _day(days[0].day), cls="axis"))
        chart.texts.append(Text(WIDTH, axis, _day(days[-1].day), "end", "axis"))
    return chart


def times_chart(report: Report) -> Chart:
    """Median and 90th percentile of the hours to the first download, per ISO week."""
    weeks = report.weeks
    top = max([FAST_HOURS] + [w.p90_h or 0.0 for w in weeks])
    slot = WIDTH / max(1, len(weeks))
    downloads = sum(w.downloads for w in weeks)
    fast = sum(w.under_2_days for w in weeks)
    chart = Chart(
        "times",
        f"Hours from request to first download, per week, last {report.days} days",
        f"Two strips, one bar per ISO week: the median, then the 90th percentile; a "
        f"dashed line marks two days (48 hours). {downloads} first downloads, "
        f"{fast} of them in under two days.",
        height=2 * STRIP + AXIS,
    )
    for i, (name, pick) in enumerate((("Median", "median_h"), ("90th percentile", "p90_h"))):
        y0 = i * STRIP
        chart.texts.append(Text(0, y0 + 13, f"{name} (hours, scale to {top:.0f})", cls="label"))
        base = y0 + BAR_TOP + BAR_SPACE
        chart.lines.append(Line(0, base, WIDTH, base, "baseline"))
        two_days = base - BAR_SPACE * FAST_HOURS / top
        chart.lines.append(Line(0, _n(two_days), WIDTH, _n(two_days), "ref-line"))
        chart.texts.append(Text(WIDTH, y0 + 13, "- - 2 days", "end", "axis"))
        for j, w in enumerate(weeks):
            value = getattr(w, pick)
            if value is None:
                continue
            h = max(1.0, BAR_SPACE * value / top)
            cls = "bar slow" if value >= FAST_HOURS else "bar fast"
            chart.rects.append(
                Rect(_n(j * slot + slot * 0.1), _n(base - h), _n(slot * 0.8), _n(h), cls)
            )
    if weeks:
        axis = 2 * STRIP + 13
        chart.texts.append(Text(0, axis, weeks[0].week, cls="axis"))
        chart.texts.append(Text(WIDTH, axis, weeks[-1].week, "end", "axis"))
    return chart


def failures_chart(report: Report) -> Chart:
    """Failures by cause over the period: one labelled bar each, its count beside it."""
    top = max(report.failures.values(), default=0)
    summary = "; ".join(f"{CAUSES[k]}: {n}" for k, n in report.failures.items())
    chart = Chart(
        "failures",
        f"Failures by cause, last {report.days} days",
        f"One bar per cause. {summary}.",
        height=CAUSE_ROW * len(CAUSES),
    )
    for i, (key, n) in enumerate(report.failures.items()):
        y0 = i * CAUSE_ROW
        chart.texts.append(Text(0, y0 + 13, CAUSES[key], cls="label"))
        w = CAUSE_BAR_W * n / top if top else 0.0
        if n:
            chart.rects.append(Rect(0, y0 + 18, _n(max(1.0, w)), 12, "bar failure"))
        chart.texts.append(Text(_n(w + 6), y0 + 29, str(n), cls="count"))
    return chart


def period_of(raw: str) -> tuple[int, str]:
    """The period asked for (``?days=``) and an error to show; 30 days by default."""
    if not raw:
        return PERIODS[0], ""
    if raw.isdigit() and int(raw) in PERIODS:
        return int(raw), ""
    return PERIODS[0], "Choose 30 or 365 days; showing the last 30."


@router.get("/reports", response_class=HTMLResponse)
def show_reports(request: Request, staff: SignedIn) -> Response:
    """Requests per day by outcome, time to first download per week, failures by cause,
    over the last 30 (default) or 365 days."""
    ctx = context_of(request)
    days, error = period_of(request.query_params.get("days", "")[:8])
    report = Reports(ctx.sessions, clock=ctx.clock).build(days)
    return page(
        request,
        ctx,
        staff,
        "staff/reports.html.j2",
        status=400 if error else 200,
        report=report,
        error=error,
        periods=PERIODS,
        outcomes=OUTCOMES,
        short=SHORT,
        causes=CAUSES,
        charts={
            "outcomes": outcomes_chart(report),
            "times": times_chart(report),
            "failures": failures_chart(report),
        },
    )
