"""holmes-stream itself as a child process: for `dev up`, the demo, tests and benchmarks."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import httpx

from holmes_stream.devstack.process import ManagedProcess, read_pid

_READY_LINE = b'"event": "worker ready"'


def service_env(endpoints: dict[str, str], **overrides: str) -> dict[str, str]:
    """The environment of a service process that uses the local stack's endpoints."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOLMES_STREAM_")}
    env.update(
        HOLMES_STREAM_KAFKA__BOOTSTRAP_SERVERS=endpoints["kafka_bootstrap_servers"],
        HOLMES_STREAM_REDIS__URL=endpoints["redis_url"],
        HOLMES_STREAM_LLM__API_BASE=endpoints["llm_api_base"],
        HOLMES_STREAM_LLM__MODEL="openai/scripted",
        HOLMES_STREAM_LLM__API_KEY="dummy",
        LITELLM_LOCAL_MODEL_COST_MAP="True",
        # The local stack is for development: no credentials (the service logs a warning).
        HOLMES_STREAM_AUTH__MODE="disabled",
    )
    env.update(overrides)
    return env


class ServiceProcess(ManagedProcess):
    """``holmes-stream worker|api|run`` started detached, with a pid file and a log file."""

    stop_timeout = 60.0
    _marker = "holmes_stream"

    def __init__(self, role: str, env: dict[str, str], run_dir: Path, name: str | None = None):
        super().__init__()
        self.role = role
        self.env = env
        self.name = name or role
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_file = self.run_dir / f"{self.name}.log"

    @property
    def pid_file(self) -> Path:
        return self.run_dir / f"{self.name}.pid"

    @property
    def api_url(self) -> str:
        host = self.env.get("HOLMES_STREAM_API__HOST", "127.0.0.1")
        return f"http://{host}:{self.env.get('HOLMES_STREAM_API__PORT', '18000')}"

    @property
    def pid(self) -> int | None:
        return read_pid(self.pid_file)

    def start(self, timeout: float = 180) -> None:
        if self.running():
            return
        offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        self._launch(
            [sys.executable, "-m", "holmes_stream.cli", self.role],
            self.log_file,
            ready=lambda: self._ready(offset),
            what=f"holmes-stream {self.name}",
            timeout=timeout,
            interval=0.2,
            env=self.env,
        )

    def _ready(self, log_offset: int) -> bool:
        if self.role == "worker":
            with open(self.log_file, "rb") as log:
                log.seek(log_offset)
                return _READY_LINE in log.read()
        try:
            return httpx.get(self.api_url + "/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_exit(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                return True
            if self._proc is None and not self.running():
                return True
            time.sleep(0.1)
        return False
