"""Refused adapter versions, retried with exponential backoff.

A version that fails to download, verify or load is refused: not served, not retried on
every request or poll. But a failure may be transient (the artifact store was down, the
disk full for a moment), so a refusal only lasts a while: `base_s` after the first
failure, doubling with each further one up to `max_s`. Once it has run out, the next
request or registry check tries the version again; success forgets the refusal.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Refusal:
    """Why a version is refused, how often it failed, and when it may be tried again."""

    reason: str  # download, checksum or load
    detail: str
    failures: int
    retry_at: float  # on the refusals' clock

    def describe(self, now: float) -> str:
        wait_s = max(0.0, self.retry_at - now)
        return (f"{self.reason}: {self.detail} ({self.failures} failed "
                f"attempt{'s' if self.failures > 1 else ''}; next try in {wait_s:.0f} s)")


class Refusals:
    """Versions refused for now, thread-safe; see the module docstring."""

    def __init__(self, base_s: float = 30.0, max_s: float = 1800.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if base_s <= 0 or max_s < base_s:
            raise ValueError(f"backoff needs 0 < base_s <= max_s (got {base_s}, {max_s})")
        self.base_s = base_s
        self.max_s = max_s
        self.clock = clock
        self._lock = threading.Lock()
        self._by_version: dict[str, Refusal] = {}

    def refuse(self, version: str, reason: str, detail: str) -> Refusal:
        """Record one more failure of `version`: refused for the next backoff interval."""
        with self._lock:
            failures = self._by_version[version].failures + 1 \
                if version in self._by_version else 1
            delay = min(self.base_s * 2 ** (failures - 1), self.max_s)
            refusal = Refusal(reason, detail, failures, self.clock() + delay)
            self._by_version[version] = refusal
            return refusal

    def in_force(self, version: str) -> str | None:
        """Why `version` may not be tried now; None when it may (never refused, or its
        backoff has run out)."""
        with self._lock:
            refusal = self._by_version.get(version)
            now = self.clock()
            if refusal is None or now >= refusal.retry_at:
                return None
            return refusal.describe(now)

    def forget(self, version: str) -> None:
        """The version loaded: its earlier failures no longer count."""
        with self._lock:
            self._by_version.pop(version, None)

    def snapshot(self) -> dict[str, str]:
        """Every version with failures on record -> what happened (retry time included)."""
        with self._lock:
            now = self.clock()
            return {version: refusal.describe(now)
                    for version, refusal in self._by_version.items()}
