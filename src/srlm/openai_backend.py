"""The OpenAI-compatible HTTP backend: chat completions on any server that speaks the API.

One request per prompt to ``{base_url}/chat/completions`` with the chat messages (the server
applies the chat template), ``n``, ``temperature``, ``top_p``, ``max_tokens`` and a per-prompt
``seed`` derived from the prompt's global index, so results do not depend on how prompts are
batched or sharded. Requests run ``concurrency`` at a time; 429, 5xx, timeouts and connection
errors are retried with exponential backoff (``Retry-After`` honoured); 401/403 stop at once
with the name of the environment variable that should hold the key. Standard library only.

The model argument of ``make_generator`` is the served model name unless ``served_model`` is
set: a vLLM server started on a model path serves it under that path, so the same path works.
``GenerationStats.new_tokens`` is the server's ``usage.completion_tokens``.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from srlm.errors import SrlmError
from srlm.generation import GenerationOptions, GenerationStats, Prompt, as_messages, request_seed, shard_indices

log = logging.getLogger(__name__)

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}
BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 30.0


class OpenAIGenerator:
    """The Generator interface over an OpenAI-compatible chat completions endpoint."""

    def close(self) -> None:
        """Nothing to release here: the server holds the model."""

    def __init__(self, model: str, options: GenerationOptions | None = None):
        self.options = options or GenerationOptions()
        if not self.options.base_url:
            raise SrlmError("backend openai: base_url is empty; set it to the server's URL up to /v1")
        if self.options.concurrency < 1:
            raise SrlmError(f"backend openai: concurrency must be >= 1, got {self.options.concurrency}")
        self.model = model
        self.url = self.options.base_url.rstrip("/") + "/chat/completions"
        self.api_key = os.environ.get(self.options.api_key_env, "") if self.options.api_key_env else ""
        self.stats = GenerationStats()
        self.retries = 0  # retried requests, for logs and tests

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
        with ThreadPoolExecutor(max_workers=self.options.concurrency) as pool:
            futures = [pool.submit(self.post, body) for body in bodies]
            try:
                answers = [f.result() for f in futures]
            except BaseException:
                for f in futures:  # one failure ends the call: don't send (or retry) the rest
                    f.cancel()
                raise
        results: list[list[str] | None] = [None for _ in prompts]
        for i, answer in zip(indices, answers):
            results[i] = [text for text in self.texts(answer, per_prompt) for _ in range(n // per_prompt)]
        self.stats.prompts += len(indices)
        self.stats.completions += len(indices) * n
        self.stats.seconds += time.perf_counter() - started
        return results

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

    def texts(self, answer: dict[str, Any], n: int) -> list[str]:
        choices = sorted(answer.get("choices") or [], key=lambda c: c.get("index", 0))
        if len(choices) != n:
            raise SrlmError(f"{self.url}: asked for {n} choices, the server returned {len(choices)}")
        self.stats.new_tokens += int((answer.get("usage") or {}).get("completion_tokens") or 0)
        self.stats.sequences += len(choices)
        self.stats.stopped += sum(c.get("finish_reason") == "stop" for c in choices)
        return [((c.get("message") or {}).get("content") or "").strip() for c in choices]

    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST one request; retry what may pass on a second try, fail clearly on the rest."""
        for attempt in range(self.options.max_retries + 1):
            try:
                return self._post_once(body)
            except _Retryable as e:
                if attempt == self.options.max_retries:
                    raise SrlmError(f"{self.url}: {e} (gave up after {attempt + 1} tries)") from None
                delay = e.retry_after if e.retry_after is not None else backoff(attempt)
                log.warning("%s: %s; retrying in %.1f s (%d/%d)", self.url, e, delay, attempt + 1, self.options.max_retries)
                self.retries += 1
                time.sleep(delay)
        raise AssertionError("unreachable")

    def _post_once(self, body: dict[str, Any]) -> dict[str, Any]:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, data=json.dumps(body).encode(), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.options.request_timeout) as response:
                return json.loads(response.read().decode("utf-8"))
        except urllib.error.HTTPError as e:
            raise self._http_error(e) from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
            reason = getattr(e, "reason", e)
            raise _Retryable(f"cannot connect ({reason})") from None
        except json.JSONDecodeError as e:
            raise SrlmError(f"{self.url}: the server's answer is not JSON ({e})") from None

    def _http_error(self, e: urllib.error.HTTPError) -> Exception:
        detail = _error_detail(e)
        if e.code in (401, 403):
            key = self.options.api_key_env
            state = f"set ({len(self.api_key)} characters)" if self.api_key else "not set"
            return SrlmError(
                f"{self.url}: the server refused the API key (HTTP {e.code}: {detail}). The key is read from "
                f"the environment variable {key!r}, which is {state}; set it (on the cluster: the Secret behind it)"
            )
        if e.code in RETRY_STATUS:
            return _Retryable(f"HTTP {e.code}: {detail}", _retry_after(e))
        if e.code == 404:
            return SrlmError(f"{self.url}: HTTP 404 ({detail}); check base_url (up to /v1) and the served model name {self.model!r}")
        return SrlmError(f"{self.url}: HTTP {e.code}: {detail}")


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


def backoff(attempt: int) -> float:
    """0.5, 1, 2, 4 ... seconds (capped), with up to 10% jitter so parallel requests spread out."""
    delay = min(MAX_BACKOFF_SECONDS, BACKOFF_SECONDS * 2**attempt)
    return delay * (1 + 0.1 * random.random())


def _retry_after(e: urllib.error.HTTPError) -> float | None:
    value = e.headers.get("Retry-After") if e.headers else None
    try:
        return min(MAX_BACKOFF_SECONDS, max(0.0, float(value))) if value else None
    except ValueError:
        return None


def _error_detail(e: urllib.error.HTTPError) -> str:
    try:
        text = e.read().decode("utf-8", "replace")
    except Exception:  # the body is optional; the status code says enough
        return e.reason or "no details"
    try:
        message = json.loads(text).get("error", {})
        message = message.get("message") if isinstance(message, dict) else message
    except (json.JSONDecodeError, AttributeError):
        message = None
    return str(message or text[:300] or e.reason)
