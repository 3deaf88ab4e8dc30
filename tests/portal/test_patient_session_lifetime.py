"""A patient's or clinician's session ends ``portal.patient_session_max_h`` after the code
opened it, however active it stays (an injected clock)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Database
from tests.portal import patient_rig
from tests.portal.patient_rig import BuiltPackage, make_rig, sign_in

built_package = patient_rig.built_package


@pytest.mark.parametrize("max_h", [12, 1])
def test_an_active_session_ends_at_its_absolute_lifetime(
    db: Database, tmp_path: Path, built_package: BuiltPackage, max_h: int
) -> None:
    kw = {} if max_h == 12 else {"patient_session_max_h": max_h}  # 12: the default
    rig = make_rig(db, tmp_path, built_package, rate_limit_per_min=1000, **kw)
    p = rig.patient()
    c = rig.client()
    sign_in(rig, c, p.token)
    steps = max_h * 3  # a request every 20 minutes: never idle (30 minutes)
    for _ in range(steps - 1):
        rig.clock.advance(minutes=20)
        assert c.get("/files").status_code == 200
    rig.clock.advance(minutes=19, seconds=59)
    assert c.get("/files").status_code == 200  # one second before the end
    rig.clock.advance(seconds=1)
    r = c.get("/files")
    assert r.status_code == 401  # the signed-out page
    part = rig.package.parts.split('"name": "')[1].split('"')[0]
    assert c.get(f"/files/package/{part}").status_code == 401
    # The link still works: a fresh code opens a fresh session.
    sign_in(rig, c, p.token)
    assert c.get("/files").status_code == 200
