"""Commit points when messages of one partition finish out of order."""

from aiokafka import TopicPartition

from holmes_stream.consumers.offsets import OffsetTracker

TP = TopicPartition("alerts", 0)


def test_commit_point_is_the_lowest_unfinished_offset() -> None:
    tracker = OffsetTracker()
    states = {o: tracker.begin(TP, o) for o in (10, 11, 12)}
    tracker.done(states[11], 11)
    tracker.done(states[12], 12)
    assert tracker.pending_commits() == {TP: 10}
    tracker.done(states[10], 10)
    assert tracker.pending_commits() == {TP: 13}
    tracker.mark_committed({TP: 13})
    assert tracker.pending_commits() == {}


def test_work_from_before_a_rebalance_cannot_move_the_new_commit_point() -> None:
    tracker = OffsetTracker()
    old = tracker.begin(TP, 5)
    tracker.forget({TP})
    new = tracker.begin(TP, 5)  # redelivered after the partition came back
    tracker.done(old, 5)
    assert tracker.commit_point(TP) == 5
    tracker.done(new, 5)
    assert tracker.commit_point(TP) == 6


def test_partitions_are_independent() -> None:
    tracker = OffsetTracker()
    other = TopicPartition("alerts", 1)
    a = tracker.begin(TP, 0)
    tracker.begin(other, 7)
    tracker.done(a, 0)
    assert tracker.pending_commits() == {TP: 1, other: 7}
    assert tracker.pending_commits(only={other}) == {other: 7}
