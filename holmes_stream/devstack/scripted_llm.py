"""A deterministic OpenAI-compatible chat-completions server for tests, demos and benchmarks.

The real HolmesGPT agent loop runs against it (litellm model ``openai/<name>``, api_base
``http://127.0.0.1:PORT/v1``). The script: the first turn after a user message calls one
offered tool; once a tool answered, the reply is a markdown analysis quoting the tool output.
Failures (latency, error statuses, outage, hangs) can be injected at start or at run time
through ``POST /_scripted/config``.

Run: ``python -m holmes_stream.devstack.scripted_llm --port 18080 [--latency S] [--fail-rate R]``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import random
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from litestar import Litestar, Request, Response, get, post

from holmes_stream.devstack.server import ServerProcess

EVIDENCE_CHARS = 1500
_JSON = "application/json"


# --------------------------------------------------------------------------------------------
# Configuration and counters
# --------------------------------------------------------------------------------------------


@dataclass
class ScriptConfig:
    model: str = "scripted"
    prefer_tools: list[str] = field(default_factory=lambda: ["investigation_history"])
    latency_seconds: float = 0.0
    fail_rate: float = 0.0
    fail_statuses: list[int] = field(default_factory=lambda: [500, 429])
    down: bool = False
    hang_seconds: float = 0.0
    seed: int = 0
    # When set, every chat-completions request body is appended to this file, one per line
    # (benchmarks compare what two clients sent; OpenAI clients send single-line JSON).
    record_file: str | None = None

    def updated(self, changes: dict[str, Any]) -> ScriptConfig:
        """A copy with ``changes`` applied; unknown keys or bad values raise ValueError."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = set(changes) - names
        if unknown:
            raise ValueError(f"unknown config keys: {sorted(unknown)}")
        new = dataclasses.replace(self, **changes)
        new.validate()
        return new

    def validate(self) -> None:
        if not 0.0 <= float(self.fail_rate) <= 1.0:
            raise ValueError("fail_rate must be within 0..1")
        if not self.fail_statuses or not all(400 <= int(s) <= 599 for s in self.fail_statuses):
            raise ValueError("fail_statuses must be a non-empty list of 4xx/5xx codes")
        if self.latency_seconds < 0 or self.hang_seconds < 0:
            raise ValueError("latency_seconds and hang_seconds must be >= 0")
        self.fail_statuses = [int(s) for s in self.fail_statuses]


class ScriptState:
    """Config, counters and the seeded failure sequence of one server."""

    def __init__(self, config: ScriptConfig) -> None:
        self.config = config
        self.reset()

    def reset(self) -> None:
        # Reseeding makes a run after reset repeat the same failure sequence.
        self.rng = random.Random(self.config.seed)
        self.requests = 0
        self.completions_ok = 0
        self.failures = 0
        self.by_status: Counter[int] = Counter()
        self.tool_call_turns = 0
        self.final_turns = 0
        self.seq = 0

    def configure(self, changes: dict[str, Any]) -> None:
        self.config = self.config.updated(changes)
        if "seed" in changes:
            self.rng = random.Random(self.config.seed)

    def stats(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "completions_ok": self.completions_ok,
            "failures": self.failures,
            "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "tool_call_turns": self.tool_call_turns,
            "final_turns": self.final_turns,
        }

    def injected_failure(self) -> int | None:
        """The status to fail this request with, or None to answer it."""
        cfg = self.config
        if cfg.down:
            return 503
        if cfg.fail_rate > 0 and self.rng.random() < cfg.fail_rate:
            return cfg.fail_statuses[self.failures % len(cfg.fail_statuses)]
        return None


# --------------------------------------------------------------------------------------------
# The script (pure functions)
# --------------------------------------------------------------------------------------------


def message_text(content: Any) -> str:
    """Text of an OpenAI message content: a string or a list of typed parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text", "") for p in content if isinstance(p, dict)]
        return "\n".join(p for p in parts if isinstance(p, str))
    return str(content)


def _last_user_index(messages: list[dict[str, Any]]) -> int:
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].get("role") == "user":
            return i
    return -1


def _user_texts(messages: list[dict[str, Any]]) -> list[str]:
    """User message texts, most recent first (a follow-up question may lack the alert)."""
    return [message_text(m.get("content")) for m in reversed(messages) if m.get("role") == "user"]


def _find_json_value(texts: list[str], key: str) -> Any:
    pattern = re.compile(
        r'"' + re.escape(key) + r'"\s*:\s*(?:"((?:[^"\\]|\\.)*)"|(-?\d+(?:\.\d+)?|true|false))'
    )
    for text in texts:
        m = pattern.search(text)
        if m is None:
            continue
        if m.group(1) is not None:
            try:
                return json.loads(f'"{m.group(1)}"')
            except ValueError:
                return m.group(1)
        return json.loads(m.group(2))
    return None


_TYPE_DEFAULTS: dict[str, Any] = {
    "string": "unknown",
    "integer": 0,
    "number": 0,
    "boolean": False,
    "array": [],
    "object": {},
}


def build_arguments(schema: dict[str, Any], texts: list[str]) -> dict[str, Any]:
    """Fill each schema property from ``"prop": "value"`` in the user text.

    Missing required properties get a harmless default ("unknown" for strings) so the
    tool call validates; missing optional ones are left out.
    """
    props = schema.get("properties") or {}
    required = set(schema.get("required") or [])
    args: dict[str, Any] = {}
    for name, spec in props.items():
        spec = spec if isinstance(spec, dict) else {}
        branches = [b for b in spec.get("anyOf") or [] if isinstance(b, dict)]
        if branches:  # strict schemas: {"anyOf": [{"type": "integer"}, {"type": "null"}]}
            ptype: Any = [b.get("type", "string") for b in branches]
        else:
            ptype = spec.get("type", "string")
        nullable = isinstance(ptype, list) and "null" in ptype
        if isinstance(ptype, list):  # e.g. ["string", "null"]
            ptype = next((t for t in ptype if t != "null"), "string")
        value = _find_json_value(texts, name)
        if value is not None:
            args[name] = str(value) if ptype == "string" else value
        elif name in required:
            # Strict schemas list optional parameters as required but nullable.
            args[name] = None if nullable else _TYPE_DEFAULTS.get(ptype, "unknown")
    return args


def choose_tool(tools: list[dict[str, Any]], prefer: list[str]) -> dict[str, Any]:
    """The most preferred offered tool (preference-list order), else the first offered."""
    by_name = {_tool_name(t): t for t in tools}
    for name in prefer:
        if name in by_name:
            return by_name[name]
    return tools[0]


def _tool_name(tool: dict[str, Any]) -> str:
    return str((tool.get("function") or {}).get("name") or tool.get("name") or "")


def _tool_results(messages: list[dict[str, Any]], start: int) -> list[tuple[str, str]]:
    """(tool name, content) of tool messages after ``start``, naming them via their call."""
    names: dict[str, str] = {}
    results: list[tuple[str, str]] = []
    for m in messages[start + 1 :]:
        for call in m.get("tool_calls") or []:
            names[call.get("id", "")] = (call.get("function") or {}).get("name", "")
        if m.get("role") == "tool":
            name = m.get("name") or names.get(m.get("tool_call_id", ""), "") or "tool"
            results.append((name, message_text(m.get("content"))))
    return results


def _previous_conclusion(messages: list[dict[str, Any]], before: int) -> str | None:
    for m in reversed(messages[:before]):
        if m.get("role") != "assistant" or m.get("tool_calls"):
            continue
        for line in message_text(m.get("content")).splitlines():
            if line.strip():
                return line.strip()
    return None


_ALERTNAME = re.compile(r'"?alertname"?\s*[:=]\s*"?([A-Za-z0-9_.:\-]+)')


def final_answer(messages: list[dict[str, Any]]) -> str:
    last_user = _last_user_index(messages)
    texts = _user_texts(messages)
    alertname = next((m.group(1) for t in texts if (m := _ALERTNAME.search(t))), None)
    lines = [f"## Analysis of {alertname or 'the alert'}", ""]
    results = _tool_results(messages, last_user)
    if results:
        lines.append(
            "The alert was investigated with the tools below; their output is the evidence "
            "for this conclusion."
        )
    else:
        lines.append("No tool output was available; this analysis rests on the alert alone.")
    previous = _previous_conclusion(messages, max(last_user, 0))
    if previous:
        lines += ["", f"Previously concluded: {previous}"]
    for name, content in results:
        lines += ["", f"### Evidence from {name}", "", "```", content[:EVIDENCE_CHARS], "```"]
    return "\n".join(lines) + "\n"


def script_reply(body: dict[str, Any], prefer_tools: list[str], seq: int) -> dict[str, Any]:
    """The assistant message for a chat-completions request body."""
    messages: list[dict[str, Any]] = body.get("messages") or []
    tools: list[dict[str, Any]] = body.get("tools") or []
    last_user = _last_user_index(messages)
    tool_answered = any(m.get("role") == "tool" for m in messages[last_user + 1 :])
    if tools and not tool_answered and body.get("tool_choice") != "none":
        tool = choose_tool(tools, prefer_tools)
        schema = (tool.get("function") or {}).get("parameters") or {}
        args = build_arguments(schema, _user_texts(messages))
        call = {
            "id": f"call_scripted_{seq}",
            "type": "function",
            "function": {"name": _tool_name(tool), "arguments": json.dumps(args)},
        }
        return {"role": "assistant", "content": None, "tool_calls": [call]}
    return {"role": "assistant", "content": final_answer(messages), "tool_calls": None}


def completion_response(
    message: dict[str, Any], model: str, seq: int, prompt_chars: int
) -> dict[str, Any]:
    if message["tool_calls"]:
        finish, out_chars = "tool_calls", len(message["tool_calls"][0]["function"]["arguments"])
    else:
        finish, out_chars = "stop", len(message["content"])
    prompt_tokens, completion_tokens = max(1, prompt_chars // 4), max(1, out_chars // 4)
    return {
        "id": f"chatcmpl-scripted-{seq}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


# --------------------------------------------------------------------------------------------
# The HTTP app
# --------------------------------------------------------------------------------------------


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response[bytes]:
    return Response(
        content=msgspec.json.encode(data), status_code=status, media_type=_JSON, headers=headers
    )


def _error(status: int, message: str) -> Response[bytes]:
    kind = {429: "rate_limit_error", 400: "invalid_request_error"}.get(status, "server_error")
    body = {"error": {"message": message, "type": kind, "param": None, "code": str(status)}}
    # Retry-After: 0 lets clients retry a 429 at once instead of backing off for seconds.
    return _json(body, status, {"Retry-After": "0"} if status == 429 else None)


def create_app(config: ScriptConfig | None = None, **overrides: Any) -> Litestar:
    state = ScriptState((config or ScriptConfig()).updated(overrides))

    async def completions(request: Request[Any, Any, Any]) -> Response[bytes]:
        state.requests += 1
        cfg = state.config
        status = state.injected_failure()
        if cfg.latency_seconds:
            await asyncio.sleep(cfg.latency_seconds)
        if cfg.hang_seconds:
            await asyncio.sleep(cfg.hang_seconds)
        if status is not None:
            state.failures += 1
            state.by_status[status] += 1
            return _error(status, f"scripted failure ({status})")
        raw = await request.body()
        if cfg.record_file:
            with open(cfg.record_file, "ab") as out:  # noqa: ASYNC230 - tests and benchmarks only
                out.write(raw.replace(b"\n", b"\\n") + b"\n")
        try:
            body = msgspec.json.decode(raw)
            if not isinstance(body, dict) or body.get("stream"):
                raise ValueError("a JSON object without stream=true is expected")
            state.seq += 1
            message = script_reply(body, cfg.prefer_tools, state.seq)
        except (msgspec.DecodeError, ValueError, TypeError, AttributeError) as exc:
            state.failures += 1
            state.by_status[400] += 1
            return _error(400, f"bad request: {exc}")
        if message["tool_calls"]:
            state.tool_call_turns += 1
        else:
            state.final_turns += 1
        state.completions_ok += 1
        state.by_status[200] += 1
        return _json(completion_response(message, cfg.model, state.seq, len(raw)))

    @post(["/v1/chat/completions", "/chat/completions"])
    async def chat_completions(request: Request[Any, Any, Any]) -> Response[bytes]:
        return await completions(request)

    @get(["/v1/models", "/models"])
    async def models() -> Response[bytes]:
        model = {"id": state.config.model, "object": "model", "created": 0, "owned_by": "scripted"}
        return _json({"object": "list", "data": [model]})

    @get("/health")
    async def health() -> Response[bytes]:
        return _json({"status": "ok"})

    @get("/_scripted/stats")
    async def stats() -> Response[bytes]:
        return _json(state.stats())

    @post("/_scripted/reset")
    async def reset() -> Response[bytes]:
        state.reset()
        return _json(state.stats())

    @get("/_scripted/config")
    async def get_config() -> Response[bytes]:
        return _json(dataclasses.asdict(state.config))

    @post("/_scripted/config")
    async def set_config(request: Request[Any, Any, Any]) -> Response[bytes]:
        try:
            changes = msgspec.json.decode(await request.body())
            if not isinstance(changes, dict):
                raise ValueError("a JSON object is expected")
            state.configure(changes)
        except (msgspec.DecodeError, ValueError, TypeError) as exc:
            return _error(400, str(exc))
        return _json(dataclasses.asdict(state.config))

    handlers = [chat_completions, models, health, stats, reset, get_config, set_config]
    return Litestar(route_handlers=handlers, openapi_config=None, debug=False)


# --------------------------------------------------------------------------------------------
# Running it
# --------------------------------------------------------------------------------------------


def serve(host: str, port: int, config: ScriptConfig) -> None:
    import uvicorn

    # No access log: at thousands of requests per second it would cost more than the replies.
    uvicorn.run(create_app(config), host=host, port=port, log_level="warning", access_log=False)


def _parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, ScriptConfig]:
    p = argparse.ArgumentParser(prog="python -m holmes_stream.devstack.scripted_llm")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=18080)
    p.add_argument("--model", default="scripted")
    p.add_argument("--latency", type=float, default=0.0, help="seconds before each answer")
    p.add_argument("--fail-rate", type=float, default=0.0, help="share of failed completions")
    p.add_argument("--fail-statuses", default="500,429", help="comma-separated statuses")
    p.add_argument("--down", action="store_true", help="answer every completion with 503")
    p.add_argument("--hang", type=float, default=0.0, help="extra sleep to provoke timeouts")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prefer-tools", default="investigation_history", help="comma-separated")
    p.add_argument("--config-json", default=None, help="ScriptConfig fields as JSON (wins)")
    args = p.parse_args(argv)
    config = ScriptConfig(
        model=args.model,
        prefer_tools=[t for t in args.prefer_tools.split(",") if t],
        latency_seconds=args.latency,
        fail_rate=args.fail_rate,
        fail_statuses=[int(s) for s in args.fail_statuses.split(",") if s],
        down=args.down,
        hang_seconds=args.hang,
        seed=args.seed,
    )
    if args.config_json:
        config = config.updated(json.loads(args.config_json))
    config.validate()
    return args, config


def main(argv: list[str] | None = None) -> None:
    args, config = _parse_args(argv)
    serve(args.host, args.port, config)


class ScriptedLLM(ServerProcess):
    """The scripted server as a detached subprocess; ``config`` are ``ScriptConfig`` fields."""

    module = "holmes_stream.devstack.scripted_llm"
    stem = "llm"
    label = "scripted LLM"

    def __init__(
        self,
        port: int = 18080,
        host: str = "127.0.0.1",
        data_dir: Path | None = None,
        **config: Any,
    ) -> None:
        super().__init__(port, host, data_dir, config)
        self.config = ScriptConfig().updated(config)  # fail early on a bad key

    @property
    def api_base(self) -> str:
        return f"{self.base_url}/v1"

    @property
    def model(self) -> str:
        """The litellm model name that routes to this server."""
        return f"openai/{self.config.model}"

    def configure(self, **changes: Any) -> dict[str, Any]:
        """Change failure injection (or any ScriptConfig field) of the running server."""
        return self._call("POST", "/_scripted/config", changes)

    def stats(self) -> dict[str, Any]:
        return self._call("GET", "/_scripted/stats")

    def reset(self) -> dict[str, Any]:
        return self._call("POST", "/_scripted/reset", {})

    def _answers(self) -> bool:
        try:
            return bool(self._call("GET", "/health", timeout=1.0).get("status") == "ok")
        except (OSError, ValueError):
            return False


if __name__ == "__main__":
    main()
