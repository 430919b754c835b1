"""OpenAI clients lent to one LLM request at a time (``engine/llm_clients.py``)."""

from __future__ import annotations

import json
import threading
from typing import Any

import httpx
import pytest

from holmes_stream.engine.llm_clients import ClientLender


class _LLM:
    """What ``lend_to`` uses of HolmesGPT's ``DefaultLLM``; each request reports its client."""

    def __init__(self, model: str = "openai/scripted", api_key: str | None = "k") -> None:
        self.model, self.api_base, self.api_key = model, "http://llm.test/v1", api_key
        self.args: dict[str, Any] = {"temperature": 0}
        self.seen: list[Any] = []
        self.hold: threading.Barrier | None = None
        self.completion = self._complete

    def _complete(self, *args: Any, **kwargs: Any) -> str:
        self.seen.append(self.args.get("client"))
        if self.hold is not None:
            self.hold.wait(timeout=10)
        return "answer"


def test_requests_in_flight_get_clients_of_their_own_and_give_them_back() -> None:
    lender = ClientLender()
    a, b = _LLM(), _LLM()
    for llm in (a, b):
        lender.lend_to(llm)
    a.hold = b.hold = threading.Barrier(2)  # both requests are in flight together
    threads = [threading.Thread(target=llm.completion, args=([],)) for llm in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert len(a.seen) == len(b.seen) == 1
    assert a.seen[0] is not None and b.seen[0] is not None
    assert a.seen[0] is not b.seen[0]
    assert "client" not in a.args and "client" not in b.args  # taken back after the request
    assert lender.idle() == 2
    a.hold = None
    assert a.completion([]) == "answer"
    assert a.seen[1] in (a.seen[0], b.seen[0])  # reused, not a new one
    assert lender.idle() == 2


def test_a_failing_request_gives_its_client_back() -> None:
    lender = ClientLender()
    llm = _LLM()

    def fail(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("boom")

    llm.completion = fail
    lender.lend_to(llm)
    with pytest.raises(RuntimeError):
        llm.completion([])
    assert "client" not in llm.args
    assert lender.idle() == 1


def test_idle_clients_beyond_the_cap_are_closed() -> None:
    lender = ClientLender(max_idle=1)
    a, b = _LLM(), _LLM()
    for llm in (a, b):
        lender.lend_to(llm)
    a.hold = b.hold = threading.Barrier(2)
    threads = [threading.Thread(target=llm.completion, args=([],)) for llm in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert lender.idle() == 1
    closed = [c for c in (a.seen[0], b.seen[0]) if c._client.is_closed]
    assert len(closed) == 1


def test_other_providers_and_keyless_models_are_left_to_litellm() -> None:
    lender = ClientLender()
    for llm in (_LLM("anthropic/claude-sonnet-4-5"), _LLM(api_key=None)):
        original = llm.completion
        lender.lend_to(llm)
        assert llm.completion == original
    assert lender.applies("openai/scripted", "http://llm.test/v1")
    assert lender.applies("gpt-4o", None)
    assert not lender.applies("azure/gpt-4o", None)


def test_litellm_sends_the_request_through_the_lent_client(monkeypatch: Any) -> None:
    """The pinned behaviour: ``DefaultLLM.completion`` passes ``client`` on to litellm, and
    litellm's OpenAI route uses it as it is. The API base does not resolve: only the lent
    client's transport can answer."""
    from holmes.core.llm import DefaultLLM
    from openai import OpenAI

    from holmes_stream.engine import llm_clients

    requests: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(
            200,
            json={
                "id": "c1",
                "object": "chat.completion",
                "created": 0,
                "model": "scripted",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "through the lent client"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
            },
        )

    def new_client(api_base: str | None, api_key: str | None, organization: str | None) -> Any:
        return OpenAI(
            api_key=api_key,
            base_url=api_base,
            http_client=httpx.Client(transport=httpx.MockTransport(answer)),
            max_retries=0,
        )

    monkeypatch.setattr(llm_clients, "_new_client", new_client)
    llm = DefaultLLM(
        model="openai/scripted",
        api_key="dummy",
        api_base="http://lent-client.invalid/v1",
        args={"temperature": 0, "num_retries": 0},
    )
    lender = ClientLender()
    lender.lend_to(llm)
    response = llm.completion(messages=[{"role": "user", "content": "hello"}])
    assert response.choices[0].message.content == "through the lent client"
    assert len(requests) == 1
    assert str(requests[0].url) == "http://lent-client.invalid/v1/chat/completions"
    assert json.loads(requests[0].content)["messages"] == [{"role": "user", "content": "hello"}]
    assert "client" not in llm.args
    assert lender.idle() == 1
