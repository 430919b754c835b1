"""Which offsets may be committed when messages of one partition finish out of order."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiokafka import TopicPartition


@dataclass
class _PartitionState:
    in_flight: set[int] = field(default_factory=set)
    next_offset: int | None = None  # one past the highest offset seen
    committed: int | None = None


class OffsetTracker:
    """The commit point of a partition is its lowest unfinished offset (or one past the last).

    ``begin`` hands back the partition's state of the current assignment: work that started
    before a rebalance finishes on that old state and cannot move the commit point of the
    partition after it was assigned again.
    """

    def __init__(self) -> None:
        self._parts: dict[TopicPartition, _PartitionState] = {}

    def begin(self, tp: TopicPartition, offset: int) -> _PartitionState:
        state = self.state(tp)
        self.begin_in(state, offset)
        return state

    def state(self, tp: TopicPartition) -> _PartitionState:
        """The partition's state of the current assignment, for ``begin_in``."""
        state = self._parts.get(tp)
        if state is None:
            state = self._parts[tp] = _PartitionState()
        return state

    @staticmethod
    def begin_in(state: _PartitionState, offset: int) -> None:
        """``begin`` with the partition's state in hand (messages of a fetch, partition by
        partition)."""
        state.in_flight.add(offset)
        if state.next_offset is None or offset >= state.next_offset:
            state.next_offset = offset + 1

    @staticmethod
    def done(state: _PartitionState, offset: int) -> None:
        state.in_flight.discard(offset)

    @staticmethod
    def is_done(state: _PartitionState, offset: int) -> bool:
        return offset not in state.in_flight

    def commit_point(self, tp: TopicPartition) -> int | None:
        state = self._parts.get(tp)
        if state is None or state.next_offset is None:
            return None
        return min(state.in_flight) if state.in_flight else state.next_offset

    def pending_commits(self, only: set[TopicPartition] | None = None) -> dict[TopicPartition, int]:
        """Commit points that moved since they were last committed."""
        out = {}
        for tp, state in self._parts.items():
            if only is not None and tp not in only:
                continue
            point = self.commit_point(tp)
            if point is not None and point != state.committed:
                out[tp] = point
        return out

    def mark_committed(self, offsets: dict[TopicPartition, int]) -> None:
        for tp, offset in offsets.items():
            if tp in self._parts:
                self._parts[tp].committed = offset

    def forget(self, partitions: set[TopicPartition]) -> None:
        for tp in partitions:
            self._parts.pop(tp, None)

    @property
    def in_flight(self) -> int:
        return sum(len(s.in_flight) for s in self._parts.values())
