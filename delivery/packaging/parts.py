"""Splitting a package into self-contained parts below a size limit.

Every part carries its own DICOMDIR, READMEs, MANIFEST.json and the previews of the series
it holds, so besides the instances themselves a part costs an overhead that
:func:`part_cost` estimates generously (ZIP headers, directory records and manifest lines
per instance; the preview and records per series; READMEs and the rest per part).

:func:`plan_parts` fills parts greedily in package order (study, series, instance) and
cuts between series where it can: a series that does not fit in what is left of the
current part starts a new one. The first part also carries the package's ``REPORT/``
files (``first_part_files``), counted like instances (their bytes and headers). A series
is cut between instances in two cases: it is larger than a whole part, or it is the
first series and the reports leave the first part less room than it needs (a part is
never closed empty, so it starts in part 1 and continues in part 2). A part holds at
least one instance, so a single instance larger than the limit gets a part of its own that
is larger than the limit, and a first part whose reports leave less room than its first
instance needs exceeds it too: the only cases where a part exceeds the limit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

#: ZIP local + central headers (with ZIP64 extras), DICOMDIR record, manifest line.
PER_INSTANCE_BYTES = 1024
#: SERIES/STUDY/PATIENT records and the manifest's series entry (plus the preview itself).
PER_SERIES_BYTES = 2048
#: Both READMEs (deflated), the manifest's header, DICOMDIR header, ZIP end records.
PER_PART_BYTES = 64 * 1024


@dataclass(frozen=True)
class Sized(Generic[T]):
    """An instance (any object) and the size of its file in bytes."""

    item: T
    size: int


@dataclass(frozen=True)
class SeriesGroup(Generic[T]):
    """The instances of one series in package order, and its preview's size (0: none)."""

    key: str
    instances: Sequence[Sized[T]]
    preview_bytes: int


def part_cost(instance_bytes: int, instances: int, series_preview_bytes: Sequence[int]) -> int:
    """Estimated ZIP size of a part with these contents (an upper bound, in bytes)."""
    return (
        PER_PART_BYTES
        + instance_bytes
        + instances * PER_INSTANCE_BYTES
        + sum(PER_SERIES_BYTES + p for p in series_preview_bytes)
    )


class _Planner(Generic[T]):
    def __init__(self, limit: int, first_part_bytes: int) -> None:
        self.limit = limit
        self.parts: list[list[Sized[T]]] = []
        self._current: list[Sized[T]] = []
        self._used = PER_PART_BYTES + first_part_bytes  # until the first part is closed

    def room(self) -> int:
        return self.limit - self._used

    def close(self) -> None:
        """End the current part; an empty one stays open (and keeps what it carries)."""
        if not self._current:
            return
        self.parts.append(self._current)
        self._current = []
        self._used = PER_PART_BYTES

    def open_series(self, preview_bytes: int) -> None:
        self._used += PER_SERIES_BYTES + preview_bytes

    def add(self, sized: Sized[T]) -> None:
        self._current.append(sized)
        self._used += sized.size + PER_INSTANCE_BYTES

    @property
    def empty(self) -> bool:
        return not self._current


def plan_parts(
    groups: Sequence[SeriesGroup[T]], limit: int | None, *, first_part_files: Sequence[int] = ()
) -> list[list[Sized[T]]]:
    """Cut the series in ``groups`` into parts of at most ``limit`` estimated bytes.

    ``first_part_files``: the sizes of the files the first part carries besides its
    instances (the ``REPORT/`` files), each counted with :data:`PER_INSTANCE_BYTES`.
    ``limit`` None: one part. Returns the parts in order, each a non-empty list of instances
    in package order; together they hold every instance exactly once.
    """
    everything = [s for g in groups for s in g.instances]
    if limit is None or not everything:
        return [everything] if everything else []
    extra = sum(size + PER_INSTANCE_BYTES for size in first_part_files)
    plan: _Planner[T] = _Planner(limit, extra)
    for group in groups:
        series_cost = PER_SERIES_BYTES + group.preview_bytes
        whole = series_cost + sum(s.size + PER_INSTANCE_BYTES for s in group.instances)
        if whole > plan.room() and whole <= limit - PER_PART_BYTES:
            plan.close()  # fits in a part of its own: do not cut it
        plan.open_series(group.preview_bytes)
        for sized in group.instances:
            if sized.size + PER_INSTANCE_BYTES > plan.room() and not plan.empty:
                # Reached for a series larger than a whole part, or for the first
                # series when the first part's reports leave it too little room.
                plan.close()
                plan.open_series(group.preview_bytes)
            plan.add(sized)
    plan.close()
    return plan.parts
