"""OpenAI clients lent to one LLM request at a time.

litellm builds one OpenAI client per (key, base URL, timeout, ...) and caches it for the whole
process, so every agent loop's request goes through one httpx connection pool. That pool's lock
is taken three times per request and held across a readability poll of every pooled
connection; a thread that holds it and waits for the GIL stalls all the others. Profiled with
two worker processes on two cores: most agent-loop threads were waiting on that lock, and the
workers sat idle a quarter of the time. The shared pool also keeps only 20 idle connections,
so beyond 20 requests in flight connections are closed and opened again.

Here each request of an OpenAI-protocol model borrows a client of its own from a free list
(litellm uses a client given in its ``client`` argument as it is) and gives it back when the
request returns. The list grows to the most requests ever in flight at once. Streamed
responses are read after the request returns; a client lent again meanwhile is shared, which
httpx allows (its pool is thread-safe), only slower. Left to litellm: models of other
providers, models without an API key of their own, and every model while a process-wide
``litellm.client_session`` is set (someone chose one pool for all).
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

# Beyond this many idle clients of one model (a burst now over), a returned one is closed.
MAX_IDLE_PER_MODEL = 256

_Key = tuple[str | None, str | None, str | None]


class ClientLender:
    """Free lists of OpenAI clients, one per (base URL, key, organization). Thread-safe: a deque's
    ``append`` and ``pop`` are atomic."""

    def __init__(self, max_idle: int = MAX_IDLE_PER_MODEL) -> None:
        self._max_idle = max_idle
        self._free: dict[_Key, collections.deque[Any]] = {}
        self._openai: dict[tuple[str, str | None], bool] = {}

    def applies(self, model: str, api_base: str | None) -> bool:
        """True for a model litellm sends through its OpenAI client (provider ``openai``)."""
        known = self._openai.get((model, api_base))
        if known is None:
            import litellm

            try:
                provider = litellm.get_llm_provider(model=model, api_base=api_base)[1]
            except Exception:  # litellm cannot route it: the request will say so itself
                provider = None
            known = self._openai[(model, api_base)] = provider == "openai"
        return known

    def lend_to(self, llm: Any) -> None:
        """Each request of this HolmesGPT ``DefaultLLM`` runs on a client of its own.

        Its ``completion`` is wrapped on the instance, as ``time_completions`` does; the client
        goes in through ``llm.args``, which ``DefaultLLM.completion`` passes to litellm."""
        if llm.api_key is None or not self.applies(llm.model, llm.api_base):
            return  # without a key of its own, litellm finds one (environment, provider rules)
        import litellm

        key: _Key = (llm.api_base, llm.api_key, llm.args.get("organization"))
        free = self._free.setdefault(key, collections.deque())
        complete: Callable[..., Any] = llm.completion

        def lent(*args: Any, **kwargs: Any) -> Any:
            if litellm.client_session is not None:
                return complete(*args, **kwargs)
            try:
                client = free.pop()
            except IndexError:
                client = _new_client(*key)
            llm.args["client"] = client
            try:
                return complete(*args, **kwargs)
            finally:
                llm.args.pop("client", None)
                if len(free) < self._max_idle:
                    free.append(client)
                else:
                    client.close()

        llm.completion = lent

    def idle(self) -> int:
        """Clients not lent right now, over all models."""
        return sum(len(free) for free in self._free.values())


def _new_client(api_base: str | None, api_key: str | None, organization: str | None) -> Any:
    """An OpenAI client as litellm builds its cached one (its own HTTP client and TLS
    settings); litellm sets the retries of each request on it, and passes each its timeout."""
    from litellm.llms.openai.common_utils import BaseOpenAILLM
    from openai import OpenAI

    return OpenAI(
        api_key=api_key,
        base_url=api_base,
        http_client=BaseOpenAILLM._get_sync_http_client(),
        max_retries=0,
        organization=organization,
    )
