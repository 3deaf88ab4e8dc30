"""``GET /metrics``: the node's Prometheus metrics, for the hospital's monitoring only.

Off unless ``portal.metrics_enabled`` (the route then does not exist: 404). When on,
it answers only a client whose address is in ``portal.metrics_allow`` (loopback by
default), and never a request that came through a reverse proxy: one carrying
``Forwarded``, ``X-Forwarded-For`` or ``X-Real-IP`` gets 403 whatever its address, so a
proxy on the same machine (whose connections come from 127.0.0.1) cannot expose the
metrics to the internet. Prometheus scrapes the node directly. An allow-list was chosen
over an API key: Prometheus would need a staff key, which also opens the REST API, and a
key in a scrape config is one more secret to rotate.

The body is the text format 0.0.4: the counters of every process of the node
(:mod:`telemetry.metrics`) and gauges read from the database at scrape time
(:class:`DatabaseCollector`): requests, studies and outbox messages by state, and send
attempts by outcome. Every state has a series (0 when none), and no label holds patient
data: states and outcomes are fixed words.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from store.catalog import guarded
from store.errors import StoreError
from store.models import (
    Notification,
    NotificationAttempt,
    NotificationState,
    ReleaseRequest,
    RequestState,
    Study,
    StudyState,
)
from telemetry.metrics import scrape_registry

log = logging.getLogger("courier.portal.metrics")

_PROXY_HEADERS = (b"forwarded", b"x-forwarded-for", b"x-real-ip")
# Outcomes of a send attempt (delivery.relay); "" is an attempt still under way.
_ATTEMPT_OUTCOMES = {"sent": "sent", "retry": "retry", "permanent": "permanent"}
_ATTEMPT_OUTCOMES |= {"unknown": "unknown", "": "in_flight"}


class DatabaseCollector:
    """Gauges counted in the database at each scrape (one query per table)."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def collect(self) -> Iterator[Metric]:
        with guarded(self._sessions) as s:
            requests = dict(
                s.execute(
                    select(ReleaseRequest.state, func.count()).group_by(ReleaseRequest.state)
                ).all()
            )
            studies = dict(s.execute(select(Study.state, func.count()).group_by(Study.state)).all())
            outbox = dict(
                s.execute(
                    select(Notification.state, func.count()).group_by(Notification.state)
                ).all()
            )
            attempts = dict(
                s.execute(
                    select(NotificationAttempt.outcome, func.count()).group_by(
                        NotificationAttempt.outcome
                    )
                ).all()
            )
        yield _by_state(
            "courier_requests", "Release requests by state.", requests, list(RequestState)
        )
        yield _by_state("courier_studies", "Received studies by state.", studies, list(StudyState))
        yield _by_state(
            "courier_outbox_messages",
            "Outbox messages by state (queued and sending are the depth; failed gave up).",
            outbox,
            list(NotificationState),
        )
        g = GaugeMetricFamily(
            "courier_outbox_attempts",
            "Send attempts recorded, by outcome (retry, permanent and unknown failed).",
            labels=["outcome"],
        )
        counted = dict.fromkeys(_ATTEMPT_OUTCOMES.values(), 0)
        for outcome, n in attempts.items():
            label = _ATTEMPT_OUTCOMES.get(str(outcome or ""), "other")
            counted[label] = counted.get(label, 0) + int(n)
        for label, n in counted.items():
            g.add_metric([label], n)
        yield g


def _by_state(name: str, doc: str, counts: Mapping[Any, int], states: list[str]) -> Metric:
    g = GaugeMetricFamily(name, doc, labels=["state"])
    known = {str(state) for state in states}
    for state in states:
        g.add_metric([str(state)], int(counts.get(state, 0) or counts.get(str(state), 0)))
    other = sum(int(n) for k, n in counts.items() if str(k) not in known)
    if other:
        g.add_metric(["other"], other)
    return g


def _allowed(
    request: Request, networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]
) -> bool:
    if any(k.lower() in _PROXY_HEADERS for k, _ in request.scope.get("headers", [])):
        return False
    host = request.client.host if request.client else ""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in net for net in networks)


def install_metrics(app: FastAPI, sessions: sessionmaker[Session], allow: Sequence[str]) -> None:
    """Add ``GET /metrics`` to ``app``, answered to clients in ``allow`` (addresses or
    CIDR networks; a malformed one raises ValueError here, at start-up)."""
    networks = [ipaddress.ip_network(a, strict=False) for a in allow]
    collector = DatabaseCollector(sessions)

    @app.get("/metrics", include_in_schema=False)
    def metrics(request: Request) -> Response:
        if not _allowed(request, networks):
            return PlainTextResponse("metrics are not served to this address\n", 403)
        try:
            body = generate_latest(scrape_registry([collector]))
        except StoreError as exc:
            log.warning("metrics: the index database is unavailable (%s)", type(exc).__name__)
            return PlainTextResponse("the index database is unavailable\n", 503)
        return Response(body, media_type=CONTENT_TYPE_PLAIN_0_0_4)
