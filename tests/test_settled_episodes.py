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


def test_records_stored_together_are_remembered_as_one_by_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = time.monotonic()
    monkeypatch.setattr(time, "monotonic", lambda: now)
    stored = [("a", False), ("b", True), ("c", False), ("a", True)]  # "a" again: newest
    together, one_by_one = SettledEpisodes(size=2), SettledEpisodes(size=2)
    together.remember("old", 60_000, None)
    one_by_one.remember("old", 60_000, None)
    together.remember_stored(stored, 10_000)
    for i, resolved in stored:
        one_by_one.remember(i, 10_000, 10_000 if resolved else None)
    assert together._entries == one_by_one._entries
    assert list(together._entries) == ["c", "a"]
    gone = SettledEpisodes()
    gone.remember_stored([("x", False)], -2)  # keys gone already: nothing to remember
    assert len(gone) == 0
