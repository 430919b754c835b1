"""A circuit breaker: after N consecutive failures, stop calling a dependency for a while.

A dependency that is down costs every investigation its full timeout and retries; the breaker
turns that into an immediate "circuit open" until the cool-down has passed. Then one trial
call (half-open) decides: success closes the circuit, failure opens it for another cool-down.
The state is per process on purpose: each replica learns about an outage on its own, with no
shared state that could itself fail.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from enum import StrEnum


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitOpenError(Exception):
    """Raised instead of calling a dependency whose circuit is open."""

    def __init__(self, name: str, retry_in: float) -> None:
        super().__init__(f"circuit {name or 'breaker'} open; next trial in {retry_in:.1f}s")
        self.name = name
        self.retry_in = retry_in


class CircuitBreaker:
    """Thread-safe, so the event loop and engine threads may share one."""

    def __init__(
        self,
        failure_threshold: int = 5,
        reset_seconds: float = 30.0,
        *,
        name: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be >= 1")
        self.failure_threshold = failure_threshold
        self.reset_seconds = reset_seconds
        self.name = name
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_started: float | None = None

    @property
    def state(self) -> BreakerState:
        with self._lock:
            return self._state()

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def _state(self) -> BreakerState:
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self._clock() - self._opened_at < self.reset_seconds:
            return BreakerState.OPEN
        return BreakerState.HALF_OPEN

    def retry_in(self) -> float:
        with self._lock:
            if self._opened_at is None:
                return 0.0
            return max(0.0, self.reset_seconds - (self._clock() - self._opened_at))

    def allow(self) -> bool:
        """Whether a call may go out now; in half-open, only one trial at a time."""
        with self._lock:
            state = self._state()
            if state is BreakerState.CLOSED:
                return True
            if state is BreakerState.OPEN:
                return False
            now = self._clock()
            # A trial whose caller vanished (cancelled) must not block the circuit forever.
            if self._trial_started is not None and now - self._trial_started < self.reset_seconds:
                return False
            self._trial_started = now
            return True

    def check(self) -> None:
        """``allow()`` that raises ``CircuitOpenError`` instead of returning False."""
        if not self.allow():
            raise CircuitOpenError(self.name, self.retry_in())

    def record_success(self) -> None:
        with self._lock:
            self._failures = 0
            self._opened_at = None
            self._trial_started = None

    def record_failure(self) -> None:
        with self._lock:
            self._failures += 1
            self._trial_started = None
            if self._opened_at is not None or self._failures >= self.failure_threshold:
                # A failed trial (half-open) re-opens for a full cool-down.
                self._opened_at = self._clock()

    def reset(self) -> None:
        self.record_success()
