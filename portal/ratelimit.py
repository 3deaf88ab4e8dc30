"""Rate limits for the portal's forms: a sliding window per key (client address, link).

In memory, per process: enough for one node (limits are a brake on guessing and on
flooding a phone with codes; the hard limits — tries per code, codes per hour, the
daily lock — are counted in the database on the grant itself).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable


class RateLimiter:
    """``allow(key, limit, per_s)``: True while ``key`` made fewer than ``limit`` calls
    in the last ``per_s`` seconds (the call counts when allowed)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000):
        self._clock = clock
        self._hits: dict[str, deque[float]] = {}
        self._lock = threading.Lock()
        self._max_keys = max_keys

    def allow(self, key: str, limit: int, per_s: float) -> bool:
        now = self._clock()
        with self._lock:
            hits = self._hits.get(key)
            if hits is None:
                if len(self._hits) >= self._max_keys:
                    self._forget(now, per_s)
                hits = self._hits[key] = deque()
            while hits and hits[0] <= now - per_s:
                hits.popleft()
            if len(hits) >= limit:
                return False
            hits.append(now)
            return True

    def _forget(self, now: float, per_s: float) -> None:
        """Drop keys with no recent hit (bounded memory under a flood of addresses)."""
        for key in [k for k, h in self._hits.items() if not h or h[-1] <= now - per_s]:
            del self._hits[key]
        if len(self._hits) >= self._max_keys:
            self._hits.clear()
