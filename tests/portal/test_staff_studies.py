"""The staff Studies pages: every study, searched, held first; attach / rules again /
discard on a held study (CSRF, audited, on both timelines, one winner when two staff
act at once); the request page's "why it is waiting"; the dashboard's study lists; and
HTML error pages (JSON only under /api/).

Both databases (the ``db`` fixture), over TestClient (loopback, no network). Studies
and decisions are rows written here: the matcher's own path is tested in
tests/release; what these pages add is what staff see and do.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from portal import staff_studies_list, staff_studies_pages
from portal.api import create_app
from portal.apikeys import hash_api_key, new_api_key
from portal.staff_studies_actions import StudyRefused, Who, attach, discard, rules_again
from release.identity import IdentitySettings
from release.matching import Matcher
from release.requests import RequestBook
from rules import RuleSet, load_rules_text
from store.content import ContentStore
from store.db import writing
from store.models import (
    AuditEvent,
    IdentityMismatch,
    MismatchState,
    Pull,
    PullState,
    ReleaseRequest,
    RequestSelection,
    RequestState,
    RequestStudy,
    Study,
    StudyDecision,
    StudyEvent,
)
from tests.conftest import Database
from tests.portal.test_staff import Site, add_study, make_request, open_site
from tests.portal.test_staff import cheap_hashes as cheap_hashes  # autouse fixture
from tests.release.helpers import draft
from tests.release.test_identity import BY_ACCESSION
from tests.release.test_purge import World


@pytest.fixture
def site(db: Database, tmp_path: Path) -> Iterator[Site]:
    for s in open_site(db, tmp_path):
        assert s.login().status_code == 303
        yield s


def study_id(site: Site, uid: str) -> int:
    sid = site.scalar(select(Study.id).where(Study.study_uid == uid))
    assert sid is not None
    return int(sid)


def decide(site: Site, uid: str, action: str = "hold", rule: str = "", **over: Any) -> int:
    """A decision on ``uid`` (stable since the clock's now, decided a second later)."""
    with site.db.sessions() as s, s.begin():
        st = s.scalars(select(Study).where(Study.study_uid == uid)).one()
        st.stable_at = st.stable_at or site.clock() - timedelta(seconds=1)
        d = StudyDecision(
            study_id=st.id,
            at=over.pop("at", site.clock()),
            action=action,
            rule=rule,
            reason=over.pop("reason", "held for staff"),
            trace=over.pop("trace", "stable: hold (no rule matched)\n  no   by-accession: x"),
        )
        s.add(d)
        s.flush()
        return d.id


def held_study(site: Site, uid: str, **over: Any) -> int:
    """A stable study held by the rules; returns the decision id the page shows."""
    add_study(site, uid, **over)
    return decide(site, uid)


def request_id(site: Site, ref: str) -> int:
    rid = site.scalar(select(ReleaseRequest.id).where(ReleaseRequest.reference == ref))
    assert rid is not None
    return int(rid)


def state_of(site: Site, ref: str) -> str:
    return str(site.scalar(select(ReleaseRequest.state).where(ReleaseRequest.reference == ref)))


def audit(site: Site, kind: str) -> list[AuditEvent]:
    with site.db.sessions() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.kind == kind)))


def decisions(site: Site, uid: str) -> list[str]:
    with site.db.sessions() as s:
        return list(
            s.scalars(
                select(StudyDecision.action)
                .where(StudyDecision.study_id == study_id(site, uid))
                .order_by(StudyDecision.id)
            )
        )


# -- the list ---------------------------------------------------------------------------


def test_the_list_shows_held_first_escaped_with_ae_and_decision(site: Site) -> None:
    add_study(site, "1.2.3.101", accession="ACC9")  # undecided
    held_study(site, "1.2.3.102", patient_id="SYN-2", accession="ACC8")
    with site.db.sessions() as s, s.begin():
        st = s.scalars(select(Study).where(Study.study_uid == "1.2.3.102")).one()
        st.patient_name = "<script>x</script>^\u202eEVIL"
        st.calling_ae, st.called_ae, st.peer_host = "PACS1", "COURIER", "10.0.0.9"
    page = site.client.get("/staff/studies")
    assert page.status_code == 200
    body = page.text
    assert 'href="/staff/studies"' in body and 'aria-current="page"' in body  # the nav link
    assert body.index("1.2.3.102") < body.index("1.2.3.101")  # held first
    assert "<script>x</script>" not in body and "<bdi>&lt;script&gt;x&lt;/script&gt;" in body
    assert "<bdi>PACS1</bdi> → <bdi>COURIER</bdi>" in body and "10.0.0.9" in body
    assert "held for staff" in body
    assert 'class="state state-held"' in body and 'class="state state-undecided"' in body


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, {"1.2.3.201", "1.2.3.202", "1.2.3.203"}),
        ({"patient_id": "SYN-2"}, {"1.2.3.202"}),
        ({"name": "synthetic patient"}, {"1.2.3.201", "1.2.3.203"}),  # words, any case
        ({"name": "50%"}, set()),  # LIKE wildcards are literal
        ({"accession": "ACC7"}, {"1.2.3.203"}),
        ({"date": "2026-02-01"}, {"1.2.3.202"}),
        ({"date": "20260201"}, {"1.2.3.202"}),
        ({"status": "held"}, {"1.2.3.201"}),
        ({"status": "receiving"}, {"1.2.3.203"}),
        ({"status": "held", "patient_id": "SYN-2"}, set()),
    ],
)
def test_search(site: Site, params: dict[str, str], expected: set[str]) -> None:
    held_study(site, "1.2.3.201")
    add_study(site, "1.2.3.202", patient_id="SYN-2", study_date="20260201")
    with site.db.sessions() as s, s.begin():
        s.scalars(select(Study).where(Study.study_uid == "1.2.3.202")).one().patient_name = "ROE"
    add_study(site, "1.2.3.203", accession="ACC7", state="receiving")
    page = site.client.get("/staff/studies", params=params)
    assert page.status_code == 200
    shown = {uid for uid in ("1.2.3.201", "1.2.3.202", "1.2.3.203") if uid in page.text}
    assert shown == expected


@pytest.mark.parametrize(
    ("params", "field"),
    [({"date": "1 March"}, "date"), ({"status": "lost"}, "status"), ({"page": "0"}, "page")],
)
def test_a_bad_search_field_is_named_not_echoed(
    site: Site, params: dict[str, str], field: str
) -> None:
    page = site.client.get("/staff/studies", params=params)
    assert page.status_code == 422
    assert f"{field}: expected" in page.text
    errors = page.text.split('id="search-errors"', 1)[1].split("</div>", 1)[0]
    value = next(iter(params.values()))
    assert len(value) < 2 or value not in errors  # named, not echoed


def test_pages_are_bounded(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(staff_studies_list, "PAGE_SIZE", 2)
    for n in range(3):
        add_study(site, f"1.2.3.30{n}")
    first = site.client.get("/staff/studies").text
    assert 'id="next-page"' in first and 'id="prev-page"' not in first
    second = site.client.get("/staff/studies", params={"page": "2"}).text
    assert second.count('class="state state-') == 1 and 'id="prev-page"' in second


def test_the_study_page_shows_events_decisions_and_trace(site: Site) -> None:
    held_study(site, "1.2.3.401")
    with site.db.sessions() as s, s.begin():
        s.add(
            StudyEvent(
                study_id=study_id(site, "1.2.3.401"),
                at=site.clock(),
                from_state="receiving",
                to_state="stable",
                reason="quiet for 60 s",
            )
        )
    page = site.client.get("/staff/studies/1.2.3.401")
    assert page.status_code == 200
    assert "quiet for 60 s" in page.text and "no   by-accession: x" in page.text
    assert 'id="action-attach"' not in page.text  # no request is waiting
    assert 'id="action-rules"' in page.text and 'id="action-discard"' in page.text
    missing = site.client.get("/staff/studies/9.9.9")
    assert missing.status_code == 404 and "No study has this" in missing.text


# -- actions ----------------------------------------------------------------------------


def test_attach_a_held_study_of_the_same_patient(site: Site) -> None:
    ref = make_request(site)  # SYN-1, accession ACC1
    other = make_request(site)
    seen = held_study(site, "1.2.3.501", accession="ACC1")
    page = site.client.get("/staff/studies/1.2.3.501").text
    assert 'optgroup label="Same Patient ID"' in page and ref in page and other in page
    r = site.post("/staff/studies/1.2.3.501/attach", {"seen": str(seen), "request": ref})
    assert r.status_code == 303, r.text
    assert r.headers["location"] == "/staff/studies/1.2.3.501?done=attach"
    assert state_of(site, ref) == "ready"  # the one selection is satisfied
    assert decisions(site, "1.2.3.501") == ["hold", "release"]
    timeline = " | ".join(e.reason for e in site.events(ref))
    assert "1.2.3.501 attached by staff:alice" in timeline
    [event] = audit(site, "held-study")
    assert event.actor == "staff:alice" and event.request_ref == ref
    assert "1.2.3.501" in event.study_uids
    with site.db.sessions() as s:
        reasons = list(s.scalars(select(StudyEvent.reason)))
    assert any(ref in r and "staff:alice" in r for r in reasons)
    done = site.client.get(r.headers["location"]).text
    assert 'id="done"' in done and 'class="state state-joined"' in done


def test_attach_across_an_identity_mismatch_needs_the_override_path(site: Site) -> None:
    ref = make_request(site)
    seen = held_study(site, "1.2.3.601", patient_id="SYN-9", accession="ACC1")
    form = {"seen": str(seen), "request": ref}
    refused = site.post("/staff/studies/1.2.3.601/attach", form)
    assert refused.status_code == 409 and "patient_id" in refused.text
    assert site.scalar(select(IdentityMismatch.id)) is None  # nothing written
    assert state_of(site, ref) == "pending"
    r = site.post("/staff/studies/1.2.3.601/attach", {**form, "reason": "merged record, PACS"})
    assert r.status_code == 303
    assert state_of(site, ref) == "ready"
    assert site.scalar(select(IdentityMismatch.state)) == MismatchState.ATTACHED
    [override] = audit(site, "identity-override")
    assert override.actor == "staff:alice" and "merged record, PACS" in override.detail
    assert len(audit(site, "held-study")) == 1


def test_a_pair_staff_kept_apart_is_refused(site: Site) -> None:
    ref = make_request(site)
    seen = held_study(site, "1.2.3.651", patient_id="SYN-9", accession="ACC1")
    with site.db.sessions() as s, s.begin():
        s.add(
            IdentityMismatch(
                request_id=request_id(site, ref),
                study_id=study_id(site, "1.2.3.651"),
                fields="patient_id",
                state=MismatchState.DISMISSED,
                found_at=site.clock(),
            )
        )
    form = {"seen": str(seen), "request": ref, "reason": "try"}
    r = site.post("/staff/studies/1.2.3.651/attach", form)
    assert r.status_code == 409 and "not this patient" in r.text
    assert site.scalar(select(RequestStudy.id)) is None


@pytest.mark.parametrize(
    ("action", "form", "message"),
    [
        ("discard", {"reason": "  "}, "Give the reason"),
        ("attach", {"request": "CR-NONE"}, "Choose one of the requests"),
        ("attach", {"request": ""}, "Choose one of the requests"),
        ("nothing", {}, "Unknown action"),
    ],
)
def test_refusals_write_nothing(
    site: Site, action: str, form: dict[str, str], message: str
) -> None:
    seen = held_study(site, "1.2.3.701")
    r = site.post(f"/staff/studies/1.2.3.701/{action}", {"seen": str(seen), **form})
    assert r.status_code in (404, 409) and message in r.text
    assert decisions(site, "1.2.3.701") == ["hold"] and not audit(site, "held-study")


def test_csrf_is_required(site: Site) -> None:
    seen = held_study(site, "1.2.3.751")
    r = site.client.post(
        "/staff/studies/1.2.3.751/discard",
        data={"seen": str(seen), "reason": "x"},
        follow_redirects=False,
    )
    assert r.status_code == 403
    assert decisions(site, "1.2.3.751") == ["hold"]


def test_discard_records_a_staff_decision_and_a_stale_form_loses(site: Site) -> None:
    ref = make_request(site)
    seen = held_study(site, "1.2.3.801", accession="ACC1")
    r = site.post("/staff/studies/1.2.3.801/discard", {"seen": str(seen), "reason": "test"})
    assert r.status_code == 303
    assert decisions(site, "1.2.3.801") == ["hold", "discard"]
    [event] = audit(site, "held-study")
    assert "discarded: test" in event.detail
    # A second member of staff, on the page loaded before: refused, nothing written.
    late = site.post("/staff/studies/1.2.3.801/attach", {"seen": str(seen), "request": ref})
    assert late.status_code == 409 and "meanwhile" in late.text
    assert state_of(site, ref) == "pending" and len(audit(site, "held-study")) == 1


def test_rules_again_makes_the_matcher_decide_it_again(site: Site, tmp_path: Path) -> None:
    seen = held_study(site, "1.2.3.851")
    matcher = Matcher(
        site.db.sessions,
        ContentStore(tmp_path / "content"),
        lambda: RuleSet([]),
        RequestBook(site.db.sessions, site.clock),
        clock=site.clock,
    )
    assert "1.2.3.851" not in matcher.undecided()
    r = site.post("/staff/studies/1.2.3.851/rules", {"seen": str(seen)})
    assert r.status_code == 303
    assert "1.2.3.851" in matcher.undecided()  # the next sweep decides it again
    page = site.client.get(r.headers["location"]).text
    assert "state-undecided" in page and "sent to the rules again by staff:alice" in page
    again = site.post("/staff/studies/1.2.3.851/rules", {"seen": str(seen)})
    assert again.status_code == 409  # no longer held: one sweep, not two
    assert len(audit(site, "held-study")) == 1


def test_two_staff_at_once_one_wins(site: Site) -> None:
    """Two transactions claim the same held study at the same moment (threads, each
    its own session): exactly one acts, the other is refused with a clear message."""
    ref = make_request(site)
    seen = held_study(site, "1.2.3.901", accession="ACC1")
    start = threading.Barrier(2, timeout=20)
    outcomes: list[str] = []
    book = RequestBook(site.db.sessions, site.clock)

    def act(name: str) -> None:
        who = Who(f"staff:{name}", f"staff:{name}")
        start.wait()
        try:
            with site.db.sessions() as s, writing(s):
                if name == "alice":
                    attach(
                        s,
                        book,
                        "1.2.3.901",
                        seen,
                        ref,
                        who=who,
                        reason="",
                        identity=IdentitySettings(),
                        now=site.clock(),
                    )
                else:
                    discard(s, "1.2.3.901", seen, who=who, reason="dup", now=site.clock())
                s.commit()
            outcomes.append("done")
        except StudyRefused as exc:
            outcomes.append(str(exc))

    threads = [threading.Thread(target=act, args=(n,)) for n in ("alice", "bob")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    assert len(outcomes) == 2 and outcomes.count("done") == 1
    assert any("meanwhile" in o for o in outcomes)  # the loser is told why
    assert len(decisions(site, "1.2.3.901")) == 2  # hold + the winner's
    assert len(audit(site, "held-study")) == 1


# -- why a request is waiting -----------------------------------------------------------


def _incomplete(site: Site, ref: str) -> None:
    add_study(site, "1.2.3.1003", accession="ACC1")
    with site.db.sessions() as s, s.begin():
        rid = request_id(site, ref)
        for sel in s.scalars(select(RequestSelection).where(RequestSelection.request_id == rid)):
            sel.expected_instances = 20
        s.add(
            RequestStudy(
                request_id=rid,
                study_id=study_id(site, "1.2.3.1003"),
                rule="r",
                matched_at=site.clock(),
            )
        )
        s.get(ReleaseRequest, rid).state = RequestState.RECEIVING  # type: ignore[union-attr]


def _mismatch(site: Site, ref: str) -> None:
    add_study(site, "1.2.3.1004", patient_id="SYN-9", accession="ACC1")
    decide(site, "1.2.3.1004", reason="patient identity disagrees")
    with site.db.sessions() as s, s.begin():
        s.add(
            IdentityMismatch(
                request_id=request_id(site, ref),
                study_id=study_id(site, "1.2.3.1004"),
                fields="patient_id birth_date",
                found_at=site.clock(),
            )
        )


def _nothing(site: Site, ref: str) -> None:
    pass


def _held(site: Site, ref: str) -> None:
    held_study(site, "1.2.3.1002", accession="ACC1")


def _arriving(site: Site, ref: str) -> None:
    add_study(site, "1.2.3.1005", accession="ACC1", state="receiving")


def _discarded(site: Site, ref: str) -> None:
    add_study(site, "1.2.3.1006", accession="ACC1")
    decide(site, "1.2.3.1006", "discard", "drop-sr")


WAITING_CASES: dict[str, tuple[Callable[[Site, str], None], str]] = {
    "none-arrived": (_nothing, "No study with accession number ACC1 has arrived"),
    "held": (_held, "arrived but was held (no rule matched: held for staff)"),
    "incomplete": (_incomplete, "is incomplete: 12 of 20 instances"),
    "identity": (_mismatch, "patient identity differs (patient_id, birth_date)"),
    "arriving": (_arriving, "A study with accession number ACC1 still receiving"),
    "discarded": (_discarded, "was discarded by rule drop-sr"),
}


@pytest.mark.parametrize("kind", list(WAITING_CASES))
def test_why_it_is_waiting(site: Site, kind: str) -> None:
    ref = make_request(site)
    setup, text = WAITING_CASES[kind]
    setup(site, ref)
    page = site.client.get(f"/staff/requests/{ref}").text
    assert 'id="waiting"' in page
    assert f'class="wait-{kind}"' in page and text in page
    if kind == "held":
        assert 'id="attach-w1"' in page  # a button to attach it, here
    if kind == "identity":
        assert 'href="#mismatch-' in page


def test_attach_from_the_request_page_returns_there(site: Site) -> None:
    ref = make_request(site)
    seen = held_study(site, "1.2.3.1101", accession="ACC1")
    held_study(site, "1.2.3.1102", accession="OTHER")  # a candidate of the same patient
    page = site.client.get(f"/staff/requests/{ref}").text
    assert 'id="candidate-studies"' in page and "1.2.3.1102" in page
    form = {"seen": str(seen), "request": ref, "back": "request"}
    r = site.post("/staff/studies/1.2.3.1101/attach", form)
    assert r.status_code == 303
    assert r.headers["location"] == f"/staff/requests/{ref}?done=study-attach"
    assert state_of(site, ref) == "ready"


# -- the dashboard ----------------------------------------------------------------------


def test_the_dashboard_lists_held_studies_candidates_and_failed_pulls(site: Site) -> None:
    ref = make_request(site)
    held_study(site, "1.2.3.1201", accession="ACC5")
    fresh = site.client.get("/staff").text
    assert 'id="held-old"' not in fresh  # younger than portal.held_alert_h
    assert 'id="with-candidates"' in fresh and f"/staff/requests/{ref}#waiting" in fresh
    assert 'id="all-clear"' not in fresh
    with site.db.sessions() as s, s.begin():
        s.add(
            Pull(
                request_id=request_id(site, ref),
                study_uid="1.2.3.1299",
                state=PullState.FAILED,
                next_attempt_at=site.clock(),
                created_at=site.clock(),
                finished_at=site.clock(),
                last_error="C-MOVE 0xA801 (move destination unknown)",
            )
        )
    site.clock.advance(hours=site.ctx.portal.held_alert_h + 1)
    assert site.login().status_code == 303  # the idle session ended meanwhile
    later = site.client.get("/staff").text
    assert 'id="held-old"' in later and "/staff/studies/1.2.3.1201" in later
    assert 'id="failed-pulls"' in later and "0xA801" in later


# -- error pages ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "lang", "expected"),
    [
        ("/staff/nowhere", None, "No page has this address"),
        ("/nowhere", None, "This link cannot be used"),
        ("/nowhere", "ar", 'lang="ar" dir="rtl"'),
    ],
)
def test_unknown_pages_are_html(site: Site, path: str, lang: str | None, expected: str) -> None:
    r = site.client.get(path, params={"lang": lang} if lang else None)
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("text/html")
    assert expected in r.text and "detail" not in r.text


def test_the_api_keeps_json_errors(site: Site) -> None:
    key = new_api_key()
    app = create_app(site.db.sessions, [hash_api_key(key)], clock=site.clock, portal=site.ctx)
    with TestClient(app, base_url="https://testserver") as client:
        auth = {"Authorization": f"Bearer {key}"}
        for path in ("/api/v1/nowhere", "/api/v1/requests/CR-NONE"):
            r = client.get(path, headers=auth)
            assert r.status_code == 404
            assert r.headers["content-type"].startswith("application/json")
            assert "detail" in r.json()


def test_a_server_error_is_an_html_page_that_says_nothing_of_it(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*_a: Any, **_k: Any) -> Any:
        raise RuntimeError("secret detail SYN-1")

    monkeypatch.setattr(staff_studies_pages, "search", boom)
    with TestClient(
        site.client.app, base_url="https://testserver", raise_server_exceptions=False
    ) as c:
        c.cookies = site.client.cookies
        r = c.get("/staff/studies")
    assert r.status_code == 500 and r.headers["content-type"].startswith("text/html")
    assert "Something went wrong" in r.text and "SYN-1" not in r.text


HOLD_ALL = """\
rules:
  - name: hold-all
    action: hold
    reason: staff decide
"""


def test_after_a_rules_change_the_rules_again_release_it(db: Database, tmp_path: Path) -> None:
    """The whole path with the real matcher: a study held by the rules of the day, the
    admin's fix to the rules, staff's "rules again", the next sweep releases it to its
    request (received and decided from real DICOM files in the content store)."""
    world = World(db, tmp_path)
    running = [load_rules_text(HOLD_ALL)]
    world.matcher = Matcher(
        db.sessions, world.content, lambda: running[0], world.book, clock=world.clock
    )
    ref = world.book.create(
        draft(selection=[{"kind": "accession", "value": "LATE1"}]), "test"
    ).reference
    uid = world.receive("pushed", 2, accession="LATE1", patient_id="MRN-000123")
    world.settle()
    with db.sessions() as s:
        seen = s.scalar(select(StudyDecision.id).order_by(StudyDecision.id.desc()).limit(1))
        assert s.get(StudyDecision, seen).action == "hold"  # type: ignore[union-attr]
    running[0] = load_rules_text(BY_ACCESSION)  # the admin's fix
    with db.sessions() as s, writing(s):
        rules_again(s, uid, seen, who=Who("staff:alice", "staff:alice"), now=world.clock())
        s.commit()
    world.settle()
    with db.sessions() as s:
        req = s.scalars(select(ReleaseRequest).where(ReleaseRequest.reference == ref)).one()
        actions = list(s.scalars(select(StudyDecision.rule).order_by(StudyDecision.id)))
    assert req.state == RequestState.READY
    assert actions == ["hold-all", "by-accession"]
