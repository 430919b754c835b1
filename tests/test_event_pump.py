"""Events from the agent loop's thread reach the service in order, and none after close()."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from holmes_stream.service import EventPump


class _Service:
    _engine_redacts = True

    def __init__(self) -> None:
        self.written: list[str] = []

    def write_event(self, record: Any, type_: str, payload: dict[str, Any], **_: Any) -> Any:
        self.written.append(type_)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


async def test_events_in_order_then_none_after_close() -> None:
    service = _Service()
    pump = EventPump(service, record=object())  # type: ignore[arg-type]

    def agent_loop() -> None:
        for i in range(50):
            pump.emit_threadsafe(f"step-{i}", {})

    thread = threading.Thread(target=agent_loop)
    thread.start()
    await asyncio.to_thread(thread.join)
    await asyncio.sleep(0)  # the loop runs what the thread scheduled, in order
    await pump.close()
    assert service.written == [f"step-{i}" for i in range(50)]

    # A loop its attempt gave up on, one step late: the outcome written next stays the last.
    late = threading.Thread(target=pump.emit_threadsafe, args=("token_count", {}))
    late.start()
    await asyncio.to_thread(late.join)
    await asyncio.sleep(0)
    assert service.written[-1] == "step-49"
