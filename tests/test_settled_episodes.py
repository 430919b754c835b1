"""The worker's memory of finished episodes: bounded, oldest out first, never past expiry."""

from __future__ import annotations

import time

import pytest

from holmes_stream.service import SettledEpisodes


def test_beyond_its_size_the_least_recently_remembered_go_first() -> None:
    settled = SettledEpisodes(size=3)
    for i in ("a", "b", "c"):
        settled.remember(i, 60_000, None)
    settled.remember("a", 60_000, None)  # remembered again: now the newest
    settled.remember("d", 60_000, None)
    assert len(settled) == 3
    assert not settled.lookup("b", resolved=False)
    assert all(settled.lookup(i, resolved=False) for i in ("a", "c", "d"))


def test_many_times_its_size_keeps_exactly_the_newest() -> None:
    settled = SettledEpisodes(size=1000)
    for i in range(50_000):
        settled.remember(f"id-{i}", 60_000, None)
    assert len(settled) == 1000
    assert settled.lookup("id-49000", resolved=False)
    assert not settled.lookup("id-48999", resolved=False)


def test_an_entry_lapses_with_its_record_and_its_resolution_with_its_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settled = SettledEpisodes()
    now = time.monotonic()
    monkeypatch.setattr(time, "monotonic", lambda: now)
    settled.remember("x", 10_000, 5_000)
    settled.remember("gone", -2, None)  # its key no longer exists: nothing to remember
    assert settled.lookup("x", resolved=True)
    assert not settled.lookup("gone", resolved=False)
    monkeypatch.setattr(time, "monotonic", lambda: now + 6)
    assert settled.lookup("x", resolved=False)
    assert not settled.lookup("x", resolved=True)
    monkeypatch.setattr(time, "monotonic", lambda: now + 11)
    assert not settled.lookup("x", resolved=False)
    assert len(settled) == 0
