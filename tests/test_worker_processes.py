"""``holmes-stream worker --processes N``: one consumer group, each process on CPUs of its own."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from holmes_stream import cli
from holmes_stream.devstack.service import ServiceProcess
from tests.conftest import ARTIFACTS, make_settings, settings_env
from tests.test_delivery import firing_alert, send, wait_for_records


@pytest.mark.parametrize(
    ("allowed", "processes", "expected"),
    [
        ({0, 1}, 2, [{0}, {1}]),
        ({2, 3, 6, 7}, 2, [{2, 3}, {6, 7}]),
        (set(range(8)), 3, [{0, 1, 2}, {3, 4, 5}, {6, 7}]),
        ({0, 1}, 3, None),  # fewer CPUs than processes: left to the kernel
        ({0, 1}, 1, None),
    ],
)
def test_each_process_gets_a_contiguous_share_of_the_cpus(
    monkeypatch: Any, allowed: set[int], processes: int, expected: list[set[int]] | None
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: allowed)
    assert cli.cpu_sets(processes) == expected


def _ready_pids(log_file: Path) -> list[int]:
    pids = []
    for line in log_file.read_text().splitlines():
        if '"worker ready"' in line:
            pids.append(json.loads(line[line.index("{") :])["pid"])
    return pids


def _allowed_cpus(pid: int) -> set[int]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Cpus_allowed_list:"):
            cpus: set[int] = set()
            for part in line.split(":", 1)[1].strip().split(","):
                low, _, high = part.partition("-")
                cpus.update(range(int(low), int(high or low) + 1))
            return cpus
    raise AssertionError(f"no Cpus_allowed_list for {pid}")


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
async def test_two_worker_processes_share_the_alerts_each_on_its_own_cpus(
    stack: Any, uid: str, producer: AIOKafkaProducer, scripted_llm_factory: Any
) -> None:
    llm = scripted_llm_factory()
    settings = make_settings(stack, uid, llm.api_base)
    env = settings_env(settings) | {"HOLMES_STREAM_WORKER__PROCESSES": "2"}
    worker = ServiceProcess("worker", env, ARTIFACTS / f"processes-{uid}")
    worker.start()
    try:
        deadline = time.monotonic() + 120
        while len(pids := _ready_pids(worker.log_file)) < 2:
            assert time.monotonic() < deadline, worker.log_file.read_text()[-3000:]
            await asyncio.sleep(0.2)
        assert [_allowed_cpus(pid) for pid in pids] in (
            cli.cpu_sets(2),
            list(reversed(cli.cpu_sets(2) or [])),
        )
        n = 12
        await send(producer, settings.kafka.alerts_topic, [firing_alert(uid, i) for i in range(n)])
        records = await wait_for_records(settings, n, timeout=120)
    finally:
        worker.stop()
    assert len(records) == n
    assert {r.status for r in records} == {"completed"}
