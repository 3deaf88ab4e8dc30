"""``/metrics``: a served node counts what it receives and refuses, in one process and in
two receiving processes, reads its gauges from the database, and serves them only to
the addresses allowed, never through a proxy, and not at all unless enabled."""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.orm import Session, sessionmaker

from delivery.settings import DeliverySettings
from node.cli import main
from portal.api import create_app
from store.db import make_engine, make_sessions, migrate
from telemetry import metrics
from tests import synthetic
from tests.conftest import NodeProcess, start_node
from tests.portal import patient_rig
from tests.scu import dataset_bytes, send

PATIENT_ID = "METRICS-PID-4711"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
ON = "metrics_enabled: true"


def _get(node: NodeProcess, headers: dict[str, str] | None = None) -> tuple[int, str, str]:
    req = urllib.request.Request(f"http://127.0.0.1:{node.web_port}/metrics", headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as rsp:
            return rsp.status, rsp.headers["Content-Type"], rsp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read().decode()


def _samples(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def _scrape(node: NodeProcess) -> tuple[str, Samples]:
    status, kind, body = _get(node)
    assert status == 200, body
    assert kind.startswith("text/plain; version=0.0.4")
    return body, _samples(body)


def _instances(n: int, out: Path, seed: int = 0) -> list[Path]:
    return synthetic.make_small_instances(
        out, n=n, n_series=1, rows=8, cols=8, seed=seed, patient_id=PATIENT_ID
    )


def test_a_push_a_refusal_and_a_request_are_counted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    node = start_node(
        tmp_path,
        extra_scp="allowed_calling_aes: [ECHOSCU, PYSCU]",
        extra_portal=ON,
    )
    try:
        files = _instances(5, tmp_path / "in")
        assert send(node.port, files) == [0] * 5
        with pytest.raises(ConnectionError):
            send(node.port, files[:1], calling="STRANGER")
        assert main([*_CREATE, "--config", str(node.config)]) == 0
        capsys.readouterr()
        body, samples = _scrape(node)
        forwarded = _get(node, {"X-Forwarded-For": "127.0.0.1"})
        proxied = _get(node, {"Forwarded": "for=127.0.0.1"})
    finally:
        node.stop()

    assert _value(samples, "courier_instances_received_total", syntax="explicit_le") == 5
    assert _value(samples, "courier_instances_received_total", syntax="encapsulated") == 0
    received = _value(samples, "courier_received_bytes_total", syntax="explicit_le")
    datasets = sum(len(dataset_bytes(f)) for f in files)
    assert datasets < received < datasets + 5 * 512  # plus each file's meta group
    refused = "courier_associations_refused_total"
    assert _value(samples, refused, reason="calling_ae_not_recognized") == 1
    assert _value(samples, refused, reason="called_ae_not_recognized") == 0
    assert _value(samples, "courier_requests", state="pending") == 1
    assert _value(samples, "courier_requests", state="ready") == 0
    studies = sum(_value(samples, "courier_studies", state=s) for s in ("receiving", "stable"))
    assert studies == 1
    assert _value(samples, "courier_outbox_messages", state="queued") == 0
    assert _value(samples, "courier_package_build_seconds_count") == 0
    _conventional(body)
    assert forwarded[0] == 403 and proxied[0] == 403


_CREATE = [
    "request",
    "create",
    "--patient-id",
    "MRN-METRICS-1",
    "--patient-name",
    "Metrics^Patient",
    "--birth-date",
    "19700131",
    "--email",
    "patient@example.org",
    "--second-channel",
    "sms:+447911123456",
    "--accession",
    "NOT-SENT-1",
]


def _conventional(body: str) -> None:
    """Prometheus naming: snake_case with our prefix, _total on counters, base units,
    help on every family, and no patient data anywhere."""
    families = list(text_string_to_metric_families(body))
    ours = [f for f in families if f.name.startswith("courier_")]
    assert len(ours) >= 12
    for f in ours:
        assert re.fullmatch(r"courier_[a-z][a-z0-9_]*[a-z0-9]", f.name), f.name
        assert f.documentation, f.name
        assert f.type in ("counter", "gauge", "histogram"), f.name
        assert not f.name.endswith("_total")  # the parser strips it from counters
        for s in f.samples:
            assert all(re.fullmatch(r"[a-z_]+", k) for k in s.labels), s
            if f.type == "counter":
                assert s.name == f.name + "_total", s.name
        if "seconds" in f.name or "bytes" in f.name:
            assert f.name.endswith(("_seconds", "_bytes")), f.name
    for secret in (PATIENT_ID, synthetic.PATIENT_NAME, "MRN-METRICS-1", "Metrics^Patient"):
        assert secret not in body


def _received_per_process(folder: Path) -> dict[int, float]:
    """Instances counted by each process, from its own value file."""
    out = {}
    for path in folder.glob("counter_*.db"):
        pid = int(path.stem.removeprefix("counter_"))
        total = 0.0
        for family in MultiProcessCollector.merge([str(path)]):
            if family.name == "courier_instances_received":
                total += sum(s.value for s in family.samples if s.name.endswith("_total"))
        out[pid] = total
    return out


def test_two_receiving_processes_are_summed(tmp_path: Path) -> None:
    node = start_node(tmp_path, extra_scp="workers: 2", extra_portal=ON)
    folder = node.data_dir / "metrics"
    try:
        sent = 0
        files = _instances(40, tmp_path / "in")
        # The kernel spreads associations over the two listeners (SO_REUSEPORT, by the
        # client's port): one instance per association until both have counted some.
        for f in files:
            assert send(node.port, [f]) == [0]
            sent += 1
            if sum(1 for n in _received_per_process(folder).values() if n > 0) >= 2:
                break
        per_process = _received_per_process(folder)
        _, samples = _scrape(node)
    finally:
        node.stop()
    busy = [pid for pid, n in per_process.items() if n > 0]
    assert len(busy) == 2 and node.proc.pid not in busy, per_process
    assert sum(per_process.values()) == sent
    assert _value(samples, "courier_instances_received_total", syntax="explicit_le") == sent


def test_metrics_are_absent_unless_enabled(tmp_path: Path) -> None:
    node = start_node(tmp_path)
    try:
        status, _, _ = _get(node)
    finally:
        node.stop()
    assert status == 404


@pytest.fixture
def sqlite(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    """A migrated SQLite index (the address checks do not depend on the database)."""
    engine = make_engine(f"sqlite:///{tmp_path / 'index.db'}")
    migrate(engine)
    yield make_sessions(engine)
    engine.dispose()


@pytest.mark.parametrize(
    ("allow", "client", "headers", "status"),
    [
        (None, "127.0.0.1", {}, 404),
        (["127.0.0.1", "::1"], "127.0.0.1", {}, 200),
        (["127.0.0.1", "::1"], "::1", {}, 200),
        (["127.0.0.1", "::1"], "192.0.2.7", {}, 403),
        (["192.0.2.0/24"], "192.0.2.7", {}, 200),
        (["192.0.2.0/24"], "127.0.0.1", {}, 403),
        (["127.0.0.1"], "127.0.0.1", {"X-Forwarded-For": "127.0.0.1"}, 403),
        (["127.0.0.1"], "127.0.0.1", {"X-Real-IP": "127.0.0.1"}, 403),
        (["127.0.0.1"], "testclient", {}, 403),  # not an address at all
    ],
)
def test_who_may_read_the_metrics(
    sqlite: sessionmaker[Session],
    allow: list[str] | None,
    client: str,
    headers: dict[str, str],
    status: int,
) -> None:
    app = create_app(sqlite, [], metrics_allow=allow)
    with TestClient(app, client=(client, 50000)) as http:
        rsp = http.get("/metrics", headers=headers)
    assert rsp.status_code == status
    if status == 200:
        assert rsp.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        assert "courier_requests{state=" in rsp.text
        assert "courier_instances_received_total" in rsp.text


def test_label_values_come_from_fixed_sets() -> None:
    metrics.configure(None)
    metrics.instance_answered(0, "1.2.840.10008.1.2.4.50", 100)  # JPEG baseline
    metrics.instance_answered(0xA700, "1.2.840.10008.1.2.1", 100)
    metrics.association_refused(1, 1, 3)
    metrics.association_refused(1, 9, 9)  # not in PS3.8: "other", not the raw numbers
    metrics.association_dropped("Doe^Jane")  # never a label value
    metrics.staff_login("MRN123")
    metrics.code_checked(right=False)
    metrics.link_locked()
    metrics.package_built(1.5)
    from prometheus_client import generate_latest

    samples = _samples(generate_latest(metrics.scrape_registry()).decode())
    assert _value(samples, "courier_instances_received_total", syntax="encapsulated") == 1
    assert _value(samples, "courier_received_bytes_total", syntax="encapsulated") == 100
    assert _value(samples, "courier_instances_refused_total", status="0xA700") == 1
    refused = "courier_associations_refused_total"
    assert _value(samples, refused, reason="calling_ae_not_recognized") == 1
    assert _value(samples, refused, reason="other") == 1
    assert _value(samples, "courier_associations_dropped_total", reason="other") == 1
    assert _value(samples, "courier_staff_logins_total", outcome="other") == 1
    assert _value(samples, "courier_portal_code_checks_total", result="wrong") == 1
    assert _value(samples, "courier_portal_lockouts_total") == 1
    assert _value(samples, "courier_package_build_seconds_count") == 1
    assert not any("Doe" in v or "MRN" in v for _, labels in samples for _, v in labels)


def _local_samples() -> Samples:
    from prometheus_client import generate_latest

    return _samples(generate_latest(metrics.scrape_registry()).decode())


# The patient pages' rig (tests/portal/patient_rig.py), used by name.
rig = patient_rig.rig
built_package = patient_rig.built_package


def test_code_checks_and_a_lockout_are_counted(rig: patient_rig.Rig) -> None:
    metrics.configure(None)  # this process's counters, from zero
    values = {**rig.ctx.delivery.model_dump(), "code_daily_failures_lock": 5}
    rig.ctx.delivery = DeliverySettings.model_validate(values)
    p = rig.patient()
    patient_rig.sign_in(rig, rig.client(), p.token)
    c = rig.client()
    c.get(f"/d/{p.token}")
    patient_rig.post(c, "/access/code")
    for _ in range(4):
        assert patient_rig.post(c, "/access/verify", code="999999").status_code == 400
    assert patient_rig.post(c, "/access/verify", code="999999").status_code == 404  # locked
    samples = _local_samples()
    assert _value(samples, "courier_portal_code_checks_total", result="right") == 1
    assert _value(samples, "courier_portal_code_checks_total", result="wrong") == 5
    assert _value(samples, "courier_portal_lockouts_total") == 1
