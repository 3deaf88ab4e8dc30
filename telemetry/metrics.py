"""The node's Prometheus counters, shared by every process that receives or serves.

Producers call one function per event (:func:`instance_answered`,
:func:`association_refused`, :func:`association_dropped`, :func:`package_built`,
:func:`code_checked`, :func:`link_locked`, :func:`staff_login`). Each maps what it is
given onto a fixed set of label values chosen here, so a peer can neither put patient
data in a label nor make the number of series grow.

**More than one process.** With ``scp.workers > 1`` the C-STOREs arrive in child
processes, while ``/metrics`` is served by the parent. :func:`configure` (called by the
node in the parent *and* in every receiver, before the first count) switches
prometheus_client to its multiprocess mode: every process writes its values to its own
memory-mapped ``<directory>/<type>_<pid>.db`` file, the environment variable
``PROMETHEUS_MULTIPROC_DIR`` carries the folder to the spawned receivers, and a scrape
(:func:`scrape_registry`) reads and sums every file with ``MultiProcessCollector``. The
folder is cleared at start (the parent, before any receiver starts), so counts begin at
zero with each ``courier serve``, as Prometheus expects of a restarted target.

Without :func:`configure` (tests, one-shot commands) the counters live in this process
only. Metric names follow Prometheus conventions: ``courier_`` prefix, base units
(``_seconds``, ``_bytes``), ``_total`` on counters (added by prometheus_client).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, values
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

ENV = "PROMETHEUS_MULTIPROC_DIR"

# Transfer syntax classes: the native encodings by name, every other (encapsulated,
# compressed) syntax as one class. Five series at most.
_NATIVE = {
    "1.2.840.10008.1.2": "implicit_le",
    "1.2.840.10008.1.2.1": "explicit_le",
    "1.2.840.10008.1.2.2": "explicit_be",
    "1.2.840.10008.1.2.1.99": "deflated",
}
SYNTAX_CLASSES = (*_NATIVE.values(), "encapsulated")

# A-ASSOCIATE-RJ (source, reason) → label, PS3.8 Table 9-21 (result is not part of it:
# each (source, reason) is either permanent or transient in practice).
_REJECT_REASONS = {
    (0x01, 0x01): "no_reason_given",
    (0x01, 0x02): "application_context_not_supported",
    (0x01, 0x03): "calling_ae_not_recognized",
    (0x01, 0x07): "called_ae_not_recognized",
    (0x02, 0x01): "no_reason_given",
    (0x02, 0x02): "protocol_version_not_supported",
    (0x03, 0x01): "temporary_congestion",
    (0x03, 0x02): "local_limit_exceeded",
}
REFUSAL_REASONS = (
    "calling_ae_not_recognized",
    "called_ae_not_recognized",
    "local_limit_exceeded",
)
DROP_REASONS = ("pdu_too_large", "pdu_timeout", "aborted", "per_host_limit")
# The failure statuses Courier's C-STORE answers (scp.ingest.Status, the rules' 0x0124).
STORE_FAILURES = (0xA700, 0xA701, 0xA900, 0xC000, 0xC001, 0xC002, 0x0110, 0x0124)
CODE_RESULTS = ("right", "wrong")
LOGIN_OUTCOMES = ("ok", "refused", "rate_limited")

# Package builds: from a few small instances (well under a second) to a 2 GB study
# (~20 s on the reference machine) on a busy disk.
BUILD_BUCKETS = (0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0)


class _Metrics:
    """The metric objects of this process (built after :func:`configure`)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.instances = Counter(
            "courier_instances_received",
            "Instances stored and answered 0x0000, by transfer syntax class.",
            ["syntax"],
            registry=r,
        )
        self.bytes = Counter(
            "courier_received_bytes",
            "Bytes stored: each dataset as received plus its file meta, by syntax class.",
            ["syntax"],
            registry=r,
        )
        self.store_failures = Counter(
            "courier_instances_refused",
            "C-STOREs answered with a failure status (hex, e.g. 0xA700).",
            ["status"],
            registry=r,
        )
        self.refused = Counter(
            "courier_associations_refused",
            "Associations rejected, by PS3.8 A-ASSOCIATE-RJ reason.",
            ["reason"],
            registry=r,
        )
        self.dropped = Counter(
            "courier_associations_dropped",
            "Associations cut short: a PDU over the limit, a PDU too slow, an abort, or a "
            "connection over scp.max_connections_per_host.",
            ["reason"],
            registry=r,
        )
        self.build = Histogram(
            "courier_package_build_seconds",
            "Time to build one request's package (ZIP, DICOMDIR, previews).",
            buckets=BUILD_BUCKETS,
            registry=r,
        )
        self.codes = Counter(
            "courier_portal_code_checks",
            "Codes typed on the portal, right or wrong.",
            ["result"],
            registry=r,
        )
        self.lockouts = Counter(
            "courier_portal_lockouts",
            "Links locked after too many wrong codes in a day.",
            registry=r,
        )
        self.logins = Counter(
            "courier_staff_logins",
            "Staff sign-ins: ok, refused (wrong user or password) or rate_limited.",
            ["outcome"],
            registry=r,
        )
        # Every series from the start (at 0), so rates and alerts see the first event.
        # The received series are kept by transfer syntax UID as they come: a C-STORE
        # then costs two increments, not two label look-ups under the registry's lock.
        self.received: dict[str, tuple[Any, Any]] = {}
        for syntax in SYNTAX_CLASSES:
            self.instances.labels(syntax)
            self.bytes.labels(syntax)
        for status in STORE_FAILURES:
            self.store_failures.labels(f"0x{status:04X}")
        for reason in REFUSAL_REASONS:
            self.refused.labels(reason)
        for reason in DROP_REASONS:
            self.dropped.labels(reason)
        for result in CODE_RESULTS:
            self.codes.labels(result)
        for outcome in LOGIN_OUTCOMES:
            self.logins.labels(outcome)


_lock = threading.Lock()
_local = CollectorRegistry(auto_describe=True)
_metrics: _Metrics | None = None
_directory: Path | None = None


def configure(directory: Path | None, *, clear: bool = False) -> None:
    """Where this process's counters live: ``directory`` shares them with the other
    processes of the node (multiprocess mode, see the module docstring); None keeps them
    in this process. ``clear`` deletes earlier runs' files first (the parent, at start,
    before any receiver is started). Call before the first count."""
    global _metrics, _directory, _local
    with _lock:
        if directory is not None:
            # Owner-only, as all of data_dir (the parent too: metrics/<node.name>).
            directory.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            directory.mkdir(exist_ok=True, mode=0o700)
            if clear:
                for old in directory.glob("*.db"):
                    old.unlink(missing_ok=True)
            os.environ[ENV] = str(directory)
        else:
            os.environ.pop(ENV, None)
        # prometheus_client picks its value class when it is imported; pick again now
        # that the environment says where (or whether) values are shared.
        values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
        _directory = directory
        _local = CollectorRegistry(auto_describe=True)
        _metrics = _Metrics(_local)
        if directory is not None:
            _reserve(directory)


def _reserve(directory: Path) -> None:
    """Give this process's value files real disk blocks now.

    prometheus_client writes through a memory map of a sparse file: on a full disk, the
    first write to a page without a block would kill the process with SIGBUS, and a
    full disk is exactly when the receiver must keep answering (0xA700). The files are
    1 MiB each, far more than our fixed label sets need, so they never grow later.
    """
    for path in directory.glob(f"*_{os.getpid()}.db"):
        fd = os.open(path, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
        except OSError:
            pass  # no room even now, or a filesystem without fallocate: best effort
        finally:
            os.close(fd)


def _m() -> _Metrics:
    global _metrics
    m = _metrics
    if m is None:
        with _lock:
            if _metrics is None:
                _metrics = _Metrics(_local)
            m = _metrics
    return m


def syntax_class(transfer_syntax: str) -> str:
    """The label of a transfer syntax UID (see :data:`SYNTAX_CLASSES`)."""
    return _NATIVE.get(transfer_syntax.strip(), "encapsulated")


def instance_answered(status: int, transfer_syntax: str, size_bytes: int) -> None:
    """A C-STORE was answered ``status``: counted as received (with its bytes) when
    0x0000, else as refused by its status code."""
    m = _m()
    if status == 0:
        series = m.received.get(transfer_syntax)
        if series is None:
            label = syntax_class(transfer_syntax)
            series = (m.instances.labels(label), m.bytes.labels(label))
            if len(m.received) < 256:  # UIDs a peer sends: bounded all the same
                m.received[transfer_syntax] = series
        series[0].inc()
        series[1].inc(max(0, size_bytes))
    else:
        m.store_failures.labels(f"0x{status & 0xFFFF:04X}").inc()


def association_refused(result: int, source: int, reason: int) -> None:
    """An A-ASSOCIATE-RJ with these PS3.8 values was sent."""
    _m().refused.labels(_REJECT_REASONS.get((source, reason), "other")).inc()


def association_dropped(reason: str) -> None:
    """An association was cut short; ``reason`` is one of :data:`DROP_REASONS`."""
    _m().dropped.labels(reason if reason in DROP_REASONS else "other").inc()


def package_built(seconds: float) -> None:
    """One package was built in ``seconds``."""
    _m().build.observe(max(0.0, seconds))


def code_checked(*, right: bool) -> None:
    """A code typed on the portal was checked."""
    _m().codes.labels("right" if right else "wrong").inc()


def link_locked() -> None:
    """A link was locked after too many wrong codes."""
    _m().lockouts.inc()


def staff_login(outcome: str) -> None:
    """A staff sign-in; ``outcome`` is one of :data:`LOGIN_OUTCOMES`."""
    _m().logins.labels(outcome if outcome in LOGIN_OUTCOMES else "other").inc()


class _LocalCollector:
    """This process's counters, for a scrape without multiprocess mode."""

    def collect(self) -> Iterator[Metric]:
        _m()
        yield from _local.collect()


def scrape_registry(extra: Iterable[object] = ()) -> CollectorRegistry:
    """A fresh registry for one scrape: every process's counters (summed) plus the
    collectors in ``extra`` (objects with ``collect()``, e.g. gauges read from the
    database at scrape time)."""
    registry = CollectorRegistry(auto_describe=False)
    if _directory is not None:
        MultiProcessCollector(registry, path=str(_directory))  # type: ignore[no-untyped-call]
    else:
        registry.register(_LocalCollector())
    for collector in extra:
        registry.register(collector)  # type: ignore[arg-type]
    return registry
