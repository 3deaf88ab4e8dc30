"""A rig for the patient and clinician pages: a real database, a real package built from
synthetic instances, the app over a :class:`~portal.context.PortalContext` with an
injected clock, and the real relay writing messages through the file channels (codes are
read back from the SMS files, links from the emails)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import pydicom
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from httpx2 import Response
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from delivery.compose import Branding, Composer
from delivery.files import FileChannel
from delivery.grants import GrantKeys, new_grant
from delivery.outbox import Outbox
from delivery.packaging.package import PackageInfo, PackageItem, build_package
from delivery.relay import Relay
from delivery.settings import DeliverySettings
from portal import csrf
from portal.api import create_app
from portal.context import PortalContext
from portal.ratelimit import RateLimiter
from portal.settings import PortalSettings
from release.requests import RequestBook
from store.models import (
    Grant,
    Notification,
    Package,
    PortalSession,
    ReleaseRequest,
    RequestEvent,
    RequestState,
    RequestStudy,
    Study,
)
from tests import synthetic
from tests.conftest import Database
from tests.release.helpers import MOBILE, draft

BASE = "https://testserver"
STAFF = "pacs-team@hospital.example"
HOSPITAL = "St Elsewhere"


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kw: float) -> None:
        self.now += timedelta(**kw)


@dataclass(frozen=True)
class BuiltPackage:
    folder: str
    parts: str
    size: int
    study_uid: str
    instances: int
    root: Path


@pytest.fixture(scope="session")
def built_package(tmp_path_factory: pytest.TempPathFactory) -> BuiltPackage:
    """One small package (2 series, 6 instances) shared by the tests (read only)."""
    src = tmp_path_factory.mktemp("instances")
    paths = synthetic.make_small_instances(src, n=6, n_series=2)
    items = []
    for p in paths:
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        items.append(
            PackageItem(
                path=p,
                study_uid=ds.StudyInstanceUID,
                series_uid=ds.SeriesInstanceUID,
                sop_instance_uid=ds.SOPInstanceUID,
                sop_class_uid=ds.SOPClassUID,
                transfer_syntax_uid=ds.file_meta.TransferSyntaxUID,
                modality="CT",
            )
        )
    root = tmp_path_factory.mktemp("packages")
    result = build_package(
        items,
        root / "CR-TEST-0001",
        info=PackageInfo("CR-TEST-0001", "en", "", datetime(2026, 3, 1, tzinfo=UTC)),
    )
    parts = json.dumps(
        [
            {"name": p.name, "size": n, "sha256": h}
            for p, n, h in zip(result.parts, result.part_bytes, result.part_sha256, strict=True)
        ]
    )
    return BuiltPackage(
        "CR-TEST-0001", parts, result.total_bytes, items[0].study_uid, len(items), root
    )


@dataclass
class Patient:
    request_id: int
    grant_id: int
    token: str


@dataclass
class Rig:
    db: Database
    clock: Clock
    ctx: PortalContext
    app: FastAPI
    outdir: Path
    composer: Composer
    package: BuiltPackage

    @property
    def keys(self) -> GrantKeys:
        return self.ctx.keys

    def client(self) -> TestClient:
        return TestClient(self.app, base_url=BASE, follow_redirects=False)

    # -- data -----------------------------------------------------------------------

    def patient(
        self,
        *,
        study_ids: Sequence[int] | None = None,
        package: BuiltPackage | None = None,
        **overrides: object,
    ) -> Patient:
        """A notified request with its package, a study and the patient's grant.

        ``study_ids``: attach these studies instead (already indexed); ``package``: the
        package row names this one instead of the shared built package.
        """
        package = package or self.package
        book = RequestBook(self.db.sessions, self.clock)
        req = book.create(draft(**overrides), "test")
        with self.db.sessions() as s, s.begin():
            fresh = s.get(ReleaseRequest, req.id)
            assert fresh is not None
            fresh.state = RequestState.NOTIFIED
            ids = list(study_ids) if study_ids is not None else [self._built_study(s).id]
            for study_id in ids:
                s.add(RequestStudy(request_id=req.id, study_id=study_id, matched_at=self.clock()))
            pkg = Package(
                request_id=req.id,
                folder=package.folder,
                parts=package.parts,
                studies=len(ids),
                instances=package.instances,
                size_bytes=package.size,
                built_at=self.clock(),
            )
            s.add(pkg)
            s.flush()
            grant = new_grant(
                s, self.keys, fresh, package_id=pkg.id, link_days=30, now=self.clock()
            )
            return Patient(req.id, grant.id, self.keys.token(grant))

    def _built_study(self, s: Session) -> Study:
        """The study row of the shared built package (added on first use)."""
        study = s.scalar(select(Study).where(Study.study_uid == self.package.study_uid))
        if study is None:
            study = Study(
                study_uid=self.package.study_uid,
                patient_id="SYN0002",
                patient_name=synthetic.PATIENT_NAME,
                study_date="20260301",
                study_description="CT CHEST",
                modalities="CT",
                state="stable",
                instance_count=self.package.instances,
                size_bytes=60_000,
                first_received_at=self.clock(),
                last_received_at=self.clock(),
            )
            s.add(study)
            s.flush()
        return study

    def grant(self, grant_id: int) -> Grant:
        with self.db.sessions() as s:
            g = s.get(Grant, grant_id)
            assert g is not None
            return g

    def counts(self) -> dict[str, int]:
        """Rows that any change would add to (events, outbox, sessions, grants)."""
        with self.db.sessions() as s:
            return {
                m.__tablename__: int(s.scalar(select(func.count()).select_from(m)) or 0)
                for m in (RequestEvent, Notification, PortalSession, Grant)
            }

    def grant_state(self, grant_id: int) -> tuple[object, ...]:
        g = self.grant(grant_id)
        return (
            g.code_hash, g.code_tries, g.codes_sent, g.failures, g.locked_at,
            g.first_opened_at, g.downloads, g.revoked_at,
        )  # fmt: skip

    def events(self, request_id: int) -> list[RequestEvent]:
        with self.db.sessions() as s:
            return list(
                s.scalars(
                    select(RequestEvent)
                    .where(RequestEvent.request_id == request_id)
                    .order_by(RequestEvent.id)
                )
            )

    # -- the relay ------------------------------------------------------------------

    def relay(self) -> int:
        channels = {
            "email": FileChannel("email", self.outdir, sender="imaging@hospital.example"),
            "sms": FileChannel("sms", self.outdir),
        }
        relay = Relay(
            self.db.sessions,
            self.ctx.outbox,
            channels,
            self.composer,
            self.ctx.book,
            clock=self.clock,
        )
        return asyncio.run(relay.run_once())

    def sms_texts(self) -> list[str]:
        return [p.read_text() for p in sorted(self.outdir.glob("*.txt"), key=_mtime)]

    def emails(self) -> list[EmailMessage]:
        out = []
        for p in sorted(self.outdir.glob("*.eml"), key=_mtime):
            msg = message_from_bytes(p.read_bytes(), policy=policy.default)
            assert isinstance(msg, EmailMessage)
            out.append(msg)
        return out

    def last_code(self) -> str:
        """Send what is queued, then the code in the newest SMS."""
        self.relay()
        texts = self.sms_texts()
        assert texts, "no SMS was sent"
        match = re.search(r"\b(\d{6})\b", texts[-1].split("\n\n", 1)[1])
        assert match is not None
        return match.group(1)


def _mtime(p: Path) -> int:
    return p.stat().st_mtime_ns


def make_rig(db: Database, tmp_path: Path, package: BuiltPackage, **portal_settings: object) -> Rig:
    clock = Clock()
    keys = GrantKeys(b"p" * 32)
    outbox = Outbox(domain="hospital.example", staff_email=STAFF, clock=clock)
    ctx = PortalContext(
        sessions=db.sessions,
        keys=keys,
        outbox=outbox,
        delivery=DeliverySettings(contact="Imaging records, 020 7946 0000"),
        portal=PortalSettings.model_validate(portal_settings),
        package_dir=package.root,
        hospital=HOSPITAL,
        clock=clock,
        limiter=RateLimiter(),
    )
    app = create_app(db.sessions, [], clock=clock, portal=ctx)
    composer = Composer(keys, Branding(BASE, HOSPITAL, "StElsewhere"), clock)
    return Rig(db, clock, ctx, app, tmp_path / "outbox", composer, package)


@pytest.fixture
def rig(db: Database, tmp_path: Path, built_package: BuiltPackage) -> Iterator[Rig]:
    yield make_rig(db, tmp_path, built_package, rate_limit_per_min=1000)


def csrf_token(client: TestClient) -> str:
    """The client's CSRF token (a page is fetched first when it has none)."""
    token = client.cookies.get(csrf.COOKIE)
    if not token:
        client.get("/access")
        token = client.cookies.get(csrf.COOKIE)
    assert token
    return str(token)


def post(client: TestClient, path: str, **fields: str) -> Response:
    data = {"csrf": csrf_token(client), **fields}
    return client.post(path, data=data)


def sign_in(rig: Rig, client: TestClient, token: str) -> None:
    """Open the link, ask for a code, read it from the SMS, type it: a session."""
    assert client.get(f"/d/{token}").status_code == 303
    assert client.get("/access").status_code == 200
    r = post(client, "/access/code")
    assert r.status_code == 303, r.text
    code = rig.last_code()
    r = post(client, "/access/verify", code=code)
    assert r.status_code == 303 and r.headers["location"] == "/files"


__all__ = ["MOBILE", "Patient", "Rig", "built_package", "make_rig", "rig"]
