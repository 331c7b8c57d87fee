"""The OpenAI-compatible backend: chat completions on any server that speaks the API, through the
maintained ``openai`` client.

One request per prompt to ``{base_url}/chat/completions`` with the chat messages (the server
applies the chat template), ``n``, ``temperature``, ``top_p``, ``max_tokens`` and a per-prompt
``seed`` derived from the prompt's global index, so results do not depend on how prompts are
batched or sharded. Requests run ``concurrency`` at a time. The client retries 408, 409, 429, 5xx,
timeouts and connection errors ``max_retries`` times with exponential backoff and honours
``Retry-After``; what is left is turned into one clear line here: 401/403 name the environment
variable that should hold the key, 404 the base URL and served model name, the rest the status
and the server's message.

The model argument of ``make_generator`` is the served model name unless ``served_model`` is
set: a vLLM server started on a model path serves it under that path, so the same path works.
``GenerationStats.new_tokens`` is the server's ``usage.completion_tokens``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from srlm.errors import SrlmError
from srlm.generation import GenerationOptions, GenerationStats, Prompt, as_messages, request_seed, shard_indices
from srlm.secrets import guard_loggers, redact_text

log = logging.getLogger(__name__)


class OpenAIGenerator:
    """The Generator interface over an OpenAI-compatible chat completions endpoint."""

    def __init__(self, model: str, options: GenerationOptions | None = None):
        import httpx2
        import openai

        self.options = options or GenerationOptions()
        if not self.options.base_url:
            raise SrlmError("backend openai: base_url is empty; set it to the server's URL up to /v1")
        if self.options.concurrency < 1:
            raise SrlmError(f"backend openai: concurrency must be >= 1, got {self.options.concurrency}")
        self.model = model
        guard_loggers("httpx2", "httpx", "openai")  # they log request URLs, a password in base_url included
        self.url = redact_text(self.options.base_url.rstrip("/") + "/chat/completions")  # as messages show it
        self.api_key = os.environ.get(self.options.api_key_env, "") if self.options.api_key_env else ""
        self.stats = GenerationStats()
        self.requests = 0  # HTTP requests sent, retries included
        self._lock = threading.Lock()
        self._http = httpx2.Client(event_hooks={"request": [self._count]})
        self.client = openai.OpenAI(
            base_url=self.options.base_url.rstrip("/"), api_key=self.api_key or "unused",
            max_retries=self.options.max_retries, timeout=self.options.request_timeout, http_client=self._http)
        self._no_key = {} if self.api_key else {"extra_headers": {"Authorization": openai.omit}}  # no key: no header
        self._asked = 0  # requests asked for (one per prompt); the rest of self.requests were retries

    @property
    def retries(self) -> int:
        """Requests the client sent again after a retryable failure (for logs and tests)."""
        return self.requests - self._asked

    def close(self) -> None:
        """The server holds the model; only the connection pool is released."""
        self.client.close()

    def _count(self, request: Any) -> None:
        with self._lock:
            self.requests += 1

    def generate(
        self,
        prompts: list[Prompt],
        n: int = 1,
        temperature: float = 0.7,
        top_p: float = 0.9,
        max_new_tokens: int = 256,
        seed: int = 0,
        desc: str = "generating",
        shard: tuple[int, int] = (0, 1),
    ) -> list[list[str] | None]:
        """Per prompt, ``n`` replies; with ``shard=(k, K)`` only prompts ``i % K == k`` (others ``None``)."""
        indices = shard_indices(len(prompts), shard)
        per_prompt = n if temperature > 0 else 1  # greedy: one reply, repeated n times
        bodies = [self.body(prompts[i], per_prompt, temperature, top_p, max_new_tokens, request_seed(seed, i)) for i in indices]
        started = time.perf_counter()
        log.info("%s: %d prompts x %d via %s", desc, len(indices), n, self.url)
        answers = self.complete_all(bodies)
        results: list[list[str] | None] = [None for _ in prompts]
        for i, answer in zip(indices, answers):
            results[i] = [text for text in self.texts(answer, per_prompt) for _ in range(n // per_prompt)]
        self.stats.prompts += len(indices)
        self.stats.completions += len(indices) * n
        self.stats.seconds += time.perf_counter() - started
        return results

    def first_token_logprobs(self, prompts: list[Prompt], top_logprobs: int = 5, temperature: float = 1.0,
                             seed: int = 0) -> list[dict[str, float] | None]:
        """Per prompt, the ``top_logprobs`` most likely first tokens of the reply and their log-probabilities
        (one token generated); None where the server returned no logprobs. A judge's one-token verdict weighed
        by its probability (AlpacaEval 2.0's annotator)."""
        bodies = [{**self.body(p, 1, temperature, 1.0, 1, request_seed(seed, i)), "logprobs": True,
                   "top_logprobs": top_logprobs} for i, p in enumerate(prompts)]
        started = time.perf_counter()
        answers = self.complete_all(bodies)
        self.stats.prompts += len(prompts)
        self.stats.completions += len(prompts)
        self.stats.seconds += time.perf_counter() - started
        out: list[dict[str, float] | None] = []
        for answer in answers:
            choice = answer.choices[0] if answer.choices else None
            content = getattr(getattr(choice, "logprobs", None), "content", None) or []
            out.append({t.token: t.logprob for t in (content[0].top_logprobs or [])} if content else None)
        return out

    def complete_all(self, bodies: list[dict[str, Any]]) -> list[Any]:
        """Every request body's ``ChatCompletion``, ``concurrency`` at a time; the first failure ends the call."""
        with ThreadPoolExecutor(max_workers=self.options.concurrency) as pool:
            futures = [pool.submit(self.complete, body) for body in bodies]
            try:
                return [f.result() for f in futures]
            except BaseException:
                for f in futures:  # one failure ends the call: don't send (or retry) the rest
                    f.cancel()
                raise

    def body(self, prompt: Prompt, n: int, temperature: float, top_p: float, max_new_tokens: int, seed: int) -> dict[str, Any]:
        sampling = temperature > 0
        return {
            "model": self.model,
            "messages": as_messages(prompt),
            "n": n,
            "temperature": temperature if sampling else 0.0,
            "top_p": top_p if sampling else 1.0,
            "max_tokens": max_new_tokens,
            "seed": seed,
        }

    def texts(self, answer: Any, n: int) -> list[str]:
        choices = sorted(answer.choices or [], key=lambda c: c.index or 0)
        if len(choices) != n:
            raise SrlmError(f"{self.url}: asked for {n} choices, the server returned {len(choices)}")
        self.stats.new_tokens += int(getattr(answer.usage, "completion_tokens", 0) or 0)
        self.stats.sequences += len(choices)
        self.stats.stopped += sum(c.finish_reason == "stop" for c in choices)
        return [((c.message.content if c.message else "") or "").strip() for c in choices]

    def complete(self, body: dict[str, Any]) -> Any:
        """One chat completion (the client retries what may pass on a second try); SrlmError for the rest."""
        import openai

        with self._lock:
            self._asked += 1
        tries = f"gave up after {self.options.max_retries + 1} tries"
        try:
            return self.client.chat.completions.create(**body, **self._no_key)
        except (openai.AuthenticationError, openai.PermissionDeniedError) as e:
            key = self.options.api_key_env
            state = f"set ({len(self.api_key)} characters)" if self.api_key else "not set"
            raise SrlmError(
                f"{self.url}: the server refused the API key (HTTP {e.status_code}: {_detail(e)}). The key is read "
                f"from the environment variable {key!r}, which is {state}; set it (on the cluster: the Secret behind it)"
            ) from None
        except openai.NotFoundError as e:
            raise SrlmError(f"{self.url}: HTTP 404 ({_detail(e)}); check base_url (up to /v1) and the served model "
                            f"name {self.model!r}") from None
        except openai.APIStatusError as e:
            retried = e.status_code in (408, 409, 429) or e.status_code >= 500
            raise SrlmError(f"{self.url}: HTTP {e.status_code}: {_detail(e)}" + (f" ({tries})" if retried else "")
                            ) from None
        except openai.APITimeoutError:
            raise SrlmError(f"{self.url}: no answer within {self.options.request_timeout} s ({tries})") from None
        except openai.APIConnectionError as e:
            raise SrlmError(f"{self.url}: cannot connect ({e.__cause__ or e}) ({tries})") from None


def _detail(e: Any) -> str:
    """The server's error message (OpenAI's ``{"error": {"message"}}`` or plain text)."""
    body = getattr(e, "body", None)  # the client hands over the "error" object when there is one
    if isinstance(body, dict):
        error = body.get("error")
        message = error.get("message") if isinstance(error, dict) else body.get("message")
        if message:
            return str(message)
    response = getattr(e, "response", None)
    text = response.text[:300] if response is not None else ""
    return text or str(e)
